"""Properties and field tables on the wire (:mod:`trioevents.amqp._codec`)."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import attrs
import pytest
from pamqp import commands, header as pamqp_header

from trioevents._exceptions import InvalidRequest
from trioevents._fieldtable import field_value_problem
from trioevents._message import NO_PROPERTIES, Properties
from trioevents.amqp._codec import (
    properties_from_pamqp,
    properties_to_pamqp,
    to_field_table,
)

from .scripted_broker import handshake, open_channel


def test_properties_round_trip_through_the_wire() -> None:
    """Publish on one connection, deliver the same header to another."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    props = Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={
            "nameko.call_id_stack": ["a.b.1", "c.d.2"],
            "nameko.language": "en-gb",
            "small": 5,
            "short": 1000,
            "ushort": 40000,
            "long": 70000,
            "longlong": 2**40,
            "negative": -(2**35),
            "flag": False,
            "none": None,
            "decimal": decimal.Decimal("9.99"),
            "half": 0.5,
            "raw": b"\x00\xff",
            "tuple": ("x", 1),
            "nested": {"deep": {"list": [1, [2, "three"]]}},
            "when": datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        },
        delivery_mode=2,
        priority=9,
        correlation_id="corr",
        reply_to="reply",
        expiration="60000",
        message_id="m-1",
        timestamp=datetime.datetime(2021, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
        type="order_placed",
        user_id="guest",
        app_id="orders",
    )
    conn.basic_publish(channel, "x", "k", b"{}", props)
    [_, (_, header), _] = broker.sent()
    assert isinstance(header, pamqp_header.ContentHeader)
    expected_headers = dict(props.headers or {})
    expected_headers["tuple"] = ["x", 1]
    assert properties_from_pamqp(header.properties) == attrs.evolve(
        props, headers=expected_headers
    )


def test_header_floats_are_sent_as_doubles() -> None:
    """As py-amqp (kombu, nameko) sends them: 64-bit ``'d'``, not pamqp's ``'f'``."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.basic_publish(channel, "x", "k", b"", Properties(headers={"f": 0.1}))
    [_, (_, header)] = broker.sent()
    headers = properties_from_pamqp(header.properties).headers
    assert headers == {"f": 0.1}


def test_naive_timestamp_is_taken_as_utc_and_truncated() -> None:
    props = Properties(timestamp=datetime.datetime(2021, 5, 6, 7, 8, 9, 999999))
    wire = properties_to_pamqp(props).marshal()
    back = commands.Basic.Properties()
    back.unmarshal(int.from_bytes(wire[:2], "big"), wire[2:])
    assert properties_from_pamqp(back).timestamp == datetime.datetime(
        2021, 5, 6, 7, 8, 9, tzinfo=datetime.UTC
    )


def test_pamqp_quirks_of_properties() -> None:
    """Empty strings are not sent; floats travel as 32-bit floats."""
    props = Properties(content_type="", headers={"f": 0.1})
    wire = properties_to_pamqp(props).marshal()
    back = commands.Basic.Properties()
    back.unmarshal(int.from_bytes(wire[:2], "big"), wire[2:])
    result = properties_from_pamqp(back)
    assert result.content_type is None
    assert result.headers is not None
    assert result.headers["f"] == pytest.approx(0.1, rel=1e-7)
    assert result.headers["f"] != 0.1


def test_no_properties_round_trip_to_the_shared_instance() -> None:
    assert properties_from_pamqp(properties_to_pamqp(NO_PROPERTIES)) is NO_PROPERTIES


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(object(), id="object"),
        pytest.param(2**64, id="int-over-64-bits"),
        pytest.param(decimal.Decimal("NaN"), id="decimal-nan"),
        pytest.param(
            datetime.datetime(1969, 12, 31, tzinfo=datetime.UTC), id="pre-1970"
        ),
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param(_nested(40), id="too-deep"),
    ],
)
def test_what_fieldtable_refuses_is_an_invalid_request(value: object) -> None:
    """The codec checks with :mod:`trioevents._fieldtable`, the one definition."""
    assert field_value_problem(value) is not None
    with pytest.raises(InvalidRequest):
        to_field_table({"k": value})
    with pytest.raises(InvalidRequest):
        properties_to_pamqp(Properties(headers={"k": value}))
