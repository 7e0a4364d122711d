"""A scripted fake broker for the sans-IO protocol tests: bytes in, bytes out.

A :class:`Broker` plays the other side of a :class:`Connection`: it builds the
broker's frames with pamqp, feeds them to the connection under test and
decodes what the connection queued to send. No socket, no trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pamqp import (
    base as pamqp_base,
    body as pamqp_body,
    commands,
    frame as pamqp_frame,
    header as pamqp_header,
    heartbeat as pamqp_heartbeat,
)

from trioevents._exceptions import RemoteProtocolError
from trioevents.amqp._events import (
    NEED_DATA,
    BasicConsumeOk,
    ChannelOpened,
    ConnectionOpened,
    EOFReceived,
    Event,
)
from trioevents.amqp._frames import PROTOCOL_HEADER
from trioevents.amqp._protocol import Connection

if TYPE_CHECKING:
    from trioevents.amqp._state import ConnectionState

Frame = (
    pamqp_base.Frame
    | pamqp_header.ContentHeader
    | pamqp_body.ContentBody
    | pamqp_heartbeat.Heartbeat
)


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
    """Return ``conn.state`` (a call, so that mypy does not narrow it for good)."""
    return conn.state


def blocked(conn: Connection) -> str | None:
    """Return ``conn.blocked`` (a call, so that mypy does not narrow it for good)."""
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


def publish(conn: Connection, channel: int, count: int) -> list[int | None]:
    """Publish *count* small messages; return their confirm tags."""
    return [conn.basic_publish(channel, "", "q", b"x") for _ in range(count)]


def check_broker_broke_amqp(data: bytes, match: str) -> None:
    """Feed *data* to a consuming connection: it must fail as the broker's fault.

    That is a :class:`~trioevents.RemoteProtocolError` matching *match*, with a
    ``Connection.Close`` carrying an AMQP error code (501-505) queued to send.
    """
    conn, broker = handshake()
    channel = open_channel(conn, broker)
    consume(conn, broker, channel)
    with pytest.raises(RemoteProtocolError, match=match):
        broker.feed(data)
    close = only(broker.sent(), 0)
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code in range(501, 506)
