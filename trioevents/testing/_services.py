"""Services under test: unit-test instances, swapped dependencies, started hosts."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, TypeVar, final
from unittest import mock

import attrs

from .._config import Config
from .._events import EventDispatcher
from .._extensions import DependencyProvider
from .._host import ServiceHost

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    import trio

    from .._publisher import StandaloneDispatch
    from .._worker import WorkerContext

__all__ = ["HostFactory", "replace_dependencies", "worker_factory"]

#: The service class :func:`worker_factory` makes an instance of.
T = TypeVar("T")


async def _dispatch_signature(event_type: str, event_data: Any, **options: Any) -> None:
    """The signature of the ``dispatch`` an :class:`EventDispatcher` injects."""


def _dependencies_of(cls: type) -> dict[str, DependencyProvider[Any]]:
    """Return the dependency providers declared on *cls*, by attribute name."""
    found: dict[str, DependencyProvider[Any]] = {}
    for attr in dir(cls):
        value = inspect.getattr_static(cls, attr, None)
        if isinstance(value, DependencyProvider):
            found[attr] = value
    return found


def _double_for(provider: DependencyProvider[Any]) -> Any:
    """Return a recording mock that stands in for what *provider* injects.

    The ``dispatch`` of an :class:`EventDispatcher` becomes an awaitable mock with
    its signature (``await dispatch(event_type, event_data, **options)``), so a
    call with missing arguments fails as the real one would, and
    ``assert_awaited_once_with`` works. Anything else becomes a
    :class:`unittest.mock.MagicMock`.
    """
    if isinstance(provider, EventDispatcher):
        return mock.create_autospec(_dispatch_signature)
    return mock.MagicMock(name=getattr(provider, "attr_name", None))


def _unknown(cls: type, names: Sequence[str], known: Mapping[str, object]) -> str:
    listed = ", ".join(sorted(known)) or "none"
    what = ", ".join(repr(name) for name in names)
    return (
        f"{cls.__qualname__} has no dependency provider named {what} "
        f"(its dependencies: {listed})"
    )


def worker_factory(service_cls: type[T], **dependencies: Any) -> T:
    """Make an instance of *service_cls* for a unit test, without any broker.

    Every dependency provider declared on the class (such as an
    :class:`~trioevents.EventDispatcher`) is replaced on the instance: by the
    value given for its attribute name, else by a recording mock. The injected
    ``dispatch`` of an ``EventDispatcher`` is an awaitable mock with the real
    signature; other providers get a :class:`unittest.mock.MagicMock`. This is
    nameko's ``worker_factory``::

        service = worker_factory(Orders)
        await service.on_checkout({"id": 1, "prices": ["9.99"]})
        service.dispatch.assert_awaited_once_with("order_placed", OrderPlaced(...))

    Parameters
    ----------
    service_cls
        The service class (it need not have a ``name``).
    **dependencies
        Replacement values by attribute name, e.g. ``dispatch=my_fake``.

    Returns
    -------
    T
        An instance of *service_cls*, typed as one, whose dependencies are
        attributes of the instance. No extension hooks run; the methods are
        called directly. Type checkers see a dependency as the service declares
        it (``dispatch`` as an async callable), not as a mock: to
        assert on a mock in a type-checked test, pass your own
        (``dispatch = AsyncMock()``, then ``worker_factory(Orders,
        dispatch=dispatch)``).

    Raises
    ------
    ValueError
        A keyword names no dependency provider of the class.
    """
    known = _dependencies_of(service_cls)
    unknown = [name for name in dependencies if name not in known]
    if unknown:
        raise ValueError(_unknown(service_cls, unknown, known))
    service = service_cls()
    for attr, provider in known.items():
        value = dependencies[attr] if attr in dependencies else _double_for(provider)
        setattr(service, attr, value)
    return service


@final
class _Replacement(DependencyProvider[Any]):
    """Inject one fixed value into every worker; do nothing else."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def get_dependency(self, worker_ctx: WorkerContext) -> Any:
        return self.value


def _service_of(host: ServiceHost, service: str | type | None) -> type:
    """Return the service class *service* names in *host*."""
    classes = host.services
    if service is None:
        if len(classes) != 1:
            names = ", ".join(repr(getattr(c, "name", c.__qualname__)) for c in classes)
            raise ValueError(
                f"the host serves several services ({names}): say which one, "
                'e.g. replace_dependencies((host, "billing"), "dispatch")'
            )
        return classes[0]
    for cls in classes:
        if cls is service or getattr(cls, "name", None) == service:
            return cls
    names = ", ".join(repr(getattr(c, "name", c.__qualname__)) for c in classes)
    raise ValueError(f"the host serves no service {service!r} (it serves {names})")


