"""The routing checks.

Binding and unbinding, topic patterns matched exactly as RabbitMQ matches them,
one copy per queue however many bindings match, and the direct, fanout and default
exchanges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._exceptions import PublishNotConfirmed
from ..._message import ExchangeType
from ._registry import _check
from ._support import (
    _assert_not_found,
    _assert_raises,
    _bodies,
    _drain,
    _name,
    _receive_and_ack,
)

if TYPE_CHECKING:
    from ._registry import MakeTransport


@_check
async def check_bind_and_unbind_with_routing_keys(
    make_transport: MakeTransport,
) -> None:
    """Bindings route by key, bind twice is once, unbind stops; missing ends are 404."""
    async with make_transport().open_connection() as conn:
        exchange = _name("x")
        await conn.declare_exchange(exchange, ExchangeType.DIRECT)
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.bind_queue(queue, exchange, "k1")
        await conn.bind_queue(queue, exchange, "k2")
        await conn.bind_queue(queue, exchange, "k1")
        for key in ("k1", "k2", "k3"):
            await conn.publish(exchange, key, key.encode())
        assert _bodies(await _drain(conn, queue)) == [b"k1", b"k2"]
        await conn.unbind_queue(queue, exchange, "k1")
        for key in ("k1", "k2"):
            await conn.publish(exchange, key, key.encode())
        assert _bodies(await _drain(conn, queue)) == [b"k2"]
        # Unbinding what is not bound is not an error.
        await conn.unbind_queue(queue, exchange, "k1")
        await conn.unbind_queue(queue, exchange, "never-bound")
        await conn.unbind_queue(_name("missing"), exchange, "k2")
        await conn.unbind_queue(queue, _name("missing"), "k2")
        missing_exchange = _name("missing")
        await _assert_not_found(
            conn,
            "exchange",
            missing_exchange,
            lambda: conn.bind_queue(queue, missing_exchange, "k"),
        )
        missing_queue = _name("missing")
        await _assert_not_found(
            conn,
            "queue",
            missing_queue,
            lambda: conn.bind_queue(missing_queue, exchange, "k"),
        )
        await conn.publish(exchange, "k2", b"k2 again")
        assert _bodies(await _drain(conn, queue)) == [b"k2 again"]


#: Routing keys published in :func:`check_topic_routing_matches_rabbitmq`.
_TOPIC_KEYS = (
    "", "a", "b", "a.b", "b.a", "a.a", "a.b.c", "a.c.b", "a.b.c.b", "a..b", ".",
    "..", "a.", ".a", "a*", "ab", "A", "a.b.b.c", "a#", "#",
)  # fmt: skip

#: Which of :data:`_TOPIC_KEYS` each binding key matches, as measured on RabbitMQ.
_TOPIC_MATCHES: dict[str, tuple[str, ...]] = {
    "#": _TOPIC_KEYS,
    "#.#": _TOPIC_KEYS,
    "*": ("a", "b", "a*", "ab", "A", "a#", "#"),
    "": ("",),
    "a": ("a",),
    "a.#": ("a", "a.b", "a.a", "a.b.c", "a.c.b", "a.b.c.b", "a..b", "a.", "a.b.b.c"),
    "a.*": ("a.b", "a.a", "a."),
    "#.a": ("a", "b.a", "a.a", ".a"),
    "*.a": ("b.a", "a.a", ".a"),
    "a.*.#": ("a.b", "a.a", "a.b.c", "a.c.b", "a.b.c.b", "a..b", "a.", "a.b.b.c"),
    "a.#.b": ("a.b", "a.c.b", "a.b.c.b", "a..b"),
    "#.*": tuple(key for key in _TOPIC_KEYS if key),
    "*.#": tuple(key for key in _TOPIC_KEYS if key),
    "*.*": ("a.b", "b.a", "a.a", ".", "a.", ".a"),
    "a..b": ("a..b",),
    "a.*.b": ("a.c.b", "a..b"),
    ".": (".",),
    "..": ("..",),
    "#.b.#": ("b", "a.b", "b.a", "a.b.c", "a.c.b", "a.b.c.b", "a..b", "a.b.b.c"),
    "a*": ("a*",),
    "a#": ("a#",),
    "#.": (".", "..", "a."),
    ".#": (".", "..", ".a"),
}


@_check
async def check_topic_routing_matches_rabbitmq(make_transport: MakeTransport) -> None:
    """Topic bindings match ``*`` and ``#`` exactly as RabbitMQ does, edge cases too."""
    async with make_transport().open_connection() as conn:
        exchange = _name("topic")
        await conn.declare_exchange(exchange, ExchangeType.TOPIC)
        queues: dict[str, str] = {}
        for binding in _TOPIC_MATCHES:
            queue = (await conn.declare_queue(_name("q"))).name
            await conn.bind_queue(queue, exchange, binding)
            queues[binding] = queue
        for key in _TOPIC_KEYS:
            await conn.publish(exchange, key, key.encode())
        wrong = {}
        for binding, queue in queues.items():
            got = tuple(body.decode() for body in _bodies(await _drain(conn, queue)))
            if got != _TOPIC_MATCHES[binding]:
                wrong[binding] = got
            await conn.delete_queue(queue)
        assert not wrong, "\n".join(
            f"binding {binding!r} matched {got!r}, RabbitMQ matches "
            f"{_TOPIC_MATCHES[binding]!r}"
            for binding, got in wrong.items()
        )


