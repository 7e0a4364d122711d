"""The trio side of the RabbitMQ transport: one socket, one reader, one writer.

:func:`open_amqp_connection` drives the sans-IO :class:`~._protocol.Connection`
over a :class:`trio.abc.Stream` (opened by :mod:`._dial`) and implements
:class:`trioevents.abc.Connection` on top of it. It is the only module of the
package that reads or writes the stream.

Tasks (all in the nursery owned by :func:`open_amqp_connection`):

* the **reader** reads 64 KiB at a time, feeds the protocol and handles every
  event at once: it resolves reply waiters, confirms publishes and appends
  deliveries to their consumer's buffer. It never waits for user code; a consumer
  buffers at most its prefetch count, because the broker sends no more;
* the **writer** owns the send side: whenever the protocol has output it writes
  everything queued in one ``send_all``;
* the **heartbeat** task sends heartbeats and gives the connection up as
  :class:`~trioevents.ConnectionLost` when the broker is silent for twice the
  interval.

Requests never touch the socket: they are queued in the protocol in one
synchronous step (a whole message and its confirm tag in one
``basic_publish()`` call) and the writer is woken. A cancelled request was thus
either queued whole or not at all, and a task waiting for a reply or a confirm
can be cancelled at any time.

The channels (see :mod:`._mux`) are kept by a
:class:`~._mux.RequestChannel` (topology), :class:`~._publishing.Publishing`
and each :class:`~._consumer.AmqpConsumer`, which share the connection's
:class:`~._mux.ChannelMux`; the reader task hands them their events.
"""

from __future__ import annotations

import math
from collections import deque
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs
import trio

from .. import abc
from .._exceptions import (
    AccessRefusedByBroker,
    BrokerUnavailable,
    ChannelClosedByBroker,
    ConnectionLost,
    LocalProtocolError,
    RemoteProtocolError,
)
from .._fieldtable import check_table, wire_timestamp
from .._groups import unwrap_lone_exception
from .._message import ExchangeType, QueueDeclared
from .._validation import (
    check_body,
    check_exchange_type,
    check_name,
    check_properties,
    check_routing_key,
)
from ._consumer import AmqpConsumer, open_amqp_consumer
from ._events import (
    NEED_DATA,
    ChannelClosed,
    ChannelFlow,
    Confirmed,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionUnblocked,
    ConsumerCancelledByBroker,
    Delivered,
    EOFReceived,
    Nacked,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    Reply,
    Returned,
)
from ._mux import ChannelMux, RequestChannel, Role, fresh
from ._protocol import Connection as ProtocolConnection
from ._publishing import Publish, Publishing

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from contextlib import AbstractAsyncContextManager

    from .._message import Properties
    from ._events import Event

__all__ = ["CANCELLED_CLOSE_TIMEOUT", "AmqpConnection", "open_amqp_connection"]

#: How much the reader asks the stream for at a time.
_READ_SIZE: Final = 65536
#: The longest a close handshake may take when the connection's body was
#: cancelled (the closing task is cancelled: it must be prompt). A broker that
#: answers takes milliseconds; one that does not is left behind.
CANCELLED_CLOSE_TIMEOUT: Final = 1.0


