"""Event handlers (``trioevents._events._handler``), on both brokers.

Handler types (how a cluster shares an event), reliable delivery, routing by
event type, the handler's options, and its ``timeout``. What happens to a
delivery once its handler failed is in ``test_events_outcome.py`` (ack, requeue,
dead-letter) and ``test_events_retry.py`` (retries with backoff); the names and
flags of the queues, without a broker, in ``test_events_policy.py``.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import (
    BROADCAST,
    SINGLETON,
    Backoff,
    EventHandlerConfigurationError,
    HandlerTimeout,
    PreconditionFailed,
    event_handler,
)

from .support.brokers import (
    connect,
    dead_letters,
    dispatch,
    queue_depth,
    queue_exists,
    take_all,
)
from .support.recording import (
    Recorder,
    StableBroadcast,
    log_lines,
    problems,
    recording_service,
    watch_log,
)

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

SOURCE = "src"
EVENT = "ping"

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_recorder() -> None:
    global recorder
    recorder = Recorder()


async def ping(uri: str, *numbers: int) -> None:
    """Dispatch ``{"n": number}`` for each of *numbers*, in order."""
    await dispatch(uri, SOURCE, EVENT, *({"n": n} for n in numbers))


def pinged(service_name: str, **options: Any) -> type:
    """A service whose handler of ``src``/``ping`` records ``(name, payload["n"])``."""
    return recording_service(service_name, lambda: recorder, SOURCE, EVENT, **options)


Pool = pinged("pool")
OtherPool = pinged("other")
SingleA = pinged("single_a", handler_type=SINGLETON)
SingleB = pinged("single_b", handler_type=SINGLETON)
Cache = pinged("cache", handler_type=BROADCAST, reliable_delivery=False)
Unreliable = pinged("unreliable", reliable_delivery=False)
#: A reliable broadcast: its identifier is stable (``node-7``), not per start.
Reliable = pinged(
    "reliable", decorator=StableBroadcast.decorator, handler_type=BROADCAST
)
Exclusive = pinged(
    "exclusive",
    decorator=StableBroadcast.decorator,
    handler_type=BROADCAST,
    reliable_delivery=False,
)


# --------------------------------------------------------------------- handler types


async def test_service_pool_shares_each_event_among_instances(
    broker_uri: str, host_factory: HostFactory
) -> None:
    for service in (Pool, Pool, OtherPool):
        await host_factory(service)
    await ping(broker_uri, *range(20))
    calls = await recorder.wait_for(40)
    await host_factory.aclose()  # graceful: what is in flight finishes, is acked
    pool = sorted(n for who, n in calls if who == "pool")
    other = sorted(n for who, n in calls if who == "other")
    assert pool == list(range(20))  # each once for the two "pool" instances
    assert other == list(range(20))  # and once for the other service
    assert len(recorder.calls) == 40
    assert await queue_depth(broker_uri, "evt-src-ping--pool.handle") == 0
    assert await queue_depth(broker_uri, "evt-src-ping--other.handle") == 0


async def test_singleton_gets_each_event_once_in_the_cluster(
    broker_uri: str, host_factory: HostFactory
) -> None:
    await host_factory(SingleA)
    await host_factory(SingleB)
    await ping(broker_uri, *range(10))
    calls = await recorder.wait_for(10)
    await host_factory.aclose()
    assert sorted(n for _, n in calls) == list(range(10))
    assert len(recorder.calls) == 10
    assert {who for who, _ in calls} == {"single_a", "single_b"}  # round-robin
    assert await queue_depth(broker_uri, "evt-src-ping") == 0  # the one queue


async def test_broadcast_reaches_every_instance(
    broker_uri: str, host_factory: HostFactory
) -> None:
    for _ in range(3):
        await host_factory(Cache)
    await ping(broker_uri, 1, 2)
    calls = await recorder.wait_for(6)
    await host_factory.aclose()
    assert sorted(n for _, n in calls) == [1, 1, 1, 2, 2, 2]
    assert len(recorder.calls) == 6


def test_reliable_broadcast_with_the_default_identifier_is_refused() -> None:
    with pytest.raises(EventHandlerConfigurationError, match="broadcast identifier"):

        class Bad:
            name = "bad"

            @event_handler(SOURCE, EVENT, handler_type=BROADCAST)
            async def handle(self, payload: Any) -> None: ...


# -------------------------------------------------------------- reliable delivery


@pytest.mark.parametrize(
    ("service", "queue"),
    [
        pytest.param(Pool, "evt-src-ping--pool.handle", id="service-pool"),
        # a custom broadcast identifier names a queue that outlives its host
        pytest.param(
            Reliable, "evt-src-ping--reliable.handle-node-7", id="broadcast-node-7"
        ),
    ],
)
async def test_reliable_delivery_keeps_events_across_a_restart(
    service: type, queue: str, broker_uri: str, host_factory: HostFactory
) -> None:
    host = await host_factory(service)
    assert await queue_exists(broker_uri, queue)
    await host.stop()
    await ping(broker_uri, 5)
    assert await queue_depth(broker_uri, queue) == 1  # kept while nobody consumes
    await host_factory.start(host)
    assert await recorder.wait_for(1) == [(service.name, 5)]  # type: ignore[attr-defined]


async def test_unreliable_delivery_loses_events_while_down(
    broker_uri: str, host_factory: HostFactory
) -> None:
    queue = "evt-src-ping--unreliable.handle"
    host = await host_factory(Unreliable)
    assert await queue_exists(broker_uri, queue)
    await host.stop()
    assert not await queue_exists(broker_uri, queue)  # deleted with its consumer
    await ping(broker_uri, 1)  # nobody keeps it
    await host_factory.start(host)
    await ping(broker_uri, 2)
    assert await recorder.wait_for(1) == [("unreliable", 2)]
    await host_factory.aclose()
    assert recorder.calls == [("unreliable", 2)]


# ------------------------------------------------------------------------ routing


class Wild:
    name = "wild"

    @event_handler(SOURCE, "order.*")
    async def one_word(self, payload: dict[str, Any]) -> None:
        recorder.record("*", payload["k"])

    @event_handler(SOURCE, "order.#")
    async def any_words(self, payload: dict[str, Any]) -> None:
        recorder.record("#", payload["k"])


async def test_wildcard_event_types(broker_uri: str, host_factory: HostFactory) -> None:
    await host_factory(Wild)
    for key in ("order", "order.placed", "order.placed.eu", "invoice.sent"):
        await dispatch(broker_uri, SOURCE, key, {"k": key})
    await recorder.wait_for(4)
    await host_factory.aclose()
    assert sorted(recorder.calls) == [
        ("#", "order"),
        ("#", "order.placed"),
        ("#", "order.placed.eu"),
        ("*", "order.placed"),
    ]


async def test_a_queue_declared_with_other_arguments_stops_serve_clearly(
    broker_uri: str, host_factory: HostFactory
) -> None:
    """The broker's refusal comes out of serve() unwrapped, before started."""
    async with connect(broker_uri) as connection:
        await connection.declare_queue(
            "evt-src-ping--pool.handle",
            durable=True,
            arguments={"x-dead-letter-exchange": ""},
        )
    with pytest.raises(PreconditionFailed, match="inequivalent arg"):
        await host_factory(Pool)


