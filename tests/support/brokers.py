"""Reach a broker from a test, whichever it is: ``memory://`` or RabbitMQ.

Each helper takes the broker's URI (``broker_uri``, ``memory_uri`` or
``rabbit_vhost``) and opens a short connection of its own through
:func:`trioevents._host.transport_for_uri`, so it works on both brokers and never
shares a connection with the host under test. Waits are bounded by
:data:`DEADLINE`, a generous guard (the broker shares two cores with the tests),
never a way to synchronize.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from trioevents import MemoryTransport, NotFound, QueueType, ServiceHost
from trioevents._events._topology import QueueSpec, dead_letter_queue
from trioevents._host import transport_for_uri
from trioevents.testing import FlakyTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trioevents import Delivery, Properties, abc

#: Seconds any helper waits at most (virtual ones under an autojump clock).
DEADLINE = 30


@asynccontextmanager
async def connect(uri: str) -> AsyncIterator[abc.Connection]:
    """Open a connection to the broker of *uri*."""
    async with transport_for_uri(uri).open_connection() as connection:
        yield connection


async def queue_depth(uri: str, queue: str) -> int:
    """Messages ready in *queue* (not counting those delivered and unacked)."""
    async with connect(uri) as connection:
        return (await connection.declare_queue(queue, passive=True)).message_count


async def queue_exists(uri: str, queue: str) -> bool:
    async with connect(uri) as connection:
        try:
            await connection.declare_queue(queue, passive=True)
        except NotFound:
            return False
        return True


async def _receive(consumer: abc.Consumer, count: int) -> list[Delivery]:
    out = []
    with trio.fail_after(DEADLINE):
        for _ in range(count):
            delivery = await consumer.receive()
            await delivery.ack()
            out.append(delivery)
    return out


async def take_all(uri: str, queue: str) -> list[Delivery]:
    """Take (and ack) every message ready in *queue*; none if it does not exist."""
    async with connect(uri) as connection:
        try:
            declared = await connection.declare_queue(queue, passive=True)
        except NotFound:
            return []
        async with connection.open_consumer(queue) as consumer:
            return await _receive(consumer, declared.message_count)


async def dead_letters(
    uri: str,
    queue: str,
    count: int = 1,
    *,
    auto_delete: bool = False,
    queue_type: QueueType = QueueType.CLASSIC,
) -> list[Delivery]:
    """Wait for *count* messages in the dead-letter queue of *queue*; take them.

    The dead-letter queue is declared as the host declares it (the topology's
    :func:`~trioevents._events._topology.dead_letter_queue`; *auto_delete* and
    *queue_type*: the handler queue's), so this may run before the host needs it.
    """
    handler = QueueSpec(
        queue, auto_delete=auto_delete, arguments={"x-queue-type": queue_type.value}
    )
    spec = dead_letter_queue(handler)
    async with connect(uri) as connection:
        await spec.declare(connection)
        async with connection.open_consumer(spec.name) as consumer:
            return await _receive(consumer, count)


async def publish(
    uri: str,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: Properties | None = None,
) -> None:
    """Publish a raw message, bypassing every dispatcher."""
    async with connect(uri) as connection:
        await connection.publish(exchange, routing_key, body, properties)


def make_host(services: list[type], uri: str, **config: Any) -> ServiceHost:
    """A host of *services* on the broker of *uri*, with more *config*."""
    return ServiceHost(services, config={"AMQP_URI": uri, **config})


async def dispatch(
    uri: str, source: str, event_type: str, *payloads: Any, **options: Any
) -> None:
    """Dispatch *payloads* in order, as *source*, with a standalone dispatcher."""
    async with ServiceHost([], config={"AMQP_URI": uri}).dispatcher() as send:
        for payload in payloads:
            await send(source, event_type, payload, **options)


async def watch(uri: str, source: str, queue: str = "watch") -> str:
    """Bind *queue* to every event *source* dispatches; return its name."""
    async with connect(uri) as connection:
        await connection.declare_exchange(f"{source}.events", durable=True)
        await connection.declare_queue(queue)
        await connection.bind_queue(queue, f"{source}.events", "#")
    return queue


def flaky_host(
    services: list[type], uri: str, **config: Any
) -> tuple[ServiceHost, FlakyTransport]:
    """A host on the embedded broker of *uri*, connecting through a fault double.

    ``RECONNECT_DELAY`` is 1 s unless *config* says otherwise: run such tests on
    trio's ``autojump_clock``.
    """
    transport = FlakyTransport(MemoryTransport.from_uri(uri))
    config = {"AMQP_URI": uri, "RECONNECT_DELAY": 1, **config}
    return ServiceHost(services, config=config, transport=transport), transport
