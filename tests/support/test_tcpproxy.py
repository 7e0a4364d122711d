"""The fault-injection proxy of the tests (``tcpproxy.py`` beside it).

Against an echo server, and with ``amqp=True`` against scripted brokers
(:class:`~tests.amqp.fake_broker.FakeBroker` on real sockets) that a real client
connection talks to.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from pamqp import commands

from trioevents import PreconditionFailed
from trioevents.amqp._connection import open_amqp_connection

from ..amqp.fake_broker import FakeBroker
from .tcpproxy import TcpProxy, open_tcp_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

#: A real-time guard: these tests use real sockets, so no autojump clock.
DEADLINE = 10


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@pytest.fixture
async def echo_port(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[TcpProxy]:
    async with open_tcp_proxy(echo_port) as proxy:
        yield proxy


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, "EOF"
        data += chunk
    return data


async def test_relays_both_ways(proxy: TcpProxy) -> None:
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(b"hello")
            assert await _receive_exactly(stream, 5) == b"hello"
    stats = proxy.statistics()
    assert (stats.accepted, stats.bytes_up, stats.bytes_down) == (1, 5, 5)


async def test_cut_resets_every_connection(proxy: TcpProxy) -> None:
    with trio.fail_after(DEADLINE):
        streams = [await trio.open_tcp_stream("127.0.0.1", proxy.port) for _ in "ab"]
        for stream in streams:
            await stream.send_all(b"x")
            assert await _receive_exactly(stream, 1) == b"x"
        assert proxy.cut() == 2
        for stream in streams:
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some(1)  # ECONNRESET, not a clean EOF
            await stream.aclose()
        # later connections are relayed as usual
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
            await stream.send_all(b"y")
            assert await _receive_exactly(stream, 1) == b"y"
    assert proxy.statistics().cut == 2


async def test_stall_holds_bytes_until_resume(proxy: TcpProxy) -> None:
    with trio.fail_after(DEADLINE):
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
            proxy.stall()
            await stream.send_all(b"held")
            with trio.move_on_after(0.3):
                await stream.receive_some(4)
                pytest.fail("a stalled proxy forwarded bytes")
            assert proxy.statistics().bytes_up == 0
            proxy.resume()
            assert await _receive_exactly(stream, 4) == b"held"


async def test_slow_throttles_and_delays(proxy: TcpProxy) -> None:
    rate, size = 50_000, 25_000
    proxy.slow(bytes_per_second=rate, latency=0.1)
    with trio.fail_after(DEADLINE):
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, b"z" * size)
                assert await _receive_exactly(stream, size) == b"z" * size
            elapsed = trio.current_time() - start
    # A lower bound only (the throttle guarantees it): both directions are
    # throttled and pipelined, so at least size / rate, less one piece, plus
    # the latency of each direction.
    assert elapsed >= (size - rate / 20) / rate + 2 * 0.1


async def test_serve_reports_its_port(echo_port: int, nursery: trio.Nursery) -> None:
    proxy = TcpProxy(echo_port)
    port = await nursery.start(proxy.serve)
    assert port == proxy.port
    with pytest.raises(trio.BusyResourceError):
        await proxy.serve()
    nursery.cancel_scope.cancel()


async def test_orphan_drops_the_client_side_and_keeps_the_upstream_open(
    nursery: trio.Nursery,
) -> None:
    ended = trio.Event()

    async def echo_until_eof(stream: trio.SocketStream) -> None:
        await _echo(stream)
        ended.set()

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, echo_until_eof, 0, host="127.0.0.1")
    )
    with trio.fail_after(DEADLINE):
        async with open_tcp_proxy(listeners[0].socket.getsockname()[1]) as proxy:
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await stream.send_all(b"x")
            assert await _receive_exactly(stream, 1) == b"x"
            assert proxy.orphan() == 1
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some(1)  # the client side is reset
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert not ended.is_set(), "the upstream side was closed"
            assert proxy.statistics().orphaned == 1
        # Stopping the proxy closes what it kept open.
        await ended.wait()


# --------------------------------------------------------------------------- AMQP


@pytest.fixture
async def amqp_proxy(nursery: trio.Nursery) -> AsyncIterator[tuple[TcpProxy, Brokers]]:
    """A proxy with ``amqp=True`` in front of scripted brokers (one per connection)."""
    brokers = Brokers()
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, brokers.serve, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    async with open_tcp_proxy(port, amqp=True) as proxy:
        yield proxy, brokers


class Brokers:
    """Scripted brokers behind the proxy: each handshakes, then runs the script."""

    def __init__(self) -> None:
        self.script: Callable[[FakeBroker], Awaitable[None]] | None = None

    async def serve(self, stream: trio.SocketStream) -> None:
        broker = FakeBroker(stream)
        await broker.handshake()
        assert self.script is not None
        await self.script(broker)


async def test_amqp_mode_records_the_methods_going_each_way(
    amqp_proxy: tuple[TcpProxy, Brokers],
) -> None:
    proxy, brokers = amqp_proxy
    brokers.script = FakeBroker.answer_close
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with open_amqp_connection(stream):
            pass
        await proxy.wait_method("Connection.CloseOk", "down")
    assert [(m.direction, m.name) for m in proxy.methods] == [
        ("down", "Connection.Start"),
        ("up", "Connection.StartOk"),
        ("down", "Connection.Tune"),
        ("up", "Connection.TuneOk"),
        ("up", "Connection.Open"),
        ("down", "Connection.OpenOk"),
        ("up", "Connection.Close"),
        ("down", "Connection.CloseOk"),
    ]
    assert {m.link for m in proxy.methods} == {1}


async def test_a_consumer_timeout_closes_the_channel_on_both_sides(
    amqp_proxy: tuple[TcpProxy, Brokers],
) -> None:
    """The client gets RabbitMQ's 406, the broker the client's close; no Close-Ok
    gets through, and the channel number is usable again at once."""
    proxy, brokers = amqp_proxy
    seen_by_broker: list[Any] = []

    async def script(broker: FakeBroker) -> None:
        await broker.start_consumer()
        while True:
            number, frame = await broker.receive()
            seen_by_broker.append((number, frame))
            if isinstance(frame, commands.Channel.Close):
                # The client's Close-Ok is swallowed, and its Channel.Open
                # (the client reuses the number) is held until our Close-Ok.
                with trio.move_on_after(0.3):
                    seen_by_broker.append(await broker.receive())
                await broker.send((number, commands.Channel.CloseOk()))
                await broker.start_consumer(tag="again")
                await broker.answer_close()
                return

    brokers.script = script
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with open_amqp_connection(stream) as conn:
            async with conn.open_consumer("q") as consumer:
                link, channel = await proxy.time_out_consumer("q")
                with pytest.raises(PreconditionFailed, match="timed out") as caught:
                    await consumer.receive()
            assert f"acknowledgement on channel {channel} timed out" in str(
                caught.value
            )
            async with conn.open_consumer("q") as consumer:
                assert consumer.consumer_tag == "again"
    assert link == 1
    [(number, close)] = seen_by_broker
    assert (number, close.reply_code) == (channel, 200)
    # Both Close-Oks were recorded (and swallowed, see the script).
    on_channel = [(m.direction, m.name) for m in proxy.methods if m.channel == channel]
    assert ("up", "Channel.CloseOk") in on_channel
    assert ("down", "Channel.CloseOk") in on_channel
    assert on_channel.count(("up", "Channel.Open")) == 2  # the number was reused
    with pytest.raises(LookupError):
        await proxy.time_out_consumer("nobody-consumes-this")
