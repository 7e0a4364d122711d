"""What an AMQP field table may hold: the one definition every layer uses.

Message headers and the ``arguments`` of declares, binds and consumes are AMQP
field tables. This module says which Python values fit in one (as RabbitMQ and
py-amqp read the wire format), so that the embedded broker, the RabbitMQ
transport and the worker context (:meth:`~trioevents.WorkerContext.dispatch_headers`)
accept and refuse the same values:

=============================================  =========================================
Python value                                   on the wire
=============================================  =========================================
``None``                                       void (``V``)
``bool``                                       boolean (``t``)
``int`` from -2**63 to 2**63 - 1               the smallest signed integer that holds it
``float``                                      double (``d``)
``decimal.Decimal``, finite, scale 0..255,     decimal (``D``)
unscaled value a signed 32-bit integer
``str`` (valid Unicode)                        long string (``S``)
``bytes``, ``bytearray``, ``memoryview``        byte array (``x``)
``datetime.datetime`` from 1970 on              timestamp (``T``), whole seconds, UTC
``list`` or ``tuple`` of values                array (``A``)
a mapping of ``str`` keys (at most 255 UTF-8   table (``F``)
bytes each) to values
=============================================  =========================================

Containers may nest :data:`MAX_DEPTH` levels deep.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Mapping
from typing import Any, Final

from ._exceptions import InvalidRequest

__all__ = [
    "MAX_DEPTH",
    "SHORTSTR_MAX",
    "check_shortstr",
    "check_table",
    "check_value",
    "copy_table",
    "field_value_problem",
    "is_field_value",
    "wire_timestamp",
]

#: The longest short string (names, routing keys, table keys), in UTF-8 bytes.
SHORTSTR_MAX: Final = 255
#: How deeply tables and arrays may nest: field tables are not meant to be trees.
MAX_DEPTH: Final = 32
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_SCALARS: Final = (bool, float, bytes, bytearray, memoryview)


def shortstr_problem(value: object, what: str) -> str | None:
    """Say why *value* cannot be an AMQP short string, or ``None`` if it can."""
    if not isinstance(value, str):
        return f"{what} must be a str, not {type(value).__name__}"
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
        return f"{what} is not valid Unicode: {exc}"
    if len(encoded) > SHORTSTR_MAX:
        return f"{what} is longer than {SHORTSTR_MAX} bytes: {value[:40]!r}..."
    return None


def check_shortstr(value: object, what: str) -> str:
    """Return *value* if it is an AMQP short string; else raise InvalidRequest."""
    if type(value) is str and len(value) <= SHORTSTR_MAX and value.isascii():
        return value  # the common case, without encoding it
    problem = shortstr_problem(value, what)
    if problem is not None:
        raise InvalidRequest(problem)
    assert isinstance(value, str)
    return value


def _decimal_problem(value: decimal.Decimal, where: str) -> str | None:
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        return f"{where}: Decimal {value} is not finite"
    scale = max(0, -exponent)
    unscaled = int(value.scaleb(scale))
    if scale > 255 or not _INT32_MIN <= unscaled <= _INT32_MAX:
        return (
            f"{where}: Decimal {value} does not fit an AMQP decimal (at most 255 "
            "decimal places, unscaled value a signed 32-bit integer)"
        )
    return None


def field_value_problem(
    value: object, where: str = "value", depth: int = 0
) -> str | None:
    """Say why *value* cannot travel in an AMQP field table, or ``None`` if it can.

    Parameters
    ----------
    value
        The value to check (containers are walked).
    where
        How to name the value in the answer, e.g. ``"headers['x-retry']"``.
    depth
        How deeply *value* is nested already.
    """
    if depth > MAX_DEPTH:
        return f"{where} nests deeper than {MAX_DEPTH} levels"
    if value is None or isinstance(value, _SCALARS):
        return None
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            return f"{where}: integer {value} does not fit in 64 bits"
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{where} is not valid Unicode: {exc}"
        return None
    if isinstance(value, decimal.Decimal):
        return _decimal_problem(value, where)
    if isinstance(value, datetime.datetime):
        aware = (
            value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
        )
        if aware < _EPOCH:
            return f"{where}: timestamp {value.isoformat()} is before 1970"
        return None
    if isinstance(value, Mapping):
        return _table_problem(value, where, depth + 1)
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = field_value_problem(item, f"{where}[{index}]", depth + 1)
            if problem is not None:
                return problem
        return None
    return (
        f"{where}: {type(value).__name__} cannot be sent in an AMQP field table "
        "(use None, bool, int, float, Decimal, str, bytes, datetime, list or dict)"
    )


def _table_problem(table: Mapping[Any, Any], where: str, depth: int) -> str | None:
    for key, value in table.items():
        problem = shortstr_problem(key, f"key of {where}") or field_value_problem(
            value, f"{where}[{key!r}]", depth
        )
        if problem is not None:
            return problem
    return None


def is_field_value(value: object) -> bool:
    """Tell whether *value* can travel in an AMQP field table."""
    return field_value_problem(value) is None


def check_value(value: object, where: str = "value") -> None:
    """Raise :class:`~trioevents.InvalidRequest` if *value* cannot be a field value."""
    problem = field_value_problem(value, where)
    if problem is not None:
        raise InvalidRequest(problem)


def check_table(table: object, where: str = "arguments") -> None:
    """Raise :class:`~trioevents.InvalidRequest` if *table* is not a field table."""
    if not isinstance(table, Mapping):
        raise InvalidRequest(f"{where} must be a mapping, not {type(table).__name__}")
    problem = _table_problem(table, where, 0)
    if problem is not None:
        raise InvalidRequest(problem)


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
    ``bytearray`` and ``memoryview`` become ``bytes`` and datetimes become UTC
    whole seconds.
    """
    return {key: _copy_value(value) for key, value in table.items()}


def _copy_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return copy_table(value)
    if isinstance(value, list | tuple):
        return [_copy_value(item) for item in value]
    if isinstance(value, datetime.datetime):
        return wire_timestamp(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value
