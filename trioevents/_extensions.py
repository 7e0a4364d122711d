"""Extensions: what a service class declares, bound to a host and run in its nursery.

As in nameko, an extension is written once on a service class and *bound* per host:
the host makes a fresh copy with the same constructor arguments, so a class served
by two hosts never shares extension state between them.

* :class:`DependencyProvider` -- an attribute whose value each worker gets injected
  (:meth:`~DependencyProvider.get_dependency`), with hooks around every worker.
* :class:`Entrypoint` -- something that starts workers, declared with its
  :meth:`~Entrypoint.decorator` on a service method.

What a bound extension needs of its host is handed in, typed, never read from the
host's private attributes (the way :func:`trio.serve_listeners` takes its
``handler_nursery``):

* :class:`ServiceContext` (``self.service``), set when the extension is bound:
  the service's name, config, payload codec, publisher, worker limiter, and
  :meth:`~ServiceContext.run_worker`;
* :class:`ConnectionContext`, handed to :meth:`Entrypoint.run` for each broker
  connection: the connection and the nursery workers run in.
"""

from __future__ import annotations

import functools
import types
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    cast,
    final,
    overload,
)

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import trio

    from . import abc
    from ._codec import PayloadCodec
    from ._config import Config
    from ._observe import Observer
    from ._publisher import Publisher
    from ._worker import WorkerContext

__all__ = [
    "ConnectionContext",
    "DependencyProvider",
    "Entrypoint",
    "Extension",
    "ServiceContext",
    "WorkerHook",
    "WorkerResult",
    "entrypoints_of",
]

F = TypeVar("F", bound="Callable[..., Any]")
T = TypeVar("T")
P = ParamSpec("P")
E = TypeVar("E", bound="Entrypoint")


@final
@attrs.frozen(eq=False)
class WorkerResult:
    """What one worker did: its context, and the result or exception of the method.

    Attributes
    ----------
    worker_ctx
        The worker's :class:`~trioevents.WorkerContext`.
    result
        What the method returned (``None`` if it raised).
    exception
        What the method, or a dependency's ``worker_result`` /
        ``worker_teardown`` hook, raised; ``None`` if nothing did.
    """

    worker_ctx: WorkerContext
    result: Any
    exception: BaseException | None


class WorkerHook(Protocol):
    """``hook(worker_ctx, entrypoint, result, exc)``, called after every worker.

    See :meth:`ServiceHost.add_worker_hook <trioevents.ServiceHost.add_worker_hook>`.
    """

    def __call__(
        self,
        worker_ctx: WorkerContext,
        entrypoint: Entrypoint,
        result: Any,
        exc: BaseException | None,
        /,
    ) -> None: ...


class RunWorker(Protocol):
    """``await run_worker(entrypoint, args, headers)``: see :meth:`ServiceContext.run_worker`."""

    async def __call__(
        self,
        entrypoint: Entrypoint,
        args: tuple[Any, ...],
        headers: Mapping[str, Any] | None,
        /,
    ) -> WorkerResult: ...


@final
@attrs.frozen(eq=False)
class ServiceContext:
    """What the extensions of one service get from the host that serves it.

    Every bound extension has it as :attr:`Extension.service`. A fresh one is
    made each time the host serves.

    Attributes
    ----------
    name
        The service's ``name``.
    cls
        The service class.
    config
        The host's :class:`~trioevents.Config`.
    codec
        Encodes and decodes payloads with the host's converter and limits
        (:meth:`PayloadCodec.decode <trioevents.PayloadCodec.decode>`,
        :meth:`~trioevents.PayloadCodec.payload_annotation`).
    publisher
        The host's one publish path: ``await publisher.dispatch(...)`` /
        ``publish(...)`` return once the broker confirmed.
    limiter
        Bounds the service's concurrent workers to ``max_workers``; entrypoints
        acquire it on behalf of each delivery before starting a worker.
    observers
        The host's :class:`~trioevents.Observer` objects: an entrypoint tells
        them about each delivery it handles (:meth:`Observer.handling
        <trioevents.Observer.handling>`).
    """

    name: str
    cls: type
    config: Config
    codec: PayloadCodec
    publisher: Publisher
    limiter: trio.CapacityLimiter
    _run_worker: RunWorker = attrs.field(alias="run_worker")
    observers: Sequence[Observer] = ()

    @property
    def max_workers(self) -> int:
        """How many workers of the service may run at once (``max_workers``)."""
        return self.config.max_workers

    @property
    def prefetch_count(self) -> int:
        """How many unsettled deliveries a consumer holds (``PREFETCH_COUNT``, else ``max_workers``)."""
        return self.config.effective_prefetch_count

    async def run_worker(
        self,
        entrypoint: Entrypoint,
        args: tuple[Any, ...],
        headers: Mapping[str, Any] | None = None,
    ) -> WorkerResult:
        """Run the entrypoint's method in a new worker (see :meth:`Entrypoint.spawn_worker`)."""
        return await self._run_worker(entrypoint, args, headers)


