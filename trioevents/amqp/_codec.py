"""Message properties and field tables between trioevents and the AMQP wire.

What a field table may hold is decided by :mod:`trioevents._fieldtable`, the
one definition every layer checks with; this module only converts to and from
the forms pamqp reads and writes:

* outgoing tables are checked with :func:`~trioevents._fieldtable.check_table`
  (a value that does not fit is :class:`~trioevents.InvalidRequest`), then
  bytes-like values become :class:`bytearray` (pamqp's byte array, ``'x'``),
  tuples lists and mappings dicts;
* incoming tables get :class:`bytes` back for byte arrays;
* message headers on the publish path (:func:`encode_properties`) are encoded
  here rather than by pamqp, so that floats travel as 64-bit doubles (``'d'``)
  as py-amqp (kombu, nameko) and RabbitMQ's own ``x-death`` send them.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from pamqp import commands, encode as pamqp_encode

from .._exceptions import InvalidRequest
from .._fieldtable import check_table
from .._message import NO_PROPERTIES, Properties

if TYPE_CHECKING:
    from pamqp import common as pamqp_common

__all__ = [
    "encode_properties",
    "from_field_table",
    "properties_from_pamqp",
    "properties_to_pamqp",
    "to_field_table",
]


def to_field_table(
    table: Mapping[str, Any], where: str = "arguments"
) -> pamqp_common.FieldTable:
    """Check *table* and convert it to what pamqp encodes.

    Parameters
    ----------
    table
        The field table, e.g. a queue's ``arguments``.
    where
        How to name the table in an error.

    Raises
    ------
    InvalidRequest
        A key or value cannot travel in an AMQP field table.
    """
    check_table(table, where)
    return _to_pamqp_table(table)


def _to_pamqp_table(table: Mapping[str, Any]) -> pamqp_common.FieldTable:
    return {key: _to_pamqp_value(value) for key, value in table.items()}


def _to_pamqp_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        # pamqp encodes bytearray as a byte array ('x') and refuses bytes.
        return bytearray(value)
    if isinstance(value, Mapping):
        return _to_pamqp_table(value)
    if isinstance(value, list | tuple):
        return [_to_pamqp_value(item) for item in value]
    return value


def from_field_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a field table pamqp decoded: byte arrays become :class:`bytes`."""
    return {key: _from_pamqp_value(value) for key, value in table.items()}


def _from_pamqp_value(value: Any) -> Any:
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {key: _from_pamqp_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_pamqp_value(item) for item in value]
    return value


def properties_to_pamqp(properties: Properties) -> commands.Basic.Properties:
    """Convert :class:`~trioevents.Properties` to pamqp's ``Basic.Properties``.

    Header values are what :mod:`trioevents._fieldtable` allows; bytes-like
    values are sent as an AMQP byte array.

    pamqp's encoding has a few quirks worth knowing:

    * empty strings are not sent: ``content_type=""`` arrives as ``None``;
    * a naive ``timestamp`` is taken as UTC and sub-second digits are cut;
    * a ``float`` header would travel as a 32-bit float (``'f'``); the publish
      path (:func:`encode_properties`) encodes headers itself and sends 64-bit
      doubles (``'d'``), as py-amqp does;
    * ints take the smallest AMQP integer type that holds them.

    Raises
    ------
    InvalidRequest
        A value cannot be encoded.
    """
    headers = properties.headers
    if headers is not None:
        headers = to_field_table(headers, "headers")
    return _to_pamqp(properties, headers)


def _to_pamqp(
    properties: Properties, headers: pamqp_common.FieldTable | None
) -> commands.Basic.Properties:
    try:
        return commands.Basic.Properties(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=headers,
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
        headers=None if headers is None else from_field_table(headers),
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


def encode_properties(properties: Properties) -> bytes:
    """Encode *properties* as a content header carries them (flags, then values).

    As :func:`properties_to_pamqp`, except that header floats are 64-bit
    doubles (``'d'``).

    Raises
    ------
    InvalidRequest
        A value cannot be encoded.
    """
    if properties is NO_PROPERTIES:
        return _NO_PROPERTIES_BYTES
    headers = properties.headers
    if headers is not None:
        check_table(headers, "headers")
    # pamqp sends every float as a 32-bit 'f'; py-amqp (kombu, nameko) and
    # RabbitMQ's own x-death use 64-bit 'd'. So a headers table is encoded
    # here and spliced in after content_type and content_encoding.
    amqp = _to_pamqp(properties, {} if headers is not None and not headers else None)
    try:
        data = amqp.marshal()
        if not headers:
            return data
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
#: Values pamqp encodes as we want them (bool is an int).
_PAMQP_ENCODES: Final = (str, int, decimal.Decimal, datetime.datetime, type(None))


def _marshal_value(value: Any) -> bytes:
    """Encode one checked field value as pamqp does, except floats."""
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    if isinstance(value, _PAMQP_ENCODES):
        return pamqp_encode.encode_table_value(value)
    if isinstance(value, list | tuple):
        items = b"".join(_marshal_value(item) for item in value)
        return b"A" + _LONG.pack(len(items)) + items
    if isinstance(value, bytes | bytearray | memoryview):
        return pamqp_encode.encode_table_value(bytearray(value))
    return b"F" + _marshal_table(value)  # check_table let only mappings on


def _marshal_table(table: Mapping[str, Any]) -> bytes:
    """Encode a checked field table in its own order, floats as doubles."""
    items = b"".join(
        pamqp_encode.short_string(key) + _marshal_value(value)
        for key, value in table.items()
    )
    return _LONG.pack(len(items)) + items


_NO_PROPERTIES_BYTES: Final = commands.Basic.Properties().marshal()
