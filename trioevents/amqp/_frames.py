"""AMQP 0-9-1 frames: cutting them out of the received bytes, encoding methods.

Every frame is a 7-byte header (type, channel, payload size), the payload and
the frame-end octet ``0xCE`` (AMQP 0-9-1, 2.3.5). A message travels as a method
frame (``Basic.Publish``, ``Basic.Deliver``, ...), a content header frame (its
size and properties) and as many body frames as ``frame_max`` requires.

This module knows bytes, not states: :class:`ReceiveBuffer` finds whole frames
in what was received, :func:`encode_method` frames one method we send and
:func:`frame_message` a whole message.
Decoding a frame's payload is pamqp's work; :data:`DECODE_ERRORS` lists what
pamqp raises for a payload it cannot read.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Final, final

from pamqp import (
    commands,
    exceptions as pamqp_exceptions,
    frame as pamqp_frame,
    header as pamqp_header,
    heartbeat as pamqp_heartbeat,
)

from .._exceptions import BrokerUnavailable, InvalidRequest, LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pamqp import base as pamqp_base

__all__ = [
    "BASIC_CLASS_ID",
    "CONTENT_HEADER",
    "DECODE_ERRORS",
    "FRAME_BODY",
    "FRAME_CONTENT_HEADER",
    "FRAME_END",
    "FRAME_END_BYTES",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "FRAME_MIN_SIZE",
    "FRAME_OVERHEAD",
    "HEARTBEAT_FRAME",
    "PROTOCOL_HEADER",
    "REPLY_NAMES",
    "ReceiveBuffer",
    "Violation",
    "encode_method",
    "frame_message",
]

#: The AMQP 0-9-1 protocol header, the first bytes a client sends.
PROTOCOL_HEADER: Final = pamqp_header.ProtocolHeader().marshal()
#: The smallest ``frame_max`` a peer may ask for (AMQP 0-9-1, 4.2.1).
FRAME_MIN_SIZE: Final = 4096
#: Frame header (type, channel, size) plus the frame-end octet.
FRAME_OVERHEAD: Final = 8

#: Frame header: type, channel, payload size.
FRAME_HEADER: Final = struct.Struct(">BHI")
FRAME_METHOD: Final = 1
FRAME_CONTENT_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_END_BYTES: Final = b"\xce"
#: A whole heartbeat frame (channel 0, empty payload).
HEARTBEAT_FRAME: Final = pamqp_heartbeat.Heartbeat.marshal()
#: The content class of ``Basic`` messages, the only content AMQP 0-9-1 has.
BASIC_CLASS_ID: Final = 60
#: The start of a content header payload: class, weight (0), body size.
CONTENT_HEADER: Final = struct.Struct(">HHQ")

#: What pamqp raises for a frame payload it cannot decode.
DECODE_ERRORS: Final = (
    pamqp_exceptions.UnmarshalingException,
    ValueError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
)

#: The AMQP reply codes of the broker's protocol violations.
REPLY_NAMES: Final = {
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
}

#: Reclaim the consumed front of the receive buffer once it is this long.
_COMPACT_AFTER: Final = 65536


class Violation(Exception):
    """The broker broke AMQP; the connection turns it into a RemoteProtocolError.

    Parameters
    ----------
    code
        The AMQP reply code (one of :data:`REPLY_NAMES`) to close the
        connection with.
    text
        What was wrong.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


