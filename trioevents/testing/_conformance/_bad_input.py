"""The bad-input checks.

What AMQP cannot carry (exchange types, overlong keys and names, bodies that are not
bytes, header and property values) is refused with a typed error before anything
is sent, and the connection stays usable.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, cast

from ..._exceptions import InvalidRequest, PreconditionFailed
from ..._message import ExchangeType, Properties
from ._registry import _check
from ._support import (
    _assert_invalid,
    _assert_no_exchange,
    _assert_raises,
    _bodies,
    _drain,
    _name,
)

if TYPE_CHECKING:
    from ._registry import MakeTransport


@_check
async def check_unknown_exchange_type_is_invalid(make_transport: MakeTransport) -> None:
    """An exchange type that is not an :class:`ExchangeType` is refused locally."""
    async with make_transport().open_connection() as conn:
        name = _name("x")
        for bad in ("fancy", "headers", "x-consistent-hash", 42, None):
            await _assert_invalid(
                conn, functools.partial(conn.declare_exchange, name, cast("Any", bad))
            )
        await _assert_no_exchange(conn, name)


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
            await _assert_raises(
                conn,
                (InvalidRequest, PreconditionFailed),
                functools.partial(conn.publish, "", queue, b"x", refused),
                f"{refused!r} was published",
            )
        assert await _drain(conn, queue) == []


@_check
async def check_property_values_rabbitmq_would_refuse_are_invalid(
    make_transport: MakeTransport,
) -> None:
    """Values RabbitMQ would refuse by closing the channel are refused locally.

    A refusal by RabbitMQ closes the publish channel under every publish in
    flight beside it, so these are :class:`InvalidRequest` on every transport:
    an ``expiration`` over 4294967295 ms or not of ASCII digits, and ``CC`` /
    ``BCC`` headers (routing keys RabbitMQ routes by) that are not arrays. The
    largest expiration and an empty ``CC`` array are published as usual.
    """
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for refused in (
            Properties(expiration="4294967296"),
            Properties(expiration="99999999999999999999"),
            Properties(expiration="\u0663"),  # ARABIC-INDIC DIGIT THREE
            Properties(expiration=" 5"),
            Properties(headers={"CC": "elsewhere"}),
            Properties(headers={"BCC": 5}),
        ):
            await _assert_invalid(
                conn, functools.partial(conn.publish, "", queue, b"x", refused)
            )
        await conn.publish("", queue, b"max", Properties(expiration="4294967295"))
        await conn.publish("", queue, b"cc", Properties(headers={"CC": []}))
        assert _bodies(await _drain(conn, queue)) == [b"max", b"cc"]
