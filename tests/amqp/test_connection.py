"""Tests of the connection (:mod:`trioevents.amqp._connection`) over a memory stream.

The handshake, topology requests, losing the connection and heartbeats, against
the scripted :class:`~tests.amqp.fake_broker.FakeBroker` on ``autojump_clock``.
Publishing is in ``test_publishing.py``, consumers in ``test_consumer.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from pamqp import commands, frame as pamqp_frame, heartbeat as pamqp_heartbeat

from trioevents._exceptions import (
    AccessRefused,
    BrokerUnavailable,
    ConnectionLost,
    NotFound,
    RemoteProtocolError,
)
from trioevents.amqp._connection import (
    CANCELLED_CLOSE_TIMEOUT,
    AmqpConnection,
    open_amqp_connection,
)

from .fake_broker import (
    FakeBroker,
    connection,
    publish_task,
    start_broker,
    start_task,
)

# --------------------------------------------------------------------------- handshake


async def test_handshake_sends_credentials_and_virtual_host(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(
        nursery, username="user", password="s3cret", virtual_host="v/h"
    ) as (conn, broker):
        assert broker.start_ok is not None
        assert broker.open is not None
        assert broker.start_ok.mechanism == "PLAIN"
        assert broker.start_ok.response == "\0user\0s3cret"
        assert broker.open.virtual_host == "v/h"
        assert conn.server_properties["product"] == "FakeBroker"
        assert "open" in repr(conn)


async def test_refused_login_raises_broker_unavailable(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client_stream, broker_stream = trio.testing.memory_stream_pair()
    broker = FakeBroker(broker_stream)

    async def refuse() -> None:
        while len(broker.buffer) < 8:
            await broker._read()
        del broker.buffer[:8]
        await broker.send((0, commands.Connection.Start(mechanisms="PLAIN")))
        await broker.expect(commands.Connection.StartOk, 0)
        await broker.send(
            (
                0,
                commands.Connection.Close(
                    403, "ACCESS_REFUSED - Login was refused", 0, 0
                ),
            )
        )
        await broker.expect(commands.Connection.CloseOk, 0)

    nursery.start_soon(refuse)
    with pytest.raises(BrokerUnavailable, match="403 ACCESS_REFUSED") as info:
        async with open_amqp_connection(
            client_stream, password="s3cret", peer="'amqp://u:****@h/'"
        ):
            pytest.fail("the body ran")
    assert "s3cret" not in str(info.value)


async def test_silent_broker_during_the_handshake_is_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, _broker_stream = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(BrokerUnavailable, match="within 3"):
        async with open_amqp_connection(client_stream, handshake_timeout=3):
            pytest.fail("the body ran")
    assert trio.current_time() - start == pytest.approx(3)


async def test_end_of_stream_during_the_handshake_is_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, broker_stream = trio.testing.memory_stream_pair()
    await broker_stream.aclose()
    with pytest.raises(BrokerUnavailable):
        async with open_amqp_connection(client_stream):
            pytest.fail("the body ran")


async def test_close_handshake_ends_the_connection(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, _):
        pass
    assert "closed" in repr(conn)
    with pytest.raises(trio.ClosedResourceError):
        await conn.declare_queue("q")


async def test_a_normal_exit_waits_for_the_brokers_close_ok(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client_stream, broker = start_broker(nursery)
    asked: list[float] = []

    async def answer_late() -> None:
        await broker.expect(commands.Connection.Close, 0)
        asked.append(trio.current_time())
        await trio.sleep(3)
        await broker.send((0, commands.Connection.CloseOk()))

    async with open_amqp_connection(client_stream, close_timeout=5):
        nursery.start_soon(answer_late)
    assert trio.current_time() - asked[0] == pytest.approx(3)


async def test_a_cancelled_exit_still_sends_what_was_queued_and_closes_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Cancelling the body leaves the reader and writer running for the close.

    The ack queued just before the cancel goes out, then the consumer's
    Channel.Close and Connection.Close; the broker's Close-Ok is read: the whole
    close takes no (virtual) time, not the close timeout.
    """
    client_stream, broker = start_broker(nursery)
    seen: list[str] = []

    async def serve() -> None:
        number = await broker.start_consumer()
        await broker.deliver(number, 1, b"hello")
        while True:
            channel, frame = await broker.receive()
            seen.append(frame.name)
            if isinstance(frame, commands.Channel.Close):
                await broker.send((channel, commands.Channel.CloseOk()))
            elif isinstance(frame, commands.Connection.Close):
                await broker.send((0, commands.Connection.CloseOk()))
                return

    with trio.CancelScope() as scope:
        async with open_amqp_connection(client_stream, close_timeout=5) as conn:
            nursery.start_soon(serve)
            async with conn.open_consumer("q") as consumer:
                delivery = await consumer.receive()
                await delivery.ack()
                scope.cancel()
                cancelled_at = trio.current_time()
                await trio.sleep_forever()
    assert trio.current_time() == cancelled_at
    assert seen == ["Basic.Ack", "Channel.Close", "Connection.Close"]


