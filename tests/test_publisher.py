"""The one publish path (``trioevents._publisher``): every dispatch, confirmed.

Workers' dispatchers and ``async with host.dispatcher()`` publish through it. A
dispatch returns only once the broker confirmed it, a cancelled one corrupts
nothing, and while the connection is down a dispatch waits for the reconnect
(``test_connecting.py``) for at most ``PUBLISH_TIMEOUT``, then raises. The
outages run on the embedded broker with faults
(:class:`~trioevents.testing.FlakyTransport`); ``tests/amqp/test_faults.py``
does the same against RabbitMQ through a TCP proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

from trioevents import (
    BrokerUnavailable,
    EventDispatcher,
    PublishNotConfirmed,
    ServiceHost,
    event_handler,
)

from .support.brokers import (
    connect,
    dispatch,
    flaky_host,
    queue_depth,
    take_all,
    watch,
)
from .support.recording import Recorder

if TYPE_CHECKING:
    from trioevents.testing import FlakyTransport, HostFactory

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_recorder() -> None:
    global recorder
    recorder = Recorder()


# ------------------------------------------------------------ on both brokers


async def test_a_standalone_dispatcher_needs_no_serve(broker_uri: str) -> None:
    """Many tasks may dispatch at once; each event goes as nameko sends it."""
    queue = await watch(broker_uri, "somebody", "q")
    host = ServiceHost([], config={"AMQP_URI": broker_uri})
    async with host.dispatcher() as send:
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(send, "somebody", "happened", {"i": i})
    deliveries = await take_all(broker_uri, queue)
    assert sorted(d.body for d in deliveries) == [b'{"i": %d}' % i for i in range(5)]
    properties = {
        (p.content_type, p.content_encoding, p.delivery_mode, p.headers)
        for p in (d.properties for d in deliveries)
    }
    # standalone: no worker context, so no headers
    assert properties == {("application/json", "utf-8", 2, None)}


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


async def test_a_cancelled_dispatch_corrupts_nothing(
    broker_uri: str, host_factory: HostFactory
) -> None:
    queue = await watch(broker_uri, "emitter")
    await host_factory(Emitter)
    await dispatch(broker_uri, "src", "go", {"i": 0})
    assert await recorder.wait_for(2) == [("cancelled", True), ("second", True)]
    # the second dispatch went through; the cancelled one may or may not have
    # (at-least-once): either way every message in the queue is whole
    bodies = sorted(d.body for d in await take_all(broker_uri, queue))
    assert bodies in ([b'{"second": true}'], [b'{"i": 0}', b'{"second": true}'])


# ------------------------------------------------------- the standalone dispatcher


async def test_a_dispatch_waits_out_an_outage_then_returns_confirmed(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    queue = await watch(memory_uri, "src")
    host, transport = flaky_host([], memory_uri, PUBLISH_TIMEOUT=60)
    async with host.dispatcher() as send:
        transport.refuse(3)
        transport.cut()
        start = trio.current_time()
        await send("src", "ping", {"n": 1})
        waited = trio.current_time() - start
        # it returned once the fourth connection took and confirmed it
        assert await queue_depth(memory_uri, queue) == 1
    assert waited > 1  # three refused connections, with backoff, came first
    assert transport.attempts == 5


async def test_a_dispatch_past_publish_timeout_raises_and_the_dispatcher_recovers(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    queue = await watch(memory_uri, "src")
    # reconnects every 2 s at most: the second dispatch is within its 5 s
    host, transport = flaky_host(
        [], memory_uri, PUBLISH_TIMEOUT=5, RECONNECT_MAX_DELAY=2
    )
    async with host.dispatcher() as send:
        transport.refuse(1000)
        transport.cut()
        start = trio.current_time()
        with pytest.raises(BrokerUnavailable, match="PUBLISH_TIMEOUT") as caught:
            await send("src", "ping", {"n": 1})
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)
        assert "connection refused by FlakyTransport" in str(caught.value)
        transport.refuse(0)
        await send("src", "ping", {"n": 2})
    # the timed-out dispatch was abandoned, never published late
    assert await queue_depth(memory_uri, queue) == 1


async def full_queue(uri: str, source: str) -> str:
    """A queue of one message, full, that refuses (nacks) the next publishes."""
    queue = "full"
    async with connect(uri) as connection:
        await connection.declare_exchange(f"{source}.events", durable=True)
        await connection.declare_queue(
            queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        await connection.bind_queue(queue, f"{source}.events", "#")
    await dispatch(uri, source, "ping", {"n": 0})
    return queue


async def test_a_nacked_dispatch_is_published_again_until_confirmed(
    broker_uri: str, broker_clock: trio.testing.MockClock | None
) -> None:
    """A nack says "not now" (a full queue, a quorum queue electing a leader)."""
    queue = await full_queue(broker_uri, "src")
    host = ServiceHost(
        [],
        {"AMQP_URI": broker_uri, "RECONNECT_DELAY": 0.05, "RECONNECT_MAX_DELAY": 0.2},
    )
    with trio.fail_after(20):
        async with host.dispatcher() as send:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "src", "ping", {"n": 1})
                await trio.sleep(1)  # nacked, and published again, a few times
                [first] = await take_all(broker_uri, queue)  # room for one
            [second] = await take_all(broker_uri, queue)
    assert (first.body, second.body) == (b'{"n": 0}', b'{"n": 1}')


async def test_a_dispatch_nacked_past_publish_timeout_raises_publish_not_confirmed(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    await full_queue(memory_uri, "src")
    host = ServiceHost([], {"AMQP_URI": memory_uri, "PUBLISH_TIMEOUT": 5})
    async with host.dispatcher() as send:
        start = trio.current_time()
        with pytest.raises(PublishNotConfirmed, match=r"nacked.*refused \d+ times"):
            await send("src", "ping", {"n": 1})
    assert trio.current_time() - start == pytest.approx(5, abs=0.1)


async def test_a_mandatory_dispatch_no_queue_takes_is_not_published_again(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    host = ServiceHost([], {"AMQP_URI": memory_uri})
    async with host.dispatcher() as send:
        start = trio.current_time()
        with pytest.raises(PublishNotConfirmed, match="returned"):
            await send("nobody", "ping", {"n": 1}, mandatory=True)
    assert trio.current_time() == start


async def test_dispatches_queued_during_an_outage_are_all_published_once(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    queue = await watch(memory_uri, "src")
    host, transport = flaky_host([], memory_uri)
    async with host.dispatcher() as send:
        transport.refuse(2)
        transport.cut()
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(send, "src", "ping", {"n": n})
            await trio.testing.wait_all_tasks_blocked()
            # all 50 wait for the reconnect; none was published yet
            assert await queue_depth(memory_uri, queue) == 0
    assert await queue_depth(memory_uri, queue) == 50


async def test_an_error_in_the_block_comes_out_unwrapped(memory_uri: str) -> None:
    host = ServiceHost([], config={"AMQP_URI": memory_uri})
    with pytest.raises(KeyError, match="mine"):
        async with host.dispatcher():
            raise KeyError("mine")


async def test_dispatching_after_the_block_is_a_closed_resource_error(
    memory_uri: str,
) -> None:
    host = ServiceHost([], config={"AMQP_URI": memory_uri})
    async with host.dispatcher() as send:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await send("src", "ping", {})


# ------------------------------------------------------------ a worker's dispatch


@attrs.define
class Outage:
    """What the relay does before it dispatches: cut, and refuse reconnects."""

    transport: FlakyTransport
    refusals: int


#: The outage the relay's next call makes (one call only: the redelivery of its
#: event, cut off before the ack, dispatches in peace).
outages: list[Outage] = []


class Relay:
    name = "relay"
    dispatch = EventDispatcher()

    @event_handler("src", "ping")
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("relaying", payload["n"])
        if outages:
            outage = outages.pop()
            outage.transport.refuse(outage.refusals)
            outage.transport.cut()
        try:
            await self.dispatch("relayed", payload)
        except BrokerUnavailable as exc:
            recorder.record("gave up", str(exc))
        else:
            recorder.record("relayed", payload["n"])


@pytest.mark.parametrize(
    ("refusals", "outcome"),
    [pytest.param(3, "relayed", id="short"), pytest.param(1000, "gave up", id="long")],
)
async def test_a_workers_dispatch_waits_out_an_outage_up_to_publish_timeout(
    refusals: int,
    outcome: str,
    memory_uri: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The worker's own publish waits for the host's reconnect: returns once confirmed.

    Reconnects come every second at most: three refused ones take less than
    the 10 s ``PUBLISH_TIMEOUT``.
    """
    queue = await watch(memory_uri, "relay")
    host, transport = flaky_host(
        [Relay], memory_uri, PUBLISH_TIMEOUT=10, RECONNECT_MAX_DELAY=1
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        outages[:] = [Outage(transport, refusals)]
        start = trio.current_time()
        await dispatch(memory_uri, "src", "ping", {"n": 7})
        calls = await recorder.wait_for(2, within=60)
        waited = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert calls[0] == ("relaying", 7)
    assert calls[1][0] == outcome
    if outcome == "relayed":
        assert 1 < waited < 10
        assert await queue_depth(memory_uri, queue) >= 1
    else:
        assert "PUBLISH_TIMEOUT" in calls[1][1]
        assert waited == pytest.approx(10, abs=0.1)
        assert await queue_depth(memory_uri, queue) == 0
