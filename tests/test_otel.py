"""OpenTelemetry tracing (``trioevents.otel``), on both brokers."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest

from trioevents import Backoff, EventDispatcher, Properties, ServiceHost, event_handler

from .support.brokers import publish
from .support.recording import Recorder, Settled

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from trioevents.testing import HostFactory

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from trioevents.otel import OpenTelemetryTracing

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh() -> None:
    global recorder
    recorder = Recorder()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class Checkout:
    name = "checkout"
    dispatch = EventDispatcher()

    @event_handler("web", "submitted")
    async def submitted(self, payload: Any) -> None:
        await self.dispatch("paid", payload)


class Orders:
    name = "orders"
    dispatch = EventDispatcher()

    @event_handler("checkout", "paid")
    async def on_paid(self, payload: Any) -> None:
        await self.dispatch("order_placed", payload)


class Shipping:
    name = "shipping"

    @event_handler("orders", "order_placed")
    async def ship(self, payload: Any) -> None:
        recorder.record("shipped", payload)


def traced(host: ServiceHost, provider: TracerProvider) -> Settled:
    """Trace *host*; return an observer that sees each delivery after its span ended."""
    settled = Settled()
    host.add_observer(settled)
    host.add_observer(OpenTelemetryTracing(provider))
    return settled


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"


def attr(span: ReadableSpan, key: str) -> Any:
    """The value of one attribute of *span*."""
    assert span.attributes is not None
    return span.attributes[key]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def test_a_chain_of_events_is_one_trace(
    broker_uri: str,
    host_factory: HostFactory,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """web -> checkout -> orders -> shipping, three services in three hosts."""
    hosts = [host_factory.make(cls) for cls in (Checkout, Orders, Shipping)]
    settled = [traced(host, provider) for host in hosts]
    for host in hosts:
        await host_factory.start(host)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("web request"):
        async with hosts[0].dispatcher() as dispatch:
            await dispatch("web", "submitted", {"id": 1}, message_id="m-1")
    for watch in settled:
        await watch.wait_for(1)

    spans = by_name(exporter.get_finished_spans())
    assert sorted(spans) == [
        "process checkout.events",
        "process orders.events",
        "process web.events",
        "publish checkout.events",
        "publish orders.events",
        "publish web.events",
        "web request",
    ]
    root = spans["web request"]
    assert {span.context.trace_id for span in spans.values()} == {root.context.trace_id}
    chain = [
        "web request",
        "publish web.events",
        "process web.events",
        "publish checkout.events",
        "process checkout.events",
        "publish orders.events",
        "process orders.events",
    ]
    for parent, child in itertools.pairwise(chain):
        assert parent_of(spans[child]) == spans[parent].context.span_id, child

    first = spans["publish web.events"]
    assert first.kind is SpanKind.PRODUCER
    assert first.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": "web.events",
        "messaging.rabbitmq.destination.routing_key": "submitted",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.message.id": "m-1",
    }
    relayed = spans["publish checkout.events"]
    assert relayed.attributes is not None
    assert relayed.attributes["trioevents.service"] == "checkout"
    assert "messaging.message.id" not in relayed.attributes

    shipped = spans["process orders.events"]
    assert shipped.kind is SpanKind.CONSUMER
    assert shipped.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": "orders.events",
        "messaging.rabbitmq.destination.routing_key": "order_placed",
        "messaging.consumer.group.name": "evt-orders-order_placed--shipping.ship",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "trioevents.service": "shipping",
        "trioevents.handler": "shipping.ship",
        "trioevents.attempt": 1,
        "trioevents.redelivered": False,
        "trioevents.outcome": "ack",
    }
    assert all(span.status.status_code is StatusCode.UNSET for span in spans.values())


class Failing:
    name = "failing"

    @event_handler("web", "retried", retry=Backoff(0.05))
    async def retried(self, payload: Any) -> None:
        raise ValueError("card declined")

    @event_handler("web", "dropped")
    async def dropped(self, payload: Any) -> None:
        raise KeyError("sku")


async def test_errors_retries_and_dead_letters_are_on_the_spans(
    broker_uri: str,
    host_factory: HostFactory,
    broker_clock: Any,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    host = host_factory.make(Failing)
    settled = traced(host, provider)
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        await dispatch("web", "retried", {})
        await dispatch("web", "dropped", {})
    await publish(
        broker_uri,
        "web.events",
        "dropped",
        b"not json",
        Properties(content_type="application/json"),
    )
    await settled.wait_for(4)  # retried twice, dropped, undecodable

    spans = exporter.get_finished_spans()
    publishes = {attr(s, ROUTING_KEY): s for s in spans if s.kind is SpanKind.PRODUCER}

    def attempts(routing_key: str) -> list[ReadableSpan]:
        found = [
            s
            for s in spans
            if s.kind is SpanKind.CONSUMER and attr(s, ROUTING_KEY) == routing_key
        ]
        return sorted(found, key=lambda s: attr(s, "trioevents.attempt"))

    first, second = attempts("retried")
    for span, outcome in ((first, "retry"), (second, "dead-letter")):
        assert span.attributes is not None
        assert span.attributes["trioevents.outcome"] == outcome
        assert span.attributes["error.type"] == "ValueError"
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ValueError: card declined"
        names = [event.name for event in span.events]
        assert names == ["exception", f"trioevents.{outcome}"]
        assert span.events[0].attributes is not None
        assert span.events[0].attributes["exception.message"] == "card declined"
        # The retry copy carries the trace context on: both attempts are
        # children of the one dispatch.
        assert parent_of(span) == publishes["retried"].context.span_id

    dropped, undecodable = sorted(
        attempts("dropped"), key=lambda s: attr(s, "trioevents.outcome")
    )
    assert dropped.attributes is not None
    assert undecodable.attributes is not None
    assert dropped.attributes["trioevents.outcome"] == "ack"  # nameko's way
    assert dropped.attributes["error.type"] == "KeyError"
    assert dropped.status.status_code is StatusCode.ERROR
    assert [event.name for event in dropped.events] == ["exception"]
    assert undecodable.attributes["trioevents.outcome"] == "undecodable"
    assert undecodable.attributes["error.type"] == "trioevents.SerializationError"
    assert undecodable.parent is None  # published without trace context
    assert [event.name for event in undecodable.events] == [
        "exception",
        "trioevents.undecodable",
    ]


async def test_without_an_sdk_tracing_costs_nothing_and_sends_no_headers(
    host_factory: HostFactory,
) -> None:
    """The API alone (no TracerProvider set): no-op spans, no trace context."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global TracerProvider was set in this process")
    host = host_factory.make(Shipping)
    host.add_observer(OpenTelemetryTracing())
    await host_factory.start(host)
    seen = Settled()
    host.add_observer(seen)
    async with host.dispatcher() as dispatch:
        await dispatch("orders", "order_placed", {"id": 2})
    (event,) = await seen.wait_for(1)
    assert "traceparent" not in event.headers
    assert recorder.calls == [("shipped", {"id": 2})]
