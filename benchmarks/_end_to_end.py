"""End-to-end events/s of a ServiceHost: dispatch (with confirms) -> handler -> ack.

One process runs both sides, as the smallest deployment would: a ServiceHost
serving one ``SERVICE_POOL`` handler (``max_workers`` 10, so prefetch 10) and a
standalone dispatcher (``host.dispatcher()``, its own connection) shared by
*dispatchers* tasks that send *events* events in all, each awaiting its
confirm. The clock starts before the first dispatch and stops when the handler
has seen the last event; the host is then stopped gracefully and the queue must
be empty (every event acked).

*observe* adds observers to the host (its dispatches and its handler): ``off``
(the default: none; the per-message log joins only while it logs DEBUG),
``metrics`` (``PrometheusMetrics`` on a
registry of its own) or ``tracing`` (``OpenTelemetryTracing`` with the SDK's
``TracerProvider`` and no exporter: spans made, recorded, dropped).

Also reported: the CPU time per event of this process (``cpu_us``, user + system)
and, for a RabbitMQ on this machine, of the broker (``broker_cpu_us``: all of
``beam.smp``, so whatever else the broker does at the time counts too).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
from _common import broker_pid, cpu_seconds, release, transport_for, unique

from trioevents import ServiceHost, event_handler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

#: The event type every scenario dispatches.
EVENT_TYPE = "tick"


def sink_service(source: str, on_event: Callable[[dict[str, Any]], None]) -> type:
    """Return a service class whose one handler calls *on_event* with each payload."""

    class Sink:
        name = "sink"

        @event_handler(source, EVENT_TYPE)
        async def tick(self, payload: dict[str, Any]) -> None:
            on_event(payload)

    return Sink


def add_observers(host: ServiceHost, observe: str) -> None:
    """Give *host* the observers *observe* names (see the module's doc)."""
    if observe == "metrics":
        import prometheus_client

        from trioevents.prometheus import PrometheusMetrics

        PrometheusMetrics(prometheus_client.CollectorRegistry()).attach(host)
    elif observe == "tracing":
        from opentelemetry.sdk.trace import TracerProvider

        from trioevents.otel import OpenTelemetryTracing

        host.add_observer(OpenTelemetryTracing(TracerProvider()))
    elif observe != "off":
        raise ValueError(f"unknown observe={observe!r}")


def queue_of(source: str) -> str:
    """The queue of :func:`sink_service`'s handler."""
    return f"evt-{source}-{EVENT_TYPE}--sink.{EVENT_TYPE}"


@asynccontextmanager
async def serving(
    uri: str,
    service: type,
    source: str,
    max_workers: int = 10,
    prefetch: int | None = None,
    observe: str = "off",
) -> AsyncIterator[ServiceHost]:
    """Serve *service* while the body runs; then stop and check every event was acked.

    *prefetch* ``None`` follows *max_workers*, as the host's default does;
    *observe* is in the module's doc.
    """
    config: dict[str, Any] = {"AMQP_URI": uri, "max_workers": max_workers}
    if prefetch is not None:
        config["PREFETCH_COUNT"] = prefetch
    host = ServiceHost([service], config=config)
    add_observers(host, observe)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            yield host
            await host.stop()
        queue = queue_of(source)
        async with transport_for(uri).open_connection() as conn:
            left = await conn.declare_queue(queue, passive=True)
            if left.message_count:
                raise AssertionError(
                    f"{left.message_count} events were not acked (queue {queue!r})"
                )
            await conn.delete_queue(queue)
            await conn.delete_exchange(f"{source}.events")
    finally:
        release(uri)


async def run(params: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"rate": events/s, "max_backlog": ...}``."""
    uri: str = params["uri"]
    events: int = params["events"]
    dispatchers: int = params.get("dispatchers", 1)
    max_workers: int = params.get("max_workers", 10)
    prefetch: int | None = params.get("prefetch")
    observe: str = params.get("observe", "off")
    source = unique("bench")
    seen = 0
    dispatched = 0
    max_backlog = 0
    done = trio.Event()
    warm = trio.Event()

    def on_event(payload: dict[str, Any]) -> None:
        nonlocal seen
        if payload["i"] < 0:
            warm.set()
            return
        seen += 1
        if seen == events:
            done.set()

    async with serving(
        uri, sink_service(source, on_event), source, max_workers, prefetch, observe
    ) as host:
        async with host.dispatcher() as dispatch:
            # One event first: declares the exchange, warms every path up.
            await dispatch(source, EVENT_TYPE, {"i": -1})
            await warm.wait()
            pid = broker_pid(uri)
            broker_cpu0 = cpu_seconds(pid) if pid is not None else 0.0
            cpu0 = time.process_time()
            start = time.perf_counter()

            async def send(count: int) -> None:
                nonlocal dispatched, max_backlog
                for i in range(count):
                    await dispatch(source, EVENT_TYPE, {"i": i})
                    dispatched += 1
                    max_backlog = max(max_backlog, dispatched - seen)

            async with trio.open_nursery() as senders:
                share, extra = divmod(events, dispatchers)
                for d in range(dispatchers):
                    senders.start_soon(send, share + (1 if d < extra else 0))
            await done.wait()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            broker_cpu = cpu_seconds(pid) - broker_cpu0 if pid is not None else None
    return {
        "rate": events / elapsed,
        "seconds": elapsed,
        "max_backlog": max_backlog,
        "cpu_us": cpu / events * 1e6,
        "broker_cpu_us": None if broker_cpu is None else broker_cpu / events * 1e6,
    }
