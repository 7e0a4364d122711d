"""Tests of the sans-IO AMQP 0-9-1 client, over byte strings: no broker, no trio.

A :class:`Broker` plays the other side: it builds the broker's frames with
pamqp, feeds them to the :class:`Connection` under test and decodes what the
connection queued to send.
"""

from __future__ import annotations

import datetime
import decimal
import random
from typing import Any

import attrs
import pytest
from pamqp import (
    base as pamqp_base,
    body as pamqp_body,
    commands,
    frame as pamqp_frame,
    header as pamqp_header,
    heartbeat as pamqp_heartbeat,
)

from trioevents._exceptions import (
    BrokerUnavailable,
    InvalidRequest,
    LocalProtocolError,
    RemoteProtocolError,
)
from trioevents._message import NO_PROPERTIES, ExchangeType, Properties
from trioevents.amqp._events import (
    NEED_DATA,
    BasicCancelOk,
    BasicConsumeOk,
    BasicQosOk,
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    Confirmed,
    ConfirmSelectOk,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionTuned,
    ConnectionUnblocked,
    ConsumerCancelledByBroker,
    Delivered,
    EOFReceived,
    Event,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    HeartbeatReceived,
    Nacked,
    QueueBindOk,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    QueueUnbindOk,
    Reply,
    Returned,
)
from trioevents.amqp._protocol import (
    CLIENT_CAPABILITIES,
    PROTOCOL_HEADER,
    ChannelState,
    Connection,
    ConnectionState,
    properties_from_pamqp,
    properties_to_pamqp,
)

Frame = (
    pamqp_base.Frame
    | pamqp_header.ContentHeader
    | pamqp_body.ContentBody
    | pamqp_heartbeat.Heartbeat
)


# --------------------------------------------------------------------------
# The scripted fake broker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decode(data: bytes) -> list[tuple[int, Any]]:
    """Split bytes the client sent into ``(channel, pamqp frame)`` pairs."""
    frames = []
    while data:
        consumed, channel, value = pamqp_frame.unmarshal(data)
        frames.append((channel, value))
        data = data[consumed:]
    return frames


def encode(*frames: tuple[int, Frame]) -> bytes:
    return b"".join(pamqp_frame.marshal(value, channel) for channel, value in frames)


def content(
    channel: int,
    method: pamqp_base.Frame,
    body: bytes,
    properties: commands.Basic.Properties | None = None,
    *,
    chunk: int = 131072 - 8,
) -> bytes:
    """Encode a content-bearing method with its header and body frames."""
    frames: list[tuple[int, Frame]] = [
        (channel, method),
        (channel, pamqp_header.ContentHeader(0, len(body), properties)),
    ]
    frames += [
        (channel, pamqp_body.ContentBody(body[i : i + chunk]))
        for i in range(0, len(body), chunk)
    ]
    return encode(*frames)


def deliver(
    channel: int,
    delivery_tag: int,
    body: bytes = b"body",
    *,
    consumer_tag: str = "ctag",
    properties: commands.Basic.Properties | None = None,
    chunk: int = 131072 - 8,
) -> bytes:
    method = commands.Basic.Deliver(consumer_tag, delivery_tag, False, "ex", "rk")
    return content(channel, method, body, properties, chunk=chunk)


