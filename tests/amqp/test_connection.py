"""Tests of the trio connection over a memory stream, with a scripted fake broker.

:class:`FakeBroker` holds the broker's end of :func:`trio.testing.memory_stream_pair`:
it decodes what the client sends with pamqp and answers with pamqp frames, in the
order each test scripts. Time is trio's ``autojump_clock``: no test sleeps for real.
"""

from __future__ import annotations

import random
import struct
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio
import trio.testing
from pamqp import (
    base as pamqp_base,
    body as pamqp_body,
    commands,
    frame as pamqp_frame,
    header as pamqp_header,
    heartbeat as pamqp_heartbeat,
)

from trioevents._exceptions import (
    AccessRefused,
    BrokerUnavailable,
    ConnectionLost,
    ConsumerCancelled,
    NotFound,
    PublishNotConfirmed,
    RemoteProtocolError,
)
from trioevents._message import Properties
from trioevents.amqp._connection import AmqpConnection, open_amqp_connection
from trioevents.amqp._protocol import PROTOCOL_HEADER

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trioevents._message import Delivery
    from trioevents.amqp._consumer import AmqpConsumer

Frame = (
    pamqp_base.Frame
    | pamqp_header.ContentHeader
    | pamqp_body.ContentBody
    | pamqp_heartbeat.Heartbeat
)
F = TypeVar("F", bound=Frame)


# --------------------------------------------------------------------------- broker


class FakeBroker:
    """The broker's end of a memory stream pair, scripted by a test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.channel = 0
        #: When each heartbeat from the client arrived.
        self.heartbeats: list[float] = []
        self.start_ok: commands.Connection.StartOk | None = None
        self.open: commands.Connection.Open | None = None

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("the client closed the stream")
        self.buffer += data

    async def receive(self) -> tuple[int, Frame]:
        """Return the next whole frame the client sent, heartbeats included."""
        while True:
            if len(self.buffer) >= 7:
                (size,) = struct.unpack_from(">I", self.buffer, 3)
                if len(self.buffer) >= size + 8:
                    consumed, channel, value = pamqp_frame.unmarshal(
                        bytes(self.buffer[: size + 8])
                    )
                    del self.buffer[:consumed]
                    assert not isinstance(value, pamqp_header.ProtocolHeader)
                    return channel, value
            await self._read()

    async def expect(self, cls: type[F], channel: int | None = None) -> F:
        """Return the next frame that is not a heartbeat, checking its type."""
        while True:
            number, value = await self.receive()
            if isinstance(value, pamqp_heartbeat.Heartbeat):
                self.heartbeats.append(trio.current_time())
                continue
            assert isinstance(value, cls), (
                f"expected {cls.__name__}, got {value!r} on channel {number}"
            )
            if channel is not None:
                assert number == channel, (value, number, channel)
            self.channel = number
            return value

    async def expect_message(
        self,
    ) -> tuple[commands.Basic.Publish, commands.Basic.Properties, bytes]:
        """Return a whole published message: method, properties and body."""
        publish = await self.expect(commands.Basic.Publish)
        channel = self.channel
        header = await self.expect(pamqp_header.ContentHeader, channel)
        body = b""
        while len(body) < header.body_size:
            body += (await self.expect(pamqp_body.ContentBody, channel)).value
        assert len(body) == header.body_size
        self.channel = channel
        return publish, header.properties, body

    async def send(self, *frames: tuple[int, Frame]) -> None:
        await self.stream.send_all(
            b"".join(pamqp_frame.marshal(value, channel) for channel, value in frames)
        )

    async def deliver(
        self,
        channel: int,
        delivery_tag: int,
        body: bytes,
        *,
        consumer_tag: str = "ctag",
        redelivered: bool = False,
    ) -> None:
        await self.send(
            (
                channel,
                commands.Basic.Deliver(
                    consumer_tag, delivery_tag, redelivered, "", "q"
                ),
            ),
            (
                channel,
                pamqp_header.ContentHeader(0, len(body), commands.Basic.Properties()),
            ),
            (channel, pamqp_body.ContentBody(body)),
        )

    async def handshake(
        self, *, heartbeat: int = 0, frame_max: int = 131072, channel_max: int = 2047
    ) -> None:
        header = bytes(self.buffer[:8])
        while len(self.buffer) < 8:
            await self._read()
            header = bytes(self.buffer[:8])
        del self.buffer[:8]
        assert header == PROTOCOL_HEADER
        await self.send(
            (
                0,
                commands.Connection.Start(
                    server_properties={"product": "FakeBroker"},
                    mechanisms="PLAIN EXTERNAL",
                    locales="en_US",
                ),
            )
        )
        self.start_ok = await self.expect(commands.Connection.StartOk, 0)
        await self.send(
            (0, commands.Connection.Tune(channel_max, frame_max, heartbeat))
        )
        await self.expect(commands.Connection.TuneOk, 0)
        self.open = await self.expect(commands.Connection.Open, 0)
        await self.send((0, commands.Connection.OpenOk()))

    async def open_channel(self, *, confirms: bool = False) -> int:
        """Answer a Channel.Open (and a Confirm.Select); return the number."""
        await self.expect(commands.Channel.Open)
        number = self.channel
        replies: list[tuple[int, Frame]] = [(number, commands.Channel.OpenOk())]
        if confirms:
            await self.expect(commands.Confirm.Select, number)
            replies.append((number, commands.Confirm.SelectOk()))
        await self.send(*replies)
        return number

    async def start_consumer(self, *, prefetch: int = 0, tag: str = "ctag") -> int:
        """Answer a consumer's Channel.Open, Basic.Qos and Basic.Consume."""
        number = await self.open_channel()
        if prefetch:
            qos = await self.expect(commands.Basic.Qos, number)
            assert (qos.prefetch_count, qos.global_) == (prefetch, False)
            await self.send((number, commands.Basic.QosOk()))
        await self.expect(commands.Basic.Consume, number)
        await self.send((number, commands.Basic.ConsumeOk(tag)))
        return number

    async def answer_close(self) -> None:
        """Answer channel closes and the connection close, then hang up."""
        while True:
            try:
                number, value = await self.receive()
            except EOFError:
                return
            if isinstance(value, commands.Channel.Close):
                await self.send((number, commands.Channel.CloseOk()))
            elif isinstance(value, commands.Connection.Close):
                await self.send((0, commands.Connection.CloseOk()))
                await self.stream.aclose()
                return


