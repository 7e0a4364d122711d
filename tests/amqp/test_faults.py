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

import collections
import logging
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from trioevents import (
    BrokerUnavailable,
    EventDispatcher,
    ServiceHost,
    event_handler,
)

from ..support.recording import LogWatch, watch_log
from ..support.tcpproxy import TcpProxy, open_tcp_proxy, upstream_port, via

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from trioevents.testing import RabbitAdmin

pytestmark = pytest.mark.rabbitmq

SOURCE = "faults"
#: The handler's max_workers, so also its prefetch count.
PREFETCH = 10
#: Concurrent dispatching tasks.
CONCURRENCY = 32
#: Generous: the broker shares two cores with the tests (and other test runs).
DEADLINE = 120
#: What the host logs when it loses its connection (or fails to reconnect).
LOST = "connection lost"


# --------------------------------------------------------------------------- counting


class Sink:
    """Counts what a handler saw: each (id, attempt); lets a test wait for ids.

    Handlers wait for :attr:`gate` before they return (open unless a test
    closes it).
    """

    def __init__(self) -> None:
        self.seen: collections.Counter[tuple[int, int]] = collections.Counter()
        self.ids: set[int] = set()
        self.gate = trio.Event()
        self.gate.set()
        self._changed = trio.Event()

    def record(self, payload: dict[str, Any]) -> None:
        key = (payload["id"], payload["attempt"])
        self.seen[key] += 1
        self.ids.add(key[0])
        self._changed.set()
        self._changed = trio.Event()

    async def wait_count(self, count: int) -> None:
        """Wait until *count* distinct ids were handled."""
        while len(self.ids) < count:
            await self._changed.wait()

    async def wait_handled(self, ids: Iterable[int]) -> None:
        """Wait until each of *ids* was handled at least once."""
        missing = set(ids)
        while True:
            missing -= self.ids
            if not missing:
                return
            await self._changed.wait()


def counting_service(sink: Sink, source: str = SOURCE, event: str = "ping") -> type:
    """A SERVICE_POOL handler that records every event it handles in *sink*."""

    class Counting:
        name = "counting"

        @event_handler(source, event)
        async def handle(self, payload: dict[str, Any]) -> None:
            sink.record(payload)
            await sink.gate.wait()

    return Counting


@attrs.define(eq=False)
class Tally:
    """The dispatching side: which ids are confirmed, how many attempts it took."""

    todo: deque[int] = attrs.Factory(deque)
    total: int = 0
    confirmed: set[int] = attrs.Factory(set)
    attempts: collections.Counter[int] = attrs.Factory(collections.Counter)
    #: Attempts that raised: the event was sent again as a new attempt.
    unconfirmed: int = 0
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    _changed: trio.Event = attrs.Factory(trio.Event)

    @classmethod
    def of(cls, ids: Iterable[int]) -> Tally:
        tally = cls()
        tally.add(ids)
        return tally

    def add(self, ids: Iterable[int]) -> None:
        """Queue more events to dispatch."""
        before = len(self.todo)
        self.todo.extend(ids)
        self.total += len(self.todo) - before

    def next_attempt(self) -> dict[str, int]:
        event_id = self.todo.popleft()
        self.attempts[event_id] += 1
        return {"id": event_id, "attempt": self.attempts[event_id]}

    def confirm(self, payload: dict[str, int]) -> None:
        self.confirmed.add(payload["id"])
        self._changed.set()
        self._changed = trio.Event()

    def retry(self, payload: dict[str, int], error: BaseException) -> None:
        self.unconfirmed += 1
        self.errors[type(error).__name__] += 1
        self.todo.append(payload["id"])

    async def wait_confirmed(self, count: int) -> None:
        while len(self.confirmed) < count:
            await self._changed.wait()


async def _send(
    dispatch: Callable[..., Any], tally: Tally, event: str, padding: str
) -> None:
    while tally.todo:
        payload = tally.next_attempt()
        try:
            await dispatch(SOURCE, event, {**payload, "pad": padding})
        except BrokerUnavailable as exc:  # no confirm within PUBLISH_TIMEOUT
            tally.retry(payload, exc)
            continue
        except BaseException as exc:
            tally.retry(payload, exc)
            raise
        tally.confirm(payload)


