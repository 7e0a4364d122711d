"""Profile the end-to-end hot path (dispatch -> handler -> ack) with cProfile.

Usage::

    python benchmarks/profile_hot_path.py [--rabbitmq] [--events N]
                                          [--dispatchers D] [--top K]

Runs the end-to-end scenario of the suite (:mod:`_end_to_end`) in this process:
once without the profiler, to get the wall rate and the CPU time per event,
then once under cProfile. cProfile slows Python calls down unevenly, so its
times are shown as shares of the profiled total, and converted to microseconds
per event with the unprofiled CPU time: an estimate, good for ranking.

Prints the time per area (trio's scheduler, the broker, serialization, ...) and
the functions with the most own time. ``--rabbitmq`` profiles against the local
RabbitMQ (a fresh vhost, deleted afterwards) instead of the embedded broker.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import sys
import time
from collections import defaultdict
from typing import Any

import _end_to_end
import trio
from _common import memory_uri

#: (substring of a code file's path, area), first match wins.
AREAS: tuple[tuple[str, str], ...] = (
    ("trio/_core/_run.py", "trio: scheduler (_run.py)"),
    ("trio/_core/", "trio: core (traps, cancel scopes, ki)"),
    ("trio/", "trio: primitives (Event, channels, limiter, sync)"),
    ("outcome/", "trio: outcome"),
    ("trioevents/_memory/", "trioevents: embedded broker"),
    ("trioevents/amqp/_connection.py", "trioevents: AMQP connection tasks"),
    ("trioevents/amqp/_mux.py", "trioevents: AMQP connection tasks"),
    ("trioevents/amqp/_publishing.py", "trioevents: AMQP connection tasks"),
    ("trioevents/amqp/_consumer.py", "trioevents: AMQP connection tasks"),
    ("trioevents/amqp/", "trioevents: AMQP protocol (sans-IO)"),
    ("pamqp/", "pamqp: frame marshal/unmarshal"),
    ("trioevents/_host.py", "trioevents: host (serve)"),
    ("trioevents/_service.py", "trioevents: run_worker"),
    ("trioevents/_publisher.py", "trioevents: publish path"),
    ("trioevents/_events/_retry.py", "trioevents: retry headers"),
    ("trioevents/_events/", "trioevents: handler (consume, settle)"),
    ("trioevents/_worker.py", "trioevents: worker context"),
    ("trioevents/_serialization.py", "trioevents: serialization"),
    ("trioevents/_codec.py", "trioevents: serialization"),
    ("trioevents/_validation.py", "trioevents: validation"),
    ("trioevents/_fieldtable.py", "trioevents: validation"),
    ("trioevents/_message.py", "trioevents: Delivery/Properties"),
    ("trioevents/", "trioevents: other"),
    ("cattrs/", "cattrs"),
    ("<attrs generated", "attrs-generated __init__/__eq__"),
    ("attr/", "attrs"),
    ("json/", "json"),
    ("uuid.py", "uuid"),
    ("socket", "socket I/O"),
    ("selectors", "epoll"),
    ("_benchmark", "the benchmark itself"),
)


def area_of(filename: str, name: str) -> str:
    if filename == "~":  # a C function: attribute by its name
        if "socket" in name or "recv" in name or "send" in name:
            return "socket I/O"
        if "epoll" in name or "poll" in name:
            return "epoll"
        return "C builtins (len, isinstance, getattr, ...)"
    for needle, area in AREAS:
        if needle in filename:
            return area
    if "/benchmarks/" in filename:
        return "the benchmark itself"
    return "other Python"


async def measure(uri: str, events: int, dispatchers: int) -> dict[str, Any]:
    return await _end_to_end.run(
        {"uri": uri, "events": events, "dispatchers": dispatchers}
    )


def fresh(uri: str | None) -> str:
    return uri if uri is not None else memory_uri()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rabbitmq", action="store_true")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--dispatchers", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    events = args.events or (20_000 if args.rabbitmq else 50_000)

    with contextlib.ExitStack() as stack:
        uri: str | None = None
        where = "memory://"
        if args.rabbitmq:
            from _rabbit import DEFAULT_AMQP_URI, DEFAULT_API_URI, RabbitMQ

            rabbit = RabbitMQ(DEFAULT_AMQP_URI, DEFAULT_API_URI)
            problem = rabbit.problem()
            if problem is not None:
                print(problem, file=sys.stderr)
                return 1
            uri = stack.enter_context(rabbit.vhost())
            where = "RabbitMQ"

        trio.run(measure, fresh(uri), min(events, 2000), args.dispatchers)  # warm up
        cpu0 = time.process_time()
        plain = trio.run(measure, fresh(uri), events, args.dispatchers)
        cpu_us = (time.process_time() - cpu0) / events * 1e6

        profiler = cProfile.Profile()
        profiler.enable()
        profiled = trio.run(measure, fresh(uri), events, args.dispatchers)
        profiler.disable()

    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    areas: dict[str, float] = defaultdict(float)
    for (filename, _, name), entry in raw.items():
        areas[area_of(filename, name)] += entry[2]
    # epoll's own time is mostly waiting (wall time, not CPU): leave it out of
    # the total that the shares are taken of.
    idle = areas.pop("epoll", 0.0)
    total = sum(areas.values())

    print(
        f"end-to-end on {where}, {events:,} events, {args.dispatchers} dispatcher(s): "
        f"{plain['rate']:,.0f} events/s without the profiler "
        f"({profiled['rate']:,.0f} with), {cpu_us:.0f} us CPU per event in this "
        "process"
    )
    print(
        f"\nown time by area (share of profiled time, ~us per event of {cpu_us:.0f}); "
        f"time in epoll (mostly waiting, not counted): {idle:.1f} s"
    )
    for area, seconds in sorted(areas.items(), key=lambda kv: -kv[1]):
        share = seconds / total
        if share < 0.005:
            continue
        print(f"  {share:6.1%}  {share * cpu_us:6.1f} us  {area}")

    print(f"\ntop {args.top} functions by own time (calls per event, share, ~us/event)")
    rows = sorted(
        (kv for kv in raw.items() if area_of(kv[0][0], kv[0][2]) != "epoll"),
        key=lambda kv: -kv[1][2],
    )[: args.top]
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in rows:
        share = tottime / total
        short = filename.split("site-packages/")[-1]
        for package in ("/trioevents/", "/benchmarks/"):
            if package in short:
                short = package[1:] + short.split(package, 1)[1]
        print(
            f"  {ncalls / events:5.1f}/ev  {share:6.1%}  {share * cpu_us:5.1f} us  "
            f"cum {cumtime / total:6.1%}  {short}:{line}({name})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
