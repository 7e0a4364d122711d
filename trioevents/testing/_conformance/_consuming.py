"""The consuming checks.

Round-robin between consumers, prefetch, FIFO order and where a requeued message
goes back, settling exactly once and without a cancellation point, cancelling and
closing consumers and connections, exclusive consumers, and delivery tags.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import trio
import trio.testing

from ..._exceptions import AccessRefused, AlreadySettled, PreconditionFailed
from ..._message import Settlement
from ._registry import _check
from ._support import (
    _VHOST,
    _WAIT,
    _assert_invalid,
    _assert_no_queue,
    _assert_not_found,
    _assert_receive_raises,
    _assert_refused,
    _assert_usable,
    _bodies,
    _consume_once,
    _drain,
    _inequivalent,
    _message_count,
    _name,
    _receive,
    _receive_and_ack,
    _receive_n,
    _settlement,
)

if TYPE_CHECKING:
    from ..._message import Delivery
    from ._registry import MakeTransport


@_check
async def check_competing_consumers_get_round_robin(
    make_transport: MakeTransport,
) -> None:
    """Consumers of one queue take turns, one message each."""
    transport = make_transport()
    async with (
        transport.open_connection() as conn,
        transport.open_connection() as conn_a,
        transport.open_connection() as conn_b,
    ):
        queue = (await conn.declare_queue(_name("q"))).name
        async with conn_a.open_consumer(queue) as a, conn_b.open_consumer(queue) as b:
            sent = [b"%d" % index for index in range(8)]
            for body in sent:
                await conn.publish("", queue, body)
            got_a = await _receive_n(a, 4)
            got_b = await _receive_n(b, 4)
            for delivery in got_a + got_b:
                await delivery.ack()
        assert {_bodies(got_a)[0], _bodies(got_b)[0]} == {b"0", b"1"}
        turns = (sent[0::2], sent[1::2])
        unfair = f"not round-robin: {_bodies(got_a)} / {_bodies(got_b)}"
        assert _bodies(got_a) in turns, unfair
        assert _bodies(got_b) in turns, unfair
        assert await _message_count(conn, queue) == 0


@_check
async def check_prefetch_limits_unsettled_deliveries(
    make_transport: MakeTransport,
) -> None:
    """A consumer never holds more unsettled deliveries than its prefetch."""
    transport = make_transport()
    async with (
        transport.open_connection() as conn,
        transport.open_connection() as other,
    ):
        queue = (await conn.declare_queue(_name("q"))).name
        for index in range(6):
            await conn.publish("", queue, b"%d" % index)
        async with conn.open_consumer(queue, prefetch_count=2) as consumer:
            m0, m1 = await _receive_n(consumer, 2)
            assert _bodies([m0, m1]) == [b"0", b"1"]
            # Nothing more was handed to the consumer.
            declared = await conn.declare_queue(queue, passive=True)
            assert (declared.message_count, declared.consumer_count) == (4, 1)
            # Each settle frees one slot.
            await m0.ack()
            m2 = await _receive(consumer)
            assert m2.body == b"2"
            assert await _message_count(conn, queue) == 3
            await m1.nack(requeue=False)
            m3 = await _receive(consumer)
            assert m3.body == b"3"
            assert await _message_count(conn, queue) == 2
            await m2.reject(requeue=True)
            again = await _receive(consumer)
            assert (again.body, again.redelivered) == (b"2", True)
            assert await _message_count(conn, queue) == 2
            # Full: a consumer without a limit gets the rest.
            async with other.open_consumer(queue) as unlimited:
                rest = await _receive_n(unlimited, 2)
                assert _bodies(rest) == [b"4", b"5"]
                for delivery in (*rest, again, m3):
                    await delivery.ack()
        assert await _message_count(conn, queue) == 0


@_check
async def check_queue_is_fifo(make_transport: MakeTransport) -> None:
    """Messages arrive in publish order, with and without a prefetch limit."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        sent = [b"%02d" % index for index in range(20)]
        for body in sent[:10]:
            await conn.publish("", queue, body)
        got = await _receive_and_ack(conn, queue, 10)
        for body in sent[10:]:
            await conn.publish("", queue, body)
        async with conn.open_consumer(queue, prefetch_count=1) as consumer:
            for _ in range(10):
                delivery = await _receive(consumer)
                got.append(delivery)
                await delivery.ack()
        assert _bodies(got) == sent
        assert not any(delivery.redelivered for delivery in got)


