"""The transport conformance suite: the rules every :class:`~trioevents.abc.Transport` keeps.

Shaped like :func:`trio.testing.check_one_way_stream`: :func:`check_transport` runs
every check against transports from a factory, and :data:`TRANSPORT_CHECKS` maps each
check's name to its function so that a test module can run one test per check::

    @pytest.mark.parametrize("name", TRANSPORT_CHECKS)
    async def test_transport_conformance(name, make_transport):
        await TRANSPORT_CHECKS[name](make_transport)

Each check calls ``make_transport()`` once and opens its connections on that
transport; it still gives its queues and exchanges unique names, so a broker shared
between checks is fine. A check fails with :class:`AssertionError`, never hangs
(each wait is bounded by :func:`trio.fail_after`), and waits with :func:`trio.sleep`
only, so it runs in no time under ``autojump_clock`` on the embedded broker and in
real time on RabbitMQ. The few time-dependent checks use TTLs of 100-300 ms and
assert lower bounds only.

Every expectation was measured on RabbitMQ 3.10.8. The surprising facts:

* Redeclaring with another ``exclusive`` flag is 405 RESOURCE_LOCKED, not 406.
  Unknown ``x-`` arguments are never compared; of an exchange's arguments only
  ``alternate-exchange`` is. A passive declare ignores every flag and the type.
* ``amq.topic`` redeclared with its own type and flags is fine; a *new* ``amq.``
  name is 403. Every operation on the default exchange ``""``, even a passive
  declare, is 403 "operation not permitted on the default exchange".
* Deleting a missing exchange or queue and unbinding anything missing are no-ops;
  purging a missing queue is 404.
* ``message_count`` (declare, delete, purge) counts ready messages only; unacked
  deliveries are neither counted nor purged.
* Topic keys split on ``.``: ``""`` has no words (``*`` does not match it, ``#``
  does) and ``"."`` is two empty words (``*.*`` matches it).
* A requeued message goes back to its original position, ahead of later ones.
* A dead-lettered message loses ``expiration`` (kept as ``original-expiration`` in
  its ``x-death`` entry, whatever the reason); ``x-death`` is newest first, one
  entry per (queue, reason) whose ``count`` grows while its other fields keep their
  first values. There is no ``x-last-death-*`` before RabbitMQ 3.13.
* ``x-overflow=reject-publish`` nacks without dead-lettering; ``reject-publish-dlx``
  nacks and dead-letters (reason ``maxlen``). ``x-max-length-bytes`` counts bodies.
* Header values keep their AMQP types exactly (``d`` doubles, ``x`` byte arrays,
  ``D`` decimals, ``V`` void, ...); timestamps carry whole seconds only.
* A message requeued after its TTL passed expires at once. Every declare of an
  ``x-expires`` queue, passive ones too, renews its lease.
* The default exchange works as a dead-letter exchange (with
  ``x-dead-letter-routing-key`` naming the queue); a DLX that does not exist
  drops the message silently.
* RabbitMQ itself refuses ``expiration="abc"`` or ``"-5"`` and ``delivery_mode=3``
  (406), and a ``user_id`` other than the connection's user (406), so the
  round-trip check leaves ``user_id`` out.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio
import trio.testing

from ..._exceptions import (
    InvalidRequest,
    NotFound,
    PreconditionFailed,
)
from ..._message import ExchangeType, Properties
from . import _consuming, _exchanges, _publishing, _queues, _routing
from ._registry import (
    TRANSPORT_CHECKS as TRANSPORT_CHECKS,
    _check,
    check_transport as check_transport,
)
from ._support import (
    _TTL_MS,
    _assert_invalid,
    _assert_properties,
    _assert_refused,
    _assert_usable,
    _assert_x_death,
    _bodies,
    _dead_letter_target,
    _death,
    _drain,
    _message_count,
    _name,
    _not_found,
    _receive,
    _receive_n,
    _wait_for_count,
)

if TYPE_CHECKING:
    from ..._message import Delivery
    from ._registry import MakeTransport

__all__ = ["TRANSPORT_CHECKS", "check_transport"]

#: The section modules; importing one registers its checks.
_SECTIONS = (
    _exchanges,
    _queues,
    _routing,
    _publishing,
    _consuming,
)

# --------------------------------------------------------------------------- dead letters


@_check
async def check_dead_letter_on_reject_and_nack(make_transport: MakeTransport) -> None:
    """A message rejected or nacked without requeue goes to the DLX with ``x-death``."""
    async with make_transport().open_connection() as conn:
        dlx, dlq = await _dead_letter_target(conn, ExchangeType.TOPIC)
        source = _name("src")
        await conn.declare_exchange(source, ExchangeType.DIRECT)
        queue = _name("q")
        await conn.declare_queue(queue, arguments={"x-dead-letter-exchange": dlx})
        await conn.bind_queue(queue, source, "rk")
        properties = Properties(
            content_type="text/plain",
            headers={"app": "kept", "n": 1},
            delivery_mode=2,
            priority=3,
            correlation_id="c-1",
            message_id="m-1",
            expiration="600000",
        )
        await conn.publish(source, "rk", b"rejected", properties)
        await conn.publish("", queue, b"nacked")
        async with conn.open_consumer(queue) as consumer:
            rejected, nacked = await _receive_n(consumer, 2)
            await rejected.reject(requeue=False)
            await nacked.nack(requeue=False)
        assert await _message_count(conn, queue) == 0
        async with conn.open_consumer(dlq) as consumer:
            first, second = await _receive_n(consumer, 2)
            await first.ack()
            await second.ack()
        assert (first.body, first.exchange, first.routing_key, first.redelivered) == (
            b"rejected",
            dlx,
            "rk",
            False,
        )
        # Everything but expiration is kept; expiration moves into x-death.
        _assert_properties(
            attrs.evolve(properties, headers=first.properties.headers, expiration=None),
            first.properties,
        )
        _assert_x_death(
            first,
            [_death("rejected", queue, source, ["rk"], original_expiration="600000")],
            first=("rejected", queue, source),
            other_headers={"app": "kept", "n": 1},
        )
        assert (second.body, second.exchange, second.routing_key) == (
            b"nacked",
            dlx,
            queue,
        )
        _assert_x_death(
            second,
            [_death("rejected", queue, "", [queue])],
            first=("rejected", queue, ""),
        )


@_check
async def check_dead_letter_on_queue_ttl(make_transport: MakeTransport) -> None:
    """A message outliving ``x-message-ttl`` is dead-lettered as ``expired``."""
    async with make_transport().open_connection() as conn:
        dlx, dlq = await _dead_letter_target(conn)
        queue = _name("q")
        await conn.declare_queue(
            queue,
            arguments={"x-message-ttl": _TTL_MS, "x-dead-letter-exchange": dlx},
        )
        async with conn.open_consumer(dlq) as consumer:
            start = trio.current_time()
            await conn.publish(
                "", queue, b"expired", Properties(headers={"keep": True})
            )
            dead = await _receive(consumer)
            elapsed = trio.current_time() - start
            await dead.ack()
        assert elapsed >= _TTL_MS / 2000, f"expired after {elapsed:.3f}s"
        assert (dead.body, dead.exchange, dead.routing_key) == (b"expired", dlx, queue)
        _assert_x_death(
            dead,
            [_death("expired", queue, "", [queue])],
            first=("expired", queue, ""),
            other_headers={"keep": True},
        )
        assert await _message_count(conn, queue) == 0


@_check
async def check_dead_letter_on_message_expiration(
    make_transport: MakeTransport,
) -> None:
    """A message outliving its ``expiration`` is dead-lettered as ``expired``."""
    async with make_transport().open_connection() as conn:
        dlx, dlq = await _dead_letter_target(conn)
        queue = _name("q")
        await conn.declare_queue(queue, arguments={"x-dead-letter-exchange": dlx})
        async with conn.open_consumer(dlq) as consumer:
            start = trio.current_time()
            await conn.publish(
                "",
                queue,
                b"expired",
                Properties(expiration=str(_TTL_MS), message_id="short-lived"),
            )
            await conn.publish(
                "", queue, b"kept", Properties(expiration="600000", message_id="long")
            )
            dead = await _receive(consumer)
            elapsed = trio.current_time() - start
            await dead.ack()
        assert elapsed >= _TTL_MS / 2000, f"expired after {elapsed:.3f}s"
        assert (dead.body, dead.exchange, dead.routing_key) == (b"expired", dlx, queue)
        assert dead.properties.expiration is None
        assert dead.properties.message_id == "short-lived"
        _assert_x_death(
            dead,
            [_death("expired", queue, "", [queue], original_expiration=str(_TTL_MS))],
            first=("expired", queue, ""),
        )
        (kept,) = await _drain(conn, queue)
        assert (kept.body, kept.properties.expiration) == (b"kept", "600000")


@_check
async def check_dead_letter_on_max_length(make_transport: MakeTransport) -> None:
    """Past ``x-max-length`` the oldest messages are dead-lettered as ``maxlen``."""
    async with make_transport().open_connection() as conn:
        dlx, dlq = await _dead_letter_target(conn)
        queue = _name("q")
        await conn.declare_queue(
            queue, arguments={"x-max-length": 2, "x-dead-letter-exchange": dlx}
        )
        for index in range(4):
            await conn.publish("", queue, b"%d" % index)
        assert await _message_count(conn, queue) == 2
        async with conn.open_consumer(dlq) as consumer:
            dead = await _receive_n(consumer, 2)
            for delivery in dead:
                await delivery.ack()
        assert _bodies(dead) == [b"0", b"1"]
        for delivery in dead:
            _assert_x_death(
                delivery,
                [_death("maxlen", queue, "", [queue])],
                first=("maxlen", queue, ""),
            )
        async with conn.open_consumer(queue) as consumer:
            kept = await _receive_n(consumer, 2)
            for delivery in kept:
                await delivery.ack()
        assert _bodies(kept) == [b"2", b"3"]
        assert await _message_count(conn, queue) == 0


@_check
async def check_max_length_bytes_counts_bodies(make_transport: MakeTransport) -> None:
    """``x-max-length-bytes`` drops the oldest messages once the bodies exceed it."""
    async with make_transport().open_connection() as conn:
        queue = _name("q")
        await conn.declare_queue(queue, arguments={"x-max-length-bytes": 10})
        big_headers = Properties(headers={"padding": "x" * 100})
        for body in (b"12345", b"67890", b"abc"):
            await conn.publish("", queue, body, big_headers)
        async with conn.open_consumer(queue) as consumer:
            kept = await _receive_n(consumer, 2)
            for delivery in kept:
                await delivery.ack()
        assert _bodies(kept) == [b"67890", b"abc"]
        assert await _message_count(conn, queue) == 0


@_check
async def check_dead_letter_routing_key(make_transport: MakeTransport) -> None:
    """``x-dead-letter-routing-key`` replaces the key; ``x-death`` keeps the original."""
    async with make_transport().open_connection() as conn:
        dlx = _name("dlx")
        await conn.declare_exchange(dlx, ExchangeType.DIRECT)
        dlq = (await conn.declare_queue(_name("dlq"))).name
        await conn.bind_queue(dlq, dlx, "dead")
        source = _name("src")
        await conn.declare_exchange(source, ExchangeType.DIRECT)
        queue = _name("q")
        await conn.declare_queue(
            queue,
            arguments={
                "x-dead-letter-exchange": dlx,
                "x-dead-letter-routing-key": "dead",
            },
        )
        await conn.bind_queue(queue, source, "original")
        # Through the default exchange, routed by queue name.
        by_name = (await conn.declare_queue(_name("dlq"))).name
        via_default = _name("q")
        await conn.declare_queue(
            via_default,
            arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": by_name,
            },
        )
        await conn.publish(source, "original", b"renamed")
        await conn.publish("", via_default, b"by name")
        for name in (queue, via_default):
            async with conn.open_consumer(name) as consumer:
                await (await _receive(consumer)).reject(requeue=False)
        async with conn.open_consumer(dlq) as consumer:
            dead = await _receive(consumer)
            await dead.ack()
        assert (dead.body, dead.exchange, dead.routing_key) == (b"renamed", dlx, "dead")
        _assert_x_death(
            dead,
            [_death("rejected", queue, source, ["original"])],
            first=("rejected", queue, source),
        )
        async with conn.open_consumer(by_name) as consumer:
            dead = await _receive(consumer)
            await dead.ack()
        assert (dead.body, dead.exchange, dead.routing_key) == (b"by name", "", by_name)
        _assert_x_death(
            dead,
            [_death("rejected", via_default, "", [via_default])],
            first=("rejected", via_default, ""),
        )


@_check
async def check_dead_letter_repeats_count_in_x_death(
    make_transport: MakeTransport,
) -> None:
    """Each (queue, reason) has one ``x-death`` entry, newest first, its count growing."""
    async with make_transport().open_connection() as conn:
        source = _name("src")
        await conn.declare_exchange(source, ExchangeType.DIRECT)
        bounce = _name("bounce")
        await conn.declare_exchange(bounce, ExchangeType.FANOUT)
        first = _name("q")
        await conn.declare_queue(first, arguments={"x-dead-letter-exchange": bounce})
        await conn.bind_queue(first, source, "rk")
        await conn.bind_queue(first, source, "back")
        second = _name("q")
        await conn.declare_queue(
            second,
            arguments={
                "x-dead-letter-exchange": source,
                "x-dead-letter-routing-key": "back",
            },
        )
        await conn.bind_queue(second, bounce)
        await conn.publish(source, "rk", b"bouncing")

        async def reject_from(queue: str) -> Delivery:
            async with conn.open_consumer(queue) as consumer:
                delivery = await _receive(consumer)
                await delivery.reject(requeue=False)
                return delivery

        await reject_from(first)
        once = await reject_from(second)
        assert (once.exchange, once.routing_key) == (bounce, "rk")
        twice = await reject_from(first)
        assert (twice.exchange, twice.routing_key) == (source, "back")
        _assert_x_death(
            twice,
            [
                _death("rejected", second, bounce, ["rk"]),
                _death("rejected", first, source, ["rk"]),
            ],
            first=("rejected", first, source),
        )
        async with conn.open_consumer(second) as consumer:
            final = await _receive(consumer)
            await final.ack()
        assert (final.body, final.exchange, final.routing_key) == (
            b"bouncing",
            bounce,
            "back",
        )
        # The repeated entry moved to the front; only its count changed.
        _assert_x_death(
            final,
            [
                _death("rejected", first, source, ["rk"], count=2),
                _death("rejected", second, bounce, ["rk"]),
            ],
            first=("rejected", first, source),
        )


@_check
async def check_expired_messages_without_dead_letter_exchange_are_dropped(
    make_transport: MakeTransport,
) -> None:
    """Without a DLX an expired message is dropped; later ones stay."""
    async with make_transport().open_connection() as conn:
        queue = _name("q")
        await conn.declare_queue(queue, arguments={"x-message-ttl": _TTL_MS})
        start = trio.current_time()
        await conn.publish("", queue, b"dropped")
        await _wait_for_count(conn, queue, 0)
        assert trio.current_time() - start >= _TTL_MS / 2000, "expired too early"

        plain = (await conn.declare_queue(_name("q"))).name
        start = trio.current_time()
        await conn.publish("", plain, b"dropped", Properties(expiration=str(_TTL_MS)))
        await conn.publish("", plain, b"kept")
        await _wait_for_count(conn, plain, 1)
        assert trio.current_time() - start >= _TTL_MS / 2000, "expired too early"
        assert _bodies(await _drain(conn, plain)) == [b"kept"]

        # A message requeued after its TTL passed expires at once.
        await conn.publish("", queue, b"held too long")
        async with conn.open_consumer(queue) as consumer:
            held = await _receive(consumer)
            await consumer.cancel()
            await trio.sleep(2 * _TTL_MS / 1000)
            await held.nack(requeue=True)
        await _wait_for_count(conn, queue, 0)
        async with conn.open_consumer(queue) as consumer:
            with trio.move_on_after(_TTL_MS / 1000):
                late = await consumer.receive()
                raise AssertionError(f"an expired message was redelivered: {late!r}")


@_check
async def check_refused_messages_without_dead_letter_exchange_are_dropped(
    make_transport: MakeTransport,
) -> None:
    """Rejected without requeue and no (existing) DLX, a message is gone."""
    async with make_transport().open_connection() as conn:
        plain = (await conn.declare_queue(_name("q"))).name
        dangling = _name("q")
        await conn.declare_queue(
            dangling, arguments={"x-dead-letter-exchange": _name("missing")}
        )
        for queue in (plain, dangling):
            await conn.publish("", queue, b"refused")
            async with conn.open_consumer(queue) as consumer:
                await (await _receive(consumer)).reject(requeue=False)
            await conn.publish("", queue, b"nacked")
            async with conn.open_consumer(queue) as consumer:
                await (await _receive(consumer)).nack(requeue=False)
            assert await _drain(conn, queue) == []
        await _assert_usable(conn)


# --------------------------------------------------------------------------- bad input


@_check
async def check_unknown_exchange_type_is_invalid(make_transport: MakeTransport) -> None:
    """An exchange type that is not an :class:`ExchangeType` is refused locally."""
    async with make_transport().open_connection() as conn:
        name = _name("x")
        for bad in ("fancy", "headers", "x-consistent-hash", 42, None):
            await _assert_invalid(
                conn, functools.partial(conn.declare_exchange, name, cast("Any", bad))
            )
        await _assert_refused(
            conn,
            NotFound,
            _not_found("exchange", name),
            lambda: conn.declare_exchange(name, passive=True),
        )


@_check
async def check_overlong_routing_key_is_invalid(make_transport: MakeTransport) -> None:
    """Routing and binding keys over 255 UTF-8 bytes are refused; 255 are fine."""
    async with make_transport().open_connection() as conn:
        exchange = _name("x")
        await conn.declare_exchange(exchange, ExchangeType.DIRECT)
        queue = (await conn.declare_queue(_name("q"))).name
        longest = "k" * 255
        await conn.bind_queue(queue, exchange, longest)
        await conn.publish(exchange, longest, b"255 bytes")
        for bad in ("k" * 256, "\u00e9" * 128):
            await _assert_invalid(
                conn, functools.partial(conn.publish, exchange, bad, b"x")
            )
            await _assert_invalid(
                conn, functools.partial(conn.bind_queue, queue, exchange, bad)
            )
            await _assert_invalid(
                conn,
                functools.partial(conn.publish, exchange, bad, b"x", mandatory=True),
            )
        assert _bodies(await _drain(conn, queue)) == [b"255 bytes"]


@_check
async def check_non_bytes_body_is_invalid(make_transport: MakeTransport) -> None:
    """A body that is not bytes is refused before anything is sent."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for bad in ("text", None, 42, [b"x"], {"a": 1}):
            await _assert_invalid(
                conn, functools.partial(conn.publish, "", queue, cast("Any", bad))
            )
        assert await _drain(conn, queue) == []


