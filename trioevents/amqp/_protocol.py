"""A sans-IO AMQP 0-9-1 client: the connection that ties the protocol together.

:class:`Connection` owns no socket and no clock of its own. The I/O layer feeds
it the bytes it reads (:meth:`Connection.receive_data`), pulls events out of it
(:meth:`Connection.next_event`) and writes whatever it queued
(:meth:`Connection.data_to_send`)::

    conn = Connection(username="guest", password="guest", virtual_host="/")
    sock.sendall(conn.data_to_send())          # the protocol header
    while True:
        conn.receive_data(sock.recv(65536))
        while (event := conn.next_event()) is not NEED_DATA:
            handle(event)
        sock.sendall(conn.data_to_send())      # replies the state machine queued

Requests (``open_channel``, ``queue_declare``, ``basic_publish``, ...) are
plain methods that check the request against the protocol state, encode it
and append the frames to the output buffer; nothing is half-queued when they
raise. A request that expects an answer gets exactly one :class:`~._events.Reply`
event on its channel, in request order, unless the channel or the connection
closes first (:class:`~._events.ChannelClosed`,
:class:`~._events.ConnectionClosed`).

Errors follow h11's rule:

* :class:`~trioevents.LocalProtocolError`: we were asked to do something AMQP
  forbids in the current state (a request on a channel that is not open or is
  closing, an unknown delivery tag, a frame larger than ``frame_max``, ...).
  The connection is unaffected.
* :class:`~trioevents.InvalidRequest`: an argument cannot be encoded (a name
  or routing key over 255 UTF-8 bytes, a header value of an unsupported type,
  ``delivery_mode`` not 1 or 2, ...). The connection is unaffected. Names are
  otherwise sent as they are: RabbitMQ takes any UTF-8, not only AMQP's
  grammar that pamqp enforces.
* :class:`~trioevents.RemoteProtocolError` (from :meth:`Connection.next_event`):
  the broker broke AMQP (a malformed frame, a body frame without a header, an
  unexpected reply, a frame for a channel that is not open, ...). The
  connection is then dead: a ``Connection.Close`` with the matching AMQP
  reply code (501-505) is queued in :meth:`Connection.data_to_send` for the
  I/O layer to send before it closes the socket, and every later
  ``next_event()`` raises again.
* :class:`~trioevents.BrokerUnavailable` (from ``next_event()``): the broker
  offers none of what we need (the protocol version, the SASL mechanism).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal, final

from pamqp import (
    base as pamqp_base,
    commands,
    frame as pamqp_frame,
)

from .._exceptions import (
    BrokerUnavailable,
    InvalidRequest,
    LocalProtocolError,
    RemoteProtocolError,
)
from .._message import NO_PROPERTIES, Properties
from ._channel import Channel, Pending
from ._codec import (
    encode_properties,
    from_field_table,
    properties_from_pamqp,
    properties_to_pamqp,
    to_field_table,
)
from ._events import (
    NEED_DATA,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionTuned,
    ConnectionUnblocked,
    EOFReceived,
    HeartbeatReceived,
)
from ._frames import (
    DECODE_ERRORS,
    FRAME_BODY,
    FRAME_CONTENT_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    REPLY_NAMES,
    ReceiveBuffer,
    Violation,
    encode_method,
    frame_message,
)
from ._handshake import CLIENT_CAPABILITIES, Handshake
from ._header import decode_content_header
from ._requests import ChannelRequests
from ._state import (
    CHANNEL_OPEN,
    CLOSABLE,
    CONNECTION_TRANSITIONS,
    REQUEST_STATES,
    ChannelState,
    ConnectionState,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._events import Event, NeedData
    from ._state import Request

__all__ = [
    "CLIENT_CAPABILITIES",
    "PROTOCOL_HEADER",
    "ChannelState",
    "Connection",
    "ConnectionState",
    "properties_from_pamqp",
    "properties_to_pamqp",
]

#: How many encoded ``Basic.Publish`` frames to keep (per connection).
_PUBLISH_CACHE_SIZE = 256


@final
class Connection(ChannelRequests):
    """The client side of one AMQP 0-9-1 connection, without I/O.

    The protocol header is queued at construction; everything else follows
    from the broker's frames. The handshake runs by itself: ``Start`` is
    answered with ``Start-Ok`` (PLAIN or EXTERNAL, with our client properties
    and capabilities), ``Tune`` with ``Tune-Ok`` and ``Open``, and
    :class:`~._events.ConnectionOpened` tells when channels may be opened.

    Parameters
    ----------
    username, password, virtual_host, auth_mechanism, heartbeat, frame_max, channel_max, client_properties, locale
        What to ask for in the handshake; see :class:`~._handshake.Handshake`,
        which also says how each limit is negotiated.
    clock
        Returns the current time in seconds; :attr:`last_received` and
        :attr:`last_sent` are measured with it (pass ``trio.current_time``).
    max_body_size
        The largest message body kept (``MAX_MESSAGE_SIZE``); a larger one is
        skipped as its frames arrive, never buffered, and delivered with an
        empty body and a problem saying so. ``None``: no limit.

    Raises
    ------
    InvalidRequest
        An argument is out of range.
    """

    def __init__(
        self,
        *,
        username: str = "guest",
        password: str = "guest",
        virtual_host: str = "/",
        auth_mechanism: Literal["PLAIN", "EXTERNAL"] = "PLAIN",
        heartbeat: int = 60,
        frame_max: int = 131072,
        channel_max: int = 2047,
        client_properties: Mapping[str, Any] | None = None,
        locale: str = "en_US",
        clock: Callable[[], float] = time.monotonic,
        max_body_size: int | None = None,
    ) -> None:
        self._handshake = Handshake(
            username=username,
            password=password,
            virtual_host=virtual_host,
            auth_mechanism=auth_mechanism,
            heartbeat=heartbeat,
            frame_max=frame_max,
            channel_max=channel_max,
            client_properties=client_properties,
            locale=locale,
        )
        self._clock = clock
        self._max_body_size = max_body_size
        self._heartbeat = heartbeat
        self._frame_max = frame_max
        self._channel_max = channel_max or 65535

        self._state = ConnectionState.AWAIT_START
        self._error: BaseException | None = None
        self._server_properties: dict[str, Any] = {}
        self._blocked: str | None = None
        self._close_args: tuple[int, str, int, int] = (0, "", 0, 0)
        self._channels: dict[int, Channel] = {}
        #: Encoded Basic.Publish frames: a service publishes to few places.
        self._publish_frames: dict[tuple[int, str, str, bool, bool], bytes] = {}

        self._received = ReceiveBuffer()
        self._eof = False
        self._out: list[bytes | memoryview] = [PROTOCOL_HEADER]
        self._out_len = len(PROTOCOL_HEADER)
        now = clock()
        self._last_received = now
        self._last_sent = now

    # ------------------------------------------------------------------
    # State

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in its life."""
        return self._state

    @property
    def channel_max(self) -> int:
        """The highest usable channel number (negotiated once tuned)."""
        return self._channel_max

    @property
    def frame_max(self) -> int:
        """The largest frame either side may send (negotiated once tuned)."""
        return self._frame_max

    @property
    def heartbeat(self) -> int:
        """The heartbeat interval in seconds, ``0`` for none (negotiated once tuned)."""
        return self._heartbeat

    @property
    def server_properties(self) -> Mapping[str, Any]:
        """What the broker said about itself in ``Connection.Start``."""
        return self._server_properties

    @property
    def blocked(self) -> str | None:
        """The reason the broker gave for ``Connection.Blocked``, ``None`` if not blocked."""
        return self._blocked

    @property
    def last_received(self) -> float:
        """When :meth:`receive_data` last got bytes, by the ``clock``."""
        return self._last_received

    @property
    def last_sent(self) -> float:
        """When :meth:`data_to_send` last returned bytes, by the ``clock``."""
        return self._last_sent

    @property
    def pending_output(self) -> int:
        """How many bytes :meth:`data_to_send` would return now."""
        return self._out_len

    def channel_state(self, channel: int) -> ChannelState | None:
        """Return the state of *channel*, ``None`` if it is closed (free)."""
        ch = self._channels.get(channel)
        return None if ch is None else ch.state

    def unconfirmed(self, channel: int) -> int:
        """Return how many publishes on *channel* await a confirm (0 if not in confirm mode)."""
        ch = self._channels.get(channel)
        if ch is None or ch.confirms is None:
            return 0
        return ch.confirms.outstanding

    # ------------------------------------------------------------------
    # Heartbeats

    def send_heartbeat(self) -> None:
        """Queue a heartbeat frame."""
        self._queue(HEARTBEAT_FRAME)

    def peer_is_silent(self, now: float | None = None) -> bool:
        """Return whether the broker sent nothing for twice the heartbeat interval.

        The I/O layer should then give the connection up as lost.
        """
        if not self._heartbeat or self._state in (
            ConnectionState.AWAIT_START,
            ConnectionState.AWAIT_TUNE,
        ):
            return False
        now = self._clock() if now is None else now
        return now - self._last_received >= 2 * self._heartbeat

    # ------------------------------------------------------------------
    # Bytes in, bytes out

    def data_to_send(self) -> bytes:
        """Return (and forget) every byte queued for the broker, in order."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out) if len(out) > 1 else bytes(out[0])
        out.clear()
        self._out_len = 0
        self._last_sent = self._clock()
        return data

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes read from the broker; ``b""`` means end of stream.

        Nothing is parsed here; call :meth:`next_event` until it returns
        :data:`~._events.NEED_DATA`.

        Raises
        ------
        LocalProtocolError
            Data after the end of stream.
        """
        if self._eof:
            if data:
                raise LocalProtocolError("received data after the end of stream")
            return
        if not data:
            self._eof = True
            return
        self._received.feed(data)
        self._last_received = self._clock()

    def next_event(self) -> Event | NeedData:
        """Parse buffered bytes up to the next event.

        Returns
        -------
        Event | NeedData
            The next event, or :data:`~._events.NEED_DATA` if no whole event is
            buffered. At the end of stream, :class:`~._events.EOFReceived`.
            Replies the protocol owes the broker (``Close-Ok``, ``Cancel-Ok``,
            ``Flow-Ok``, the handshake) are queued as a side effect.

        Raises
        ------
        RemoteProtocolError
            The broker broke AMQP. The connection is dead; a
            ``Connection.Close`` explaining why may be queued to be sent.
        BrokerUnavailable
            The broker offers no protocol version or SASL mechanism we speak.
        """
        if self._error is not None:
            raise RemoteProtocolError(
                f"the connection failed earlier: {self._error}"
            ) from self._error
        received = self._received
        try:
            while True:
                frame = received.next_frame(
                    self._frame_max, self._state is ConnectionState.AWAIT_START
                )
                if frame is None:
                    if self._eof:
                        if (
                            received.has_partial_frame
                            and self._state is not ConnectionState.CLOSED
                        ):
                            raise Violation(
                                501, "end of stream in the middle of a frame"
                            )
                        return EOFReceived()
                    return NEED_DATA
                event = self._handle_frame(*frame)
                if event is not None:
                    return event
        except Violation as exc:
            error = RemoteProtocolError(
                f"{exc.code} {REPLY_NAMES.get(exc.code, '')} - {exc.text}"
            )
            self._fail(error, exc.code, exc.text)
            raise error from None
        except BrokerUnavailable as exc:
            self._fail(exc, None, "")
            raise

    def _fail(self, error: BaseException, code: int | None, text: str) -> None:
        if code is not None and self._state in CLOSABLE:
            reply_text = f"{REPLY_NAMES.get(code, '')} - {text}"
            reply_text = reply_text.encode("utf-8")[:255].decode("utf-8", "ignore")
            self._queue(
                pamqp_frame.marshal(
                    commands.Connection.Close(code, reply_text, 0, 0), 0
                )
            )
        self._state = ConnectionState.ERROR
        self._error = error
        self._channels.clear()

    def _queue(self, data: bytes | memoryview) -> None:
        self._out.append(data)
        self._out_len += len(data)

    def _handle_frame(self, frame_type: int, channel: int, data: bytes) -> Event | None:
        if frame_type == FRAME_HEARTBEAT:
            if channel != 0:
                raise Violation(501, f"heartbeat frame on channel {channel}")
            return HeartbeatReceived()
        state = self._state
        if state is ConnectionState.CLOSED:
            return None  # the close handshake is over; ignore stragglers
        if frame_type == FRAME_BODY:
            ch = self._content_channel(channel, "content body")
            return None if ch is None else ch.on_body(data)
        if frame_type == FRAME_CONTENT_HEADER:
            # Read by us, leniently: bad properties are a bad message, not a
            # broken connection (see ._header).
            ch = self._content_channel(channel, "content header")
            if ch is None:
                return None
            return ch.on_header(decode_content_header(memoryview(data)[7:-1]))
        if frame_type != FRAME_METHOD:
            raise Violation(501, f"unknown frame type {frame_type}")
        try:
            _, _, value = pamqp_frame.unmarshal(data)
        except DECODE_ERRORS as exc:
            raise Violation(502, f"cannot decode frame: {exc}") from None
        if not isinstance(value, pamqp_base.Frame):  # pragma: no cover - by type
            raise Violation(501, f"unexpected {type(value).__name__}")
        if channel == 0:
            return self._on_connection_method(value)
        if state is not ConnectionState.OPEN:
            if state is ConnectionState.CLOSING:
                return None  # discard everything but Close / Close-Ok
            raise Violation(504, f"{value.name} on channel {channel} before open")
        ch = self._channels.get(channel)
        if ch is None:
            raise Violation(
                504, f"{value.name} on channel {channel}, which is not open"
            )
        return ch.on_method(value)

    def _content_channel(self, channel: int, what: str) -> Channel | None:
        if channel == 0:
            raise Violation(504, f"{what} on channel 0")
        ch = self._channels.get(channel)
        if ch is None:
            if self._state is ConnectionState.CLOSING:
                return None
            raise Violation(504, f"{what} on channel {channel}, which is not open")
        return ch

    # ------------------------------------------------------------------
    # Channel 0

    def _on_connection_method(self, method: pamqp_base.Frame) -> Event | None:
        state = self._state
        next_state = CONNECTION_TRANSITIONS.get((state, type(method)))
        if next_state is None:
            if state is ConnectionState.CLOSING:
                return None  # discard everything but Close / Close-Ok
            if isinstance(method, commands.Connection.Secure):
                raise Violation(
                    503,
                    f"Connection.Secure is not used by {self._handshake.auth_mechanism}",
                )
            raise Violation(
                505, f"unexpected {method.name} on channel 0 ({state.value})"
            )
        event: Event | None = None
        match method:
            case commands.Connection.Start():
                self._server_properties = from_field_table(
                    method.server_properties or {}
                )
                self._queue(pamqp_frame.marshal(self._handshake.start_ok(method), 0))
            case commands.Connection.Tune():
                tune_ok = self._handshake.tune_ok(method)
                self._channel_max = tune_ok.channel_max
                self._frame_max = tune_ok.frame_max
                self._heartbeat = tune_ok.heartbeat
                self._queue(pamqp_frame.marshal(tune_ok, 0))
                self._queue(pamqp_frame.marshal(self._handshake.open(), 0))
                event = ConnectionTuned(
                    tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat
                )
            case commands.Connection.OpenOk():
                event = ConnectionOpened(
                    self._server_properties,
                    self._channel_max,
                    self._frame_max,
                    self._heartbeat,
                )
            case commands.Connection.Blocked():
                self._blocked = method.reason or ""
                event = ConnectionBlocked(self._blocked)
            case commands.Connection.Unblocked():
                self._blocked = None
                event = ConnectionUnblocked()
            case commands.Connection.Close():
                # Also while CLOSING: both sides closed at once; the broker
                # then waits for our Close-Ok and ignores our Close.
                self._queue(pamqp_frame.marshal(commands.Connection.CloseOk(), 0))
                self._channels.clear()
                event = ConnectionClosed(
                    method.reply_code or 0,
                    method.reply_text or "",
                    method.class_id or 0,
                    method.method_id or 0,
                    by_broker=True,
                )
            case _:  # Connection.CloseOk, the answer to our close()
                self._channels.clear()
                event = ConnectionClosed(*self._close_args, by_broker=False)
        self._state = next_state
        return event

    # ------------------------------------------------------------------
    # Requests: the generic path

    def _usable_channel(
        self, channel: int, states: tuple[ChannelState, ...] = REQUEST_STATES
    ) -> Channel:
        """Return *channel* if the connection is open and the channel in *states*."""
        if self._state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"the connection is {self._state.value}, not open")
        ch = self._channels.get(channel)
        if ch is None:
            raise LocalProtocolError(f"channel {channel} is not open")
        if ch.state not in states:
            raise LocalProtocolError(f"channel {channel} is {ch.state.value}")
        return ch

    def _request(self, channel: int, request: Request, /, **fields: Any) -> Channel:
        """Check, encode and queue *request*; expect its reply unless ``nowait``.

        See :meth:`.ChannelRequests._request`.
        """
        nowait = request.nowait and fields["nowait"]
        if nowait and request.named is not None and not fields[request.named]:
            raise InvalidRequest(request.nowait_refusal)
        arguments = fields.get("arguments")
        if arguments is not None:
            fields["arguments"] = to_field_table(arguments)
        ch = self._usable_channel(channel, request.states)
        self._queue(encode_method(channel, self._frame_max, request.method, **fields))
        if not nowait:
            # no_ack: a consumer's (Basic.Consume); its Consume-Ok registers it.
            ch.pending.append(Pending(request, fields.get("no_ack", False)))
        return ch

    # ------------------------------------------------------------------
    # Requests: connection and channels

    def close(
        self,
        reply_code: int = 200,
        reply_text: str = "Normal shutdown",
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        """Start closing the connection (``Connection.Close``).

        Every channel is closed with it. Until the broker's ``Close-Ok`` (a
        :class:`~._events.ConnectionClosed` with ``by_broker=False``) every
        other incoming frame is discarded.

        Raises
        ------
        LocalProtocolError
            The handshake has not got that far (close the socket instead), or
            the connection is already closing or closed.
        """
        if self._state not in CLOSABLE:
            raise LocalProtocolError(
                f"cannot close a connection that is {self._state.value}"
            )
        close_args = (reply_code, reply_text, class_id, method_id)
        self._queue(self._encode_close(0, commands.Connection.Close, close_args))
        self._close_args = close_args
        self._state = ConnectionState.CLOSING
        self._channels.clear()

    def open_channel(self) -> int:
        """Open the lowest free channel number (``Channel.Open``).

        Requests may be made on the channel at once; they are pipelined behind
        the open. Answered by :class:`~._events.ChannelOpened`.

        Returns
        -------
        int
            The channel number.

        Raises
        ------
        LocalProtocolError
            The connection is not open, or all ``channel_max`` channels are in
            use.
        """
        if self._state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"the connection is {self._state.value}, not open")
        channels = self._channels
        for number in range(1, self._channel_max + 1):
            if number not in channels:
                break
        else:
            raise LocalProtocolError(f"all {self._channel_max} channels are in use")
        self._queue(pamqp_frame.marshal(CHANNEL_OPEN.method(), number))
        ch = Channel(
            number, self._queue, channels.pop, max_body_size=self._max_body_size
        )
        ch.pending.append(Pending(CHANNEL_OPEN))
        channels[number] = ch
        return number

    def close_channel(
        self,
        channel: int,
        reply_code: int = 200,
        reply_text: str = "Normal shutdown",
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        """Start closing *channel* (``Channel.Close``).

        Until the broker's ``Close-Ok`` (a :class:`~._events.ChannelClosed` with
        ``by_broker=False``) frames on the channel are discarded, except
        publisher confirms, and its number stays taken.

        Raises
        ------
        LocalProtocolError
            The channel is not open or already closing.
        """
        ch = self._usable_channel(channel)
        close_args = (reply_code, reply_text, class_id, method_id)
        self._queue(self._encode_close(channel, commands.Channel.Close, close_args))
        ch.start_close(close_args)

    def _encode_close(
        self,
        channel: int,
        factory: type[commands.Connection.Close | commands.Channel.Close],
        args: tuple[int, str, int, int],
    ) -> bytes:
        reply_code, reply_text, class_id, method_id = args
        return encode_method(
            channel,
            self._frame_max,
            factory,
            reply_code=reply_code,
            reply_text=reply_text,
            class_id=class_id,
            method_id=method_id,
        )

    # ------------------------------------------------------------------
    # Requests: the hot paths, written out

    def basic_publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes | bytearray | memoryview,
        properties: Properties = NO_PROPERTIES,
        *,
        mandatory: bool = False,
        immediate: bool = False,
    ) -> int | None:
        """Publish a message: queue its method, header and body frames at once.

        The body is split into frames of at most ``frame_max - 8`` bytes. All
        frames and the confirm tag come from this one call, so an I/O layer that
        calls it without awaiting in between either sends the whole message or
        none of it.

        Returns
        -------
        int | None
            On a channel in confirm mode, the tag the broker will confirm the
            message with (:class:`~._events.Confirmed` or
            :class:`~._events.Nacked`); otherwise ``None``.

        Raises
        ------
        LocalProtocolError
            The channel is not open, is closing, or the broker stopped its flow
            (:class:`~._events.ChannelFlow`); or the properties need a header
            frame larger than ``frame_max``.
        InvalidRequest
            An argument cannot be encoded (e.g. a routing key longer than 255
            bytes, an unsupported header value, a body that is not bytes-like).
        """
        ch = self._usable_channel(channel)
        if not ch.flow_active:
            raise LocalProtocolError(
                f"the broker stopped the flow on channel {channel}"
            )
        if isinstance(body, bytes):
            view = memoryview(body)
        elif isinstance(body, bytearray | memoryview):
            view = memoryview(bytes(body))  # the caller may mutate it later
        else:  # untyped callers
            raise InvalidRequest(
                f"a message body must be bytes, not {type(body).__name__}"
            )
        key = (channel, exchange, routing_key, mandatory, immediate)
        method = self._publish_frames.get(key)
        if method is None:
            method = encode_method(
                channel,
                self._frame_max,
                commands.Basic.Publish,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=mandatory,
                immediate=immediate,
            )
            if len(self._publish_frames) >= _PUBLISH_CACHE_SIZE:
                self._publish_frames.clear()
            self._publish_frames[key] = method
        parts, size = frame_message(
            channel, method, encode_properties(properties), view, self._frame_max
        )
        self._out.extend(parts)
        self._out_len += size
        confirms = ch.confirms
        return None if confirms is None else confirms.publish()

    def basic_ack(
        self, channel: int, delivery_tag: int, *, multiple: bool = False
    ) -> None:
        """Acknowledge a delivery, or with *multiple* every one up to it (0: all).

        Raises
        ------
        LocalProtocolError
            The tag is not an unacked delivery of this channel (already
            settled, from a ``no_ack`` consumer, or from before the channel was
            reopened); RabbitMQ would close the channel for it.
        """
        ch = self._usable_channel(channel)
        tags = ch.settle(delivery_tag, multiple)
        self._queue(
            encode_method(
                channel,
                self._frame_max,
                commands.Basic.Ack,
                delivery_tag=delivery_tag,
                multiple=multiple,
            )
        )
        ch.unacked.difference_update(tags)

    def basic_nack(
        self,
        channel: int,
        delivery_tag: int,
        *,
        multiple: bool = False,
        requeue: bool = True,
    ) -> None:
        """Refuse a delivery, or with *multiple* every one up to it (0: all).

        Raises
        ------
        LocalProtocolError
            As for :meth:`basic_ack`.
        """
        ch = self._usable_channel(channel)
        tags = ch.settle(delivery_tag, multiple)
        self._queue(
            encode_method(
                channel,
                self._frame_max,
                commands.Basic.Nack,
                delivery_tag=delivery_tag,
                multiple=multiple,
                requeue=requeue,
            )
        )
        ch.unacked.difference_update(tags)

    def basic_reject(
        self, channel: int, delivery_tag: int, *, requeue: bool = True
    ) -> None:
        """Refuse one delivery.

        Raises
        ------
        LocalProtocolError
            As for :meth:`basic_ack`.
        """
        ch = self._usable_channel(channel)
        tags = ch.settle(delivery_tag, False)
        self._queue(
            encode_method(
                channel,
                self._frame_max,
                commands.Basic.Reject,
                delivery_tag=delivery_tag,
                requeue=requeue,
            )
        )
        ch.unacked.difference_update(tags)
