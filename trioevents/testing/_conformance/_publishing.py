"""The publishing checks.

Every property and every header type arrives as published, timestamps in whole
seconds, publishes to a missing exchange, mandatory and ``x-overflow`` refusals,
and publishes cancelled at any point.
"""

from __future__ import annotations

import datetime
import decimal
import functools
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from ..._exceptions import PublishNotConfirmed
from ..._message import ExchangeType, Properties
from ._registry import _check
from ._support import (
    _assert_not_found,
    _assert_one_death,
    _assert_properties,
    _assert_raises,
    _assert_same_value,
    _assert_usable,
    _bodies,
    _dead_letter_target,
    _drain,
    _message_count,
    _name,
    _receive_and_ack,
)

if TYPE_CHECKING:
    from ._registry import MakeTransport


@_check
async def check_publish_round_trips_every_property(
    make_transport: MakeTransport,
) -> None:
    """Every property arrives exactly as published; no properties arrive as none.

    ``user_id`` is left out: RabbitMQ refuses any but the connection's user.
    """
    async with make_transport().open_connection() as conn:
        exchange = _name("x")
        await conn.declare_exchange(exchange, ExchangeType.DIRECT)
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.bind_queue(queue, exchange, "rk")
        properties = Properties(
            content_type="application/json",
            content_encoding="utf-8",
            headers={"nameko.call_id_stack": ["svc.method.1"], "count": 3},
            delivery_mode=2,
            priority=7,
            correlation_id="correlation-1",
            reply_to="reply-queue",
            expiration="600000",
            message_id="message-1",
            timestamp=datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
            type="order_placed",
            app_id="conformance",
        )
        await conn.publish(exchange, "rk", b'{"id": 1}', properties)
        await conn.publish(exchange, "rk", b"bare")
        await conn.publish(exchange, "rk", b"", Properties(delivery_mode=1, priority=0))
        first, bare, empty = await _drain(conn, queue)
        assert (first.exchange, first.routing_key, first.redelivered) == (
            exchange,
            "rk",
            False,
        )
        assert first.body == b'{"id": 1}'
        _assert_properties(properties, first.properties)
        assert bare.body == b"bare"
        _assert_properties(Properties(), bare.properties)
        assert empty.body == b""
        _assert_properties(Properties(delivery_mode=1, priority=0), empty.properties)


@_check
async def check_header_values_keep_their_types(make_transport: MakeTransport) -> None:
    """Header values of every AMQP field type arrive with the same value and type."""
    headers: dict[str, Any] = {
        "str": "text",
        "unicode": "h\u00e9llo \u2603",
        "empty-str": "",
        "bytes": b"\x00\xffraw",
        "int": 42,
        "negative": -7,
        "zero": 0,
        "int32-max": 2**31 - 1,
        "int64-max": 2**63 - 1,
        "int64-min": -(2**63),
        "true": True,
        "false": False,
        "none": None,
        "float": 0.1,
        "decimal": decimal.Decimal("1.25"),
        "datetime": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
        "table": {"nested": {"deep": [1, "two", {"three": True}]}, "empty": {}},
        "list": [1, "a", b"b", None, 2.5, [2, [3]], {"k": "v"}],
        "empty-list": [],
    }
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.publish("", queue, b"typed", Properties(headers=headers))
        (delivery,) = await _drain(conn, queue)
        _assert_same_value("headers", headers, delivery.properties.headers)


