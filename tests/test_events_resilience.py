"""Nothing a handler or the broker does to one handler stops the host (#12).

Each test runs on the embedded broker and on RabbitMQ (``broker_uri``), with
virtual time on the embedded broker and real time, short delays, on RabbitMQ.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trioevents import Backoff, EventHandler, event_handler
from trioevents._host import transport_for_uri

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trioevents import abc
    from trioevents.testing import HostFactory

SOURCE = "res_src"
EVENT = "ping"
EXCHANGE = f"{SOURCE}.events"
CONFIG = {"RECONNECT_DELAY": 0.05, "RECONNECT_MAX_DELAY": 0.2}

calls: list[tuple[str, Any]] = []
changed = trio.Event()


def record(who: str, value: Any) -> None:
    global changed
    calls.append((who, value))
    changed.set()
    changed = trio.Event()


async def wait_calls(count: int, within: float = 20) -> list[tuple[str, Any]]:
    with trio.fail_after(within):
        while len(calls) < count:
            await changed.wait()
    return calls


@pytest.fixture(autouse=True)
def fresh_calls() -> None:
    global changed
    calls.clear()
    changed = trio.Event()


@pytest.fixture
def clock(broker_uri: str) -> trio.testing.MockClock | None:
    """Virtual time on the embedded broker; real time on RabbitMQ."""
    if broker_uri.startswith("memory"):
        return trio.testing.MockClock(autojump_threshold=0)
    return None


@contextlib.asynccontextmanager
async def connect(uri: str) -> AsyncIterator[abc.Connection]:
    async with transport_for_uri(uri).open_connection() as connection:
        yield connection


async def dispatch(host_factory: HostFactory, payload: Any) -> None:
    async with host_factory.dispatcher() as send:
        await send(SOURCE, EVENT, payload)


async def take_all(uri: str, queue: str) -> list[bytes]:
    """Take and ack every message ready in *queue*."""
    bodies = []
    async with connect(uri) as connection:
        ready = (await connection.declare_queue(queue, passive=True)).message_count
        async with connection.open_consumer(queue) as consumer:
            for _ in range(ready):
                delivery = await consumer.receive()
                bodies.append(delivery.body)
                await delivery.ack()
    return bodies


def log_lines(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if all(needle in record.getMessage() for needle in needles)
    ]


class LogEvent(logging.Handler):
    """Sets a trio.Event when a trioevents log line contains *needle*."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.count = 0
        self._event = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.count += 1
            self._event.set()
            self._event = trio.Event()

    async def wait_for(self, count: int, within: float = 20) -> None:
        with trio.fail_after(within):
            while self.count < count:
                await self._event.wait()


@contextlib.contextmanager
def watch_log(needle: str) -> Any:
    handler = LogEvent(needle)
    root = logging.getLogger("trioevents")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# ------------------------------------------------- handler-side failures (4, 9)


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise AttributeError("no message for you")


class Unprintable:
    name = "unprintable"

    @event_handler(SOURCE, EVENT, retry=Backoff(0.1))
    async def handle(self, payload: Any) -> None:
        record("ran", payload)
        raise UnprintableError


async def test_an_exception_whose_str_fails_is_retried_then_dead_lettered(
    broker_uri: str,
    clock: trio.testing.MockClock | None,
    host_factory: HostFactory,
) -> None:
    dlq = f"evt-{SOURCE}-{EVENT}--unprintable.handle.dlq"
    await host_factory(Unprintable, CONFIG)
    async with connect(broker_uri) as connection:
        await connection.declare_queue(dlq, durable=True)  # as the host does
        async with connection.open_consumer(dlq) as consumer:
            await dispatch(host_factory, {"n": 1})
            with trio.fail_after(20):
                dead = await consumer.receive()
            await dead.ack()
    assert dead.properties.headers is not None
    error = dead.properties.headers["x-trioevents-error"]
    assert error == "UnprintableError: <str() failed: AttributeError>"
    assert len(calls) == 2


init_failures = 0


class BrokenInit:
    name = "broken_init"

    def __init__(self) -> None:
        global init_failures
        if init_failures < 1:
            init_failures += 1
            raise KeyError("a missing setting")

    @event_handler(SOURCE, EVENT)
    async def handle(self, payload: Any) -> None:
        record("ran", payload)


