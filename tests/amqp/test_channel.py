"""One channel's state machine (:mod:`trioevents.amqp._channel`).

How the broker's frames on a channel become events (deliveries, returns,
publisher confirms, cancels, flow, closes) and what settling a delivery
requires.
"""

from __future__ import annotations

import pytest
from pamqp import (
    base as pamqp_base,
    body as pamqp_body,
    commands,
    header as pamqp_header,
    heartbeat as pamqp_heartbeat,
)

from trioevents._exceptions import LocalProtocolError, RemoteProtocolError
from trioevents._message import NO_PROPERTIES, Properties
from trioevents.amqp._codec import properties_to_pamqp
from trioevents.amqp._events import (
    ChannelClosed,
    ChannelFlow,
    Confirmed,
    ConsumerCancelledByBroker,
    Delivered,
    HeartbeatReceived,
    Nacked,
    Returned,
)
from trioevents.amqp._state import ChannelState

from .scripted_broker import (
    check_broker_broke_amqp,
    consume,
    content,
    decode,
    deliver,
    encode,
    handshake,
    open_channel,
    publish,
)

# --------------------------------------------------------------------------
# Closing


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


def test_frames_on_a_channel_the_broker_closed_are_errors() -> None:
    """A frame on a channel the broker closed is the broker's fault."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    broker.send((channel, commands.Channel.Close(404, "NOT_FOUND - no queue", 50, 10)))
    broker.sent()
    with pytest.raises(RemoteProtocolError, match="504"):
        broker.send((channel, commands.Basic.QosOk()))


def test_closing_channel_keeps_its_number_until_close_ok() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    consume(conn, broker, channel)
    conn.close_channel(channel, 200, "bye")
    [(ch, close)] = broker.sent()
    assert (ch, type(close)) == (channel, commands.Channel.Close)
    assert conn.channel_state(channel) is ChannelState.CLOSING
    assert conn.open_channel() != channel
    events = broker.send((channel, commands.Channel.CloseOk()))
    assert events == [ChannelClosed(channel, 200, "bye", 0, 0, by_broker=False)]
    assert conn.channel_state(channel) is None


def test_frames_on_a_closing_channel_are_discarded() -> None:
    """Frames still on their way when we close a channel are discarded."""
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    consume(conn, broker, channel)
    conn.close_channel(channel, 200, "bye")
    broker.sent()
    assert broker.feed(deliver(channel, 1, b"x" * 100, chunk=10)) == []
    assert broker.send((channel, commands.Basic.QosOk())) == []


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


# --------------------------------------------------------------------------
# Flow


def test_flow_from_the_broker_is_answered() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    assert broker.send((channel, commands.Channel.Flow(False))) == [
        ChannelFlow(channel, False)
    ]
    [(_, flow_ok)] = broker.sent()
    assert isinstance(flow_ok, commands.Channel.FlowOk)
    assert flow_ok.active is False


def test_no_publishing_while_the_broker_stopped_the_flow() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    broker.send((channel, commands.Channel.Flow(False)))
    with pytest.raises(LocalProtocolError, match="flow"):
        conn.basic_publish(channel, "", "q", b"x")
    assert broker.send((channel, commands.Channel.Flow(True))) == [
        ChannelFlow(channel, True)
    ]
    broker.sent()
    conn.basic_publish(channel, "", "q", b"x")


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
        (encode((1, commands.Basic.Publish())), "unexpected Basic.Publish"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_broken_channel_traffic_is_a_remote_protocol_error(
    data: bytes, match: str
) -> None:
    check_broker_broke_amqp(data, match)


# --------------------------------------------------------------------------
# Publisher confirms


def test_single_confirms_in_any_order() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    publish(conn, channel, 3)
    assert broker.send((channel, commands.Basic.Ack(2))) == [Confirmed(channel, (2,))]
    assert broker.send((channel, commands.Basic.Nack(1, requeue=False))) == [
        Nacked(channel, (1,))
    ]
    assert broker.send((channel, commands.Basic.Ack(3))) == [Confirmed(channel, (3,))]
    assert conn.unconfirmed(channel) == 0


def test_multiple_ack_expands_to_the_unconfirmed_tags_only() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    publish(conn, channel, 6)
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
    publish(conn, channel, 4)
    broker.send((channel, commands.Basic.Ack(3)))
    assert broker.send((channel, commands.Basic.Nack(4, multiple=True))) == [
        Nacked(channel, (1, 2, 4))
    ]
    assert conn.unconfirmed(channel) == 0


def test_many_confirms_in_flight() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker, confirms=True)
    publish(conn, channel, 10000)
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
    publish(conn, channel, 3)
    broker.send((channel, commands.Basic.Ack(1)))
    with pytest.raises(RemoteProtocolError, match="unknown publish tag"):
        broker.send((channel, method))


def test_confirm_on_a_channel_without_confirms_is_a_protocol_error() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.basic_publish(channel, "", "q", b"x")
    with pytest.raises(RemoteProtocolError, match="confirm mode"):
        broker.send((channel, commands.Basic.Ack(1)))


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