class Broker:
    """The broker's side of a :class:`Connection`, scripted by a test."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def feed(self, data: bytes) -> list[Event]:
        """Feed raw bytes and return every event they produce."""
        self.conn.receive_data(data)
        return self.events()

    def send(self, *frames: tuple[int, Frame]) -> list[Event]:
        """Feed pamqp frames and return every event they produce."""
        return self.feed(encode(*frames))

    def events(self) -> list[Event]:
        events: list[Event] = []
        while (event := self.conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, EOFReceived):
                break
        return events

    def sent(self) -> list[tuple[int, Any]]:
        """Decode everything the connection queued since the last call."""
        return decode(self.conn.data_to_send())

    def sent_methods(self) -> list[tuple[int, Any]]:
        return [
            (channel, value)
            for channel, value in self.sent()
            if isinstance(value, pamqp_base.Frame)
        ]

    def reply(self, channel: int, method: pamqp_base.Frame) -> Event:
        """Send one method and return the one event it produces."""
        (event,) = self.send((channel, method))
        return event


def state(conn: Connection) -> ConnectionState:
    return conn.state


def blocked(conn: Connection) -> str | None:
    return conn.blocked


def only(sent: list[tuple[int, Any]], channel: int) -> Any:
    """Return the one frame in *sent*, checking its channel."""
    [(sent_channel, value)] = sent
    assert sent_channel == channel
    return value


def start_frame(**kwargs: Any) -> commands.Connection.Start:
    kwargs.setdefault("server_properties", {"product": "RabbitMQ"})
    kwargs.setdefault("mechanisms", "AMQPLAIN PLAIN")
    kwargs.setdefault("locales", "en_US")
    return commands.Connection.Start(**kwargs)


def handshake(
    *, tune: tuple[int, int, int] = (2047, 131072, 60), **kwargs: Any
) -> tuple[Connection, Broker]:
    """Return an open connection and its broker."""
    conn = Connection(**kwargs)
    broker = Broker(conn)
    assert conn.data_to_send() == PROTOCOL_HEADER
    assert broker.send((0, start_frame())) == []
    broker.send((0, commands.Connection.Tune(*tune)))
    assert broker.send((0, commands.Connection.OpenOk())) == [
        ConnectionOpened({"product": "RabbitMQ"}, *_negotiated(conn))
    ]
    broker.sent()
    return conn, broker


def _negotiated(conn: Connection) -> tuple[int, int, int]:
    return conn.channel_max, conn.frame_max, conn.heartbeat


def open_channel(conn: Connection, broker: Broker, *, confirms: bool = False) -> int:
    channel = conn.open_channel()
    events = broker.send((channel, commands.Channel.OpenOk()))
    assert events == [ChannelOpened(channel)]
    if confirms:
        conn.confirm_select(channel)
        broker.send((channel, commands.Confirm.SelectOk()))
    broker.sent()
    return channel


def consume(conn: Connection, broker: Broker, channel: int, **kwargs: Any) -> None:
    conn.basic_consume(channel, "q", "ctag", **kwargs)
    assert broker.reply(channel, commands.Basic.ConsumeOk("ctag")) == BasicConsumeOk(
        channel, "ctag"
    )
    broker.sent()


# --------------------------------------------------------------------------
# Handshake


def test_protocol_header_is_queued_first() -> None:
    conn = Connection()
    assert state(conn) is ConnectionState.AWAIT_START
    assert conn.pending_output == 8
    assert conn.data_to_send() == b"AMQP\x00\x00\x09\x01"
    assert conn.data_to_send() == b""
    assert conn.next_event() is NEED_DATA


def test_handshake_plain_sends_credentials_capabilities_and_vhost() -> None:
    conn = Connection(username="u", password="p", virtual_host="vh", heartbeat=30)
    broker = Broker(conn)
    conn.data_to_send()
    assert broker.send((0, start_frame())) == []
    assert state(conn) is ConnectionState.AWAIT_TUNE
    [(channel, start_ok)] = broker.sent()
    assert channel == 0
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert start_ok.mechanism == "PLAIN"
    assert start_ok.response == "\0u\0p"
    assert start_ok.locale == "en_US"
    props = start_ok.client_properties
    capabilities = props["capabilities"]
    assert isinstance(capabilities, dict)
    assert props["product"] == "trioevents"
    assert props["capabilities"] == dict(CLIENT_CAPABILITIES)
    for capability in (
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "basic.nack",
        "authentication_failure_close",
    ):
        assert capabilities[capability] is True

    events = broker.send((0, commands.Connection.Tune(2047, 131072, 60)))
    assert events == [ConnectionTuned(2047, 131072, 30)]
    assert state(conn) is ConnectionState.AWAIT_OPEN_OK
    [(_, tune_ok), (_, open_)] = broker.sent()
    assert isinstance(tune_ok, commands.Connection.TuneOk)
    assert (tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat) == (
        2047,
        131072,
        30,
    )
    assert isinstance(open_, commands.Connection.Open)
    assert open_.virtual_host == "vh"

    events = broker.send((0, commands.Connection.OpenOk()))
    assert events == [ConnectionOpened({"product": "RabbitMQ"}, 2047, 131072, 30)]
    assert state(conn) is ConnectionState.OPEN
    assert conn.server_properties == {"product": "RabbitMQ"}


def test_handshake_external_sends_an_empty_response() -> None:
    conn = Connection(auth_mechanism="EXTERNAL")
    broker = Broker(conn)
    conn.data_to_send()
    broker.send((0, start_frame(mechanisms="PLAIN EXTERNAL")))
    [(_, start_ok)] = broker.sent()
    assert (start_ok.mechanism, start_ok.response) == ("EXTERNAL", "")


def test_missing_mechanism_raises_broker_unavailable() -> None:
    conn = Connection(auth_mechanism="EXTERNAL")
    conn.receive_data(encode((0, start_frame(mechanisms="AMQPLAIN PLAIN"))))
    with pytest.raises(BrokerUnavailable, match="EXTERNAL"):
        conn.next_event()
    assert state(conn) is ConnectionState.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_wrong_version_raises_broker_unavailable() -> None:
    conn = Connection()
    conn.receive_data(encode((0, start_frame(version_minor=8))))
    with pytest.raises(BrokerUnavailable, match="0-8"):
        conn.next_event()


def test_broker_protocol_header_means_version_refused() -> None:
    conn = Connection()
    conn.receive_data(b"AMQP\x00\x00\x09")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\x00")
    with pytest.raises(BrokerUnavailable, match="AMQP"):
        conn.next_event()


def test_locale_falls_back_to_the_first_offered() -> None:
    conn = Connection(locale="de_DE")
    broker = Broker(conn)
    conn.data_to_send()
    broker.send((0, start_frame(locales="fr_FR en_US")))
    [(_, start_ok)] = broker.sent()
    assert start_ok.locale == "fr_FR"


def test_client_properties_are_merged() -> None:
    conn = Connection(
        client_properties={
            "connection_name": "orders",
            "capabilities": {"consumer_priorities": True},
        }
    )
    broker = Broker(conn)
    conn.data_to_send()
    broker.send((0, start_frame()))
    [(_, start_ok)] = broker.sent()
    props = start_ok.client_properties
    assert props["connection_name"] == "orders"
    assert props["capabilities"]["consumer_priorities"] is True
    assert props["capabilities"]["publisher_confirms"] is True


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [(60, 0, 60), (0, 60, 0), (30, 60, 30), (60, 30, 30), (0, 0, 0)],
)
def test_heartbeat_negotiation(ours: int, theirs: int, expected: int) -> None:
    conn, _ = handshake(heartbeat=ours, tune=(2047, 131072, theirs))
    assert conn.heartbeat == expected


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [(131072, 0, 131072), (131072, 4096, 4096), (8192, 131072, 8192)],
)
def test_frame_max_negotiation(ours: int, theirs: int, expected: int) -> None:
    conn, _ = handshake(frame_max=ours, tune=(0, theirs, 0))
    assert conn.frame_max == expected


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [(2047, 0, 2047), (0, 100, 100), (0, 0, 65535), (10, 2047, 10)],
)
def test_channel_max_negotiation(ours: int, theirs: int, expected: int) -> None:
    conn, _ = handshake(channel_max=ours, tune=(theirs, 131072, 0))
    assert conn.channel_max == expected


def test_tiny_frame_max_from_broker_is_a_protocol_error() -> None:
    conn = Connection()
    conn.data_to_send()
    conn.receive_data(
        encode((0, start_frame()), (0, commands.Connection.Tune(0, 512, 0)))
    )
    with pytest.raises(RemoteProtocolError, match="501"):
        Broker(conn).events()


def test_login_refused_before_open() -> None:
    """With authentication_failure_close, a bad login is a Connection.Close."""
    conn = Connection(password="wrong")
    broker = Broker(conn)
    conn.data_to_send()
    broker.send((0, start_frame()))
    broker.sent()
    events = broker.send(
        (0, commands.Connection.Close(403, "ACCESS_REFUSED - Login", 0, 0))
    )
    assert events == [
        ConnectionClosed(403, "ACCESS_REFUSED - Login", 0, 0, by_broker=True)
    ]
    assert state(conn) is ConnectionState.CLOSED
    close_ok = only(broker.sent(), 0)
    assert isinstance(close_ok, commands.Connection.CloseOk)


def test_vhost_refused() -> None:
    conn = Connection(virtual_host="/nope")
    broker = Broker(conn)
    conn.data_to_send()
    broker.send((0, start_frame()), (0, commands.Connection.Tune(0, 131072, 0)))
    events = broker.send((0, commands.Connection.Close(530, "NOT_ALLOWED", 10, 40)))
    assert events == [ConnectionClosed(530, "NOT_ALLOWED", 10, 40, by_broker=True)]


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


def test_requests_before_open_raise() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError, match="not open"):
        conn.open_channel()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"heartbeat": -1},
        {"heartbeat": 70000},
        {"frame_max": 1000},
        {"channel_max": 70000},
        {"virtual_host": "v" * 128},
        {"auth_mechanism": "AMQPLAIN"},
    ],
)
def test_bad_connection_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        Connection(**kwargs)


# --------------------------------------------------------------------------
# Heartbeats


def test_heartbeat_frames_become_events() -> None:
    _, broker = handshake()
    assert broker.send((0, pamqp_heartbeat.Heartbeat())) == [HeartbeatReceived()]


def test_send_heartbeat_queues_a_heartbeat_frame() -> None:
    conn, _ = handshake()
    conn.send_heartbeat()
    assert conn.data_to_send() == b"\x08\x00\x00\x00\x00\x00\x00\xce"


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


def test_heartbeat_zero_turns_heartbeats_off_whatever_the_broker_proposes() -> None:
    # py-amqp's rule, so nameko's HEARTBEAT: 0 means the same here.
    clock = FakeClock()
    conn, _ = handshake(clock=clock, heartbeat=0, tune=(0, 131072, 60))
    assert conn.heartbeat == 0
    clock.now += 10**6
    assert not conn.peer_is_silent()


def test_heartbeat_on_a_channel_is_a_protocol_error() -> None:
    _, broker = handshake()
    with pytest.raises(RemoteProtocolError, match="501"):
        broker.feed(b"\x08\x00\x01\x00\x00\x00\x00\xce")


# --------------------------------------------------------------------------
# Connection close, blocked, end of stream


def test_client_close_handshake() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.close(320, "shutting down")
    assert state(conn) is ConnectionState.CLOSING
    close = only(broker.sent(), 0)
    assert isinstance(close, commands.Connection.Close)
    assert (close.reply_code, close.reply_text) == (320, "shutting down")
    with pytest.raises(LocalProtocolError):
        conn.basic_publish(channel, "", "q", b"x")
    with pytest.raises(LocalProtocolError):
        conn.close()
    # Everything but Close / Close-Ok is discarded while closing.
    assert broker.feed(deliver(channel, 1)) == []
    assert broker.send((channel, commands.Basic.Ack(1))) == []
    assert broker.send((0, commands.Connection.Blocked("x"))) == []
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
    # Stragglers after the close are ignored.
    assert broker.feed(deliver(channel, 1)) == []
    with pytest.raises(LocalProtocolError):
        conn.open_channel()


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


def test_blocked_and_unblocked() -> None:
    conn, broker = handshake()
    assert blocked(conn) is None
    assert broker.send((0, commands.Connection.Blocked("low on memory"))) == [
        ConnectionBlocked("low on memory")
    ]
    assert blocked(conn) == "low on memory"
    assert broker.send((0, commands.Connection.Unblocked())) == [ConnectionUnblocked()]
    assert blocked(conn) is None


def test_end_of_stream() -> None:
    conn, _ = handshake()
    conn.receive_data(b"")
    assert conn.next_event() == EOFReceived()
    assert conn.next_event() == EOFReceived()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_end_of_stream_inside_a_frame_is_a_protocol_error() -> None:
    conn, _ = handshake()
    conn.receive_data(encode((0, commands.Connection.Blocked("x")))[:-3])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        conn.next_event()


def test_events_after_eof_are_still_delivered() -> None:
    conn, broker = handshake()
    conn.receive_data(encode((0, commands.Connection.Close(320, "bye", 0, 0))))
    conn.receive_data(b"")
    assert broker.events() == [
        ConnectionClosed(320, "bye", 0, 0, by_broker=True),
        EOFReceived(),
    ]


# --------------------------------------------------------------------------
# Channels


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


def test_requests_may_be_pipelined_behind_channel_open() -> None:
    conn, broker = handshake()
    channel = conn.open_channel()
    conn.confirm_select(channel)
    conn.queue_declare(channel, "q")
    assert conn.basic_publish(channel, "", "q", b"x") == 1
    methods = [type(m) for _, m in broker.sent_methods()]
    assert methods == [
        commands.Channel.Open,
        commands.Confirm.Select,
        commands.Queue.Declare,
        commands.Basic.Publish,
    ]
    events = broker.send(
        (channel, commands.Channel.OpenOk()),
        (channel, commands.Confirm.SelectOk()),
        (channel, commands.Queue.DeclareOk("q", 0, 0)),
        (channel, commands.Basic.Ack(1)),
    )
    assert events == [
        ChannelOpened(channel),
        ConfirmSelectOk(channel),
        QueueDeclareOk(channel, "q", 0, 0),
        Confirmed(channel, (1,)),
    ]


def test_broker_channel_close_is_answered_and_frees_the_number() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.queue_declare(channel, "missing", passive=True)
    conn.basic_qos(channel, prefetch_count=1)
    broker.sent()
    events = broker.send(
        (channel, commands.Channel.Close(404, "NOT_FOUND - no queue", 50, 10))
    )
    assert events == [
        ChannelClosed(channel, 404, "NOT_FOUND - no queue", 50, 10, by_broker=True)
    ]
    [(ch, close_ok)] = broker.sent()
    assert ch == channel
    assert isinstance(close_ok, commands.Channel.CloseOk)
    assert conn.channel_state(channel) is None
    with pytest.raises(LocalProtocolError, match="not open"):
        conn.basic_publish(channel, "", "q", b"x")
    # A frame on the closed channel is the broker's fault.
    with pytest.raises(RemoteProtocolError, match="504"):
        broker.send((channel, commands.Basic.QosOk()))


def test_client_channel_close_keeps_the_number_until_close_ok() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    consume(conn, broker, channel)
    conn.close_channel(channel, 200, "bye")
    [(ch, close)] = broker.sent()
    assert (ch, type(close)) == (channel, commands.Channel.Close)
    assert conn.channel_state(channel) is ChannelState.CLOSING
    assert conn.open_channel() != channel
    with pytest.raises(LocalProtocolError, match="closing"):
        conn.queue_declare(channel, "q")
    with pytest.raises(LocalProtocolError, match="closing"):
        conn.close_channel(channel)
    # Frames still on their way are discarded.
    assert broker.feed(deliver(channel, 1, b"x" * 100, chunk=10)) == []
    assert broker.send((channel, commands.Basic.QosOk())) == []
    events = broker.send((channel, commands.Channel.CloseOk()))
    assert events == [ChannelClosed(channel, 200, "bye", 0, 0, by_broker=False)]
    assert conn.channel_state(channel) is None


def test_close_channel_in_the_middle_of_a_delivery() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    data = deliver(channel, 1, b"y" * 50, chunk=10)
    assert broker.feed(data[:40]) == []
    conn.close_channel(channel)
    assert broker.feed(data[40:]) == []
    assert broker.send((channel, commands.Channel.CloseOk())) == [
        ChannelClosed(channel, 200, "Normal shutdown", 0, 0, by_broker=False)
    ]


def test_simultaneous_channel_close() -> None:
    """Both sides close: each answers the other, the broker's reason is reported."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.queue_declare(channel, "missing", passive=True)
    conn.close_channel(channel)
    broker.sent()
    events = broker.send((channel, commands.Channel.Close(404, "NOT_FOUND", 50, 10)))
    assert events == [ChannelClosed(channel, 404, "NOT_FOUND", 50, 10, by_broker=True)]
    [(_, close_ok)] = broker.sent()
    assert isinstance(close_ok, commands.Channel.CloseOk)
    assert conn.channel_state(channel) is ChannelState.CLOSING  # ours is unanswered
    assert conn.open_channel() != channel
    assert broker.send((channel, commands.Channel.CloseOk())) == []
    assert conn.channel_state(channel) is None


