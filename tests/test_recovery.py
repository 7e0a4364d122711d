"""The host survives lost connections: reconnect, re-declare, resume, republish."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from trioevents import (
    BrokerUnavailable,
    EventDispatcher,
    MemoryTransport,
    RemoteProtocolError,
    ServiceHost,
    event_handler,
)
from trioevents.testing import FlakyTransport

from .helpers import Recorder, fresh_uri, queue_depth

recorder = Recorder()
release = trio.Event()


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global recorder, release
    recorder = Recorder()
    release = trio.Event()


def flaky_host(
    services: list[type], uri: str, **config: Any
) -> tuple[ServiceHost, FlakyTransport]:
    transport = FlakyTransport(MemoryTransport.from_uri(uri))
    host = ServiceHost(
        services,
        config={"AMQP_URI": uri, "RECONNECT_DELAY": 1, **config},
        transport=transport,
    )
    return host, transport


async def dispatch(uri: str, payload: Any) -> None:
    async with ServiceHost([], config={"AMQP_URI": uri}).dispatcher() as send:
        await send("src", "ping", payload)


class Counter:
    name = "counter"

    @event_handler("src", "ping")
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("handled", payload["n"])
        if payload.get("block"):
            await release.wait()


async def test_serve_retries_the_first_connection(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uri = fresh_uri()
    host, transport = flaky_host([Counter], uri)
    transport.refuse(2)
    await nursery.start(host.serve)
    assert transport.attempts == 3
    assert sum("cannot connect to" in r.getMessage() for r in caplog.records) == 2
    await dispatch(uri, {"n": 1})
    assert await recorder.wait_for(1) == [("handled", 1)]
    nursery.cancel_scope.cancel()


async def test_serve_gives_up_after_connect_attempts(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    uri = fresh_uri()
    host, transport = flaky_host([Counter], uri, CONNECT_ATTEMPTS=3)
    transport.refuse(100)
    with pytest.raises(BrokerUnavailable, match="3 attempts"):
        await nursery.start(host.serve)
    assert transport.attempts == 3


async def test_a_lost_connection_is_restored_and_nothing_is_lost(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioevents")
    uri = fresh_uri()
    host, transport = flaky_host([Counter], uri)
    await nursery.start(host.serve)
    await dispatch(uri, {"n": 1, "block": True})
    await recorder.wait_for(1)
    transport.refuse(2)
    transport.cut()  # the handler of n=1 is cut off before it could ack
    await dispatch(uri, {"n": 2})  # straight into the queue while we are down
    release.set()
    calls = await recorder.wait_for(3, within=60)
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(n for _, n in calls) == [1, 1, 2]  # n=1 redelivered, none lost
    assert transport.connects == 2
    assert await queue_depth(uri, "evt-src-ping--counter.handle") == 0
    messages = [r.getMessage() for r in caplog.records]
    # one loss, then the two refused attempts to connect again
    assert sum(m.startswith("connection lost to") for m in messages) == 1
    assert sum(m.startswith("cannot connect to") for m in messages) == 2
    assert any(m.startswith("resumed counter") for m in messages)
    nursery.cancel_scope.cancel()


async def test_a_broker_that_breaks_the_protocol_is_reconnected_to(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    uri = fresh_uri()
    host, transport = flaky_host([Counter], uri)
    await nursery.start(host.serve)
    await dispatch(uri, {"n": 1, "block": True})
    await recorder.wait_for(1)
    transport.cut(RemoteProtocolError("501 FRAME_ERROR: garbage from the broker"))
    release.set()
    await dispatch(uri, {"n": 2})
    calls = await recorder.wait_for(3, within=60)
    assert sorted(n for _, n in calls) == [1, 1, 2]  # serving again, nothing lost
    assert transport.connects == 2
    nursery.cancel_scope.cancel()


class Relay:
    name = "relay"
    dispatch = EventDispatcher()

    @event_handler("src", "ping")
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("relaying", payload["n"])
        try:
            await self.dispatch("relayed", payload)
        except BrokerUnavailable as exc:
            recorder.record("gave up", str(exc))
        else:
            recorder.record("relayed", payload["n"])


async def test_a_dispatch_waits_out_a_short_outage(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    uri = fresh_uri()
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        await conn.declare_exchange("relay.events", durable=True)
        await conn.declare_queue("watch")
        await conn.bind_queue("watch", "relay.events", "relayed")
        host, transport = flaky_host([Relay], uri, PUBLISH_TIMEOUT=60)
        await nursery.start(host.serve)
        transport.refuse(3)
        # cut while nothing runs, then dispatch: the relay's own publish has to
        # wait for the reconnect, and must not report success before it
        transport.cut()
        await dispatch(uri, {"n": 7})
        calls = await recorder.wait_for(2, within=60)
        assert calls[-1] == ("relayed", 7)
        assert (await conn.declare_queue("watch", passive=True)).message_count >= 1
        nursery.cancel_scope.cancel()


class Stuck:
    name = "stuck"
    dispatch = EventDispatcher()

    @event_handler("src", "ping")
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("relaying", payload["n"])
        transport_under_test.refuse(1000)
        transport_under_test.cut()
        try:
            await self.dispatch("relayed", payload)
        except BrokerUnavailable as exc:
            recorder.record("gave up", str(exc))


transport_under_test: FlakyTransport


async def test_a_dispatch_gives_up_after_publish_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    global transport_under_test
    uri = fresh_uri()
    host, transport_under_test = flaky_host([Stuck], uri, PUBLISH_TIMEOUT=5)
    await nursery.start(host.serve)
    start = trio.current_time()
    await dispatch(uri, {"n": 1})
    calls = await recorder.wait_for(2, within=60)
    assert calls[1][0] == "gave up"
    assert "PUBLISH_TIMEOUT" in calls[1][1]
    assert trio.current_time() - start == pytest.approx(5, abs=0.1)
    nursery.cancel_scope.cancel()


async def test_stop_during_an_outage_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    host, transport = flaky_host([Counter], uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        transport.refuse(1000)
        transport.cut()
        await trio.sleep(10)  # reconnecting, in virtual time
        start = trio.current_time()
        await host.stop()
        assert trio.current_time() - start < 1
