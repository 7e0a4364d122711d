"""Events produced by the sans-IO AMQP 0-9-1 client in :mod:`._protocol`.

:meth:`Connection.next_event <trioevents.amqp._protocol.Connection.next_event>`
returns one of these, or :data:`NEED_DATA` when it needs more bytes.

The events form three families:

* connection events (:class:`ConnectionTuned`, :class:`ConnectionOpened`,
  :class:`ConnectionClosed`, :class:`ConnectionBlocked`,
  :class:`ConnectionUnblocked`, :class:`HeartbeatReceived`, :class:`EOFReceived`);
* :class:`Reply` events, each the broker's answer to one synchronous request
  made on a channel. Replies on a channel always come in the order the
  requests were made, so an I/O layer can keep one FIFO of waiters per channel
  and hand every :class:`Reply` to the oldest one;
* other :class:`ChannelEvent` events the broker sends on its own
  (:class:`Delivered`, :class:`Returned`, :class:`Confirmed`, :class:`Nacked`,
  :class:`ConsumerCancelledByBroker`, :class:`ChannelFlow` and
  :class:`ChannelClosed`).

Events carry the broker's reply codes and texts as they are; turning them into
exceptions (e.g. with :meth:`~trioevents.ChannelClosedByBroker.from_reply`) is
left to the I/O layer.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._message import Properties

__all__ = [
    "NEED_DATA",
    "BasicCancelOk",
    "BasicConsumeOk",
    "BasicQosOk",
    "ChannelClosed",
    "ChannelEvent",
    "ChannelFlow",
    "ChannelOpened",
    "ConfirmSelectOk",
    "Confirmed",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionTuned",
    "ConnectionUnblocked",
    "ConsumerCancelledByBroker",
    "Delivered",
    "EOFReceived",
    "Event",
    "ExchangeDeclareOk",
    "ExchangeDeleteOk",
    "HeartbeatReceived",
    "Nacked",
    "NeedData",
    "QueueBindOk",
    "QueueDeclareOk",
    "QueueDeleteOk",
    "QueuePurgeOk",
    "QueueUnbindOk",
    "Reply",
    "Returned",
]


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


#: Returned by ``next_event()`` when no whole event is buffered yet: feed more
#: bytes with ``receive_data()``.
NEED_DATA: Final = NeedData.NEED_DATA


@attrs.frozen
class Event:
    """Base class of every protocol event."""


# --------------------------------------------------------------------------
# Connection events


@final
@attrs.frozen
class ConnectionTuned(Event):
    """The broker's tuning was accepted; ``Tune-Ok`` and ``Open`` are queued.

    Heartbeats run from here on: the I/O layer should start sending and
    checking them now, not only after :class:`ConnectionOpened`.

    Attributes
    ----------
    channel_max
        The highest usable channel number.
    frame_max
        The largest frame either side may send, in bytes.
    heartbeat
        The heartbeat interval in seconds; ``0`` means no heartbeats.
    """

    channel_max: int
    frame_max: int
    heartbeat: int


@final
@attrs.frozen
class ConnectionOpened(Event):
    """The broker opened the virtual host: the connection is ready for channels.

    Attributes
    ----------
    server_properties
        What the broker said about itself in ``Connection.Start`` (product,
        version, ``capabilities``, ...).
    channel_max, frame_max, heartbeat
        The tuned values, as in :class:`ConnectionTuned`.
    """

    server_properties: Mapping[str, Any]
    channel_max: int
    frame_max: int
    heartbeat: int


@final
@attrs.frozen
class ConnectionClosed(Event):
    """The connection was closed by an AMQP close handshake.

    If the broker closed it (``by_broker``), ``Close-Ok`` is already queued
    in ``data_to_send()``: send it, then close the socket. Otherwise this
    answers our own ``close()`` and the socket may be closed at once. A close
    before :class:`ConnectionOpened` means the broker refused us (e.g.
    ``403 ACCESS_REFUSED`` for bad credentials, ``530 NOT_ALLOWED`` for a
    missing virtual host).

    Attributes
    ----------
    reply_code, reply_text
        Why: ``200`` for a normal close, otherwise an AMQP error code such as
        ``320 CONNECTION_FORCED`` or ``501 FRAME_ERROR``.
    class_id, method_id
        The method that caused the close, or ``0``.
    by_broker
        Whether the broker started the close (``Connection.Close`` received)
        rather than answering ours (``Connection.Close-Ok`` received).
    """

    reply_code: int
    reply_text: str
    class_id: int
    method_id: int
    by_broker: bool


@final
@attrs.frozen
class ConnectionBlocked(Event):
    """The broker stopped reading publishes (``Connection.Blocked``).

    Attributes
    ----------
    reason
        E.g. ``"low on memory"``.
    """

    reason: str


@final
@attrs.frozen
class ConnectionUnblocked(Event):
    """The broker accepts publishes again (``Connection.Unblocked``)."""


@final
@attrs.frozen
class HeartbeatReceived(Event):
    """The broker sent a heartbeat frame.

    Nothing needs to be done: every received byte already refreshes
    ``last_received``.
    """


@final
@attrs.frozen
class EOFReceived(Event):
    """The peer closed its end of the stream (``receive_data(b"")``).

    Returned again on every later ``next_event()`` call. Before a
    :class:`ConnectionClosed` it means the connection was lost.
    """


# --------------------------------------------------------------------------
# Channel events


@attrs.frozen
class ChannelEvent(Event):
    """Base class of the events that belong to one channel.

    Attributes
    ----------
    channel
        The channel number.
    """

    channel: int


@attrs.frozen
class Reply(ChannelEvent):
    """Base class of the broker's answers to synchronous requests.

    Each answers the oldest request on :attr:`channel` that still awaits a
    reply; requests made with ``nowait=True`` get none.
    """


@final
@attrs.frozen
class ChannelOpened(Reply):
    """The channel is open (``Channel.Open-Ok``)."""


@final
@attrs.frozen
class ChannelClosed(ChannelEvent):
    """The channel is closed; every request still waiting on it has failed.

    Emitted once per channel. If the broker closed it (``by_broker``),
    ``Channel.Close-Ok`` is already queued to be sent and the channel number
    can be opened again. Messages published on the channel that are not yet
    confirmed never will be.

    Attributes
    ----------
    reply_code, reply_text
        Why, e.g. ``404`` and ``"NOT_FOUND - no queue 'q' in vhost '/'"``.
        :meth:`~trioevents.ChannelClosedByBroker.from_reply` turns them into
        an exception; the protocol leaves that to the I/O layer.
    class_id, method_id
        The method that caused the close, or ``0``.
    by_broker
        Whether the broker started the close rather than answering our own
        ``close_channel()``.
    """

    reply_code: int
    reply_text: str
    class_id: int
    method_id: int
    by_broker: bool


@final
@attrs.frozen
class ChannelFlow(ChannelEvent):
    """The broker asked to stop (``active=False``) or resume content on the channel.

    ``Channel.Flow-Ok`` is already queued. While the flow is inactive,
    ``basic_publish()`` on the channel raises
    :class:`~trioevents.LocalProtocolError`.

    Attributes
    ----------
    active
        Whether publishing may go on.
    """

    active: bool


@final
@attrs.frozen
class ExchangeDeclareOk(Reply):
    """Answer to ``exchange_declare()``."""


@final
@attrs.frozen
class ExchangeDeleteOk(Reply):
    """Answer to ``exchange_delete()``."""


@final
@attrs.frozen
class QueueDeclareOk(Reply):
    """Answer to ``queue_declare()``.

    Attributes
    ----------
    queue
        The queue's name; the broker's choice when the declare asked for ``""``.
    message_count
        Messages ready in the queue.
    consumer_count
        Active consumers of the queue.
    """

    queue: str
    message_count: int
    consumer_count: int


@final
@attrs.frozen
class QueueBindOk(Reply):
    """Answer to ``queue_bind()``."""


@final
@attrs.frozen
class QueueUnbindOk(Reply):
    """Answer to ``queue_unbind()``."""


@final
@attrs.frozen
class QueuePurgeOk(Reply):
    """Answer to ``queue_purge()``.

    Attributes
    ----------
    message_count
        How many messages were purged.
    """

    message_count: int


@final
@attrs.frozen
class QueueDeleteOk(Reply):
    """Answer to ``queue_delete()``.

    Attributes
    ----------
    message_count
        How many messages were deleted with the queue.
    """

    message_count: int


@final
@attrs.frozen
class BasicQosOk(Reply):
    """Answer to ``basic_qos()``."""


@final
@attrs.frozen
class BasicConsumeOk(Reply):
    """Answer to ``basic_consume()``: deliveries may follow.

    Attributes
    ----------
    consumer_tag
        The consumer's tag; the broker's choice when the request asked for ``""``.
    """

    consumer_tag: str


@final
@attrs.frozen
class BasicCancelOk(Reply):
    """Answer to ``basic_cancel()``: no more deliveries for the consumer.

    Attributes
    ----------
    consumer_tag
        The cancelled consumer's tag.
    """

    consumer_tag: str


@final
@attrs.frozen
class ConfirmSelectOk(Reply):
    """Answer to ``confirm_select()``.

    The channel counts publishes for confirms from the moment the request was
    made, not from this answer.
    """


@final
@attrs.frozen
class Delivered(ChannelEvent):
    """A whole message delivered to a consumer (``Basic.Deliver`` with content).

    Attributes
    ----------
    consumer_tag
        The consumer the message is for.
    delivery_tag
        The tag to ack, nack or reject the message with on this channel.
    redelivered
        Whether the message was delivered before and not acked.
    exchange, routing_key
        Where the message was published.
    properties
        The message's properties, as far as they could be read.
    body
        The whole body, reassembled from its body frames (empty if dropped).
    problem
        Why the message could not be read as it was sent (properties that do
        not decode, a body over the size limit), or ``None``.
    body_dropped
        The body was larger than the limit and was not kept.
    """

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: Properties
    body: bytes
    problem: str | None = attrs.field(default=None, kw_only=True)
    body_dropped: bool = attrs.field(default=False, kw_only=True)


@final
@attrs.frozen
class Returned(ChannelEvent):
    """A published message came back unroutable (``Basic.Return`` with content).

    On a channel in confirm mode, the broker sends the return before the
    :class:`Confirmed` for the same message. AMQP does not say which publish
    the return belongs to; correlate it through the message itself (e.g. its
    ``message_id``).

    Attributes
    ----------
    reply_code, reply_text
        Why, e.g. ``312`` and ``"NO_ROUTE"``.
    exchange, routing_key
        Where the message was published.
    properties, body
        The message as published.
    """

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    properties: Properties
    body: bytes


@final
@attrs.frozen
class Confirmed(ChannelEvent):
    """The broker took responsibility for published messages (``Basic.Ack``).

    ``multiple=True`` is already expanded: one event per ``Basic.Ack`` frame,
    listing exactly the tags that were still unconfirmed and are confirmed by
    it. Each tag is reported once, by either a :class:`Confirmed` or a
    :class:`Nacked`.

    Attributes
    ----------
    delivery_tags
        The confirmed publish tags (as returned by ``basic_publish()``), in
        ascending order, never empty.
    """

    delivery_tags: tuple[int, ...]


@final
@attrs.frozen
class Nacked(ChannelEvent):
    """The broker refused responsibility for published messages (``Basic.Nack``).

    Expanded like :class:`Confirmed`.

    Attributes
    ----------
    delivery_tags
        The refused publish tags, in ascending order, never empty.
    """

    delivery_tags: tuple[int, ...]


@final
@attrs.frozen
class ConsumerCancelledByBroker(ChannelEvent):
    """The broker cancelled a consumer, e.g. because its queue was deleted.

    ``Basic.Cancel-Ok`` is already queued if the broker asked for one.

    Attributes
    ----------
    consumer_tag
        The cancelled consumer's tag.
    """

    consumer_tag: str
