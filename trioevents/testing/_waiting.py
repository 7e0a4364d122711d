"""Wait for a worker of an entrypoint to finish: nameko's ``entrypoint_waiter``."""

from __future__ import annotations

import inspect
import math
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, final

import attrs
import trio

from .._exceptions import describe_exception
from .._extensions import entrypoints_of
from .._observe import HandledEvent, Observer, Outcome

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from types import TracebackType

    from .._extensions import Entrypoint
    from .._host import ServiceHost
    from .._worker import WorkerContext

__all__ = [
    "DeliveryNotHandled",
    "EntrypointWaiterTimeout",
    "WaitResult",
    "entrypoint_waiter",
]


@final
@attrs.define(eq=False)
class WaitResult:
    """What the awaited worker did; filled in when :class:`entrypoint_waiter` exits.

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


@final
class EntrypointWaiterTimeout(trio.TooSlowError):
    """No worker of the awaited entrypoint finished within the waiter's timeout.

    Raised by :class:`entrypoint_waiter` on leaving the block; also reachable as
    ``entrypoint_waiter.Timeout``, as in nameko. A :class:`trio.TooSlowError`, so
    code that catches trio's timeouts catches it too.

    Attributes
    ----------
    service_name, method_name
        The entrypoint waited for.
    timeout
        The timeout, in seconds.
    """

    def __init__(self, service_name: str, method_name: str, timeout: float) -> None:
        super().__init__(
            f"entrypoint_waiter: no worker of {service_name}.{method_name} "
            f"finished within {timeout:g} seconds"
        )
        self.service_name = service_name
        self.method_name = method_name
        self.timeout = timeout


@final
class DeliveryNotHandled(Exception):
    """A delivery for the awaited entrypoint was refused before any worker ran.

    Its payload or properties could not be read (it went to the dead-letter
    queue), or it was too large to read (rejected): the handler never ran, so
    no worker will finish for it. Raised by :class:`entrypoint_waiter` on
    leaving the block, at once rather than at the timeout; ``__cause__`` is the
    error that says why (usually a :class:`~trioevents.SerializationError`).

    Attributes
    ----------
    service_name, method_name
        The entrypoint waited for.
    outcome
        What became of the delivery, a :class:`~trioevents.Outcome`:
        ``UNDECODABLE`` or ``REJECTED``.
    """

    def __init__(
        self, service_name: str, method_name: str, outcome: Outcome, reason: str
    ) -> None:
        super().__init__(
            f"entrypoint_waiter: a delivery for {service_name}.{method_name} was "
            f"not handled ({outcome.value}): {reason}"
        )
        self.service_name = service_name
        self.method_name = method_name
        self.outcome = outcome


class _Refusals(Observer):
    """Notes deliveries of one handler that were refused before a worker ran."""

    def __init__(
        self, handler: str, on_refused: Callable[[HandledEvent], None]
    ) -> None:
        self._handler = handler
        self._on_refused = on_refused

    @contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        yield
        if event.handler == self._handler and event.outcome in _REFUSED:
            self._on_refused(event)


_REFUSED = (Outcome.UNDECODABLE, Outcome.REJECTED)


@final
class entrypoint_waiter:  # noqa: N801 (used like a function, as nameko's is)
    """Wait, on leaving the block, until a worker of an entrypoint has finished.

    An async context manager, nameko's ``entrypoint_waiter``. A worker counts
    once it finished completely: method, ``worker_result`` and
    ``worker_teardown`` hooks (its message is acked right after). Workers that
    finish while the block runs count too, so nothing is missed between a
    dispatch and the wait. It never sleeps::

        async with entrypoint_waiter(host, "billing", "charge") as waited:
            await dispatch("orders", "order_placed", {"id": 1, "total": "9.99"})
        assert waited.get() is None  # re-raises what the handler raised

    As in nameko, the block and the wait share a *timeout* of 30 seconds: past
    it, :class:`EntrypointWaiterTimeout` (``entrypoint_waiter.Timeout``), which
    names the service, the method and the timeout. A handler's exception does
    not escape the block: it is in :attr:`WaitResult.exception`, and
    :meth:`WaitResult.get` raises it. A delivery for the entrypoint that is
    refused before its handler runs (a payload that does not fit the handler's
    annotation, say) ends the wait at once with :class:`DeliveryNotHandled`,
    which says why.

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
    timeout
        Seconds the block and the wait may take together (nameko's default,
        30); ``None`` waits for ever.

    Raises
    ------
    ValueError
        The host has no such service, the method is not an entrypoint, or
        *timeout* is negative.
    EntrypointWaiterTimeout
        On leaving the block, when no worker finished within *timeout*.
    DeliveryNotHandled
        On leaving the block, when a delivery for the entrypoint was
        dead-lettered or rejected unread before any worker finished.
    """

    #: nameko's name for :class:`EntrypointWaiterTimeout`.
    Timeout = EntrypointWaiterTimeout

    def __init__(
        self,
        host: ServiceHost,
        service_name: str,
        method_name: str,
        *,
        callback: Callable[[WorkerContext, Any, BaseException | None], bool]
        | None = None,
        timeout: float | None = 30,
    ) -> None:
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, not {timeout!r}")
        _check_entrypoint(host, service_name, method_name)
        self._waiting = _wait_for_worker(
            host, service_name, method_name, callback, timeout
        )

    async def __aenter__(self) -> WaitResult:
        return await self._waiting.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._waiting.__aexit__(exc_type, exc, traceback)

    def __enter__(self) -> NoReturn:
        raise TypeError(
            "entrypoint_waiter is an async context manager: "
            "use `async with entrypoint_waiter(...)`"
        )

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover
        """Never reached: :meth:`__enter__` refuses."""


@asynccontextmanager
async def _wait_for_worker(
    host: ServiceHost,
    service_name: str,
    method_name: str,
    callback: Callable[[WorkerContext, Any, BaseException | None], bool] | None,
    seconds: float | None,
) -> AsyncIterator[WaitResult]:
    """The waiter's body; *seconds* bounds the block and the wait together."""
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

    def refused(event: HandledEvent) -> None:
        if finished.is_set():
            return
        error = DeliveryNotHandled(
            service_name,
            method_name,
            event.outcome or Outcome.REJECTED,
            describe_exception(event.error) if event.error else "no reason given",
        )
        error.__cause__ = event.error
        failure.append(error)
        finished.set()

    refusals = _Refusals(f"{service_name}.{method_name}", refused)
    host.add_worker_hook(hook)
    host.add_observer(refusals)
    try:
        with trio.move_on_after(math.inf if seconds is None else seconds) as deadline:
            yield waited
            await finished.wait()
    finally:
        host.remove_worker_hook(hook)
        host.remove_observer(refusals)
    if failure:
        raise failure[0]
    if deadline.cancelled_caught and not waited.done:
        assert seconds is not None  # an infinite deadline never expires
        raise EntrypointWaiterTimeout(service_name, method_name, seconds)
