"""Raw transport rates, at the Transport seam (no ServiceHost).

* ``publish``: *messages* persistent messages into one durable queue from *tasks*
  concurrent tasks on one connection; every ``publish`` awaits its confirm.
* ``publish_no_confirm`` (RabbitMQ only): the same messages on a channel that is
  not in confirm mode (through the AMQP connection's internals: the seam always
  confirms); the clock stops when the queue holds them all.
* ``consume_ack``: a queue filled with *messages* beforehand (not timed) is
  consumed with *prefetch* and every delivery acked; the clock stops when the
  consumer is closed (which flushes the acks).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import trio
from _common import BODY, PROPERTIES, release, transport_for, unique

from trioevents.amqp import AmqpConnection

if TYPE_CHECKING:
    from trioevents import abc


async def _fill(conn: abc.Connection, queue: str, messages: int, tasks: int) -> None:
    """Publish *messages* into *queue* from *tasks* tasks, each awaiting confirms."""

    async def publisher(count: int) -> None:
        for _ in range(count):
            await conn.publish("", queue, BODY, PROPERTIES)

    share, extra = divmod(messages, tasks)
    async with trio.open_nursery() as nursery:
        for t in range(tasks):
            nursery.start_soon(publisher, share + (1 if t < extra else 0))


async def _check_count(conn: abc.Connection, queue: str, expected: int) -> None:
    declared = await conn.declare_queue(queue, passive=True)
    if declared.message_count != expected:
        raise AssertionError(
            f"queue {queue!r} holds {declared.message_count} messages, "
            f"expected {expected}"
        )


async def publish(params: dict[str, Any]) -> dict[str, Any]:
    """Publish with confirms; return ``{"rate": messages/s}``."""
    uri: str = params["uri"]
    messages: int = params["messages"]
    tasks: int = params.get("tasks", 1)
    queue = unique("bench-publish")
    try:
        async with transport_for(uri).open_connection() as conn:
            await conn.declare_queue(queue, durable=True)
            start = time.perf_counter()
            await _fill(conn, queue, messages, tasks)
            elapsed = time.perf_counter() - start
            await _check_count(conn, queue, messages)
            await conn.delete_queue(queue)
    finally:
        release(uri)
    return {"rate": messages / elapsed, "seconds": elapsed}


async def publish_no_confirm(params: dict[str, Any]) -> dict[str, Any]:
    """Publish on a channel without confirms (RabbitMQ); return ``{"rate": ...}``."""
    uri: str = params["uri"]
    messages: int = params["messages"]
    queue = unique("bench-noconfirm")
    async with transport_for(uri).open_connection() as conn:
        if not isinstance(conn, AmqpConnection):
            raise TypeError("publish_no_confirm needs a RabbitMQ (amqp://) URI")
        await conn.declare_queue(queue, durable=True)
        # The seam has no unconfirmed publish: drive the sans-IO protocol on a
        # channel of our own that never got Confirm.Select.
        from trioevents.amqp._mux import Role as _Role

        proto = conn._proto
        channel = conn._mux.open_channel(_Role.CONSUMER)  # no consumer: publishes only
        high_water = 1 << 20
        start = time.perf_counter()
        for i in range(messages):
            proto.basic_publish(channel.number, "", queue, BODY, PROPERTIES)
            if i % 64 == 63:
                conn._wake_writer()
                await trio.lowlevel.checkpoint()
                # Don't let unsent bytes pile up while the socket is full (there
                # is no event for "the writer drained": poll).
                while conn._sending and proto.pending_output > high_water:  # noqa: ASYNC110
                    await trio.sleep(0.0005)
        conn._wake_writer()
        # Done when the broker has routed every message (per-channel order is
        # kept, but the topology channel may overtake: poll).
        while True:
            declared = await conn.declare_queue(queue, passive=True)
            if declared.message_count >= messages:
                break
            await trio.sleep(0.002)
        elapsed = time.perf_counter() - start
        proto.close_channel(channel.number)
        conn._wake_writer()
        await channel.closed.wait()
        await _check_count(conn, queue, messages)
        await conn.delete_queue(queue)
    return {"rate": messages / elapsed, "seconds": elapsed}


async def consume_ack(params: dict[str, Any]) -> dict[str, Any]:
    """Consume and ack a full queue; return ``{"rate": messages/s}``."""
    uri: str = params["uri"]
    messages: int = params["messages"]
    prefetch: int = params.get("prefetch", 100)
    queue = unique("bench-consume")
    try:
        async with transport_for(uri).open_connection() as conn:
            await conn.declare_queue(queue, durable=True)
            await _fill(conn, queue, messages, tasks=50)
            await _check_count(conn, queue, messages)
            received = 0
            start = time.perf_counter()
            async with conn.open_consumer(queue, prefetch_count=prefetch) as consumer:
                async for delivery in consumer:
                    await delivery.ack()
                    received += 1
                    if received == messages:
                        break
            elapsed = time.perf_counter() - start
            # Every ack arrived: nothing went back to the queue on close.
            await _check_count(conn, queue, 0)
            await conn.delete_queue(queue)
    finally:
        release(uri)
    return {"rate": messages / elapsed, "seconds": elapsed}
