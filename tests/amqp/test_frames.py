"""Frames (:mod:`trioevents.amqp._frames`): the bytes a connection reads and writes.

Whole frames are cut out of whatever pieces the bytes arrive in; what is sent
is framed to ``frame_max``; a malformed frame is the broker's fault.
"""

from __future__ import annotations

import pytest
from pamqp import (
    body as pamqp_body,
    commands,
    frame as pamqp_frame,
    header as pamqp_header,
    heartbeat as pamqp_heartbeat,
)

from trioevents._exceptions import (
    BrokerUnavailable,
    LocalProtocolError,
    RemoteProtocolError,
)
from trioevents._message import NO_PROPERTIES, Properties
from trioevents.amqp._codec import properties_from_pamqp
from trioevents.amqp._events import (
    NEED_DATA,
    ConnectionOpened,
    ConnectionTuned,
    Delivered,
    Event,
    HeartbeatReceived,
)
from trioevents.amqp._protocol import Connection
from trioevents.amqp._state import ConnectionState

from .scripted_broker import (
    Broker,
    check_broker_broke_amqp,
    consume,
    decode,
    deliver,
    encode,
    handshake,
    open_channel,
    start_frame,
    state,
)

# --------------------------------------------------------------------------
# Reading frames


def test_broker_protocol_header_means_version_refused() -> None:
    conn = Connection()
    conn.receive_data(b"AMQP\x00\x00\x09")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\x00")
    with pytest.raises(BrokerUnavailable, match="AMQP"):
        conn.next_event()


def test_handshake_fed_one_byte_at_a_time() -> None:
    conn = Connection()
    conn.data_to_send()
    data = encode(
        (0, start_frame()),
        (0, commands.Connection.Tune(0, 131072, 10)),
        (0, commands.Connection.OpenOk()),
    )
    events: list[Event] = []
    broker = Broker(conn)
    for i in range(len(data)):
        events += broker.feed(data[i : i + 1])
    assert [type(e) for e in events] == [ConnectionTuned, ConnectionOpened]


def test_delivery_fed_one_byte_at_a_time() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    props = commands.Basic.Properties(content_type="text/plain", headers={"a": 1})
    data = deliver(channel, 1, b"hello world", properties=props, chunk=3) + deliver(
        channel, 2, b""
    )
    events: list[Event] = []
    for i in range(len(data)):
        events += broker.feed(data[i : i + 1])
    expected_props = Properties(content_type="text/plain", headers={"a": 1})
    assert events == [
        Delivered(
            channel, "ctag", 1, False, "ex", "rk", expected_props, b"hello world"
        ),
        Delivered(channel, "ctag", 2, False, "ex", "rk", NO_PROPERTIES, b""),
    ]


def test_many_messages_in_one_read() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    data = b"".join(deliver(channel, tag, b"%d" % tag) for tag in range(1, 2001))
    events = broker.feed(data)
    assert [event.body for event in events] == [  # type: ignore[attr-defined]
        b"%d" % tag for tag in range(1, 2001)
    ]


def test_end_of_stream_inside_a_frame_is_a_protocol_error() -> None:
    conn, _ = handshake()
    conn.receive_data(encode((0, commands.Connection.Blocked("x")))[:-3])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        conn.next_event()


def test_heartbeat_frames_become_events() -> None:
    _, broker = handshake()
    assert broker.send((0, pamqp_heartbeat.Heartbeat())) == [HeartbeatReceived()]


