"""What the suite measures: every figure, its scenario and its sizes.

A :class:`Figure` is one row of the results table for one transport; the sizes
are chosen so that a run takes a few seconds on a 2-core machine (``full``) or
well under one (``quick``).
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

Transport = Literal["memory", "rabbitmq"]
TRANSPORTS: Final[tuple[Transport, ...]] = ("memory", "rabbitmq")
TRANSPORT_LABELS: Final[dict[Transport, str]] = {
    "memory": "memory://",
    "rabbitmq": "RabbitMQ",
}

#: End-to-end events/s (10 dispatchers, median) the design asks for.
TARGETS: Final[dict[Transport, float]] = {"memory": 50_000, "rabbitmq": 10_000}


@attrs.frozen
class Figure:
    """One measured figure: a scenario with its parameters, on some transports.

    Attributes
    ----------
    key
        Its name in the JSON file.
    label
        Its row label in the table.
    scenario
        The scenario of :mod:`_child` that measures it.
    metrics
        ``(result key, row label, unit)`` of each row it fills; ``{figure}`` in
        the row label stands for *label*.
    full, quick
        Parameters per transport; a transport without an entry is not measured.
    baseline
        The key of the figure this one is compared with, run for run (the
        overhead table): the same scenario with one thing changed.
    """

    key: str
    label: str
    scenario: str
    metrics: tuple[tuple[str, str, str], ...]
    full: dict[Transport, dict[str, Any]]
    quick: dict[Transport, dict[str, Any]]
    baseline: str | None = None

    def params(self, transport: Transport, quick: bool) -> dict[str, Any] | None:
        """Return the scenario's parameters on *transport*, or None if not measured."""
        return (self.quick if quick else self.full).get(transport)


_RATE = (("rate", "{figure}", "msg/s"),)
_EVENTS = (
    ("rate", "{figure}", "events/s"),
    ("cpu_us", "  CPU per event, this process", "us"),
    ("broker_cpu_us", "  CPU per event, RabbitMQ", "us"),
)
_LATENCY = tuple(
    (key, "{figure}, " + key, "ms") for key in ("p50", "p90", "p99", "max")
)


def _both(
    memory: dict[str, Any], rabbitmq: dict[str, Any]
) -> dict[Transport, dict[str, Any]]:
    return {"memory": memory, "rabbitmq": rabbitmq}


FIGURES: Final[tuple[Figure, ...]] = (
    Figure(
        "publish_no_confirm",
        "publish, no confirms",
        "publish_no_confirm",
        _RATE,
        full={"rabbitmq": {"messages": 100_000}},
        quick={"rabbitmq": {"messages": 20_000}},
    ),
    Figure(
        "publish_confirm_1",
        "publish, confirms, 1 task",
        "publish",
        _RATE,
        full=_both({"messages": 200_000}, {"messages": 5_000}),
        quick=_both({"messages": 20_000}, {"messages": 1_000}),
    ),
    Figure(
        "publish_confirm_10",
        "publish, confirms, 10 tasks",
        "publish",
        _RATE,
        full=_both(
            {"messages": 200_000, "tasks": 10}, {"messages": 30_000, "tasks": 10}
        ),
        quick=_both(
            {"messages": 20_000, "tasks": 10}, {"messages": 5_000, "tasks": 10}
        ),
    ),
    Figure(
        "consume_ack",
        "consume + ack, prefetch 100",
        "consume_ack",
        _RATE,
        full=_both({"messages": 200_000}, {"messages": 50_000}),
        quick=_both({"messages": 20_000}, {"messages": 10_000}),
    ),
    Figure(
        "end_to_end_1",
        "end-to-end, 1 dispatcher",
        "end_to_end",
        _EVENTS,
        full=_both({"events": 100_000}, {"events": 5_000}),
        quick=_both({"events": 10_000}, {"events": 1_000}),
    ),
    Figure(
        "end_to_end_10",
        "end-to-end, 10 dispatchers",
        "end_to_end",
        _EVENTS,
        full=_both(
            {"events": 100_000, "dispatchers": 10},
            {"events": 30_000, "dispatchers": 10},
        ),
        quick=_both(
            {"events": 10_000, "dispatchers": 10}, {"events": 5_000, "dispatchers": 10}
        ),
    ),
    *(
        Figure(
            f"end_to_end_10_{observe}",
            f"end-to-end, 10 dispatchers, {label}",
            "end_to_end",
            _EVENTS,
            full=_both(
                {"events": 100_000, "dispatchers": 10, "observe": observe},
                {"events": 30_000, "dispatchers": 10, "observe": observe},
            ),
            quick=_both(
                {"events": 10_000, "dispatchers": 10, "observe": observe},
                {"events": 5_000, "dispatchers": 10, "observe": observe},
            ),
            baseline="end_to_end_10",
        )
        for observe, label in (
            ("metrics", "Prometheus metrics"),
            ("tracing", "tracing (SDK, no exporter)"),
        )
    ),
    Figure(
        "end_to_end_10_prefetch_200",
        "end-to-end, 10 dispatchers, PREFETCH_COUNT 200",
        "end_to_end",
        _EVENTS,
        full=_both(
            {"events": 100_000, "dispatchers": 10, "prefetch": 200},
            {"events": 30_000, "dispatchers": 10, "prefetch": 200},
        ),
        quick=_both(
            {"events": 10_000, "dispatchers": 10, "prefetch": 200},
            {"events": 5_000, "dispatchers": 10, "prefetch": 200},
        ),
    ),
    Figure(
        "latency_200",
        "latency at 200/s",
        "latency",
        _LATENCY,
        full=_both({"rate": 200, "seconds": 10}, {"rate": 200, "seconds": 10}),
        quick=_both({"rate": 200, "seconds": 1}, {"rate": 200, "seconds": 1}),
    ),
    Figure(
        "latency_2000",
        "latency at 2,000/s",
        "latency",
        _LATENCY,
        full=_both({"rate": 2000, "seconds": 5}, {"rate": 2000, "seconds": 5}),
        quick=_both({"rate": 2000, "seconds": 1}, {"rate": 2000, "seconds": 1}),
    ),
)

#: Events in the soak unless ``--soak-events`` says otherwise; memory is sampled
#: ten times.
SOAK_EVENTS: Final = 1_000_000
SOAK_EVENTS_QUICK: Final = 50_000