# ------------------------------------------------- what the broker does to a queue

#: Quick reconnects, for the tests where the broker closes a channel.
RECONNECTING = {"RECONNECT_DELAY": 0.05, "RECONNECT_MAX_DELAY": 0.2}


async def test_a_queue_deleted_under_its_consumer_is_declared_and_consumed_again(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = "evt-src-ping--pool.handle"
    host = await host_factory(Pool, RECONNECTING)
    with watch_log() as log:
        async with connect(broker_uri) as connection:
            await connection.delete_queue(queue)
        await log.wait_for(f"consuming {queue!r}", within=20)
    await ping(broker_uri, 1)
    assert await recorder.wait_for(1) == [("pool", 1)]
    assert host.serving
    assert log_lines(caplog, "the broker cancelled the consumer of", queue)


async def test_an_exclusive_queue_held_by_another_connection_is_waited_for(
    broker_uri: str,
    host_factory: HostFactory,
    nursery: trio.Nursery,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    queue = "evt-src-ping--exclusive.handle-node-7"
    held = trio.Event()
    release = trio.Event()

    async def hold() -> None:
        async with connect(broker_uri) as connection:
            await connection.declare_queue(queue, auto_delete=True, exclusive=True)
            held.set()
            await release.wait()

    nursery.start_soon(hold)
    await held.wait()
    with watch_log() as log:
        async with trio.open_nursery() as starting:
            starting.start_soon(host_factory, Exclusive, RECONNECTING)
            # it waits, and tries again
            await log.wait_for("is still held by an earlier connection", 2, within=20)
            release.set()  # the other connection goes: the queue with it
    await ping(broker_uri, 1)
    assert await recorder.wait_for(1) == [("exclusive", 1)]


# ------------------------------------------------------------------------ options


def test_retry_and_requeue_on_error_exclude_each_other() -> None:
    with pytest.raises(EventHandlerConfigurationError, match="use one of them"):
        event_handler(SOURCE, EVENT, requeue_on_error=True, retry=Backoff(1))


def test_timeout_must_be_positive() -> None:
    with pytest.raises(EventHandlerConfigurationError, match="timeout"):
        event_handler(SOURCE, EVENT, timeout=0)


# ------------------------------------------------------------------------ timeout

#: One worker: a delivery is settled before the next one starts.
ONE_AT_A_TIME = {"max_workers": 1, "SHUTDOWN_GRACE": 1}


def hanging(service_name: str, **options: Any) -> type:
    """A service whose handler never returns for ``{"hang": true}`` (0.2 s timeout)."""

    class Hanging:
        name = service_name

        @event_handler(SOURCE, EVENT, timeout=0.2, **options)
        async def handle(self, payload: dict[str, Any]) -> None:
            recorder.record(self.name, payload)
            if payload.get("hang"):
                await trio.sleep_forever()

    return Hanging


async def hang_then_ping(uri: str) -> None:
    """Dispatch an event whose handler hangs (message id "stuck"), then a good one."""
    await dispatch(uri, SOURCE, EVENT, {"hang": True}, message_id="stuck")
    await ping(uri, 1)


async def test_a_handler_that_never_returns_times_out_and_is_acked(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    """Without a retry policy a timed-out event is acked and logged (nameko)."""
    queue = "evt-src-ping--hanging.handle"
    await host_factory(hanging("hanging"), ONE_AT_A_TIME)
    await hang_then_ping(broker_uri)
    calls = await recorder.wait_for(2)
    assert [payload for _, payload in calls] == [{"hang": True}, {"n": 1}]
    (line,) = problems(caplog, "stuck", "acked (not requeued)")
    assert "hanging.handle" in line
    (record,) = [r for r in caplog.records if r.exc_info and "stuck" in r.getMessage()]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], HandlerTimeout)
    assert "timeout of 0.2 s" in str(record.exc_info[1])
    assert await queue_depth(broker_uri, queue) == 0
    assert await take_all(broker_uri, f"{queue}.dlq") == []


async def test_a_handler_that_never_returns_is_retried_then_dead_lettered(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    queue = "evt-src-ping--hanging_retry.handle"
    service = hanging("hanging_retry", retry=Backoff(0.05))
    await host_factory(service, {**ONE_AT_A_TIME, "max_workers": 2})
    await hang_then_ping(broker_uri)
    (dead,) = await dead_letters(broker_uri, queue)
    calls = await recorder.wait_for(3)
    assert sorted(str(payload) for _, payload in calls) == [
        "{'hang': True}",
        "{'hang': True}",
        "{'n': 1}",
    ]
    assert dead.body == b'{"hang": true}'
    assert dead.properties.headers is not None
    error = dead.properties.headers["x-trioevents-error"]
    assert error.startswith("HandlerTimeout: hanging_retry.handle did not finish")
    assert dead.properties.headers["x-trioevents-attempts"] == 2
    assert problems(caplog, "stuck", "retrying in 0.05 s")
    assert problems(caplog, "stuck", "giving up", f"{queue}.dlq")
    assert await queue_depth(broker_uri, queue) == 0


# ------------------------------------------------------------ the worker pool

request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "request_id", default="unset"
)


class SetsContext:
    name = "sets_context"

    @event_handler(SOURCE, EVENT)
    async def handle(self, payload: Any) -> None:
        recorder.record("saw", request_id.get())
        request_id.set(f"set by {payload['n']}")
        await trio.lowlevel.checkpoint()
        recorder.record("kept", request_id.get())


async def test_a_pooled_worker_never_leaks_contextvars_to_the_next_delivery(
    broker_uri: str, host_factory: HostFactory
) -> None:
    """One worker handles every delivery: each still starts from a clean context."""
    await host_factory(SetsContext, {"max_workers": 1})
    await ping(broker_uri, 1, 2, 3)
    calls = await recorder.wait_for(6)
    assert [value for who, value in calls if who == "saw"] == ["unset"] * 3
    assert [value for who, value in calls if who == "kept"] == [
        "set by 1",
        "set by 2",
        "set by 3",
    ]


class Unlucky:
    name = "unlucky"

    @event_handler(SOURCE, EVENT, timeout=0.5)
    async def handle(self, payload: Any) -> None:
        recorder.record("started", payload["n"])
        if payload["n"] == 1:
            raise RuntimeError("crash")
        if payload["n"] == 2:
            await trio.sleep_forever()  # cancelled by its timeout


async def test_a_crash_or_a_cancelled_handler_does_not_stop_the_pool(
    broker_uri: str, host_factory: HostFactory, broker_clock: Any
) -> None:
    await host_factory(Unlucky, {"max_workers": 1})
    await ping(broker_uri, 1, 2, 3)
    calls = await recorder.wait_for(3)
    assert calls == [("started", 1), ("started", 2), ("started", 3)]


class Counting:
    name = "counting"

    @event_handler(SOURCE, EVENT)
    async def handle(self, payload: Any) -> None:
        recorder.record("handled", payload["n"])


async def test_a_dispatcher_in_a_tight_loop_does_not_starve_the_handlers(
    host_factory: HostFactory,
) -> None:
    """Handlers and other tasks keep running while one task dispatches flat out."""
    await host_factory(Counting)
    ticks = 0
    handled_while_dispatching = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with host_factory.dispatcher() as send:
            for n in range(2000):
                await send(SOURCE, EVENT, {"n": n})
            handled_while_dispatching = len(recorder.calls)
        done = True
    await recorder.wait_for(2000)
    assert handled_while_dispatching > 1000  # the handlers kept up
    assert ticks > 1000  # and so did an unrelated task
