"""A TCP proxy for fault injection: cut, stall or slow the link to a broker.

:class:`TcpProxy` listens on ``127.0.0.1`` (an ephemeral port) and relays every
connection it accepts to an upstream address, such as RabbitMQ on 5672. A test
points a host at the proxy's port and then breaks the link on purpose:

* :meth:`~TcpProxy.cut` closes every current connection on both sides at once,
  with a TCP reset, as a crashed peer or a dropped NAT entry would;
* :meth:`~TcpProxy.stall` stops forwarding bytes, in both directions and on every
  connection (new ones too), while keeping the sockets open: a network partition
  that only heartbeats can detect. :meth:`~TcpProxy.resume` forwards what was
  held, in order, as TCP would after the partition heals;
* :meth:`~TcpProxy.slow` throttles each direction of each connection to some
  bytes per second and/or delays every chunk by a latency, without limiting
  throughput by the latency (a delay line, not a stop-and-wait).

It is a well-behaved trio object: it runs in a nursery, either with
``port = await nursery.start(proxy.serve)`` or as
``async with open_tcp_proxy(port) as proxy``, and stops when that is cancelled.
Waiting is done with ``wait_<condition>`` methods, never with sleeps::

    async with open_tcp_proxy(5672) as proxy:
        uri = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        ...
        proxy.cut()
        await proxy.wait_accepted(2)    # the client reconnected
"""

from __future__ import annotations

import math
import socket
import struct
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Final, final

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["ProxyStatistics", "TcpProxy", "open_tcp_proxy"]

#: How much one read asks for.
_READ_SIZE: Final = 65536
#: Chunks read but not written yet, per direction: the proxy's own buffer.
_CHUNKS_HELD: Final = 16
#: What a reset or closed socket raises.
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: SO_LINGER on, timeout 0: close() sends a reset instead of a FIN.
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)


@final
@attrs.frozen
class ProxyStatistics:
    """What the proxy did so far (:meth:`TcpProxy.statistics`).

    Attributes
    ----------
    accepted
        Connections accepted since the proxy started.
    active
        Connections being relayed now.
    cut
        Connections closed by :meth:`TcpProxy.cut`.
    bytes_up, bytes_down
        Bytes forwarded to the upstream and to the clients.
    """

    accepted: int
    active: int
    cut: int
    bytes_up: int
    bytes_down: int


@attrs.define(eq=False)
class _Link:
    """One relayed connection: the client's socket and ours to the upstream."""

    client: trio.SocketStream
    scope: trio.CancelScope
    upstream: trio.SocketStream | None = None

    def reset(self) -> None:
        """Close both sockets now, with a reset, and stop relaying."""
        for stream in (self.client, self.upstream):
            if stream is None:
                continue
            with suppress(OSError):  # already closed
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE
                )
            # trio's socket close() is synchronous and wakes tasks blocked on it.
            stream.socket.close()
        self.scope.cancel()


