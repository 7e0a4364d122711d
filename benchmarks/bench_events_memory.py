"""End-to-end events/s on the embedded broker: dispatch -> handler -> ack.

Usage: ``python benchmarks/bench_events_memory.py [--events N] [--runs R]
[--dispatchers D] [--max-workers W]``

A ServiceHost serves one handler; D tasks share one standalone dispatcher and send
N events in all; the clock stops when the handler has seen the last one and every
message was acked. Prints min / median / max events/s over the runs.

The scenario is the suite's (``_end_to_end.py``); ``benchmarks/run.py`` runs it
with every other figure, on both transports.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import _end_to_end
import trio
from _common import memory_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--max-workers", type=int, default=10)
    args = parser.parse_args(argv)
    rates = [
        trio.run(
            _end_to_end.run,
            {
                "uri": memory_uri(),
                "events": args.events,
                "dispatchers": args.dispatchers,
                "max_workers": args.max_workers,
            },
        )["rate"]
        for _ in range(args.runs)
    ]
    print(
        f"embedded broker, {args.events:,} events, {args.dispatchers} dispatcher(s), "
        f"max_workers {args.max_workers}, python {sys.version.split()[0]}, "
        f"trio {trio.__version__}"
    )
    print(
        f"dispatch -> handler -> ack: min {min(rates):,.0f} / median "
        f"{statistics.median(rates):,.0f} / max {max(rates):,.0f} events/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
