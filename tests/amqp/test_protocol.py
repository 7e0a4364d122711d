"""The sans-IO connection (:mod:`trioevents.amqp._protocol`), over byte strings.

Its life (close handshakes, blocking, the end of the stream, a broker that
breaks AMQP), the channel numbers it hands out, heartbeat timekeeping and
publishing. No broker, no trio: :mod:`.scripted_broker` plays the other side.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from pamqp import (
    body as pamqp_body,
    commands,
    header as pamqp_header,
    heartbeat as pamqp_heartbeat,
)

from trioevents._exceptions import (
    InvalidRequest,
    LocalProtocolError,
    RemoteProtocolError,
)
from trioevents._message import Properties
from trioevents.amqp import _codec, _frames, _handshake, _protocol, _state
from trioevents.amqp._events import (
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionUnblocked,
    EOFReceived,
)
from trioevents.amqp._protocol import Connection
from trioevents.amqp._state import ChannelState, ConnectionState

from .scripted_broker import (
    FakeClock,
    blocked,
    check_broker_broke_amqp,
    consume,
    deliver,
    encode,
    handshake,
    only,
    open_channel,
    publish,
    state,
)


def test_the_names_other_layers_import_stay_in_protocol() -> None:
    """_connection, _transport, the tests and benchmarks import these from _protocol."""
    assert sorted(_protocol.__all__) == [
        "CLIENT_CAPABILITIES",
        "ChannelState",
        "Connection",
        "ConnectionState",
        "PROTOCOL_HEADER",
        "properties_from_pamqp",
        "properties_to_pamqp",
    ]
    assert _protocol.CLIENT_CAPABILITIES is _handshake.CLIENT_CAPABILITIES
    assert _protocol.PROTOCOL_HEADER is _frames.PROTOCOL_HEADER
    assert _protocol.ChannelState is _state.ChannelState
    assert _protocol.ConnectionState is _state.ConnectionState
    assert _protocol.properties_from_pamqp is _codec.properties_from_pamqp
    assert _protocol.properties_to_pamqp is _codec.properties_to_pamqp


# --------------------------------------------------------------------------
# Closing the connection


def test_close_queues_connection_close() -> None:
    conn, broker = handshake()
    conn.close(320, "shutting down")
    assert state(conn) is ConnectionState.CLOSING
    close = only(broker.sent(), 0)
    assert isinstance(close, commands.Connection.Close)
    assert (close.reply_code, close.reply_text) == (320, "shutting down")


def test_requests_are_refused_while_closing() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.close(320, "shutting down")
    with pytest.raises(LocalProtocolError):
        conn.basic_publish(channel, "", "q", b"x")
    with pytest.raises(LocalProtocolError):
        conn.close()


def test_frames_are_discarded_while_closing() -> None:
    """Everything but Close / Close-Ok is discarded while closing."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.close(320, "shutting down")
    broker.sent()
    assert broker.feed(deliver(channel, 1)) == []
    assert broker.send((channel, commands.Basic.Ack(1))) == []
    assert broker.send((0, commands.Connection.Blocked("x"))) == []
    assert broker.sent() == []


def test_close_ok_completes_our_close() -> None:
    conn, broker = handshake()
    conn.close(320, "shutting down")
    broker.sent()
    events = broker.send((0, commands.Connection.CloseOk()))
    assert events == [ConnectionClosed(320, "shutting down", 0, 0, by_broker=False)]
    assert state(conn) is ConnectionState.CLOSED
    assert broker.sent() == []


def test_broker_close_is_answered_with_close_ok() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    events = broker.send((0, commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0)))
    assert events == [ConnectionClosed(320, "CONNECTION_FORCED", 0, 0, by_broker=True)]
    close_ok = only(broker.sent(), 0)
    assert isinstance(close_ok, commands.Connection.CloseOk)
    assert state(conn) is ConnectionState.CLOSED
    assert conn.channel_state(channel) is None
    with pytest.raises(LocalProtocolError):
        conn.open_channel()


