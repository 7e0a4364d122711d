"""``host.dispatcher()``: a long-lived standalone dispatcher on the one publish path.

It keeps its connection like a serving host does: a lost connection is
reconnected with backoff, a dispatch waits out an outage (at most
``PUBLISH_TIMEOUT``) and returns only once confirmed, and no connection failure
escapes the ``async with`` block. Here on the embedded broker with faults
(``FlakyTransport``); tests/amqp/test_faults.py does the same against RabbitMQ
through a TCP proxy and a broker restart.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trioevents import BrokerUnavailable, MemoryTransport, ServiceHost
from trioevents.testing import FlakyTransport

from .helpers import fresh_uri, queue_depth

WATCH = "watch"


async def watched(uri: str) -> None:
    """Bind a queue to everything ``src`` dispatches."""
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        await conn.declare_exchange("src.events", durable=True)
        await conn.declare_queue(WATCH)
        await conn.bind_queue(WATCH, "src.events", "#")


def flaky_dispatcher_host(
    uri: str, **config: Any
) -> tuple[ServiceHost, FlakyTransport]:
    transport = FlakyTransport(MemoryTransport.from_uri(uri))
    host = ServiceHost(
        [],
        config={"AMQP_URI": uri, "RECONNECT_DELAY": 1, **config},
        transport=transport,
    )
    return host, transport


async def test_a_long_lived_dispatcher_survives_lost_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    await watched(uri)
    host, transport = flaky_dispatcher_host(uri)
    async with host.dispatcher() as dispatch:
        for n in range(3):
            await dispatch("src", "ping", {"n": n})
            transport.cut()
        await dispatch("src", "ping", {"n": 3})
    assert await queue_depth(uri, WATCH) == 4
    assert transport.connects == 4


async def test_a_dispatch_waits_out_an_outage_then_returns_confirmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    await watched(uri)
    host, transport = flaky_dispatcher_host(uri, PUBLISH_TIMEOUT=60)
    async with host.dispatcher() as dispatch:
        transport.refuse(3)
        transport.cut()
        start = trio.current_time()
        await dispatch("src", "ping", {"n": 1})
        waited = trio.current_time() - start
        # it returned once the fourth connection took and confirmed it
        assert await queue_depth(uri, WATCH) == 1
    assert waited > 1  # three refused connections, with backoff, came first
    assert transport.attempts == 5


async def test_a_dispatch_past_publish_timeout_raises_and_the_dispatcher_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    await watched(uri)
    # reconnects every 2 s at most: the second dispatch is within its 5 s
    host, transport = flaky_dispatcher_host(
        uri, PUBLISH_TIMEOUT=5, RECONNECT_MAX_DELAY=2
    )
    async with host.dispatcher() as dispatch:
        transport.refuse(1000)
        transport.cut()
        start = trio.current_time()
        with pytest.raises(BrokerUnavailable, match="PUBLISH_TIMEOUT") as caught:
            await dispatch("src", "ping", {"n": 1})
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)
        assert "connection refused by FlakyTransport" in str(caught.value)
        transport.refuse(0)
        await dispatch("src", "ping", {"n": 2})
    # the timed-out dispatch was abandoned, never published late
    assert await queue_depth(uri, WATCH) == 1


async def test_entering_fails_after_connect_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, transport = flaky_dispatcher_host(fresh_uri(), CONNECT_ATTEMPTS=3)
    transport.refuse(1000)
    with pytest.raises(BrokerUnavailable, match="3 attempts"):
        async with host.dispatcher():
            pytest.fail("entered without a connection")
    assert transport.attempts == 3


async def test_dispatches_queued_during_an_outage_are_all_published_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uri = fresh_uri()
    await watched(uri)
    host, transport = flaky_dispatcher_host(uri)
    async with host.dispatcher() as dispatch:
        transport.refuse(2)
        transport.cut()
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(dispatch, "src", "ping", {"n": n})
            await trio.testing.wait_all_tasks_blocked()
            # all 50 wait for the reconnect; none was published yet
            assert await queue_depth(uri, WATCH) == 0
    assert await queue_depth(uri, WATCH) == 50


async def test_an_error_in_the_block_comes_out_unwrapped() -> None:
    host = ServiceHost([], config={"AMQP_URI": fresh_uri()})
    with pytest.raises(KeyError, match="mine"):
        async with host.dispatcher():
            raise KeyError("mine")


async def test_dispatching_after_the_block_is_a_closed_resource_error() -> None:
    host = ServiceHost([], config={"AMQP_URI": fresh_uri()})
    async with host.dispatcher() as dispatch:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await dispatch("src", "ping", {})
