"""What handlers saw, and what the host logged: record in the handler, assert after.

A failed ``assert`` inside a handler is caught by the worker and shows up only as
a timeout, so handlers record into a :class:`Recorder` and the test body waits
for the calls, then asserts. A test that must wait for something the host only
logs waits on a :class:`LogWatch`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

import trio

from trioevents import (
    DependencyProvider,
    EventHandler,
    Observer,
    WorkerContext,
    event_handler,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pytest

    from trioevents import HandledEvent


class Recorder:
    """Collects what handlers saw; lets a test wait for a number of calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._changed = trio.Event()

    def record(self, who: str, value: Any) -> None:
        self.calls.append((who, value))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, within: float = 30) -> list[tuple[str, Any]]:
        """Wait until *count* calls were recorded (*within*: a generous guard)."""
        with trio.fail_after(within):
            while len(self.calls) < count:
                await self._changed.wait()
        return self.calls


class StableBroadcast(EventHandler):
    """A handler whose ``broadcast_identifier`` stays ``node-7`` across starts."""

    @property
    def broadcast_identifier(self) -> str:
        return "node-7"


def recording_service(
    service_name: str,
    recorder: Callable[[], Recorder],
    source: str,
    event_type: str,
    *,
    decorator: Callable[..., Callable[[Any], Any]] = event_handler,
    **options: Any,
) -> type:
    """A service whose ``handle`` of *source*'s *event_type* records its payload.

    It records ``(service_name, payload["n"])`` in ``recorder()`` (called at each
    event: the test module's current recorder). *decorator* and *options* make
    the handler (``StableBroadcast.decorator`` for a reliable broadcast).
    """

    class Service:
        name = service_name

        @decorator(source, event_type, **options)
        async def handle(self, payload: dict[str, Any]) -> None:
            recorder().record(self.name, payload["n"])

    return Service


class WorkerCtx(DependencyProvider[WorkerContext]):
    """Injects the worker context itself (like nameko's ContextDataProvider)."""

    def get_dependency(self, worker_ctx: WorkerContext) -> WorkerContext:
        return worker_ctx


def log_lines(
    caplog: pytest.LogCaptureFixture, *needles: str, level: int = logging.NOTSET
) -> list[str]:
    """The trioevents log lines, at *level* or above, that contain every needle."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("trioevents")
        and record.levelno >= level
        and all(needle in record.getMessage() for needle in needles)
    ]


def problems(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    """The trioevents WARNING+ log lines that contain every one of *needles*."""
    return log_lines(caplog, *needles, level=logging.WARNING)


class LogWatch(logging.Handler):
    """Keeps log messages as they come; lets a test wait for one."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.messages: list[str] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._changed.set()
        self._changed = trio.Event()

    def count(self, needle: str) -> int:
        """How many messages so far contain *needle*."""
        return sum(needle in m for m in self.messages)

    async def wait_for(
        self, needle: str, count: int = 1, *, within: float = math.inf
    ) -> None:
        """Wait until *count* messages contain *needle* (*within*: a guard)."""
        with trio.fail_after(within):
            while self.count(needle) < count:
                await self._changed.wait()


@contextlib.contextmanager
def watch_log(
    logger: str = "trioevents", level: int = logging.DEBUG
) -> Iterator[LogWatch]:
    """Watch what *logger* logs at *level* and above, from now until the end."""
    watched = logging.getLogger(logger)
    watch = LogWatch(level)
    before = watched.level
    watched.setLevel(level)
    watched.addHandler(watch)
    try:
        yield watch
    finally:
        watched.removeHandler(watch)
        watched.setLevel(before)


class Gate:
    """Holds handlers (or their hooks) inside their body until a test releases them."""

    def __init__(self) -> None:
        self.entered = 0
        self.running = 0
        self.peak = 0
        self.finished = 0
        self.release = trio.Event()

    async def pass_through(self) -> None:
        self.entered += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        self.finished += 1


def holding_service(
    service_name: str,
    recorder: Recorder,
    gate: Gate,
    source: str,
    event_type: str,
    **options: Any,
) -> type:
    """A service whose ``handle`` records each event, then holds it at *gate*.

    It records ``(service_name, payload["n"])`` in *recorder*, then waits until
    the gate is released: its delivery stays unacked meanwhile.
    """

    class Service:
        name = service_name

        @event_handler(source, event_type, **options)
        async def handle(self, payload: dict[str, Any]) -> None:
            recorder.record(self.name, payload["n"])
            await gate.pass_through()

    return Service


class Settled(Observer):
    """Counts handled deliveries once their ``handling`` context has exited.

    Add it to a host *before* the observer under test: contexts exit in reverse
    order, so when this one counts a delivery, the others are done with it
    (its span ended, its metrics counted).
    """

    def __init__(self) -> None:
        self.events: list[HandledEvent] = []
        self._changed = trio.Event()

    @contextlib.contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        try:
            yield
        finally:
            self.events.append(event)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, count: int, within: float = 30) -> list[HandledEvent]:
        """Wait until *count* deliveries were handled (*within*: a generous guard)."""
        with trio.fail_after(within):
            while len(self.events) < count:
                await self._changed.wait()
        return self.events