def test_confirms_that_arrive_while_closing_are_reported() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    conn.basic_publish(channel, "", "q", b"1")
    conn.basic_publish(channel, "", "q", b"2")
    conn.close_channel(channel)
    assert broker.send((channel, commands.Basic.Ack(1))) == [Confirmed(channel, (1,))]
    assert conn.unconfirmed(channel) == 1
    assert broker.send((channel, commands.Channel.CloseOk())) == [
        ChannelClosed(channel, 200, "Normal shutdown", 0, 0, by_broker=False)
    ]
    assert conn.unconfirmed(channel) == 0


def test_flow_from_the_broker_is_answered_and_stops_publishing() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    assert broker.send((channel, commands.Channel.Flow(False))) == [
        ChannelFlow(channel, False)
    ]
    [(_, flow_ok)] = broker.sent()
    assert isinstance(flow_ok, commands.Channel.FlowOk)
    assert flow_ok.active is False
    with pytest.raises(LocalProtocolError, match="flow"):
        conn.basic_publish(channel, "", "q", b"x")
    assert broker.send((channel, commands.Channel.Flow(True))) == [
        ChannelFlow(channel, True)
    ]
    broker.sent()
    conn.basic_publish(channel, "", "q", b"x")


def test_requests_on_unknown_channels_raise() -> None:
    conn, broker = handshake()
    with pytest.raises(LocalProtocolError, match="channel 7 is not open"):
        conn.queue_declare(7, "q")
    with pytest.raises(LocalProtocolError):
        conn.close_channel(7)
    assert broker.sent() == []


