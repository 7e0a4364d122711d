"""The fault-injection proxy of the tests (``tcpproxy.py`` beside it), against an echo server."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import pytest
import trio

from .tcpproxy import TcpProxy, open_tcp_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

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
