"""``trioevents.testing._waiting``: entrypoint_waiter and its WaitResult.

It waits for workers of the little shop of ``tests/support/shop.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trioevents import Outcome, SerializationError, ServiceHost, WorkerContext
from trioevents.testing import (
    DeliveryNotHandled,
    EntrypointWaiterTimeout,
    HostFactory,
    WaitResult,
    entrypoint_waiter,
)

from ..support import shop

if TYPE_CHECKING:
    from trioevents._extensions import WorkerHook


@pytest.fixture(autouse=True)
def fresh_shop() -> None:
    shop.reset()


# ------------------------------------------------------------- entrypoint_waiter


async def test_waiter_returns_after_the_worker_and_its_teardown(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([shop.Orders, shop.Billing])
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
                await dispatch("web", "checkout", {"id": 2, "total": "1.50"})
    assert waited.done
    assert waited.get() == waited.result == 20
    assert waited.exception is None
    assert waited.worker_ctx is not None
    assert waited.worker_ctx.method_name == "on_checkout"
    assert ("teardown", "on_checkout") in shop.recorder.calls


async def test_waiter_exposes_the_handler_exception_without_raising(
    host_factory: HostFactory,
) -> None:
    host = await host_factory([shop.Orders])
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
    # One worker: the checkouts are handled in order, so the callback sees the
    # first before it picks the second.
    host = await host_factory([shop.Orders], {"max_workers": 1})
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
    host = await host_factory([shop.Orders])

    def broken(ctx: WorkerContext, result: Any, exc: BaseException | None) -> bool:
        raise KeyError("oops")

    async with host.dispatcher() as dispatch:
        with trio.fail_after(10), pytest.raises(KeyError, match="oops"):
            async with entrypoint_waiter(
                host, "orders", "on_checkout", callback=broken
            ):
                await dispatch("web", "checkout", {"id": 1, "total": "1"})
    # The worker itself was not disturbed by the callback.
    assert ("orders", 1) in shop.recorder.calls


async def test_waiter_counts_a_worker_that_finished_inside_the_block(
    host_factory: HostFactory,
) -> None:
    """Nothing is missed between the dispatch and the wait."""
    host = await host_factory([shop.Orders])
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
                await dispatch("web", "checkout", {"id": 4, "total": "1"})
                await shop.recorder.wait_for(2)  # handled and torn down already
                assert waited.done
    assert waited.result == 40


async def test_waiter_ignores_other_entrypoints(host_factory: HostFactory) -> None:
    host = await host_factory([shop.Orders, shop.Billing])
    async with host.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "billing", "charge") as waited:
                await dispatch("web", "checkout", {"id": 5, "total": "2"})
    assert waited.worker_ctx is not None
    assert waited.worker_ctx.service_name == "billing"
    assert ("billing", 5) in shop.recorder.calls


async def test_waiter_lets_an_error_of_the_block_out_and_unhooks(
    host_factory: HostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = await host_factory([shop.Orders])
    hooks: list[object] = []
    add, remove = host.add_worker_hook, host.remove_worker_hook

    def spy_add(hook: WorkerHook) -> None:
        hooks.append(hook)
        add(hook)

    def spy_remove(hook: WorkerHook) -> None:
        hooks.remove(hook)
        remove(hook)

    monkeypatch.setattr(host, "add_worker_hook", spy_add)
    monkeypatch.setattr(host, "remove_worker_hook", spy_remove)
    with pytest.raises(ZeroDivisionError):
        async with entrypoint_waiter(host, "orders", "on_checkout"):
            _ = 1 / 0
    assert hooks == []


async def test_waiter_works_for_a_host_started_inside_the_block(
    host_factory: HostFactory,
) -> None:
    host = host_factory.make([shop.Orders])
    with trio.fail_after(10):
        async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
            await host_factory.start(host)
            async with host.dispatcher() as dispatch:
                await dispatch("web", "checkout", {"id": 6, "total": "1"})
    assert waited.result == 60


async def test_waiter_refuses_unknown_services_and_methods() -> None:
    host = ServiceHost([shop.Orders])
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
    host = await host_factory([shop.Billing])
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


async def test_waiter_timeout_bounds_the_block_and_the_wait_together(
    host_factory: HostFactory, autojump_clock: trio.testing.MockClock
) -> None:
    host = await host_factory([shop.Billing])
    start = trio.current_time()
    with pytest.raises(EntrypointWaiterTimeout, match=r"within 2\.5 seconds"):
        async with entrypoint_waiter(host, "billing", "charge", timeout=2.5):
            await trio.sleep(10)
    assert trio.current_time() - start == pytest.approx(2.5)


async def test_waiter_without_a_timeout_waits_for_ever(
    host_factory: HostFactory, autojump_clock: trio.testing.MockClock
) -> None:
    host = await host_factory([shop.Billing])
    with trio.move_on_after(24 * 3600) as day:
        async with entrypoint_waiter(host, "billing", "charge", timeout=None):
            pass
    assert day.cancelled_caught


async def test_waiter_passes_on_a_timeout_of_the_block_itself(
    host_factory: HostFactory,
) -> None:
    """The block's own trio.fail_after is not the waiter's timeout."""
    host = await host_factory([shop.Billing])

    async def too_slow_block() -> None:
        async with entrypoint_waiter(host, "billing", "charge", timeout=60):
            with trio.fail_after(0):
                await trio.sleep(1)

    with pytest.raises(trio.TooSlowError) as raised:
        await too_slow_block()
    assert type(raised.value) is trio.TooSlowError


def test_waiter_refuses_a_negative_timeout_and_a_plain_with() -> None:
    host = ServiceHost([shop.Billing])
    with pytest.raises(ValueError, match="timeout must be None or >= 0"):
        entrypoint_waiter(host, "billing", "charge", timeout=-1)
    with pytest.raises(TypeError, match="use `async with entrypoint_waiter"):
        with entrypoint_waiter(host, "billing", "charge"):
            pass


def test_wait_result_get_before_done_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not finished"):
        WaitResult().get()


async def test_a_delivery_refused_unread_ends_the_wait_with_its_cause(
    broker_uri: str, host_factory: HostFactory
) -> None:
    """A payload that does not fit the annotation: no worker runs, the wait says so."""
    host = await host_factory([shop.Billing])
    started = trio.current_time()
    waited = WaitResult()

    async def wait_for_a_bad_order() -> None:
        nonlocal waited
        async with entrypoint_waiter(host, "billing", "charge") as waited:
            async with host_factory.dispatcher() as dispatch:
                await dispatch("orders", "order_placed", {"id": "not a number"})

    with pytest.raises(DeliveryNotHandled) as raised:
        await wait_for_a_bad_order()
    error = raised.value
    assert (error.service_name, error.method_name) == ("billing", "charge")
    assert error.outcome is Outcome.UNDECODABLE
    assert "SerializationError" in str(error)
    assert isinstance(error.__cause__, SerializationError)
    assert not waited.done
    assert trio.current_time() - started < 30  # at once, not at the timeout
