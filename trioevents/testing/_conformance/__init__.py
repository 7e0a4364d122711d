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

from ..._exceptions import (
    InvalidRequest,
    NotFound,
    PreconditionFailed,
)
from ..._message import ExchangeType, Properties
from . import _consuming, _dead_letters, _exchanges, _publishing, _queues, _routing
from ._registry import (
    TRANSPORT_CHECKS as TRANSPORT_CHECKS,
    _check,
    check_transport as check_transport,
)
from ._support import (
    _assert_invalid,
    _assert_refused,
    _assert_usable,
    _bodies,
    _drain,
    _name,
    _not_found,
)

if TYPE_CHECKING:
    from ._registry import MakeTransport

__all__ = ["TRANSPORT_CHECKS", "check_transport"]

#: The section modules; importing one registers its checks.
_SECTIONS = (
    _exchanges,
    _queues,
    _routing,
    _publishing,
    _consuming,
    _dead_letters,
)

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
