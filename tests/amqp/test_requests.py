"""Synchronous channel requests: the request table and its one path.

Covers :mod:`trioevents.amqp._requests` and the request table in
:mod:`trioevents.amqp._state`: what each request sends, the reply event it
gets, in which states it may be made, ``nowait`` and arguments that cannot be
encoded.
"""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import base as pamqp_base, commands

from trioevents._exceptions import (
    InvalidRequest,
    LocalProtocolError,
    RemoteProtocolError,
)
from trioevents._message import ExchangeType
from trioevents.amqp._events import (
    BasicCancelOk,
    BasicConsumeOk,
    BasicQosOk,
    ChannelOpened,
    Confirmed,
    ConfirmSelectOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    QueueBindOk,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    QueueUnbindOk,
    Reply,
)
from trioevents.amqp._protocol import Connection

from .scripted_broker import handshake, open_channel


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


@pytest.mark.parametrize(
    ("request_name", "kwargs"),
    [
        ("queue_declare", {"queue": ""}),
        ("basic_consume", {"queue": "q"}),
    ],
)
def test_nowait_refuses_a_name_the_broker_would_choose(
    request_name: str, kwargs: dict[str, Any]
) -> None:
    """The name would never be known: a server-named queue, a broker-chosen tag."""
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    with pytest.raises(InvalidRequest):
        getattr(conn, request_name)(channel, nowait=True, **kwargs)
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


def test_requests_before_open_raise() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError, match="not open"):
        conn.open_channel()


def test_requests_on_unknown_channels_raise() -> None:
    conn, broker = handshake()
    with pytest.raises(LocalProtocolError, match="channel 7 is not open"):
        conn.queue_declare(7, "q")
    with pytest.raises(LocalProtocolError):
        conn.close_channel(7)
    assert broker.sent() == []


def test_requests_on_a_closing_channel_are_refused() -> None:
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    conn.close_channel(channel)
    with pytest.raises(LocalProtocolError, match="closing"):
        conn.queue_declare(channel, "q")
    with pytest.raises(LocalProtocolError, match="closing"):
        conn.close_channel(channel)
