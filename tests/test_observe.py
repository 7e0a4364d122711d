"""Observers (``trioevents._observe``) and ``ServiceHost.state``, on both brokers."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trioevents import (
    Backoff,
    DispatchedEvent,
    EventDispatcher,
    HandledEvent,
    HostState,
    MemoryTransport,
    Observer,
    Outcome,
    Properties,
    ServiceHost,
    event_handler,
)
from trioevents.testing import FlakyTransport

from .support.brokers import publish
from .support.recording import Recorder

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trioevents.testing import HostFactory

SOURCE = "obs_src"

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh() -> None:
    global recorder
    recorder = Recorder()


class Watch(Observer):
    """Records what it is told, and marks dispatches with a header."""

    def __init__(self) -> None:
        self.dispatched: list[DispatchedEvent] = []
        self.handled: list[HandledEvent] = []
        self.states: list[HostState] = []
        self.changed = trio.Event()

    def _note(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @contextlib.contextmanager
    def dispatching(self, event: DispatchedEvent) -> Iterator[None]:
        event.headers["x-watched"] = "yes"
        yield
        self.dispatched.append(event)
        self._note()

    @contextlib.contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        assert event.outcome is None
        yield
        self.handled.append(event)
        self._note()

    def state_changed(self, state: HostState) -> None:
        self.states.append(state)
        self._note()

    async def wait_handled(self, count: int) -> list[HandledEvent]:
        with trio.fail_after(30):
            while len(self.handled) < count:
                await self.changed.wait()
        return self.handled


class Relay:
    name = "relay"
    dispatch = EventDispatcher()

    @event_handler(SOURCE, "in")
    async def relay(self, payload: Any) -> None:
        await self.dispatch("out", payload)


class Sink:
    name = "sink"

    @event_handler("relay", "out")
    async def take(self, payload: Any) -> None:
        recorder.record("took", payload)


async def test_an_observer_sees_every_dispatch_and_can_add_headers(
    broker_uri: str, host_factory: HostFactory
) -> None:
    watch = Watch()
    host = host_factory.make([Relay, Sink])
    host.add_observer(watch)
    await host_factory.start(host)
    async with host_factory.dispatcher() as dispatch:
        await dispatch(SOURCE, "in", {"n": 1})  # not observed: another host
    await watch.wait_handled(2)
    (relayed,) = watch.dispatched
    assert (relayed.service, relayed.exchange, relayed.event_type) == (
        "relay",
        "relay.events",
        "out",
    )
    assert relayed.worker_ctx is not None
    assert relayed.error is None
    by_handler = {event.handler: event for event in watch.handled}
    took = by_handler["sink.take"]
    assert took.headers["x-watched"] == "yes"  # added by the observer, it travelled
    assert took.outcome is Outcome.ACK
    assert took.worker_ctx is not None
    assert took.worker_ctx.parent_call_id_stack == tuple(
        relayed.worker_ctx.call_id_stack
    )


async def test_a_standalone_dispatch_is_observed_without_a_service(
    host_factory: HostFactory,
) -> None:
    watch = Watch()
    host = ServiceHost([], host_factory.config, observers=[watch])
    async with host.dispatcher() as dispatch:
        await dispatch(SOURCE, "in", {"n": 1}, message_id="m-1")
    (event,) = watch.dispatched
    assert (event.service, event.worker_ctx, event.message_id) == (None, None, "m-1")


class Outcomes:
    name = "outcomes"

    @event_handler(SOURCE, "ok")
    async def ok(self, payload: Any) -> None:
        pass

    @event_handler(SOURCE, "fails")
    async def fails(self, payload: Any) -> None:
        raise ValueError("nope")

    @event_handler(SOURCE, "retried", retry=Backoff(0.05))
    async def retried(self, payload: Any) -> None:
        raise ValueError("again")

    @event_handler(SOURCE, "requeued", requeue_on_error=True)
    async def requeued(self, payload: Any) -> None:
        recorder.record("requeued", payload)
        if len(recorder.calls) == 1:
            raise ValueError("once")


async def test_the_outcome_of_each_delivery_is_observed(
    broker_uri: str, host_factory: HostFactory, broker_clock: Any
) -> None:
    watch = Watch()
    host = host_factory.make(Outcomes)
    host.add_observer(watch)
    await host_factory.start(host)
    async with host_factory.dispatcher() as dispatch:
        await dispatch(SOURCE, "ok", {})
        await dispatch(SOURCE, "fails", {})
        await dispatch(SOURCE, "retried", {})
        await dispatch(SOURCE, "requeued", {"first": True})
    await publish(
        broker_uri,
        f"{SOURCE}.events",
        "ok",
        b"not json",
        Properties(content_type="application/json"),
    )
    # ok, fails, retried twice (then dead-lettered), requeued twice, undecodable
    handled = await watch.wait_handled(7)
    outcomes = sorted((e.handler, e.outcome.value) for e in handled if e.outcome)
    assert outcomes == sorted(
        [
            ("outcomes.ok", "ack"),
            ("outcomes.ok", "undecodable"),
            ("outcomes.fails", "ack"),
            ("outcomes.retried", "retry"),
            ("outcomes.retried", "dead-letter"),
            ("outcomes.requeued", "requeue"),
            ("outcomes.requeued", "ack"),
        ]
    )
    attempts = [e.attempt for e in handled if e.handler == "outcomes.retried"]
    assert attempts == [1, 2]
    failed = [e for e in handled if e.handler == "outcomes.fails"]
    assert isinstance(failed[0].error, ValueError)
    undecodable = [e for e in handled if e.outcome is Outcome.UNDECODABLE]
    assert undecodable[0].worker_ctx is None


class Broken(Observer):
    @contextlib.contextmanager
    def dispatching(self, event: DispatchedEvent) -> Iterator[None]:
        if event.exchange:  # always: the bug is on the way in
            raise RuntimeError("observer bug on the way in")
        yield

    @contextlib.contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        yield
        raise RuntimeError("observer bug on the way out")

    def state_changed(self, state: HostState) -> None:
        raise RuntimeError("observer bug on a state")


async def test_a_failing_observer_never_fails_the_work(
    host_factory: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    host = host_factory.make([Relay, Sink])
    host.add_observer(Broken())
    await host_factory.start(host)
    async with host_factory.dispatcher() as dispatch:
        await dispatch(SOURCE, "in", {"n": 1})
    assert await recorder.wait_for(1) == [("took", {"n": 1})]
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("failed to start dispatching" in m for m in messages)
    assert any("failed to end handling" in m for m in messages)
    assert any("failed on state" in m for m in messages)


async def test_the_state_follows_the_host_through_a_lost_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = Watch()
    uri = "memory://observe-state"
    transport = FlakyTransport(MemoryTransport.from_uri(uri))
    host = ServiceHost(
        [Sink],
        {"AMQP_URI": uri, "RECONNECT_DELAY": 1},
        transport=transport,
        observers=[watch],
    )
    assert host.state is HostState.STOPPED
    async with trio.open_nursery() as nursery:
        nursery.start_soon(host.serve)
        assert await host.wait_state(HostState.SERVING) is HostState.SERVING
        transport.refuse(2)
        transport.cut()
        await host.wait_state(HostState.RECONNECTING)
        await host.wait_state(HostState.SERVING)
        await host.stop()
    assert host.state is HostState.STOPPED
    assert watch.states == [
        HostState.CONNECTING,
        HostState.SERVING,
        HostState.RECONNECTING,
        HostState.SERVING,
        HostState.STOPPING,
        HostState.STOPPED,
    ]
