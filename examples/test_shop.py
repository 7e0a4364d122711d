"""Tests of the example shop: one worked example of each testing helper.

Run them with ``python -m pytest examples/test_shop.py`` (they need
pytest-trio; in your own project, set ``trio_mode = true``). ``docs/testing.rst``
shows them piece by piece.
"""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from examples.shop import Billing, Charged, Notifications, OrderPlaced, Orders, Web
from trioevents.testing import (
    HostFactory,
    entrypoint_waiter,
    replace_dependencies,
    worker_factory,
)

if TYPE_CHECKING:
    from trioevents import WorkerContext

pytestmark = pytest.mark.trio

BASKET = {"id": 1, "customer": "ada", "prices": ["9.99", "5.01"]}
ORDER = OrderPlaced(id=1, customer="ada", total=decimal.Decimal("15.00"))


# -- worker_factory: a unit test, no broker at all


async def test_orders_places_an_order_for_a_checkout() -> None:
    orders = worker_factory(Orders)
    await orders.on_checkout(BASKET)
    orders.dispatch.assert_awaited_once_with("order_placed", ORDER)


async def test_billing_with_a_fake_dispatcher() -> None:
    sent: list[tuple[str, Any]] = []

    async def dispatch(event_type: str, event_data: Any, **options: Any) -> None:
        sent.append((event_type, event_data))

    billing = worker_factory(Billing, dispatch=dispatch)
    await billing.charge(ORDER)
    assert sent == [("charged", Charged(order_id=1, amount=ORDER.total))]


# -- host_factory and entrypoint_waiter: services talking over a broker


async def test_a_checkout_ends_with_a_receipt(host_factory: HostFactory) -> None:
    host = await host_factory([Orders, Billing, Notifications])
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "notifications", "charged") as waited:
                await dispatch("web", "checkout", BASKET)
    assert waited.exception is None
    assert waited.worker_ctx is not None
    # The call id stack shows the chain: orders -> billing -> notifications.
    stack = waited.worker_ctx.call_id_stack
    assert [call.rsplit(".", 1)[0] for call in stack] == [
        "orders.on_checkout",
        "billing.charge",
        "notifications.charged",
    ]


async def test_wait_for_one_particular_order(host_factory: HostFactory) -> None:
    host = await host_factory([Orders])

    def order_2(worker_ctx: WorkerContext, result: Any, exc: Any) -> bool:
        return isinstance(result, OrderPlaced) and result.id == 2

    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(
                host, "orders", "on_checkout", callback=order_2
            ) as waited:
                for number in (1, 2, 3):
                    await dispatch("web", "checkout", {**BASKET, "id": number})
    assert waited.get() == OrderPlaced(id=2, customer="ada", total=ORDER.total)


# -- replace_dependencies: keep a host from dispatching for real


async def test_billing_charges_without_dispatching(host_factory: HostFactory) -> None:
    host = host_factory.make([Orders, Billing, Notifications])
    dispatch_charged = replace_dependencies((host, "billing"), "dispatch")
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "billing", "charge"):
                await dispatch("web", "checkout", BASKET)
    dispatch_charged.assert_awaited_once_with(
        "charged", Charged(order_id=1, amount=ORDER.total)
    )


# -- broker_uri: the same test on the embedded broker and on RabbitMQ


async def test_orders_and_billing_on_either_broker(
    host_factory: HostFactory, broker_uri: str
) -> None:
    host = await host_factory([Orders, Billing])
    assert host.config.amqp_uri == broker_uri
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "billing", "charge") as waited:
                await dispatch("web", "checkout", BASKET)
    assert waited.exception is None


# -- time: the web front end's timer under trio's autojump clock


async def test_the_web_timer_checks_out_every_second(
    host_factory: HostFactory, autojump_clock: trio.testing.MockClock
) -> None:
    host = await host_factory([Web, Orders])
    start = trio.current_time()
    for _ in range(3):
        async with entrypoint_waiter(host, "orders", "on_checkout"):
            pass
    assert trio.current_time() - start == pytest.approx(3.0)