def test_frames_after_the_close_are_ignored() -> None:
    """Stragglers after the close handshake are ignored."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    broker.send((0, commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0)))
    broker.sent()
    assert broker.feed(deliver(channel, 1)) == []


def test_simultaneous_connection_close() -> None:
    conn, broker = handshake()
    conn.close()
    broker.sent()
    events = broker.send((0, commands.Connection.Close(320, "forced", 0, 0)))
    assert events == [ConnectionClosed(320, "forced", 0, 0, by_broker=True)]
    close_ok = only(broker.sent(), 0)
    assert isinstance(close_ok, commands.Connection.CloseOk)
    assert broker.send((0, commands.Connection.CloseOk())) == []


def test_close_before_tune_is_refused() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError, match="close"):
        conn.close()


# --------------------------------------------------------------------------
# Blocking, end of stream


def test_blocked_and_unblocked() -> None:
    conn, broker = handshake()
    assert blocked(conn) is None
    assert broker.send((0, commands.Connection.Blocked("low on memory"))) == [
        ConnectionBlocked("low on memory")
    ]
    assert blocked(conn) == "low on memory"
    assert broker.send((0, commands.Connection.Unblocked())) == [ConnectionUnblocked()]
    assert blocked(conn) is None


def test_end_of_stream_is_reported_on_every_call() -> None:
    conn, _ = handshake()
    conn.receive_data(b"")
    assert conn.next_event() == EOFReceived()
    assert conn.next_event() == EOFReceived()


def test_only_the_end_of_stream_may_follow_the_end_of_stream() -> None:
    conn, _ = handshake()
    conn.receive_data(b"")
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_events_after_eof_are_still_delivered() -> None:
    conn, broker = handshake()
    conn.receive_data(encode((0, commands.Connection.Close(320, "bye", 0, 0))))
    conn.receive_data(b"")
    assert broker.events() == [
        ConnectionClosed(320, "bye", 0, 0, by_broker=True),
        EOFReceived(),
    ]


# --------------------------------------------------------------------------
# A broker that breaks AMQP


def test_unexpected_reply_queues_a_connection_close() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    with pytest.raises(RemoteProtocolError, match="UNEXPECTED_FRAME"):
        broker.send((channel, commands.Queue.DeclareOk("q", 0, 0)))
    assert state(conn) is ConnectionState.ERROR
    close = only(broker.sent(), 0)
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 505


def test_a_failed_connection_stays_failed() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    with pytest.raises(RemoteProtocolError):
        broker.send((channel, commands.Queue.DeclareOk("q", 0, 0)))
    with pytest.raises(RemoteProtocolError, match="failed earlier"):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.queue_declare(channel, "q")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (encode((0, pamqp_body.ContentBody(b"x"))), "channel 0"),
        (encode((0, pamqp_header.ContentHeader(0, 1, None))), "channel 0"),
        (encode((0, commands.Channel.OpenOk())), "unexpected Channel.OpenOk"),
        (encode((0, commands.Connection.Start())), "unexpected Connection.Start"),
        (encode((0, commands.Connection.Secure("x"))), "Secure"),
        (encode((9, commands.Basic.QosOk())), "channel 9"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_misplaced_frames_are_remote_protocol_errors(data: bytes, match: str) -> None:
    """Content on channel 0, a method channel 0 does not expect now, an unknown channel."""
    check_broker_broke_amqp(data, match)


def test_corrupted_streams_only_raise_remote_protocol_errors() -> None:
    """Flip, drop and insert random bytes: never any other exception."""
    rng = random.Random(4)
    props = commands.Basic.Properties(
        content_type="a/b", headers={"k": [1, "v", {"n": None}]}, priority=1
    )
    stream = b"".join(
        deliver(1, tag, b"m" * tag, properties=props, chunk=7) for tag in range(1, 6)
    ) + encode(
        (1, commands.Basic.Ack(2, multiple=True)),
        (1, commands.Basic.Cancel("ctag")),
        (0, commands.Connection.Blocked("why")),
        (1, commands.Channel.Close(404, "gone", 50, 10)),
    )
    outcomes = set()
    for _ in range(300):
        data = bytearray(stream)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data))
            action = rng.choice(("flip", "drop", "insert"))
            if action == "flip":
                data[i] = rng.randrange(256)
            elif action == "drop":
                del data[i]
            else:
                data.insert(i, rng.randrange(256))
        conn, broker = handshake()
        channel = open_channel(conn, broker, confirms=True)
        publish(conn, channel, 3)
        consume(conn, broker, channel)
        try:
            broker.feed(bytes(data))
            conn.receive_data(b"")
            broker.events()
        except RemoteProtocolError:
            outcomes.add("error")
        else:
            outcomes.add("ok")
    assert outcomes == {"error", "ok"}


def test_frames_for_channels_before_open_are_errors() -> None:
    conn = Connection()
    conn.receive_data(encode((1, commands.Channel.OpenOk())))
    with pytest.raises(RemoteProtocolError, match="504"):
        conn.next_event()


# --------------------------------------------------------------------------
# Channel numbers


def test_open_channel_takes_the_lowest_free_number() -> None:
    conn, broker = handshake()
    assert [conn.open_channel() for _ in range(3)] == [1, 2, 3]
    assert [ch for ch, _ in broker.sent()] == [1, 2, 3]
    assert conn.channel_state(2) is ChannelState.OPENING
    broker.send((2, commands.Channel.OpenOk()))
    assert conn.channel_state(2) is ChannelState.OPEN
    broker.send((2, commands.Channel.Close(404, "NOT_FOUND", 50, 10)))
    assert conn.channel_state(2) is None
    assert conn.open_channel() == 2
    assert conn.open_channel() == 4


def test_channel_max_is_enforced() -> None:
    conn, _ = handshake(channel_max=2)
    conn.open_channel()
    conn.open_channel()
    with pytest.raises(LocalProtocolError, match="channels are in use"):
        conn.open_channel()


# --------------------------------------------------------------------------
# Heartbeat timekeeping


def test_last_sent_follows_the_clock() -> None:
    clock = FakeClock()
    conn, _ = handshake(clock=clock, tune=(0, 131072, 10))
    assert conn.last_received == conn.last_sent == clock.now
    clock.now += 5
    conn.send_heartbeat()
    conn.data_to_send()
    assert conn.last_sent == clock.now


def test_silent_peer_follows_the_clock() -> None:
    clock = FakeClock()
    conn, broker = handshake(clock=clock, tune=(0, 131072, 10))
    assert not conn.peer_is_silent()
    clock.now += 15
    broker.send((0, pamqp_heartbeat.Heartbeat()))
    assert conn.last_received == clock.now
    clock.now += 19.5
    assert not conn.peer_is_silent()
    clock.now += 0.5
    assert conn.peer_is_silent()  # twice the interval without a byte
    assert conn.peer_is_silent(clock.now + 100)
    assert not conn.peer_is_silent(conn.last_received + 1)


def test_no_heartbeats_when_negotiated_off() -> None:
    clock = FakeClock()
    conn, _ = handshake(clock=clock, heartbeat=0, tune=(0, 131072, 0))
    clock.now += 10**6
    assert not conn.peer_is_silent()


# --------------------------------------------------------------------------
# Publishing


def test_publish_copies_a_mutable_body() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    body = bytearray(b"before")
    conn.basic_publish(channel, "", "q", body)
    body[:] = b"after!"
    assert broker.sent()[2][1].value == b"before"


def test_publish_returns_confirm_tags_in_confirm_mode() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    other = open_channel(conn, broker)
    assert [conn.basic_publish(channel, "", "q", b"x") for _ in range(3)] == [1, 2, 3]
    assert conn.basic_publish(other, "", "q", b"x") is None
    assert conn.unconfirmed(channel) == 3
    assert conn.unconfirmed(other) == 0


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        pytest.param(
            ("q", b"x", Properties(delivery_mode=3)),
            InvalidRequest,
            None,
            id="delivery_mode",
        ),
        pytest.param(("k" * 256, b"x"), InvalidRequest, None, id="routing_key"),
        pytest.param(
            ("q", b"x", Properties(headers={"a": object()})),
            InvalidRequest,
            None,
            id="header",
        ),
        pytest.param(("q", "text"), InvalidRequest, None, id="body"),
        pytest.param(
            ("q", b"x", Properties(headers={"h": "v" * 5000})),
            LocalProtocolError,
            "frame_max",
            id="header-frame",
        ),
    ],
)
def test_refused_publish_queues_nothing_and_takes_no_tag(
    args: tuple[Any, ...], error: type[Exception], match: str | None
) -> None:
    conn, broker = handshake(frame_max=4096)
    channel = open_channel(conn, broker, confirms=True)
    with pytest.raises(error, match=match):
        conn.basic_publish(channel, "", *args)
    assert conn.pending_output == 0
    assert conn.basic_publish(channel, "", "q", b"x") == 1


def test_publish_frames_for_many_exchanges_are_right() -> None:
    """The encoded-method cache never mixes up channels, exchanges or flags."""
    conn, broker = handshake()
    one = open_channel(conn, broker)
    two = open_channel(conn, broker)
    cases = [
        (channel, exchange, key, mandatory)
        for channel in (one, two)
        for exchange in ("a", "b")
        for key in ("x", "y")
        for mandatory in (False, True)
    ] * 2
    for channel, exchange, key, mandatory in cases:
        conn.basic_publish(channel, exchange, key, b"", mandatory=mandatory)
    publishes = [
        (ch, value.exchange, value.routing_key, value.mandatory)
        for ch, value in broker.sent()
        if isinstance(value, commands.Basic.Publish)
    ]
    assert publishes == cases
