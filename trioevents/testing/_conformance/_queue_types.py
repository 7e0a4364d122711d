"""The queue-type checks: classic and quorum queues (``x-queue-type``).

What a quorum queue refuses (flags, server names, the other type's arguments),
that a queue's type never changes on a redeclare, how a quorum queue counts
redeliveries in ``x-delivery-count`` and puts them at the back, and what
``x-delivery-limit`` does once a message was returned that often: dead-letter it
(reason ``delivery_limit``) or drop it. Measured on RabbitMQ 3.10.8.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Final

import trio

from ..._exceptions import PreconditionFailed
from ..._message import Properties
from ._registry import _check
from ._support import (
    _TTL_MS,
    _VHOST,
    _assert_not_early,
    _assert_one_death,
    _assert_refused,
    _bodies,
    _dead_letter_target,
    _drain,
    _inequivalent,
    _message_count,
    _name,
    _receive,
    _receive_and_ack,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..._message import Delivery
    from ...abc import Connection
    from ._registry import MakeTransport

_QUORUM: Final = {"x-queue-type": "quorum"}


def _invalid_property(prop: str, queue: str) -> str:
    return (
        rf"PRECONDITION_FAILED - invalid property '{prop}' for queue "
        rf"'{re.escape(queue)}' {_VHOST}$"
    )


def _invalid_arg(arg: str, queue: str, module: str) -> str:
    return (
        rf"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{re.escape(queue)}' "
        rf"{_VHOST} of queue type {module}$"
    )


def _delivery_count(delivery: Delivery) -> object:
    return (delivery.properties.headers or {}).get("x-delivery-count")


async def _quorum_queue(conn: Connection, **arguments: Any) -> str:
    name = _name("quorum")
    await conn.declare_queue(name, durable=True, arguments={**_QUORUM, **arguments})
    return name


@_check
async def check_quorum_queue_flags_are_refused(make_transport: MakeTransport) -> None:
    """A quorum queue is durable, not exclusive, not auto-delete, not server-named."""
    async with make_transport().open_connection() as conn:
        refusals: list[tuple[str, dict[str, bool]]] = [
            ("non-durable", {}),
            ("exclusive-owner", {"durable": True, "exclusive": True}),
            ("auto-delete", {"durable": True, "auto_delete": True}),
            # Checked in this order: auto-delete, exclusive, durable.
            ("auto-delete", {"exclusive": True, "auto_delete": True}),
            ("exclusive-owner", {"exclusive": True}),
        ]
        for prop, flags in refusals:
            name = _name("quorum")
            await _assert_refused(
                conn,
                PreconditionFailed,
                _invalid_property(prop, name),
                functools.partial(conn.declare_queue, name, arguments=_QUORUM, **flags),
            )
        await _assert_refused(
            conn,
            PreconditionFailed,
            r"PRECONDITION_FAILED - Cannot declare a server-named queue for type "
            r"rabbit_quorum_queue$",
            lambda: conn.declare_queue("", durable=True, arguments=_QUORUM),
        )
        name = _name("q")
        await _assert_refused(
            conn,
            PreconditionFailed,
            rf"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue "
            rf"'{re.escape(name)}' {_VHOST}: \"unsupported queue type 'lasting'\"$",
            lambda: conn.declare_queue(
                name, durable=True, arguments={"x-queue-type": "lasting"}
            ),
        )
        # Each type refuses the other's arguments.
        for arguments, arg, module in (
            ({**_QUORUM, "x-max-priority": 5}, "x-max-priority", "rabbit_quorum_queue"),
            ({"x-delivery-limit": 5}, "x-delivery-limit", "rabbit_classic_queue"),
            (
                {"x-dead-letter-strategy": "at-least-once"},
                "x-dead-letter-strategy",
                "rabbit_classic_queue",
            ),
        ):
            name = _name("q")
            await _assert_refused(
                conn,
                PreconditionFailed,
                _invalid_arg(arg, name, module),
                functools.partial(
                    conn.declare_queue, name, durable=True, arguments=arguments
                ),
            )
        # None of the refused queues was made.
        queue = await _quorum_queue(conn)
        await conn.publish("", queue, b"kept")
        assert _bodies(await _drain(conn, queue)) == [b"kept"]


@_check
async def check_queue_type_mismatch_is_precondition_failed(
    make_transport: MakeTransport,
) -> None:
    """A queue keeps its type: redeclaring it as the other type is 406."""
    async with make_transport().open_connection() as conn:
        classic = _name("classic")
        await conn.declare_queue(classic, durable=True)
        # An explicit "classic" is the type a queue gets without x-queue-type.
        await conn.declare_queue(
            classic, durable=True, arguments={"x-queue-type": "classic"}
        )
        # Each refusal names the first argument that differs, in the existing
        # queue's type's order; a value given on one side only shows its type.
        quorum = await _quorum_queue(conn, **{"x-delivery-limit": 5})
        await conn.declare_queue(
            quorum, durable=True, arguments={**_QUORUM, "x-delivery-limit": 5}
        )
        await conn.declare_queue(quorum, passive=True)
        limit = {"x-delivery-limit": 5}
        refusals: list[tuple[str, Mapping[str, object], str, str]] = [
            (
                classic,
                _QUORUM,
                "x-queue-type",
                "received the value 'quorum' of type 'longstr' but current is none",
            ),
            (
                quorum,
                limit,
                "x-queue-type",
                "received none but current is the value 'quorum' of type 'longstr'",
            ),
            (
                quorum,
                {"x-queue-type": "classic", **limit},
                "x-queue-type",
                "received 'classic' but current is 'quorum'",
            ),
            # The type's own arguments are compared too.
            (
                quorum,
                {**_QUORUM, "x-delivery-limit": 6},
                "x-delivery-limit",
                "received '6' but current is '5'",
            ),
            (
                quorum,
                _QUORUM,
                "x-delivery-limit",
                "received none but current is the value '5' of type 'byte'",
            ),
        ]
        for queue, arguments, arg, text in refusals:
            await _assert_refused(
                conn,
                PreconditionFailed,
                f"{_inequivalent(arg, 'queue', queue)}: {re.escape(text)}$",
                functools.partial(
                    conn.declare_queue, queue, durable=True, arguments=arguments
                ),
            )


@_check
async def check_quorum_redeliveries_count_in_x_delivery_count(
    make_transport: MakeTransport,
) -> None:
    """Each return adds one to ``x-delivery-count``; a requeue goes to the back."""
    transport = make_transport()
    async with transport.open_connection() as conn:
        queue = await _quorum_queue(conn)
        await conn.publish("", queue, b"a", Properties(headers={"kept": True}))
        await conn.publish("", queue, b"b")
        seen: list[tuple[bytes, bool, object]] = []
        async with conn.open_consumer(queue, prefetch_count=1) as consumer:
            first = await _receive(consumer)
            seen.append((first.body, first.redelivered, _delivery_count(first)))
            assert (first.properties.headers or {}).get("kept") is True
            await first.nack(requeue=True)
            # Back of the queue: "b" comes first now.
            second = await _receive(consumer)
            assert second.body == b"b", _bodies([second])
            await second.ack()
            again = await _receive(consumer)
            seen.append((again.body, again.redelivered, _delivery_count(again)))
            assert (again.properties.headers or {}).get("kept") is True
            await again.reject(requeue=True)
            third = await _receive(consumer)
            seen.append((third.body, third.redelivered, _delivery_count(third)))
        # Closing the consumer with a delivery unsettled is a return too.
        async with transport.open_connection() as other:
            async with other.open_consumer(queue, prefetch_count=1) as consumer:
                fourth = await _receive(consumer)
                seen.append((fourth.body, fourth.redelivered, _delivery_count(fourth)))
        (fifth,) = await _receive_and_ack(conn, queue, 1)
        seen.append((fifth.body, fifth.redelivered, _delivery_count(fifth)))
        assert seen == [
            (b"a", False, None),
            (b"a", True, 1),
            (b"a", True, 2),
            (b"a", True, 3),
            (b"a", True, 4),
        ], seen
        assert await _message_count(conn, queue) == 0


@_check
async def check_quorum_delivery_limit_dead_letters(
    make_transport: MakeTransport,
) -> None:
    """Past ``x-delivery-limit`` returns a message is dead-lettered, else dropped."""
    async with make_transport().open_connection() as conn:
        dlx, dlq = await _dead_letter_target(conn)
        queue = await _quorum_queue(
            conn, **{"x-delivery-limit": 2, "x-dead-letter-exchange": dlx}
        )
        await conn.publish("", queue, b"poison", Properties(headers={"kept": 1}))
        counts = []
        async with conn.open_consumer(queue, prefetch_count=1) as consumer:
            # Delivered limit + 1 times: the third return dead-letters it.
            for _ in range(3):
                delivery = await _receive(consumer)
                counts.append(_delivery_count(delivery))
                await delivery.nack(requeue=True)
            (dead,) = await _receive_and_ack(conn, dlq, 1)
        assert counts == [None, 1, 2], counts
        assert (dead.body, dead.exchange, dead.routing_key) == (b"poison", dlx, queue)
        # The count is not kept: a delivery, not the message, carries it.
        _assert_one_death(
            dead, "delivery_limit", queue, "", [queue], other_headers={"kept": 1}
        )
        assert await _message_count(conn, queue) == 0

        # Without a dead-letter exchange it is dropped; a limit of 0 allows none.
        dropping = await _quorum_queue(conn, **{"x-delivery-limit": 0})
        await conn.publish("", dropping, b"dropped")
        async with conn.open_consumer(dropping, prefetch_count=1) as consumer:
            await (await _receive(consumer)).reject(requeue=True)
        assert await _drain(conn, dropping) == []
        assert await _message_count(conn, dropping) == 0


@_check
async def check_quorum_message_ttl_dead_letters(make_transport: MakeTransport) -> None:
    """``x-message-ttl`` expires into the DLX, at-least-once too (a retry queue)."""
    async with make_transport().open_connection() as conn:
        target = await _quorum_queue(conn)
        delay = await _quorum_queue(
            conn,
            **{
                "x-message-ttl": _TTL_MS,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": target,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        async with conn.open_consumer(target) as consumer:
            start = trio.current_time()
            await conn.publish("", delay, b"later", Properties(headers={"kept": "yes"}))
            back = await _receive(consumer)
            elapsed = trio.current_time() - start
            await back.ack()
        _assert_not_early(elapsed)
        assert (back.body, back.exchange, back.routing_key) == (b"later", "", target)
        _assert_one_death(
            back, "expired", delay, "", [delay], other_headers={"kept": "yes"}
        )
        assert await _message_count(conn, delay) == 0
