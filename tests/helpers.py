"""Small helpers for the host and events tests (all on the embedded broker)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import trio

from trioevents import DependencyProvider, MemoryTransport, ServiceHost, WorkerContext

if TYPE_CHECKING:
    from collections.abc import Sequence


def fresh_uri() -> str:
    """A ``memory://`` URI of a broker no other test uses."""
    return f"memory://test-{uuid.uuid4().hex}"


def make_host(services: Sequence[type], uri: str, **config: Any) -> ServiceHost:
    return ServiceHost(services, config={"AMQP_URI": uri, **config})


async def queue_depth(uri: str, queue: str) -> int:
    """Messages ready in *queue* (not counting unacked ones)."""
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        return (await conn.declare_queue(queue, passive=True)).message_count


async def queue_exists(uri: str, queue: str) -> bool:
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        try:
            await conn.declare_queue(queue, passive=True)
        except Exception:
            return False
        return True


class Recorder:
    """Collects what handlers saw; lets a test wait for a number of calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._changed = trio.Event()

    def record(self, who: str, value: Any) -> None:
        self.calls.append((who, value))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, within: float = 10) -> list[tuple[str, Any]]:
        with trio.fail_after(within):
            while len(self.calls) < count:
                await self._changed.wait()
        return self.calls


class WorkerCtx(DependencyProvider[WorkerContext]):
    """Injects the worker context itself (like nameko's ContextDataProvider)."""

    def get_dependency(self, worker_ctx: WorkerContext) -> WorkerContext:
        return worker_ctx