# --------------------------------------------------------------------------
# Requests and replies


def _attrs(method: pamqp_base.Frame) -> dict[str, Any]:
    return dict(method)


REQUESTS: list[tuple[str, dict[str, Any], Any, dict[str, Any], Any, Any]] = [
    (
        "exchange_declare",
        {"exchange": "orders.events", "exchange_type": "topic", "durable": True},
        commands.Exchange.Declare,
        {"exchange": "orders.events", "exchange_type": "topic", "durable": True},
        commands.Exchange.DeclareOk(),
        ExchangeDeclareOk,
    ),
    (
        "exchange_declare",
        {"exchange": "x", "exchange_type": ExchangeType.FANOUT, "passive": True},
        commands.Exchange.Declare,
        {"exchange_type": "fanout", "passive": True},
        commands.Exchange.DeclareOk(),
        ExchangeDeclareOk,
    ),
    (
        "exchange_delete",
        {"exchange": "x", "if_unused": True},
        commands.Exchange.Delete,
        {"exchange": "x", "if_unused": True},
        commands.Exchange.DeleteOk(),
        ExchangeDeleteOk,
    ),
    (
        "queue_declare",
        {
            "queue": "evt-a-b--c.d",
            "durable": True,
            "arguments": {"x-dead-letter-exchange": "dlx", "x-message-ttl": 5000},
        },
        commands.Queue.Declare,
        {
            "queue": "evt-a-b--c.d",
            "durable": True,
            "exclusive": False,
            "arguments": {"x-dead-letter-exchange": "dlx", "x-message-ttl": 5000},
        },
        commands.Queue.DeclareOk("evt-a-b--c.d", 3, 1),
        QueueDeclareOk,
    ),
    (
        "queue_declare",
        {"queue": "q", "passive": True},
        commands.Queue.Declare,
        {"queue": "q", "passive": True},
        commands.Queue.DeclareOk("q", 0, 0),
        QueueDeclareOk,
    ),
    (
        "queue_declare",
        {"exclusive": True, "auto_delete": True},
        commands.Queue.Declare,
        {"queue": "", "exclusive": True, "auto_delete": True},
        commands.Queue.DeclareOk("amq.gen-abc", 0, 0),
        QueueDeclareOk,
    ),
    (
        "queue_bind",
        {"queue": "q", "exchange": "x", "routing_key": "a.*"},
        commands.Queue.Bind,
        {"queue": "q", "exchange": "x", "routing_key": "a.*"},
        commands.Queue.BindOk(),
        QueueBindOk,
    ),
    (
        "queue_unbind",
        {"queue": "q", "exchange": "x", "routing_key": "a.*"},
        commands.Queue.Unbind,
        {"queue": "q", "exchange": "x", "routing_key": "a.*"},
        commands.Queue.UnbindOk(),
        QueueUnbindOk,
    ),
    (
        "queue_purge",
        {"queue": "q"},
        commands.Queue.Purge,
        {"queue": "q"},
        commands.Queue.PurgeOk(7),
        QueuePurgeOk,
    ),
    (
        "queue_delete",
        {"queue": "q", "if_empty": True},
        commands.Queue.Delete,
        {"queue": "q", "if_empty": True, "if_unused": False},
        commands.Queue.DeleteOk(2),
        QueueDeleteOk,
    ),
    (
        "basic_qos",
        {"prefetch_count": 10},
        commands.Basic.Qos,
        {"prefetch_count": 10, "prefetch_size": 0, "global_": False},
        commands.Basic.QosOk(),
        BasicQosOk,
    ),
    (
        "basic_consume",
        {"queue": "q", "consumer_tag": "", "exclusive": True},
        commands.Basic.Consume,
        {"queue": "q", "consumer_tag": "", "exclusive": True, "no_ack": False},
        commands.Basic.ConsumeOk("amq.ctag-1"),
        BasicConsumeOk,
    ),
    (
        "basic_cancel",
        {"consumer_tag": "ctag"},
        commands.Basic.Cancel,
        {"consumer_tag": "ctag", "nowait": False},
        commands.Basic.CancelOk("ctag"),
        BasicCancelOk,
    ),
    (
        "confirm_select",
        {},
        commands.Confirm.Select,
        {"nowait": False},
        commands.Confirm.SelectOk(),
        ConfirmSelectOk,
    ),
]


