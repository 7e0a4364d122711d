"""Bounded retries with backoff, then the dead-letter queue (``_events/_retry``).

The policy (:class:`~trioevents.Backoff`) and the attempt counter without a
broker; then retries on both brokers. Delays are short, so that RabbitMQ runs
them in real time; the embedded broker runs them in virtual time
(``broker_clock``), where they can be checked exactly. A handler that times out
is retried the same way (``test_events_handler.py``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import (
    Backoff,
    EventHandlerConfigurationError,
    Properties,
    event_handler,
)
from trioevents._events._retry import attempts_so_far

from .support.brokers import (
    connect,
    dead_letters,
    dispatch,
    publish,
    queue_depth,
    queue_exists,
)
from .support.recording import Recorder, log_lines, problems, watch_log

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

SOURCE = "src"
EVENT = "ping"
QUEUE_PREFIX = "evt-src-ping--"
#: The retry delays, in seconds: short, and each different from the others.
DELAYS = (0.1, 0.3, 0.5)
#: Quick reconnects, for the tests where the broker closes a channel.
RECONNECTING = {"RECONNECT_DELAY": 0.05, "RECONNECT_MAX_DELAY": 0.2}

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_recorder() -> None:
    global recorder
    recorder = Recorder()


# ------------------------------------------------------------------------- policy


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


# ---------------------------------------------------------------- on both brokers


class Flaky:
    name = "flaky"
    fail_times = 0

    @event_handler(SOURCE, EVENT, retry=Backoff(*DELAYS))
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", trio.current_time())
        if len(recorder.calls) <= Flaky.fail_times:
            raise ConnectionError(f"attempt {len(recorder.calls)} failed")


async def test_retries_wait_their_delays_then_succeed(
    broker_uri: str,
    host_factory: HostFactory,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    Flaky.fail_times = 2
    await host_factory(Flaky)
    start = trio.current_time()
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
    calls = await recorder.wait_for(3)
    await host_factory.aclose()
    times = [t for _, t in calls]
    waits = [later - earlier for earlier, later in itertools.pairwise(times)]
    if broker_clock is not None:  # virtual time: exactly the delays
        assert times[0] - start == pytest.approx(0, abs=0.01)
        assert waits == pytest.approx(DELAYS[:2], abs=0.01)
    else:  # real time: at least each delay (the TTL), and not seconds more
        for waited, delay in zip(waits, DELAYS[:2], strict=False):
            assert delay - 0.01 <= waited < delay + 10
    assert len(recorder.calls) == 3
    assert not await queue_exists(broker_uri, QUEUE_PREFIX + "flaky.handle.dlq")


async def test_exhausted_retries_end_in_the_dead_letter_queue(
    broker_uri: str,
    host_factory: HostFactory,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    Flaky.fail_times = 100
    queue = QUEUE_PREFIX + "flaky.handle"
    await host_factory(Flaky)
    await dispatch(
        broker_uri,
        SOURCE,
        EVENT,
        {"n": 1},
        message_id="m-9",
        headers={"custom": "kept"},
    )
    (dead,) = await dead_letters(broker_uri, queue)
    await host_factory.aclose()
    assert len(recorder.calls) == 4  # the first attempt and 3 retries
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
    assert await queue_depth(broker_uri, queue) == 0


class Picky:
    name = "picky"

    @event_handler(SOURCE, EVENT, retry=Backoff(1, retry_on=(ConnectionError,)))
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", payload)
        raise ValueError("never worth a retry")


async def test_errors_the_policy_does_not_retry_go_to_the_dlq_at_once(
    broker_uri: str, host_factory: HostFactory
) -> None:
    await host_factory(Picky)
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
    (dead,) = await dead_letters(broker_uri, QUEUE_PREFIX + "picky.handle")
    await host_factory.aclose()
    assert dead.properties.headers is not None
    assert dead.properties.headers["x-trioevents-attempts"] == 1
    assert dead.properties.headers["x-trioevents-error"] == (
        "ValueError: never worth a retry"
    )
    assert len(recorder.calls) == 1


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise AttributeError("no message for you")


class Unprintable:
    name = "unprintable"

    @event_handler(SOURCE, EVENT, retry=Backoff(0.1))
    async def handle(self, payload: Any) -> None:
        recorder.record("ran", payload)
        raise UnprintableError


async def test_an_exception_whose_str_fails_is_retried_then_dead_lettered(
    broker_uri: str,
    host_factory: HostFactory,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    await host_factory(Unprintable, RECONNECTING)
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
    (dead,) = await dead_letters(broker_uri, QUEUE_PREFIX + "unprintable.handle")
    assert dead.properties.headers is not None
    error = dead.properties.headers["x-trioevents-error"]
    assert error == "UnprintableError: <str() failed: AttributeError>"
    assert len(recorder.calls) == 2


class RetryLater:
    name = "retry_later"

    @event_handler(SOURCE, EVENT, retry=Backoff(0.2))
    async def handle(self, payload: Any) -> None:
        recorder.record("ran", payload)
        raise ValueError("try again")


async def test_a_refused_retry_copy_backs_off_without_running_the_handler_again(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    queue = QUEUE_PREFIX + "retry_later.handle"
    retry_queue = f"{queue}.retry.200"
    async with connect(broker_uri) as connection:
        # a retry queue declared with other arguments: our declare is refused
        await connection.declare_queue(
            retry_queue, durable=True, arguments={"x-max-length": 5}
        )
    await host_factory(RetryLater, RECONNECTING)
    refused = "the broker refuses the copy"
    with watch_log() as log:
        await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
        await recorder.wait_for(1)
        await log.wait_for(refused, within=20)
        await trio.sleep(3.5)  # 1 + 2 s of backoff: 3 tries at most, one log line
        assert recorder.calls == [("ran", {"n": 1})]  # the handler did not run again
        assert log.count(refused) == 1
    (line,) = log_lines(caplog, refused)
    assert retry_queue in line
    assert "406" in line
    async with connect(broker_uri) as connection:
        await connection.delete_queue(retry_queue)
    # the next try declares the retry queue properly: the retry comes back
    await recorder.wait_for(2)
    assert log_lines(caplog, "copied event", "after")


class Retrying:
    """Fails every attempt at any event but the good one: exercises the retry counter."""

    name = "retrying"

    @event_handler(SOURCE, EVENT, retry=Backoff(0.05, 0.05))
    async def handle(self, payload: Any) -> None:
        recorder.record("retrying", payload)
        if payload != {"n": 1}:
            raise ValueError("always fails")


RETRYING_QUEUE = QUEUE_PREFIX + "retrying.handle"
RETRY_QUEUE = f"{RETRYING_QUEUE}.retry.50"


@pytest.mark.parametrize(
    ("x_death", "calls", "attempts", "kept"),
    [
        # not a list: no attempt counted; the copies go without it
        pytest.param("garbage", 3, 3, False, id="not-a-list"),
        # an entry without a count counts once, as RabbitMQ reads it
        pytest.param(
            [{"queue": RETRY_QUEUE, "reason": "expired"}], 3, 3, True, id="no-count"
        ),
        pytest.param(
            ["junk", 5, [1], {"queue": 7}, {"count": "many"}],
            3,
            3,
            False,
            id="junk-entries",
        ),
        pytest.param(
            [{"queue": RETRY_QUEUE, "reason": "expired", "count": "x"}],
            3,
            3,
            False,
            id="count-not-an-int",
        ),
    ],
)
async def test_a_malformed_x_death_header_never_breaks_the_retry_counter(
    x_death: Any,
    calls: int,
    attempts: int,
    kept: bool,
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    """The retry counter reads what it can; the copies it makes are sound.

    RabbitMQ 3.10 crashes the queue, and loses the message, when it
    dead-letters one whose ``x-death`` holds entries that are not tables, or a
    count that is not an integer: such entries never go to a retry queue. The
    header as it came is kept in ``x-trioevents-invalid-x-death``.
    """
    await host_factory(Retrying, {"max_workers": 1, "SHUTDOWN_GRACE": 1})
    await publish(
        broker_uri,
        "src.events",
        EVENT,
        b'{"n": 2}',
        Properties(
            content_type="application/json",
            headers={"x-death": x_death},
            message_id="x-death",
        ),
    )
    (dead,) = await dead_letters(broker_uri, RETRYING_QUEUE)
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
    seen = await recorder.wait_for(calls + 1)
    assert [payload for _, payload in seen] == [{"n": 2}] * calls + [{"n": 1}]
    assert dead.body == b'{"n": 2}'
    headers = dead.properties.headers
    assert headers is not None
    assert headers["x-trioevents-attempts"] == attempts
    assert headers["x-trioevents-error"] == "ValueError: always fails"
    if kept:
        assert "x-trioevents-invalid-x-death" not in headers
    else:
        assert headers["x-trioevents-invalid-x-death"] == x_death
    assert all(isinstance(death.get("count", 1), int) for death in headers["x-death"])
    assert problems(caplog, "message id x-death", "giving up")
    assert await queue_depth(broker_uri, RETRYING_QUEUE) == 0