@asynccontextmanager
async def open_amqp_connection(
    stream: trio.abc.Stream,
    *,
    username: str = "guest",
    password: str = "guest",
    virtual_host: str = "/",
    auth_mechanism: Literal["PLAIN", "EXTERNAL"] = "PLAIN",
    heartbeat: float | None = 60,
    frame_max: int = 131072,
    channel_max: int = 2047,
    client_properties: Mapping[str, Any] | None = None,
    handshake_timeout: float = 10.0,
    close_timeout: float = 5.0,
    max_body_size: int | None = None,
    peer: str = "the broker",
) -> AsyncIterator[AmqpConnection]:
    """Run an AMQP 0-9-1 connection over *stream* (which it closes at the end).

    The handshake runs before the body; the body runs while the reader, writer
    and heartbeat tasks serve the connection. On exit the connection is closed
    with a close handshake, which makes the broker requeue every unsettled
    delivery. It is bounded by *close_timeout*; when the body was cancelled, by
    at most :data:`CANCELLED_CLOSE_TIMEOUT`, so that cancelling is prompt. Either
    way queued frames (such as acks) go out first: the reader and the writer
    are shielded from the body's cancellation until the close is over.

    If the connection is lost while the body runs (socket error, end of stream,
    silent peer, the broker closing it), every waiting request fails with
    :class:`~trioevents.ConnectionLost`, the body is cancelled and the
    ``async with`` raises :class:`~trioevents.ConnectionLost`. An exception of the
    body comes out as it is, not in an :class:`ExceptionGroup`.

    Parameters
    ----------
    stream
        A connected byte stream: TCP, TLS or a test stream.
    username, password, virtual_host, auth_mechanism
        The login; ``EXTERNAL`` uses the TLS client certificate.
    heartbeat
        The heartbeat interval to ask for, in seconds; ``0`` or ``None`` turns
        heartbeats off, whatever the broker proposes.
    frame_max, channel_max, client_properties
        As in :class:`~._protocol.Connection`.
    handshake_timeout
        How long the broker may take to open the connection.
    close_timeout
        How long the close handshake (of the connection and of each consumer)
        may take; a close that runs because the body was cancelled takes at
        most :data:`CANCELLED_CLOSE_TIMEOUT`.
    max_body_size
        The largest message body read; larger ones are skipped, not buffered.
    peer
        How to name the broker in error messages (never with a password).

    Raises
    ------
    AccessRefusedByBroker
        The broker refused the login (403) or the virtual host (530).
    BrokerUnavailable
        The handshake failed otherwise: the broker closed the stream, did not
        answer in time or does not speak AMQP 0-9-1.
    ConnectionLost
        The connection was lost while the body ran.
    """
    try:
        proto = ProtocolConnection(
            username=username,
            password=password,
            virtual_host=virtual_host,
            auth_mechanism=auth_mechanism,
            heartbeat=_heartbeat_seconds(heartbeat),
            frame_max=frame_max,
            channel_max=channel_max,
            client_properties=client_properties,
            clock=trio.current_time,
            max_body_size=max_body_size,
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        raise
    conn = AmqpConnection(stream, proto, peer=peer, close_timeout=close_timeout)
    try:
        await conn._handshake(handshake_timeout)
        with unwrap_lone_exception():
            async with trio.open_nursery() as nursery:
                try:
                    nursery.start_soon(conn._serve_io)
                    nursery.start_soon(conn._heartbeater)
                    with trio.CancelScope() as body_scope:
                        conn._body_scope = body_scope
                        try:
                            yield conn
                        finally:
                            conn._body_scope = None
                            await conn._close()
                finally:
                    conn._io_scope.cancel()
                nursery.cancel_scope.cancel()
        await conn._flush_last_words()
    finally:
        conn._shut_down()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
    if conn._mux.failure is not None:
        raise fresh(conn._mux.failure)


#: What to fix when the broker refuses the login (403) or the vhost (530).
_ACCESS_ADVICE: Final = {
    403: "check the user name and password in AMQP_URI (with "
    "auth_mechanism=EXTERNAL, the client certificate)",
    530: "create the virtual host or fix the path of AMQP_URI, and check that "
    "the user has permissions on it",
}


def _refusal(peer: str, event: ConnectionClosed) -> BrokerUnavailable:
    """The error for a broker that closed the connection during the handshake.

    A refused login or virtual host is :class:`~trioevents.AccessRefusedByBroker`,
    saying what to fix: trying again cannot help.
    """
    refused = f"{peer} refused the connection: {event.reply_code} {event.reply_text}"
    advice = _ACCESS_ADVICE.get(event.reply_code)
    if advice is None:
        return BrokerUnavailable(refused)
    return AccessRefusedByBroker(
        f"{refused.rstrip('.')}; {advice}", event.reply_code, event.reply_text
    )


def _heartbeat_seconds(heartbeat: float | None) -> int:
    if heartbeat is None or heartbeat <= 0:
        return 0
    return min(math.ceil(heartbeat), 65535)


# --------------------------------------------------------------------------- connection


@final
class AmqpConnection(abc.Connection):
    """A connection to RabbitMQ, opened by :meth:`AmqpTransport.open_connection`.

    Implements :class:`trioevents.abc.Connection`; see there for what each
    method does and raises. Every method may also raise
    :class:`~trioevents.ConnectionLost` (the connection is gone) and
    :class:`trio.ClosedResourceError` (it was closed).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        proto: ProtocolConnection,
        *,
        peer: str,
        close_timeout: float,
    ) -> None:
        self._stream = stream
        self._proto = proto
        self._peer = peer
        self._output_ready = trio.Event()
        self._mux = ChannelMux(
            proto, wake_writer=self._wake_writer, close_timeout=close_timeout
        )
        self._channels = self._mux.channels  # the same dict, for the reader
        self._requests = RequestChannel(self._mux)
        self._publishing = Publishing(self._mux)
        self._consumers: set[AmqpConsumer] = set()
        self._closed = trio.Event()
        self._body_scope: trio.CancelScope | None = None
        #: Shields the reader and the writer from the body's cancellation, so
        #: that a cancelled body still closes with a handshake; cancelled once
        #: the close is over.
        self._io_scope = trio.CancelScope(shield=True)
        self._sending = False
        self._heartbeat_queued = -math.inf
        self._server_properties: Mapping[str, Any] = {}

    def __repr__(self) -> str:
        if self._mux.failure is not None:
            state = "lost"
        elif self._mux.closing:
            state = "closed"
        else:
            state = "open"
        return f"<AmqpConnection to {self._peer} ({state})>"

    # -- public state

    @property
    def peer(self) -> str:
        """The broker this connection is to, fit for logs (no password).

        Errors name it in quotes; this is it without them.
        """
        peer = self._peer
        if len(peer) >= 2 and peer[0] == peer[-1] == "'":
            return peer[1:-1]
        return peer

    @property
    def server_properties(self) -> Mapping[str, Any]:
        """What the broker said about itself (``product``, ``version``, ...)."""
        return self._server_properties

    @property
    def heartbeat(self) -> int:
        """The negotiated heartbeat interval in seconds (``0``: none)."""
        return self._proto.heartbeat

    @property
    def frame_max(self) -> int:
        """The negotiated largest frame size in bytes."""
        return self._proto.frame_max

    @property
    def blocked(self) -> str | None:
        """Why the broker stopped taking publishes, or ``None`` when it takes them.

        While the broker has blocked the connection (``connection.blocked``, e.g.
        low on memory or disk), :meth:`publish` waits.
        """
        return self._proto.blocked

    # -- the handshake, before the tasks run

    async def _handshake(self, handshake_timeout: float) -> None:
        proto = self._proto
        stream = self._stream
        try:
            with trio.fail_after(handshake_timeout):
                await stream.send_all(proto.data_to_send())
                while True:
                    data = await stream.receive_some(_READ_SIZE)
                    proto.receive_data(data)
                    while (event := proto.next_event()) is not NEED_DATA:
                        if isinstance(event, ConnectionOpened):
                            self._server_properties = event.server_properties
                            if proto.pending_output:
                                await stream.send_all(proto.data_to_send())
                            return
                        if isinstance(event, ConnectionClosed):
                            if proto.pending_output:
                                with trio.move_on_after(1):
                                    await stream.send_all(proto.data_to_send())
                            raise _refusal(self._peer, event)
                        if isinstance(event, EOFReceived):
                            raise BrokerUnavailable(
                                f"{self._peer} closed the connection during the "
                                "handshake"
                            )
                    if proto.pending_output:
                        await stream.send_all(proto.data_to_send())
        except trio.TooSlowError:
            raise BrokerUnavailable(
                f"{self._peer} did not open the connection within {handshake_timeout} s"
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise BrokerUnavailable(
                f"lost the connection to {self._peer} during the handshake: {exc}"
            ) from exc
        except RemoteProtocolError as exc:
            raise BrokerUnavailable(
                f"{self._peer} broke AMQP during the handshake: {exc}"
            ) from exc

    # -- the tasks

    def _wake_writer(self) -> None:
        self._output_ready.set()

    async def _serve_io(self) -> None:
        """Run the reader and the writer until :attr:`_io_scope` is cancelled."""
        with self._io_scope:
            async with trio.open_nursery() as io:
                io.start_soon(self._reader)
                io.start_soon(self._writer)

    async def _writer(self) -> None:
        proto = self._proto
        stream = self._stream
        try:
            while True:
                await self._output_ready.wait()
                # Let the other ready tasks queue their frames too, then write
                # them all in one send_all (fewer syscalls under load).
                await trio.lowlevel.cancel_shielded_checkpoint()
                self._output_ready = trio.Event()
                data = proto.data_to_send()
                if data:
                    self._sending = True
                    await stream.send_all(data)
                    self._sending = False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._sending = False
            self._fail(ConnectionLost(f"cannot write to {self._peer}: {exc}"), exc)

    async def _reader(self) -> None:
        proto = self._proto
        stream = self._stream
        eof = False
        try:
            while True:
                data = await stream.receive_some(_READ_SIZE)
                eof = not data
                proto.receive_data(data)
                while (event := proto.next_event()) is not NEED_DATA:
                    self._handle(event)
                    if isinstance(event, EOFReceived):
                        return
                if proto.pending_output:
                    self._wake_writer()
        except RemoteProtocolError as exc:
            if eof:
                # The stream ended in the middle of a frame (the only violation
                # an end of stream can cause: whole frames were handled as they
                # came). That is a connection cut short, not a broker breaking
                # AMQP: Linux may report a reset connection as a plain end of
                # stream (seen with a proxy that resets both sides). It must be
                # ConnectionLost, which hosts recover from by reconnecting.
                self._fail(
                    ConnectionLost(
                        f"{self._peer} closed the connection in the middle of a frame"
                    ),
                    exc,
                )
                return
            # The protocol queued a Connection.Close saying why; send it.
            self._wake_writer()
            self._fail(
                RemoteProtocolError(f"{self._peer} broke AMQP: {exc}"), exc.__cause__
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(ConnectionLost(f"cannot read from {self._peer}: {exc}"), exc)

    async def _heartbeater(self) -> None:
        proto = self._proto
        interval = proto.heartbeat
        if not interval:
            return
        while self._mux.failure is None and not self._closed.is_set():
            now = trio.current_time()
            if proto.peer_is_silent(now):
                self._fail(
                    ConnectionLost(
                        f"{self._peer} sent nothing for {2 * interval} s "
                        f"(heartbeat {interval} s)"
                    )
                )
                return
            sent = max(proto.last_sent, self._heartbeat_queued)
            if now - sent >= interval / 2:
                proto.send_heartbeat()
                self._heartbeat_queued = now
                self._wake_writer()
                sent = now
            await trio.sleep_until(
                min(sent + interval / 2, proto.last_received + 2 * interval)
            )

    # -- events

    def _handle(self, event: Event) -> None:
        if isinstance(event, Reply):
            ch = self._channels.get(event.channel)
            if ch is not None and ch.waiters:
                ch.waiters.popleft().resolve(event)
        elif isinstance(event, Delivered):
            ch = self._channels.get(event.channel)
            if ch is not None and ch.consumer is not None:
                ch.consumer.on_delivery(event)
        elif isinstance(event, Confirmed | Nacked):
            self._publishing.on_confirm(event)
        elif isinstance(event, Returned):
            self._publishing.on_return(event)
        elif isinstance(event, ChannelClosed):
            self._on_channel_closed(event)
        elif isinstance(event, ConsumerCancelledByBroker):
            ch = self._channels.get(event.channel)
            if ch is not None and ch.consumer is not None:
                ch.consumer.on_broker_cancel()
        elif isinstance(event, ChannelFlow):
            ch = self._channels.get(event.channel)
            if ch is not None:
                ch.flow_active = event.active
                self._publishing.update_blocked()
        elif isinstance(event, ConnectionBlocked | ConnectionUnblocked):
            self._publishing.update_blocked()
        elif isinstance(event, ConnectionClosed):
            self._on_connection_closed(event)
        elif isinstance(event, EOFReceived) and not self._closed.is_set():
            self._fail(ConnectionLost(f"{self._peer} closed the connection"))
        # HeartbeatReceived: every byte already counts as a sign of life.

    def _on_connection_closed(self, event: ConnectionClosed) -> None:
        if not event.by_broker:
            self._closed.set()  # the answer to our own close
            return
        self._wake_writer()  # Close-Ok
        self._fail(
            ConnectionLost(
                f"{self._peer} closed the connection: "
                f"{event.reply_code} {event.reply_text}"
            )
        )

    def _on_channel_closed(self, event: ChannelClosed) -> None:
        ch = self._channels.pop(event.channel, None)
        if ch is None:
            return
        ch.open = False
        ch.closed.set()
        if not event.by_broker:
            error: BaseException = trio.ClosedResourceError("the channel was closed")
            for waiter in ch.waiters:
                waiter.fail(error)
            ch.waiters.clear()
            if ch.consumer is not None:
                ch.consumer.on_channel_closed(None)
            return
        error = ChannelClosedByBroker.from_reply(event.reply_code, event.reply_text)
        waiters, ch.waiters = ch.waiters, deque()
        if ch.role is Role.TOPOLOGY:
            self._requests.on_channel_closed(waiters, error)
        elif ch.role is Role.PUBLISH:
            for waiter in waiters:
                waiter.fail(error)
            self._publishing.on_channel_closed(event, error)
            self._publishing.update_blocked()
        else:
            for waiter in waiters:
                waiter.fail(error)
            if ch.consumer is not None:
                ch.consumer.on_channel_closed(error)

    # -- failure and close

    def _fail(self, error: BaseException, cause: BaseException | None = None) -> None:
        """Give the connection up: every waiter gets *error*; the body is cancelled."""
        if self._mux.failure is not None or self._closed.is_set():
            return
        if self._mux.closing:
            # Lost while we were closing it anyway: the close is over.
            self._closed.set()
            return
        if cause is not None:
            error.__cause__ = cause
        self._mux.failure = error
        self._finish(error)
        if self._body_scope is not None:
            self._body_scope.cancel()

    def _finish(self, error: BaseException) -> None:
        """Fail every waiter and close every channel and consumer with *error*."""
        self._closed.set()
        self._mux.fail_all(error)
        self._requests.reset()
        self._publishing.fail_all(error)
        consumers = list(self._consumers)
        self._consumers.clear()
        for consumer in consumers:
            consumer.on_connection_closed(error)

    async def _close(self) -> None:
        """Close the connection with a close handshake, bounded by the close timeout.

        Shielded (with that bound), so that a cancelled body still flushes its
        acks and closes cleanly; the bound is :data:`CANCELLED_CLOSE_TIMEOUT` at
        most when the closing task is cancelled.
        """
        if self._mux.failure is not None or self._mux.closing:
            return
        self._mux.closing = True
        bound = self._mux.close_timeout
        if trio.current_effective_deadline() == -math.inf:  # we are cancelled
            bound = min(bound, CANCELLED_CLOSE_TIMEOUT)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(bound):
                try:
                    self._proto.close()
                except LocalProtocolError:
                    pass
                else:
                    self._wake_writer()
                    await self._closed.wait()
        self._shut_down()

    def _shut_down(self) -> None:
        """Mark everything closed (no-op if it already is)."""
        self._mux.closing = True
        if self._mux.failure is None:
            self._finish(trio.ClosedResourceError("the connection is closed"))

    async def _flush_last_words(self) -> None:
        """Send what the protocol still owes the broker (e.g. a Close-Ok).

        Runs after the writer stopped; skipped if it stopped in the middle of a
        write (the stream is then in an unknown state).
        """
        if self._sending or not self._proto.pending_output:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._stream.send_all(self._proto.data_to_send())

    # -- topology requests

    async def declare_exchange(
        self,
        name: str,
        type: ExchangeType = ExchangeType.TOPIC,  # noqa: A002 - AMQP's name
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        check_name(name, "exchange name")
        xtype = check_exchange_type(type).value
        if arguments is not None:
            check_table(arguments)
        await self._requests.call(
            lambda ch: self._proto.exchange_declare(
                ch,
                name,
                xtype,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments,
            )
        )

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        check_name(name, "exchange name")
        await self._requests.call(
            lambda ch: self._proto.exchange_delete(ch, name, if_unused=if_unused)
        )

    async def declare_queue(
        self,
        name: str = "",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        exclusive: bool = False,
        passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueDeclared:
        check_name(name, "queue name")
        if arguments is not None:
            check_table(arguments)
        reply = await self._requests.call(
            lambda ch: self._proto.queue_declare(
                ch,
                name,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            )
        )
        assert isinstance(reply, QueueDeclareOk)
        return QueueDeclared(reply.queue, reply.message_count, reply.consumer_count)

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        check_name(queue, "queue name")
        check_name(exchange, "exchange name")
        check_routing_key(routing_key)
        if arguments is not None:
            check_table(arguments)
        await self._requests.call(
            lambda ch: self._proto.queue_bind(
                ch, queue, exchange, routing_key, arguments=arguments
            )
        )

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        check_name(queue, "queue name")
        check_name(exchange, "exchange name")
        check_routing_key(routing_key)
        if arguments is not None:
            check_table(arguments)
        await self._requests.call(
            lambda ch: self._proto.queue_unbind(
                ch, queue, exchange, routing_key, arguments=arguments
            )
        )

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        check_name(name, "queue name")
        reply = await self._requests.call(
            lambda ch: self._proto.queue_delete(
                ch, name, if_unused=if_unused, if_empty=if_empty
            )
        )
        assert isinstance(reply, QueueDeleteOk)
        return reply.message_count

    async def purge_queue(self, name: str) -> int:
        check_name(name, "queue name")
        reply = await self._requests.call(lambda ch: self._proto.queue_purge(ch, name))
        assert isinstance(reply, QueuePurgeOk)
        return reply.message_count

    # -- publishing

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties | None = None,
        *,
        mandatory: bool = False,
    ) -> None:
        check_name(exchange, "exchange name")
        check_routing_key(routing_key)
        body = check_body(body)
        props = check_properties(properties)
        if props.timestamp is not None:
            props = attrs.evolve(props, timestamp=wire_timestamp(props.timestamp))
        await trio.lowlevel.checkpoint_if_cancelled()
        self._mux.check_usable()
        while not self._publishing.unblocked.is_set():
            await self._publishing.unblocked.wait()
            self._mux.check_usable()
        pub = Publish(exchange, routing_key, body, props, mandatory)
        self._publishing.issue(pub)
        self._wake_writer()
        try:
            await pub.event.wait()
        except BaseException:
            pub.abandoned = True
            raise
        if pub.error is not None:
            raise fresh(pub.error)

    # -- consuming

    def open_consumer(
        self,
        queue: str,
        *,
        prefetch_count: int = 0,
        exclusive: bool = False,
    ) -> AbstractAsyncContextManager[AmqpConsumer]:
        return open_amqp_consumer(
            self._mux,
            self._consumers,
            queue,
            prefetch_count=prefetch_count,
            exclusive=exclusive,
        )