@final
class ReceiveBuffer:
    """The bytes received and not yet parsed, cut into whole frames."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the broker."""
        self._buf += data

    @property
    def has_partial_frame(self) -> bool:
        """Whether bytes of a frame not yet whole are buffered."""
        return len(self._buf) > self._pos

    def next_frame(
        self, frame_max: int, awaiting_start: bool
    ) -> tuple[int, int, bytes] | None:
        """Cut the next whole frame out of the buffer; ``None`` if there is none yet.

        Parameters
        ----------
        frame_max
            The largest frame the broker may send.
        awaiting_start
            Whether ``Connection.Start`` is still to come: then a protocol
            header from the broker means it refuses our protocol version.

        Returns
        -------
        tuple[int, int, bytes] | None
            ``(type, channel, data)``: for body frames *data* is the payload,
            for other frames the whole frame (what pamqp unmarshals).

        Raises
        ------
        Violation
            The frame is larger than *frame_max* or lacks its frame-end octet.
        BrokerUnavailable
            The broker answered with its protocol header.
        """
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < 7:
            return None
        if buf[pos] == 0x41 and awaiting_start:  # "A"
            if available < 8:
                return None
            offered = bytes(buf[pos : pos + 8])
            raise BrokerUnavailable(
                f"the broker does not speak AMQP 0-9-1; it offers {offered!r}"
            )
        frame_type, channel, size = FRAME_HEADER.unpack_from(buf, pos)
        if size + FRAME_OVERHEAD > frame_max:
            raise Violation(
                501,
                f"frame of {size + FRAME_OVERHEAD} bytes > frame_max {frame_max}",
            )
        end = pos + size + FRAME_OVERHEAD
        if len(buf) < end:
            return None
        if buf[end - 1] != FRAME_END:
            raise Violation(501, f"bad frame end octet {buf[end - 1]:#04x}")
        if frame_type == FRAME_BODY:
            data = bytes(buf[pos + 7 : end - 1])
        else:
            data = bytes(buf[pos:end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > _COMPACT_AFTER:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return frame_type, channel, data


def encode_method(
    channel: int,
    frame_max: int,
    factory: Callable[..., pamqp_base.Frame],
    /,
    **fields: Any,
) -> bytes:
    """Build the method ``factory(**fields)`` and frame it for *channel*.

    Names (of exchanges, queues, consumers) are sent as they are, without
    pamqp's AMQP grammar checks; see :func:`_lenient`.

    Raises
    ------
    InvalidRequest
        A field cannot be encoded (e.g. a short string over 255 bytes).
    LocalProtocolError
        The frame would be larger than *frame_max*.
    """
    try:
        method = _LENIENT.get(factory, factory)(**fields)
        data = pamqp_frame.marshal(method, channel)
    except (TypeError, ValueError, struct.error) as exc:
        raise InvalidRequest(f"cannot encode {factory.__qualname__}: {exc}") from exc
    if len(data) > frame_max:
        raise LocalProtocolError(
            f"{method.name} needs a frame of {len(data)} bytes > frame_max {frame_max}"
        )
    return data


def frame_message(
    channel: int,
    method: bytes,
    properties: bytes,
    body: memoryview,
    frame_max: int,
) -> tuple[list[bytes | memoryview], int]:
    """Frame a message: its method frame, its content header, its body frames.

    Parameters
    ----------
    channel
        The channel to send it on.
    method
        The framed content method (``Basic.Publish``).
    properties
        The encoded properties (property flags, then the values).
    body
        The body, split into frames of at most ``frame_max - 8`` bytes (the
        parts refer to it: it must not change).
    frame_max
        The largest frame the broker takes.

    Returns
    -------
    tuple[list[bytes | memoryview], int]
        The parts to send in order, and their total size in bytes.

    Raises
    ------
    LocalProtocolError
        The properties need a header frame larger than *frame_max*.
    """
    size = len(body)
    header = CONTENT_HEADER.pack(BASIC_CLASS_ID, 0, size) + properties
    if len(header) + FRAME_OVERHEAD > frame_max:
        raise LocalProtocolError(
            f"the message properties need a frame of "
            f"{len(header) + FRAME_OVERHEAD} bytes > frame_max {frame_max}"
        )
    pack = FRAME_HEADER.pack
    parts: list[bytes | memoryview] = [
        method,
        pack(FRAME_CONTENT_HEADER, channel, len(header)),
        header,
        FRAME_END_BYTES,
    ]
    step = frame_max - FRAME_OVERHEAD
    for offset in range(0, size, step):
        chunk = body[offset : offset + step]
        parts.append(pack(FRAME_BODY, channel, len(chunk)))
        parts.append(chunk)
        parts.append(FRAME_END_BYTES)
    total = len(method) + len(header) + size
    return parts, total + FRAME_OVERHEAD * (1 - (-size // step))


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
