"""Bounded retries with backoff, dead-letter queues and handler timeouts."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trioevents import (
    Backoff,
    Delivery,
    EventHandlerConfigurationError,
    MemoryTransport,
    event_handler,
)
from trioevents._events._retry import attempts_so_far

from .helpers import Recorder, fresh_uri, make_host, queue_depth, queue_exists

QUEUE_PREFIX = "evt-src-ping--"
recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_recorder() -> None:
    global recorder
    recorder = Recorder()


async def dispatch_one(uri: str, payload: Any, **options: Any) -> None:
    host = make_host([], uri)
    async with host.dispatcher() as dispatch:
        await dispatch("src", "ping", payload, **options)


async def take_all(uri: str, queue: str) -> list[Delivery]:
    """Take (and ack) every message ready in *queue*."""
    out = []
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        count = (await conn.declare_queue(queue, passive=True)).message_count
        async with conn.open_consumer(queue) as consumer:
            for _ in range(count):
                delivery = await consumer.receive()
                await delivery.ack()
                out.append(delivery)
    return out


class Flaky:
    name = "flaky"
    fail_times = 0

    @event_handler("src", "ping", retry=Backoff(1, 5, 30))
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", trio.current_time())
        if len(recorder.calls) <= Flaky.fail_times:
            raise ConnectionError(f"attempt {len(recorder.calls)} failed")


async def test_retries_wait_their_delays_then_succeed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    Flaky.fail_times = 2
    uri = fresh_uri()
    host = make_host([Flaky], uri)
    await nursery.start(host.serve)
    start = trio.current_time()
    await dispatch_one(uri, {"n": 1})
    calls = await recorder.wait_for(3)
    times = [t - start for _, t in calls]
    assert times[0] == pytest.approx(0, abs=0.01)
    assert times[1] == pytest.approx(1, abs=0.01)  # first delay
    assert times[2] == pytest.approx(6, abs=0.01)  # then five more seconds
    await trio.testing.wait_all_tasks_blocked()
    assert len(recorder.calls) == 3
    assert not await queue_exists(uri, QUEUE_PREFIX + "flaky.handle.dlq")
    nursery.cancel_scope.cancel()


async def test_exhausted_retries_end_in_the_dead_letter_queue(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    Flaky.fail_times = 100
    uri = fresh_uri()
    queue = QUEUE_PREFIX + "flaky.handle"
    host = make_host([Flaky], uri)
    await nursery.start(host.serve)
    await dispatch_one(uri, {"n": 1}, message_id="m-9", headers={"custom": "kept"})
    await recorder.wait_for(4, within=120)  # the first attempt and 3 retries
    await trio.testing.wait_all_tasks_blocked()
    assert len(recorder.calls) == 4
    (dead,) = await take_all(uri, queue + ".dlq")
    assert dead.body == b'{"n": 1}'
    assert dead.properties.message_id == "m-9"
    headers = dead.properties.headers
    assert headers is not None
    assert headers["custom"] == "kept"
    assert headers["x-trioevents-error"] == "ConnectionError: attempt 4 failed"
    assert "Traceback" in headers["x-trioevents-traceback"]
    assert headers["x-trioevents-attempts"] == 4
    assert headers["x-trioevents-original-exchange"] == "src.events"
    assert headers["x-trioevents-original-routing-key"] == "ping"
    assert await queue_depth(uri, queue) == 0
    nursery.cancel_scope.cancel()


class Picky:
    name = "picky"

    @event_handler("src", "ping", retry=Backoff(1, retry_on=(ConnectionError,)))
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", payload)
        raise ValueError("never worth a retry")


async def test_errors_the_policy_does_not_retry_go_to_the_dlq_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    uri = fresh_uri()
    host = make_host([Picky], uri)
    await nursery.start(host.serve)
    await dispatch_one(uri, {"n": 1})
    await recorder.wait_for(1)
    await trio.testing.wait_all_tasks_blocked()
    (dead,) = await take_all(uri, QUEUE_PREFIX + "picky.handle.dlq")
    assert dead.properties.headers is not None
    assert dead.properties.headers["x-trioevents-attempts"] == 1
    assert len(recorder.calls) == 1
    nursery.cancel_scope.cancel()


class Typed:
    name = "typed"

    @event_handler("src", "ping")
    async def handle(self, payload: list[int]) -> None:
        recorder.record("ok", payload)


async def test_undecodable_messages_go_straight_to_the_dlq(
    nursery: trio.Nursery,
) -> None:
    uri = fresh_uri()
    host = make_host([Typed], uri, MAX_MESSAGE_SIZE=1000)
    await nursery.start(host.serve)
    await dispatch_one(uri, {"not": "a list"})
    await dispatch_one(uri, list(range(1000)))  # over MAX_MESSAGE_SIZE
    await dispatch_one(uri, [1, 2])
    assert await recorder.wait_for(1) == [("ok", [1, 2])]
    await trio.testing.wait_all_tasks_blocked()
    dead = await take_all(uri, QUEUE_PREFIX + "typed.handle.dlq")
    assert len(dead) == 2
    errors = [d.properties.headers["x-trioevents-error"] for d in dead]  # type: ignore[index]
    assert all(e.startswith("SerializationError") for e in errors)
    nursery.cancel_scope.cancel()


class Slow:
    name = "slow"

    @event_handler("src", "ping", timeout=5, retry=Backoff(1))
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", payload)
        await trio.sleep_forever()


async def test_a_handler_that_never_returns_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    uri = fresh_uri()
    host = make_host([Slow], uri)
    await nursery.start(host.serve)
    await dispatch_one(uri, {"n": 1})
    await recorder.wait_for(2)
    await trio.sleep(5)  # virtual time: the second attempt times out too
    await trio.testing.wait_all_tasks_blocked()
    (dead,) = await take_all(uri, QUEUE_PREFIX + "slow.handle.dlq")
    assert dead.properties.headers is not None
    assert dead.properties.headers["x-trioevents-error"].startswith("HandlerTimeout")
    nursery.cancel_scope.cancel()


def test_backoff_validates_its_arguments() -> None:
    with pytest.raises(EventHandlerConfigurationError):
        Backoff()
    with pytest.raises(EventHandlerConfigurationError):
        Backoff(-1)
    with pytest.raises(EventHandlerConfigurationError):
        Backoff(1, retry_on=ValueError)  # type: ignore[arg-type]
    assert Backoff.exponential(1, factor=3, max_delay=20, retries=4).delays == (
        1.0,
        3.0,
        9.0,
        20.0,
    )


def test_retry_and_requeue_on_error_exclude_each_other() -> None:
    with pytest.raises(EventHandlerConfigurationError, match="use one of them"):
        event_handler("src", "ping", requeue_on_error=True, retry=Backoff(1))


def test_timeout_must_be_positive() -> None:
    with pytest.raises(EventHandlerConfigurationError, match="timeout"):
        event_handler("src", "ping", timeout=0)


def test_attempts_are_counted_from_x_death() -> None:
    queue = "evt-a-b--c.d"
    headers = {
        "x-death": [
            {"queue": f"{queue}.retry.5000", "reason": "expired", "count": 1},
            {"queue": f"{queue}.retry.1000", "reason": "expired", "count": 2},
            {"queue": "elsewhere", "reason": "expired", "count": 7},
            {"queue": f"{queue}.retry.1000", "reason": "rejected", "count": 1},
        ]
    }
    assert attempts_so_far(headers, queue) == 4
    assert attempts_so_far(None, queue) == 1
    assert attempts_so_far({"x-death": "garbage"}, queue) == 1
