"""A billing service that fails while told to, for the dead-letter tools' tests.

:class:`Billing` is the service of the docs (``docs/concepts.rst``): it handles
``orders`` / ``order_placed`` with ``retry=Backoff(...)``, so a failing event
ends in ``evt-orders-order_placed--billing.charge.dlq``. While
:attr:`Billing.failing` is true it raises; once a test sets it false it handles,
and records each event it handled in :data:`LEDGER`. :class:`Outcomes` tells a
test when deliveries reached an outcome (dead-lettered, acked), so it never waits
for time.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from trioevents import Backoff, Observer, Outcome, ServiceHost, event_handler

from .brokers import DEADLINE, dispatch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from trioevents import HandledEvent

SOURCE = "orders"
EVENT = "order_placed"
QUEUE = "evt-orders-order_placed--billing.charge"
DLQ = QUEUE + ".dlq"
#: The retry delays: short, so that RabbitMQ runs them in real time.
DELAYS = (0.05, 0.1)
#: The id of the event a test dispatches last to know that every earlier one was
#: handled (the handler runs one event at a time, in queue order).
SENTINEL = 0


class Ledger:
    """The ids of the events handled, in order; a test waits for one of them."""

    def __init__(self) -> None:
        self.handled: list[int] = []
        #: The ids :class:`Shipping` handled.
        self.shipped: list[int] = []
        self.on_handled: Callable[[int], object] | None = None
        self._changed = trio.Event()

    def record(self, event_id: int) -> None:
        self.handled.append(event_id)
        self._changed.set()
        self._changed = trio.Event()
        if self.on_handled is not None:
            self.on_handled(event_id)

    async def wait_for(self, event_id: int) -> None:
        with trio.fail_after(DEADLINE):
            while event_id not in self.handled:
                await self._changed.wait()


LEDGER = Ledger()


def reset() -> Ledger:
    """Make the service fail again, with an empty ledger; return the ledger."""
    global LEDGER
    LEDGER = Ledger()
    Billing.failing = True
    return LEDGER


class Billing:
    name = "billing"
    failing: ClassVar[bool] = True

    @event_handler(SOURCE, EVENT, retry=Backoff(*DELAYS))
    async def charge(self, event: dict[str, Any]) -> None:
        if Billing.failing and event["id"] != SENTINEL:
            raise RuntimeError(f"card declined for order {event['id']}")
        LEDGER.record(event["id"])


class Shipping:
    """Another handler of the same event, which never fails."""

    name = "shipping"

    @event_handler(SOURCE, EVENT)
    async def ship(self, event: dict[str, Any]) -> None:
        LEDGER.shipped.append(event["id"])


class Outcomes(Observer):
    """Counts what became of each delivery; lets a test wait for a count."""

    def __init__(self) -> None:
        self.seen: list[HandledEvent] = []
        self._changed = trio.Event()

    @contextlib.contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        try:
            yield
        finally:
            self.seen.append(event)
            self._changed.set()
            self._changed = trio.Event()

    def count(self, outcome: Outcome) -> int:
        return sum(event.outcome is outcome for event in self.seen)

    async def wait_for(self, outcome: Outcome, count: int) -> None:
        with trio.fail_after(DEADLINE):
            while self.count(outcome) < count:
                await self._changed.wait()


def billing_host(uri: str, outcomes: Outcomes | None = None) -> ServiceHost:
    """A host of :class:`Billing` that handles one event at a time, in order."""
    return ServiceHost(
        [Billing],
        {"AMQP_URI": uri, "max_workers": 1},
        observers=[outcomes] if outcomes is not None else [],
    )


async def fail_events(
    uri: str, ids: Sequence[int], *, services: Sequence[type] = ()
) -> None:
    """Dispatch the events *ids* to a failing :class:`Billing` until each is dead-lettered.

    Each event has the message id ``order-<id>``. *services* run beside it.
    """
    Billing.failing = True
    outcomes = Outcomes()
    host = billing_host(uri, outcomes)
    others = ServiceHost(services, {"AMQP_URI": uri}) if services else None
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        if others is not None:
            await nursery.start(others.serve)
        async with host.dispatcher() as send:
            for event_id in ids:
                await send(
                    SOURCE, EVENT, {"id": event_id}, message_id=f"order-{event_id}"
                )
        await outcomes.wait_for(Outcome.DEAD_LETTER, len(ids))
        if others is not None:
            await others.stop()
        await host.stop()


async def handle_all(uri: str, outcomes: Outcomes | None = None) -> list[int]:
    """Serve a healthy :class:`Billing` until it handled what its queue holds.

    A sentinel event dispatched last marks the end; return the ids handled
    before it.
    """
    Billing.failing = False
    host = billing_host(uri, outcomes)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await dispatch(uri, SOURCE, EVENT, {"id": SENTINEL})
        await LEDGER.wait_for(SENTINEL)
        await host.stop()
    return [event_id for event_id in LEDGER.handled if event_id != SENTINEL]


def via(proxy_port: int, uri: str) -> str:
    """Return *uri* pointed at a TCP proxy on *proxy_port* (credentials and vhost kept)."""
    parts = urllib.parse.urlsplit(uri)
    login = parts.netloc.rpartition("@")[0]
    netloc = f"{login}@127.0.0.1:{proxy_port}" if login else f"127.0.0.1:{proxy_port}"
    return parts._replace(netloc=netloc).geturl()