async def dispatch_all(
    host: ServiceHost,
    tally: Tally,
    *,
    event: str = "ping",
    concurrency: int = CONCURRENCY,
    size: int = 0,
) -> None:
    """Dispatch until every id of *tally* is confirmed, through one dispatcher.

    One long-lived ``host.dispatcher()`` for the whole run, as a web app keeps
    one: it must survive every fault itself (a connection failure escaping
    its block fails the test). A dispatch that raises (no confirm within
    ``PUBLISH_TIMEOUT``) is not confirmed: its id is sent again later, as a new
    attempt. Each event is padded with *size* bytes.
    """
    async with host.dispatcher() as dispatch:
        await send_all(dispatch, tally, event=event, concurrency=concurrency, size=size)


async def send_all(
    dispatch: Callable[..., Any],
    tally: Tally,
    *,
    event: str = "ping",
    concurrency: int = CONCURRENCY,
    size: int = 0,
) -> None:
    """Dispatch until every id of *tally* is confirmed, with *dispatch*."""
    padding = "x" * size
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(_send, dispatch, tally, event, padding)


async def round_trip(host: ServiceHost, sink: Sink, event_id: int) -> None:
    """Dispatch one more event and wait until it is handled."""
    await dispatch_all(host, Tally.of([event_id]), concurrency=1)
    await sink.wait_handled([event_id])


@attrs.frozen
class Report:
    """What happened to the events of a tally, as the sink saw them."""

    sent: int
    attempts: int
    confirmed: int
    unconfirmed: int
    handled: int
    duplicated: int
    redelivered: int
    republished: int
    lost: int

    @classmethod
    def of(cls, tally: Tally, sink: Sink) -> Report:
        ids = set(tally.attempts)
        seen = {key: n for key, n in sink.seen.items() if key[0] in ids}
        handled = sum(seen.values())
        attempts_handled = collections.Counter(event_id for event_id, _ in seen)
        return cls(
            sent=tally.total,
            attempts=tally.attempts.total(),
            confirmed=len(tally.confirmed),
            unconfirmed=tally.unconfirmed,
            handled=handled,
            duplicated=handled - len(attempts_handled),
            redelivered=sum(n - 1 for n in seen.values()),
            republished=sum(n - 1 for n in attempts_handled.values()),
            lost=len(tally.confirmed - sink.ids),
        )

    def line(self, name: str, **extra: Any) -> str:
        fields = {**attrs.asdict(self), **extra}
        return f"[faults] {name}: " + " ".join(f"{k}={v}" for k, v in fields.items())


async def settle_and_report(
    name: str,
    tally: Tally,
    sink: Sink,
    capsys: pytest.CaptureFixture[str],
    *,
    start: float,
    **extra: Any,
) -> Report:
    """Wait (bounded) until every confirmed event was handled; print the report.

    *start* is when the test began (``trio.current_time()``), for the report.
    Returns rather than fails on the bound, so that the report is printed first.
    """
    with trio.move_on_after(DEADLINE / 2):
        await sink.wait_handled(tally.confirmed)
    report = Report.of(tally, sink)
    seconds = round(trio.current_time() - start, 1)
    with capsys.disabled():
        print()  # noqa: T201 - the report line belongs in the CI log
        print(report.line(name, **extra, seconds=seconds))  # noqa: T201
    return report


def check(report: Report, *, losses: int, concurrency: int = CONCURRENCY) -> None:
    """The invariants of the module docstring, for *losses* lost connections."""
    assert report.lost == 0, report
    assert report.confirmed == report.sent, report
    assert report.redelivered <= (PREFETCH + concurrency) * losses, report
    assert report.republished <= report.unconfirmed, report


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def host_log() -> Iterator[LogWatch]:
    """What the host logs at INFO and above while the test runs."""
    with watch_log("trioevents.host", logging.INFO) as watch:
        yield watch


def make_host(services: list[type], uri: str, **config: Any) -> ServiceHost:
    return ServiceHost(
        services,
        {
            "AMQP_URI": uri,
            "max_workers": PREFETCH,
            "RECONNECT_DELAY": 0.1,
            "RECONNECT_MAX_DELAY": 1,
            **config,
        },
    )


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
