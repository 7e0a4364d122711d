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
  throughput by the latency (a delay line, not a stop-and-wait);
* :meth:`~TcpProxy.orphan` drops the client side of every current connection
  (with a reset) but keeps the upstream side open and silent: the client sees
  its connection die while the broker still holds it (and its exclusive
  queues) until its heartbeat timeout.

With ``amqp=True`` the proxy also reads the AMQP 0-9-1 frames going each way
(frame header ``>BHI``, payload, ``0xCE``), records the methods
(:attr:`~TcpProxy.methods`, :meth:`~TcpProxy.wait_method`) and can close a
channel as the broker would on its own
(:meth:`~TcpProxy.close_channel`, :meth:`~TcpProxy.time_out_consumer`): the
client gets the broker's ``Channel.Close``, the broker gets the client's, and
the proxy swallows both ``Close-Ok`` replies and whatever either side still sends
on that channel meanwhile, so both ends agree the channel is closed (the broker
requeues its unacked deliveries). Frames the client sends on the channel number
after its ``Close-Ok`` (a new ``Channel.Open``) wait until the broker's
``Close-Ok``.

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
import urllib.parse
from collections import Counter
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Final, Literal, final

import attrs
import trio
from pamqp import base as pamqp_base, commands, frame as pamqp_frame

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "Method",
    "ProxyStatistics",
    "TcpProxy",
    "open_tcp_proxy",
    "upstream_port",
    "via",
]

Direction = Literal["up", "down"]

#: How much one read asks for.
_READ_SIZE: Final = 65536
#: Chunks read but not written yet, per direction: the proxy's own buffer.
_CHUNKS_HELD: Final = 16
#: What a reset or closed socket raises.
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: SO_LINGER on, timeout 0: close() sends a reset instead of a FIN.
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)
#: What an AMQP client sends first, before any frame.
_PROTOCOL_HEADER_SIZE: Final = 8
#: A frame's type (1 octet), channel (2) and payload size (4).
_FRAME_HEADER: Final = struct.Struct(">BHI")
_METHOD_FRAME: Final = 1
#: What RabbitMQ says when a delivery stays unacked past ``consumer_timeout``
#: (its default, 30 minutes).
CONSUMER_TIMEOUT_TEXT: Final = (
    "PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed "
    "out. Timeout value used: 1800000 ms. This timeout value can be configured, "
    "see consumers doc guide to learn more"
)


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
    orphaned
        Connections whose client side :meth:`TcpProxy.orphan` dropped.
    bytes_up, bytes_down
        Bytes forwarded to the upstream and to the clients.
    """

    accepted: int
    active: int
    cut: int
    orphaned: int
    bytes_up: int
    bytes_down: int


@final
@attrs.frozen
class Method:
    """An AMQP method the proxy saw (with ``amqp=True``).

    Attributes
    ----------
    direction
        ``"up"`` (client to broker) or ``"down"``.
    link
        Which connection: its number, in the order the proxy accepted them.
    channel
        The channel number.
    name
        pamqp's name for the method, e.g. ``"Channel.Close"``.
    method
        The method as pamqp decoded it, e.g. a ``Basic.Deliver`` with its
        ``redelivered`` flag.
    """

    direction: Direction
    link: int
    channel: int
    name: str
    method: pamqp_base.Frame = attrs.field(eq=False, repr=False)


@attrs.define(eq=False)
class _ChannelCut:
    """A channel the proxy is closing on both sides (see :meth:`TcpProxy.close_channel`)."""

    #: The client answered our Channel.Close: its later frames on the channel
    #: (a new Channel.Open) are held, not dropped.
    client_done: bool = False
    #: The broker answered our Channel.Close: what the client sent since goes to
    #: it, and the cut is over.
    broker_done: bool = False
    #: Client frames that wait for the broker's Close-Ok.
    held: bytearray = attrs.Factory(bytearray)


@attrs.define(eq=False)
class _Link:
    """One relayed connection: the client's socket and ours to the upstream."""

    number: int
    client: trio.SocketStream
    scope: trio.CancelScope
    upstream: trio.SocketStream | None = None
    #: Where each direction's reader puts what is to be written (the delay line),
    #: once relaying started: also where injected frames go.
    lines: dict[Direction, trio.MemorySendChannel[tuple[float, bytes]]] = attrs.Factory(
        dict
    )
    #: Queue names by channel, from the client's Basic.Consume (``amqp=True``).
    consumers: dict[int, str] = attrs.Factory(dict)
    #: Channels being closed by the proxy.
    cuts: dict[int, _ChannelCut] = attrs.Factory(dict)

    def reset(self) -> None:
        """Close both sockets now, with a reset, and stop relaying."""
        for stream in (self.client, self.upstream):
            if stream is not None:
                _reset(stream)
        self.scope.cancel()

    def orphan(self) -> trio.SocketStream | None:
        """Reset the client's socket, stop relaying; return the upstream one, open."""
        upstream, self.upstream = self.upstream, None
        _reset(self.client)
        self.scope.cancel()
        return upstream


