"""Argument checks shared by every transport, made before anything reaches a broker.

Both transports call these so that the same bad request raises the same
:class:`~trioevents.InvalidRequest` on the embedded broker and on RabbitMQ.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Final

from ._exceptions import InvalidRequest
from ._fieldtable import check_shortstr as _shortstr, check_table
from ._message import ExchangeType, Properties

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MAX_EXPIRATION",
    "check_body",
    "check_exchange_type",
    "check_expiration",
    "check_int",
    "check_name",
    "check_prefetch",
    "check_properties",
    "check_routing_key",
]

#: The longest ``expiration`` in milliseconds (2**32 - 1, about 49.7 days), the
#: limit of RabbitMQ's timers (``MAX_EXPIRY_TIMER``). Some versions take more
#: (3.10: up to ten years); a larger one is refused here so that every version
#: takes what we send. RabbitMQ refuses a publish by closing its channel.
MAX_EXPIRATION: Final = 2**32 - 1
#: Headers RabbitMQ routes by (sender-selected distribution): arrays or nothing.
_ROUTING_HEADERS: Final = ("CC", "BCC")


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
    headers = p.headers
    if headers is not None:
        check_table(headers, "headers")
        if "CC" in headers or "BCC" in headers:
            _check_routing_headers(headers)
    if p.delivery_mode is not None and p.delivery_mode not in (1, 2):
        raise InvalidRequest(f"delivery_mode must be 1 or 2, not {p.delivery_mode!r}")
    if p.priority is not None and not check_int(p.priority, 0, 255):
        raise InvalidRequest(
            f"priority must be an int from 0 to 255, not {p.priority!r}"
        )
    if p.expiration is not None:
        check_expiration(p.expiration)
    if p.timestamp is not None and not isinstance(p.timestamp, datetime.datetime):
        raise InvalidRequest(
            f"timestamp must be a datetime, not {type(p.timestamp).__name__}"
        )
    return p


def check_expiration(expiration: object) -> str:
    """Check a message's ``expiration``: milliseconds as a string of ASCII digits.

    At most :data:`MAX_EXPIRATION`. RabbitMQ reads the string as an Erlang
    integer: other Unicode digits, spaces and larger values are refused.
    """
    text = _shortstr(expiration, "expiration")
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_EXPIRATION:
        raise InvalidRequest(
            f"expiration must be a number of milliseconds from 0 to "
            f"{MAX_EXPIRATION} as a string of digits, not {expiration!r}"
        )
    return text


def _check_routing_headers(headers: Mapping[str, object]) -> None:
    """Check ``CC`` / ``BCC``: RabbitMQ routes by them, and takes arrays only."""
    for key in _ROUTING_HEADERS:
        routes = headers.get(key)
        if routes is not None and not isinstance(routes, list | tuple):
            raise InvalidRequest(
                f"header {key!r} must be a list of routing keys (RabbitMQ "
                f"routes by it), not {type(routes).__name__}"
            )


_EMPTY = Properties()
