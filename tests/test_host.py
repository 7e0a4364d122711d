"""ServiceHost: lifecycle, ack-after-handler, cancellation, graceful stop, limits."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trioevents import (
    ConfigurationError,
    DependencyProvider,
    Entrypoint,
    EventDispatcher,
    Extension,
    MemoryTransport,
    ServiceHost,
    WorkerContext,
    event_handler,
)

from .helpers import Recorder, fresh_uri, make_host, queue_depth

QUEUE = "evt-src-ping--blocking.handle"


class Gate:
    """Lets a test hold handlers inside their body and release them."""

    def __init__(self) -> None:
        self.entered = 0
        self.running = 0
        self.peak = 0
        self.release = trio.Event()
        self.finished = 0

    async def pass_through(self) -> None:
        self.entered += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        self.finished += 1


gate = Gate()
log: list[str] = []


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global gate
    gate = Gate()
    log.clear()


class Blocking:
    name = "blocking"

    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> None:
        await gate.pass_through()


async def dispatch_n(uri: str, n: int, event_type: str = "ping") -> None:
    host = ServiceHost([], config={"AMQP_URI": uri})
    async with host.dispatcher() as dispatch:
        for i in range(n):
            await dispatch("src", event_type, {"i": i})


async def unacked_redelivered(uri: str, queue: str) -> list[bool]:
    """Consume what is in *queue* and say which deliveries were redelivered."""
    flags = []
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        async with conn.open_consumer(queue) as consumer:
            depth = (await conn.declare_queue(queue, passive=True)).consumer_count
            del depth
            while True:
                with trio.move_on_after(1) as scope:
                    delivery = await consumer.receive()
                if scope.cancelled_caught:
                    break
                flags.append(delivery.redelivered)
                await delivery.ack()
    return flags


async def test_max_workers_bounds_concurrent_handlers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    uri = fresh_uri()
    host = make_host([Blocking], uri, max_workers=3)
    await nursery.start(host.serve)
    await dispatch_n(uri, 10)
    await trio.testing.wait_all_tasks_blocked()
    assert gate.running == 3
    gate.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert gate.finished == 10
    assert gate.peak == 3
    nursery.cancel_scope.cancel()


async def test_prefetch_count_can_be_set_apart_from_max_workers(
    nursery: trio.Nursery,
) -> None:
    uri = fresh_uri()
    host = make_host([Blocking], uri, max_workers=2, PREFETCH_COUNT=5)
    await nursery.start(host.serve)
    await dispatch_n(uri, 10)
    await trio.testing.wait_all_tasks_blocked()
    assert gate.running == 2
    assert await queue_depth(uri, QUEUE) == 5  # five more held by the consumer
    gate.release.set()
    nursery.cancel_scope.cancel()


async def test_cancelling_serve_mid_handler_leaves_the_message_for_the_next_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    host = make_host([Blocking], uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch_n(uri, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert gate.running == 1
        nursery.cancel_scope.cancel()
    assert gate.finished == 0
    assert await unacked_redelivered(uri, QUEUE) == [True]


async def test_graceful_stop_lets_in_flight_handlers_finish_and_acks_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    host = make_host([Blocking], uri, max_workers=2, PREFETCH_COUNT=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch_n(uri, 5)
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
    assert await unacked_redelivered(uri, QUEUE) == [True, True, False]


async def test_graceful_stop_cancels_what_outlives_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    host = make_host([Blocking], uri, SHUTDOWN_GRACE=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch_n(uri, 1)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await host.stop()
        assert trio.current_time() - start == pytest.approx(5)
    assert gate.finished == 0
    assert await unacked_redelivered(uri, QUEUE) == [True]


class Hooked(DependencyProvider[str]):
    def get_dependency(self, worker_ctx: WorkerContext) -> str:
        return "injected"

    async def worker_setup(self, worker_ctx: WorkerContext) -> None:
        log.append("setup")

    async def worker_result(
        self, worker_ctx: WorkerContext, result: Any, exc: BaseException | None
    ) -> None:
        log.append(f"result:{result}:{exc!r}")

    async def worker_teardown(self, worker_ctx: WorkerContext) -> None:
        log.append("teardown")
        await gate.pass_through()
        log.append("teardown done")


class WithHooks:
    name = "hooks"
    dep = Hooked()

    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> str:
        log.append(f"handler:{self.dep}")
        return "ok"


async def test_ack_waits_for_worker_result_and_teardown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    queue = "evt-src-ping--hooks.handle"
    host = make_host([WithHooks], uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch_n(uri, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["setup", "handler:injected", "result:ok:None", "teardown"]
        # the handler finished but teardown has not: cancelling now must not ack
        nursery.cancel_scope.cancel()
    assert await unacked_redelivered(uri, queue) == [True]
    # and when teardown finishes, the message is acked
    log.clear()
    gate.release.set()
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch_n(uri, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert log[-1] == "teardown done"
        nursery.cancel_scope.cancel()
    assert await queue_depth(uri, queue) == 0


class Lifecycle(Extension):
    async def setup(self) -> None:
        log.append(f"setup {self.service_name}")

    async def start(self) -> None:
        log.append(f"start {self.service_name}")

    async def stop(self) -> None:
        log.append(f"stop {self.service_name}")


class LifecycleDep(Lifecycle, DependencyProvider[None]):
    pass


class A:
    name = "a"
    ext = LifecycleDep()


class B:
    name = "b"
    ext = LifecycleDep()


async def test_setup_of_all_then_start_of_all_then_stop() -> None:
    host = make_host([A, B], fresh_uri())
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        assert log == ["setup a", "setup b", "start a", "start b"]
        await host.stop()
    assert log[4:] == ["stop a", "stop b"]


bound: list[Extension] = []


class Bound(DependencyProvider[None]):
    async def setup(self) -> None:
        bound.append(self)


class WithBound:
    name = "with_bound"
    ext = Bound()


async def test_extensions_are_bound_per_host() -> None:
    bound.clear()
    uri = fresh_uri()
    one, two = make_host([WithBound], uri), make_host([WithBound], uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(one.serve)
        await nursery.start(two.serve)
        ext_one, ext_two = bound
        assert ext_one is not ext_two
        assert WithBound.ext not in bound
        assert not WithBound.ext.is_bound
        assert ext_one.service is not ext_two.service
        assert ext_one.service.config is one.config
        assert ext_two.service.config is two.config
        assert ext_one.service.name == "with_bound"
        nursery.cancel_scope.cancel()


class NoName:
    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> None: ...


class SyncHandler:
    name = "sync"

    @event_handler("src", "ping")
    def handle(self, payload: Any) -> None: ...


class Twin:
    name = "a"


class Opaque:
    def __init__(self, value: int) -> None:
        self.value = value


class Unstructurable:
    name = "unstructurable"

    @event_handler("src", "ping")
    async def handle(self, payload: Opaque) -> None: ...


class NoPayload:
    name = "no_payload"

    @event_handler("src", "ping")
    async def handle(self) -> None: ...


@pytest.mark.parametrize(
    ("services", "match"),
    [
        ([NoName], "has no name"),
        ([SyncHandler], "not an 'async def'"),
        ([A, Twin], "two services named 'a'"),
        ([Unstructurable], "annotation cannot be structured"),
        ([NoPayload], "must take the event payload"),
    ],
)
async def test_configuration_errors_come_out_of_serve_unwrapped(
    nursery: trio.Nursery, services: list[type], match: str
) -> None:
    host = make_host(services, fresh_uri())
    with pytest.raises(ConfigurationError, match=match):
        await nursery.start(host.serve)


class BadExtension(Extension):
    async def setup(self) -> None:
        raise ConfigurationError("this extension cannot work")


class BadDep(BadExtension, DependencyProvider[None]):
    pass


class WithBadDep:
    name = "bad"
    dep = BadDep()


async def test_an_error_in_setup_comes_out_unwrapped(nursery: trio.Nursery) -> None:
    host = make_host([WithBadDep], fresh_uri())
    with pytest.raises(ConfigurationError, match="cannot work"):
        await nursery.start(host.serve)


def test_unsupported_uri_scheme_is_a_configuration_error() -> None:
    """The config refuses it: the host is never built."""
    with pytest.raises(ConfigurationError, match="unsupported scheme"):
        ServiceHost([A], config={"AMQP_URI": "redis://u:secret@localhost"})


async def test_serving_twice_at_once_is_refused(nursery: trio.Nursery) -> None:
    host = make_host([A], fresh_uri())
    await nursery.start(host.serve)
    with pytest.raises(trio.BusyResourceError):
        await host.serve()
    nursery.cancel_scope.cancel()


class Emitter:
    name = "emitter"
    dispatch = EventDispatcher()

    @event_handler("src", "go")
    async def go(self, payload: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.dispatch, "went", payload)
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()  # cancels the dispatch mid-way
        recorder.record("cancelled", nursery.cancel_scope.cancelled_caught)
        await self.dispatch("went", {"second": True})
        recorder.record("second", True)


recorder = Recorder()


async def test_a_cancelled_dispatch_corrupts_nothing(nursery: trio.Nursery) -> None:
    global recorder
    recorder = Recorder()
    uri = fresh_uri()
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        await conn.declare_exchange("emitter.events", durable=True)
        await conn.declare_queue("watch")
        await conn.bind_queue("watch", "emitter.events", "went")
        host = make_host([Emitter], uri)
        await nursery.start(host.serve)
        await dispatch_n(uri, 1, "go")
        assert await recorder.wait_for(2) == [("cancelled", True), ("second", True)]
        # the second dispatch went through; the cancelled one may or may not have
        # (at-least-once): either way every message in the queue is whole
        depth = (await conn.declare_queue("watch", passive=True)).message_count
        assert depth in (1, 2)
        nursery.cancel_scope.cancel()


async def test_dispatcher_works_without_serve() -> None:
    uri = fresh_uri()
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        await conn.declare_queue("q")
        await conn.declare_exchange("somebody.events", durable=True)
        await conn.bind_queue("q", "somebody.events", "#")
        host = ServiceHost([], config={"AMQP_URI": uri})
        async with host.dispatcher() as dispatch:
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(dispatch, "somebody", "happened", {"i": i})
        async with conn.open_consumer("q") as consumer:
            bodies = []
            for _ in range(5):
                delivery = await consumer.receive()
                assert delivery.properties.content_type == "application/json"
                assert delivery.properties.delivery_mode == 2
                assert delivery.properties.headers is None  # standalone: no context
                bodies.append(delivery.body)
                await delivery.ack()
    assert sorted(bodies) == [b'{"i": %d}' % i for i in range(5)]


class Announcer:
    name = "announcer"
    dispatch = EventDispatcher()

    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> None:
        pass


async def test_each_lifecycle_step_is_logged_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="trioevents")
    uri = fresh_uri()
    host = make_host([Announcer], uri)
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


class OldStyle(Entrypoint):
    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:  # type: ignore[override]
        task_status.started()


class WithOldStyle:
    name = "old_style"

    @OldStyle.decorator
    async def tick(self) -> None: ...


async def test_an_entrypoint_whose_run_takes_no_context_is_refused_clearly() -> None:
    host = make_host([WithOldStyle], fresh_uri())
    with pytest.raises(
        ConfigurationError, match=r"OldStyle.run must take the connection"
    ):
        await host.serve()