@_check
async def check_message_matching_several_bindings_arrives_once(
    make_transport: MakeTransport,
) -> None:
    """A queue gets one copy of a message however many of its bindings match."""
    async with make_transport().open_connection() as conn:
        topic = _name("topic")
        await conn.declare_exchange(topic, ExchangeType.TOPIC)
        queue = (await conn.declare_queue(_name("q"))).name
        for binding in ("#", "a.*", "a.b", "*.b", "a.#"):
            await conn.bind_queue(queue, topic, binding)
        await conn.publish(topic, "a.b", b"once")
        assert _bodies(await _drain(conn, queue)) == [b"once"]
        fanout = _name("fanout")
        await conn.declare_exchange(fanout, ExchangeType.FANOUT)
        await conn.bind_queue(queue, fanout, "one")
        await conn.bind_queue(queue, fanout, "two")
        await conn.publish(fanout, "", b"once too")
        assert _bodies(await _drain(conn, queue)) == [b"once too"]


@_check
async def check_direct_routing(make_transport: MakeTransport) -> None:
    """A direct exchange routes on the exact, case-sensitive key to every match."""
    async with make_transport().open_connection() as conn:
        exchange = _name("direct")
        await conn.declare_exchange(exchange, ExchangeType.DIRECT)
        first = (await conn.declare_queue(_name("q"))).name
        second = (await conn.declare_queue(_name("q"))).name
        empty = (await conn.declare_queue(_name("q"))).name
        await conn.bind_queue(first, exchange, "order.placed")
        await conn.bind_queue(second, exchange, "order.placed")
        await conn.bind_queue(second, exchange, "order.*")
        await conn.bind_queue(empty, exchange, "")
        for key in (
            "order.placed",
            "Order.Placed",
            "order.shipped",
            "order",
            "order.*",
            "",
        ):
            await conn.publish(exchange, key, key.encode())
        assert _bodies(await _drain(conn, first)) == [b"order.placed"]
        assert _bodies(await _drain(conn, second)) == [b"order.placed", b"order.*"]
        assert _bodies(await _drain(conn, empty)) == [b""]


@_check
async def check_fanout_routing(make_transport: MakeTransport) -> None:
    """A fanout exchange gives every bound queue every message, whatever the keys."""
    async with make_transport().open_connection() as conn:
        exchange = _name("fanout")
        await conn.declare_exchange(exchange, ExchangeType.FANOUT)
        first = (await conn.declare_queue(_name("q"))).name
        second = (await conn.declare_queue(_name("q"))).name
        await conn.bind_queue(first, exchange, "only-this")
        await conn.bind_queue(second, exchange, "")
        for key in ("only-this", "anything.else", ""):
            await conn.publish(exchange, key, key.encode())
        expected = [b"only-this", b"anything.else", b""]
        for queue in (first, second):
            delivered = await _drain(conn, queue)
            assert _bodies(delivered) == expected
            assert [d.routing_key for d in delivered] == [b.decode() for b in expected]
            assert {d.exchange for d in delivered} == {exchange}


@_check
async def check_default_exchange_routes_by_queue_name(
    make_transport: MakeTransport,
) -> None:
    """``""`` routes a message to the queue named by its key, or drops it."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.publish("", queue, b"by name")
        # A key naming no queue is dropped silently ...
        await conn.publish("", _name("missing"), b"dropped")
        (delivery,) = await _receive_and_ack(conn, queue, 1)
        assert (delivery.exchange, delivery.routing_key, delivery.body) == (
            "",
            queue,
            b"by name",
        )
        # ... unless mandatory.
        await _assert_raises(
            conn,
            PublishNotConfirmed,
            lambda: conn.publish("", _name("missing"), b"returned", mandatory=True),
            "a mandatory message to no queue was confirmed",
        )
        assert await _drain(conn, queue) == []
