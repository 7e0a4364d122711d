"""The little shop the testing kit's tests run: orders dispatch, billing charges.

Handlers record into :data:`recorder`; ``Billing.slow`` waits for :data:`release`.
Call :func:`reset` before each test (the test modules do, in an autouse fixture)
and read both through the module (``shop.recorder``), as :func:`reset` replaces
them.
"""

from __future__ import annotations

import decimal
from typing import Any

import attrs
import trio

from trioevents import DependencyProvider, EventDispatcher, WorkerContext, event_handler

from .recording import Recorder

recorder = Recorder()
release = trio.Event()


def reset() -> None:
    """Forget what was recorded; close :data:`release` again."""
    global recorder, release
    recorder = Recorder()
    release = trio.Event()


@attrs.frozen
class OrderPlaced:
    id: int
    total: decimal.Decimal


class Clock(DependencyProvider[str]):
    """A dependency that is not a dispatcher."""

    def get_dependency(self, worker_ctx: WorkerContext) -> str:
        return "12:00"


class Teardowns(DependencyProvider[None]):
    """Records every worker teardown, to check the waiter waits for it."""

    async def worker_teardown(self, worker_ctx: WorkerContext) -> None:
        await trio.lowlevel.checkpoint()
        recorder.record("teardown", worker_ctx.method_name)


class Orders:
    name = "orders"
    dispatch = EventDispatcher()
    clock = Clock()
    teardowns = Teardowns()

    @event_handler("web", "checkout")
    async def on_checkout(self, payload: dict[str, Any]) -> int:
        if payload.get("fail"):
            raise ValueError(f"bad basket {payload['id']}")
        order = OrderPlaced(payload["id"], decimal.Decimal(payload["total"]))
        await self.dispatch("order_placed", order)
        recorder.record("orders", payload["id"])
        return int(payload["id"]) * 10


class Billing:
    name = "billing"
    dispatch = EventDispatcher()

    @event_handler("orders", "order_placed")
    async def charge(self, event: OrderPlaced) -> None:
        recorder.record("billing", event.id)

    @event_handler("orders", "slow")
    async def slow(self, payload: Any) -> None:
        recorder.record("slow started", payload)
        await release.wait()
        recorder.record("slow finished", payload)


class Nameless:
    dispatch = EventDispatcher()

    async def go(self) -> None:
        await self.dispatch("went", {"x": 1})
