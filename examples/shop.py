"""A small shop: web -> orders -> billing + notifications, on the embedded broker.

Run it with the ``trioevents`` command, from the project's directory::

    trioevents run examples.shop

(``python examples/shop.py`` does the same.) Events start flowing within a
second, and every dispatch and every handled event is logged. Ctrl-C (or SIGTERM)
stops gracefully; a second Ctrl-C stops at once.

* ``web`` plays the shop's front end: a :class:`Timer` entrypoint, a small custom
  entrypoint, makes a customer check out every second (a ``checkout`` event).
* ``orders`` handles ``checkout`` and dispatches a typed ``order_placed`` event.
* ``billing`` charges each order once (SERVICE_POOL) and dispatches ``charged``.
* ``notifications`` tells the customer (BROADCAST: every instance gets every
  event) and sends a receipt once the order is charged.
"""

from __future__ import annotations

import decimal
import itertools
import logging
import sys
from typing import Any

import attrs
import trio

from trioevents import (
    BROADCAST,
    ConnectionContext,
    Entrypoint,
    EventDispatcher,
    event_handler,
)

say = logging.getLogger("shop")


class Timer(Entrypoint):
    """Call a service method every *interval* seconds (like nameko's ``@timer``).

    The first call comes one interval after the host started. A graceful stop
    lets the call in progress finish and starts no other.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stopping = trio.Event()

    async def setup(self) -> None:
        self._stopping = trio.Event()

    async def stop(self) -> None:
        self._stopping.set()

    async def run(
        self, context: ConnectionContext, *, task_status: trio.TaskStatus[None]
    ) -> None:
        # Called on each broker connection; a timer needs none of it.
        task_status.started()
        while True:
            with trio.move_on_after(self.interval):
                await self._stopping.wait()
            if self._stopping.is_set():
                return
            _, error = await self.spawn_worker(())
            if error is not None:
                say.error(
                    "%s.%s failed",
                    self.service_name,
                    self.method_name,
                    exc_info=(type(error), error, error.__traceback__),
                )


timer = Timer.decorator


@attrs.frozen
class OrderPlaced:
    id: int
    customer: str
    total: decimal.Decimal


@attrs.frozen
class Charged:
    order_id: int
    amount: decimal.Decimal


class Orders:
    name = "orders"
    dispatch = EventDispatcher()

    @event_handler("web", "checkout")
    async def on_checkout(self, payload: dict[str, Any]) -> OrderPlaced:
        total = sum((decimal.Decimal(p) for p in payload["prices"]), decimal.Decimal(0))
        order = OrderPlaced(id=payload["id"], customer=payload["customer"], total=total)
        await self.dispatch("order_placed", order)
        say.info(
            "orders: checkout %s handled; dispatched order_placed (total %s)",
            order.id,
            total,
        )
        return order  # handlers' results are ignored, but tests can see them


class Billing:
    name = "billing"
    dispatch = EventDispatcher()

    @event_handler("orders", "order_placed")
    async def charge(self, event: OrderPlaced) -> None:
        await self.dispatch("charged", Charged(order_id=event.id, amount=event.total))
        say.info(
            "billing: order_placed %s handled; charged %s, dispatched charged",
            event.id,
            event.total,
        )


class Notifications:
    name = "notifications"

    @event_handler(
        "orders", "order_placed", handler_type=BROADCAST, reliable_delivery=False
    )
    async def order_placed(self, event: OrderPlaced) -> None:
        say.info(
            "notifications: order_placed %s handled; emailed %s",
            event.id,
            event.customer,
        )

    @event_handler("billing", "charged")
    async def charged(self, event: Charged) -> None:
        say.info(
            "notifications: charged %s handled; sent a receipt for %s",
            event.order_id,
            event.amount,
        )


_basket_numbers = itertools.count(1)


class Web:
    """The shop's front end, played by a timer: a checkout every second."""

    name = "web"
    dispatch = EventDispatcher()

    @timer(interval=1.0)
    async def checkout(self) -> None:
        number = next(_basket_numbers)
        basket = {
            "id": number,
            "customer": f"customer-{number}",
            "prices": ["9.99", "5.01"],
        }
        await self.dispatch("checkout", basket)
        say.info("web: dispatched checkout %s: %s", number, basket)


if __name__ == "__main__":
    from trioevents.cli import main

    sys.exit(main(["run", "__main__", *sys.argv[1:]]))