@_check
async def check_timestamps_carry_whole_seconds(make_transport: MakeTransport) -> None:
    """The timestamp property and datetime headers arrive as UTC whole seconds."""
    sent = datetime.datetime(2024, 5, 6, 7, 8, 9, 654321, tzinfo=datetime.UTC)
    offset = datetime.datetime(
        2024, 5, 6, 9, 8, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    whole = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.publish(
            "",
            queue,
            b"when",
            Properties(timestamp=sent, headers={"at": sent, "offset": offset}),
        )
        await conn.publish("", queue, b"offset", Properties(timestamp=offset))
        first, second = await _drain(conn, queue)
        for path, value in (
            ("timestamp", first.properties.timestamp),
            ("headers['at']", (first.properties.headers or {}).get("at")),
            ("headers['offset']", (first.properties.headers or {}).get("offset")),
            ("timestamp (offset)", second.properties.timestamp),
        ):
            assert isinstance(value, datetime.datetime), f"{path}: {value!r}"
            assert value == whole, f"{path}: {value!r} != {whole!r}"
            assert value.utcoffset() == datetime.timedelta(0), f"{path}: {value!r}"


@_check
async def check_publish_to_missing_exchange_raises_not_found(
    make_transport: MakeTransport,
) -> None:
    """Publishing to a missing exchange is 404, for new ``amq.`` names too."""
    async with make_transport().open_connection() as conn:
        missing = _name("missing")
        await _assert_not_found(
            conn, "exchange", missing, lambda: conn.publish(missing, "k", b"lost")
        )
        await _assert_not_found(
            conn,
            "exchange",
            "amq.conformance-missing",
            lambda: conn.publish("amq.conformance-missing", "k", b"lost"),
        )


@_check
async def check_mandatory_unroutable_publish_is_not_confirmed(
    make_transport: MakeTransport,
) -> None:
    """A mandatory message no queue takes raises PublishNotConfirmed."""
    async with make_transport().open_connection() as conn:
        exchange = _name("x")
        await conn.declare_exchange(exchange, ExchangeType.TOPIC)
        # Not mandatory: dropped silently.
        await conn.publish(exchange, "nowhere", b"dropped")
        await _assert_raises(
            conn,
            PublishNotConfirmed,
            lambda: conn.publish(exchange, "nowhere", b"returned", mandatory=True),
            "an unroutable mandatory message was confirmed",
        )
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.bind_queue(queue, exchange, "somewhere.#")
        await conn.publish(exchange, "somewhere.else", b"routed", mandatory=True)
        assert _bodies(await _drain(conn, queue)) == [b"routed"]


@_check
async def check_full_queue_with_reject_publish_refuses(
    make_transport: MakeTransport,
) -> None:
    """``x-overflow`` reject-publish nacks; reject-publish-dlx also dead-letters."""
    async with make_transport().open_connection() as conn:
        dlx, dlq = await _dead_letter_target(conn)
        for overflow in ("reject-publish", "reject-publish-dlx"):
            queue = _name("q")
            await conn.declare_queue(
                queue,
                arguments={
                    "x-max-length": 1,
                    "x-overflow": overflow,
                    "x-dead-letter-exchange": dlx,
                },
            )
            await conn.publish("", queue, b"fits")
            await _assert_raises(
                conn,
                PublishNotConfirmed,
                functools.partial(conn.publish, "", queue, b"refused"),
                f"{overflow}: a full queue confirmed a message",
            )
            assert await _message_count(conn, queue) == 1
            (kept,) = await _receive_and_ack(conn, queue, 1)
            assert kept.body == b"fits"
            dead = await _drain(conn, dlq)
            if overflow == "reject-publish":
                assert dead == [], f"reject-publish dead-lettered {_bodies(dead)}"
            else:
                assert _bodies(dead) == [b"refused"]
                _assert_one_death(dead[0], "maxlen", queue, "", [queue])


@_check
async def check_cancelled_publish_is_all_or_nothing(
    make_transport: MakeTransport,
) -> None:
    """A publish cancelled at any point delivers the whole message or nothing."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        body = bytes(range(256)) * 64
        sent: list[bytes] = []
        for attempt in range(20):
            message = b"%02d" % attempt + body
            sent.append(message)
            with trio.move_on_after(attempt * 0.0005) as scope:
                if attempt == 0:
                    scope.cancel()
                await conn.publish("", queue, message)
        await _assert_usable(conn)
        got = _bodies(await _drain(conn, queue))
        assert all(message in sent for message in got), "a message arrived damaged"
        assert got == sorted(set(got)), "messages arrived twice or out of order"
