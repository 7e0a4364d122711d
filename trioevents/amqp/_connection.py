"""The trio side of the RabbitMQ transport: one socket, one reader, one writer.

:func:`open_amqp_connection` drives the sans-IO :class:`~._protocol.Connection`
over a :class:`trio.abc.Stream` and implements :class:`trioevents.abc.Connection`
on top of it. It is the only module of the package that does I/O.

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

Channels: one for topology requests, one in confirm mode for publishes, and one
per consumer (closing a consumer closes its channel, which makes the broker
requeue its unsettled deliveries). A broker refusal closes only the channel of
the request; the channel is reopened for the next request, and requests that
were pipelined behind the refused one (which the broker discarded unseen) are
sent again on the new channel.
"""

from __future__ import annotations

import copy
import enum
import math
import re
from collections import deque
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs
import trio

from .. import abc
from .._exceptions import (
    BrokerUnavailable,
    ChannelClosedByBroker,
    ConnectionLost,
    ConsumerCancelled,
    InvalidRequest,
    LocalProtocolError,
    PublishNotConfirmed,
    RemoteProtocolError,
)
from .._fieldtable import check_table, wire_timestamp
from .._groups import unwrap_lone_exception
from .._message import Delivery, ExchangeType, Properties, QueueDeclared, Settlement
from .._validation import (
    check_body,
    check_exchange_type,
    check_name,
    check_prefetch,
    check_properties,
    check_routing_key,
)
from ._events import (
    NEED_DATA,
    BasicCancelOk,
    BasicConsumeOk,
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
    Event,
    Nacked,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    Reply,
    Returned,
)
from ._protocol import Connection as ProtocolConnection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from contextlib import AbstractAsyncContextManager

__all__ = ["AmqpConnection", "AmqpConsumer", "open_amqp_connection"]

#: How much the reader asks the stream for at a time.
_READ_SIZE: Final = 65536
#: Basic.Publish's (class id, method id): a channel error caused by a publish.
_BASIC_PUBLISH: Final = (60, 40)
#: The exchange a 403 / 404 reply text names, e.g. "no exchange 'x' in vhost 'v'".
_EXCHANGE_IN_REPLY: Final = re.compile(
    r"exchange '((?:[^']|'(?! in vhost))*)' in vhost"
)


def _fresh(error: BaseException) -> BaseException:
    """Return a copy of *error* to raise in one more task.

    Each waiter gets its own exception object, so that tracebacks of different
    tasks do not pile up on one instance.
    """
    clone = copy.copy(error)
    clone.__cause__ = error.__cause__
    clone.__traceback__ = None
    return clone


class _Role(enum.Enum):
    TOPOLOGY = "topology"
    PUBLISH = "publish"
    CONSUMER = "consumer"


@attrs.define(eq=False)
class _Waiter:
    """A request waiting for its reply on a channel (a tiny future).

    Attributes
    ----------
    retry
        Queues the request again on another channel; set for requests that can
        be sent again when the broker discarded them (after an earlier request
        on the same channel was refused).
    on_reply
        Called by the reader with the reply, before anyone wakes up: state
        changes that must happen even if the waiting task was cancelled.
    """

    retry: Callable[[int], None] | None = None
    on_reply: Callable[[Reply], None] | None = None
    event: trio.Event = attrs.Factory(trio.Event)
    reply: Reply | None = None
    error: BaseException | None = None
    abandoned: bool = False

    def resolve(self, reply: Reply) -> None:
        if self.event.is_set():
            return
        self.reply = reply
        if self.on_reply is not None:
            self.on_reply(reply)
        self.event.set()

    def fail(self, error: BaseException) -> None:
        if self.event.is_set():
            return
        self.error = error
        self.event.set()

    async def wait(self) -> Reply:
        try:
            await self.event.wait()
        except BaseException:
            self.abandoned = True
            raise
        if self.error is not None:
            raise _fresh(self.error)
        assert self.reply is not None
        return self.reply