@pytest.mark.parametrize(
    ("request_name", "kwargs", "sent_type", "sent_attrs", "reply", "event_type"),
    REQUESTS,
)
def test_request_round_trip(
    request_name: str,
    kwargs: dict[str, Any],
    sent_type: type[pamqp_base.Frame],
    sent_attrs: dict[str, Any],
    reply: pamqp_base.Frame,
    event_type: type[Reply],
) -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    getattr(conn, request_name)(channel, **kwargs)
    [(ch, sent)] = broker.sent()
    assert ch == channel
    assert type(sent) is sent_type
    assert {key: _attrs(sent)[key] for key in sent_attrs} == sent_attrs
    event = broker.reply(channel, reply)
    assert type(event) is event_type
    assert event.channel == channel
    fields = {key: value for key, value in _attrs(reply).items() if key in dir(event)}
    assert {key: getattr(event, key) for key in fields} == fields


def test_replies_follow_request_order() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.exchange_declare(channel, "x", "topic")
    conn.queue_declare(channel, "q")
    conn.queue_bind(channel, "q", "x", "k")
    conn.basic_qos(channel, prefetch_count=5)
    assert len(broker.sent()) == 4
    with pytest.raises(RemoteProtocolError, match="505"):
        broker.send((channel, commands.Queue.BindOk()))  # answers the wrong one


