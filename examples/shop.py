"""A small shop on the embedded broker: orders -> billing + notifications.

Run it with ``python examples/shop.py`` (``--orders N`` places N orders and stops;
without it, an order is placed every second until Ctrl-C or SIGTERM, which stop
gracefully).

* ``web`` is played by a standalone dispatcher: it sends ``checkout`` events.
* ``orders`` handles ``checkout`` and dispatches a typed ``order_placed`` event.
* ``billing`` charges each order once (SERVICE_POOL) and dispatches ``charged``.
* ``notifications`` tells the customer (BROADCAST: every instance gets every event).
"""

from __future__ import annotations

import argparse
import decimal
import logging
import signal
import sys
from typing import Any

import attrs
import trio

from trioevents import (
    BROADCAST,
    EventDispatcher,
    ServiceHost,
    event_handler,
)

say = logging.getLogger("shop")


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
    async def on_checkout(self, payload: dict[str, Any]) -> None:
        total = sum(decimal.Decimal(p) for p in payload["prices"])
        order = OrderPlaced(id=payload["id"], customer=payload["customer"], total=total)
        say.info(
            "orders: placing order %s for %s (%s)", order.id, order.customer, total
        )
        await self.dispatch("order_placed", order)


class Billing:
    name = "billing"
    dispatch = EventDispatcher()

    @event_handler("orders", "order_placed")
    async def charge(self, event: OrderPlaced) -> None:
        say.info("billing: charging %s for order %s", event.total, event.id)
        await self.dispatch("charged", Charged(order_id=event.id, amount=event.total))


class Notifications:
    name = "notifications"

    @event_handler(
        "orders", "order_placed", handler_type=BROADCAST, reliable_delivery=False
    )
    async def order_placed(self, event: OrderPlaced) -> None:
        say.info(
            "notifications: emailing %s: order %s received", event.customer, event.id
        )

    @event_handler("billing", "charged")
    async def charged(self, event: Charged) -> None:
        say.info(
            "notifications: receipt for order %s: %s", event.order_id, event.amount
        )


SERVICES = [Orders, Billing, Notifications]


async def shop(orders: int | None, uri: str) -> None:
    host = ServiceHost(SERVICES, config={"AMQP_URI": uri})
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        say.info("serving %s on %s", ", ".join(s.name for s in SERVICES), uri)

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    say.info("%s: stopping gracefully", signal.Signals(signum).name)
                    await host.stop()
                    nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signal)
        async with host.dispatcher() as dispatch:
            n = 0
            while orders is None or n < orders:
                n += 1
                say.info("web: checkout %s", n)
                await dispatch(
                    "web",
                    "checkout",
                    {"id": n, "customer": f"customer-{n}", "prices": ["9.99", "5.01"]},
                )
                await trio.sleep(1 if orders is None else 0.2)
        await trio.sleep(0.5)  # let the last events flow through
        await host.stop()
        nursery.cancel_scope.cancel()
    say.info("stopped cleanly")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--orders", type=int, default=None, help="place N orders, then stop"
    )
    parser.add_argument("--broker", default="memory://shop", help="AMQP_URI")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    trio.run(shop, args.orders, args.broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
