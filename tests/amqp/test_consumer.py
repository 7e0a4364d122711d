"""Tests of the consumer (:mod:`trioevents.amqp._consumer`) over a memory stream.

Buffering, settling, cancelling (by us or by the broker) and closing, against
the scripted :class:`~tests.amqp.fake_broker.FakeBroker` on ``autojump_clock``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from pamqp import commands

from trioevents._exceptions import ConnectionLost, ConsumerCancelled, NotFound

from .fake_broker import FakeBroker, connection, start_task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trioevents._message import Delivery
    from trioevents.amqp._connection import AmqpConnection
    from trioevents.amqp._consumer import AmqpConsumer


@asynccontextmanager
async def consumer(
    nursery: trio.Nursery,
    conn: AmqpConnection,
    broker: FakeBroker,
    *,
    prefetch: int = 0,
) -> AsyncIterator[tuple[AmqpConsumer, int]]:
    """Open a consumer of ``q``, with the broker's answers; close it at the end."""
    nursery.start_soon(lambda: broker.start_consumer(prefetch=prefetch))
    async with conn.open_consumer("q", prefetch_count=prefetch) as opened:
        yield opened, opened._channel.number
        number = opened._channel.number

        async def answer() -> None:
            await broker.expect(commands.Channel.Close, number)
            await broker.send((number, commands.Channel.CloseOk()))

        nursery.start_soon(answer)


async def test_deliveries_wait_in_the_buffer_while_the_reader_goes_on(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        async with consumer(nursery, conn, broker, prefetch=3) as (cons, channel):
            assert cons.consumer_tag == "ctag"
            assert cons.queue == "q"
            for tag in (1, 2, 3):
                await broker.deliver(channel, tag, b"m%d" % tag)
            # Nobody receives yet, and the reader still answers other requests.
            declared = await start_task(nursery, conn.declare_queue, "other")
            topology = await broker.open_channel()
            await broker.expect(commands.Queue.Declare, topology)
            await broker.send((topology, commands.Queue.DeclareOk("other", 0, 0)))
            await trio.testing.wait_all_tasks_blocked()
            assert declared["result"].name == "other"
            got = [await cons.receive() for _ in range(3)]
            assert [(d.body, d.delivery_tag) for d in got] == [
                (b"m1", 1),
                (b"m2", 2),
                (b"m3", 3),
            ]
            await got[1].ack()
            ack = await broker.expect(commands.Basic.Ack, channel)
            assert (ack.delivery_tag, ack.multiple) == (2, False)
            await got[0].nack(requeue=False)
            nack = await broker.expect(commands.Basic.Nack, channel)
            assert (nack.delivery_tag, nack.requeue) == (1, False)
            await got[2].reject()
            reject = await broker.expect(commands.Basic.Reject, channel)
            assert (reject.delivery_tag, reject.requeue) == (3, True)


async def test_broker_cancel_raises_consumer_cancelled(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        async with consumer(nursery, conn, broker) as (cons, channel):
            await broker.deliver(channel, 1, b"held")
            held = await cons.receive()
            await broker.deliver(channel, 2, b"buffered")
            await broker.send((channel, commands.Basic.Cancel("ctag")))
            await broker.expect(commands.Basic.CancelOk, channel)
            # The buffered delivery goes back; the received one stays ours.
            nack = await broker.expect(commands.Basic.Nack, channel)
            assert (nack.delivery_tag, nack.requeue) == (2, True)
            with pytest.raises(ConsumerCancelled):
                await cons.receive()
            with pytest.raises(ConsumerCancelled):
                await cons.receive()
            await held.ack()
            assert (await broker.expect(commands.Basic.Ack, channel)).delivery_tag == 1


async def test_cancel_returns_buffered_deliveries_and_ends_iteration(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        async with consumer(nursery, conn, broker, prefetch=5) as (cons, channel):
            for tag in (1, 2, 3):
                await broker.deliver(channel, tag, b"m%d" % tag)
            first = await cons.receive()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cons.cancel)
                cancel = await broker.expect(commands.Basic.Cancel, channel)
                assert cancel.consumer_tag == "ctag"
                nacks = [
                    await broker.expect(commands.Basic.Nack, channel) for _ in "ab"
                ]
                assert [(n.delivery_tag, n.requeue) for n in nacks] == [
                    (2, True),
                    (3, True),
                ]
                # A delivery already on its way goes straight back too.
                await broker.deliver(channel, 4, b"m4")
                nack = await broker.expect(commands.Basic.Nack, channel)
                assert (nack.delivery_tag, nack.requeue) == (4, True)
                await broker.send((channel, commands.Basic.CancelOk("ctag")))
            with pytest.raises(trio.EndOfChannel):
                await cons.receive()
            assert [d async for d in cons] == []
            await first.ack()
            assert (await broker.expect(commands.Basic.Ack, channel)).delivery_tag == 1


async def test_closing_a_consumer_closes_its_channel(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Settling afterwards raises; the tag never reaches a reused channel number."""
    async with connection(nursery) as (conn, broker):
        nursery.start_soon(broker.start_consumer)
        cm = conn.open_consumer("q")
        cons = await cm.__aenter__()
        channel = cons._channel.number
        await broker.deliver(channel, 1, b"m1")
        await broker.deliver(channel, 2, b"m2")
        delivery = await cons.receive()
        other = await cons.receive()
        async with trio.open_nursery() as closing:
            closing.start_soon(cm.__aexit__, None, None, None)
            await broker.expect(commands.Channel.Close, channel)
            await broker.send((channel, commands.Channel.CloseOk()))
        with pytest.raises(trio.ClosedResourceError):
            await other.ack()
        with pytest.raises(trio.ClosedResourceError):
            await cons.receive()
        async with consumer(nursery, conn, broker) as (again, number):
            assert number == channel
            await broker.deliver(number, 1, b"new")
            fresh: Delivery = await again.receive()
            await fresh.ack()
            ack = await broker.expect(commands.Basic.Ack, number)
            assert ack.delivery_tag == 1
            with pytest.raises(trio.ClosedResourceError):
                await delivery.nack()


async def test_refused_consumer_raises_and_leaves_the_connection_usable(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        async with trio.open_nursery() as refusing:

            async def refuse() -> None:
                channel = await broker.open_channel()
                await broker.expect(commands.Basic.Consume, channel)
                await broker.send(
                    (
                        channel,
                        commands.Channel.Close(
                            404, "NOT_FOUND - no queue 'q' in vhost '/'", 60, 20
                        ),
                    )
                )
                await broker.expect(commands.Channel.CloseOk, channel)

            refusing.start_soon(refuse)
            with pytest.raises(NotFound):
                async with conn.open_consumer("q"):
                    pytest.fail("the consumer opened")
        async with consumer(nursery, conn, broker) as (cons, channel):
            await broker.deliver(channel, 1, b"works")
            assert (await cons.receive()).body == b"works"


async def test_connection_loss_reaches_a_waiting_consumer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    errors: list[BaseException] = []

    async def run() -> None:
        async with connection(nursery) as (conn, broker):
            async with consumer(nursery, conn, broker) as (cons, _):

                async def receive() -> None:
                    try:
                        await cons.receive()
                    except ConnectionLost as exc:
                        errors.append(exc)

                async with trio.open_nursery() as receiving:
                    receiving.start_soon(receive)
                    await trio.testing.wait_all_tasks_blocked()
                    await broker.stream.aclose()
                    await trio.sleep_forever()

    with pytest.raises(ConnectionLost):
        await run()
    assert len(errors) == 1