@asynccontextmanager
async def connection(
    nursery: trio.Nursery, *, heartbeat: int = 0, **kwargs: Any
) -> AsyncIterator[tuple[AmqpConnection, FakeBroker]]:
    """Open a connection to a fake broker; answer its close at the end.

    The broker's own tasks run in *nursery* (pytest-trio's fixture), so that
    what the connection raises comes out of the ``async with`` as it is.
    """
    client_stream, broker_stream = trio.testing.memory_stream_pair()
    broker = FakeBroker(broker_stream)
    nursery.start_soon(lambda: broker.handshake(heartbeat=heartbeat))
    async with open_amqp_connection(
        client_stream, heartbeat=heartbeat, **kwargs
    ) as conn:
        yield conn, broker
        nursery.start_soon(broker.answer_close)


async def _start(nursery: trio.Nursery, fn: Any, *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in *nursery*; return a dict that gets its outcome."""
    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            outcome["result"] = await fn(*args)
        except Exception as exc:
            outcome["error"] = exc

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return outcome


async def _publish_task(
    nursery: trio.Nursery, conn: AmqpConnection, exchange: str, body: bytes, **kw: Any
) -> dict[str, Any]:
    async def publish() -> None:
        await conn.publish(exchange, "k", body, **kw)

    return await _start(nursery, publish)


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


# --------------------------------------------------------------------------- publish


async def test_publish_returns_once_confirmed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        outcome = await _publish_task(
            nursery, conn, "x", b"hello", properties=Properties(message_id="m1")
        )
        channel = await broker.open_channel(confirms=True)
        publish, properties, body = await broker.expect_message()
        assert (publish.exchange, publish.routing_key, body) == ("x", "k", b"hello")
        assert properties.message_id == "m1"
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {}, "publish returned before its confirm"
        await broker.send((channel, commands.Basic.Ack(1)))
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"result": None}


async def test_multiple_confirms_release_every_publish(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        outcomes = [
            await _publish_task(nursery, conn, "x", b"%d" % index) for index in range(3)
        ]
        channel = await broker.open_channel(confirms=True)
        bodies = [(await broker.expect_message())[2] for _ in range(3)]
        assert bodies == [b"0", b"1", b"2"]
        await broker.send((channel, commands.Basic.Ack(3, multiple=True)))
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == [{"result": None}] * 3


async def test_nack_raises_publish_not_confirmed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        nacked = await _publish_task(nursery, conn, "x", b"0")
        acked = await _publish_task(nursery, conn, "x", b"1")
        channel = await broker.open_channel(confirms=True)
        await broker.expect_message()
        await broker.expect_message()
        await broker.send(
            (channel, commands.Basic.Nack(1)), (channel, commands.Basic.Ack(2))
        )
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(nacked["error"], PublishNotConfirmed)
        assert "nacked" in str(nacked["error"])
        assert acked == {"result": None}


async def test_returned_mandatory_publish_is_not_confirmed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The return is matched to its publish even when several are in flight."""
    async with connection(nursery) as (conn, broker):
        routed = await _publish_task(nursery, conn, "x", b"same", mandatory=True)
        returned = await _publish_task(nursery, conn, "x", b"same", mandatory=True)
        other = await _publish_task(nursery, conn, "x", b"other", mandatory=True)
        channel = await broker.open_channel(confirms=True)
        for _ in range(3):
            publish, _, _ = await broker.expect_message()
            assert publish.mandatory
        # Publish 1 was routed (its confirm is late), 2 came back, 3 was routed.
        await broker.send(
            (channel, commands.Basic.Return(312, "NO_ROUTE", "x", "k")),
            (channel, pamqp_header.ContentHeader(0, 4, commands.Basic.Properties())),
            (channel, pamqp_body.ContentBody(b"same")),
            (channel, commands.Basic.Ack(2)),
            (channel, commands.Basic.Ack(3, multiple=True)),
        )
        await trio.testing.wait_all_tasks_blocked()
        assert routed == {"result": None}
        assert other == {"result": None}
        error = returned["error"]
        assert isinstance(error, PublishNotConfirmed)
        assert "312 NO_ROUTE" in str(error)


async def test_publish_cancelled_before_it_is_queued_sends_nothing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.publish("x", "k", b"never")
        assert scope.cancelled_caught
        async with trio.open_nursery() as nursery:
            outcome = await _publish_task(nursery, conn, "x", b"sent")
            channel = await broker.open_channel(confirms=True)
            _, _, body = await broker.expect_message()
            assert body == b"sent"
            await broker.send((channel, commands.Basic.Ack(1)))
        assert outcome == {"result": None}


async def test_publish_cancelled_while_waiting_for_its_confirm_is_harmless(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        with trio.move_on_after(1) as scope:
            await conn.publish("x", "k", b"first")
        assert scope.cancelled_caught
        channel = await broker.open_channel(confirms=True)
        _, _, body = await broker.expect_message()
        assert body == b"first"
        async with trio.open_nursery() as nursery:
            outcome = await _publish_task(nursery, conn, "x", b"second")
            _, _, body = await broker.expect_message()
            assert body == b"second"
            # The late confirm of the abandoned publish is simply dropped.
            await broker.send(
                (channel, commands.Basic.Ack(1)), (channel, commands.Basic.Ack(2))
            )
        assert outcome == {"result": None}


async def test_randomly_cancelled_publishes_arrive_whole_or_not_at_all(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Thousands of deadlines at random points never split a message."""
    rng = random.Random(4)
    body = bytes(range(256)) * 1200  # a little over two frames
    received: list[bytes] = []
    confirmed: list[int] = []

    async with connection(nursery) as (conn, broker):

        async def serve() -> None:
            channel = await broker.open_channel(confirms=True)
            tag = 0
            while True:
                _, _, got = await broker.expect_message()
                received.append(got)
                tag += 1
                if rng.random() < 0.5:
                    await trio.sleep(rng.random() * 0.01)
                await broker.send((channel, commands.Basic.Ack(tag)))

        async with trio.open_nursery() as serving:
            serving.start_soon(serve)
            for attempt in range(300):
                message = b"%04d" % attempt + body
                with trio.move_on_after(rng.random() * 0.01):
                    await conn.publish("x", "k", message)
                    confirmed.append(attempt)
            await conn.publish("x", "k", b"last")
            serving.cancel_scope.cancel()
    assert received[-1] == b"last"
    for got in received[:-1]:
        assert got[4:] == body, "a message arrived damaged"
    numbers = [int(got[:4]) for got in received[:-1]]
    assert numbers == sorted(set(numbers))
    assert set(confirmed) <= set(numbers)
    assert 0 < len(confirmed) < 300, "the deadlines did not vary the outcome"


async def test_blocked_connection_holds_publishes(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        await broker.send((0, commands.Connection.Blocked("low on memory")))
        await trio.testing.wait_all_tasks_blocked()
        assert conn.blocked == "low on memory"
        outcome = await _publish_task(nursery, conn, "x", b"held")
        # Nothing is sent while blocked.
        with trio.move_on_after(10):
            await broker.expect(commands.Channel.Open)
            pytest.fail("a publish went out while blocked")
        await broker.send((0, commands.Connection.Unblocked()))
        channel = await broker.open_channel(confirms=True)
        _, _, body = await broker.expect_message()
        assert body == b"held"
        await broker.send((channel, commands.Basic.Ack(1)))
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"result": None}
        assert conn.blocked is None


# --------------------------------------------------------------------------- errors


async def test_channel_error_fails_the_request_and_the_next_one_works(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        async with trio.open_nursery() as nursery:
            failed = await _start(nursery, conn.declare_queue, "missing")
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
            works = await _start(nursery, conn.purge_queue, "q")
            assert await broker.open_channel() == channel  # the number is reused
            await broker.expect(commands.Queue.Purge, channel)
            await broker.send((channel, commands.Queue.PurgeOk(7)))
        assert works == {"result": 7}


async def test_requests_behind_a_refused_one_are_sent_again(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The broker discards what follows a refused request; it goes out again."""
    async with connection(nursery) as (conn, broker):
        first = await _start(nursery, conn.declare_queue, "locked")
        second = await _start(nursery, conn.declare_queue, "fine")
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


async def test_publish_to_a_missing_exchange_leaves_publishing_usable(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        before = await _publish_task(nursery, conn, "x", b"before")
        refused = await _publish_task(nursery, conn, "missing", b"refused")
        after = await _publish_task(nursery, conn, "x", b"after")
        channel = await broker.open_channel(confirms=True)
        for _ in range(3):
            await broker.expect_message()
        await broker.send(
            (
                channel,
                commands.Channel.Close(
                    404, "NOT_FOUND - no exchange 'missing' in vhost '/'", 60, 40
                ),
            )
        )
        await broker.expect(commands.Channel.CloseOk, channel)
        # The publish behind the refused one is sent again on a new channel.
        channel = await broker.open_channel(confirms=True)
        publish, _, body = await broker.expect_message()
        assert (publish.exchange, body) == ("x", b"after")
        await broker.send((channel, commands.Basic.Ack(1)))
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(refused["error"], NotFound)
        # The one before was routed, but its confirm can no longer come.
        assert isinstance(before["error"], PublishNotConfirmed)
        assert after == {"result": None}


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
            outcomes.append(await _start(nursery, conn.declare_queue, "q"))
            outcomes.append(await _publish_task(nursery, conn, "x", b"m"))
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


# --------------------------------------------------------------------------- consumers


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
            declared = await _start(nursery, conn.declare_queue, "other")
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
