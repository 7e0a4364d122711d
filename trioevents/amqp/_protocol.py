"""A sans-IO AMQP 0-9-1 client: connection and channel state machines over pamqp.

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

import datetime
import decimal
import enum
import platform
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs
from pamqp import (
    base as pamqp_base,
    commands,
    encode as pamqp_encode,
    exceptions as pamqp_exceptions,
    frame as pamqp_frame,
    header as pamqp_header,
    heartbeat as pamqp_heartbeat,
)

from .._exceptions import (
    BrokerUnavailable,
    InvalidRequest,
    LocalProtocolError,
    RemoteProtocolError,
)
from .._message import NO_PROPERTIES, ExchangeType, Properties
from .._version import __version__
from ._events import (
    NEED_DATA,
    BasicCancelOk,
    BasicConsumeOk,
    BasicQosOk,
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    Confirmed,
    ConfirmSelectOk,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionTuned,
    ConnectionUnblocked,
    ConsumerCancelledByBroker,
    Delivered,
    EOFReceived,
    Event,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    HeartbeatReceived,
    Nacked,
    NeedData,
    QueueBindOk,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    QueueUnbindOk,
    Reply,
    Returned,
)

if TYPE_CHECKING:
    from pamqp import common as pamqp_common

__all__ = [
    "ChannelState",
    "Connection",
    "ConnectionState",
    "properties_from_pamqp",
    "properties_to_pamqp",
]

#: The AMQP 0-9-1 protocol header, the first bytes a client sends.
PROTOCOL_HEADER: Final = pamqp_header.ProtocolHeader().marshal()
#: The smallest ``frame_max`` a peer may ask for (AMQP 0-9-1, 4.2.1).
FRAME_MIN_SIZE: Final = 4096
#: Frame header (type, channel, size) plus the frame-end octet.
FRAME_OVERHEAD: Final = 8

_FRAME_HEADER: Final = struct.Struct(">BHI")
_FRAME_METHOD: Final = 1
_FRAME_HEADER_TYPE: Final = 2
_FRAME_BODY: Final = 3
_FRAME_HEARTBEAT: Final = 8
_FRAME_END: Final = 0xCE
_FRAME_END_BYTES: Final = b"\xce"
_HEARTBEAT_FRAME: Final = pamqp_heartbeat.Heartbeat.marshal()
_BASIC_CLASS_ID: Final = 60
_COMPACT_AFTER: Final = 65536
_PUBLISH_CACHE_SIZE: Final = 256

_REPLY_NAMES: Final = {
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
}

#: What we tell the broker we understand (RabbitMQ's capability names).
CLIENT_CAPABILITIES: Final[Mapping[str, bool]] = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
    "publisher_confirms": True,
}


class ConnectionState(enum.Enum):
    """Where a :class:`Connection` is in its life."""

    #: The protocol header is queued; waiting for ``Connection.Start``.
    AWAIT_START = "await_start"
    #: ``Start-Ok`` is queued; waiting for ``Connection.Tune``.
    AWAIT_TUNE = "await_tune"
    #: ``Tune-Ok`` and ``Open`` are queued; waiting for ``Connection.Open-Ok``.
    AWAIT_OPEN_OK = "await_open_ok"
    #: Open for channels.
    OPEN = "open"
    #: We sent ``Connection.Close``; waiting for ``Close-Ok``.
    CLOSING = "closing"
    #: The close handshake is over; only the socket is left to close.
    CLOSED = "closed"
    #: The broker broke the protocol; see :meth:`Connection.next_event`.
    ERROR = "error"


class ChannelState(enum.Enum):
    """Where a channel is in its life. A closed channel has no state."""

    #: ``Channel.Open`` sent; requests may already be pipelined behind it.
    OPENING = "opening"
    #: ``Channel.Open-Ok`` received.
    OPEN = "open"
    #: We sent ``Channel.Close``; the number is reusable after ``Close-Ok``.
    CLOSING = "closing"


class _Violation(Exception):
    """The broker broke AMQP; becomes a RemoteProtocolError in next_event."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


@attrs.frozen
class _Pending:
    """A request waiting for its reply on a channel."""

    replies: tuple[type[pamqp_base.Frame], ...]
    no_ack: bool = False


@attrs.define
class _ConfirmTracker:
    """The unconfirmed publish tags of a channel in confirm mode.

    Tags are handed out in order, so the unconfirmed tags are
    ``range(low, next) - done``: ``done`` only holds tags confirmed out of
    order, which keeps every operation cheap however many are in flight.
    """

    low: int = 1
    next: int = 1
    done: set[int] = attrs.Factory(set)

    def publish(self) -> int:
        tag = self.next
        self.next += 1
        return tag

    @property
    def outstanding(self) -> int:
        return self.next - self.low - len(self.done)

    def settle(self, tag: int, multiple: bool) -> tuple[int, ...] | None:
        """Settle *tag*; return the newly settled tags or None if invalid."""
        if multiple:
            upto = self.next - 1 if tag == 0 else tag
            if upto >= self.next:
                return None
            if upto < self.low:
                return ()
            if self.done:
                done = self.done
                tags = tuple(t for t in range(self.low, upto + 1) if t not in done)
                self.done = {t for t in done if t > upto}
            else:
                tags = tuple(range(self.low, upto + 1))
            self.low = upto + 1
            return tags
        if not self.low <= tag < self.next or tag in self.done:
            return None
        if tag == self.low:
            self.low += 1
            while self.low in self.done:
                self.done.remove(self.low)
                self.low += 1
        else:
            self.done.add(tag)
        return (tag,)


@attrs.define
class _Content:
    """A content-bearing method whose header and body are still arriving."""

    method: commands.Basic.Deliver | commands.Basic.Return
    no_ack: bool
    properties: Properties | None = None
    body_size: int = 0
    received: int = 0
    chunks: list[bytes] = attrs.Factory(list)