def replace_dependencies(
    host_or_service: ServiceHost | tuple[ServiceHost, str | type],
    *names: str,
    **replacements: Any,
) -> Any:
    """Swap dependencies of a service in a host before the host starts.

    Each named dependency provider is replaced by a recording mock (the
    ``dispatch`` of an :class:`~trioevents.EventDispatcher` by an awaitable one,
    as in :func:`worker_factory`); each keyword by the value given. The host's
    workers then get the replacement injected, and the replaced provider does
    nothing at all: an ``EventDispatcher`` replaced this way declares no exchange
    and publishes nothing. This is nameko's ``replace_dependencies``::

        host = ServiceHost([Orders, Billing], config)
        dispatch = replace_dependencies((host, "orders"), "dispatch")
        ...  # start the host, send it a checkout
        dispatch.assert_awaited_once_with("order_placed", ANY)

    Parameters
    ----------
    host_or_service
        A :class:`~trioevents.ServiceHost` that serves one service, or a
        ``(host, service)`` pair naming the service by its ``name`` or class.
    *names
        Attribute names of dependencies to replace with mocks.
    **replacements
        Attribute names of dependencies to replace with the values given.

    Returns
    -------
    object
        The mock, if one name was given; otherwise a tuple of the mocks in the
        order of *names* (empty if only keywords were given).

    Raises
    ------
    ValueError
        A name is not a dependency provider of the service, the service is not
        in the host, or the host serves several and none was named.
    RuntimeError
        The host is serving already.
    """
    if isinstance(host_or_service, tuple):
        host, service = host_or_service
    else:
        host, service = host_or_service, None
    if not isinstance(host, ServiceHost):
        raise TypeError(
            f"replace_dependencies needs a ServiceHost or a (host, service) pair, "
            f"not {host_or_service!r}"
        )
    if host.serving:
        raise RuntimeError(
            "replace_dependencies must be called before the host starts serving"
        )
    cls = _service_of(host, service)
    known = _dependencies_of(cls)
    asked = [*names, *replacements]
    unknown = [name for name in asked if name not in known]
    if unknown:
        raise ValueError(_unknown(cls, unknown, known))
    doubles = {name: _double_for(known[name]) for name in names}
    values = {**doubles, **replacements}
    service_name = getattr(cls, "name", cls.__qualname__)
    for attr, value in values.items():
        host.replace_dependency(service_name, attr, _Replacement(value))
    if len(names) == 1:
        return doubles[names[0]]
    return tuple(doubles[name] for name in names)


def _as_dict(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return dict(mapping)


@final
@attrs.define(eq=False)
class HostFactory:
    """Start hosts in a nursery; stop them all, gracefully, with :meth:`aclose`.

    The ``host_factory`` fixture of the pytest plugin gives one per test, with a
    fresh broker (see :doc:`testing`); outside pytest, build one with a nursery
    and a default config.

    Parameters
    ----------
    nursery
        Where the hosts' :meth:`~trioevents.ServiceHost.serve` tasks run.
    config
        The default config of every host it makes (``AMQP_URI`` and the rest);
        a host's own config is laid over it.

    Attributes
    ----------
    hosts
        The hosts made so far, in order.
    """

    nursery: trio.Nursery
    config: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_dict)
    hosts: list[ServiceHost] = attrs.field(factory=list, init=False)

    @property
    def uri(self) -> str:
        """The ``AMQP_URI`` hosts get by default."""
        return str(self.config.get("AMQP_URI", "memory://"))

    def make(
        self,
        services: Sequence[type] | type,
        config: Mapping[str, Any] | Config | None = None,
    ) -> ServiceHost:
        """Make a host (not started), for instance to replace its dependencies.

        A :class:`~trioevents.Config` is used as it is; a mapping is laid over
        the factory's default config.
        """
        if not isinstance(config, Config):
            config = Config.from_mapping({**self.config, **(config or {})})
        host = ServiceHost(
            [services] if isinstance(services, type) else services, config
        )
        self.hosts.append(host)
        return host

    async def start(self, host: ServiceHost) -> ServiceHost:
        """Start *host* in the nursery; return it once every consumer is ready."""
        if host not in self.hosts:
            self.hosts.append(host)
        await self.nursery.start(host.serve)
        return host

    async def __call__(
        self,
        services: Sequence[type] | type,
        config: Mapping[str, Any] | Config | None = None,
    ) -> ServiceHost:
        """Make a host of *services* and start it (see :meth:`make`)."""
        return await self.start(self.make(services, config))

    def dispatcher(self) -> AbstractAsyncContextManager[StandaloneDispatch]:
        """Open a standalone dispatcher on the factory's default broker."""
        return ServiceHost([], Config.from_mapping(self.config)).dispatcher()

    async def aclose(self) -> None:
        """Stop every host it started, gracefully, the last started first.

        Each stop lets in-flight handlers finish within the host's
        ``SHUTDOWN_GRACE``; hosts already stopped are skipped.
        """
        for host in reversed(self.hosts):
            await host.stop()
