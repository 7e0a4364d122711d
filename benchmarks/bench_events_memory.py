"""End-to-end events/s on the embedded broker: dispatch -> handler -> ack.

Usage: ``python benchmarks/bench_events_memory.py [--events N] [--runs R]
[--dispatchers D] [--max-workers W]``

A ServiceHost serves one handler; D tasks share one standalone dispatcher and send
N events in all; the clock stops when the handler has seen the last one and every
message was acked. Prints min / median / max events/s over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from typing import Any

import trio

from trioevents import MemoryTransport, ServiceHost, event_handler
from trioevents._memory import drop_broker


class Sink:
    name = "sink"
    seen = 0
    target = 0
    done: trio.Event | None = None

    @event_handler("bench", "tick")
    async def tick(self, payload: dict[str, Any]) -> None:
        Sink.seen += 1
        if Sink.seen == Sink.target and Sink.done is not None:
            Sink.done.set()


async def one_run(events: int, dispatchers: int, max_workers: int) -> float:
    name = f"bench-{uuid.uuid4().hex}"
    uri = f"memory://{name}"
    Sink.seen, Sink.target, Sink.done = 0, events, trio.Event()
    host = ServiceHost([Sink], config={"AMQP_URI": uri, "max_workers": max_workers})
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        async with host.dispatcher() as dispatch:
            start = time.perf_counter()

            async def send(count: int) -> None:
                for i in range(count):
                    await dispatch("bench", "tick", {"i": i})

            async with trio.open_nursery() as senders:
                share, extra = divmod(events, dispatchers)
                for d in range(dispatchers):
                    senders.start_soon(send, share + (1 if d < extra else 0))
            await Sink.done.wait()
            elapsed = time.perf_counter() - start
        await host.stop()
        nursery.cancel_scope.cancel()
    async with MemoryTransport(name).open_connection() as conn:
        left = await conn.declare_queue("evt-bench-tick--sink.tick", passive=True)
        assert left.message_count == 0, "every event must be acked"
    drop_broker(name)
    return events / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--max-workers", type=int, default=10)
    args = parser.parse_args(argv)
    rates = [
        trio.run(one_run, args.events, args.dispatchers, args.max_workers)
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
