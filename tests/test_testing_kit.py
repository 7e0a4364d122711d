"""The testing kit: worker_factory, replace_dependencies, entrypoint_waiter, HostFactory."""

from __future__ import annotations

import decimal
from typing import Any, assert_type, cast
from unittest import mock

import attrs
import pytest
import trio
import trio.testing

from trioevents import (
    Config,
    DependencyProvider,
    EventDispatcher,
    ServiceHost,
    WorkerContext,
    event_handler,
)
from trioevents.testing import (
    EntrypointWaiterTimeout,
    HostFactory,
    WaitResult,
    entrypoint_waiter,
    replace_dependencies,
    worker_factory,
)

from .helpers import Recorder, queue_depth


@attrs.frozen
class OrderPlaced:
    id: int
    total: decimal.Decimal


class Clock(DependencyProvider[str]):
    """A dependency that is not a dispatcher."""

    def get_dependency(self, worker_ctx: WorkerContext) -> str:
        return "12:00"


class Teardowns(DependencyProvider[None]):
    """Records every worker teardown, to check the waiter waits for it."""

    async def worker_teardown(self, worker_ctx: WorkerContext) -> None:
        await trio.lowlevel.checkpoint()
        recorder.record("teardown", worker_ctx.method_name)


recorder = Recorder()
release = trio.Event()


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global recorder, release
    recorder = Recorder()
    release = trio.Event()


class Orders:
    name = "orders"
    dispatch = EventDispatcher()
    clock = Clock()
    teardowns = Teardowns()

    @event_handler("web", "checkout")
    async def on_checkout(self, payload: dict[str, Any]) -> int:
        if payload.get("fail"):
            raise ValueError(f"bad basket {payload['id']}")
        order = OrderPlaced(payload["id"], decimal.Decimal(payload["total"]))
        await self.dispatch("order_placed", order)
        recorder.record("orders", payload["id"])
        return int(payload["id"]) * 10


class Billing:
    name = "billing"
    dispatch = EventDispatcher()

    @event_handler("orders", "order_placed")
    async def charge(self, event: OrderPlaced) -> None:
        recorder.record("billing", event.id)

    @event_handler("orders", "slow")
    async def slow(self, payload: Any) -> None:
        recorder.record("slow started", payload)
        await release.wait()
        recorder.record("slow finished", payload)


class Nameless:
    dispatch = EventDispatcher()

    async def go(self) -> None:
        await self.dispatch("went", {"x": 1})


# ---------------------------------------------------------------- worker_factory


def recording(dependency: object) -> mock.AsyncMock:
    """The mock worker_factory injected, as mypy should see it in these tests."""
    return cast("mock.AsyncMock", dependency)


def test_worker_factory_is_typed_as_the_service() -> None:
    """Checked by mypy, which CI runs on the tests: a Billing, not Any."""
    billing = worker_factory(Billing)
    assert_type(billing, Billing)
    assert isinstance(billing, Billing)


async def test_worker_factory_injects_an_awaitable_recording_dispatch() -> None:
    service = worker_factory(Orders)
    assert await service.on_checkout({"id": 3, "total": "9.99"}) == 30
    recording(service.dispatch).assert_awaited_once_with(
        "order_placed", OrderPlaced(3, decimal.Decimal("9.99"))
    )


async def test_worker_factory_dispatch_keeps_the_real_signature() -> None:
    service = worker_factory(Nameless)
    with pytest.raises(TypeError, match="event_data"):
        await service.dispatch("went")


async def test_worker_factory_dispatch_side_effects_apply() -> None:
    service = worker_factory(Orders)
    recording(service.dispatch).side_effect = RuntimeError("broker down")
    with pytest.raises(RuntimeError, match="broker down"):
        await service.on_checkout({"id": 1, "total": "1"})


def test_worker_factory_mocks_other_dependencies_and_takes_given_ones() -> None:
    fake = mock.AsyncMock()
    service = worker_factory(Orders, dispatch=fake)
    assert service.dispatch is fake
    assert isinstance(service.clock, mock.MagicMock)
    assert isinstance(service, Orders)


def test_worker_factory_refuses_unknown_dependencies() -> None:
    with pytest.raises(ValueError, match=r"no dependency provider named 'clok'"):
        worker_factory(Orders, clok="12:00")


async def test_worker_factory_needs_no_service_name() -> None:
    service = worker_factory(Nameless)
    await service.go()
    recording(service.dispatch).assert_awaited_once_with("went", {"x": 1})


# ------------------------------------------------------------- entrypoint_waiter


