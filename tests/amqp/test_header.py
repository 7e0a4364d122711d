"""Content headers read leniently (:mod:`trioevents.amqp._header`), and bounded bodies.

A content header whose properties cannot be read as sent is a bad message, not
a broken connection: the delivery comes out with what could be read and a
problem; a body over the limit is counted, never buffered.
"""

from __future__ import annotations

import datetime
import decimal
import struct

import pytest
from pamqp import body as pamqp_body, commands, frame as pamqp_frame

from trioevents import Properties
from trioevents.amqp._codec import encode_properties
from trioevents.amqp._events import Delivered
from trioevents.amqp._header import decode_content_header

from .scripted_broker import consume, deliver, handshake, open_channel

FIXED = struct.Struct(">HHQ")


def header(properties_bytes: bytes, body_size: int = 4) -> bytes:
    """A content header payload: class 60, weight 0, *body_size*, properties."""
    return FIXED.pack(60, 0, body_size) + properties_bytes


def short(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def table(entries: bytes) -> bytes:
    return struct.pack(">I", len(entries)) + entries


MESSAGE_ID = 1 << 7
CONTENT_TYPE = 1 << 15
HEADERS = 1 << 13
TIMESTAMP = 1 << 6


def flags(value: int) -> bytes:
    return struct.pack(">H", value)


def test_what_our_codec_writes_reads_back_the_same() -> None:
    properties = Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={
            "s": "text",
            "b": b"\x00\xff",
            "n": -(2**63),
            "f": 0.1,
            "d": decimal.Decimal("-1.25"),
            "t": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
            "nested": {"list": [1, None, True, {"x": []}]},
        },
        delivery_mode=2,
        priority=3,
        correlation_id="c",
        reply_to="r",
        expiration="100",
        message_id="m",
        timestamp=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        type="t",
        user_id="u",
        app_id="a",
    )
    read = decode_content_header(header(encode_properties(properties)))
    assert (read.class_id, read.body_size, read.problem) == (60, 4, None)
    assert read.properties == properties


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (flags(MESSAGE_ID) + short(b"id-\xff\xfe"), "message_id is not valid UTF-8"),
        (flags(CONTENT_TYPE) + short(b"text/\xc3"), "content_type is not valid UTF-8"),
        (
            flags(HEADERS)
            + table(short(b"k\xff") + b"S" + struct.pack(">I", 1) + b"v"),
            "a key of headers is not valid UTF-8",
        ),
    ],
    ids=["message_id", "content_type", "header-key"],
)
def test_strings_that_are_not_utf8_make_a_problem_not_an_error(
    raw: bytes, what: str
) -> None:
    read = decode_content_header(header(raw))
    assert read.problem is not None
    assert what in read.problem
    # what could be read is there, with replacement characters
    values = [read.properties.message_id, read.properties.content_type]
    values += list(read.properties.headers or {})
    assert any(value and "\ufffd" in value for value in values)


def test_a_timestamp_property_beyond_datetime_is_dropped_without_a_problem() -> None:
    read = decode_content_header(header(flags(TIMESTAMP) + struct.pack(">Q", 2**62)))
    assert read.problem is None
    assert read.properties.timestamp is None


def test_a_header_timestamp_in_microseconds_is_kept_as_the_number() -> None:
    micros = 1_700_000_000_000_000  # year 55840 as seconds, 2023 as microseconds
    raw = flags(HEADERS) + table(short(b"at") + b"T" + struct.pack(">Q", micros))
    read = decode_content_header(header(raw))
    assert read.problem is None
    assert read.properties.headers == {"at": micros}


def test_a_header_timestamp_in_milliseconds_is_read_as_pamqp_does() -> None:
    millis = 1_700_000_000_000
    raw = flags(HEADERS) + table(short(b"at") + b"T" + struct.pack(">Q", millis))
    read = decode_content_header(header(raw))
    assert read.properties.headers == {
        "at": datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC)
    }


@pytest.mark.parametrize(
    ("raw", "cause"),
    [
        (flags(HEADERS) + struct.pack(">I", 999) + b"xx", "longer than the header"),
        (flags(HEADERS) + table(short(b"k") + b"?"), "unknown field type"),
        (flags(MESSAGE_ID) + b"\x09abc", "runs past the end"),
    ],
    ids=["table-length", "field-type", "short-string"],
)
def test_properties_that_cannot_be_read_leave_them_empty_with_the_cause(
    raw: bytes, cause: str
) -> None:
    read = decode_content_header(header(raw))
    assert read.properties == Properties()
    assert read.problem is not None
    assert cause in read.problem


def test_a_poison_header_is_a_delivery_with_a_problem_and_the_link_stays() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    method = commands.Basic.Deliver("ctag", 1, False, "ex", "rk")
    bad = header(flags(MESSAGE_ID) + short(b"\xff"))
    data = pamqp_frame.marshal(method, channel)
    data += struct.pack(">BHI", 2, channel, len(bad)) + bad + b"\xce"
    data += pamqp_frame.marshal(pamqp_body.ContentBody(b"body"), channel)
    (event,) = broker.feed(data)
    assert isinstance(event, Delivered)
    assert event.body == b"body"
    assert event.problem is not None
    assert "message_id is not valid UTF-8" in event.problem
    # the connection goes on: the next delivery is read as usual
    (good,) = broker.feed(deliver(channel, 2, b"next"))
    assert isinstance(good, Delivered)
    assert (good.body, good.problem) == (b"next", None)


def test_a_body_over_the_limit_is_counted_not_kept() -> None:
    conn, broker = handshake(max_body_size=1000)
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    big = b"x" * 5000
    events = broker.feed(deliver(channel, 1, big, chunk=512))
    (event,) = events
    assert isinstance(event, Delivered)
    assert event.body == b""
    assert event.body_dropped
    assert event.problem is not None
    assert "5000 bytes exceeds MAX_MESSAGE_SIZE (1000 bytes)" in event.problem
    assert conn.channel_state(channel) is not None  # the channel lives on
    (small,) = broker.feed(deliver(channel, 2, b"y" * 1000))
    assert isinstance(small, Delivered)
    assert (len(small.body), small.body_dropped) == (1000, False)
