"""Random cancellation of a ServiceHost: no message acked twice, early, or lost.

Each seed runs a host through random faults -- cancelling ``serve()`` at once,
graceful stops, and cut connections -- while handlers sleep for random (virtual)
times and sometimes fail (``requeue_on_error``). Every ack the broker takes is
recorded (``FlakyTransport(on_settle=...)``). At the end every event must have
been acked exactly once, and only after a handler run for it had finished.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trioevents import MemoryTransport, ServiceHost, Settlement, event_handler
from trioevents.testing import FlakyTransport

if TYPE_CHECKING:
    from trioevents import Delivery

EVENTS = 40


class Ledger:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.started: Counter[int] = Counter()
        self.finished: Counter[int] = Counter()
        self.acked: Counter[int] = Counter()
        self.early_acks: list[int] = []
        self.all_acked = trio.Event()

    def ack(self, event_id: int) -> None:
        if self.finished[event_id] <= self.acked[event_id]:
            self.early_acks.append(event_id)
        self.acked[event_id] += 1
        if len(self.acked) == EVENTS:
            self.all_acked.set()


ledger: Ledger


def record_ack(delivery: Delivery, how: Settlement) -> None:
    """Enter each ack the broker took in the ledger (``FlakyTransport(on_settle=)``)."""
    if how is Settlement.ACK:
        ledger.ack(int(delivery.properties.message_id or -1))


class Worker:
    name = "worker"

    @event_handler("src", "job", requeue_on_error=True)
    async def handle(self, payload: dict[str, Any]) -> None:
        event_id = payload["id"]
        ledger.started[event_id] += 1
        await trio.sleep(ledger.rng.uniform(0, 2))
        if ledger.rng.random() < 0.1:
            raise RuntimeError("random failure")
        ledger.finished[event_id] += 1


@pytest.mark.parametrize("seed", range(25))
async def test_random_cancellation_never_acks_twice_early_or_loses(
    seed: int, memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    global ledger
    rng = random.Random(seed)
    ledger = Ledger(rng)
    inner = MemoryTransport.from_uri(memory_uri)
    transport = FlakyTransport(inner, on_settle=record_ack)
    config = {"AMQP_URI": memory_uri, "max_workers": 4, "SHUTDOWN_GRACE": 1.5}

    async with inner.open_connection() as conn:
        await conn.declare_exchange("src.events", durable=True)
        host = ServiceHost([Worker], config=config, transport=transport)
        with trio.fail_after(10_000):
            for round_ in range(12):
                if ledger.all_acked.is_set():
                    break
                async with trio.open_nursery() as nursery:
                    await nursery.start(host.serve)
                    if round_ == 0:
                        async with host.dispatcher() as dispatch:
                            for event_id in range(EVENTS):
                                await dispatch(
                                    "src",
                                    "job",
                                    {"id": event_id},
                                    message_id=str(event_id),
                                )
                    await trio.sleep(rng.uniform(0, 3))
                    fault = rng.choice(["cancel", "stop", "cut", "cut"])
                    if fault == "cancel":
                        nursery.cancel_scope.cancel()
                    elif fault == "stop":
                        await host.stop()
                    else:
                        transport.cut()
                        await trio.sleep(rng.uniform(0, 2))
                        nursery.cancel_scope.cancel()
            # then a calm run drains whatever is left
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                await ledger.all_acked.wait()
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
        left = await conn.declare_queue("evt-src-job--worker.handle", passive=True)

    assert left.message_count == 0
    assert ledger.early_acks == []
    assert sorted(ledger.acked) == list(range(EVENTS))  # none lost
    assert set(ledger.acked.values()) == {1}  # none acked twice