def test_unexpected_reply_queues_a_connection_close() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    with pytest.raises(RemoteProtocolError, match="UNEXPECTED_FRAME"):
        broker.send((channel, commands.Queue.DeclareOk("q", 0, 0)))
    assert state(conn) is ConnectionState.ERROR
    close = only(broker.sent(), 0)
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 505
    with pytest.raises(RemoteProtocolError, match="failed earlier"):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.queue_declare(channel, "q")


@pytest.mark.parametrize(
    ("request_name", "kwargs", "reply"),
    [
        ("exchange_declare", {"exchange": "x"}, commands.Exchange.DeclareOk()),
        ("exchange_delete", {"exchange": "x"}, commands.Exchange.DeleteOk()),
        ("queue_declare", {"queue": "q"}, commands.Queue.DeclareOk("q", 0, 0)),
        ("queue_bind", {"queue": "q", "exchange": "x"}, commands.Queue.BindOk()),
        ("queue_purge", {"queue": "q"}, commands.Queue.PurgeOk(0)),
        ("queue_delete", {"queue": "q"}, commands.Queue.DeleteOk(0)),
        ("basic_consume", {"queue": "q", "consumer_tag": "t"}, None),
        ("basic_cancel", {"consumer_tag": "t"}, commands.Basic.CancelOk("t")),
        ("confirm_select", {}, commands.Confirm.SelectOk()),
    ],
)
def test_nowait_requests_expect_no_reply(
    request_name: str, kwargs: dict[str, Any], reply: pamqp_base.Frame | None
) -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    getattr(conn, request_name)(channel, nowait=True, **kwargs)
    [(_, sent)] = broker.sent()
    assert sent.nowait is True
    if reply is not None:
        with pytest.raises(RemoteProtocolError):
            broker.send((channel, reply))


def test_server_named_queue_cannot_be_nowait() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    with pytest.raises(InvalidRequest):
        conn.queue_declare(channel, "", nowait=True)
    with pytest.raises(InvalidRequest):
        conn.basic_consume(channel, "q", nowait=True)
    assert broker.sent() == []


@pytest.mark.parametrize(
    ("request_name", "kwargs"),
    [
        ("exchange_declare", {"exchange": "x" * 256}),
        (
            "basic_publish",
            {"exchange": "\u00e9" * 128, "routing_key": "k", "body": b""},
        ),
        ("queue_declare", {"queue": "x" * 300}),
        ("queue_bind", {"queue": "q", "exchange": "x", "routing_key": "k" * 256}),
        ("queue_declare", {"queue": "q", "arguments": {"x-bad": object()}}),
        ("queue_declare", {"queue": "q", "arguments": {"k" * 256: 1}}),
        ("basic_qos", {"prefetch_count": 70000}),
    ],
)
def test_unencodable_requests_raise_invalid_request(
    request_name: str, kwargs: dict[str, Any]
) -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    with pytest.raises(InvalidRequest):
        getattr(conn, request_name)(channel, **kwargs)
    assert broker.sent() == []
    # Nothing is waiting for a reply either.
    with pytest.raises(RemoteProtocolError):
        broker.send((channel, commands.Basic.QosOk()))


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


def test_method_frame_larger_than_frame_max_is_refused() -> None:
    conn, broker = handshake(frame_max=4096)
    channel = open_channel(conn, broker)
    with pytest.raises(LocalProtocolError, match="frame_max"):
        conn.queue_declare(channel, "q", arguments={"x-big": "v" * 5000})
    assert broker.sent() == []


# --------------------------------------------------------------------------
# Publishing


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


def test_refused_publish_queues_nothing_and_takes_no_tag() -> None:
    conn, broker = handshake(frame_max=4096)
    channel = open_channel(conn, broker, confirms=True)
    with pytest.raises(InvalidRequest):
        conn.basic_publish(channel, "", "q", b"x", Properties(delivery_mode=3))
    with pytest.raises(InvalidRequest):
        conn.basic_publish(channel, "", "k" * 256, b"x")
    with pytest.raises(InvalidRequest):
        conn.basic_publish(channel, "", "q", b"x", Properties(headers={"a": object()}))
    with pytest.raises(InvalidRequest):
        conn.basic_publish(channel, "", "q", "text")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="frame_max"):
        conn.basic_publish(
            channel, "", "q", b"x", Properties(headers={"h": "v" * 5000})
        )
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