@_check
async def check_requeued_message_returns_to_its_original_position(
    make_transport: MakeTransport,
) -> None:
    """A requeued message goes back where it was, ahead of later ones, redelivered."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for index in range(3):
            await conn.publish("", queue, b"n%d" % index)
        async with conn.open_consumer(queue, prefetch_count=1) as consumer:
            first = await _receive(consumer)
            await first.nack(requeue=True)
            again = await _receive(consumer)
            assert (again.body, again.redelivered) == (b"n0", True)
            await again.ack()
            rest = []
            for _ in range(2):
                rest.append(await _receive(consumer))
                await rest[-1].ack()
            assert [(d.body, d.redelivered) for d in rest] == [
                (b"n1", False),
                (b"n2", False),
            ]

        # Requeued out of order while no consumer can take them back.
        for index in range(6):
            await conn.publish("", queue, b"m%d" % index)
        async with conn.open_consumer(queue, prefetch_count=3) as consumer:
            m0, m1, m2 = await _receive_n(consumer, 3)
            await consumer.cancel()
            await m2.nack(requeue=True)
            await m0.reject(requeue=True)
            await m1.ack()
        got = await _receive_and_ack(conn, queue, 5)
        assert [(d.body, d.redelivered) for d in got] == [
            (b"m0", True),
            (b"m2", True),
            (b"m3", False),
            (b"m4", False),
            (b"m5", False),
        ]
        assert await _message_count(conn, queue) == 0


@_check
async def check_settle_exactly_once(make_transport: MakeTransport) -> None:
    """A second ack / nack / reject raises AlreadySettled; the first one stands."""
    settles: list[tuple[str, Settlement, bool]] = [
        ("ack", Settlement.ACK, False),
        ("nack", Settlement.NACK, False),
        ("reject", Settlement.REJECT, False),
        ("nack", Settlement.NACK, True),
        ("reject", Settlement.REJECT, True),
    ]

    async def settle(delivery: Delivery, how: str, requeue: bool) -> None:
        if how == "ack":
            await delivery.ack()
        elif how == "nack":
            await delivery.nack(requeue=requeue)
        else:
            await delivery.reject(requeue=requeue)

    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        async with conn.open_consumer(queue, prefetch_count=1) as consumer:
            for how, settlement, requeue in settles:
                body = f"{how} requeue={requeue}".encode()
                await conn.publish("", queue, body)
                delivery = await _receive(consumer)
                assert delivery.body == body
                assert _settlement(delivery) is None
                await settle(delivery, how, requeue)
                assert _settlement(delivery) is settlement
                for second, second_requeue in (
                    ("ack", False),
                    ("nack", True),
                    ("nack", False),
                    ("reject", True),
                    ("reject", False),
                ):
                    try:
                        await settle(delivery, second, second_requeue)
                    except AlreadySettled:
                        pass
                    else:
                        raise AssertionError(f"{how} then {second}: no AlreadySettled")
                    assert _settlement(delivery) is settlement
                if requeue:
                    back = await _receive(consumer)
                    assert (back.body, back.redelivered) == (body, True)
                    await back.ack()
            # The consumer still works after the refused settles.
            await conn.publish("", queue, b"after")
            after = await _receive(consumer)
            assert (after.body, after.redelivered) == (b"after", False)
            await after.ack()
        # Nothing came back when the consumer closed: every first settle stood.
        assert await _drain(conn, queue) == []
        await _assert_usable(conn)


@_check
async def check_settling_is_not_a_cancellation_point(
    make_transport: MakeTransport,
) -> None:
    """Under a cancelled scope, ack / nack / reject still settle, without Cancelled."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for body in (b"ack", b"nack", b"reject"):
            await conn.publish("", queue, body)
        async with conn.open_consumer(queue, prefetch_count=3) as consumer:
            got = {}
            for _ in range(3):
                delivery = await _receive(consumer)
                got[delivery.body] = delivery
            with trio.CancelScope() as scope:
                scope.cancel()
                await got[b"ack"].ack()
                await got[b"nack"].nack(requeue=False)
                await got[b"reject"].reject(requeue=False)
            assert not scope.cancelled_caught, "a settle raised Cancelled"
        # Nothing came back when the consumer closed: all three were settled.
        assert await _drain(conn, queue) == []
        await _assert_usable(conn)


