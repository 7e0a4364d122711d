"""The broker topology of nameko's events: every exchange and queue name and flag.

Names and flags are nameko 2.14's (``docs/amqp.rst``), so trioevents and nameko
services share exchanges and queues:

* each source service publishes to the durable topic exchange
  ``{service}.events`` (:func:`event_exchange_name`), with the event type as
  routing key;
* each handler consumes a queue named after its :class:`HandlerType`
  (:func:`handler_queue`);
* a handler with retries or dead letters also gets ``{queue}.retry.<ms>`` delay
  queues (:func:`retry_queue`) and the dead-letter queue ``{queue}.dlq``
  (:func:`dead_letter_queue`), declared when first needed (for a quorum queue,
  with it: see below).

=================================  ======================================================  =======  ===========  =========
handler type, reliable_delivery    queue name                                              durable  auto_delete  exclusive
=================================  ======================================================  =======  ===========  =========
SERVICE_POOL, True (default)       ``evt-{src}-{event_type}--{service}.{method}``           yes      no           no
SERVICE_POOL, False                same                                                    yes      yes          no
SINGLETON, True                    ``evt-{src}-{event_type}``                              yes      no           no
SINGLETON, False                   same                                                    yes      yes          no
BROADCAST, False                   ``evt-{src}-{event_type}--{service}.{method}-{id}``     yes      yes          yes
BROADCAST, True                    same (``id``: an overridden ``broadcast_identifier``)   yes      no           no
=================================  ======================================================  =======  ===========  =========

Those are classic queues, as nameko declares them. The queues of a reliable
handler may be quorum queues instead (:class:`QueueType`; config ``QUEUE_TYPE``
or the handler's ``queue_type=``), replicated across a RabbitMQ cluster; the
handler queue, its retry queues and its dead-letter queue then all are, so none
of them is lost with a node. Their arguments (measured on RabbitMQ 3.10.8):

* the handler queue: ``x-queue-type=quorum``, ``x-delivery-limit`` (config
  ``QUORUM_DELIVERY_LIMIT``: past that many redeliveries the broker dead-letters
  the message, a backstop even for ``requeue_on_error``), and its dead-letter
  queue as dead-letter target (``x-dead-letter-exchange=""``,
  ``x-dead-letter-routing-key={queue}.dlq``);
* a retry queue: ``x-queue-type=quorum`` besides its TTL and dead-letter target;
* the dead-letter queue: ``x-queue-type=quorum``.

A quorum queue that dead-letters does so at least once
(``x-dead-letter-strategy=at-least-once``, which needs ``x-overflow=reject-publish``):
a retry, or a message past its delivery limit, waits in its queue until its
target took it, rather than being dropped while a node is down. The dead-letter
and retry queues are declared right after the handler queue, before it is
consumed, so that the backstop has its target and a queue of another type stops
the host at start (:func:`handler_topology`).
"""

from __future__ import annotations

import enum
import logging
import re
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from .._exceptions import ChannelClosedByBroker, EventHandlerConfigurationError
from .._message import ExchangeType

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .. import abc
    from .._exceptions import PreconditionFailed

__all__ = [
    "BROADCAST",
    "DLQ_SUFFIX",
    "QUORUM_NEEDS_RELIABLE_DELIVERY",
    "RETRY_INFIX",
    "SERVICE_POOL",
    "SINGLETON",
    "HandlerType",
    "QueueSpec",
    "QueueType",
    "dead_letter_queue",
    "declare_event_exchange",
    "event_exchange_name",
    "explain_refused_declare",
    "handler_queue",
    "handler_topology",
    "retry_queue",
]

logger = logging.getLogger("trioevents.events")

DLQ_SUFFIX: Final = ".dlq"
RETRY_INFIX: Final = ".retry."
#: How long an unused retry queue of a non-reliable handler is kept: its delay
#: plus this many milliseconds.
_RETRY_QUEUE_GRACE_MS: Final = 60_000
#: How long an unused dead-letter queue of a non-reliable handler is kept.
_UNRELIABLE_DLQ_EXPIRES_MS: Final = 86_400_000


class HandlerType(enum.Enum):
    """How the instances of a cluster share each event (nameko's handler types)."""

    #: Every service type gets each event once, shared among its instances.
    SERVICE_POOL = "service_pool"
    #: One handler in the whole cluster gets each event.
    SINGLETON = "singleton"
    #: Every running handler instance gets each event.
    BROADCAST = "broadcast"


class QueueType(enum.StrEnum):
    """The type of a handler's durable queues (RabbitMQ's ``x-queue-type``)."""

    #: nameko's queues: on one node of a cluster.
    CLASSIC = "classic"
    #: Replicated across the nodes of a RabbitMQ cluster (RabbitMQ 3.8+).
    QUORUM = "quorum"


