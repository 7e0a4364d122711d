"""Keeping a broker connection (``trioevents._connecting``): connect, reconnect.

For ``serve()`` and for ``host.dispatcher()``, on the embedded broker with faults
(:class:`~trioevents.testing.FlakyTransport`): the first connection is retried
``CONNECT_ATTEMPTS`` times, a lost one for ever, with backoff, and what was
unacked is redelivered. ``tests/amqp/test_faults.py`` cuts, stalls and slows
real RabbitMQ connections through a TCP proxy. What a dispatch does while the
connection is down is in ``test_publisher.py``.
"""

from __future__ import annotations

import logging
import traceback
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trioevents import (
    AccessRefusedByBroker,
    BrokerUnavailable,
    MemoryTransport,
    RemoteProtocolError,
    ServiceHost,
    abc,
    event_handler,
)
from trioevents.testing import FlakyTransport

from .support.brokers import dispatch, flaky_host, queue_depth, watch
from .support.recording import Recorder, problems

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

recorder = Recorder()
release = trio.Event()


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global recorder, release
    recorder = Recorder()
    release = trio.Event()


class Counter:
    name = "counter"

    @event_handler("src", "ping")
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("handled", payload["n"])
        if payload.get("block"):
            await release.wait()


async def test_serve_retries_the_first_connection(
    nursery: trio.Nursery,
    memory_uri: str,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host, transport = flaky_host([Counter], memory_uri)
    transport.refuse(2)
    await nursery.start(host.serve)
    assert transport.attempts == 3
    assert sum("cannot connect to" in r.getMessage() for r in caplog.records) == 2
    await dispatch(memory_uri, "src", "ping", {"n": 1})
    assert await recorder.wait_for(1) == [("handled", 1)]
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("client", ["serve", "dispatcher"])
async def test_connecting_gives_up_after_connect_attempts(
    client: str,
    nursery: trio.Nursery,
    memory_uri: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, transport = flaky_host([Counter], memory_uri, CONNECT_ATTEMPTS=3)
    transport.refuse(1000)

    async def connect() -> None:
        if client == "serve":
            await nursery.start(host.serve)
        else:
            async with host.dispatcher():
                pytest.fail("entered without a connection")

    with pytest.raises(BrokerUnavailable, match="3 attempts"):
        await connect()
    assert transport.attempts == 3


class Refusing(abc.Transport):
    """The embedded broker (with cuts), but the next connects fail with given errors."""

    def __init__(self, uri: str) -> None:
        self.inner = FlakyTransport(MemoryTransport.from_uri(uri))
        self.refusals: list[BaseException] = []
        self.attempts = 0

    @asynccontextmanager
    async def open_connection(self) -> AsyncIterator[abc.Connection]:
        self.attempts += 1
        if self.refusals:
            raise self.refusals.pop(0)
        async with self.inner.open_connection() as connection:
            yield connection


def refused_login() -> AccessRefusedByBroker:
    return AccessRefusedByBroker(
        "the broker refused the login", 403, "ACCESS_REFUSED - Login was refused"
    )


@pytest.mark.parametrize("client", ["serve", "dispatcher"])
async def test_a_refused_login_is_not_retried_before_the_first_connection(
    client: str, memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    """It cannot succeed until the config changes: it fails at the first attempt."""
    transport = Refusing(memory_uri)
    transport.refusals = [refused_login() for _ in range(10)]
    host = ServiceHost(
        [Counter], {"AMQP_URI": memory_uri, "CONNECT_ATTEMPTS": 5}, transport=transport
    )

    async def connect() -> None:
        if client == "serve":
            await host.serve()
        else:
            async with host.dispatcher():
                pytest.fail("entered without a connection")

    with pytest.raises(AccessRefusedByBroker, match="refused the login"):
        await connect()
    assert transport.attempts == 1


async def test_a_refused_login_after_the_first_connection_is_retried(
    nursery: trio.Nursery, memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A broker that restarts may refuse logins for a moment: keep trying."""
    transport = Refusing(memory_uri)
    host = ServiceHost(
        [Counter],
        {"AMQP_URI": memory_uri, "CONNECT_ATTEMPTS": 2, "RECONNECT_DELAY": 1},
        transport=transport,
    )
    await nursery.start(host.serve)
    transport.refusals = [refused_login() for _ in range(3)]
    transport.inner.cut()  # the broker restarts
    await dispatch(memory_uri, "src", "ping", {"n": 1})
    assert await recorder.wait_for(1, within=60) == [("handled", 1)]
    assert transport.attempts == 5
    nursery.cancel_scope.cancel()


async def test_a_lost_connection_is_restored_and_nothing_is_lost(
    nursery: trio.Nursery,
    memory_uri: str,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioevents")
    host, transport = flaky_host([Counter], memory_uri)
    await nursery.start(host.serve)
    await dispatch(memory_uri, "src", "ping", {"n": 1, "block": True})
    await recorder.wait_for(1)
    transport.refuse(2)
    transport.cut()  # the handler of n=1 is cut off before it could ack
    await dispatch(memory_uri, "src", "ping", {"n": 2})  # queued while we are down
    release.set()
    calls = await recorder.wait_for(3, within=60)
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(n for _, n in calls) == [1, 1, 2]  # n=1 redelivered, none lost
    assert transport.connects == 2
    assert await queue_depth(memory_uri, "evt-src-ping--counter.handle") == 0
    messages = [r.getMessage() for r in caplog.records]
    # one loss, then the two refused attempts to connect again
    assert sum(m.startswith("connection lost to") for m in messages) == 1
    assert sum(m.startswith("cannot connect to") for m in messages) == 2
    assert any(m.startswith("resumed counter") for m in messages)
    nursery.cancel_scope.cancel()


async def test_a_broker_that_breaks_the_protocol_is_reconnected_to(
    nursery: trio.Nursery, memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    host, transport = flaky_host([Counter], memory_uri)
    await nursery.start(host.serve)
    await dispatch(memory_uri, "src", "ping", {"n": 1, "block": True})
    await recorder.wait_for(1)
    transport.cut(RemoteProtocolError("501 FRAME_ERROR: garbage from the broker"))
    release.set()
    await dispatch(memory_uri, "src", "ping", {"n": 2})
    calls = await recorder.wait_for(3, within=60)
    assert sorted(n for _, n in calls) == [1, 1, 2]  # serving again, nothing lost
    assert transport.connects == 2
    nursery.cancel_scope.cancel()


async def test_a_long_lived_dispatcher_survives_lost_connections(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    queue = await watch(memory_uri, "src")
    host, transport = flaky_host([], memory_uri)
    async with host.dispatcher() as send:
        for n in range(3):
            await send("src", "ping", {"n": n})
            transport.cut()
        await send("src", "ping", {"n": 3})
    assert await queue_depth(memory_uri, queue) == 4
    assert transport.connects == 4


async def test_stop_during_an_outage_returns(
    memory_uri: str, autojump_clock: trio.testing.MockClock
) -> None:
    host, transport = flaky_host([Counter], memory_uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        transport.refuse(1000)
        transport.cut()
        await trio.sleep(10)  # reconnecting, in virtual time
        start = trio.current_time()
        await host.stop()
        assert trio.current_time() - start < 1


# -------------------------------------------------------- credentials: masked

SECRET = "s3cr3t-Pa55word"


def all_text(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """Everything a user could see: the error, its causes, every log record."""
    formatter = logging.Formatter()
    seen = [
        *traceback.format_exception(exc),
        repr(exc),
        *(formatter.format(record) for record in caplog.records),
        *(repr(record.args) for record in caplog.records),
    ]
    return "\n".join(seen)


async def test_an_unreachable_broker_never_shows_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioevents")
    host = ServiceHost(
        [Counter],
        {
            "AMQP_URI": f"amqp://guest:{SECRET}@127.0.0.1:1/vhost",
            "CONNECT_ATTEMPTS": 2,
            "RECONNECT_DELAY": 0.01,
        },
    )
    with pytest.raises(BrokerUnavailable) as caught:
        await host.serve()
    assert "amqp://guest:****@127.0.0.1:1/vhost" in str(caught.value)
    assert problems(caplog, "cannot connect to 'amqp://guest:****@127.0.0.1:1/vhost'")
    assert SECRET not in all_text(caught.value, caplog)
    assert SECRET not in repr(host)
    assert SECRET not in repr(host.transport)

    with pytest.raises(BrokerUnavailable) as caught:
        async with host.dispatcher():
            pass  # pragma: no cover
    assert SECRET not in all_text(caught.value, caplog)


@pytest.mark.rabbitmq
async def test_a_refused_login_never_shows_the_password(
    rabbit_vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioevents")
    uri = rabbit_vhost.replace("guest:guest@", f"guest:{SECRET}@")
    assert SECRET in uri
    host = ServiceHost(
        [Counter], {"AMQP_URI": uri, "CONNECT_ATTEMPTS": 2, "RECONNECT_DELAY": 0.01}
    )
    with pytest.raises(BrokerUnavailable, match="403 ACCESS_REFUSED") as caught:
        await host.serve()
    assert "guest:****@" in str(caught.value)
    assert SECRET not in all_text(caught.value, caplog)
