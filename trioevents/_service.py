"""A service class bound to a host: its extensions, and running its workers.

One :class:`ServiceBinding` per service class each time a host serves. It finds
the extensions the class declares (dependency providers as attributes,
entrypoints on ``async def`` methods), binds a fresh copy of each to the
service's :class:`~trioevents._extensions.ServiceContext`, and runs workers:
inject the dependencies into a fresh service instance, run their
``worker_setup`` hooks, call the method (within the entrypoint's ``timeout``),
then ``worker_result``, ``worker_teardown`` and the host's worker hooks.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import TYPE_CHECKING, Any, final

import trio

from ._exceptions import ConfigurationError, HandlerTimeout
from ._extensions import (
    DependencyProvider,
    Entrypoint,
    ServiceContext,
    WorkerResult,
    entrypoints_of,
)
from ._worker import WorkerContext

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._codec import PayloadCodec
    from ._config import Config
    from ._extensions import Extension, WorkerHook
    from ._observe import Observer
    from ._publisher import Publisher

__all__ = ["ServiceBinding", "service_name_of"]

logger = logging.getLogger("trioevents.host")


def service_name_of(cls: type) -> str:
    """Return the ``name`` of service class *cls*.

    Raises
    ------
    ConfigurationError
        *cls* is not a class, or has no non-empty ``name``.
    """
    if not isinstance(cls, type):
        raise ConfigurationError(f"services must be classes, not {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"service class {cls.__qualname__} has no name: give it a class "
            'attribute such as name = "orders"'
        )
    return name


@final
class ServiceBinding:
    """One service class bound to a host: its extensions and its workers.

    Parameters
    ----------
    cls
        The service class.
    config, codec, publisher
        The host's, handed to the extensions through their
        :class:`~trioevents._extensions.ServiceContext`.
    worker_hooks
        The host's worker hooks (a live list: hooks added later are called too).
    replacements
        Dependency providers to use instead of the class's, by attribute name
        (:func:`trioevents.testing.replace_dependencies`).
    observers
        The host's observers (a live sequence).

    Raises
    ------
    ConfigurationError
        The class has no name, or an entrypoint is not an ``async def`` method.
    """

    def __init__(
        self,
        cls: type,
        *,
        config: Config,
        codec: PayloadCodec,
        publisher: Publisher,
        worker_hooks: Sequence[WorkerHook] = (),
        replacements: Mapping[str, DependencyProvider[Any]] | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.cls = cls
        self.name = service_name_of(cls)
        self._hooks = worker_hooks
        self.context = ServiceContext(
            name=self.name,
            cls=cls,
            config=config,
            codec=codec,
            publisher=publisher,
            limiter=trio.CapacityLimiter(config.max_workers),
            run_worker=self.run_worker,
            observers=observers,
        )
        self.dependencies: dict[str, DependencyProvider[Any]] = {}
        self.entrypoints: list[Entrypoint] = []
        for attr in dir(cls):
            value = inspect.getattr_static(cls, attr, None)
            if isinstance(value, DependencyProvider):
                self.dependencies[attr] = value.bind_attr(self.context, attr)
                continue
            declared = entrypoints_of(value)
            if not declared:
                continue
            if not inspect.iscoroutinefunction(value):
                raise ConfigurationError(
                    f"{cls.__qualname__}.{attr} is an entrypoint but not an "
                    "'async def' method"
                )
            for entrypoint in declared:
                _check_run_signature(type(entrypoint))
            self.entrypoints.extend(
                ep.bind_method(self.context, attr) for ep in declared
            )
        for attr, provider in (replacements or {}).items():
            self.dependencies[attr] = provider.bind_attr(self.context, attr)

    @property
    def extensions(self) -> list[Extension]:
        """The bound dependency providers, then the bound entrypoints."""
        return [*self.dependencies.values(), *self.entrypoints]

    async def run_worker(
        self,
        entrypoint: Entrypoint,
        args: tuple[Any, ...],
        headers: Mapping[str, Any] | None,
    ) -> WorkerResult:
        """Run *entrypoint*'s method in a new worker; see the module docstring.

        An exception of the method or of a hook is returned, not raised;
        cancellation propagates.
        """
        ctx = WorkerContext.from_headers(
            self.name,
            entrypoint.method_name,
            headers,
            parent_calls_tracked=self.context.config.parent_calls_tracked,
        )
        deps = list(self.dependencies.values())
        result: Any = None
        error: BaseException | None = None
        try:
            service = self.cls()
            for dep in deps:
                setattr(service, dep.attr_name, dep.get_dependency(ctx))
            for dep in deps:
                await dep.worker_setup(ctx)
            method = getattr(service, entrypoint.method_name)
            if entrypoint.timeout is None:
                result = await method(*args)
            else:
                with trio.move_on_after(entrypoint.timeout) as scope:
                    result = await method(*args)
                if scope.cancelled_caught:
                    raise HandlerTimeout(
                        f"{self.name}.{entrypoint.method_name} did not finish within "
                        f"its timeout of {entrypoint.timeout} s"
                    )
        except Exception as exc:
            error = exc
        except trio.Cancelled as exc:
            if trio.current_effective_deadline() == -math.inf:
                raise  # our own cancellation (stop, or the connection's scope)
            # A Cancelled from a scope that is not ours, re-raised by the
            # handler: no scope of ours would catch it; it is the handler's bug.
            error = RuntimeError(
                f"{self.name}.{entrypoint.method_name} raised trio.Cancelled "
                "without being cancelled (a Cancelled caught in one cancel scope "
                "and raised outside it)"
            )
            error.__cause__ = exc
        for dep in deps:
            try:
                await dep.worker_result(ctx, result, error)
            except Exception as exc:
                logger.exception("worker_result of %r failed", dep)
                error = error or exc
        for dep in deps:
            try:
                await dep.worker_teardown(ctx)
            except Exception as exc:
                logger.exception("worker_teardown of %r failed", dep)
                error = error or exc
        for hook in list(self._hooks):
            hook(ctx, entrypoint, result, error)
        return WorkerResult(ctx, result, error)


def _check_run_signature(cls: type[Entrypoint]) -> None:
    """Refuse an entrypoint whose ``run`` does not take the connection context."""
    try:
        inspect.signature(cls.run).bind(None, None, task_status=None)
    except TypeError:
        raise ConfigurationError(
            f"{cls.__qualname__}.run must take the connection context: "
            "async def run(self, context: trioevents.ConnectionContext, *, "
            "task_status) (see Entrypoint.run)"
        ) from None
