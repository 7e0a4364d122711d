"""Fault injection against the live RabbitMQ: cuts, stalls, a slow link, a restart.

A :class:`~tests.support.tcpproxy.TcpProxy` sits between the hosts and RabbitMQ. A
service host consumes a stream of numbered events through it while a
dispatcher (through it too, so that confirms can be lost) sends them, and the
proxy breaks the link. What must hold whatever the faults:

* **no confirmed event is lost**: every event whose dispatch returned is handled
  at least once;
* **duplicates are bounded** by what can be in flight when a connection dies.
  Each event carries its id and the number of its dispatch attempt, so the two
  sources are told apart:

  - *redelivered*: the same attempt handled again. Only deliveries unacked at
    the broker when the consumer's connection died come back, at most
    ``prefetch`` per lost connection, and publishes whose confirm was lost with
    the dispatcher's connection, which its publish path sends again on the next
    one, at most the dispatches in flight (``concurrency``) per lost
    connection: ``redelivered <= (prefetch + concurrency) * losses``;
  - *republished*: another attempt of the same id handled too. Only a dispatch
    that raised is sent again, and only its first copy can have reached the
    queue unconfirmed: ``republished <= unconfirmed``;

* the host is still serving afterwards: one more event makes the round trip.

Each test prints one report line (``with capsys.disabled()``, so it shows in CI
logs). Time is only ever a generous ``fail_after`` guard: the tests wait for
counts and events, never sleep to synchronize.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import (
    EventDispatcher,
    event_handler,
)

from ..support.counting import (
    DEADLINE,
    SOURCE,
    Report,
    Sink,
    Tally,
    check,
    counting_host as make_host,
    counting_service,
    dispatch_all,
    round_trip,
    send_all,
    settle_and_report,
)
from ..support.recording import LogWatch, watch_log
from ..support.tcpproxy import TcpProxy, open_tcp_proxy, upstream_port, via

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trioevents.testing import RabbitAdmin

pytestmark = pytest.mark.rabbitmq

#: What the host logs when it loses its connection (or fails to reconnect).
LOST = "connection lost"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def host_log() -> Iterator[LogWatch]:
    """What the host logs at INFO and above while the test runs."""
    with watch_log("trioevents.host", logging.INFO) as watch:
        yield watch


# --------------------------------------------------------------------------- tests


async def test_cuts_lose_no_confirmed_event(
    rabbit_vhost: str, host_log: LogWatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """10,000 events with confirms while every connection is cut 5 times."""
    report, cuts = await run_with_cuts(
        "cuts",
        rabbit_vhost,
        capsys,
        count=10_000,
        cut_points=[1_500, 3_500, 5_500, 7_500, 9_000],
    )
    # Each cut kills at most one connection of the host.
    check(report, losses=cuts)
    # The host did lose its connection and came back on a new one.
    assert host_log.count(LOST) >= 1
    assert host_log.count("resumed counting") >= 1


async def test_cuts_in_the_middle_of_large_events_lose_none(
    rabbit_vhost: str, host_log: LogWatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """300 events of 300 kB (bodies of several frames), cut 4 times mid-stream.

    With that much in flight a cut lands in the middle of a frame, which the
    client may see as a plain end of stream: still a lost connection.
    """
    report, cuts = await run_with_cuts(
        "large cuts",
        rabbit_vhost,
        capsys,
        count=300,
        cut_points=[50, 110, 170, 230],
        concurrency=8,
        size=300_000,
    )
    check(report, losses=cuts, concurrency=8)
    assert host_log.count("resumed counting") >= 1


async def run_with_cuts(
    name: str,
    rabbit_vhost: str,
    capsys: pytest.CaptureFixture[str],
    *,
    count: int,
    cut_points: list[int],
    **dispatch_options: Any,
) -> tuple[Report, int]:
    """Dispatch *count* events through the proxy, cutting it at *cut_points*."""
    sink, tally = Sink(), Tally.of(range(count))
    cuts = 0
    start = trio.current_time()

    async def cutter(proxy: TcpProxy) -> None:
        nonlocal cuts
        for point in cut_points:
            await tally.wait_confirmed(point)
            proxy.cut()
            cuts += 1

    with trio.fail_after(DEADLINE):
        async with open_tcp_proxy(upstream_port(rabbit_vhost)) as proxy:
            host = make_host([counting_service(sink)], via(proxy, rabbit_vhost))
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                nursery.start_soon(cutter, proxy)
                await dispatch_all(host, tally, **dispatch_options)
                report = await settle_and_report(
                    name,
                    tally,
                    sink,
                    capsys,
                    start=start,
                    cuts=cuts,
                    links_cut=proxy.statistics().cut,
                )
                await round_trip(host, sink, count)
                await host.stop()
    assert cuts == len(cut_points)
    return report, cuts


def relay_services(pings: Sink, pongs: Sink, relayed: Sink) -> list[type]:
    """A relay (ping in, pong out through the host's publisher) and a pong sink."""

    class Relay:
        name = "relay"
        dispatch = EventDispatcher()

        @event_handler(SOURCE, "ping")
        async def handle(self, payload: dict[str, Any]) -> None:
            pings.record(payload)
            await self.dispatch("pong", payload)
            relayed.record(payload)

    return [Relay, counting_service(pongs, "relay", "pong")]


async def test_cuts_lose_no_event_a_handler_dispatched(
    rabbit_vhost: str, host_log: LogWatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A handler's own dispatches survive cuts: every relayed pong arrives.

    The relay's dispatch goes through the host's publisher, which publishes
    again on the next connection what a cut interrupted; the relay acks its ping
    only after the pong was confirmed.
    """
    count = 2_000
    cut_points = [400, 1_000, 1_600]
    pings, pongs, relayed = Sink(), Sink(), Sink()
    tally = Tally.of(range(count))
    cuts = 0
    start = trio.current_time()

    async def cutter(proxy: TcpProxy) -> None:
        nonlocal cuts
        for point in cut_points:
            await relayed.wait_count(point)
            proxy.cut()
            cuts += 1

    with trio.fail_after(DEADLINE):
        async with open_tcp_proxy(upstream_port(rabbit_vhost)) as proxy:
            host = make_host(
                relay_services(pings, pongs, relayed), via(proxy, rabbit_vhost)
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                nursery.start_soon(cutter, proxy)
                await dispatch_all(host, tally)
                report = await settle_and_report(
                    "relay pings", tally, pings, capsys, start=start
                )
                with trio.move_on_after(DEADLINE / 2):
                    await relayed.wait_handled(range(count))
                    await pongs.wait_handled(relayed.ids)
                lost_pongs = len(relayed.ids - pongs.ids)
                with capsys.disabled():
                    print(  # noqa: T201
                        f"[faults] relay pongs: relayed={len(relayed.ids)} "
                        f"handled={pongs.seen.total()} distinct={len(pongs.ids)} "
                        f"lost={lost_pongs} cuts={cuts}"
                    )
                await round_trip(host, pongs, count)
                await host.stop()

    assert cuts == len(cut_points)
    check(report, losses=cuts)
    assert lost_pongs == 0
    # Every ping was relayed: no relay gave up (PUBLISH_TIMEOUT is 30 s).
    assert relayed.ids >= set(range(count))


async def test_a_stalled_link_is_detected_by_heartbeats(
    rabbit_vhost: str, host_log: LogWatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The proxy goes silent (sockets open): HEARTBEAT=1 gives it up in ~2 s."""
    count = 1_000
    sink, tally = Sink(), Tally.of(range(count))
    start = trio.current_time()

    async def staller(proxy: TcpProxy) -> None:
        await tally.wait_confirmed(300)
        accepted = proxy.statistics().accepted
        proxy.stall()
        # Stalled until the host gave the silent broker up (2 x HEARTBEAT) and
        # a client tried a new connection, whose handshake waits out the stall.
        await host_log.wait_for("sent nothing for")
        await proxy.wait_accepted(accepted + 1)
        proxy.resume()

    with trio.fail_after(DEADLINE):
        async with open_tcp_proxy(upstream_port(rabbit_vhost)) as proxy:
            host = make_host(
                [counting_service(sink)], via(proxy, rabbit_vhost), HEARTBEAT=1
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                nursery.start_soon(staller, proxy)
                await dispatch_all(host, tally)
                report = await settle_and_report(
                    "stall", tally, sink, capsys, start=start
                )
                await round_trip(host, sink, count)
                await host.stop()

    check(report, losses=host_log.count(LOST))
    assert host_log.count("resumed counting") >= 1


async def test_a_slow_link_delivers_everything(
    rabbit_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 kB/s per direction and 20 ms per chunk: slower, nothing lost or doubled."""
    count = 1_000
    sink, tally = Sink(), Tally.of(range(count))
    start = trio.current_time()
    with trio.fail_after(DEADLINE):
        async with open_tcp_proxy(upstream_port(rabbit_vhost)) as proxy:
            proxy.slow(bytes_per_second=200_000, latency=0.02)
            host = make_host([counting_service(sink)], via(proxy, rabbit_vhost))
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                await dispatch_all(host, tally)
                report = await settle_and_report(
                    "slow", tally, sink, capsys, start=start
                )
                await host.stop()

    # No fault: every dispatch is confirmed at once and handled exactly once.
    check(report, losses=0)
    assert (report.unconfirmed, report.duplicated) == (0, 0), report
    assert report.handled == count


# --------------------------------------------------------------------------- restart


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def ensure_broker_up(admin: RabbitAdmin) -> None:
    """Start the RabbitMQ app (if stopped); wait until it and its API answer."""
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.request("GET", "overview")
            return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.rabbitmq_restart
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
async def test_a_broker_restart_loses_no_confirmed_event(
    rabbit_vhost: str,
    rabbit_admin: RabbitAdmin,
    host_log: LogWatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``rabbitmqctl stop_app`` / ``start_app`` mid-stream.

    The first 1,000 events are confirmed before the stop, with the handlers held
    so that they wait in the queue (and 10 unacked in workers): the durable queue
    and its persistent messages must survive the restart. The other 1,000 are
    dispatched from the moment the host lost its connection: through the outage,
    retried until the broker is back. One long-lived ``host.dispatcher()`` sends
    all 2,000: it must ride out the restart itself.

    Disruptive: every client of the broker is disconnected. Deselect with
    ``-m "not rabbitmq_restart"`` on a shared broker.
    """
    half = 1_000
    sink, tally = Sink(), Tally.of(range(half))
    sink.gate = trio.Event()  # handlers hold their deliveries until the restart
    start = trio.current_time()

    async def restart() -> None:
        try:
            await trio.to_thread.run_sync(rabbitmqctl, "stop_app")
        finally:
            await trio.to_thread.run_sync(ensure_broker_up, rabbit_admin)

    try:
        with trio.fail_after(DEADLINE):
            host = make_host([counting_service(sink)], rabbit_vhost)
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                async with host.dispatcher() as dispatch:
                    await send_all(dispatch, tally)
                    async with trio.open_nursery() as outage:
                        outage.start_soon(restart)
                        await host_log.wait_for(LOST)
                        tally.add(range(half, 2 * half))
                        await send_all(dispatch, tally)
                sink.gate.set()
                report = await settle_and_report(
                    "restart",
                    tally,
                    sink,
                    capsys,
                    start=start,
                    timed_out=tally.errors["BrokerUnavailable"],
                )
                await round_trip(host, sink, 2 * half)
                await host.stop()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(ensure_broker_up, rabbit_admin)

    check(report, losses=host_log.count(LOST))
    assert host_log.count("resumed counting") >= 1
