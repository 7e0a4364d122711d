"""Counting a stream of numbered events through faults: sent, confirmed, handled.

The fault tests (``tests/amqp/test_faults.py``: a TCP proxy cutting the link to
RabbitMQ) and the cluster tests (``tests/cluster/``: nodes of a cluster killed)
dispatch numbered events through one long-lived ``host.dispatcher()`` to a
handler that records them, then check what ``tests/amqp/test_faults.py``'s
docstring says must hold whatever the faults: no confirmed event lost,
duplicates bounded (:func:`check`), the host still serving (:func:`round_trip`).

* :class:`Sink` is the handling side (each ``(id, attempt)`` it saw),
  :class:`Tally` the dispatching side (which ids are confirmed, how many
  attempts each took);
* :func:`send_all` / :func:`dispatch_all` dispatch every id of a tally, a
  dispatch that raises being sent again as a new attempt;
* :class:`Report` and :func:`settle_and_report` turn them into the one line
  each test prints.
"""

from __future__ import annotations

import collections
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trioevents import BrokerUnavailable, ServiceHost, event_handler

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import pytest

#: The service the counted events come from.
SOURCE = "faults"
#: The handler's max_workers, so also its prefetch count.
PREFETCH = 10
#: Concurrent dispatching tasks.
CONCURRENCY = 32
#: Generous: the broker shares two cores with the tests (and other test runs).
DEADLINE = 120


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


def counting_service(
    sink: Sink,
    source: str = SOURCE,
    event: str = "ping",
    *,
    handler: Callable[..., Callable[[Any], Any]] = event_handler,
) -> type:
    """A SERVICE_POOL handler that records every event it handles in *sink*.

    *handler* makes the entrypoint (``event_handler``, or a custom handler
    class's ``decorator``).
    """

    class Counting:
        name = "counting"

        @handler(source, event)
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
    dispatch: Callable[..., Any], tally: Tally, source: str, event: str, padding: str
) -> None:
    while tally.todo:
        payload = tally.next_attempt()
        try:
            await dispatch(source, event, {**payload, "pad": padding})
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
    source: str = SOURCE,
    event: str = "ping",
    concurrency: int = CONCURRENCY,
    size: int = 0,
) -> None:
    """Dispatch until every id of *tally* is confirmed, with *dispatch*, from
    *concurrency* tasks."""
    padding = "x" * size
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(_send, dispatch, tally, source, event, padding)


def counting_host(services: list[type], uri: str, **config: Any) -> ServiceHost:
    """A host of *services* on *uri* that reconnects fast: prefetch ``PREFETCH``."""
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

    def line(self, name: str, *, tag: str = "faults", **extra: Any) -> str:
        fields = {**attrs.asdict(self), **extra}
        return f"[{tag}] {name}: " + " ".join(f"{k}={v}" for k, v in fields.items())


async def settle_and_report(
    name: str,
    tally: Tally,
    sink: Sink,
    capsys: pytest.CaptureFixture[str],
    *,
    start: float,
    tag: str = "faults",
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
    print_line(capsys, report.line(name, tag=tag, **extra, seconds=seconds))
    return report


def print_line(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print a test's report line where the CI log shows it."""
    with capsys.disabled():
        print()  # noqa: T201 - the report line belongs in the CI log
        print(line)  # noqa: T201


def check(report: Report, *, losses: int, concurrency: int = CONCURRENCY) -> None:
    """The invariants of the module docstring, for *losses* lost connections."""
    assert report.lost == 0, report
    assert report.confirmed == report.sent, report
    assert report.redelivered <= (PREFETCH + concurrency) * losses, report
    assert report.republished <= report.unconfirmed, report
