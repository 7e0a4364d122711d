"""Wait for a worker of an entrypoint to finish: nameko's ``entrypoint_waiter``."""

from __future__ import annotations

import inspect
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from .._extensions import entrypoints_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from .._extensions import Entrypoint
    from .._host import ServiceHost
    from .._worker import WorkerContext

__all__ = ["WaitResult", "entrypoint_waiter"]


@final
@attrs.define(eq=False)
class WaitResult:
    """What the awaited worker did; filled in when :func:`entrypoint_waiter` exits.

    Attributes
    ----------
    worker_ctx
        The worker's :class:`~trioevents.WorkerContext` (``None`` until done).
    result
        What the entrypoint's method returned (``None`` if it raised).
    exception
        What the method, or one of its dependencies' hooks, raised, else ``None``.
    """

    worker_ctx: WorkerContext | None = None
    result: Any = None
    exception: BaseException | None = None
    _done: bool = attrs.field(default=False, init=False)

    @property
    def done(self) -> bool:
        """Whether the awaited worker finished."""
        return self._done

    def get(self) -> Any:
        """Return the worker's result, or raise its exception (nameko's ``get``).

        Raises
        ------
        RuntimeError
            The worker has not finished yet.
        """
        if not self._done:
            raise RuntimeError("the awaited worker has not finished yet")
        if self.exception is not None:
            raise self.exception
        return self.result


def _check_entrypoint(host: ServiceHost, service_name: str, method_name: str) -> None:
    names = []
    for cls in host.services:
        name = getattr(cls, "name", None)
        names.append(repr(name))
        if name != service_name:
            continue
        method = inspect.getattr_static(cls, method_name, None)
        if entrypoints_of(method):
            return
        raise ValueError(
            f"service {service_name!r} has no entrypoint {method_name!r} "
            "(a method decorated with event_handler or another entrypoint)"
        )
    raise ValueError(
        f"the host serves no service {service_name!r} (it serves {', '.join(names)})"
    )


@asynccontextmanager
async def entrypoint_waiter(
    host: ServiceHost,
    service_name: str,
    method_name: str,
    *,
    callback: Callable[[WorkerContext, Any, BaseException | None], bool] | None = None,
) -> AsyncIterator[WaitResult]:
    """Wait, on leaving the block, until a worker of an entrypoint has finished.

    A worker counts once it finished completely: method, ``worker_result`` and
    ``worker_teardown`` hooks (its message is acked right after). Workers that
    finish while the block runs count too, so nothing is missed between a
    dispatch and the wait. There is no sleeping and no timeout: wrap the block in
    :func:`trio.fail_after` to bound the wait::

        with trio.fail_after(5):
            async with entrypoint_waiter(host, "billing", "charge") as waited:
                await dispatch("orders", "order_placed", {"id": 1, "total": "9.99"})
        assert waited.get() is None  # re-raises what the handler raised

    A handler's exception does not escape the block: it is in
    :attr:`WaitResult.exception`, and :meth:`WaitResult.get` raises it.

    Parameters
    ----------
    host
        The host running the service (it may start while the block runs).
    service_name, method_name
        The service's ``name`` and the method decorated as an entrypoint.
    callback
        ``callback(worker_ctx, result, exc)``, called for each finished worker
        of the entrypoint until it returns true; the wait ends with that worker.
        Use it to wait for a particular call. Whatever it raises is raised when
        the block exits.

    Yields
    ------
    WaitResult
        Filled in with the awaited worker's context, result and exception.

    Raises
    ------
    ValueError
        The host has no such service, or the method is not an entrypoint.
    """
    _check_entrypoint(host, service_name, method_name)
    waited = WaitResult()
    finished = trio.Event()
    failure: list[BaseException] = []

    def hook(
        worker_ctx: WorkerContext,
        entrypoint: Entrypoint,
        result: Any,
        exc: BaseException | None,
    ) -> None:
        if finished.is_set():
            return
        if (entrypoint.service_name, entrypoint.method_name) != (
            service_name,
            method_name,
        ):
            return
        if callback is not None:
            # Runs in the worker's task: never let the test's callback fail it.
            try:
                wanted = callback(worker_ctx, result, exc)
            except Exception as error:
                failure.append(error)
                finished.set()
                return
            if not wanted:
                return
        waited.worker_ctx = worker_ctx
        waited.result = result
        waited.exception = exc
        waited._done = True
        finished.set()

    host.add_worker_hook(hook)
    try:
        yield waited
        await finished.wait()
    finally:
        host.remove_worker_hook(hook)
    if failure:
        raise failure[0]