async def test_a_service_whose_init_raises_fails_that_worker_only(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    global init_failures
    init_failures = 0
    await host_factory(BrokenInit, CONFIG)
    await dispatch(host_factory, {"n": 1})  # __init__ raises: the handler's error
    await dispatch(host_factory, {"n": 2})  # the host still serves
    await wait_calls(1)
    assert calls == [("ran", {"n": 2})]
    (line,) = log_lines(caplog, "error handling event", "broken_init.handle")
    assert "acked (not requeued)" in line


class Stray:
    name = "stray"

    @event_handler(SOURCE, EVENT)
    async def handle(self, payload: Any) -> None:
        record("ran", payload)
        if payload["n"] == 1:
            stray: trio.Cancelled | None = None
            with trio.CancelScope() as scope:
                scope.cancel()
                try:
                    await trio.lowlevel.checkpoint()
                except trio.Cancelled as exc:
                    stray = exc
            assert stray is not None
            raise stray  # outside the scope that was cancelled


async def test_a_stray_cancelled_from_a_handler_is_its_error_not_a_stop(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = await host_factory(Stray, CONFIG)
    await dispatch(host_factory, {"n": 1})
    await dispatch(host_factory, {"n": 2})
    await wait_calls(2)
    assert host.serving
    (line,) = log_lines(caplog, "error handling event", "stray.handle")
    assert "acked (not requeued)" in line
    assert any(
        "raised trio.Cancelled without being cancelled" in str(r.exc_info[1])
        for r in caplog.records
        if r.exc_info is not None
    )


# ------------------------------------------------- a refused copy never loops (2)


class RetryLater:
    name = "retry_later"

    @event_handler(SOURCE, EVENT, retry=Backoff(0.2))
    async def handle(self, payload: Any) -> None:
        record("ran", payload)
        raise ValueError("try again")


async def test_a_refused_retry_copy_backs_off_without_running_the_handler_again(
    broker_uri: str,
    clock: trio.testing.MockClock | None,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = f"evt-{SOURCE}-{EVENT}--retry_later.handle"
    retry_queue = f"{queue}.retry.200"
    async with connect(broker_uri) as connection:
        # a retry queue declared with other arguments: our declare is refused
        await connection.declare_queue(
            retry_queue, durable=True, arguments={"x-max-length": 5}
        )
    await host_factory(RetryLater, CONFIG)
    with watch_log("the broker refuses the copy") as refused:
        await dispatch(host_factory, {"n": 1})
        await wait_calls(1)
        await refused.wait_for(1)
        await trio.sleep(3.5)  # 1 + 2 s of backoff: 3 tries at most, one log line
        assert calls == [("ran", {"n": 1})]  # the handler did not run again
        assert refused.count == 1
    (line,) = log_lines(caplog, "the broker refuses the copy")
    assert retry_queue in line
    assert "406" in line
    async with connect(broker_uri) as connection:
        await connection.delete_queue(retry_queue)
    # the next try declares the retry queue properly: the retry comes back
    await wait_calls(2, within=30)
    assert log_lines(caplog, "copied event", "after")


# ------------------------------------------ the broker cancels a consumer (3a)


class Steady:
    name = "steady"

    @event_handler(SOURCE, EVENT)
    async def handle(self, payload: Any) -> None:
        record("ran", payload)


async def test_a_queue_deleted_under_its_consumer_is_declared_and_consumed_again(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = f"evt-{SOURCE}-{EVENT}--steady.handle"
    host = await host_factory(Steady, CONFIG)
    with watch_log(f"consuming {queue!r}") as consuming:
        async with connect(broker_uri) as connection:
            await connection.delete_queue(queue)
        await consuming.wait_for(1)
    await dispatch(host_factory, {"n": 1})
    await wait_calls(1)
    assert host.serving
    assert log_lines(caplog, "the broker cancelled the consumer of", queue)


class Exclusive(EventHandler):
    @property
    def broadcast_identifier(self) -> str:
        return "node-1"


class StableBroadcast:
    name = "stable_broadcast"

    @Exclusive.decorator(
        SOURCE, EVENT, handler_type="broadcast", reliable_delivery=False
    )
    async def handle(self, payload: Any) -> None:
        record("ran", payload)


async def test_an_exclusive_queue_held_by_another_connection_is_waited_for(
    broker_uri: str,
    clock: trio.testing.MockClock | None,
    host_factory: HostFactory,
    nursery: trio.Nursery,
) -> None:
    queue = f"evt-{SOURCE}-{EVENT}--stable_broadcast.handle-node-1"
    held = trio.Event()
    release = trio.Event()

    async def hold() -> None:
        async with connect(broker_uri) as connection:
            await connection.declare_queue(queue, auto_delete=True, exclusive=True)
            held.set()
            await release.wait()

    nursery.start_soon(hold)
    await held.wait()
    with watch_log("is still held by an earlier connection") as locked:
        async with trio.open_nursery() as starting:
            starting.start_soon(host_factory, StableBroadcast, CONFIG)
            await locked.wait_for(2)  # it waits, and tries again
            release.set()  # the other connection goes: the queue with it
    await dispatch(host_factory, {"n": 1})
    await wait_calls(1)
