"""The soak: many events through a ServiceHost on the embedded broker, memory sampled.

Same set-up as :mod:`_end_to_end` (dispatch with confirms -> handler -> ack, 10
dispatcher tasks sharing one standalone dispatcher), with a window: at most
*window* events are dispatched and not yet handled, so the queue never grows
and a rising RSS can only be the code keeping something per event.

Every *sample_every* handled events it records the current RSS
(``/proc/self/statm``) and the number of objects the garbage collector tracks.
The first sample is the warm-up baseline; "memory stays flat" means the last
sample is at most *flat_mib* MiB above it (and the tracked objects did not grow
by more than 1 %).
"""

from __future__ import annotations

import gc
import itertools
import statistics
import time
from typing import Any

import trio
from _common import current_rss_mib, memory_uri, peak_rss_mib, unique
from _end_to_end import EVENT_TYPE, serving, sink_service

#: Objects the GC tracks may grow by this share after warm-up and still be "flat".
OBJECT_GROWTH = 0.01


async def run(params: dict[str, Any]) -> dict[str, Any]:
    """Return the samples, the rate, the RSS growth after warm-up and a verdict."""
    uri: str = params.get("uri") or memory_uri()
    events: int = params["events"]
    sample_every: int = params.get("sample_every", 100_000)
    dispatchers: int = params.get("dispatchers", 10)
    window: int = params.get("window", 1000)
    flat_mib: float = params.get("flat_mib", 2.0)
    source = unique("soak")
    seen = 0
    samples: list[dict[str, float]] = []
    done = trio.Event()
    room = trio.Semaphore(window)
    start = 0.0

    def sample() -> None:
        samples.append(
            {
                "events": seen,
                "seconds": time.perf_counter() - start,
                "rss_mib": current_rss_mib(),
                "gc_objects": len(gc.get_objects()),
            }
        )

    def on_event(payload: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        room.release()
        if seen % sample_every == 0 or seen == events:
            sample()
        if seen == events:
            done.set()

    async with serving(uri, sink_service(source, on_event), source) as host:
        async with host.dispatcher() as dispatch:
            start = time.perf_counter()

            async def send(count: int) -> None:
                for i in range(count):
                    await room.acquire()
                    await dispatch(source, EVENT_TYPE, {"i": i})

            async with trio.open_nursery() as senders:
                share, extra = divmod(events, dispatchers)
                for d in range(dispatchers):
                    senders.start_soon(send, share + (1 if d < extra else 0))
            await done.wait()
            elapsed = time.perf_counter() - start

    baseline, last = samples[0], samples[-1]
    growth = last["rss_mib"] - baseline["rss_mib"]
    object_growth = (last["gc_objects"] - baseline["gc_objects"]) / baseline[
        "gc_objects"
    ]
    segment_rates = [
        (b["events"] - a["events"]) / (b["seconds"] - a["seconds"])
        for a, b in itertools.pairwise([{"events": 0.0, "seconds": 0.0}, *samples])
        if b["seconds"] > a["seconds"]
    ]
    return {
        "events": events,
        "seconds": elapsed,
        "rate": events / elapsed,
        "segment_rate_min": min(segment_rates),
        "segment_rate_median": statistics.median(segment_rates),
        "segment_rate_max": max(segment_rates),
        "samples": samples,
        "rss_first_mib": baseline["rss_mib"],
        "rss_last_mib": last["rss_mib"],
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "rss_growth_mib": growth,
        "gc_objects_growth": object_growth,
        "flat_threshold_mib": flat_mib,
        "flat": growth <= flat_mib and object_growth <= OBJECT_GROWTH,
        "peak_rss_mib": peak_rss_mib(),
    }
