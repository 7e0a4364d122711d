"""A service bound to a host (``trioevents._service``, with ``_extensions``).

Binding: one fresh copy of each extension per host, set up and started in
order, stopped in order; what is wrong with a service class is a
:class:`~trioevents.ConfigurationError` out of ``serve()``. Running a worker:
its dependencies' hooks around the method, the delivery settled only once they
all finished, and whatever the worker raises is its own error, never a stop of
the host (on both brokers). The host around it is in ``test_host.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trioevents import (
    ConfigurationError,
    DependencyProvider,
    Entrypoint,
    Extension,
    WorkerContext,
    event_handler,
)

from .support.brokers import dispatch, make_host, queue_depth, take_all
from .support.recording import Gate, Recorder, log_lines

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

gate = Gate()
log: list[str] = []
recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global gate, recorder
    gate = Gate()
    recorder = Recorder()
    log.clear()


# ------------------------------------------------------------------ a worker


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
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    queue = "evt-src-ping--hooks.handle"
    host = make_host([WithHooks], memory_uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch(memory_uri, "src", "ping", {"i": 0})
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["setup", "handler:injected", "result:ok:None", "teardown"]
        # the handler finished but teardown has not: cancelling now must not ack
        nursery.cancel_scope.cancel()
    assert [d.redelivered for d in await take_all(memory_uri, queue)] == [True]
    # and when teardown finishes, the message is acked
    log.clear()
    gate.release.set()
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch(memory_uri, "src", "ping", {"i": 1})
        await trio.testing.wait_all_tasks_blocked()
        assert log[-1] == "teardown done"
        nursery.cancel_scope.cancel()
    assert await queue_depth(memory_uri, queue) == 0


init_failures = 0


class BrokenInit:
    name = "broken_init"

    def __init__(self) -> None:
        global init_failures
        if init_failures < 1:
            init_failures += 1
            raise KeyError("a missing setting")

    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> None:
        recorder.record("ran", payload)


async def test_a_service_whose_init_raises_fails_that_worker_only(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    global init_failures
    init_failures = 0
    await host_factory(BrokenInit)
    await dispatch(broker_uri, "src", "ping", {"n": 1})  # __init__ raises
    await dispatch(broker_uri, "src", "ping", {"n": 2})  # the host still serves
    await recorder.wait_for(1)
    assert recorder.calls == [("ran", {"n": 2})]
    (line,) = log_lines(caplog, "error handling event", "broken_init.handle")
    assert "acked (not requeued)" in line


class Stray:
    name = "stray"

    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> None:
        recorder.record("ran", payload)
        if payload["n"] == 1:
            caught: list[trio.Cancelled] = []
            with trio.CancelScope() as scope:
                scope.cancel()
                try:
                    await trio.lowlevel.checkpoint()
                except trio.Cancelled as exc:
                    caught.append(exc)
            raise caught[0]  # outside the scope that was cancelled


async def test_a_stray_cancelled_from_a_handler_is_its_error_not_a_stop(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = await host_factory(Stray)
    await dispatch(broker_uri, "src", "ping", {"n": 1}, {"n": 2})
    await recorder.wait_for(2)
    assert host.serving
    (line,) = log_lines(caplog, "error handling event", "stray.handle")
    assert "acked (not requeued)" in line
    assert any(
        "raised trio.Cancelled without being cancelled" in str(r.exc_info[1])
        for r in caplog.records
        if r.exc_info is not None
    )


# ------------------------------------------------------------------ binding


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


async def test_setup_of_all_then_start_of_all_then_stop(memory_uri: str) -> None:
    host = make_host([A, B], memory_uri)
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


async def test_extensions_are_bound_per_host(memory_uri: str) -> None:
    bound.clear()
    one, two = make_host([WithBound], memory_uri), make_host([WithBound], memory_uri)
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
    nursery: trio.Nursery, memory_uri: str, services: list[type], match: str
) -> None:
    host = make_host(services, memory_uri)
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


async def test_an_error_in_setup_comes_out_unwrapped(
    nursery: trio.Nursery, memory_uri: str
) -> None:
    host = make_host([WithBadDep], memory_uri)
    with pytest.raises(ConfigurationError, match="cannot work"):
        await nursery.start(host.serve)


class OldStyle(Entrypoint):
    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:  # type: ignore[override]
        task_status.started()


class WithOldStyle:
    name = "old_style"

    @OldStyle.decorator
    async def tick(self) -> None: ...


async def test_an_entrypoint_whose_run_takes_no_context_is_refused_clearly(
    memory_uri: str,
) -> None:
    host = make_host([WithOldStyle], memory_uri)
    with pytest.raises(
        ConfigurationError, match=r"OldStyle.run must take the connection"
    ):
        await host.serve()
