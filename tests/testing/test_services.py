"""``trioevents.testing._services``: worker_factory, replace_dependencies, HostFactory.

They run the little shop of ``tests/support/shop.py``.
"""

from __future__ import annotations

import decimal
from typing import Any, assert_type, cast
from unittest import mock

import pytest
import trio
import trio.testing

from trioevents import Config, EventDispatcher, ServiceHost
from trioevents.testing import (
    HostFactory,
    entrypoint_waiter,
    replace_dependencies,
    worker_factory,
)

from ..support import shop
from ..support.brokers import queue_depth


@pytest.fixture(autouse=True)
def fresh_shop() -> None:
    shop.reset()


# ---------------------------------------------------------------- worker_factory


def recording(dependency: object) -> mock.AsyncMock:
    """The mock worker_factory injected, as mypy should see it in these tests."""
    return cast("mock.AsyncMock", dependency)


def test_worker_factory_is_typed_as_the_service() -> None:
    """Checked by mypy, which CI runs on the tests: a Billing, not Any."""
    billing = worker_factory(shop.Billing)
    assert_type(billing, shop.Billing)
    assert isinstance(billing, shop.Billing)


async def test_worker_factory_injects_an_awaitable_recording_dispatch() -> None:
    service = worker_factory(shop.Orders)
    assert await service.on_checkout({"id": 3, "total": "9.99"}) == 30
    recording(service.dispatch).assert_awaited_once_with(
        "order_placed", shop.OrderPlaced(3, decimal.Decimal("9.99"))
    )


async def test_worker_factory_dispatch_keeps_the_real_signature() -> None:
    service = worker_factory(shop.Nameless)
    with pytest.raises(TypeError, match="event_data"):
        await service.dispatch("went")


async def test_worker_factory_dispatch_side_effects_apply() -> None:
    service = worker_factory(shop.Orders)
    recording(service.dispatch).side_effect = RuntimeError("broker down")
    with pytest.raises(RuntimeError, match="broker down"):
        await service.on_checkout({"id": 1, "total": "1"})


def test_worker_factory_mocks_other_dependencies_and_takes_given_ones() -> None:
    fake = mock.AsyncMock()
    service = worker_factory(shop.Orders, dispatch=fake)
    assert service.dispatch is fake
    assert isinstance(service.clock, mock.MagicMock)
    assert isinstance(service, shop.Orders)


def test_worker_factory_refuses_unknown_dependencies() -> None:
    with pytest.raises(ValueError, match=r"no dependency provider named 'clok'"):
        worker_factory(shop.Orders, clok="12:00")


async def test_worker_factory_needs_no_service_name() -> None:
    service = worker_factory(shop.Nameless)
    await service.go()
    recording(service.dispatch).assert_awaited_once_with("went", {"x": 1})


# ---------------------------------------------------------- replace_dependencies


async def test_replaced_dispatch_records_and_publishes_nothing(
    host_factory: HostFactory, memory_uri: str
) -> None:
    host = host_factory.make([shop.Orders, shop.Billing])
    dispatch_mock = replace_dependencies((host, "orders"), "dispatch")
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
                await dispatch("web", "checkout", {"id": 7, "total": "3.25"})
    assert waited.exception is None
    dispatch_mock.assert_awaited_once_with(
        "order_placed", shop.OrderPlaced(7, decimal.Decimal("3.25"))
    )
    await trio.testing.wait_all_tasks_blocked()
    assert ("billing", 7) not in shop.recorder.calls
    assert await queue_depth(memory_uri, "evt-orders-order_placed--billing.charge") == 0


async def test_replacement_values_are_injected(host_factory: HostFactory) -> None:
    sent: list[tuple[str, Any]] = []

    async def fake_dispatch(event_type: str, event_data: Any, **options: Any) -> None:
        await trio.lowlevel.checkpoint()
        sent.append((event_type, event_data))

    host = host_factory.make([shop.Orders])
    assert replace_dependencies(host, dispatch=fake_dispatch) == ()
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout"):
                await dispatch("web", "checkout", {"id": 8, "total": "1"})
    assert sent == [("order_placed", shop.OrderPlaced(8, decimal.Decimal("1")))]


def test_replace_dependencies_returns_mocks_in_order() -> None:
    host = ServiceHost([shop.Orders])
    dispatch, clock = replace_dependencies((host, shop.Orders), "dispatch", "clock")
    assert isinstance(clock, mock.MagicMock)
    assert callable(dispatch)


def test_replace_dependencies_needs_the_service_when_the_host_has_several() -> None:
    host = ServiceHost([shop.Orders, shop.Billing])
    with pytest.raises(ValueError, match="several services"):
        replace_dependencies(host, "dispatch")
    with pytest.raises(ValueError, match="no service 'shipping'"):
        replace_dependencies((host, "shipping"), "dispatch")


def test_replace_dependencies_refuses_unknown_names() -> None:
    host = ServiceHost([shop.Orders])
    with pytest.raises(ValueError, match="no dependency provider named 'on_checkout'"):
        replace_dependencies(host, "on_checkout")


async def test_replace_dependencies_refuses_a_serving_host(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([shop.Orders])
    with pytest.raises(RuntimeError, match="before the host starts"):
        replace_dependencies(host, "dispatch")


def test_replace_dependencies_leaves_the_class_alone() -> None:
    replace_dependencies(ServiceHost([shop.Orders]), "dispatch")
    assert isinstance(shop.Orders.__dict__["dispatch"], EventDispatcher)


# ---------------------------------------------------------------- HostFactory


async def test_host_factory_stops_hosts_gracefully(memory_uri: str) -> None:
    async with trio.open_nursery() as nursery:
        factory = HostFactory(nursery, {"AMQP_URI": memory_uri})
        host = await factory([shop.Billing])
        async with host.dispatcher() as dispatch:
            await dispatch("orders", "slow", 1)
        await shop.recorder.wait_for(1)
        nursery.start_soon(factory.aclose)
        await trio.testing.wait_all_tasks_blocked()
        assert ("slow finished", 1) not in shop.recorder.calls
        shop.release.set()
    assert shop.recorder.calls[-1] == ("slow finished", 1)
    assert await queue_depth(memory_uri, "evt-orders-slow--billing.slow") == 0


async def test_host_factory_lays_host_config_over_its_defaults(
    host_factory: HostFactory, memory_uri: str
) -> None:
    assert host_factory.uri == memory_uri
    host = host_factory.make(shop.Orders, {"max_workers": 3})
    assert host.config.amqp_uri == memory_uri
    assert host.config.max_workers == 3
    own = Config(amqp_uri="memory://elsewhere")
    assert host_factory.make([shop.Orders], own).config is own
    assert host_factory.hosts[0] is host


async def test_host_factory_dispatcher_reaches_its_hosts(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([shop.Billing])
    async with host_factory.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "billing", "charge") as waited:
                await dispatch("orders", "order_placed", {"id": 9, "total": "1"})
    assert waited.exception is None
