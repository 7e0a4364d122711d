"""The dead-letter checks.

Rejected, nacked, expired and overflowing messages dead-lettered with RabbitMQ's
``x-death`` headers, ``x-max-length-bytes``, ``x-dead-letter-routing-key``, repeated
deaths, and what is dropped when there is no dead-letter exchange.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio
import trio.testing

from ..._message import ExchangeType, Properties
from ._registry import _check
from ._support import (
    _TTL_MS,
    _assert_not_early,
    _assert_one_death,
    _assert_properties,
    _assert_usable,
    _assert_x_death,
    _bodies,
    _dead_letter_target,
    _death,
    _drain,
    _message_count,
    _name,
    _receive,
    _receive_and_ack,
    _receive_n,
    _wait_for_count,
)

if TYPE_CHECKING:
    from ..._message import Delivery
    from ._registry import MakeTransport


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
        first, second = await _receive_and_ack(conn, dlq, 2)
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
        _assert_one_death(
            first,
            "rejected",
            queue,
            source,
            ["rk"],
            original_expiration="600000",
            other_headers={"app": "kept", "n": 1},
        )
        assert (second.body, second.exchange, second.routing_key) == (
            b"nacked",
            dlx,
            queue,
        )
        _assert_one_death(second, "rejected", queue, "", [queue])


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
        _assert_not_early(elapsed)
        assert (dead.body, dead.exchange, dead.routing_key) == (b"expired", dlx, queue)
        _assert_one_death(
            dead, "expired", queue, "", [queue], other_headers={"keep": True}
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
        _assert_not_early(elapsed)
        assert (dead.body, dead.exchange, dead.routing_key) == (b"expired", dlx, queue)
        assert dead.properties.expiration is None
        assert dead.properties.message_id == "short-lived"
        _assert_one_death(
            dead, "expired", queue, "", [queue], original_expiration=str(_TTL_MS)
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
        dead = await _receive_and_ack(conn, dlq, 2)
        assert _bodies(dead) == [b"0", b"1"]
        for delivery in dead:
            _assert_one_death(delivery, "maxlen", queue, "", [queue])
        kept = await _receive_and_ack(conn, queue, 2)
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
        kept = await _receive_and_ack(conn, queue, 2)
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
        (dead,) = await _receive_and_ack(conn, dlq, 1)
        assert (dead.body, dead.exchange, dead.routing_key) == (b"renamed", dlx, "dead")
        _assert_one_death(dead, "rejected", queue, source, ["original"])
        (dead,) = await _receive_and_ack(conn, by_name, 1)
        assert (dead.body, dead.exchange, dead.routing_key) == (b"by name", "", by_name)
        _assert_one_death(dead, "rejected", via_default, "", [via_default])


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
        (final,) = await _receive_and_ack(conn, second, 1)
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
        _assert_not_early(trio.current_time() - start)

        plain = (await conn.declare_queue(_name("q"))).name
        start = trio.current_time()
        await conn.publish("", plain, b"dropped", Properties(expiration=str(_TTL_MS)))
        await conn.publish("", plain, b"kept")
        await _wait_for_count(conn, plain, 1)
        _assert_not_early(trio.current_time() - start)
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
