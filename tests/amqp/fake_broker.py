"""A scripted fake broker for the tests of the trio connection (no test here).

:class:`FakeBroker` holds the broker's end of :func:`trio.testing.memory_stream_pair`:
it decodes what the client sends with pamqp and answers with pamqp frames, in the
order each test scripts. :func:`connection` opens a connection to one; the tests
run on trio's ``autojump_clock``, so none sleeps for real.
"""

from __future__ import annotations

import struct
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

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

from trioevents.amqp._connection import AmqpConnection, open_amqp_connection
from trioevents.amqp._protocol import PROTOCOL_HEADER

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


Frame = (
    pamqp_base.Frame
    | pamqp_header.ContentHeader
    | pamqp_body.ContentBody
    | pamqp_heartbeat.Heartbeat
)
F = TypeVar("F", bound=Frame)


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

    async def _start(self) -> None:
        """Take the protocol header, send ``Connection.Start``, take the answer."""
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

    async def refuse_login(self) -> None:
        """Refuse the client's login as RabbitMQ does (403), and hang up."""
        await self._start()
        await self.send(
            (
                0,
                commands.Connection.Close(
                    403,
                    "ACCESS_REFUSED - Login was refused using authentication "
                    "mechanism PLAIN",
                    0,
                    0,
                ),
            )
        )
        await self.stream.aclose()

    async def handshake(
        self, *, heartbeat: int = 0, frame_max: int = 131072, channel_max: int = 2047
    ) -> None:
        await self._start()
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


def start_broker(nursery: trio.Nursery) -> tuple[trio.abc.Stream, FakeBroker]:
    """Start a fake broker's handshake in *nursery*; return the client's stream.

    For tests that open the connection themselves (to cancel it, say).
    """
    client_stream, broker_stream = trio.testing.memory_stream_pair()
    broker = FakeBroker(broker_stream)
    nursery.start_soon(broker.handshake)
    return client_stream, broker


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


async def start_task(nursery: trio.Nursery, fn: Any, *args: Any) -> dict[str, Any]:
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


async def publish_task(
    nursery: trio.Nursery, conn: AmqpConnection, exchange: str, body: bytes, **kw: Any
) -> dict[str, Any]:
    async def publish() -> None:
        await conn.publish(exchange, "k", body, **kw)

    return await start_task(nursery, publish)
