"""Values that cross the transport seam: exchange types, properties, deliveries."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, final

import attrs

from ._exceptions import AlreadySettled

if TYPE_CHECKING:
    import datetime

__all__ = [
    "Defect",
    "Delivery",
    "ExchangeType",
    "Properties",
    "QueueDeclared",
    "Settlement",
]


class ExchangeType(enum.Enum):
    """The exchange types every transport supports."""

    DIRECT = "direct"
    FANOUT = "fanout"
    TOPIC = "topic"


@final
@attrs.frozen(kw_only=True)
class Properties:
    """The AMQP 0-9-1 basic properties of a message.

    Every field is optional; ``None`` means "not set", as on the wire.

    Attributes
    ----------
    content_type
        MIME type of the body, e.g. ``"application/json"``.
    content_encoding
        Encoding of the body, e.g. ``"utf-8"``.
    headers
        The application headers (an AMQP field table).
    delivery_mode
        ``1`` transient, ``2`` persistent.
    priority
        0 to 255.
    correlation_id, reply_to, message_id, type, user_id, app_id
        Short strings, as in AMQP.
    expiration
        Per-message TTL in milliseconds, as a decimal string (``"5000"``).
    timestamp
        The message's timestamp (whole seconds on the wire).
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: Mapping[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime.datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None


#: The properties of a message published without any.
NO_PROPERTIES = Properties()


@final
@attrs.frozen
class QueueDeclared:
    """What the broker answered to a queue declare.

    Attributes
    ----------
    name
        The queue's name; the server's choice when the declare asked for ``""``.
    message_count
        Messages ready in the queue.
    consumer_count
        Consumers of the queue.
    """

    name: str
    message_count: int
    consumer_count: int


class Settlement(enum.Enum):
    """How a delivery was settled."""

    ACK = "ack"
    NACK = "nack"
    REJECT = "reject"


@final
@attrs.frozen
class Defect:
    """Why a delivery could not be read as it was sent.

    The RabbitMQ transport delivers such a message rather than break the
    connection on it; event handlers dead-letter it (or, when its body was not
    kept, reject it without requeue) with the reason.

    Attributes
    ----------
    reason
        What is wrong, e.g. ``"the message's properties are not valid:
        message_id is not valid UTF-8"``.
    body_dropped
        The body was larger than ``MAX_MESSAGE_SIZE`` and was not read: the
        delivery's body is empty.
    """

    reason: str
    body_dropped: bool = False


#: Signature of the transport's settle function: ``(delivery, how, requeue)``.
Settler = Callable[["Delivery", Settlement, bool], Awaitable[None]]


@final
@attrs.define(eq=False, kw_only=True)
class Delivery:
    """A message handed to a consumer, to be settled exactly once.

    :meth:`ack`, :meth:`nack` and :meth:`reject` are not cancellation points:
    once called, they settle the delivery (or raise a transport error) and only
    then yield to the scheduler, so a cancellation around them can never leave
    a delivery marked settled that the broker was not told about.

    Attributes
    ----------
    delivery_tag
        The broker's tag for this delivery, unique per consumer channel.
    redelivered
        Whether the message was delivered before and not acked.
    exchange, routing_key
        Where the message was published.
    properties
        The message's :class:`Properties`.
    body
        The message body.
    consumer_tag
        The tag of the consumer the message was delivered to.
    defect
        Why the message could not be read as sent (see :class:`Defect`), or
        ``None`` for a sound message.
    """

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: Properties
    body: bytes
    consumer_tag: str
    _settler: Settler = attrs.field(repr=False, alias="settler")
    defect: Defect | None = None
    _settled: Settlement | None = attrs.field(default=None, init=False, repr=False)

    @property
    def settled(self) -> Settlement | None:
        """How the delivery was settled, or ``None`` while it is not."""
        return self._settled

    def _claim(self, how: Settlement) -> None:
        if self._settled is not None:
            raise AlreadySettled(
                f"delivery {self.delivery_tag} of consumer {self.consumer_tag!r} was "
                f"already settled ({self._settled.value}); cannot {how.value} it"
            )
        self._settled = how

    async def ack(self) -> None:
        """Acknowledge the delivery: the broker forgets the message.

        Raises
        ------
        AlreadySettled
            The delivery was settled before.
        """
        self._claim(Settlement.ACK)
        await self._settler(self, Settlement.ACK, False)

    async def nack(self, *, requeue: bool = True) -> None:
        """Refuse the delivery (``basic.nack``).

        Parameters
        ----------
        requeue
            Return the message to its queue (at its original position, with
            ``redelivered=True``); if false it is dead-lettered or dropped.

        Raises
        ------
        AlreadySettled
            The delivery was settled before.
        """
        self._claim(Settlement.NACK)
        await self._settler(self, Settlement.NACK, requeue)

    async def reject(self, *, requeue: bool = True) -> None:
        """Refuse the delivery (``basic.reject``); see :meth:`nack`.

        Raises
        ------
        AlreadySettled
            The delivery was settled before.
        """
        self._claim(Settlement.REJECT)
        await self._settler(self, Settlement.REJECT, requeue)