@attrs.define(eq=False)
class _Channel:
    number: int
    state: ChannelState = ChannelState.OPENING
    pending: deque[_Pending] = attrs.Factory(deque)
    confirms: _ConfirmTracker | None = None
    flow_active: bool = True
    content: _Content | None = None
    unacked: set[int] = attrs.Factory(set)
    no_ack_consumers: set[str] = attrs.Factory(set)
    #: Our own Channel.Close arguments, while CLOSING.
    close_args: tuple[int, str, int, int] = (0, "", 0, 0)
    #: Whether ChannelClosed was emitted (simultaneous close: broker's Close
    #: came while we were CLOSING, Close-Ok still to come).
    close_reported: bool = False


def _negotiate(ours: int, theirs: int) -> int:
    """Take the lower non-zero value; 0 only if both are 0."""
    if ours and theirs:
        return min(ours, theirs)
    return ours or theirs


# --------------------------------------------------------------------------
# Field tables and properties


def _to_field_value(value: object) -> pamqp_common.FieldValue:
    if value is None or isinstance(
        value, bool | int | float | str | decimal.Decimal | datetime.datetime
    ):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        # pamqp encodes bytearray as a byte array ('x') and refuses bytes.
        return bytearray(value)
    if isinstance(value, Mapping):
        return _to_field_table(value)
    if isinstance(value, list | tuple):
        return [_to_field_value(item) for item in value]
    raise InvalidRequest(
        f"cannot put a {type(value).__name__} in an AMQP field table: {value!r}"
    )


def _to_field_table(table: Mapping[str, Any]) -> pamqp_common.FieldTable:
    result: pamqp_common.FieldTable = {}
    for key, value in table.items():
        if not isinstance(key, str):
            raise InvalidRequest(f"field table keys must be str, not {key!r}")
        if len(key.encode("utf-8")) > 255:
            raise InvalidRequest(f"field table key longer than 255 bytes: {key!r}")
        result[key] = _to_field_value(value)
    return result


def _from_field_value(value: Any) -> Any:
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {key: _from_field_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_field_value(item) for item in value]
    return value


def _from_field_table(table: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _from_field_value(value) for key, value in table.items()}


def properties_to_pamqp(properties: Properties) -> commands.Basic.Properties:
    """Convert :class:`~trioevents.Properties` to pamqp's ``Basic.Properties``.

    Header values may be ``None``, ``bool``, ``int``, ``float``, ``str``,
    :class:`~decimal.Decimal`, :class:`~datetime.datetime`, bytes-like
    (sent as an AMQP byte array), mappings and lists / tuples of these.

    pamqp's encoding has a few quirks worth knowing:

    * empty strings are not sent: ``content_type=""`` arrives as ``None``;
    * a naive ``timestamp`` is taken as UTC and sub-second digits are cut;
    * a ``float`` header would travel as a 32-bit float (``'f'``); the publish
      path (``basic_publish``) encodes headers itself and sends 64-bit doubles
      (``'d'``), as py-amqp does;
    * ints take the smallest AMQP integer type that holds them.

    Raises
    ------
    InvalidRequest
        A value cannot be encoded.
    """
    headers = properties.headers
    try:
        return commands.Basic.Properties(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=None if headers is None else _to_field_table(headers),
            delivery_mode=properties.delivery_mode,
            priority=properties.priority,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            expiration=properties.expiration,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
            message_type=properties.type,
            user_id=properties.user_id,
            app_id=properties.app_id,
        )
    except ValueError as exc:
        raise InvalidRequest(f"invalid message properties: {exc}") from exc


def properties_from_pamqp(properties: commands.Basic.Properties) -> Properties:
    """Convert pamqp's ``Basic.Properties`` to :class:`~trioevents.Properties`.

    ``timestamp`` comes back as an aware UTC datetime (pamqp reads values past
    the year 2106 as milliseconds). Byte arrays in headers come back as
    :class:`bytes`, and so do long strings that are not valid UTF-8.
    """
    headers = properties.headers
    result = Properties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=None if headers is None else _from_field_table(headers),
        delivery_mode=properties.delivery_mode,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        expiration=properties.expiration,
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        type=properties.message_type,
        user_id=properties.user_id,
        app_id=properties.app_id,
    )
    return NO_PROPERTIES if result == NO_PROPERTIES else result


def _encode_properties(properties: Properties) -> bytes:
    if properties is NO_PROPERTIES:
        return _NO_PROPERTIES_BYTES
    amqp = properties_to_pamqp(properties)
    headers = amqp.headers
    try:
        if not headers:
            return amqp.marshal()
        # pamqp sends every float as a 32-bit 'f'; py-amqp (kombu, nameko) and
        # RabbitMQ's own x-death use 64-bit 'd'. So the headers table is encoded
        # here and spliced in after content_type and content_encoding.
        amqp.headers = None
        data = amqp.marshal()
        table = _marshal_table(headers)
    except (TypeError, ValueError, struct.error) as exc:
        raise InvalidRequest(f"cannot encode message properties: {exc}") from exc
    (flags,) = _PROPERTY_FLAGS.unpack_from(data)
    offset = _PROPERTY_FLAGS.size
    for value in (amqp.content_type, amqp.content_encoding):
        if value:  # pamqp leaves out None and ""
            offset += 1 + len(value.encode("utf-8"))
    return b"".join(
        (
            _PROPERTY_FLAGS.pack(flags | _HEADERS_FLAG),
            data[_PROPERTY_FLAGS.size : offset],
            table,
            data[offset:],
        )
    )


_PROPERTY_FLAGS: Final = struct.Struct(">H")
#: The property flag of ``headers`` (the third property: bit 13).
_HEADERS_FLAG: Final = 1 << 13
_DOUBLE: Final = struct.Struct(">d")
_LONG: Final = struct.Struct(">I")