# --------------------------------------------------------------------------
# Publisher confirms


def _publish(conn: Connection, channel: int, count: int) -> list[int | None]:
    return [conn.basic_publish(channel, "", "q", b"x") for _ in range(count)]


def test_single_confirms_in_any_order() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    _publish(conn, channel, 3)
    assert broker.send((channel, commands.Basic.Ack(2))) == [Confirmed(channel, (2,))]
    assert broker.send((channel, commands.Basic.Nack(1, requeue=False))) == [
        Nacked(channel, (1,))
    ]
    assert broker.send((channel, commands.Basic.Ack(3))) == [Confirmed(channel, (3,))]
    assert conn.unconfirmed(channel) == 0


def test_multiple_ack_expands_to_the_unconfirmed_tags_only() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    _publish(conn, channel, 6)
    broker.send((channel, commands.Basic.Ack(2)))
    broker.send((channel, commands.Basic.Nack(4)))
    assert broker.send((channel, commands.Basic.Ack(5, multiple=True))) == [
        Confirmed(channel, (1, 3, 5))
    ]
    assert conn.unconfirmed(channel) == 1
    # A multiple ack that covers nothing new produces no event.
    assert broker.send((channel, commands.Basic.Ack(5, multiple=True))) == []
    assert broker.send((channel, commands.Basic.Ack(6, multiple=True))) == [
        Confirmed(channel, (6,))
    ]


def test_multiple_nack_expands_like_multiple_ack() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    _publish(conn, channel, 4)
    broker.send((channel, commands.Basic.Ack(3)))
    assert broker.send((channel, commands.Basic.Nack(4, multiple=True))) == [
        Nacked(channel, (1, 2, 4))
    ]
    assert conn.unconfirmed(channel) == 0


def test_many_confirms_in_flight() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    _publish(conn, channel, 10000)
    broker.sent()
    seen: list[int] = []
    for tag in range(100, 10001, 100):
        broker.send((channel, commands.Basic.Ack(tag - 50)))
        [event] = broker.send((channel, commands.Basic.Ack(tag, multiple=True)))
        assert isinstance(event, Confirmed)
        seen += [tag - 50, *event.delivery_tags]
    assert sorted(seen) == list(range(1, 10001))
    assert len(set(seen)) == 10000


@pytest.mark.parametrize(
    "method",
    [
        commands.Basic.Ack(4),
        commands.Basic.Ack(4, multiple=True),
        commands.Basic.Nack(0),
        commands.Basic.Ack(1),  # already confirmed below
    ],
)
def test_confirm_of_an_unknown_tag_is_a_protocol_error(
    method: pamqp_base.Frame,
) -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    _publish(conn, channel, 3)
    broker.send((channel, commands.Basic.Ack(1)))
    with pytest.raises(RemoteProtocolError, match="unknown publish tag"):
        broker.send((channel, method))


def test_confirm_on_a_channel_without_confirms_is_a_protocol_error() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.basic_publish(channel, "", "q", b"x")
    with pytest.raises(RemoteProtocolError, match="confirm mode"):
        broker.send((channel, commands.Basic.Ack(1)))


def test_returned_message_comes_before_its_confirm() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    props = Properties(message_id="m-1")
    tag = conn.basic_publish(channel, "x", "nowhere", b"lost", props, mandatory=True)
    method = commands.Basic.Return(312, "NO_ROUTE", "x", "nowhere")
    events = broker.feed(
        content(channel, method, b"lost", properties_to_pamqp(props))
        + encode((channel, commands.Basic.Ack(1)))
    )
    assert events == [
        Returned(channel, 312, "NO_ROUTE", "x", "nowhere", props, b"lost"),
        Confirmed(channel, (tag,)),  # type: ignore[arg-type]
    ]


# --------------------------------------------------------------------------
# Deliveries


def test_delivery_is_reassembled_from_body_frames() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    body = bytes(range(256)) * 40
    events = broker.feed(deliver(channel, 1, body, chunk=1000))
    assert events == [
        Delivered(channel, "ctag", 1, False, "ex", "rk", NO_PROPERTIES, body)
    ]


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