@_check
async def check_unsupported_header_value_is_invalid(
    make_transport: MakeTransport,
) -> None:
    """Headers AMQP cannot carry are refused before anything is sent."""
    bad_headers: list[dict[Any, Any]] = [
        {"object": object()},
        {"set": {1, 2}},
        {"complex": 1j},
        {"too-big": 2**63},
        {"too-small": -(2**63) - 1},
        {"nested": {"deeper": [1, object()]}},
        {1: "non-str key"},
        {"k" * 256: "key over 255 bytes"},
    ]
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for headers in bad_headers:
            await _assert_invalid(
                conn,
                functools.partial(
                    conn.publish, "", queue, b"x", Properties(headers=headers)
                ),
            )
        assert await _drain(conn, queue) == []


@_check
async def check_overlong_names_are_invalid(make_transport: MakeTransport) -> None:
    """Names over 255 UTF-8 bytes, or with no UTF-8 form, are refused locally."""
    async with make_transport().open_connection() as conn:
        for bad in ("x" * 256, "\u00e9" * 128, "lone \ud800 surrogate"):
            await _assert_invalid(
                conn, functools.partial(conn.declare_exchange, bad, ExchangeType.TOPIC)
            )
            await _assert_invalid(conn, functools.partial(conn.declare_queue, bad))
        await conn.declare_exchange("x" * 255, ExchangeType.TOPIC, auto_delete=True)
        await conn.delete_exchange("x" * 255)


@_check
async def check_invalid_property_values_are_refused(
    make_transport: MakeTransport,
) -> None:
    """Property values AMQP or RabbitMQ refuse raise a typed error; nothing arrives.

    Values AMQP cannot encode are :class:`InvalidRequest`; values RabbitMQ
    refuses (``expiration`` not a decimal, ``delivery_mode`` not 1 or 2) may also
    come back as RabbitMQ's own :class:`PreconditionFailed`.
    """
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for unencodable in (
            Properties(priority=256),
            Properties(priority=-1),
            Properties(message_id="m" * 256),
            Properties(content_type="\u00e9" * 128),
        ):
            await _assert_invalid(
                conn, functools.partial(conn.publish, "", queue, b"x", unencodable)
            )
        for refused in (
            Properties(expiration="abc"),
            Properties(expiration="-5"),
            Properties(delivery_mode=3),
        ):
            try:
                await conn.publish("", queue, b"x", refused)
            except (InvalidRequest, PreconditionFailed):
                pass
            else:
                raise AssertionError(f"{refused!r} was published")
            await _assert_usable(conn)
        assert await _drain(conn, queue) == []
