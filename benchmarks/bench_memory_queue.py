"""Push small messages through one embedded-broker queue: publish -> consume -> ack.

Usage: ``python benchmarks/bench_memory_queue.py [--messages N] [--runs R]``

Prints messages/s (min / median / max over the runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

import trio

from trioevents._memory import MemoryTransport, drop_broker


async def one_run(messages: int, prefetch: int) -> float:
    name = f"bench-{uuid.uuid4()}"
    transport = MemoryTransport(name)
    body = b'{"id": 1}'
    async with transport.open_connection() as conn:
        await conn.declare_queue("bench")
        start = time.perf_counter()

        async def produce() -> None:
            for _ in range(messages):
                await conn.publish("", "bench", body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with conn.open_consumer("bench", prefetch_count=prefetch) as consumer:
                received = 0
                async for delivery in consumer:
                    await delivery.ack()
                    received += 1
                    if received == messages:
                        break
        elapsed = time.perf_counter() - start
    drop_broker(name)
    return messages / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=100)
    args = parser.parse_args(argv)
    rates = [trio.run(one_run, args.messages, args.prefetch) for _ in range(args.runs)]
    print(
        f"memory broker, one queue, {args.messages:,} messages, prefetch "
        f"{args.prefetch}, python {sys.version.split()[0]}, trio {trio.__version__}"
    )
    print(
        f"publish -> consume -> ack: min {min(rates):,.0f} / median "
        f"{statistics.median(rates):,.0f} / max {max(rates):,.0f} messages/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