@_check
async def check_consumer_cancel_ends_iteration(make_transport: MakeTransport) -> None:
    """After cancel() iteration ends, and deliveries already received can be acked."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for index in range(3):
            await conn.publish("", queue, b"%d" % index)
        async with conn.open_consumer(queue, prefetch_count=1) as consumer:
            first = await _receive(consumer)
            await consumer.cancel()
            await _assert_receive_raises(
                consumer, trio.EndOfChannel, "receive() returned after cancel()"
            )
            async for delivery in consumer:
                raise AssertionError(f"iteration went on after cancel(): {delivery!r}")
            await conn.publish("", queue, b"3")
            await first.ack()
        # The ack held; the rest stayed in the queue for others.
        rest = await _drain(conn, queue)
        assert _bodies(rest) == [b"1", b"2", b"3"]

        # A task iterating an idle consumer stops when another task cancels it.
        seen: list[Delivery] = []
        got_one = trio.Event()
        async with conn.open_consumer(queue) as consumer:

            async def iterate() -> None:
                async for delivery in consumer:
                    seen.append(delivery)
                    await delivery.ack()
                    got_one.set()

            with trio.fail_after(_WAIT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(iterate)
                    await conn.publish("", queue, b"seen")
                    await got_one.wait()
                    await consumer.cancel()
        assert _bodies(seen) == [b"seen"]
        assert await _message_count(conn, queue) == 0


@_check
async def check_closing_a_consumer_requeues_its_unsettled_deliveries(
    make_transport: MakeTransport,
) -> None:
    """Unsettled deliveries of a closed consumer come back redelivered, in order."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for index in range(3):
            await conn.publish("", queue, b"%d" % index)
        async with conn.open_consumer(queue, prefetch_count=2) as consumer:
            assert _bodies(await _receive_n(consumer, 2)) == [b"0", b"1"]
        async with conn.open_consumer(queue) as consumer:
            got = await _receive_n(consumer, 3)
            assert [(d.body, d.redelivered) for d in got] == [
                (b"0", True),
                (b"1", True),
                (b"2", False),
            ]
            # Settled deliveries stay settled when their consumer closes.
            await got[1].ack()
        got = await _receive_and_ack(conn, queue, 2)
        assert [(d.body, d.redelivered) for d in got] == [(b"0", True), (b"2", True)]
        assert await _message_count(conn, queue) == 0


@_check
async def check_closing_a_connection_requeues_its_unsettled_deliveries(
    make_transport: MakeTransport,
) -> None:
    """A connection closed under an open consumer gives its deliveries back."""
    transport = make_transport()
    async with transport.open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for index in range(3):
            await conn.publish("", queue, b"%d" % index)
        connection_cm = transport.open_connection()
        doomed = await connection_cm.__aenter__()
        consumer_cm = doomed.open_consumer(queue, prefetch_count=2)
        try:
            consumer = await consumer_cm.__aenter__()
            assert _bodies(await _receive_n(consumer, 2)) == [b"0", b"1"]
        finally:
            await connection_cm.__aexit__(None, None, None)
        # Closing a consumer whose connection is gone is harmless.
        await consumer_cm.__aexit__(None, None, None)
        got = await _receive_and_ack(conn, queue, 3)
        assert [(d.body, d.redelivered) for d in got] == [
            (b"0", True),
            (b"1", True),
            (b"2", False),
        ]
        assert (await conn.declare_queue(queue, passive=True)).consumer_count == 0