@final
@attrs.frozen(eq=False)
class ConnectionContext:
    """What an entrypoint gets for one broker connection (:meth:`Entrypoint.run`).

    Attributes
    ----------
    connection
        The broker connection; it may die, and :meth:`Entrypoint.run` is then
        called again with the next one.
    worker_nursery
        Where workers run. It outlives the connection: a worker started from a
        delivery keeps running if the connection dies (its settle then fails and
        the broker redelivers), and a graceful stop gives it ``SHUTDOWN_GRACE``.
    """

    connection: abc.Connection
    worker_nursery: trio.Nursery


#: The attribute of a service method that lists its (unbound) entrypoints.
ENTRYPOINTS_ATTR = "__trioevents_entrypoints__"


class Extension:
    """Base class of everything a service class declares.

    Subclasses may override the async lifecycle hooks. The host calls
    :meth:`setup` of every extension of every service, then :meth:`start` of all,
    then serves; :meth:`stop` is called on a graceful stop.

    Attributes
    ----------
    service
        The :class:`ServiceContext` of the service it belongs to, in the host
        that bound it: its config (``self.service.config``), codec, publisher
        and workers.
    service_name
        The ``name`` of the service class it belongs to.
    """

    service: ServiceContext
    service_name: str
    __params: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        instance = super().__new__(cls)
        # Kept so that bind() can make a fresh copy with the same arguments.
        instance.__params = (args, kwargs)
        return instance

    def bind(self, service: ServiceContext) -> Self:
        """Return a fresh copy bound to *service* (same constructor arguments).

        The host binds each extension a service class declares every time it
        serves, so a class served by two hosts never shares extension state.
        """
        args, kwargs = self.__params
        bound = type(self)(*args, **kwargs)
        bound.service = service
        bound.service_name = service.name
        return bound

    @property
    def is_bound(self) -> bool:
        """Whether this is a host's bound copy (not the class-level declaration)."""
        return hasattr(self, "service")

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

    def bind_attr(self, service: ServiceContext, attr_name: str) -> Self:
        """Bind to *service* (see :meth:`Extension.bind`) as attribute *attr_name*."""
        bound = self.bind(service)
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
    #: Seconds a worker may run before it is cancelled (``HandlerTimeout``).
    timeout: float | None = None

    def bind_method(self, service: ServiceContext, method_name: str) -> Self:
        """Bind to *service* (see :meth:`Extension.bind`) for *method_name*."""
        bound = self.bind(service)
        bound.method_name = method_name
        return bound

    @overload
    @classmethod
    def decorator(cls: Callable[[], E], fn: F, /) -> F: ...

    @overload
    @classmethod
    def decorator(
        cls: Callable[P, E], *args: P.args, **kwargs: P.kwargs
    ) -> Callable[[F], F]: ...

    @classmethod
    def decorator(cls, *args: Any, **kwargs: Any) -> Any:
        """Make a decorator that declares this entrypoint on a service method.

        ``Entrypoint.decorator(*args, **kwargs)`` builds the entrypoint with those
        arguments (errors in them are raised here, at decoration). Used bare on a
        function, it builds it with no arguments. Type checkers check the
        arguments against the entrypoint's ``__init__``.
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

    async def run(
        self,
        context: ConnectionContext,
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Serve on one connection until cancelled or stopped.

        Called once per broker connection, after every extension declared its
        topology; report ready with ``task_status.started()``. Start workers
        with :meth:`spawn_worker`, in ``context.worker_nursery`` if they should
        outlive this call. Cancelled when the connection dies (and called again
        with the next one) and when the host stops.
        """
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
        outcome = await self.service.run_worker(self, args, headers)
        return outcome.result, outcome.exception


def entrypoints_of(fn: object) -> list[Entrypoint]:
    """Return the unbound entrypoints declared on a service method."""
    value = getattr(fn, ENTRYPOINTS_ATTR, None)
    return list(value) if isinstance(value, list) else []