#: The arguments of a quorum queue that dead-letters, at least once.
_QUORUM_DEAD_LETTERING: Final = {
    "x-queue-type": QueueType.QUORUM.value,
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


SERVICE_POOL: Final = HandlerType.SERVICE_POOL
SINGLETON: Final = HandlerType.SINGLETON
BROADCAST: Final = HandlerType.BROADCAST


def event_exchange_name(service_name: str) -> str:
    """Return the name of the exchange *service_name* dispatches its events to."""
    return f"{service_name}.events"


async def declare_event_exchange(connection: abc.Connection, service_name: str) -> str:
    """Declare the events exchange of *service_name* (durable topic); return its name."""
    exchange = event_exchange_name(service_name)
    await connection.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
    return exchange


def _frozen_arguments(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


@final
@attrs.frozen
class QueueSpec:
    """A queue as the events layer declares it: its name, flags and arguments."""

    name: str
    durable: bool = True
    auto_delete: bool = False
    exclusive: bool = False
    arguments: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_arguments, hash=False
    )

    @property
    def queue_type(self) -> QueueType:
        """The queue's type (``x-queue-type``; classic if not given)."""
        return QueueType(self.arguments.get("x-queue-type", QueueType.CLASSIC))

    async def declare(self, connection: abc.Connection) -> None:
        """Declare the queue on *connection* (idempotent with the same spec)."""
        await connection.declare_queue(
            self.name,
            durable=self.durable,
            auto_delete=self.auto_delete,
            exclusive=self.exclusive,
            arguments=self.arguments or None,
        )


def handler_queue_name(
    source_service: str,
    event_type: str,
    handler_type: HandlerType,
    service_name: str,
    method_name: str,
    broadcast_identifier: str | None = None,
) -> str:
    """Return the name of the queue a handler consumes (nameko's names)."""
    if handler_type is HandlerType.SINGLETON:
        return f"evt-{source_service}-{event_type}"
    name = f"evt-{source_service}-{event_type}--{service_name}.{method_name}"
    if handler_type is HandlerType.BROADCAST:
        name = f"{name}-{broadcast_identifier}"
    return name


def handler_queue(
    source_service: str,
    event_type: str,
    handler_type: HandlerType,
    service_name: str,
    method_name: str,
    *,
    reliable_delivery: bool,
    broadcast_identifier: str | None = None,
    queue_type: QueueType = QueueType.CLASSIC,
    delivery_limit: int = 20,
) -> QueueSpec:
    """Return the queue a handler consumes; see the module docstring.

    Parameters
    ----------
    queue_type
        :attr:`QueueType.QUORUM` for a reliable handler only.
    delivery_limit
        A quorum queue's ``x-delivery-limit``.

    Raises
    ------
    EventHandlerConfigurationError
        A quorum queue for a handler without *reliable_delivery*.
    """
    name = handler_queue_name(
        source_service,
        event_type,
        handler_type,
        service_name,
        method_name,
        broadcast_identifier,
    )
    if queue_type is QueueType.QUORUM:
        if not reliable_delivery:
            raise EventHandlerConfigurationError(QUORUM_NEEDS_RELIABLE_DELIVERY)
        arguments = {
            **_QUORUM_DEAD_LETTERING,
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq_name(name),
        }
        return QueueSpec(name, arguments=arguments)
    return QueueSpec(
        name,
        durable=True,
        auto_delete=not reliable_delivery,
        exclusive=handler_type is HandlerType.BROADCAST and not reliable_delivery,
    )


QUORUM_NEEDS_RELIABLE_DELIVERY: Final = (
    "queue_type='quorum' needs reliable_delivery=True: a quorum queue is durable "
    "and outlives its consumers; it cannot be exclusive or auto-delete"
)


def dlq_name(queue: str) -> str:
    """Return the name of the dead-letter queue of handler queue *queue*."""
    return f"{queue}{DLQ_SUFFIX}"


def retry_queue_name(queue: str, delay_ms: int) -> str:
    """Return the name of the queue that delays retries of *queue* by *delay_ms*."""
    return f"{queue}{RETRY_INFIX}{delay_ms}"


def retry_queue(handler: QueueSpec, delay_ms: int) -> QueueSpec:
    """Return the queue that holds a retry of *handler*'s events for *delay_ms*.

    Messages expire after the delay (``x-message-ttl``) and the broker
    dead-letters them back to the handler queue through the default exchange.
    For a handler queue that does not outlive its consumer, the retry queue
    expires too once unused.
    """
    arguments: dict[str, Any] = {
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": handler.name,
    }
    if handler.auto_delete:
        arguments["x-expires"] = delay_ms + _RETRY_QUEUE_GRACE_MS
    if handler.queue_type is QueueType.QUORUM:
        arguments.update(_QUORUM_DEAD_LETTERING)
    return QueueSpec(retry_queue_name(handler.name, delay_ms), arguments=arguments)


def dead_letter_queue(handler: QueueSpec) -> QueueSpec:
    """Return the dead-letter queue of *handler* (``{queue}.dlq``), of its type.

    Durable and kept; for a handler queue that does not outlive its consumer it
    expires a day after it was last used.
    """
    arguments: dict[str, Any] = (
        {"x-expires": _UNRELIABLE_DLQ_EXPIRES_MS} if handler.auto_delete else {}
    )
    if handler.queue_type is QueueType.QUORUM:
        arguments["x-queue-type"] = QueueType.QUORUM.value
    return QueueSpec(dlq_name(handler.name), arguments=arguments)


def handler_topology(
    handler: QueueSpec, retry_delays_ms: Iterable[int]
) -> list[QueueSpec]:
    """Return *handler*, its dead-letter queue and its retry queues.

    In the order to declare them upfront. The handler queue comes first: if it
    exists as another type, nothing is created. Until its dead-letter queue is
    declared nothing is consumed, so nothing reaches the delivery limit.
    """
    retries = (retry_queue(handler, delay) for delay in dict.fromkeys(retry_delays_ms))
    return [handler, dead_letter_queue(handler), *retries]


#: RabbitMQ's (and the embedded broker's) refusal of a redeclare.
_INEQUIVALENT: Final = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for queue '.*' in vhost '[^']*': "
    r"received (?P<got>.+) but current is (?P<have>.+)$"
)
#: A value in that refusal: ``'5'`` or ``the value '5' of type 'byte'``.
_SHOWN_VALUE: Final = re.compile(r"(?:the value )?'(?P<value>[^']*)'")


