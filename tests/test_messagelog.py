"""Every host logs each dispatched and each handled event at DEBUG."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from trioevents import Observer, event_handler
from trioevents._messagelog import MessageLog, WithMessageLog
from trioevents.testing import entrypoint_waiter

from .support.recording import Settled
from .support.relay import Relay

if TYPE_CHECKING:
    import pytest

    from trioevents.testing import HostFactory

LOGGER = "trioevents.messages"


class Sink:
    name = "sink"

    @event_handler("relay", "out")
    async def take(self, payload: Any) -> None:
        if payload.get("fail"):
            raise ValueError("no")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def relay_one(host_factory: HostFactory, payload: Any, **options: Any) -> None:
    """Dispatch ``web.in`` through Relay to Sink; wait until both handled it."""
    host = host_factory.make([Relay, Sink])
    settled = Settled()
    host.add_observer(settled)
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        await dispatch("web", "in", payload, **options)
    await settled.wait_for(2)


async def test_each_event_is_one_debug_line(
    host_factory: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    await relay_one(host_factory, {"fail": True}, message_id="m-1")

    call = r"(relay\.relay|sink\.take)\.[0-9a-f-]{36}"
    ms = r"\d+\.\d ms"
    expected = [
        rf"dispatched web\.in from a standalone dispatcher: confirmed in {ms} "
        r"\(message_id=m-1, call_id=None\)",
        rf"dispatched relay\.out from relay: confirmed in {ms} "
        rf"\(message_id=None, call_id={call}\)",
        rf"handled relay\.out by sink\.take: ack in {ms} \(message_id=None, "
        rf"call_id={call}, attempt=1, error=ValueError\('no'\)\)",
        rf"handled web\.in by relay\.relay: ack in {ms} "
        rf"\(message_id=m-1, call_id={call}, attempt=1\)",
    ]
    logged = lines(caplog)
    assert len(logged) == len(expected), logged
    for pattern in expected:
        assert any(re.fullmatch(pattern, line) for line in logged), (pattern, logged)
    # The relay's dispatch was made by the worker handling web.in.
    (handled_in,) = [line for line in logged if line.startswith("handled web.in")]
    relay_call = re.search(r"call_id=(relay\.relay\.\S+),", handled_in)
    assert relay_call is not None
    assert any(
        line.startswith("dispatched relay.out") and relay_call[1] in line
        for line in logged
    )


async def test_nothing_is_logged_when_debug_is_off(
    host_factory: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    await relay_one(host_factory, {})
    assert lines(caplog) == []


def test_the_log_is_told_only_while_debug_is_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hosts without observers of their own take the path without observers.

    The view the publisher and services are given is empty while DEBUG is off,
    and holds the log (first) as soon as it is turned on, without a restart.
    """
    observers: list[Observer] = []
    told = WithMessageLog(observers)
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert not told
    assert list(told) == []
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert told
    assert [type(o) for o in told] == [MessageLog]
    other = Observer()
    observers.append(other)
    assert len(told) == 2
    assert told[1] is other
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert list(told) == [other]


async def test_debug_turned_on_while_serving_logs_from_then_on(
    host_factory: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A host with no observer logs the events after DEBUG is turned on."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    host = host_factory.make([Sink])
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        async with entrypoint_waiter(host, "sink", "take"):
            await dispatch("relay", "out", {"n": 1})
        assert lines(caplog) == []
        caplog.set_level(logging.DEBUG, logger=LOGGER)
        async with entrypoint_waiter(host, "sink", "take"):
            await dispatch("relay", "out", {"n": 2})
    logged = lines(caplog)
    assert [line.split(" in ")[0] for line in logged] == [
        "dispatched relay.out from a standalone dispatcher: confirmed",
        "handled relay.out by sink.take: ack",
    ], logged