def test_heartbeat_on_a_channel_is_a_protocol_error() -> None:
    _, broker = handshake()
    with pytest.raises(RemoteProtocolError, match="501"):
        broker.feed(b"\x08\x00\x01\x00\x00\x00\x00\xce")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x01\x00\x00\x00\x04\xff\xff\xff\xff\xce", "502"),
        (b"\x01\x00\x01\x00\x00\x00\x01\x00\x00", "bad frame end"),
        (b"\x07\x00\x01\x00\x00\x00\x00\xce", "unknown frame type"),
        (b"\x03\x00\x01\x00\x02\x00\x00", "frame_max"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_broken_frames_are_remote_protocol_errors(data: bytes, match: str) -> None:
    check_broker_broke_amqp(data, match)


# --------------------------------------------------------------------------
# Writing frames


def test_protocol_header_is_queued_first() -> None:
    conn = Connection()
    assert state(conn) is ConnectionState.AWAIT_START
    assert conn.pending_output == 8
    assert conn.data_to_send() == b"AMQP\x00\x00\x09\x01"
    assert conn.data_to_send() == b""
    assert conn.next_event() is NEED_DATA


def test_send_heartbeat_queues_a_heartbeat_frame() -> None:
    conn, _ = handshake()
    conn.send_heartbeat()
    assert conn.data_to_send() == b"\x08\x00\x00\x00\x00\x00\x00\xce"


def test_publish_sends_method_header_and_body() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    props = Properties(content_type="application/json", delivery_mode=2, priority=0)
    tag = conn.basic_publish(
        channel, "orders.events", "order_placed", b'{"id": 1}', props, mandatory=True
    )
    assert tag is None
    sent = broker.sent()
    assert [type(value) for _, value in sent] == [
        commands.Basic.Publish,
        pamqp_header.ContentHeader,
        pamqp_body.ContentBody,
    ]
    assert {ch for ch, _ in sent} == {channel}
    publish, header, body = (value for _, value in sent)
    assert (publish.exchange, publish.routing_key) == ("orders.events", "order_placed")
    assert (publish.mandatory, publish.immediate) == (True, False)
    assert header.body_size == 9
    assert properties_from_pamqp(header.properties) == props
    assert body.value == b'{"id": 1}'


def test_publish_with_an_empty_body_sends_no_body_frame() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.basic_publish(channel, "", "q", b"")
    assert [type(value) for _, value in broker.sent()] == [
        commands.Basic.Publish,
        pamqp_header.ContentHeader,
    ]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (4088, [4088]),
        (4089, [4088, 1]),
        (10000, [4088, 4088, 1824]),
        (3 * 4088, [4088, 4088, 4088]),
    ],
)
def test_publish_splits_the_body_at_frame_max_minus_8(
    size: int, expected: list[int]
) -> None:
    conn, broker = handshake(frame_max=4096)
    channel = open_channel(conn, broker)
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    conn.basic_publish(channel, "", "q", body)
    pending = conn.pending_output
    data = conn.data_to_send()
    assert len(data) == pending
    frames = decode(data)
    chunks = [value.value for _, value in frames[2:]]
    assert [len(chunk) for chunk in chunks] == expected
    assert b"".join(chunks) == body
    assert max(len(pamqp_frame.marshal(value, 1)) for _, value in frames) <= 4096


def test_method_frame_larger_than_frame_max_is_refused() -> None:
    conn, broker = handshake(frame_max=4096)
    channel = open_channel(conn, broker)
    with pytest.raises(LocalProtocolError, match="frame_max"):
        conn.queue_declare(channel, "q", arguments={"x-big": "v" * 5000})
    assert broker.sent() == []


@pytest.mark.parametrize(
    "name", ["bad name!", "caf\u00e9", "x" * 255, "evt-src-order.*--svc.method"]
)
def test_names_rabbitmq_accepts_are_sent_as_they_are(name: str) -> None:
    """pamqp's AMQP name grammar (127 characters, a few symbols) is not enforced."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.exchange_declare(channel, name)
    conn.queue_declare(channel, name)
    conn.queue_bind(channel, name, name, "k")
    conn.basic_consume(channel, name)
    conn.basic_publish(channel, name, "k", b"")
    sent = broker.sent()
    assert [method.exchange for _, method in sent[:1]] == [name]
    assert [sent[1][1].queue, sent[2][1].queue, sent[3][1].queue] == [name] * 3
    assert sent[4][1].exchange == name