def _shown_value(text: str) -> str | None:
    match = _SHOWN_VALUE.match(text)
    return None if match is None else match["value"]


async def explain_refused_declare(
    connection: abc.Connection,
    queue: QueueSpec,
    twin: QueueSpec | None,
    refusal: PreconditionFailed,
    *,
    handler: str,
) -> str | None:
    """Say why the broker refused to declare *queue*, if it is a queue-type matter.

    *queue* is handler queue *handler* or one of its retry and dead-letter
    queues. It exists as the other type, or (a quorum queue) with another
    delivery limit: neither can change. The broker names the first argument
    that differs, which is not always ``x-queue-type`` (a classic queue
    redeclared with a quorum queue's dead-letter arguments names those first);
    then *twin*, the same queue as the other type would declare it, is
    declared: if the broker takes that, the queue is of the other type.
    Declaring *twin* could create it if the queue was deleted in between: a
    window of one round trip, on the error path only.

    Returns ``None`` if the refusal is about something else.
    """
    match = _INEQUIVALENT.search(refusal.reply_text)
    if match is None:
        return None
    wanted = queue.queue_type
    if match["arg"] == "x-queue-type":
        existing = _shown_value(match["have"]) or QueueType.CLASSIC.value
        return _type_mismatch(queue.name, existing, wanted, handler)
    limit, given = _shown_value(match["have"]), _shown_value(match["got"])
    if match["arg"] == "x-delivery-limit" and limit is not None and given is not None:
        return (
            f"quorum queue {queue.name!r} has x-delivery-limit {limit}, but "
            f"QUORUM_DELIVERY_LIMIT is {given}: the arguments of a queue cannot "
            f"change. Set QUORUM_DELIVERY_LIMIT back to {limit}, or move to a new "
            "queue as for a change of queue type (see 'Running on a cluster' in "
            "the docs)"
        )
    if twin is None:
        return None
    try:
        await twin.declare(connection)
    except ChannelClosedByBroker:
        return None
    return _type_mismatch(queue.name, twin.queue_type, wanted, handler)


def _type_mismatch(name: str, existing: str, wanted: QueueType, handler: str) -> str:
    return (
        f"queue {name!r} exists as a {existing} queue, but the handler declares it "
        f"as a {wanted} queue (config QUEUE_TYPE, or the handler's queue_type=); "
        "the broker cannot change the type of a queue. Either move the handler to "
        "new queues (e.g. rename its method) and drain the old ones into them, or "
        f"drain {handler!r} and delete it with its .retry.* and .dlq queues before "
        "starting the service: see 'Migrating from classic queues' in the docs "
        "(Running on a cluster)"
    )
