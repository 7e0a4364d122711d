"""Content headers from the wire, decoded leniently: a bad message is not a bad link.

A content header carries a message's class, body size and properties. Its
first twelve bytes frame the message and are read strictly; the properties are
the publisher's business, and anyone who may publish to an exchange can send
properties no Python type holds. So they are read leniently, the way the wire
allows:

* a timestamp (property or header value) is any unsigned 64-bit number: one a
  :class:`~datetime.datetime` cannot hold (e.g. microseconds since 1970, or
  ``2**62``) is kept as the :class:`int` (a property: dropped, since
  :attr:`Properties.timestamp <trioevents.Properties.timestamp>` is a datetime),
  pamqp's reading of values past 2106 as milliseconds kept;
* a short string (``message_id``, ``content_type``, a header's name, ...) that
  is not UTF-8 is decoded with replacement characters and the header is
  reported as a problem: the message is dead-lettered with the reason instead
  of being handled;
* anything else that cannot be read (a table whose lengths do not add up, an
  unknown field type) leaves the properties empty and is reported as a problem.

:func:`decode_content_header` never raises for the properties; only a frame
too short for its fixed part is a protocol error.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any, Final, final

import attrs

from .._message import NO_PROPERTIES, Properties
from ._frames import Violation

__all__ = ["ContentHeader", "decode_content_header"]

_FIXED: Final = struct.Struct(">HHQH")  # class id, weight, body size, flags
_U8: Final = struct.Struct(">B")
_I8: Final = struct.Struct(">b")
_U16: Final = struct.Struct(">H")
_I16: Final = struct.Struct(">h")
_U32: Final = struct.Struct(">I")
_I32: Final = struct.Struct(">i")
_U64: Final = struct.Struct(">Q")
_I64: Final = struct.Struct(">q")
_F32: Final = struct.Struct(">f")
_F64: Final = struct.Struct(">d")
_DECIMAL: Final = struct.Struct(">Bi")
_MAX_DEPTH: Final = 64
#: Seconds past this are read as milliseconds (pamqp's rule: after 2106).
_SECONDS_MAX: Final = 0xFFFFFFFF

#: The basic properties in flag order (bit 15 first) and how each is encoded.
_PROPERTIES: Final = (
    ("content_type", "s"),
    ("content_encoding", "s"),
    ("headers", "F"),
    ("delivery_mode", "o"),
    ("priority", "o"),
    ("correlation_id", "s"),
    ("reply_to", "s"),
    ("expiration", "s"),
    ("message_id", "s"),
    ("timestamp", "T"),
    ("type", "s"),
    ("user_id", "s"),
    ("app_id", "s"),
    ("cluster_id", "s"),  # deprecated in 0-9-1: read, not kept
)


class _Unreadable(Exception):
    """The properties cannot be read at all."""


@final
@attrs.frozen
class ContentHeader:
    """A content header as read (see the module docstring).

    Attributes
    ----------
    class_id
        The content class (60 for basic).
    body_size
        The announced size of the body.
    properties
        The properties as far as they could be read.
    problem
        Why the properties could not be read as sent, or ``None``.
    """

    class_id: int
    body_size: int
    properties: Properties
    problem: str | None = None


def decode_content_header(payload: bytes | memoryview) -> ContentHeader:
    """Read a content header frame's payload.

    Raises
    ------
    Violation
        The payload is shorter than its fixed part (a framing error).
    """
    if len(payload) < _FIXED.size:
        raise Violation(502, f"content header of {len(payload)} bytes")
    class_id, _weight, body_size, flags = _FIXED.unpack_from(payload)
    reader = _Reader(bytes(payload), _FIXED.size)
    try:
        more = flags & 1
        while more:  # further flag words: basic defines none, so they are skipped
            more = reader.unpack(_U16) & 1
        values: dict[str, Any] = {}
        for bit, (name, kind) in zip(range(15, 1, -1), _PROPERTIES, strict=True):
            if not flags & (1 << bit):
                continue
            value = reader.value(kind, name)
            if name != "cluster_id":
                values[name] = value
        properties = Properties(**values) if values else NO_PROPERTIES
    except (_Unreadable, struct.error, IndexError, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        return ContentHeader(
            class_id,
            body_size,
            NO_PROPERTIES,
            f"the message's properties cannot be read: {detail}",
        )
    problem = None
    if reader.problems:
        problem = "the message's properties are not valid: " + "; ".join(
            reader.problems[:5]
        )
    return ContentHeader(class_id, body_size, properties, problem)


class _Reader:
    """Reads property and field values from *data*, noting what does not decode."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos
        self.problems: list[str] = []

    def _take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise _Unreadable("a value runs past the end of the header")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> Any:
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return value

    def short_str(self, what: str) -> str:
        raw = self._take(self.unpack(_U8))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.problems.append(f"{what} is not valid UTF-8 ({raw[:40]!r})")
            return raw.decode("utf-8", errors="replace")

    def timestamp(self) -> datetime.datetime | int:
        raw = self.unpack(_U64)
        seconds = raw / 1000 if raw > _SECONDS_MAX else raw
        try:
            return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
        except (OverflowError, OSError, ValueError):
            return int(raw)  # legal AMQP, beyond datetime: kept as the number

    def value(self, kind: str, what: str) -> Any:
        if kind == "s":
            return self.short_str(what)
        if kind == "o":
            return self.unpack(_U8)
        if kind == "T":
            stamp = self.timestamp()
            return stamp if isinstance(stamp, datetime.datetime) else None
        return self.table(what, 0)

    def table(self, what: str, depth: int) -> dict[str, Any]:
        if depth > _MAX_DEPTH:
            raise _Unreadable(f"{what} nests deeper than {_MAX_DEPTH} levels")
        length = self.unpack(_U32)
        end = self.pos + length
        if end > len(self.data):
            raise _Unreadable(f"{what} is longer than the header")
        result: dict[str, Any] = {}
        while self.pos < end:
            key = self.short_str(f"a key of {what}")
            result[key] = self.field(f"{what}[{key!r}]", depth)
        if self.pos != end:
            raise _Unreadable(f"{what} does not end where its length says")
        return result

    def array(self, what: str, depth: int) -> list[Any]:
        if depth > _MAX_DEPTH:
            raise _Unreadable(f"{what} nests deeper than {_MAX_DEPTH} levels")
        length = self.unpack(_U32)
        end = self.pos + length
        if end > len(self.data):
            raise _Unreadable(f"{what} is longer than the header")
        items: list[Any] = []
        while self.pos < end:
            items.append(self.field(f"{what}[{len(items)}]", depth))
        if self.pos != end:
            raise _Unreadable(f"{what} does not end where its length says")
        return items

    def field(self, what: str, depth: int) -> Any:
        kind = self._take(1)
        if kind == b"S":
            raw = self._take(self.unpack(_U32))
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw  # a long string is bytes on the wire: kept as bytes
        simple = _SIMPLE.get(kind)
        if simple is not None:
            return self.unpack(simple)
        if kind == b"t":
            return self.unpack(_U8) != 0
        if kind == b"F":
            return self.table(what, depth + 1)
        if kind == b"A":
            return self.array(what, depth + 1)
        if kind == b"T":
            return self.timestamp()
        if kind == b"D":
            scale, unscaled = _DECIMAL.unpack_from(self.data, self.pos)
            self.pos += _DECIMAL.size
            return decimal.Decimal(unscaled).scaleb(-scale)
        if kind == b"x":
            return self._take(self.unpack(_U32))
        if kind in (b"V", b"\x00"):
            return None
        raise _Unreadable(f"{what} has an unknown field type {kind!r}")


#: Field types read with one struct (RabbitMQ's table types).
_SIMPLE: Final[dict[bytes, struct.Struct]] = {
    b"b": _I8,
    b"B": _U8,
    b"s": _I16,
    b"u": _U16,
    b"I": _I32,
    b"i": _U32,
    b"l": _I64,
    b"L": _I64,
    b"f": _F32,
    b"d": _F64,
}
