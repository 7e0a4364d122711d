"""Prometheus metrics (``trioevents.prometheus``): what each metric counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trioevents import (
    Backoff,
    HostState,
    MemoryTransport,
    Properties,
    ServiceHost,
    event_handler,
)
from trioevents.testing import FlakyTransport

from .support.brokers import publish
from .support.recording import Gate, Settled

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

prometheus_client = pytest.importorskip("prometheus_client")

from trioevents.prometheus import PrometheusMetrics  # noqa: E402

SOURCE = "prom_src"
gate = Gate()


@pytest.fixture(autouse=True)
def fresh() -> None:
    global gate
    gate = Gate()


@pytest.fixture
def registry() -> Any:
    return prometheus_client.CollectorRegistry()


def sample(registry: Any, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else float(found)


class Outcomes:
    name = "outcomes"

    @event_handler(SOURCE, "ok")
    async def ok(self, payload: Any) -> None:
        pass

    @event_handler(SOURCE, "retried", retry=Backoff(0.05))
    async def retried(self, payload: Any) -> None:
        raise ValueError("again")


async def test_each_outcome_is_counted_by_handler(
    broker_uri: str, host_factory: HostFactory, broker_clock: Any, registry: Any
) -> None:
    host = host_factory.make(Outcomes)
    settled = Settled()
    host.add_observer(settled)
    PrometheusMetrics(registry).attach(host)
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        await dispatch(SOURCE, "ok", {})
        await dispatch(SOURCE, "retried", {})
    await publish(
        broker_uri,
        f"{SOURCE}.events",
        "ok",
        b"not json",
        Properties(content_type="application/json"),
    )
    await settled.wait_for(4)  # ok, undecodable, retried twice

    handled = "trioevents_events_handled_total"
    counts = {
        (handler, outcome): sample(
            registry, handled, service="outcomes", handler=handler, outcome=outcome
        )
        for handler in ("outcomes.ok", "outcomes.retried")
        for outcome in ("ack", "retry", "dead-letter", "undecodable")
    }
    assert {key: n for key, n in counts.items() if n} == {
        ("outcomes.ok", "ack"): 1,
        ("outcomes.ok", "undecodable"): 1,
        ("outcomes.retried", "retry"): 1,
        ("outcomes.retried", "dead-letter"): 1,
    }
    count = "trioevents_handler_duration_seconds_count"
    assert sample(registry, count, service="outcomes", handler="outcomes.ok") == 2
    standalone = {"service": "", "exchange": f"{SOURCE}.events"}
    dispatched = "trioevents_events_dispatched_total"
    assert sample(registry, dispatched, **standalone, event_type="retried") == 1
    confirmed = "trioevents_publish_confirm_seconds_count"
    assert sample(registry, confirmed, **standalone) == 2


class Slow:
    name = "slow"

    @event_handler(SOURCE, "slow")
    async def slow(self, payload: Any) -> None:
        await gate.pass_through()


async def test_workers_in_flight_against_max_workers(
    host_factory: HostFactory, registry: Any
) -> None:
    host = host_factory.make(Slow, {"max_workers": 3, "PREFETCH_COUNT": 5})
    settled = Settled()
    host.add_observer(settled)
    PrometheusMetrics(registry).attach(host)
    await host_factory.start(host)
    assert sample(registry, "trioevents_max_workers", service="slow") == 3
    assert sample(registry, "trioevents_consumer_prefetch", service="slow") == 5
    async with host.dispatcher() as dispatch:
        for n in range(4):
            await dispatch(SOURCE, "slow", {"n": n})
    with trio.fail_after(30):
        while gate.running < 3:
            await trio.testing.wait_all_tasks_blocked()
    assert sample(registry, "trioevents_workers_in_flight", service="slow") == 3
    gate.release.set()
    await settled.wait_for(4)
    assert sample(registry, "trioevents_workers_in_flight", service="slow") == 0


async def test_the_host_state_and_reconnects(
    autojump_clock: trio.testing.MockClock, registry: Any
) -> None:
    uri = "memory://prometheus-state"
    transport = FlakyTransport(MemoryTransport.from_uri(uri))
    host = ServiceHost(
        [Slow], {"AMQP_URI": uri, "RECONNECT_DELAY": 1}, transport=transport
    )
    PrometheusMetrics(registry).attach(host)

    def state() -> str:
        states = [s.value for s in HostState]
        (current,) = [
            s
            for s in states
            if sample(registry, "trioevents_host_state", trioevents_host_state=s)
        ]
        return current

    assert state() == "stopped"
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        assert state() == "serving"
        transport.refuse(2)
        transport.cut()
        await host.wait_state(HostState.RECONNECTING)
        assert state() == "reconnecting"
        await host.wait_state(HostState.SERVING)
        await host.stop()
    assert state() == "stopped"
    assert sample(registry, "trioevents_reconnects_total") == 1


def test_observers_of_one_registry_share_its_metrics(registry: Any) -> None:
    """prometheus-client refuses a metric registered twice: hosts share them."""
    first, second = PrometheusMetrics(registry), PrometheusMetrics(registry)
    first.attach(ServiceHost([Slow]))
    second.attach(ServiceHost([Outcomes], {"max_workers": 7}))
    assert sample(registry, "trioevents_max_workers", service="slow") == 10
    assert sample(registry, "trioevents_max_workers", service="outcomes") == 7