async def test_a_cancelled_close_gives_a_silent_broker_up_quickly(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client_stream, _ = start_broker(nursery)
    with trio.CancelScope() as scope:
        async with open_amqp_connection(client_stream, close_timeout=5):
            scope.cancel()
            cancelled_at = trio.current_time()
            await trio.sleep_forever()
    assert trio.current_time() - cancelled_at == pytest.approx(CANCELLED_CLOSE_TIMEOUT)
    assert CANCELLED_CLOSE_TIMEOUT < 5


# --------------------------------------------------------------------------- topology requests


async def test_channel_error_fails_the_request_and_the_next_one_works(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        async with trio.open_nursery() as nursery:
            failed = await start_task(nursery, conn.declare_queue, "missing")
            channel = await broker.open_channel()
            declare = await broker.expect(commands.Queue.Declare, channel)
            assert declare.queue == "missing"
            await broker.send(
                (
                    channel,
                    commands.Channel.Close(
                        404, "NOT_FOUND - no queue 'missing' in vhost '/'", 50, 10
                    ),
                )
            )
            await broker.expect(commands.Channel.CloseOk, channel)
        error = failed["error"]
        assert isinstance(error, NotFound)
        assert (error.reply_code, error.reply_text) == (
            404,
            "NOT_FOUND - no queue 'missing' in vhost '/'",
        )
        async with trio.open_nursery() as nursery:
            works = await start_task(nursery, conn.purge_queue, "q")
            assert await broker.open_channel() == channel  # the number is reused
            await broker.expect(commands.Queue.Purge, channel)
            await broker.send((channel, commands.Queue.PurgeOk(7)))
        assert works == {"result": 7}


async def test_requests_behind_a_refused_one_are_sent_again(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The broker discards what follows a refused request; it goes out again."""
    async with connection(nursery) as (conn, broker):
        first = await start_task(nursery, conn.declare_queue, "locked")
        second = await start_task(nursery, conn.declare_queue, "fine")
        channel = await broker.open_channel()
        assert (await broker.expect(commands.Queue.Declare)).queue == "locked"
        assert (await broker.expect(commands.Queue.Declare)).queue == "fine"
        await broker.send(
            (channel, commands.Channel.Close(403, "ACCESS_REFUSED - no", 50, 10))
        )
        await broker.expect(commands.Channel.CloseOk, channel)
        await broker.open_channel()
        assert (await broker.expect(commands.Queue.Declare)).queue == "fine"
        await broker.send((broker.channel, commands.Queue.DeclareOk("fine", 2, 1)))
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(first["error"], AccessRefused)
        assert second["result"].name == "fine"
        assert (second["result"].message_count, second["result"].consumer_count) == (
            2,
            1,
        )


# --------------------------------------------------------------------------- errors


async def test_broker_closing_the_connection_fails_every_waiter(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    outcomes: list[dict[str, Any]] = []
    client_stream, broker_stream = trio.testing.memory_stream_pair()
    broker = FakeBroker(broker_stream)
    nursery.start_soon(broker.handshake)
    connections: list[AmqpConnection] = []

    async def run() -> None:
        async with open_amqp_connection(client_stream) as conn:
            connections.append(conn)
            outcomes.append(await start_task(nursery, conn.declare_queue, "q"))
            outcomes.append(await publish_task(nursery, conn, "x", b"m"))
            await broker.open_channel()
            await broker.expect(commands.Queue.Declare)
            await broker.open_channel(confirms=True)
            await broker.expect_message()
            close = commands.Connection.Close(320, "CONNECTION_FORCED - shutdown", 0, 0)
            await broker.send((0, close))
            await broker.expect(commands.Connection.CloseOk, 0)
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost, match="320 CONNECTION_FORCED"):
        await run()
    for outcome in outcomes:
        assert isinstance(outcome["error"], ConnectionLost), outcome
    (conn,) = connections
    assert "lost" in repr(conn)
    with pytest.raises(ConnectionLost):
        await conn.declare_queue("q")


async def test_end_of_stream_cancels_the_body_and_raises_connection_lost(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    cancelled: list[trio.Cancelled] = []

    async def run() -> None:
        async with connection(nursery) as (_, broker):
            await broker.stream.aclose()
            try:
                await trio.sleep_forever()
            except trio.Cancelled as exc:
                cancelled.append(exc)
                raise

    with pytest.raises(ConnectionLost, match="closed the connection"):
        await run()
    assert len(cancelled) == 1


async def test_an_end_of_stream_in_the_middle_of_a_frame_is_connection_lost(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A stream cut short mid-frame is a lost connection, not a broken broker.

    Regression (found by ``tests/amqp/test_faults.py``): a proxy resetting the
    connection in the middle of a large delivery can show up as a plain end of
    stream; it was a RemoteProtocolError, which stopped the host instead of
    making it reconnect.
    """

    async def run() -> None:
        async with connection(nursery) as (_, broker):
            frame = pamqp_frame.marshal(commands.Queue.DeclareOk("q", 0, 0), 1)
            await broker.stream.send_all(frame[:5])
            await broker.stream.aclose()
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost, match="in the middle of a frame"):
        await run()


async def test_socket_errors_after_a_broker_close_are_not_reported(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """After a 320 the broker resets the socket; the close is the reported error."""

    async def run() -> None:
        async with connection(nursery) as (_, broker):
            close = commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0)
            await broker.send((0, close))
            await broker.stream.aclose()
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost, match="320"):
        await run()


async def test_a_protocol_violation_is_a_remote_protocol_error(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:

    async def run() -> None:
        async with connection(nursery) as (_, broker):
            await broker.send((7, commands.Queue.DeclareOk("q", 0, 0)))
            await trio.sleep_forever()

    with pytest.raises(RemoteProtocolError):
        await run()


async def test_losing_the_connection_while_closing_it_is_no_error(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client_stream, broker_stream = trio.testing.memory_stream_pair()
    broker = FakeBroker(broker_stream)
    nursery.start_soon(broker.handshake)
    async with open_amqp_connection(client_stream) as conn:

        async def hang_up() -> None:
            await broker.expect(commands.Connection.Close, 0)
            await broker.stream.aclose()

        nursery.start_soon(hang_up)
    assert "closed" in repr(conn)


async def test_a_body_exception_comes_out_unwrapped(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    with pytest.raises(KeyError):
        async with connection(nursery):
            raise KeyError("mine")


# --------------------------------------------------------------------------- heartbeats


async def test_a_silent_broker_is_lost_after_twice_the_heartbeat(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    start = trio.current_time()
    heartbeats: list[float] = []

    async def run() -> None:
        nonlocal start, heartbeats
        async with connection(nursery, heartbeat=10) as (conn, broker):
            assert conn.heartbeat == 10
            start = trio.current_time()
            heartbeats = broker.heartbeats
            await broker.expect(commands.Channel.Open)  # only heartbeats come

    with pytest.raises(ConnectionLost, match="sent nothing for 20 s"):
        await run()
    assert trio.current_time() - start == pytest.approx(20)
    # The client sent its own heartbeats every half interval meanwhile.
    assert [round(t - start, 3) for t in heartbeats] == [5, 10, 15]


async def test_heartbeats_keep_a_quiet_connection_open(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery, heartbeat=10) as (conn, broker):
        for _ in range(12):
            await trio.sleep(5)
            await broker.send((0, pamqp_heartbeat.Heartbeat()))
        assert "open" in repr(conn)
