"""Argument checks shared by every transport, made before anything reaches a broker.

Both transports call these so that the same bad request raises the same
:class:`~trioevents.InvalidRequest` on the embedded broker and on RabbitMQ.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Mapping
from typing import Any

from ._exceptions import InvalidRequest
from ._message import ExchangeType, Properties

__all__ = [
    "check_body",
    "check_exchange_type",
    "check_int",
    "check_name",
    "check_prefetch",
    "check_properties",
    "check_routing_key",
    "check_table",
    "copy_table",
    "wire_timestamp",
]

_SHORTSTR_MAX = 255
_INT64 = (-(2**63), 2**63 - 1)
#: Nesting deeper than this is refused: field tables are not meant to be trees.
_MAX_TABLE_DEPTH = 32


def _shortstr(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a str, not {type(value).__name__}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
        raise InvalidRequest(f"{what} is not valid Unicode: {exc}") from None
    if len(encoded) > _SHORTSTR_MAX:
        raise InvalidRequest(
            f"{what} is longer than {_SHORTSTR_MAX} bytes: {value[:40]!r}..."
        )
    return value


def check_name(name: object, what: str) -> str:
    """Check an exchange or queue name (a str of at most 255 UTF-8 bytes)."""
    return _shortstr(name, what)


def check_routing_key(routing_key: object) -> str:
    """Check a routing or binding key (a str of at most 255 UTF-8 bytes)."""
    return _shortstr(routing_key, "routing key")


def check_exchange_type(value: object) -> ExchangeType:
    """Turn an :class:`ExchangeType` or its string value into the enum member."""
    if isinstance(value, ExchangeType):
        return value
    try:
        return ExchangeType(value)
    except ValueError:
        known = ", ".join(t.value for t in ExchangeType)
        raise InvalidRequest(
            f"unknown exchange type {value!r}; expected one of {known}"
        ) from None


def check_int(value: object, low: int, high: int) -> bool:
    """Tell whether *value* is an int (not a bool) from *low* to *high*."""
    return type(value) is int and low <= value <= high


def check_prefetch(prefetch_count: object) -> int:
    """Check a consumer's prefetch count (an int from 0, no limit, to 65535)."""
    if isinstance(prefetch_count, int) and check_int(prefetch_count, 0, 65535):
        return prefetch_count
    raise InvalidRequest(
        f"prefetch_count must be an int from 0 to 65535, not {prefetch_count!r}"
    )


def check_body(body: object) -> bytes:
    """Check that a message body is :class:`bytes` (``bytearray``/``memoryview`` are copied)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise InvalidRequest(f"message body must be bytes, not {type(body).__name__}")


def _check_value(value: object, where: str, depth: int) -> None:
    if depth > _MAX_TABLE_DEPTH:
        raise InvalidRequest(f"{where} nests deeper than {_MAX_TABLE_DEPTH} levels")
    if value is None or isinstance(value, bool | str | bytes | float | decimal.Decimal):
        return
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidRequest(f"{where}: integer {value} does not fit in 64 bits")
        return
    if isinstance(value, datetime.datetime | bytearray):
        return
    if isinstance(value, Mapping):
        check_table(value, where, depth + 1)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]", depth + 1)
        return
    raise InvalidRequest(
        f"{where}: {type(value).__name__} cannot be sent in an AMQP field table "
        "(use None, bool, int, float, Decimal, str, bytes, datetime, list or dict)"
    )


def check_table(table: object, where: str = "arguments", depth: int = 0) -> None:
    """Check that *table* can be carried as an AMQP field table."""
    if not isinstance(table, Mapping):
        raise InvalidRequest(f"{where} must be a mapping, not {type(table).__name__}")
    for key, value in table.items():
        _shortstr(key, f"key of {where}")
        _check_value(value, f"{where}[{key!r}]", depth)


def check_properties(properties: object) -> Properties:
    """Check every field of a :class:`Properties`; ``None`` means no properties."""
    if properties is None:
        return _EMPTY
    if not isinstance(properties, Properties):
        raise InvalidRequest(
            f"properties must be a trioevents.Properties, not {type(properties).__name__}"
        )
    p = properties
    for field in ("content_type", "content_encoding", "correlation_id", "reply_to",
                  "message_id", "type", "user_id", "app_id"):  # fmt: skip
        value = getattr(p, field)
        if value is not None:
            _shortstr(value, field)
    if p.headers is not None:
        check_table(p.headers, "headers")
    if p.delivery_mode is not None and p.delivery_mode not in (1, 2):
        raise InvalidRequest(f"delivery_mode must be 1 or 2, not {p.delivery_mode!r}")
    if p.priority is not None and not check_int(p.priority, 0, 255):
        raise InvalidRequest(
            f"priority must be an int from 0 to 255, not {p.priority!r}"
        )
    if p.expiration is not None:
        _shortstr(p.expiration, "expiration")
        if not p.expiration.isdigit():
            raise InvalidRequest(
                f"expiration must be a non-negative number of milliseconds as a "
                f"string, not {p.expiration!r}"
            )
    if p.timestamp is not None and not isinstance(p.timestamp, datetime.datetime):
        raise InvalidRequest(
            f"timestamp must be a datetime, not {type(p.timestamp).__name__}"
        )
    return p


_EMPTY = Properties()


def wire_timestamp(value: datetime.datetime) -> datetime.datetime:
    """Return *value* as AMQP carries it: UTC, whole seconds (naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    elif value.utcoffset():
        value = value.astimezone(datetime.UTC)
    return value.replace(microsecond=0)


def copy_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """Copy a field table as it comes back from the wire.

    Containers are copied so that no receiver shares one; tuples become lists,
    ``bytearray`` becomes ``bytes`` and datetimes become UTC whole seconds.
    """
    return {key: _copy_value(value) for key, value in table.items()}


def _copy_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return copy_table(value)
    if isinstance(value, list | tuple):
        return [_copy_value(item) for item in value]
    if isinstance(value, datetime.datetime):
        return wire_timestamp(value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value