@_check
async def check_exclusive_consumer(make_transport: MakeTransport) -> None:
    """An exclusive consumer needs the queue to itself, and keeps it to itself."""
    transport = make_transport()
    async with (
        transport.open_connection() as conn,
        transport.open_connection() as other,
    ):
        queue = (await conn.declare_queue(_name("q"))).name
        in_use = (
            rf"ACCESS_REFUSED - queue '{re.escape(queue)}' {_VHOST} in exclusive use$"
        )
        async with conn.open_consumer(queue, exclusive=True):
            await _assert_refused(
                other, AccessRefused, in_use, lambda: _consume_once(other, queue)
            )
            await _assert_refused(
                other,
                AccessRefused,
                in_use,
                lambda: _consume_once(other, queue, exclusive=True),
            )
            await _assert_refused(
                conn, AccessRefused, in_use, lambda: _consume_once(conn, queue)
            )
        async with conn.open_consumer(queue):
            await _assert_refused(
                other,
                AccessRefused,
                in_use,
                lambda: _consume_once(other, queue, exclusive=True),
            )
            async with other.open_consumer(queue):
                pass
        async with other.open_consumer(queue, exclusive=True) as consumer:
            await conn.publish("", queue, b"mine")
            delivery = await _receive(consumer)
            assert delivery.body == b"mine"
            await delivery.ack()


@_check
async def check_consume_missing_queue_raises_not_found(
    make_transport: MakeTransport,
) -> None:
    """Consuming a queue that does not exist is 404."""
    async with make_transport().open_connection() as conn:
        missing = _name("missing")
        await _assert_not_found(
            conn, "queue", missing, lambda: _consume_once(conn, missing)
        )


@_check
async def check_errors_leave_consumers_working(make_transport: MakeTransport) -> None:
    """A refused operation breaks neither the connection nor its consumers."""
    async with make_transport().open_connection() as conn:
        queue = _name("q")
        await conn.declare_queue(queue)
        await conn.publish("", queue, b"before")
        async with conn.open_consumer(queue) as consumer:
            before = await _receive(consumer)
            missing = _name("missing")
            await _assert_no_queue(conn, missing)
            await _assert_refused(
                conn,
                PreconditionFailed,
                _inequivalent("durable", "queue", queue),
                lambda: conn.declare_queue(queue, durable=True),
            )
            await _assert_not_found(
                conn, "exchange", missing, lambda: conn.publish(missing, "k", b"lost")
            )
            await _assert_invalid(
                conn, lambda: conn.publish("", queue, cast("Any", "not bytes"))
            )
            # The delivery from before the errors can still be settled ...
            await before.ack()
            # ... and the consumer still receives.
            await conn.publish("", queue, b"after")
            after = await _receive(consumer)
            assert (after.body, after.redelivered) == (b"after", False)
            await after.ack()
        assert await _message_count(conn, queue) == 0


@_check
async def check_deliveries_carry_their_tags(make_transport: MakeTransport) -> None:
    """Consumers have distinct tags; deliveries name theirs and distinct delivery tags."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        other = (await conn.declare_queue(_name("q"))).name
        async with conn.open_consumer(queue) as consumer:
            async with conn.open_consumer(other) as second:
                assert consumer.consumer_tag
                assert second.consumer_tag
                assert consumer.consumer_tag != second.consumer_tag
                assert (consumer.queue, second.queue) == (queue, other)
                for index in range(3):
                    await conn.publish("", queue, b"%d" % index)
                await conn.publish("", other, b"other")
                got = await _receive_n(consumer, 3)
                assert {d.consumer_tag for d in got} == {consumer.consumer_tag}
                assert len({d.delivery_tag for d in got}) == 3
                elsewhere = await _receive(second)
                assert elsewhere.consumer_tag == second.consumer_tag
                for delivery in (*got, elsewhere):
                    await delivery.ack()