@attrs.define(eq=False)
class _Publish:
    """A published message waiting for its confirm."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    mandatory: bool
    event: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None
    returned: str | None = None
    abandoned: bool = False

    def done(self, error: BaseException | None = None) -> None:
        if self.event.is_set():
            return
        self.error = error
        self.event.set()

    def describe(self) -> str:
        return (
            f"message to exchange {self.exchange!r} with routing key "
            f"{self.routing_key!r}"
        )


@attrs.define(eq=False)
class _Channel:
    """One incarnation of a channel number.

    When the number is reused, a new :class:`_Channel` stands for it, so nothing
    of an earlier incarnation (e.g. a delivery tag) can leak onto the new one.
    """

    number: int
    role: _Role
    waiters: deque[_Waiter] = attrs.Factory(deque)
    #: False from the moment the channel starts closing (or is closed).
    open: bool = True
    #: Set once the channel is closed for good (by either side or with the
    #: connection).
    closed: trio.Event = attrs.Factory(trio.Event)
    consumer: AmqpConsumer | None = None
    #: Publish channel: unconfirmed publishes by confirm tag.
    publishes: dict[int, _Publish] = attrs.Factory(dict)
    #: Publish channel: the tag of the last publish matched to a Basic.Return.
    last_returned: int = 0
    #: Publish channel: returns not matched yet, as (reason, candidate tags).
    returns: deque[tuple[str, list[int]]] = attrs.Factory(deque)
    flow_active: bool = True


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
    peer: str = "the broker",
) -> AsyncIterator[AmqpConnection]:
    """Run an AMQP 0-9-1 connection over *stream* (which it closes at the end).

    The handshake runs before the body; the body runs while the reader, writer
    and heartbeat tasks serve the connection. On exit the connection is closed
    with a close handshake (bounded by *close_timeout*, also when the body was
    cancelled, so that queued acks reach the broker), which makes the broker
    requeue every unsettled delivery.

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
        may take.
    peer
        How to name the broker in error messages (never with a password).

    Raises
    ------
    BrokerUnavailable
        The handshake failed: the broker refused the login or the virtual host,
        closed the stream, did not answer in time or does not speak AMQP 0-9-1.
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
                nursery.start_soon(conn._reader)
                nursery.start_soon(conn._writer)
                nursery.start_soon(conn._heartbeater)
                with trio.CancelScope() as body_scope:
                    conn._body_scope = body_scope
                    try:
                        yield conn
                    finally:
                        conn._body_scope = None
                        await conn._close()
                nursery.cancel_scope.cancel()
        await conn._flush_last_words()
    finally:
        conn._shut_down()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
    if conn._failure is not None:
        raise _fresh(conn._failure)


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
        self._close_timeout = close_timeout
        self._channels: dict[int, _Channel] = {}
        self._topology: _Channel | None = None
        self._publisher: _Channel | None = None
        self._consumers: set[AmqpConsumer] = set()
        self._output_ready = trio.Event()
        self._unblocked = trio.Event()
        self._unblocked.set()
        self._closed = trio.Event()
        self._body_scope: trio.CancelScope | None = None
        #: Why the connection was lost (never set by an orderly close).
        self._failure: BaseException | None = None
        self._closing = False
        self._sending = False
        self._heartbeat_queued = -math.inf
        self._server_properties: Mapping[str, Any] = {}

    def __repr__(self) -> str:
        if self._failure is not None:
            state = "lost"
        elif self._closing:
            state = "closed"
        else:
            state = "open"
        return f"<AmqpConnection to {self._peer} ({state})>"

    # -- public state

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
                            raise BrokerUnavailable(
                                f"{self._peer} refused the connection: "
                                f"{event.reply_code} {event.reply_text}"
                            )
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
        while self._failure is None and not self._closed.is_set():
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
                ch.consumer._on_delivery(event)
        elif isinstance(event, Confirmed | Nacked):
            self._on_confirm(event)
        elif isinstance(event, Returned):
            self._on_return(event)
        elif isinstance(event, ChannelClosed):
            self._on_channel_closed(event)
        elif isinstance(event, ConsumerCancelledByBroker):
            ch = self._channels.get(event.channel)
            if ch is not None and ch.consumer is not None:
                ch.consumer._on_broker_cancel()
        elif isinstance(event, ChannelFlow):
            ch = self._channels.get(event.channel)
            if ch is not None:
                ch.flow_active = event.active
                self._update_blocked()
        elif isinstance(event, ConnectionBlocked | ConnectionUnblocked):
            self._update_blocked()
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

    def _update_blocked(self) -> None:
        publisher = self._publisher
        blocked = self._proto.blocked is not None or (
            publisher is not None and not publisher.flow_active
        )
        if blocked and self._unblocked.is_set():
            self._unblocked = trio.Event()
        elif not blocked:
            self._unblocked.set()

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
                ch.consumer._on_channel_closed(None)
            return
        error = ChannelClosedByBroker.from_reply(event.reply_code, event.reply_text)
        waiters, ch.waiters = ch.waiters, deque()
        if ch.role is _Role.TOPOLOGY:
            self._topology = None
            self._retry_topology(waiters, error)
        elif ch.role is _Role.PUBLISH:
            self._publisher = None
            for waiter in waiters:
                waiter.fail(error)
            self._retry_publishes(ch, event, error)
            self._update_blocked()
        else:
            for waiter in waiters:
                waiter.fail(error)
            if ch.consumer is not None:
                ch.consumer._on_channel_closed(error)

    def _retry_topology(
        self, waiters: deque[_Waiter], error: ChannelClosedByBroker
    ) -> None:
        """Fail the refused request; send the ones behind it again.

        Replies come in request order, so the oldest waiter is the refused
        request; the broker discarded everything after it without looking.
        """
        culprit = waiters.popleft() if waiters else None
        if culprit is None or culprit.retry is None:
            # The channel itself failed to open: nothing behind it ran.
            for waiter in waiters:
                waiter.fail(error)
            if culprit is not None:
                culprit.fail(error)
            return
        culprit.fail(error)
        for waiter in waiters:
            if waiter.abandoned or waiter.retry is None:
                waiter.fail(error)
                continue
            try:
                self._issue_topology(waiter)
            except Exception as exc:
                waiter.fail(exc)
        if self._proto.pending_output:
            self._wake_writer()

    def _retry_publishes(
        self, ch: _Channel, event: ChannelClosed, error: ChannelClosedByBroker
    ) -> None:
        """Settle the publishes of a publish channel the broker closed.

        The broker handles publishes in order and discards everything after the
        refused one, which can be sent again. The refused publish is found by the
        exchange the reply names (a publish to a missing or internal exchange).
        Earlier publishes the broker did not confirm yet are in doubt: they were
        routed, but the confirm will never come.
        """
        pending = sorted(ch.publishes.items())
        ch.publishes.clear()
        culprit_index = None
        match = _EXCHANGE_IN_REPLY.search(event.reply_text)
        if (event.class_id, event.method_id) == _BASIC_PUBLISH and match is not None:
            exchange = match.group(1)
            for index, (_, pub) in enumerate(pending):
                if pub.exchange == exchange:
                    culprit_index = index
                    break
        if culprit_index is None:
            for _, pub in pending:
                pub.done(_fresh(error))
            return
        for _, pub in pending[:culprit_index]:
            pub.done(
                PublishNotConfirmed(
                    f"{pub.describe()} was not confirmed: the broker closed the "
                    f"channel first ({error})"
                )
            )
        pending[culprit_index][1].done(_fresh(error))
        for _, pub in pending[culprit_index + 1 :]:
            if pub.abandoned:
                pub.done(_fresh(error))
                continue
            try:
                self._issue_publish(pub)
            except Exception as exc:
                pub.done(exc)
        if self._proto.pending_output:
            self._wake_writer()

    def _on_confirm(self, event: Confirmed | Nacked) -> None:
        ch = self._channels.get(event.channel)
        if ch is None:
            return
        if ch.returns:
            self._match_returns(ch, event.delivery_tags)
        publishes = ch.publishes
        nacked = isinstance(event, Nacked)
        for tag in event.delivery_tags:
            pub = publishes.pop(tag, None)
            if pub is None:
                continue
            if pub.returned is not None:
                pub.done(
                    PublishNotConfirmed(
                        f"{pub.describe()} was returned: {pub.returned}"
                    )
                )
            elif nacked:
                pub.done(
                    PublishNotConfirmed(
                        f"{pub.describe()} was nacked by the broker (e.g. a full "
                        "queue with x-overflow=reject-publish)"
                    )
                )
            else:
                pub.done()

    def _on_return(self, event: Returned) -> None:
        """Note which publishes a ``Basic.Return`` may be about.

        AMQP does not say which publish came back. The candidates are the
        unconfirmed mandatory publishes with the same exchange, routing key and
        body, after the last returned one (the broker returns in publish order).
        The broker confirms a returned message right after the return, so the
        next confirm that names a candidate tells which one it was.
        """
        ch = self._channels.get(event.channel)
        if ch is None:
            return
        candidates = [
            tag
            for tag, pub in sorted(ch.publishes.items())
            if tag > ch.last_returned
            and pub.mandatory
            and pub.returned is None
            and pub.exchange == event.exchange
            and pub.routing_key == event.routing_key
            and pub.body == event.body
        ]
        if candidates:
            ch.returns.append((f"{event.reply_code} {event.reply_text}", candidates))

    @staticmethod
    def _match_returns(ch: _Channel, tags: tuple[int, ...]) -> None:
        """Resolve pending returns with the tags of a confirm, in return order."""
        confirmed = set(tags)
        while ch.returns:
            reason, candidates = ch.returns[0]
            chosen = next(
                (t for t in candidates if t in confirmed and t > ch.last_returned),
                None,
            )
            if chosen is None:
                if any(
                    t in ch.publishes and t not in confirmed and t > ch.last_returned
                    for t in candidates
                ):
                    return  # its confirm is still to come
                ch.returns.popleft()  # no candidate left: nothing to mark
                continue
            ch.returns.popleft()
            ch.publishes[chosen].returned = reason
            ch.last_returned = chosen

    # -- failure and close

    def _fail(self, error: BaseException, cause: BaseException | None = None) -> None:
        """Give the connection up: every waiter gets *error*; the body is cancelled."""
        if self._failure is not None or self._closed.is_set():
            return
        if self._closing:
            # Lost while we were closing it anyway: the close is over.
            self._closed.set()
            return
        if cause is not None:
            error.__cause__ = cause
        self._failure = error
        self._finish(error)
        if self._body_scope is not None:
            self._body_scope.cancel()

    def _finish(self, error: BaseException) -> None:
        """Fail every waiter and close every channel and consumer with *error*."""
        self._closed.set()
        self._unblocked.set()
        channels = list(self._channels.values())
        self._channels.clear()
        self._topology = self._publisher = None
        for ch in channels:
            ch.open = False
            ch.closed.set()
            for waiter in ch.waiters:
                waiter.fail(error)
            ch.waiters.clear()
            for pub in ch.publishes.values():
                pub.done(error)
            ch.publishes.clear()
        for consumer in list(self._consumers):
            consumer._on_connection_closed(error)

    async def _close(self) -> None:
        """Close the connection with a close handshake, bounded by the close timeout.

        Shielded (with that bound), so that a cancelled body still flushes its
        acks and closes cleanly.
        """
        if self._failure is not None or self._closing:
            return
        self._closing = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._close_timeout):
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
        self._closing = True
        if self._failure is None:
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

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise _fresh(self._failure)
        if self._closing:
            raise trio.ClosedResourceError("the connection is closed")

    # -- topology requests

    def _issue_topology(self, waiter: _Waiter) -> None:
        """Queue *waiter*'s request on the topology channel (opened if needed)."""
        assert waiter.retry is not None
        ch = self._topology
        if ch is None:
            ch = self._open_channel(_Role.TOPOLOGY)
            self._topology = ch
        waiter.retry(ch.number)
        ch.waiters.append(waiter)

    def _open_channel(self, role: _Role) -> _Channel:
        number = self._proto.open_channel()
        ch = _Channel(number, role)
        ch.waiters.append(_Waiter(abandoned=True))  # Channel.Open-Ok
        self._channels[number] = ch
        return ch

    async def _call(self, request: Callable[[int], None]) -> Reply:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        waiter = _Waiter(retry=request)
        self._issue_topology(waiter)
        self._wake_writer()
        return await waiter.wait()

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
        await self._call(
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
        await self._call(
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
        reply = await self._call(
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
        await self._call(
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
        await self._call(
            lambda ch: self._proto.queue_unbind(
                ch, queue, exchange, routing_key, arguments=arguments
            )
        )

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        check_name(name, "queue name")
        reply = await self._call(
            lambda ch: self._proto.queue_delete(
                ch, name, if_unused=if_unused, if_empty=if_empty
            )
        )
        assert isinstance(reply, QueueDeleteOk)
        return reply.message_count

    async def purge_queue(self, name: str) -> int:
        check_name(name, "queue name")
        reply = await self._call(lambda ch: self._proto.queue_purge(ch, name))
        assert isinstance(reply, QueuePurgeOk)
        return reply.message_count

    # -- publishing

    def _issue_publish(self, pub: _Publish) -> None:
        """Queue *pub* on the publish channel (opened in confirm mode if needed).

        One synchronous step: the whole message and its confirm tag, or nothing.
        """
        ch = self._publisher
        if ch is None:
            ch = self._open_channel(_Role.PUBLISH)
            self._proto.confirm_select(ch.number)
            ch.waiters.append(_Waiter(abandoned=True))  # Confirm.Select-Ok
            self._publisher = ch
        try:
            tag = self._proto.basic_publish(
                ch.number,
                pub.exchange,
                pub.routing_key,
                pub.body,
                pub.properties,
                mandatory=pub.mandatory,
            )
        except LocalProtocolError as exc:  # e.g. properties larger than a frame
            raise InvalidRequest(str(exc)) from exc
        assert tag is not None
        ch.publishes[tag] = pub

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
        self._check_usable()
        while not self._unblocked.is_set():
            await self._unblocked.wait()
            self._check_usable()
        pub = _Publish(exchange, routing_key, body, props, mandatory)
        self._issue_publish(pub)
        self._wake_writer()
        try:
            await pub.event.wait()
        except BaseException:
            pub.abandoned = True
            raise
        if pub.error is not None:
            raise _fresh(pub.error)

    # -- consuming

    def open_consumer(
        self,
        queue: str,
        *,
        prefetch_count: int = 0,
        exclusive: bool = False,
    ) -> AbstractAsyncContextManager[AmqpConsumer]:
        return self._open_consumer(queue, prefetch_count, exclusive)

    @asynccontextmanager
    async def _open_consumer(
        self, queue: str, prefetch_count: int, exclusive: bool
    ) -> AsyncIterator[AmqpConsumer]:
        # No cancel scope may span the yield: the consumer may be closed after
        # its connection (e.g. by hand with __aexit__), as the seam allows.
        check_name(queue, "queue name")
        check_prefetch(prefetch_count)
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        proto = self._proto
        ch = self._open_channel(_Role.CONSUMER)
        consumer = AmqpConsumer(self, ch, queue, prefetch_count)
        ch.consumer = consumer
        self._consumers.add(consumer)
        try:
            if prefetch_count:
                proto.basic_qos(ch.number, prefetch_count=prefetch_count)
                ch.waiters.append(_Waiter(abandoned=True))
            consume = _Waiter(on_reply=consumer._on_consume_ok)
            proto.basic_consume(ch.number, queue, exclusive=exclusive)
            ch.waiters.append(consume)
            self._wake_writer()
            await consume.wait()
        except BaseException:
            consumer._abandon()
            raise
        try:
            yield consumer
        finally:
            await consumer._close()

    # -- settling (called by AmqpConsumer)

    def _settle_now(
        self, ch: _Channel, delivery_tag: int, how: Settlement, requeue: bool
    ) -> None:
        proto = self._proto
        if how is Settlement.ACK:
            proto.basic_ack(ch.number, delivery_tag)
        elif how is Settlement.NACK:
            proto.basic_nack(ch.number, delivery_tag, requeue=requeue)
        else:
            proto.basic_reject(ch.number, delivery_tag, requeue=requeue)
        self._wake_writer()


# --------------------------------------------------------------------------- consumer


class _ConsumerState(enum.Enum):
    OPENING = "opening"
    ACTIVE = "active"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    BROKER_CANCELLED = "cancelled by the broker"
    FAILED = "failed"
    CLOSED = "closed"


@final
class AmqpConsumer(abc.Consumer):
    """A consumer of one queue on its own channel.

    Implements :class:`trioevents.abc.Consumer`. Deliveries wait in a buffer
    (the broker sends at most *prefetch_count* unsettled ones) until
    :meth:`receive` returns them.
    """

    def __init__(
        self, connection: AmqpConnection, channel: _Channel, queue: str, prefetch: int
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._queue = queue
        self._prefetch = prefetch
        self._tag = ""
        self._state = _ConsumerState.OPENING
        self._error: BaseException | None = None
        self._buffer: deque[Delivery] = deque()
        self._wakeup: trio.Event | None = None
        self._cancel_waiter: _Waiter | None = None

    @property
    def consumer_tag(self) -> str:
        return self._tag

    @property
    def queue(self) -> str:
        return self._queue

    def __repr__(self) -> str:
        return (
            f"<AmqpConsumer {self._tag or '?'} of {self._queue!r} on channel "
            f"{self._channel.number} ({self._state.value})>"
        )

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    # -- called by the connection (the reader task)

    def _on_consume_ok(self, reply: Reply) -> None:
        assert isinstance(reply, BasicConsumeOk)
        self._tag = reply.consumer_tag
        if self._state is _ConsumerState.OPENING:
            self._state = _ConsumerState.ACTIVE

    def _on_delivery(self, event: Delivered) -> None:
        state = self._state
        if state is _ConsumerState.ACTIVE:
            self._buffer.append(
                Delivery(
                    delivery_tag=event.delivery_tag,
                    redelivered=event.redelivered,
                    exchange=event.exchange,
                    routing_key=event.routing_key,
                    properties=event.properties,
                    body=event.body,
                    consumer_tag=event.consumer_tag,
                    settler=self._settle,
                )
            )
            self._wake()
        elif self._channel.open:
            # Sent before the broker saw our cancel: it goes back at once.
            self._connection._settle_now(
                self._channel, event.delivery_tag, Settlement.NACK, True
            )

    def _return_buffered(self) -> None:
        """Give the deliveries :meth:`receive` did not return back to the queue."""
        buffer, self._buffer = self._buffer, deque()
        if self._channel.open:
            for delivery in buffer:
                self._connection._settle_now(
                    self._channel, delivery.delivery_tag, Settlement.NACK, True
                )

    def _on_broker_cancel(self) -> None:
        if self._state in (_ConsumerState.ACTIVE, _ConsumerState.CANCELLING):
            self._state = _ConsumerState.BROKER_CANCELLED
            self._return_buffered()
            self._wake()

    def _on_cancel_ok(self, reply: Reply) -> None:
        assert isinstance(reply, BasicCancelOk)
        if self._state is _ConsumerState.CANCELLING:
            self._state = _ConsumerState.CANCELLED
        self._wake()

    def _on_channel_closed(self, error: BaseException | None) -> None:
        """The channel is gone: by the broker (*error*) or by our own close."""
        self._buffer.clear()
        if error is not None and self._state is not _ConsumerState.CLOSED:
            self._state = _ConsumerState.FAILED
            self._error = error
        self._wake()

    def _on_connection_closed(self, error: BaseException) -> None:
        self._buffer.clear()
        if self._state is not _ConsumerState.CLOSED:
            self._state = _ConsumerState.FAILED
            self._error = error
        self._connection._consumers.discard(self)
        self._wake()

    # -- the seam

    async def receive(self) -> Delivery:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._buffer:
                delivery = self._buffer.popleft()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return delivery
            state = self._state
            if state in (_ConsumerState.CANCELLING, _ConsumerState.CANCELLED):
                raise trio.EndOfChannel
            if state is _ConsumerState.BROKER_CANCELLED:
                raise ConsumerCancelled(
                    f"consumer {self._tag} was cancelled by the broker (e.g. its "
                    f"queue {self._queue!r} was deleted)"
                )
            if state is _ConsumerState.FAILED:
                assert self._error is not None
                raise _fresh(self._error)
            if state is _ConsumerState.CLOSED:
                raise trio.ClosedResourceError("the consumer is closed")
            if self._wakeup is None:
                self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def cancel(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state is _ConsumerState.ACTIVE and self._channel.open:
            self._state = _ConsumerState.CANCELLING
            waiter = _Waiter(on_reply=self._on_cancel_ok)
            # Cancel first, then return the buffer: the broker then cannot hand
            # the returned messages to this consumer again.
            self._connection._proto.basic_cancel(self._channel.number, self._tag)
            self._channel.waiters.append(waiter)
            self._cancel_waiter = waiter
            self._return_buffered()
            self._connection._wake_writer()
            self._wake()
        pending = self._cancel_waiter
        if self._state is _ConsumerState.CANCELLING and pending is not None:
            # If the channel goes meanwhile, nothing is consumed any more either.
            with suppress(
                trio.ClosedResourceError, ChannelClosedByBroker, ConnectionLost
            ):
                await pending.wait()
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _settle(self, delivery: Delivery, how: Settlement, requeue: bool) -> None:
        # Not a cancellation point: the frame is queued whole before we yield.
        ch = self._channel
        if not ch.open:
            failure = self._connection._failure
            if failure is not None:
                raise _fresh(failure)
            raise trio.ClosedResourceError(
                f"cannot {how.value} delivery {delivery.delivery_tag}: the channel of "
                f"consumer {self._tag} is closed and the message went back to its "
                "queue"
            )
        self._connection._settle_now(ch, delivery.delivery_tag, how, requeue)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- closing

    def _abandon(self) -> None:
        """Undo a consumer whose open failed or was cancelled."""
        self._state = _ConsumerState.CLOSED
        self._connection._consumers.discard(self)
        self._close_channel()

    def _close_channel(self) -> bool:
        ch = self._channel
        if not ch.open:
            return False
        ch.open = False
        conn = self._connection
        if conn._failure is not None or conn._closing:
            return False
        try:
            conn._proto.close_channel(ch.number)
        except LocalProtocolError:
            return False
        conn._wake_writer()
        return True

    async def _close(self) -> None:
        """Close the consumer's channel: its unsettled deliveries go back."""
        if self._state is _ConsumerState.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        self._state = _ConsumerState.CLOSED
        self._buffer.clear()
        self._wake()
        self._connection._consumers.discard(self)
        if self._close_channel():
            # Wait for Close-Ok: the broker has requeued everything by then.
            with trio.move_on_after(self._connection._close_timeout):
                await self._channel.closed.wait()
        else:
            await trio.lowlevel.checkpoint()
