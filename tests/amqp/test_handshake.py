"""The opening handshake (:mod:`trioevents.amqp._handshake`): Start, Tune, Open."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import commands

from trioevents._exceptions import (
    BrokerUnavailable,
    InvalidRequest,
    RemoteProtocolError,
)
from trioevents.amqp._events import ConnectionClosed, ConnectionOpened, ConnectionTuned
from trioevents.amqp._handshake import CLIENT_CAPABILITIES
from trioevents.amqp._protocol import Connection
from trioevents.amqp._state import ConnectionState

from .scripted_broker import (
    Broker,
    FakeClock,
    encode,
    handshake,
    only,
    start_frame,
    state,
)


def test_start_ok_carries_plain_credentials_and_capabilities() -> None:
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


def test_tune_ok_carries_the_negotiated_limits_and_open_the_virtual_host() -> None:
    conn = Connection(virtual_host="vh", heartbeat=30)
    broker = Broker(conn)
    conn.data_to_send()
    broker.send((0, start_frame()))
    broker.sent()
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


def test_open_ok_opens_the_connection() -> None:
    conn = Connection(heartbeat=30)
    broker = Broker(conn)
    conn.data_to_send()
    broker.send((0, start_frame()), (0, commands.Connection.Tune(2047, 131072, 60)))
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


def test_heartbeat_zero_turns_heartbeats_off_whatever_the_broker_proposes() -> None:
    # py-amqp's rule, so nameko's HEARTBEAT: 0 means the same here.
    clock = FakeClock()
    conn, _ = handshake(clock=clock, heartbeat=0, tune=(0, 131072, 60))
    assert conn.heartbeat == 0
    clock.now += 10**6
    assert not conn.peer_is_silent()


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