@final
class TcpProxy:
    """A TCP proxy between clients and *upstream_host*:*upstream_port*.

    Parameters
    ----------
    upstream_port
        Where connections go, e.g. ``5672`` for RabbitMQ.
    upstream_host
        The upstream's address.
    host
        The address to listen on; the port is an ephemeral one, see :attr:`port`.
    """

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        host: str = "127.0.0.1",
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._host = host
        self._port: int | None = None
        self._links: set[_Link] = set()
        self._accepted = 0
        self._cut = 0
        self._bytes = {"up": 0, "down": 0}
        self._changed = trio.Event()
        # Faults: a stall gate, a rate (bytes/s per direction) and a latency.
        self._stalled = False
        self._resumed = trio.Event()
        self._resumed.set()
        self._rate: float | None = None
        self._latency = 0.0

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port else "not serving"
        return f"<TcpProxy {where} -> {self._upstream[0]}:{self._upstream[1]}>"

    @property
    def port(self) -> int:
        """The port the proxy listens on (once :meth:`serve` started)."""
        if self._port is None:
            raise RuntimeError("the proxy is not serving")
        return self._port

    def statistics(self) -> ProxyStatistics:
        """Return what the proxy did so far."""
        return ProxyStatistics(
            accepted=self._accepted,
            active=len(self._links),
            cut=self._cut,
            bytes_up=self._bytes["up"],
            bytes_down=self._bytes["down"],
        )

    # -- faults

    def cut(self) -> int:
        """Close every current connection abruptly, on both sides; return how many.

        Both sockets of each connection are closed at once with a TCP reset
        (``SO_LINGER`` 0): bytes held by the proxy are dropped, the client and the
        upstream each see the connection reset. Connections accepted later are
        relayed as usual.
        """
        links = list(self._links)
        for link in links:
            link.reset()
        self._cut += len(links)
        self._notify()
        return len(links)

    def stall(self) -> None:
        """Stop forwarding bytes, on every connection, until :meth:`resume`.

        The sockets stay open and the proxy keeps accepting (new connections are
        stalled too); what arrives is held (up to a few chunks per direction,
        then TCP's own buffers fill) and forwarded in order on :meth:`resume`.
        """
        if not self._stalled:
            self._stalled = True
            self._resumed = trio.Event()

    def resume(self) -> None:
        """Forward again what a :meth:`stall` held, and everything after it."""
        self._stalled = False
        self._resumed.set()

    def slow(
        self, *, bytes_per_second: float | None = None, latency: float = 0.0
    ) -> None:
        """Throttle every direction of every connection; ``slow()`` undoes it.

        Parameters
        ----------
        bytes_per_second
            The most each direction of each connection forwards per second;
            ``None``: no limit.
        latency
            Seconds every chunk is held before it is forwarded. Chunks are
            pipelined, so this adds delay without capping throughput.
        """
        if bytes_per_second is not None and not bytes_per_second > 0:
            raise ValueError("bytes_per_second must be positive or None")
        if not 0 <= latency < math.inf:
            raise ValueError("latency must be a non-negative number of seconds")
        self._rate = bytes_per_second
        self._latency = latency

    # -- waiting

    async def wait_accepted(self, count: int) -> None:
        """Wait until the proxy has accepted *count* connections in all."""
        while self._accepted < count:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- serving

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Relay connections until cancelled; report the listening port started.

        ``port = await nursery.start(proxy.serve)``. Cancelling it closes every
        connection and the listener.
        """
        if self._port is not None:
            raise trio.BusyResourceError("this proxy is already serving")
        listeners = await trio.open_tcp_listeners(0, host=self._host)
        listener = listeners[0]
        try:
            sockname = listener.socket.getsockname()
            self._port = int(sockname[1])
            async with trio.open_nursery() as nursery:
                task_status.started(self._port)
                while True:
                    client = await listener.accept()
                    self._accepted += 1
                    nursery.start_soon(self._relay, client)
                    self._notify()
        finally:
            self._port = None
            for extra in listeners:
                with trio.CancelScope(shield=True):
                    await extra.aclose()

    async def _relay(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            link = _Link(client, scope)
            self._links.add(link)
            try:
                try:
                    link.upstream = await trio.open_tcp_stream(*self._upstream)
                except OSError:
                    # The upstream refuses: so does the proxy, as abruptly.
                    link.reset()
                    return
                async with trio.open_nursery() as nursery:
                    # Whichever direction ends first (EOF or error) ends both,
                    # once what it held was forwarded.
                    nursery.start_soon(
                        self._pipe, client, link.upstream, "up", nursery.cancel_scope
                    )
                    nursery.start_soon(
                        self._pipe, link.upstream, client, "down", nursery.cancel_scope
                    )
            finally:
                self._links.discard(link)
                self._notify()
                with trio.CancelScope(shield=True):
                    await client.aclose()
                    if link.upstream is not None:
                        await link.upstream.aclose()

    async def _pipe(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        direction: str,
        done: trio.CancelScope,
    ) -> None:
        """Forward *source* to *sink* through a delay line, then end the link."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_CHUNKS_HELD)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, source, send)
            await self._write(sink, receive, direction)
            nursery.cancel_scope.cancel()  # the sink is gone: stop reading too
        done.cancel()

    async def _read(
        self,
        source: trio.SocketStream,
        send: trio.MemorySendChannel[tuple[float, bytes]],
    ) -> None:
        """Read *source* into the delay line until EOF or an error (then EOF)."""
        async with send:
            try:
                while data := await source.receive_some(_READ_SIZE):
                    await send.send((trio.current_time() + self._latency, data))
            except _BROKEN:
                pass

    async def _write(
        self,
        sink: trio.SocketStream,
        receive: trio.MemoryReceiveChannel[tuple[float, bytes]],
        direction: str,
    ) -> None:
        """Write the delay line's chunks to *sink* when due, throttled and gated."""
        next_free = -math.inf  # when the throttle lets the next byte out
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                view = memoryview(data)
                while view:
                    rate = self._rate
                    if rate is None:
                        piece, view = view, view[len(view) :]
                    else:
                        # Pieces of about 1/20 s each, let out on schedule.
                        size = max(1, int(rate / 20))
                        piece, view = view[:size], view[size:]
                        next_free = max(next_free, trio.current_time())
                        await trio.sleep_until(next_free)
                        next_free += len(piece) / rate
                    while self._stalled:
                        await self._resumed.wait()
                    try:
                        await sink.send_all(piece)
                    except _BROKEN:
                        return
                    self._bytes[direction] += len(piece)


@asynccontextmanager
async def open_tcp_proxy(
    upstream_port: int, upstream_host: str = "127.0.0.1"
) -> AsyncIterator[TcpProxy]:
    """Run a :class:`TcpProxy` for the body; stop it (closing every link) after."""
    proxy = TcpProxy(upstream_port, upstream_host)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