def _marshal_value(value: Any) -> bytes:
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    if isinstance(value, dict):
        return b"F" + _marshal_table(value)
    if isinstance(value, list):
        items = b"".join(_marshal_value(item) for item in value)
        return b"A" + _LONG.pack(len(items)) + items
    return pamqp_encode.encode_table_value(value)


def _marshal_table(table: Mapping[str, Any]) -> bytes:
    """Encode a field table as pamqp does, except floats (as doubles, ``'d'``)."""
    items = b"".join(
        pamqp_encode.short_string(key) + _marshal_value(value)
        for key, value in table.items()
    )
    return _LONG.pack(len(items)) + items


_NO_PROPERTIES_BYTES: Final = commands.Basic.Properties().marshal()


# --------------------------------------------------------------------------
# The connection


@final
class Connection:
    """The client side of one AMQP 0-9-1 connection, without I/O.

    The protocol header is queued at construction; everything else follows
    from the broker's frames. The handshake runs by itself: ``Start`` is
    answered with ``Start-Ok`` (PLAIN or EXTERNAL, with our client properties
    and capabilities), ``Tune`` with ``Tune-Ok`` and ``Open``, and
    :class:`~._events.ConnectionOpened` tells when channels may be opened.

    Parameters
    ----------
    username, password
        Credentials for the ``PLAIN`` mechanism.
    virtual_host
        The virtual host to open.
    auth_mechanism
        ``"PLAIN"`` (username and password) or ``"EXTERNAL"`` (the TLS client
        certificate; RabbitMQ's ``rabbitmq_auth_mechanism_ssl``).
    heartbeat
        The heartbeat interval we ask for, in seconds. The lower non-zero value
        of ours and the broker's wins; ``0`` turns heartbeats off whatever the
        broker proposes (py-amqp's rule, so nameko's ``HEARTBEAT: 0`` carries
        over).
    frame_max
        The largest frame we accept, in bytes (at least 4096); the lower of
        ours and the broker's wins.
    channel_max
        The highest channel number we will use; the lower non-zero value of
        ours and the broker's wins (``0`` on both sides means 65535).
    client_properties
        Extra client properties, e.g. ``{"connection_name": "orders"}``. Keys
        override ours, except ``capabilities``, which is merged into ours.
    locale
        The locale to ask for, if the broker offers it.
    clock
        Returns the current time in seconds; :attr:`last_received` and
        :attr:`last_sent` are measured with it (pass ``trio.current_time``).

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
    ) -> None:
        if auth_mechanism not in ("PLAIN", "EXTERNAL"):
            raise InvalidRequest(f"unsupported auth mechanism {auth_mechanism!r}")
        if not 0 <= heartbeat <= 65535:
            raise InvalidRequest(f"heartbeat must be 0..65535, not {heartbeat}")
        if not FRAME_MIN_SIZE <= frame_max <= 0xFFFFFFFF:
            raise InvalidRequest(f"frame_max must be 4096..2**32-1, not {frame_max}")
        if not 0 <= channel_max <= 65535:
            raise InvalidRequest(f"channel_max must be 0..65535, not {channel_max}")
        if len(virtual_host.encode("utf-8")) > 127:
            raise InvalidRequest("virtual_host is longer than 127 bytes")
        capabilities = dict(CLIENT_CAPABILITIES)
        props: dict[str, Any] = {
            "product": "trioevents",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "information": "https://pypi.org/project/trioevents/",
        }
        for key, value in (client_properties or {}).items():
            if key == "capabilities":
                capabilities.update(value)
            else:
                props[key] = value
        props["capabilities"] = capabilities
        self._client_properties = _to_field_table(props)
        self._username = username
        self._password = password
        self._virtual_host = virtual_host
        self._auth_mechanism = auth_mechanism
        self._locale = locale
        self._clock = clock

        self._heartbeat_wanted = heartbeat
        self._frame_max_wanted = frame_max
        self._channel_max_wanted = channel_max
        self._heartbeat = heartbeat
        self._frame_max = frame_max
        self._channel_max = channel_max or 65535

        self._state = ConnectionState.AWAIT_START
        self._error: BaseException | None = None
        self._server_properties: dict[str, Any] = {}
        self._blocked: str | None = None
        self._close_args: tuple[int, str, int, int] = (0, "", 0, 0)
        self._channels: dict[int, _Channel] = {}
        #: Encoded Basic.Publish frames: a service publishes to few places.
        self._publish_frames: dict[tuple[int, str, str, bool, bool], bytes] = {}

        self._inbuf = bytearray()
        self._inpos = 0
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
        self._queue(_HEARTBEAT_FRAME)

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
        self._inbuf += data
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
        try:
            while True:
                frame = self._read_frame()
                if frame is None:
                    if self._eof:
                        incomplete = len(self._inbuf) > self._inpos
                        if incomplete and self._state is not ConnectionState.CLOSED:
                            raise _Violation(
                                501, "end of stream in the middle of a frame"
                            )
                        return EOFReceived()
                    return NEED_DATA
                event = self._handle_frame(*frame)
                if event is not None:
                    return event
        except _Violation as exc:
            error = RemoteProtocolError(
                f"{exc.code} {_REPLY_NAMES.get(exc.code, '')} - {exc.text}"
            )
            self._fail(error, exc.code, exc.text)
            raise error from None
        except BrokerUnavailable as exc:
            self._fail(exc, None, "")
            raise

    def _fail(self, error: BaseException, code: int | None, text: str) -> None:
        if code is not None and self._state in (
            ConnectionState.AWAIT_OPEN_OK,
            ConnectionState.OPEN,
        ):
            reply_text = f"{_REPLY_NAMES.get(code, '')} - {text}"
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

    # ------------------------------------------------------------------
    # Reading frames

    def _read_frame(self) -> tuple[int, int, bytes] | None:
        """Cut the next whole frame out of the input buffer.

        Returns ``(type, channel, data)``: for body frames *data* is the
        payload, for other frames the whole frame (what pamqp unmarshals).
        """
        buf = self._inbuf
        pos = self._inpos
        available = len(buf) - pos
        if available < 7:
            return None
        if buf[pos] == 0x41 and self._state is ConnectionState.AWAIT_START:  # "A"
            if available < 8:
                return None
            offered = bytes(buf[pos : pos + 8])
            raise BrokerUnavailable(
                f"the broker does not speak AMQP 0-9-1; it offers {offered!r}"
            )
        frame_type, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
        if size + FRAME_OVERHEAD > self._frame_max:
            raise _Violation(
                501,
                f"frame of {size + FRAME_OVERHEAD} bytes > frame_max {self._frame_max}",
            )
        end = pos + size + FRAME_OVERHEAD
        if len(buf) < end:
            return None
        if buf[end - 1] != _FRAME_END:
            raise _Violation(501, f"bad frame end octet {buf[end - 1]:#04x}")
        if frame_type == _FRAME_BODY:
            data = bytes(buf[pos + 7 : end - 1])
        else:
            data = bytes(buf[pos:end])
        if end == len(buf):
            buf.clear()
            self._inpos = 0
        elif end > _COMPACT_AFTER:
            del buf[:end]
            self._inpos = 0
        else:
            self._inpos = end
        return frame_type, channel, data

    def _handle_frame(self, frame_type: int, channel: int, data: bytes) -> Event | None:
        if frame_type == _FRAME_HEARTBEAT:
            if channel != 0:
                raise _Violation(501, f"heartbeat frame on channel {channel}")
            return HeartbeatReceived()
        state = self._state
        if state is ConnectionState.CLOSED:
            return None  # the close handshake is over; ignore stragglers
        if frame_type == _FRAME_BODY:
            return self._on_body(channel, data)
        if frame_type not in (_FRAME_METHOD, _FRAME_HEADER_TYPE):
            raise _Violation(501, f"unknown frame type {frame_type}")
        try:
            _, _, value = pamqp_frame.unmarshal(data)
        except (
            pamqp_exceptions.UnmarshalingException,
            ValueError,
            struct.error,
            IndexError,
            KeyError,
            TypeError,
        ) as exc:
            raise _Violation(502, f"cannot decode frame: {exc}") from None
        if isinstance(value, pamqp_header.ContentHeader):
            return self._on_header(channel, value)
        if not isinstance(value, pamqp_base.Frame):  # pragma: no cover - by type
            raise _Violation(501, f"unexpected {type(value).__name__}")
        if channel == 0:
            return self._on_connection_method(value)
        if state is not ConnectionState.OPEN:
            if state is ConnectionState.CLOSING:
                return None  # discard everything but Close / Close-Ok
            raise _Violation(504, f"{value.name} on channel {channel} before open")
        return self._on_channel_method(channel, value)

    # ------------------------------------------------------------------
    # Channel 0

    def _on_connection_method(self, method: pamqp_base.Frame) -> Event | None:
        state = self._state
        if isinstance(method, commands.Connection.Close):
            return self._on_connection_close(method)
        if state is ConnectionState.CLOSING:
            if isinstance(method, commands.Connection.CloseOk):
                self._state = ConnectionState.CLOSED
                self._channels.clear()
                code, text, class_id, method_id = self._close_args
                return ConnectionClosed(
                    code, text, class_id, method_id, by_broker=False
                )
            return None  # discard everything but Close / Close-Ok
        if isinstance(method, commands.Connection.Start):
            if state is ConnectionState.AWAIT_START:
                self._on_start(method)
                return None
        elif isinstance(method, commands.Connection.Tune):
            if state is ConnectionState.AWAIT_TUNE:
                return self._on_tune(method)
        elif isinstance(method, commands.Connection.OpenOk):
            if state is ConnectionState.AWAIT_OPEN_OK:
                self._state = ConnectionState.OPEN
                return ConnectionOpened(
                    self._server_properties,
                    self._channel_max,
                    self._frame_max,
                    self._heartbeat,
                )
        elif isinstance(method, commands.Connection.Blocked):
            if state in (ConnectionState.AWAIT_OPEN_OK, ConnectionState.OPEN):
                self._blocked = method.reason or ""
                return ConnectionBlocked(self._blocked)
        elif isinstance(method, commands.Connection.Unblocked):
            if state in (ConnectionState.AWAIT_OPEN_OK, ConnectionState.OPEN):
                self._blocked = None
                return ConnectionUnblocked()
        elif isinstance(method, commands.Connection.Secure):
            raise _Violation(
                503, f"Connection.Secure is not used by {self._auth_mechanism}"
            )
        raise _Violation(505, f"unexpected {method.name} on channel 0 ({state.value})")

    def _on_start(self, method: commands.Connection.Start) -> None:
        if (method.version_major, method.version_minor) != (0, 9):
            raise BrokerUnavailable(
                f"the broker speaks AMQP {method.version_major}-{method.version_minor}, "
                "not 0-9-1"
            )
        mechanisms = _words(method.mechanisms)
        if self._auth_mechanism not in mechanisms:
            raise BrokerUnavailable(
                f"the broker offers the SASL mechanisms {mechanisms}, "
                f"not {self._auth_mechanism}"
            )
        locales = _words(method.locales)
        locale = self._locale if self._locale in locales or not locales else locales[0]
        response = (
            f"\0{self._username}\0{self._password}"
            if self._auth_mechanism == "PLAIN"
            else ""
        )
        self._server_properties = _from_field_table(method.server_properties or {})
        start_ok = commands.Connection.StartOk(
            client_properties=self._client_properties,
            mechanism=self._auth_mechanism,
            response=response,
            locale=locale,
        )
        self._queue(pamqp_frame.marshal(start_ok, 0))
        self._state = ConnectionState.AWAIT_TUNE

    def _on_tune(self, method: commands.Connection.Tune) -> ConnectionTuned:
        frame_max = _negotiate(self._frame_max_wanted, method.frame_max)
        if frame_max < FRAME_MIN_SIZE:
            raise _Violation(
                501,
                f"frame_max {method.frame_max} is below the minimum {FRAME_MIN_SIZE}",
            )
        self._frame_max = frame_max
        self._channel_max = (
            _negotiate(self._channel_max_wanted, method.channel_max) or 65535
        )
        # 0 from us turns heartbeats off whatever the broker proposes (py-amqp's
        # and so nameko's rule for HEARTBEAT=0); otherwise the lower non-zero wins.
        self._heartbeat = (
            _negotiate(self._heartbeat_wanted, method.heartbeat)
            if self._heartbeat_wanted
            else 0
        )
        tune_ok = commands.Connection.TuneOk(
            channel_max=self._channel_max,
            frame_max=self._frame_max,
            heartbeat=self._heartbeat,
        )
        self._queue(pamqp_frame.marshal(tune_ok, 0))
        self._queue(
            pamqp_frame.marshal(commands.Connection.Open(self._virtual_host), 0)
        )
        self._state = ConnectionState.AWAIT_OPEN_OK
        return ConnectionTuned(self._channel_max, self._frame_max, self._heartbeat)

    def _on_connection_close(
        self, method: commands.Connection.Close
    ) -> ConnectionClosed:
        # Also while CLOSING: both sides closed at once; the broker then waits
        # for our Close-Ok and ignores our Close.
        self._queue(pamqp_frame.marshal(commands.Connection.CloseOk(), 0))
        self._state = ConnectionState.CLOSED
        self._channels.clear()
        return ConnectionClosed(
            method.reply_code or 0,
            method.reply_text or "",
            method.class_id or 0,
            method.method_id or 0,
            by_broker=True,
        )

    # ------------------------------------------------------------------
    # Channels

    def _on_channel_method(
        self, channel: int, method: pamqp_base.Frame
    ) -> Event | None:
        ch = self._channels.get(channel)
        if ch is None:
            raise _Violation(
                504, f"{method.name} on channel {channel}, which is not open"
            )
        if ch.content is not None:
            raise _Violation(
                505, f"{method.name} on channel {channel} in the middle of a message"
            )
        if ch.state is ChannelState.CLOSING:
            return self._on_closing_channel_method(ch, method)
        if isinstance(method, commands.Basic.Deliver):
            consumer_tag = method.consumer_tag or ""
            ch.content = _Content(method, consumer_tag in ch.no_ack_consumers)
            return None
        if isinstance(method, commands.Basic.Ack | commands.Basic.Nack):
            return self._on_confirm(ch, method)
        pending = ch.pending
        if pending and isinstance(method, pending[0].replies):
            return self._on_reply(ch, pending.popleft(), method)
        if isinstance(method, commands.Basic.Return):
            ch.content = _Content(method, no_ack=True)
            return None
        if isinstance(method, commands.Channel.Close):
            return self._on_channel_close(ch, method)
        if isinstance(method, commands.Basic.Cancel):
            consumer_tag = method.consumer_tag or ""
            ch.no_ack_consumers.discard(consumer_tag)
            if not method.nowait:
                self._queue(
                    pamqp_frame.marshal(commands.Basic.CancelOk(consumer_tag), channel)
                )
            return ConsumerCancelledByBroker(channel, consumer_tag)
        if isinstance(method, commands.Channel.Flow):
            active = bool(method.active)
            ch.flow_active = active
            self._queue(pamqp_frame.marshal(commands.Channel.FlowOk(active), channel))
            return ChannelFlow(channel, active)
        expected = (
            " or ".join(r.name for r in pending[0].replies) if pending else "nothing"
        )
        raise _Violation(
            505, f"unexpected {method.name} on channel {channel} (expected {expected})"
        )

    def _on_closing_channel_method(
        self, ch: _Channel, method: pamqp_base.Frame
    ) -> Event | None:
        if isinstance(method, commands.Channel.CloseOk):
            del self._channels[ch.number]
            if ch.close_reported:
                return None
            code, text, class_id, method_id = ch.close_args
            return ChannelClosed(
                ch.number, code, text, class_id, method_id, by_broker=False
            )
        if isinstance(method, commands.Channel.Close):
            # Both sides closed at once: answer, report the broker's reason,
            # and keep the number until our Close is answered too.
            self._queue(pamqp_frame.marshal(commands.Channel.CloseOk(), ch.number))
            if ch.close_reported:
                return None
            ch.close_reported = True
            return _channel_closed_by_broker(ch.number, method)
        if isinstance(method, commands.Basic.Ack | commands.Basic.Nack):
            # Confirms that made it before the close are still good news.
            return self._on_confirm(ch, method)
        if isinstance(method, commands.Basic.Deliver | commands.Basic.Return):
            ch.content = _Content(method, no_ack=True)  # swallow its content
        return None

    def _on_channel_close(
        self, ch: _Channel, method: commands.Channel.Close
    ) -> ChannelClosed:
        self._queue(pamqp_frame.marshal(commands.Channel.CloseOk(), ch.number))
        del self._channels[ch.number]
        return _channel_closed_by_broker(ch.number, method)

    def _on_reply(
        self, ch: _Channel, pending: _Pending, method: pamqp_base.Frame
    ) -> Event | None:
        channel = ch.number
        if isinstance(method, commands.Channel.OpenOk):
            ch.state = ChannelState.OPEN
            return ChannelOpened(channel)
        if isinstance(method, commands.Queue.DeclareOk):
            return QueueDeclareOk(
                channel,
                method.queue or "",
                method.message_count or 0,
                method.consumer_count or 0,
            )
        if isinstance(method, commands.Basic.ConsumeOk):
            consumer_tag = method.consumer_tag or ""
            if pending.no_ack:
                ch.no_ack_consumers.add(consumer_tag)
            return BasicConsumeOk(channel, consumer_tag)
        if isinstance(method, commands.Basic.CancelOk):
            consumer_tag = method.consumer_tag or ""
            ch.no_ack_consumers.discard(consumer_tag)
            return BasicCancelOk(channel, consumer_tag)
        if isinstance(method, commands.Queue.PurgeOk):
            return QueuePurgeOk(channel, method.message_count or 0)
        if isinstance(method, commands.Queue.DeleteOk):
            return QueueDeleteOk(channel, method.message_count or 0)
        return _SIMPLE_REPLIES[type(method)](channel)

    def _on_confirm(
        self, ch: _Channel, method: commands.Basic.Ack | commands.Basic.Nack
    ) -> Event | None:
        if ch.confirms is None:
            raise _Violation(
                505,
                f"{method.name} on channel {ch.number}, which is not in confirm mode",
            )
        tag = method.delivery_tag or 0
        tags = ch.confirms.settle(tag, bool(method.multiple))
        if tags is None:
            raise _Violation(
                505,
                f"{method.name} for unknown publish tag {tag} on channel {ch.number}",
            )
        if not tags:
            return None
        if isinstance(method, commands.Basic.Ack):
            return Confirmed(ch.number, tags)
        return Nacked(ch.number, tags)

    # ------------------------------------------------------------------
    # Content

    def _content_channel(self, channel: int, what: str) -> _Channel | None:
        ch = self._channels.get(channel)
        if ch is None:
            if self._state is ConnectionState.CLOSING:
                return None
            raise _Violation(504, f"{what} on channel {channel}, which is not open")
        return ch

    def _on_header(
        self, channel: int, value: pamqp_header.ContentHeader
    ) -> Event | None:
        if channel == 0:
            raise _Violation(504, "content header on channel 0")
        ch = self._content_channel(channel, "content header")
        if ch is None:
            return None
        content = ch.content
        if content is None:
            if ch.state is ChannelState.CLOSING:
                return None
            raise _Violation(
                505, f"content header on channel {channel} without a method"
            )
        if content.properties is not None:
            raise _Violation(505, f"second content header on channel {channel}")
        class_id: object = value.class_id  # pamqp declares it None
        if class_id != _BASIC_CLASS_ID:
            raise _Violation(505, f"content header of class {class_id}")
        content.properties = properties_from_pamqp(value.properties)
        content.body_size = value.body_size
        if value.body_size == 0:
            return self._content_done(ch, content, b"")
        return None

    def _on_body(self, channel: int, data: bytes) -> Event | None:
        if channel == 0:
            raise _Violation(504, "content body on channel 0")
        ch = self._content_channel(channel, "content body")
        if ch is None:
            return None
        content = ch.content
        if content is None or content.properties is None:
            if ch.state is ChannelState.CLOSING and content is None:
                return None
            raise _Violation(505, f"content body on channel {channel} without a header")
        content.received += len(data)
        if content.received > content.body_size:
            raise _Violation(
                501,
                f"content body on channel {channel} longer than the announced "
                f"{content.body_size} bytes",
            )
        if content.received < content.body_size:
            content.chunks.append(data)
            return None
        if content.chunks:
            content.chunks.append(data)
            data = b"".join(content.chunks)
        return self._content_done(ch, content, data)

    def _content_done(
        self, ch: _Channel, content: _Content, body: bytes
    ) -> Event | None:
        ch.content = None
        if ch.state is ChannelState.CLOSING:
            return None
        method = content.method
        properties = content.properties
        assert properties is not None
        channel = ch.number
        if isinstance(method, commands.Basic.Deliver):
            delivery_tag = method.delivery_tag or 0
            if not content.no_ack:
                ch.unacked.add(delivery_tag)
            return Delivered(
                channel,
                method.consumer_tag or "",
                delivery_tag,
                bool(method.redelivered),
                method.exchange or "",
                method.routing_key or "",
                properties,
                body,
            )
        return Returned(
            channel,
            method.reply_code or 0,
            method.reply_text or "",
            method.exchange or "",
            method.routing_key or "",
            properties,
            body,
        )

    # ------------------------------------------------------------------
    # Requests: helpers

    def _check_open(self) -> None:
        if self._state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"the connection is {self._state.value}, not open")

    def _usable_channel(self, channel: int) -> _Channel:
        self._check_open()
        ch = self._channels.get(channel)
        if ch is None:
            raise LocalProtocolError(f"channel {channel} is not open")
        if ch.state is ChannelState.CLOSING:
            raise LocalProtocolError(f"channel {channel} is closing")
        return ch

    def _encode(
        self, channel: int, factory: Callable[..., pamqp_base.Frame], **kwargs: Any
    ) -> bytes:
        try:
            method = _LENIENT.get(factory, factory)(**kwargs)
            data = pamqp_frame.marshal(method, channel)
        except (TypeError, ValueError, struct.error) as exc:
            raise InvalidRequest(
                f"cannot encode {factory.__qualname__}: {exc}"
            ) from exc
        if len(data) > self._frame_max:
            raise LocalProtocolError(
                f"{method.name} needs a frame of {len(data)} bytes "
                f"> frame_max {self._frame_max}"
            )
        return data

    def _request(
        self,
        channel: int,
        factory: Callable[..., pamqp_base.Frame],
        reply: type[pamqp_base.Frame] | None,
        *,
        reply_no_ack: bool = False,
        **kwargs: Any,
    ) -> None:
        ch = self._usable_channel(channel)
        data = self._encode(channel, factory, **kwargs)
        self._queue(data)
        if reply is not None:
            ch.pending.append(_Pending((reply,), reply_no_ack))

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
        if self._state not in (ConnectionState.AWAIT_OPEN_OK, ConnectionState.OPEN):
            raise LocalProtocolError(
                f"cannot close a connection that is {self._state.value}"
            )
        data = self._encode(
            0,
            commands.Connection.Close,
            reply_code=reply_code,
            reply_text=reply_text,
            class_id=class_id,
            method_id=method_id,
        )
        self._queue(data)
        self._close_args = (reply_code, reply_text, class_id, method_id)
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
        self._check_open()
        channels = self._channels
        for number in range(1, self._channel_max + 1):
            if number not in channels:
                break
        else:
            raise LocalProtocolError(f"all {self._channel_max} channels are in use")
        self._queue(pamqp_frame.marshal(commands.Channel.Open(), number))
        ch = _Channel(number)
        ch.pending.append(_Pending((commands.Channel.OpenOk,)))
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
        data = self._encode(
            channel,
            commands.Channel.Close,
            reply_code=reply_code,
            reply_text=reply_text,
            class_id=class_id,
            method_id=method_id,
        )
        self._queue(data)
        ch.state = ChannelState.CLOSING
        ch.close_args = (reply_code, reply_text, class_id, method_id)
        ch.pending.clear()
        ch.content = None

    def confirm_select(self, channel: int, *, nowait: bool = False) -> None:
        """Put *channel* in confirm mode (``Confirm.Select``).

        From this request on, every :meth:`basic_publish` on the channel gets
        a tag (1, 2, ...) and is confirmed by a :class:`~._events.Confirmed` or
        :class:`~._events.Nacked`. Answered by :class:`~._events.ConfirmSelectOk`
        unless *nowait*.
        """
        ch = self._usable_channel(channel)
        self._request(
            channel,
            commands.Confirm.Select,
            None if nowait else commands.Confirm.SelectOk,
            nowait=nowait,
        )
        if ch.confirms is None:
            ch.confirms = _ConfirmTracker()

    # ------------------------------------------------------------------
    # Requests: exchanges and queues

    def exchange_declare(
        self,
        channel: int,
        exchange: str,
        exchange_type: str | ExchangeType = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare an exchange. Answered by :class:`~._events.ExchangeDeclareOk` unless *nowait*."""
        if isinstance(exchange_type, ExchangeType):
            exchange_type = exchange_type.value
        self._request(
            channel,
            commands.Exchange.Declare,
            None if nowait else commands.Exchange.DeclareOk,
            exchange=exchange,
            exchange_type=exchange_type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            nowait=nowait,
            arguments=_arguments(arguments),
        )

    def exchange_delete(
        self,
        channel: int,
        exchange: str,
        *,
        if_unused: bool = False,
        nowait: bool = False,
    ) -> None:
        """Delete an exchange. Answered by :class:`~._events.ExchangeDeleteOk` unless *nowait*."""
        self._request(
            channel,
            commands.Exchange.Delete,
            None if nowait else commands.Exchange.DeleteOk,
            exchange=exchange,
            if_unused=if_unused,
            nowait=nowait,
        )

    def queue_declare(
        self,
        channel: int,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare a queue; ``""`` lets the broker name it.

        Answered by :class:`~._events.QueueDeclareOk` (with the name) unless
        *nowait*.

        Raises
        ------
        InvalidRequest
            *nowait* for a server-named queue: its name would never be known.
        """
        if nowait and not queue:
            raise InvalidRequest("a server-named queue cannot be declared with nowait")
        self._request(
            channel,
            commands.Queue.Declare,
            None if nowait else commands.Queue.DeclareOk,
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            nowait=nowait,
            arguments=_arguments(arguments),
        )

    def queue_bind(
        self,
        channel: int,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Bind *queue* to *exchange*. Answered by :class:`~._events.QueueBindOk` unless *nowait*."""
        self._request(
            channel,
            commands.Queue.Bind,
            None if nowait else commands.Queue.BindOk,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            nowait=nowait,
            arguments=_arguments(arguments),
        )

    def queue_unbind(
        self,
        channel: int,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Unbind *queue* from *exchange*. Answered by :class:`~._events.QueueUnbindOk`."""
        self._request(
            channel,
            commands.Queue.Unbind,
            commands.Queue.UnbindOk,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=_arguments(arguments),
        )

    def queue_purge(self, channel: int, queue: str, *, nowait: bool = False) -> None:
        """Purge *queue*. Answered by :class:`~._events.QueuePurgeOk` unless *nowait*."""
        self._request(
            channel,
            commands.Queue.Purge,
            None if nowait else commands.Queue.PurgeOk,
            queue=queue,
            nowait=nowait,
        )

    def queue_delete(
        self,
        channel: int,
        queue: str,
        *,
        if_unused: bool = False,
        if_empty: bool = False,
        nowait: bool = False,
    ) -> None:
        """Delete *queue*. Answered by :class:`~._events.QueueDeleteOk` unless *nowait*."""
        self._request(
            channel,
            commands.Queue.Delete,
            None if nowait else commands.Queue.DeleteOk,
            queue=queue,
            if_unused=if_unused,
            if_empty=if_empty,
            nowait=nowait,
        )

    # ------------------------------------------------------------------
    # Requests: basic

    def basic_qos(
        self,
        channel: int,
        *,
        prefetch_count: int = 0,
        prefetch_size: int = 0,
        global_: bool = False,
    ) -> None:
        """Limit unacked deliveries. Answered by :class:`~._events.BasicQosOk`."""
        self._request(
            channel,
            commands.Basic.Qos,
            commands.Basic.QosOk,
            prefetch_count=prefetch_count,
            prefetch_size=prefetch_size,
            global_=global_,
        )

    def basic_consume(
        self,
        channel: int,
        queue: str,
        consumer_tag: str = "",
        *,
        no_local: bool = False,
        no_ack: bool = False,
        exclusive: bool = False,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Start a consumer on *queue*; ``""`` lets the broker pick the tag.

        Answered by :class:`~._events.BasicConsumeOk` unless *nowait*; then
        :class:`~._events.Delivered` events follow.

        Raises
        ------
        InvalidRequest
            *nowait* without a *consumer_tag*: the tag would never be known.
        """
        if nowait and not consumer_tag:
            raise InvalidRequest("a consumer started with nowait needs a consumer_tag")
        ch = self._usable_channel(channel)
        self._request(
            channel,
            commands.Basic.Consume,
            None if nowait else commands.Basic.ConsumeOk,
            reply_no_ack=no_ack,
            queue=queue,
            no_ack=no_ack,
            consumer_tag=consumer_tag,
            no_local=no_local,
            exclusive=exclusive,
            nowait=nowait,
            arguments=_arguments(arguments),
        )
        if nowait and no_ack:
            ch.no_ack_consumers.add(consumer_tag)

    def basic_cancel(
        self, channel: int, consumer_tag: str, *, nowait: bool = False
    ) -> None:
        """Cancel a consumer. Answered by :class:`~._events.BasicCancelOk` unless *nowait*.

        Deliveries already on their way may still arrive before the answer.
        """
        ch = self._usable_channel(channel)
        self._request(
            channel,
            commands.Basic.Cancel,
            None if nowait else commands.Basic.CancelOk,
            consumer_tag=consumer_tag,
            nowait=nowait,
        )
        if nowait:
            ch.no_ack_consumers.discard(consumer_tag)

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
            method = self._encode(
                channel,
                commands.Basic.Publish,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=mandatory,
                immediate=immediate,
            )
            if len(self._publish_frames) >= _PUBLISH_CACHE_SIZE:
                self._publish_frames.clear()
            self._publish_frames[key] = method
        size = len(view)
        header_payload = struct.pack(
            ">HHQ", _BASIC_CLASS_ID, 0, size
        ) + _encode_properties(properties)
        if len(header_payload) + FRAME_OVERHEAD > self._frame_max:
            raise LocalProtocolError(
                f"the message properties need a frame of "
                f"{len(header_payload) + FRAME_OVERHEAD} bytes > frame_max {self._frame_max}"
            )
        pack = _FRAME_HEADER.pack
        parts: list[bytes | memoryview] = [
            method,
            pack(_FRAME_HEADER_TYPE, channel, len(header_payload)),
            header_payload,
            _FRAME_END_BYTES,
        ]
        step = self._frame_max - FRAME_OVERHEAD
        for offset in range(0, size, step):
            chunk = view[offset : offset + step]
            parts.append(pack(_FRAME_BODY, channel, len(chunk)))
            parts.append(chunk)
            parts.append(_FRAME_END_BYTES)
        self._out.extend(parts)
        self._out_len += len(method) + len(header_payload) + FRAME_OVERHEAD
        self._out_len += size + FRAME_OVERHEAD * -(-size // step)
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
        tags = _settle_deliveries(ch, delivery_tag, multiple)
        self._queue(
            self._encode(
                channel,
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
        tags = _settle_deliveries(ch, delivery_tag, multiple)
        self._queue(
            self._encode(
                channel,
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
        tags = _settle_deliveries(ch, delivery_tag, False)
        self._queue(
            self._encode(
                channel,
                commands.Basic.Reject,
                delivery_tag=delivery_tag,
                requeue=requeue,
            )
        )
        ch.unacked.difference_update(tags)


def _skip_validation(self: pamqp_base.Frame) -> None:
    """Accept any name; the short-string encoding still refuses over 255 bytes."""


def _lenient(cls: type[pamqp_base.Frame]) -> type[pamqp_base.Frame]:
    """Return a subclass of *cls* without pamqp's name checks.

    pamqp enforces the AMQP grammar for names (at most 127 characters for an
    exchange, only ``[a-zA-Z0-9-_.:@#,/+ ]``), on construction and again in
    ``marshal()``. RabbitMQ takes any UTF-8 name of up to 255 bytes, and so do
    trioevents and nameko (e.g. a queue named after a wildcard binding key,
    ``evt-src-order.*--svc.method``). The subclass leaves ``__slots__`` alone:
    pamqp encodes the attributes it lists.
    """
    namespace = {
        "validate": _skip_validation,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
    }
    return type(cls.__name__, (cls,), namespace)


#: Requests that carry exchange or queue names, built without pamqp's checks.
_LENIENT: Final[dict[Callable[..., pamqp_base.Frame], type[pamqp_base.Frame]]] = {
    cls: _lenient(cls)
    for cls in (
        commands.Exchange.Declare,
        commands.Exchange.Delete,
        commands.Queue.Declare,
        commands.Queue.Bind,
        commands.Queue.Purge,
        commands.Queue.Delete,
        commands.Queue.Unbind,
        commands.Basic.Consume,
        commands.Basic.Publish,
    )
}


def _settle_deliveries(ch: _Channel, delivery_tag: int, multiple: bool) -> list[int]:
    unacked = ch.unacked
    if multiple and delivery_tag == 0:
        return list(unacked)
    if delivery_tag not in unacked:
        raise LocalProtocolError(
            f"delivery tag {delivery_tag} is not an unacked delivery on channel {ch.number}"
        )
    if multiple:
        return [tag for tag in unacked if tag <= delivery_tag]
    return [delivery_tag]


def _arguments(arguments: Mapping[str, Any] | None) -> pamqp_common.FieldTable | None:
    return None if arguments is None else _to_field_table(arguments)


def _words(value: str | bytes) -> list[str]:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.split()


def _channel_closed_by_broker(
    channel: int, method: commands.Channel.Close
) -> ChannelClosed:
    return ChannelClosed(
        channel,
        method.reply_code or 0,
        method.reply_text or "",
        method.class_id or 0,
        method.method_id or 0,
        by_broker=True,
    )


_SIMPLE_REPLIES: Final[dict[type[pamqp_base.Frame], Callable[[int], Reply]]] = {
    commands.Exchange.DeclareOk: ExchangeDeclareOk,
    commands.Exchange.DeleteOk: ExchangeDeleteOk,
    commands.Queue.BindOk: QueueBindOk,
    commands.Queue.UnbindOk: QueueUnbindOk,
    commands.Basic.QosOk: BasicQosOk,
    commands.Confirm.SelectOk: ConfirmSelectOk,
}
