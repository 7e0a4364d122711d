"""The queue checks.

What a declare reports, passive declares and redeclares, server-named queues,
deleting and purging, auto-delete and exclusive queues, the consumers of a deleted
queue, and ``x-expires``.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import trio
import trio.testing

from ..._exceptions import (
    ConsumerCancelled,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from ..._message import ExchangeType
from ._registry import _check
from ._support import (
    _TTL_MS,
    _VHOST,
    _WAIT,
    _assert_no_queue,
    _assert_not_early,
    _assert_not_found,
    _assert_receive_raises,
    _assert_refused,
    _assert_usable,
    _bodies,
    _consume_once,
    _drain,
    _inequivalent,
    _locked,
    _message_count,
    _name,
    _receive,
    _wait_until_missing,
)

if TYPE_CHECKING:
    from ._registry import MakeTransport


@_check
async def check_queue_declare_reports_counts(make_transport: MakeTransport) -> None:
    """Declare answers the name, the ready messages and the consumers."""
    async with make_transport().open_connection() as conn:
        name = _name("q")
        declared = await conn.declare_queue(name)
        assert (declared.name, declared.message_count, declared.consumer_count) == (
            name,
            0,
            0,
        )
        for index in range(3):
            await conn.publish("", name, b"%d" % index)
        again = await conn.declare_queue(name)
        assert (again.name, again.message_count, again.consumer_count) == (name, 3, 0)
        async with conn.open_consumer(name, prefetch_count=1) as first:
            async with conn.open_consumer(name, prefetch_count=1) as second:
                held_first = await _receive(first)
                held_second = await _receive(second)
                # Unacked deliveries are not counted as messages.
                passive = await conn.declare_queue(name, passive=True)
                assert (
                    passive.name,
                    passive.message_count,
                    passive.consumer_count,
                ) == (
                    name,
                    1,
                    2,
                ), passive
                await held_first.ack()
                await (await _receive(first)).ack()
                await held_second.ack()
        after = await conn.declare_queue(name, passive=True)
        assert (after.message_count, after.consumer_count) == (0, 0), after


@_check
async def check_queue_passive_declare(make_transport: MakeTransport) -> None:
    """A passive declare finds a queue whatever flags it names; else 404."""
    async with make_transport().open_connection() as conn:
        missing = _name("missing")
        await _assert_no_queue(conn, missing)
        await _assert_no_queue(conn, missing)
        name = _name("q")
        await conn.declare_queue(name, durable=True, arguments={"x-max-length": 10})
        await conn.publish("", name, b"one")
        passive = await conn.declare_queue(
            name, auto_delete=True, arguments={"x-max-length": 1}, passive=True
        )
        assert (passive.name, passive.message_count) == (name, 1)
        # The flags a passive declare names changed nothing.
        await conn.declare_queue(name, durable=True, arguments={"x-max-length": 10})


@_check
async def check_queue_redeclare_with_other_flags_fails(
    make_transport: MakeTransport,
) -> None:
    """A redeclare with other flags or arguments is 406; other ``exclusive`` is 405."""
    async with make_transport().open_connection() as conn:
        dlx = _name("dlx")
        name = _name("q")
        arguments = {"x-message-ttl": 60_000, "x-dead-letter-exchange": dlx}
        await conn.declare_queue(name, durable=True, arguments=arguments)
        other_dlx = _name("other")
        for arg, flags, other_arguments in (
            ("durable", {}, arguments),
            ("auto_delete", {"durable": True, "auto_delete": True}, arguments),
            ("x-message-ttl", {"durable": True}, {"x-dead-letter-exchange": dlx}),
            (
                "x-message-ttl",
                {"durable": True},
                {**arguments, "x-message-ttl": 30_000},
            ),
            (
                "x-dead-letter-exchange",
                {"durable": True},
                {**arguments, "x-dead-letter-exchange": other_dlx},
            ),
            ("x-max-length", {"durable": True}, {**arguments, "x-max-length": 5}),
        ):
            await _assert_refused(
                conn,
                PreconditionFailed,
                _inequivalent(arg, "queue", name),
                functools.partial(
                    conn.declare_queue, name, arguments=other_arguments, **flags
                ),
            )
        await _assert_refused(
            conn,
            ResourceLocked,
            _locked(name),
            lambda: conn.declare_queue(
                name, durable=True, exclusive=True, arguments=arguments
            ),
        )
        # Unknown arguments are not compared.
        await conn.declare_queue(
            name, durable=True, arguments={**arguments, "x-conformance": "anything"}
        )
        await conn.declare_queue(name, durable=True, arguments=arguments)


@_check
async def check_server_named_queues(make_transport: MakeTransport) -> None:
    """Declaring ``""`` makes a new queue named ``amq.gen-...`` that works."""
    async with make_transport().open_connection() as conn:
        first = await conn.declare_queue("", exclusive=True)
        second = await conn.declare_queue("")
        assert first.name.startswith("amq.gen-"), first.name
        assert second.name.startswith("amq.gen-"), second.name
        assert first.name != second.name
        assert (first.message_count, first.consumer_count) == (0, 0)
        passive = await conn.declare_queue(second.name, passive=True)
        assert passive.name == second.name
        await conn.publish("", first.name, b"to the server-named queue")
        assert _bodies(await _drain(conn, first.name)) == [b"to the server-named queue"]
        exchange = _name("x")
        await conn.declare_exchange(exchange, ExchangeType.FANOUT)
        await conn.bind_queue(second.name, exchange)
        await conn.publish(exchange, "", b"bound")
        assert _bodies(await _drain(conn, second.name)) == [b"bound"]
        assert await conn.delete_queue(second.name) == 0


@_check
async def check_delete_queue(make_transport: MakeTransport) -> None:
    """Delete returns the ready messages; if_unused / if_empty are 406; missing is 0."""
    async with make_transport().open_connection() as conn:
        name = _name("q")
        await conn.declare_queue(name)
        for index in range(4):
            await conn.publish("", name, b"%d" % index)
        async with conn.open_consumer(name, prefetch_count=1) as consumer:
            held = await _receive(consumer)
            await _assert_refused(
                conn,
                PreconditionFailed,
                rf"PRECONDITION_FAILED - queue '{re.escape(name)}' {_VHOST} in use$",
                lambda: conn.delete_queue(name, if_unused=True),
            )
            await _assert_refused(
                conn,
                PreconditionFailed,
                rf"PRECONDITION_FAILED - queue '{re.escape(name)}' {_VHOST} not empty$",
                lambda: conn.delete_queue(name, if_empty=True),
            )
            assert await _message_count(conn, name) == 3
            # The unacked delivery is not counted.
            assert await conn.delete_queue(name) == 3
            await _assert_no_queue(conn, name)
            assert held.body == b"0"
        # Missing queues delete fine, with any flags.
        assert await conn.delete_queue(name) == 0
        assert await conn.delete_queue(_name("missing"), if_unused=True) == 0
        # An empty queue without consumers passes both conditions.
        empty = _name("q")
        await conn.declare_queue(empty)
        assert await conn.delete_queue(empty, if_unused=True, if_empty=True) == 0
        await _assert_no_queue(conn, empty)


@_check
async def check_purge_queue(make_transport: MakeTransport) -> None:
    """Purge drops and counts the ready messages only; a missing queue is 404."""
    async with make_transport().open_connection() as conn:
        name = _name("q")
        await conn.declare_queue(name)
        assert await conn.purge_queue(name) == 0
        for index in range(4):
            await conn.publish("", name, b"%d" % index)
        async with conn.open_consumer(name, prefetch_count=1) as consumer:
            held = await _receive(consumer)
            assert await conn.purge_queue(name) == 3
            assert await _message_count(conn, name) == 0
            # The unacked delivery survived the purge and can come back.
            await held.nack(requeue=True)
            back = await _receive(consumer)
            assert (back.body, back.redelivered) == (b"0", True)
            await back.ack()
        assert await _message_count(conn, name) == 0
        missing = _name("missing")
        await _assert_not_found(
            conn, "queue", missing, lambda: conn.purge_queue(missing)
        )


@_check
async def check_auto_delete_queue_goes_with_its_last_consumer(
    make_transport: MakeTransport,
) -> None:
    """An auto-delete queue goes when its last consumer leaves, not before."""
    async with make_transport().open_connection() as conn:
        name = _name("q")
        await conn.declare_queue(name, auto_delete=True)
        # Never consumed: it stays.
        await conn.declare_queue(name, passive=True)
        async with conn.open_consumer(name):
            async with conn.open_consumer(name):
                pass
            assert (await conn.declare_queue(name, passive=True)).consumer_count == 1
        await _wait_until_missing(lambda: conn.declare_queue(name, passive=True))
        await _assert_usable(conn)

        # Cancelling the last consumer is leaving too.
        other = _name("q")
        await conn.declare_queue(other, auto_delete=True)
        async with conn.open_consumer(other) as consumer:
            await consumer.cancel()
            await _wait_until_missing(lambda: conn.declare_queue(other, passive=True))
        await _assert_usable(conn)


@_check
async def check_exclusive_queue_belongs_to_its_connection(
    make_transport: MakeTransport,
) -> None:
    """Other connections get 405 for an exclusive queue, which dies with its owner."""
    transport = make_transport()
    async with transport.open_connection() as other:
        async with transport.open_connection() as owner:
            name = _name("q")
            await owner.declare_queue(name, exclusive=True)
            exchange = _name("x")
            await owner.declare_exchange(exchange, ExchangeType.FANOUT)
            for operation in (
                lambda: other.declare_queue(name, passive=True),
                lambda: other.declare_queue(name, exclusive=True),
                lambda: other.declare_queue(name),
                lambda: other.bind_queue(name, exchange),
                lambda: other.purge_queue(name),
                lambda: other.delete_queue(name),
                lambda: _consume_once(other, name),
            ):
                await _assert_refused(other, ResourceLocked, _locked(name), operation)
            # Publishing to it is anyone's right.
            await other.publish("", name, b"from another connection")
            assert _bodies(await _drain(owner, name)) == [b"from another connection"]
            await owner.declare_queue(name, exclusive=True)
        await _wait_until_missing(lambda: other.declare_queue(name, passive=True))
        await _assert_usable(other)


@_check
async def check_deleting_a_consumed_queue_cancels_its_consumers(
    make_transport: MakeTransport,
) -> None:
    """Deleting a queue makes its consumers' receive raise ConsumerCancelled."""
    transport = make_transport()
    async with (
        transport.open_connection() as conn,
        transport.open_connection() as other,
    ):
        name = _name("q")
        await conn.declare_queue(name)
        cancelled: list[ConsumerCancelled] = []
        async with conn.open_consumer(name) as consumer:

            async def wait_for_delivery() -> None:
                exc = await _assert_receive_raises(
                    consumer, ConsumerCancelled, "got a delivery from a deleted queue"
                )
                cancelled.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_delivery)
                await trio.testing.wait_all_tasks_blocked()
                assert await other.delete_queue(name) == 0
            assert len(cancelled) == 1
            # It stays cancelled.
            await _assert_receive_raises(
                consumer, ConsumerCancelled, "a cancelled consumer received a delivery"
            )
        await _assert_usable(conn)

        # Deleted by the consumer's own connection, with a message held.
        name = _name("q")
        await conn.declare_queue(name)
        await conn.publish("", name, b"held")
        async with conn.open_consumer(name, prefetch_count=1) as consumer:
            held = await _receive(consumer)
            assert held.body == b"held"
            assert await conn.delete_queue(name) == 0
            await _assert_receive_raises(
                consumer, ConsumerCancelled, "a cancelled consumer received a delivery"
            )
        await _assert_usable(conn)
        await _assert_usable(other)


@_check
async def check_queue_expires_when_unused(make_transport: MakeTransport) -> None:
    """A queue with ``x-expires`` is deleted once unused for that long."""
    async with make_transport().open_connection() as conn:
        name = _name("q")
        start = trio.current_time()
        await conn.declare_queue(name, arguments={"x-expires": _TTL_MS})
        # Every declare, passive too, renews the lease on RabbitMQ: look less often
        # than the lease lasts.
        with trio.fail_after(_WAIT):
            while True:
                await trio.sleep(2 * _TTL_MS / 1000)
                try:
                    await conn.declare_queue(name, passive=True)
                except NotFound:
                    break
        _assert_not_early(trio.current_time() - start)
        await _assert_usable(conn)
