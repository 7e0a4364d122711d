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
  (:func:`dead_letter_queue`), declared when first needed.

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
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from .._message import ExchangeType

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .. import abc

__all__ = [
    "BROADCAST",
    "DLQ_SUFFIX",
    "RETRY_INFIX",
    "SERVICE_POOL",
    "SINGLETON",
    "HandlerType",
    "QueueSpec",
    "dead_letter_queue",
    "declare_event_exchange",
    "event_exchange_name",
    "handler_queue",
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
) -> QueueSpec:
    """Return the queue a handler consumes; see the table in the module docstring."""
    return QueueSpec(
        handler_queue_name(
            source_service,
            event_type,
            handler_type,
            service_name,
            method_name,
            broadcast_identifier,
        ),
        durable=True,
        auto_delete=not reliable_delivery,
        exclusive=handler_type is HandlerType.BROADCAST and not reliable_delivery,
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
    return QueueSpec(retry_queue_name(handler.name, delay_ms), arguments=arguments)


def dead_letter_queue(handler: QueueSpec) -> QueueSpec:
    """Return the dead-letter queue of *handler* (``{queue}.dlq``).

    Durable and kept; for a handler queue that does not outlive its consumer it
    expires a day after it was last used.
    """
    arguments = {"x-expires": _UNRELIABLE_DLQ_EXPIRES_MS} if handler.auto_delete else {}
    return QueueSpec(dlq_name(handler.name), arguments=arguments)
