"""ServiceHost (``trioevents._host``): limits, cancellation, graceful stop, its log.

How a service is bound and its workers run is in ``test_service.py``; keeping
the connection in ``test_connecting.py``; the standalone dispatcher in
``test_publisher.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trioevents import ConfigurationError, EventDispatcher, ServiceHost, event_handler

from .support.brokers import dispatch, make_host, queue_depth, take_all
from .support.recording import Gate

QUEUE = "evt-src-ping--blocking.handle"

gate = Gate()


@pytest.fixture(autouse=True)
def fresh_gate() -> None:
    global gate
    gate = Gate()


class Blocking:
    name = "blocking"

    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> None:
        await gate.pass_through()


async def dispatch_n(uri: str, n: int) -> None:
    await dispatch(uri, "src", "ping", *({"i": i} for i in range(n)))


async def redelivered_flags(uri: str, queue: str) -> list[bool]:
    """Take what is in *queue*; say which deliveries were redelivered, in order."""
    return [delivery.redelivered for delivery in await take_all(uri, queue)]


async def test_max_workers_bounds_concurrent_handlers(
    nursery: trio.Nursery, memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    host = make_host([Blocking], memory_uri, max_workers=3)
    await nursery.start(host.serve)
    await dispatch_n(memory_uri, 10)
    await trio.testing.wait_all_tasks_blocked()
    assert gate.running == 3
    gate.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert gate.finished == 10
    assert gate.peak == 3
    nursery.cancel_scope.cancel()


async def test_prefetch_count_can_be_set_apart_from_max_workers(
    nursery: trio.Nursery, memory_uri: str
) -> None:
    host = make_host([Blocking], memory_uri, max_workers=2, PREFETCH_COUNT=5)
    await nursery.start(host.serve)
    await dispatch_n(memory_uri, 10)
    await trio.testing.wait_all_tasks_blocked()
    assert gate.running == 2
    assert await queue_depth(memory_uri, QUEUE) == 5  # five more held by the consumer
    gate.release.set()
    nursery.cancel_scope.cancel()


async def test_cancelling_serve_mid_handler_leaves_the_message_for_the_next_start(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    host = make_host([Blocking], memory_uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch_n(memory_uri, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert gate.running == 1
        nursery.cancel_scope.cancel()
    assert gate.finished == 0
    assert await redelivered_flags(memory_uri, QUEUE) == [True]


async def test_graceful_stop_lets_in_flight_handlers_finish_and_acks_them(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    host = make_host([Blocking], memory_uri, max_workers=2, PREFETCH_COUNT=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch_n(memory_uri, 5)
        await trio.testing.wait_all_tasks_blocked()
        assert gate.running == 2
        stopped = trio.Event()

        async def stop() -> None:
            await host.stop()
            stopped.set()

        nursery.start_soon(stop)
        await trio.testing.wait_all_tasks_blocked()
        assert not stopped.is_set()  # waiting for the two in-flight handlers
        gate.release.set()
        await stopped.wait()
    assert gate.finished == 2
    # the two finished ones were acked; the two held by the consumer but never
    # started went back (redelivered, at their original place); one never left
    assert await redelivered_flags(memory_uri, QUEUE) == [True, True, False]


async def test_graceful_stop_cancels_what_outlives_the_grace_period(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    host = make_host([Blocking], memory_uri, SHUTDOWN_GRACE=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch_n(memory_uri, 1)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await host.stop()
        assert trio.current_time() - start == pytest.approx(5)
    assert gate.finished == 0
    assert await redelivered_flags(memory_uri, QUEUE) == [True]


def test_unsupported_uri_scheme_is_a_configuration_error() -> None:
    """The config refuses it: the host is never built."""
    with pytest.raises(ConfigurationError, match="unsupported scheme"):
        ServiceHost([Blocking], config={"AMQP_URI": "redis://u:secret@localhost"})


async def test_serving_twice_at_once_is_refused(
    nursery: trio.Nursery, memory_uri: str
) -> None:
    host = make_host([Blocking], memory_uri)
    await nursery.start(host.serve)
    with pytest.raises(trio.BusyResourceError):
        await host.serve()
    nursery.cancel_scope.cancel()


class Announcer:
    name = "announcer"
    dispatch = EventDispatcher()

    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> None:
        pass


async def test_each_lifecycle_step_is_logged_once(
    nursery: trio.Nursery, memory_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="trioevents")
    host = make_host([Announcer], memory_uri)
    await nursery.start(host.serve)
    await host.stop()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("trioevents")]
    expected = [
        "connected to memory://",
        "declared exchange 'announcer.events'",
        "declared queue 'evt-src-ping--announcer.handle', bound to 'src.events' by "
        "'ping'",
        "consuming 'evt-src-ping--announcer.handle' for announcer.handle",
        "serving announcer",
        "stopping: consumers cancelled",
        "stopped",
    ]
    for step in expected:
        matching = [line for line in lines if line.startswith(step)]
        assert len(matching) == 1, (step, lines)
    # and in that order
    firsts = [
        next(i for i, line in enumerate(lines) if line.startswith(s)) for s in expected
    ]
    assert firsts == sorted(firsts)