def test_deliveries_of_several_channels_interleave() -> None:
    conn, broker = handshake()
    one = open_channel(conn, broker)
    two = open_channel(conn, broker)
    consume(conn, broker, one)
    consume(conn, broker, two)
    first = decode(deliver(one, 1, b"a" * 25, chunk=10))
    second = decode(deliver(two, 1, b"b" * 15, chunk=10))
    order = [first[0], second[0], second[1], first[1], first[2], second[2]]
    order += [second[3], first[3], (0, pamqp_heartbeat.Heartbeat()), first[4]]
    events = broker.send(*order)
    assert events == [
        Delivered(two, "ctag", 1, False, "ex", "rk", NO_PROPERTIES, b"b" * 15),
        HeartbeatReceived(),
        Delivered(one, "ctag", 1, False, "ex", "rk", NO_PROPERTIES, b"a" * 25),
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


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (encode((1, pamqp_body.ContentBody(b"x"))), "without a header"),
        (encode((1, pamqp_header.ContentHeader(0, 1, None))), "without a method"),
        (
            deliver(1, 1, b"abc")[:-11] + encode((1, commands.Basic.QosOk())),
            "middle of a message",
        ),
        (
            deliver(1, 1, b"abc")[:-11] + encode((1, pamqp_body.ContentBody(b"abcd"))),
            "longer than",
        ),
        (
            encode(
                (1, commands.Basic.Deliver("ctag", 1, False, "", "")),
                (1, pamqp_header.ContentHeader(0, 1, None)),
                (1, pamqp_header.ContentHeader(0, 1, None)),
            ),
            "second content header",
        ),
        (encode((0, pamqp_body.ContentBody(b"x"))), "channel 0"),
        (encode((0, pamqp_header.ContentHeader(0, 1, None))), "channel 0"),
        (encode((1, commands.Basic.Publish())), "unexpected Basic.Publish"),
        (encode((0, commands.Channel.OpenOk())), "unexpected Channel.OpenOk"),
        (encode((0, commands.Connection.Start())), "unexpected Connection.Start"),
        (encode((0, commands.Connection.Secure("x"))), "Secure"),
        (encode((9, commands.Basic.QosOk())), "channel 9"),
        (b"\x01\x00\x01\x00\x00\x00\x04\xff\xff\xff\xff\xce", "502"),
        (b"\x01\x00\x01\x00\x00\x00\x01\x00\x00", "bad frame end"),
        (b"\x07\x00\x01\x00\x00\x00\x00\xce", "unknown frame type"),
        (b"\x03\x00\x01\x00\x02\x00\x00", "frame_max"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_broken_frames_are_remote_protocol_errors(data: bytes, match: str) -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    with pytest.raises(RemoteProtocolError, match=match):
        broker.feed(data)
    close = only(broker.sent(), 0)
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code in range(501, 506)


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
        _publish(conn, channel, 3)
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
# Broker-initiated cancel


def test_broker_cancel_is_reported_and_answered_if_asked() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    events = broker.send((channel, commands.Basic.Cancel("ctag", nowait=False)))
    assert events == [ConsumerCancelledByBroker(channel, "ctag")]
    [(ch, cancel_ok)] = broker.sent()
    assert ch == channel
    assert isinstance(cancel_ok, commands.Basic.CancelOk)
    assert cancel_ok.consumer_tag == "ctag"


def test_broker_cancel_with_nowait_is_not_answered() -> None:
    """RabbitMQ sends its consumer cancel notifications with nowait=True."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    events = broker.send((channel, commands.Basic.Cancel("ctag", nowait=True)))
    assert events == [ConsumerCancelledByBroker(channel, "ctag")]
    assert broker.sent() == []


# --------------------------------------------------------------------------
# Settling deliveries


def test_ack_nack_reject_frames() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    broker.feed(b"".join(deliver(channel, tag) for tag in range(1, 4)))
    conn.basic_ack(channel, 1)
    conn.basic_nack(channel, 2, requeue=False)
    conn.basic_reject(channel, 3)
    ack, nack, reject = (value for _, value in broker.sent())
    assert isinstance(ack, commands.Basic.Ack)
    assert (ack.delivery_tag, ack.multiple) == (1, False)
    assert isinstance(nack, commands.Basic.Nack)
    assert (nack.delivery_tag, nack.multiple, nack.requeue) == (2, False, False)
    assert isinstance(reject, commands.Basic.Reject)
    assert (reject.delivery_tag, reject.requeue) == (3, True)


def test_a_delivery_can_be_settled_only_once() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    broker.feed(deliver(channel, 1))
    conn.basic_ack(channel, 1)
    broker.sent()
    for settle in (conn.basic_ack, conn.basic_nack, conn.basic_reject):
        with pytest.raises(LocalProtocolError, match="delivery tag 1"):
            settle(channel, 1)
    with pytest.raises(LocalProtocolError):
        conn.basic_ack(channel, 99)
    assert broker.sent() == []


def test_multiple_ack_settles_everything_up_to_the_tag() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    broker.feed(b"".join(deliver(channel, tag) for tag in range(1, 6)))
    conn.basic_reject(channel, 2)
    conn.basic_ack(channel, 4, multiple=True)
    with pytest.raises(LocalProtocolError):
        conn.basic_ack(channel, 3)
    conn.basic_nack(channel, 0, multiple=True)  # 0: everything left, i.e. 5
    with pytest.raises(LocalProtocolError):
        conn.basic_ack(channel, 5)
    sent = [value for _, value in broker.sent()]
    assert [(type(m).__name__, m.delivery_tag) for m in sent] == [
        ("Reject", 2),
        ("Ack", 4),
        ("Nack", 0),
    ]


def test_no_ack_deliveries_cannot_be_acked() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel, no_ack=True)
    broker.feed(deliver(channel, 1))
    with pytest.raises(LocalProtocolError):
        conn.basic_ack(channel, 1)


def test_delivery_tags_die_with_their_channel() -> None:
    """A tag from before a channel was reopened must not ack a new delivery."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    broker.feed(deliver(channel, 1))
    broker.send((channel, commands.Channel.Close(406, "PRECONDITION_FAILED", 60, 80)))
    assert open_channel(conn, broker) == channel
    with pytest.raises(LocalProtocolError):
        conn.basic_ack(channel, 1)


# --------------------------------------------------------------------------
# Properties


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