async def test_waiter_returns_after_the_worker_and_its_teardown(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([Orders, Billing])
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
                await dispatch("web", "checkout", {"id": 2, "total": "1.50"})
    assert waited.done
    assert waited.get() == waited.result == 20
    assert waited.exception is None
    assert waited.worker_ctx is not None
    assert waited.worker_ctx.method_name == "on_checkout"
    assert ("teardown", "on_checkout") in recorder.calls


async def test_waiter_exposes_the_handler_exception_without_raising(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([Orders])
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
                await dispatch("web", "checkout", {"id": 1, "fail": True})
    assert isinstance(waited.exception, ValueError)
    assert waited.result is None
    with pytest.raises(ValueError, match="bad basket 1"):
        waited.get()


async def test_waiter_callback_picks_the_call_to_wait_for(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([Orders])
    seen: list[Any] = []

    def second_order(
        ctx: WorkerContext, result: Any, exc: BaseException | None
    ) -> bool:
        seen.append(result)
        return bool(result == 20)

    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(
                host, "orders", "on_checkout", callback=second_order
            ) as waited:
                for n in (1, 2, 3):
                    await dispatch("web", "checkout", {"id": n, "total": "1"})
    assert waited.result == 20
    assert 10 in seen
    assert 20 in seen


async def test_waiter_raises_what_its_callback_raised(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([Orders])

    def broken(ctx: WorkerContext, result: Any, exc: BaseException | None) -> bool:
        raise KeyError("oops")

    async with host.dispatcher() as dispatch:
        with trio.fail_after(10), pytest.raises(KeyError, match="oops"):
            async with entrypoint_waiter(
                host, "orders", "on_checkout", callback=broken
            ):
                await dispatch("web", "checkout", {"id": 1, "total": "1"})
    # The worker itself was not disturbed by the callback.
    assert ("orders", 1) in recorder.calls


async def test_waiter_counts_a_worker_that_finished_inside_the_block(
    host_factory: HostFactory,
) -> None:
    """Nothing is missed between the dispatch and the wait."""
    host = await host_factory([Orders])
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
                await dispatch("web", "checkout", {"id": 4, "total": "1"})
                await recorder.wait_for(2)  # handled and torn down already
                assert waited.done
    assert waited.result == 40


async def test_waiter_ignores_other_entrypoints(host_factory: HostFactory) -> None:
    host = await host_factory([Orders, Billing])
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "billing", "charge") as waited:
                await dispatch("web", "checkout", {"id": 5, "total": "2"})
    assert waited.worker_ctx is not None
    assert waited.worker_ctx.service_name == "billing"
    assert ("billing", 5) in recorder.calls


async def test_waiter_lets_an_error_of_the_block_out_and_unhooks(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([Orders])
    with pytest.raises(ZeroDivisionError):
        async with entrypoint_waiter(host, "orders", "on_checkout"):
            _ = 1 / 0
    assert host._worker_hooks == []


async def test_waiter_works_for_a_host_started_inside_the_block(
    host_factory: HostFactory,
) -> None:
    host = host_factory.make([Orders])
    with trio.fail_after(10):
        async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
            await host_factory.start(host)
            async with host.dispatcher() as dispatch:
                await dispatch("web", "checkout", {"id": 6, "total": "1"})
    assert waited.result == 60


async def test_waiter_refuses_unknown_services_and_methods() -> None:
    host = ServiceHost([Orders])
    with pytest.raises(ValueError, match="no service 'billing'"):
        async with entrypoint_waiter(host, "billing", "charge"):
            pass
    with pytest.raises(ValueError, match="no entrypoint 'clock'"):
        async with entrypoint_waiter(host, "orders", "clock"):
            pass


async def test_waiter_times_out_after_nameko_s_30_seconds(
    host_factory: HostFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """Nothing dispatched: a clear error naming the entrypoint, not a hang."""
    host = await host_factory([Billing])
    start = trio.current_time()
    with pytest.raises(
        EntrypointWaiterTimeout,
        match=r"no worker of billing\.charge finished within 30 seconds",
    ) as raised:
        async with entrypoint_waiter(host, "billing", "charge"):
            pass
    assert trio.current_time() - start == pytest.approx(30)
    error = raised.value
    assert (error.service_name, error.method_name, error.timeout) == (
        "billing",
        "charge",
        30,
    )
    assert isinstance(error, trio.TooSlowError)
    assert entrypoint_waiter.Timeout is EntrypointWaiterTimeout  # nameko's name
    assert host._worker_hooks == []


async def test_waiter_timeout_bounds_the_block_and_the_wait_together(
    host_factory: HostFactory, autojump_clock: trio.testing.MockClock
) -> None:
    host = await host_factory([Billing])
    start = trio.current_time()
    with pytest.raises(EntrypointWaiterTimeout, match=r"within 2\.5 seconds"):
        async with entrypoint_waiter(host, "billing", "charge", timeout=2.5):
            await trio.sleep(10)
    assert trio.current_time() - start == pytest.approx(2.5)


async def test_waiter_without_a_timeout_waits_for_ever(
    host_factory: HostFactory, autojump_clock: trio.testing.MockClock
) -> None:
    host = await host_factory([Billing])
    with trio.move_on_after(24 * 3600) as day:
        async with entrypoint_waiter(host, "billing", "charge", timeout=None):
            pass
    assert day.cancelled_caught


async def test_waiter_passes_on_a_timeout_of_the_block_itself(
    host_factory: HostFactory,
) -> None:
    """The block's own trio.fail_after is not the waiter's timeout."""
    host = await host_factory([Billing])

    async def too_slow_block() -> None:
        async with entrypoint_waiter(host, "billing", "charge", timeout=60):
            with trio.fail_after(0):
                await trio.sleep(1)

    with pytest.raises(trio.TooSlowError) as raised:
        await too_slow_block()
    assert type(raised.value) is trio.TooSlowError


def test_waiter_refuses_a_negative_timeout_and_a_plain_with() -> None:
    host = ServiceHost([Billing])
    with pytest.raises(ValueError, match="timeout must be None or >= 0"):
        entrypoint_waiter(host, "billing", "charge", timeout=-1)
    with pytest.raises(TypeError, match="use `async with entrypoint_waiter"):
        with entrypoint_waiter(host, "billing", "charge"):
            pass


def test_wait_result_get_before_done_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not finished"):
        WaitResult().get()


# ---------------------------------------------------------- replace_dependencies


async def test_replaced_dispatch_records_and_publishes_nothing(
    host_factory: HostFactory, memory_uri: str
) -> None:
    host = host_factory.make([Orders, Billing])
    dispatch_mock = replace_dependencies((host, "orders"), "dispatch")
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
                await dispatch("web", "checkout", {"id": 7, "total": "3.25"})
    assert waited.exception is None
    dispatch_mock.assert_awaited_once_with(
        "order_placed", OrderPlaced(7, decimal.Decimal("3.25"))
    )
    await trio.testing.wait_all_tasks_blocked()
    assert ("billing", 7) not in recorder.calls
    assert await queue_depth(memory_uri, "evt-orders-order_placed--billing.charge") == 0


async def test_replacement_values_are_injected(host_factory: HostFactory) -> None:
    sent: list[tuple[str, Any]] = []

    async def fake_dispatch(event_type: str, event_data: Any, **options: Any) -> None:
        await trio.lowlevel.checkpoint()
        sent.append((event_type, event_data))

    host = host_factory.make([Orders])
    assert replace_dependencies(host, dispatch=fake_dispatch) == ()
    await host_factory.start(host)
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout"):
                await dispatch("web", "checkout", {"id": 8, "total": "1"})
    assert sent == [("order_placed", OrderPlaced(8, decimal.Decimal("1")))]


def test_replace_dependencies_returns_mocks_in_order() -> None:
    host = ServiceHost([Orders])
    dispatch, clock = replace_dependencies((host, Orders), "dispatch", "clock")
    assert isinstance(clock, mock.MagicMock)
    assert callable(dispatch)


def test_replace_dependencies_needs_the_service_when_the_host_has_several() -> None:
    host = ServiceHost([Orders, Billing])
    with pytest.raises(ValueError, match="several services"):
        replace_dependencies(host, "dispatch")
    with pytest.raises(ValueError, match="no service 'shipping'"):
        replace_dependencies((host, "shipping"), "dispatch")


def test_replace_dependencies_refuses_unknown_names() -> None:
    host = ServiceHost([Orders])
    with pytest.raises(ValueError, match="no dependency provider named 'on_checkout'"):
        replace_dependencies(host, "on_checkout")


async def test_replace_dependencies_refuses_a_serving_host(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([Orders])
    with pytest.raises(RuntimeError, match="before the host starts"):
        replace_dependencies(host, "dispatch")


def test_replace_dependencies_leaves_the_class_alone() -> None:
    replace_dependencies(ServiceHost([Orders]), "dispatch")
    assert isinstance(Orders.__dict__["dispatch"], EventDispatcher)


# ---------------------------------------------------------------- HostFactory


async def test_host_factory_stops_hosts_gracefully(memory_uri: str) -> None:
    async with trio.open_nursery() as nursery:
        factory = HostFactory(nursery, {"AMQP_URI": memory_uri})
        host = await factory([Billing])
        async with host.dispatcher() as dispatch:
            await dispatch("orders", "slow", 1)
        await recorder.wait_for(1)
        nursery.start_soon(factory.aclose)
        await trio.testing.wait_all_tasks_blocked()
        assert ("slow finished", 1) not in recorder.calls
        release.set()
    assert recorder.calls[-1] == ("slow finished", 1)
    assert await queue_depth(memory_uri, "evt-orders-slow--billing.slow") == 0


async def test_host_factory_lays_host_config_over_its_defaults(
    host_factory: HostFactory, memory_uri: str
) -> None:
    assert host_factory.uri == memory_uri
    host = host_factory.make(Orders, {"max_workers": 3})
    assert host.config.amqp_uri == memory_uri
    assert host.config.max_workers == 3
    own = Config(amqp_uri="memory://elsewhere")
    assert host_factory.make([Orders], own).config is own
    assert host_factory.hosts[0] is host


async def test_host_factory_dispatcher_reaches_its_hosts(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([Billing])
    async with host_factory.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "billing", "charge") as waited:
                await dispatch("orders", "order_placed", {"id": 9, "total": "1"})
    assert waited.exception is None