def _reset(stream: trio.SocketStream) -> None:
    """Close *stream* now with a TCP reset (tasks blocked on it wake up)."""
    with suppress(OSError):  # already closed
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    # trio's socket close() is synchronous and wakes tasks blocked on it.
    stream.socket.close()


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
    amqp
        Read the AMQP frames going each way: record the methods, and allow
        closing a channel (see the module doc). Off, bytes are relayed unread.
    """

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        host: str = "127.0.0.1",
        amqp: bool = False,
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._host = host
        self._amqp = amqp
        self._port: int | None = None
        self._links: set[_Link] = set()
        self._orphans: list[trio.SocketStream] = []
        self._accepted = 0
        self._cut = 0
        #: The methods seen so far (``amqp=True``), in order per direction.
        self.methods: list[Method] = []
        self._method_counts: Counter[tuple[Direction, str]] = Counter()
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
            orphaned=len(self._orphans),
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

    def orphan(self) -> int:
        """Drop the client side of every current connection; return how many.

        Each client's socket is closed with a reset, as :meth:`cut` does, but the
        socket to the upstream stays open, unread and unwritten, until the proxy
        stops: the broker keeps the connection (its exclusive queues, its unacked
        deliveries) until it misses the client's heartbeats. Connections
        accepted later are relayed as usual.
        """
        links = list(self._links)
        for link in links:
            upstream = link.orphan()
            if upstream is not None:
                self._orphans.append(upstream)
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

    async def wait_method(
        self, name: str, direction: Direction = "up", count: int = 1
    ) -> None:
        """Wait until the proxy saw *count* methods *name* going *direction* in all.

        Needs ``amqp=True``.
        """
        if not self._amqp:
            raise RuntimeError("the proxy reads AMQP frames only with amqp=True")
        while self._method_counts[direction, name] < count:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- closing channels (amqp=True)

    async def close_channel(
        self, link: int, channel: int, reply_code: int, reply_text: str
    ) -> None:
        """Close *channel* of connection *link* as the broker would on its own.

        The client gets ``Channel.Close(reply_code, reply_text)``; the broker
        gets a ``Channel.Close`` as if the client closed the channel (so it
        requeues the channel's unacked deliveries). Both ``Close-Ok`` replies are
        swallowed, and so is what either side still sends on the channel until
        then.

        Parameters
        ----------
        link
            The connection (:attr:`Method.link`).

        Raises
        ------
        LookupError
            No such connection is being relayed (or it is not relaying yet).
        """
        found = [
            each for each in self._links if each.number == link and len(each.lines) == 2
        ]
        if not found:
            raise LookupError(f"connection {link} is not being relayed")
        [target] = found
        target.consumers.pop(channel, None)
        target.cuts[channel] = _ChannelCut()
        now = trio.current_time()
        to_client = commands.Channel.Close(reply_code, reply_text, 0, 0)
        to_broker = commands.Channel.Close(200, "Normal shutdown", 0, 0)
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await target.lines["down"].send(
                (now, pamqp_frame.marshal(to_client, channel))
            )
            await target.lines["up"].send(
                (now, pamqp_frame.marshal(to_broker, channel))
            )

    async def time_out_consumer(self, queue: str) -> tuple[int, int]:
        """Close the channel consuming *queue* as RabbitMQ's ``consumer_timeout`` does.

        ``406 PRECONDITION_FAILED - delivery acknowledgement on channel N timed
        out...`` (see :meth:`close_channel`). Returns the connection and channel.

        Raises
        ------
        LookupError
            No relayed connection consumes *queue*.
        """
        for link in sorted(self._links, key=lambda each: -each.number):
            for channel, consumed in link.consumers.items():
                if consumed == queue:
                    text = CONSUMER_TIMEOUT_TEXT.format(channel=channel)
                    await self.close_channel(link.number, channel, 406, text)
                    return link.number, channel
        raise LookupError(f"no connection consumes {queue!r}")

    def _see(self, link: _Link, direction: Direction, frame: bytes) -> bytes:
        """Record a whole frame; return what to forward now (maybe nothing)."""
        kind, channel, _ = _FRAME_HEADER.unpack_from(frame)
        method = None
        if kind == _METHOD_FRAME:
            _, _, method = pamqp_frame.unmarshal(frame)
            assert isinstance(method, pamqp_base.Frame)
            name = method.name
            self.methods.append(Method(direction, link.number, channel, name, method))
            self._method_counts[direction, name] += 1
            self._notify()
            if isinstance(method, commands.Basic.Consume) and direction == "up":
                link.consumers[channel] = method.queue
            elif isinstance(method, commands.Channel.Close):
                link.consumers.pop(channel, None)
        cut = link.cuts.get(channel)
        if cut is None:
            return frame
        is_close_ok = isinstance(method, commands.Channel.CloseOk)
        if direction == "up":
            if cut.client_done:
                cut.held += frame  # until the broker's Close-Ok (see _release)
            elif is_close_ok:
                cut.client_done = True
                if cut.broker_done:
                    del link.cuts[channel]
            return b""
        if cut.broker_done:
            return frame
        if is_close_ok:
            cut.broker_done = True
            if cut.client_done and not cut.held:
                del link.cuts[channel]
        return b""

    async def _release(self, link: _Link) -> None:
        """Send the broker what the client sent on channels now closed on both sides.

        Only the reader of the broker's side calls it (it sees the Close-Ok that
        ends a cut); the client's reader holds the channel's frames until the
        cut is gone, so they keep their order.
        """
        for channel, cut in list(link.cuts.items()):
            if not (cut.client_done and cut.broker_done):
                continue
            while cut.held:
                held = bytes(cut.held)
                cut.held.clear()
                up = (trio.current_time() + self._latency, held)
                await link.lines["up"].send(up)
            del link.cuts[channel]

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
                    nursery.start_soon(self._relay, client, self._accepted)
                    self._notify()
        finally:
            self._port = None
            with trio.CancelScope(shield=True):
                for extra in listeners:
                    await extra.aclose()
                for orphan in self._orphans:
                    await orphan.aclose()

    async def _relay(self, client: trio.SocketStream, number: int) -> None:
        with trio.CancelScope() as scope:
            link = _Link(number, client, scope)
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
                        self._pipe,
                        link,
                        client,
                        link.upstream,
                        "up",
                        nursery.cancel_scope,
                    )
                    nursery.start_soon(
                        self._pipe,
                        link,
                        link.upstream,
                        client,
                        "down",
                        nursery.cancel_scope,
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
        link: _Link,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        direction: Direction,
        done: trio.CancelScope,
    ) -> None:
        """Forward *source* to *sink* through a delay line, then end the link."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_CHUNKS_HELD)
        link.lines[direction] = send
        read = self._read_frames if self._amqp else self._read
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, link, source, send, direction)
            await self._write(sink, receive, direction)
            nursery.cancel_scope.cancel()  # the sink is gone: stop reading too
        done.cancel()

    async def _read(
        self,
        link: _Link,
        source: trio.SocketStream,
        send: trio.MemorySendChannel[tuple[float, bytes]],
        direction: Direction,
    ) -> None:
        """Read *source* into the delay line until EOF or an error (then EOF)."""
        async with send:
            try:
                while data := await source.receive_some(_READ_SIZE):
                    await send.send((trio.current_time() + self._latency, data))
            except _BROKEN:
                pass

    async def _read_frames(
        self,
        link: _Link,
        source: trio.SocketStream,
        send: trio.MemorySendChannel[tuple[float, bytes]],
        direction: Direction,
    ) -> None:
        """Read *source* frame by frame into the delay line (``amqp=True``)."""
        buffer = bytearray()
        header = _PROTOCOL_HEADER_SIZE if direction == "up" else 0
        async with send:
            try:
                while data := await source.receive_some(_READ_SIZE):
                    buffer += data
                    out = bytearray()
                    if header:
                        if len(buffer) < header:
                            continue
                        out += buffer[:header]
                        del buffer[:header]
                        header = 0
                    while len(buffer) >= _FRAME_HEADER.size:
                        end = (
                            _FRAME_HEADER.size
                            + _FRAME_HEADER.unpack_from(buffer)[2]
                            + 1
                        )
                        if len(buffer) < end:
                            break
                        out += self._see(link, direction, bytes(buffer[:end]))
                        del buffer[:end]
                    if direction == "down":
                        await self._release(link)
                    if out:
                        await send.send(
                            (trio.current_time() + self._latency, bytes(out))
                        )
            except _BROKEN:
                pass

    async def _write(
        self,
        sink: trio.SocketStream,
        receive: trio.MemoryReceiveChannel[tuple[float, bytes]],
        direction: Direction,
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


def upstream_port(uri: str) -> int:
    """The port of the broker *uri* names (5672 if it names none)."""
    return urllib.parse.urlsplit(uri).port or 5672


def via(proxy: TcpProxy, uri: str) -> str:
    """Return *uri* pointed at *proxy* (credentials and vhost kept)."""
    parts = urllib.parse.urlsplit(uri)
    login = parts.netloc.rpartition("@")[0]
    netloc = f"{login}@127.0.0.1:{proxy.port}" if login else f"127.0.0.1:{proxy.port}"
    return parts._replace(netloc=netloc).geturl()


@asynccontextmanager
async def open_tcp_proxy(
    upstream_port: int, upstream_host: str = "127.0.0.1", *, amqp: bool = False
) -> AsyncIterator[TcpProxy]:
    """Run a :class:`TcpProxy` for the body; stop it (closing every link) after."""
    proxy = TcpProxy(upstream_port, upstream_host, amqp=amqp)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
