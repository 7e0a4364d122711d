"""Handler latency at a paced rate: from the dispatch call to the handler's entry.

The host and the standalone dispatcher are set up as in :mod:`_end_to_end`. A
pacer sends *rate* events per second for *seconds* seconds on a fixed schedule
(``trio.sleep_until(t0 + i / rate)``), starting one task per event so that a
slow confirm never delays the next event (open-loop load: no coordinated
omission). Each event carries the time its dispatch was called; the handler
records ``now - then`` on entry.

Reported: p50 / p90 / p99 / max latency; how far behind its schedule the pacer
started dispatches (p99 and max), and the rate it achieved: if that is under 97 %
of the target, the pacer could not keep up and the figures describe a lower
load than asked for.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from _common import percentile, unique
from _end_to_end import EVENT_TYPE, serving, sink_service

#: Below this share of the target rate the pacer "could not keep up".
KEPT_UP = 0.97
WARM_UP_EVENTS = 20


async def run(params: dict[str, Any]) -> dict[str, Any]:
    """Return latency percentiles in ms, and the pacer's lag and achieved rate."""
    uri: str = params["uri"]
    rate: float = params["rate"]
    seconds: float = params["seconds"]
    max_workers: int = params.get("max_workers", 10)
    events = max(1, round(rate * seconds))
    source = unique("bench")
    latencies: list[float] = []
    done = trio.Event()
    warm = trio.Event()
    warm_seen = 0

    def on_event(payload: dict[str, Any]) -> None:
        nonlocal warm_seen
        now = time.perf_counter()
        if payload["i"] < 0:
            warm_seen += 1
            if warm_seen == WARM_UP_EVENTS:
                warm.set()
            return
        latencies.append(now - payload["t"])
        if len(latencies) == events:
            done.set()

    async with serving(
        uri, sink_service(source, on_event), source, max_workers
    ) as host:
        async with host.dispatcher() as dispatch:
            for _ in range(WARM_UP_EVENTS):
                await dispatch(source, EVENT_TYPE, {"i": -1, "t": time.perf_counter()})
            await warm.wait()

            lags: list[float] = []
            calls: list[float] = []

            async def send_one(i: int, scheduled: float) -> None:
                lags.append(trio.current_time() - scheduled)
                called = time.perf_counter()
                calls.append(called)
                await dispatch(source, EVENT_TYPE, {"i": i, "t": called})

            async with trio.open_nursery() as nursery:
                t0 = trio.current_time() + 0.01
                for i in range(events):
                    scheduled = t0 + i / rate
                    await trio.sleep_until(scheduled)
                    nursery.start_soon(send_one, i, scheduled)
            with trio.move_on_after(30):
                await done.wait()
            if not done.is_set():
                raise AssertionError(
                    f"only {len(latencies)} of {events} events were handled"
                )
    latencies.sort()
    lags.sort()
    span = calls[-1] - calls[0] if len(calls) > 1 else 0.0
    achieved = (len(calls) - 1) / span if span > 0 else float(rate)
    ms = 1000.0
    return {
        "p50": percentile(latencies, 0.50) * ms,
        "p90": percentile(latencies, 0.90) * ms,
        "p99": percentile(latencies, 0.99) * ms,
        "max": latencies[-1] * ms,
        "events": events,
        "target_rate": rate,
        "achieved_rate": achieved,
        "kept_up": achieved >= KEPT_UP * rate,
        "pacer_lag_p99": percentile(lags, 0.99) * ms,
        "pacer_lag_max": lags[-1] * ms,
    }
