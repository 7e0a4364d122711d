"""Prometheus metrics of a host: an :class:`~trioevents.Observer` (the ``prometheus`` extra).

::

    from trioevents.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics()          # prometheus-client's default registry
    metrics.attach(host)                   # observe the host, and know its limits

With ``HTTP_ADDRESS`` the host serves them on ``/metrics`` (adding one on the
default registry if it has none). The metrics, every label of low cardinality
(services, handlers, exchanges, event types, outcomes: never message ids)::

    trioevents_events_dispatched_total{service,exchange,event_type}   confirmed dispatches
    trioevents_dispatch_failures_total{service,exchange,event_type}   dispatches that raised
    trioevents_publish_confirm_seconds{service,exchange}              dispatch -> confirm (histogram)
    trioevents_events_handled_total{service,handler,outcome}          deliveries, by Outcome
    trioevents_handler_duration_seconds{service,handler}              read + handler + settle (histogram)
    trioevents_workers_in_flight{service}                             deliveries being handled now
    trioevents_max_workers{service}                                   the limit (max_workers)
    trioevents_consumer_prefetch{service}                             each consumer's prefetch count
    trioevents_host_state{trioevents_host_state}                      1 for the current HostState
    trioevents_reconnects_total                                       connections lost while serving

``service`` is empty for dispatches from ``host.dispatcher()``; ``outcome`` is an
:class:`~trioevents.Outcome` value, or ``cancelled`` for a handler cancelled by a
stop (its message goes back to the queue).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, final

from ._extras import needs_extra
from ._observe import HostState, Observer
from ._service import service_name_of

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        Enum,
        Gauge,
        Histogram,
        make_asgi_app,
    )
except ImportError as exc:  # pragma: no cover - tested in a subprocess
    raise ImportError(
        needs_extra("trioevents.prometheus", "prometheus", exc), name=exc.name
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from ._host import ServiceHost
    from ._observe import DispatchedEvent, HandledEvent

__all__ = ["PrometheusMetrics"]

#: Seconds: from half a millisecond (a confirm on this machine) to 30 s.
BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@final
class _Families:
    """The metric families of one registry, shared by every observer using it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dispatched = Counter(
            "trioevents_events_dispatched",
            "Events dispatched and confirmed by the broker.",
            ["service", "exchange", "event_type"],
            registry=registry,
        )
        self.dispatch_failures = Counter(
            "trioevents_dispatch_failures",
            "Dispatches that raised (refused, unconfirmed, cancelled).",
            ["service", "exchange", "event_type"],
            registry=registry,
        )
        self.confirm_seconds = Histogram(
            "trioevents_publish_confirm_seconds",
            "Seconds from a dispatch to the broker's confirm.",
            ["service", "exchange"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.handled = Counter(
            "trioevents_events_handled",
            "Deliveries handled, by outcome (ack, retry, dead-letter, ...).",
            ["service", "handler", "outcome"],
            registry=registry,
        )
        self.handler_seconds = Histogram(
            "trioevents_handler_duration_seconds",
            "Seconds to handle a delivery: read it, run the handler, settle it.",
            ["service", "handler"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "trioevents_workers_in_flight",
            "Deliveries being handled now.",
            ["service"],
            registry=registry,
        )
        self.max_workers = Gauge(
            "trioevents_max_workers",
            "How many deliveries a service handles at once at most (max_workers).",
            ["service"],
            registry=registry,
        )
        self.prefetch = Gauge(
            "trioevents_consumer_prefetch",
            "Unacked deliveries each consumer of a service may hold (prefetch).",
            ["service"],
            registry=registry,
        )
        self.state = Enum(
            "trioevents_host_state",
            "The host's state: 1 for the current one.",
            states=[state.value for state in HostState],
            registry=registry,
        )
        self.reconnects = Counter(
            "trioevents_reconnects",
            "Connections to the broker lost while serving (each is reconnected).",
            registry=registry,
        )
        # Children by label values: labels() is costly, an event is not.
        self.children: dict[tuple[Any, ...], Any] = {}

    def child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = family.labels(*labels)
        return child


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = (
    weakref.WeakKeyDictionary()
)


def _families_of(registry: CollectorRegistry) -> _Families:
    families = _FAMILIES.get(registry)
    if families is None:
        families = _FAMILIES[registry] = _Families(registry)
    return families


@final
class PrometheusMetrics(Observer):
    """Count and time what a host does, in a prometheus-client registry.

    Several observers on one registry share its metrics (prometheus-client
    refuses a metric registered twice), so hosts in one process add up; the
    host-wide ones (state, reconnects) are the last host's: give each host a
    registry of its own to tell them apart.

    Parameters
    ----------
    registry
        Where the metrics live; prometheus-client's default ``REGISTRY`` when
        ``None`` (what ``/metrics`` and ``prometheus_client.start_http_server``
        expose).

    Attributes
    ----------
    registry
        Where the metrics live.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = REGISTRY if registry is None else registry
        self._families = _families_of(self.registry)

    def attach(self, host: ServiceHost) -> None:
        """Observe *host* (:meth:`~trioevents.ServiceHost.add_observer`) and record its limits.

        Attach an observer to one host once; passing it in ``observers=``
        instead counts the same, without the ``max_workers`` and prefetch
        gauges (:meth:`describe_host` records those).
        """
        host.add_observer(self)
        self.describe_host(host)

    def describe_host(self, host: ServiceHost) -> None:
        """Record *host*'s limits: ``max_workers`` and the prefetch of each service."""
        families = self._families
        config = host.config
        for cls in host.services:
            name = service_name_of(cls)
            families.max_workers.labels(name).set(config.max_workers)
            families.prefetch.labels(name).set(config.effective_prefetch_count)
            families.in_flight.labels(name)  # shown, at 0, before the first event

    def asgi_app(self) -> Callable[..., Awaitable[None]]:
        """prometheus-client's ASGI app exposing :attr:`registry`."""
        app: Callable[..., Awaitable[None]] = make_asgi_app(self.registry)
        return app

    @contextlib.contextmanager
    def dispatching(self, event: DispatchedEvent) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            families = self._families
            service = event.service or ""
            labels = (service, event.exchange, event.event_type)
            if event.error is None:
                families.child(families.dispatched, *labels).inc()
                families.child(
                    families.confirm_seconds, service, event.exchange
                ).observe(time.perf_counter() - start)
            else:
                families.child(families.dispatch_failures, *labels).inc()

    @contextlib.contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        families = self._families
        in_flight = families.child(families.in_flight, event.service)
        in_flight.inc()
        start = time.perf_counter()
        try:
            yield
        finally:
            in_flight.dec()
            families.child(
                families.handler_seconds, event.service, event.handler
            ).observe(time.perf_counter() - start)
            outcome = "cancelled" if event.outcome is None else event.outcome.value
            families.child(
                families.handled, event.service, event.handler, outcome
            ).inc()

    def state_changed(self, state: HostState) -> None:
        families = self._families
        families.state.state(state.value)
        if state is HostState.RECONNECTING:
            families.reconnects.inc()
