"""Extensions: what a service class declares, bound to a host and run in its nursery.

As in nameko, an extension is written once on a service class and *bound* per host:
the host makes a fresh copy with the same constructor arguments, so a class served
by two hosts never shares extension state between them.

* :class:`DependencyProvider` -- an attribute whose value each worker gets injected
  (:meth:`~DependencyProvider.get_dependency`), with hooks around every worker.
* :class:`Entrypoint` -- something that starts workers, declared with its
  :meth:`~Entrypoint.decorator` on a service method.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, cast, overload

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import trio

    from . import abc
    from ._host import ServiceHost, _ServiceRunner
    from ._worker import WorkerContext

__all__ = ["DependencyProvider", "Entrypoint", "Extension", "entrypoints_of"]

F = TypeVar("F", bound="Callable[..., Any]")
T = TypeVar("T")

#: The attribute of a service method that lists its (unbound) entrypoints.
ENTRYPOINTS_ATTR = "__trioevents_entrypoints__"


class Extension:
    """Base class of everything a service class declares.

    Subclasses may override the async lifecycle hooks. The host calls
    :meth:`setup` of every extension of every service, then :meth:`start` of all,
    then serves; :meth:`stop` is called on a graceful stop.

    Attributes
    ----------
    host
        The :class:`~trioevents.ServiceHost` the extension is bound to.
    service_name
        The ``name`` of the service class it belongs to.
    """

    host: ServiceHost
    service_name: str
    _runner: _ServiceRunner
    __params: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        instance = super().__new__(cls)
        # Kept so that bind() can make a fresh copy with the same arguments.
        instance.__params = (args, kwargs)
        return instance

    def _bind(self, runner: _ServiceRunner) -> Self:
        args, kwargs = self.__params
        bound = type(self)(*args, **kwargs)
        bound._runner = runner
        bound.host = runner.host
        bound.service_name = runner.name
        return bound

    @property
    def is_bound(self) -> bool:
        """Whether this is a host's bound copy (not the class-level declaration)."""
        return hasattr(self, "_runner")

    async def setup(self) -> None:
        """Prepare before any extension starts (e.g. declare broker topology)."""

    async def start(self) -> None:
        """Start once every extension of the host is set up."""

    async def declare(self, connection: abc.Connection) -> None:
        """Declare what the extension needs on the broker.

        Called on every (re)connection, before any consumer starts.
        """

    async def stop(self) -> None:
        """Stop gracefully; called when the host is asked to stop."""

    def __repr__(self) -> str:
        where = f" of {self.service_name!r}" if self.is_bound else " (unbound)"
        return f"<{type(self).__name__}{where}>"


class DependencyProvider(Extension, Generic[T]):
    """An attribute of a service class whose value each worker gets injected.

    The type parameter is the type of the injected value, so that type checkers
    see ``self.dispatch`` in a worker as what :meth:`get_dependency` returns.

    Attributes
    ----------
    attr_name
        The name of the attribute on the service class.
    """

    attr_name: str

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object, owner: type | None = None) -> Self | T:
        # Workers get the dependency in their instance __dict__, which wins over
        # this non-data descriptor; reaching here means nothing was injected.
        if instance is None:
            return self
        raise AttributeError(
            f"{type(self).__name__} is injected into workers started by a "
            "ServiceHost; this instance has none (use trioevents.testing."
            "worker_factory to build one for a unit test)"
        )

    def _bind_attr(self, runner: _ServiceRunner, attr_name: str) -> Self:
        bound = self._bind(runner)
        bound.attr_name = attr_name
        return bound

    def get_dependency(self, worker_ctx: WorkerContext) -> T:
        """Return the value to inject into the worker's service instance.

        The default injects ``None`` (for providers that only use the hooks).
        """
        return cast("T", None)

    async def worker_setup(self, worker_ctx: WorkerContext) -> None:
        """Run before the worker's method is called."""

    async def worker_result(
        self, worker_ctx: WorkerContext, result: Any, exc: BaseException | None
    ) -> None:
        """Run once the worker's method returned *result* or raised *exc*."""

    async def worker_teardown(self, worker_ctx: WorkerContext) -> None:
        """Run last for every worker, after :meth:`worker_result`."""


class Entrypoint(Extension):
    """Something that starts workers for one service method.

    Subclasses implement :meth:`run` and are applied to methods with their
    :meth:`decorator`, as in nameko::

        class MyHandler(EventHandler): ...

        my_handler = MyHandler.decorator

    Attributes
    ----------
    method_name
        The name of the decorated service method.
    """

    method_name: str
    #: The host waits for run() to report ready (``task_status.started()``).
    needs_consumer: ClassVar[bool] = True
    #: Seconds a worker may run before it is cancelled (``HandlerTimeout``).
    timeout: float | None = None

    def _bind_method(self, runner: _ServiceRunner, method_name: str) -> Self:
        bound = self._bind(runner)
        bound.method_name = method_name
        return bound

    @overload
    @classmethod
    def decorator(cls, fn: F, /) -> F: ...

    @overload
    @classmethod
    def decorator(cls, *args: Any, **kwargs: Any) -> Callable[[F], F]: ...

    @classmethod
    def decorator(cls, *args: Any, **kwargs: Any) -> Any:
        """Make a decorator that declares this entrypoint on a service method.

        ``Entrypoint.decorator(*args, **kwargs)`` builds the entrypoint with those
        arguments (errors in them are raised here, at decoration). Used bare on a
        function, it builds it with no arguments.
        """

        def register(fn: F, args: tuple[Any, ...], kwargs: dict[str, Any]) -> F:
            entrypoint = cls(*args, **kwargs)
            registered: list[Entrypoint] = fn.__dict__.setdefault(ENTRYPOINTS_ATTR, [])
            registered.append(entrypoint)
            return fn

        if len(args) == 1 and not kwargs and isinstance(args[0], types.FunctionType):
            return register(args[0], (), {})
        cls(*args, **kwargs)  # bad arguments fail here, at decoration
        return functools.partial(register, args=args, kwargs=kwargs)

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve until cancelled or stopped; report ready with ``task_status``."""
        raise NotImplementedError

    async def spawn_worker(
        self, args: tuple[Any, ...], *, headers: Mapping[str, Any] | None = None
    ) -> tuple[Any, BaseException | None]:
        """Run the service method in a worker, with dependencies and hooks.

        Parameters
        ----------
        args
            The method's arguments.
        headers
            The message headers the worker context is read from (the
            ``nameko.*`` keys); ``None`` for a worker started from nowhere.

        Returns
        -------
        tuple
            ``(result, exception)``: an exception of the method or of a hook is
            returned, not raised, once every hook ran. Cancellation propagates.
        """
        _, result, error = await self._run_worker(args, headers)
        return result, error

    async def _run_worker(
        self, args: tuple[Any, ...], headers: Mapping[str, Any] | None
    ) -> tuple[WorkerContext, Any, BaseException | None]:
        # spawn_worker, also returning the worker's context (for its call id).
        return await self._runner.run_worker(self, args, headers)


def entrypoints_of(fn: object) -> list[Entrypoint]:
    """Return the unbound entrypoints declared on a service method."""
    value = getattr(fn, ENTRYPOINTS_ATTR, None)
    return list(value) if isinstance(value, list) else []


def is_async_method(fn: object) -> bool:
    """Tell whether *fn* is an ``async def`` function."""
    return inspect.iscoroutinefunction(fn)
