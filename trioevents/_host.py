"""ServiceHost: runs services' extensions and workers inside one trio nursery.

Task structure (who owns what)::

    serve()                           the one nursery; binds the services
    ├── workers nursery               every worker, across reconnects
    └── ConnectionKeeper.run          one connection at a time, reconnecting
        ├── Publisher.run             the one publish path's tasks
        └── consumers nursery
            └── Entrypoint.run        one per entrypoint: owns its consumer

A graceful :meth:`ServiceHost.stop` cancels the consumers first, lets the
in-flight workers finish within ``SHUTDOWN_GRACE`` and ack, then cancels what is
left. Cancelling :meth:`ServiceHost.serve` stops at once: unfinished handlers are
cancelled and their messages go back to the queue, never acked.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import trio

from ._codec import PayloadCodec
from ._config import Config
from ._connecting import ConnectionKeeper
from ._events._topology import event_exchange_name
from ._exceptions import ConfigurationError
from ._extensions import ConnectionContext
from ._groups import unwrap_lone_exception
from ._http import check_http_extra, operator_app, serve_operator_http
from ._memory import MemoryTransport
from ._messagelog import WithMessageLog
from ._observe import HostState, notify_state
from ._publisher import Publisher, check_publish_options
from ._service import ServiceBinding, service_name_of
from ._uri import masked_uri, parse_broker_uri
from .amqp import AmqpTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from . import abc
    from ._extensions import DependencyProvider, WorkerHook
    from ._observe import Observer
    from ._publisher import StandaloneDispatch

__all__ = ["ServiceHost", "transport_for_uri"]

logger = logging.getLogger("trioevents.host")


def transport_for_uri(
    uri: str, config: Config | None = None, *, connection_name: str | None = None
) -> abc.Transport:
    """Return the transport for an ``AMQP_URI``.

    ``memory://NAME`` is the embedded broker of that name; ``amqp://`` and
    ``amqps://`` are RabbitMQ (:class:`~trioevents.amqp.AmqpTransport`), with
    ``HEARTBEAT``, ``AMQP_SSL`` and ``FAILOVER_STRATEGY`` taken from *config*.

    Parameters
    ----------
    uri
        The broker's URI.
    config
        The host's configuration; defaults apply when ``None``.
    connection_name
        What RabbitMQ shows for the connections (the ``connection_name``
        client property); ``None`` sends none.

    Raises
    ------
    ConfigurationError
        The URI's scheme is not supported, or the URI or ssl options are
        invalid.
    """
    parsed = parse_broker_uri(uri)
    if parsed.memory_name is not None:
        return MemoryTransport(parsed.memory_name)
    config = config if config is not None else Config()
    return AmqpTransport(
        uri,
        heartbeat=config.heartbeat,
        ssl_options=config.amqp_ssl,
        max_message_size=config.max_message_size,
        failover_strategy=config.failover_strategy,
        client_properties=(
            None if connection_name is None else {"connection_name": connection_name}
        ),
    )


def default_connection_name(service_names: Sequence[str]) -> str:
    """``trioevents:<services>@<hostname>:<pid>``: who is who in RabbitMQ's UI.

    A host of no service (a standalone dispatcher) is ``trioevents@<hostname>:<pid>``.
    """
    services = ",".join(service_names)
    who = f"trioevents:{services}" if services else "trioevents"
    return f"{who}@{socket.gethostname()}:{os.getpid()}"


@final
class _Serving:
    """The state of one :meth:`ServiceHost.serve` call."""

    def __init__(self, bindings: list[ServiceBinding], publisher: Publisher) -> None:
        self.bindings = bindings
        self.publisher = publisher
        self.stop_requested = trio.Event()
        self.stopped = trio.Event()
        #: The operator endpoint's URL once it listens (``HTTP_ADDRESS``).
        self.http_url: str | None = None


@final
class ServiceHost:
    """Run services: their event handlers, dispatchers and workers.

    Parameters
    ----------
    services
        Service classes (each with a ``name``).
    config
        nameko-style configuration: ``AMQP_URI`` (default ``memory://``, the
        embedded broker), ``max_workers``, ``PREFETCH_COUNT``, ``SHUTDOWN_GRACE``
        and the rest of :class:`~trioevents.Config`.
    transport
        A transport to use instead of the one ``AMQP_URI`` names (tests, custom
        brokers).
    observers
        :class:`~trioevents.Observer` objects told about every dispatch, every
        handled delivery and every change of :attr:`state` (metrics, tracing).
        Every host also logs each of them at DEBUG (logger
        ``trioevents.messages``).

    Examples
    --------
    ::

        host = ServiceHost([Orders, Billing], config={"AMQP_URI": "memory://"})
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            async with host.dispatcher() as dispatch:
                await dispatch("orders", "order_placed", {"id": 1})
    """

    def __init__(
        self,
        services: Sequence[type],
        config: Mapping[str, Any] | Config | None = None,
        *,
        transport: abc.Transport | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        if isinstance(services, type):
            services = [services]
        self.services = list(services)
        self.config = (
            config if isinstance(config, Config) else Config.from_mapping(config or {})
        )
        self._transport: abc.Transport | None = transport
        self._codec = PayloadCodec.from_config(self.config)
        self._serving: _Serving | None = None
        self._worker_hooks: list[WorkerHook] = []
        self._observers: list[Observer] = list(observers)
        #: What the publisher and services tell: the observers, and the
        #: per-message log while it logs.
        self._told = WithMessageLog(self._observers)
        self._state = HostState.STOPPED
        self._state_changed = trio.Event()
        #: service name -> attribute -> provider (see replace_dependency).
        self._replacements: dict[str, dict[str, DependencyProvider[Any]]] = {}

    def __repr__(self) -> str:
        names = ", ".join(getattr(s, "name", s.__qualname__) for s in self.services)
        return f"<ServiceHost [{names}] on {masked_uri(self.config.amqp_uri)}>"

    @property
    def transport(self) -> abc.Transport:
        """The transport ``AMQP_URI`` selects."""
        if self._transport is None:
            self._transport = transport_for_uri(
                self.config.amqp_uri,
                self.config,
                connection_name=self.connection_name,
            )
        return self._transport

    @property
    def connection_name(self) -> str:
        """The name RabbitMQ shows for this host's connections.

        ``CONNECTION_NAME``, else ``trioevents:<services>@<hostname>:<pid>``.
        """
        if self.config.connection_name is not None:
            return self.config.connection_name
        return default_connection_name([service_name_of(s) for s in self.services])

    @property
    def http_url(self) -> str | None:
        """The URL of the operator HTTP endpoint (``HTTP_ADDRESS``) while it listens.

        Such as ``http://0.0.0.0:9100``: ``/healthz``, ``/readyz`` and
        ``/metrics`` are under it (see :doc:`operating`). ``None`` when
        ``HTTP_ADDRESS`` is not set or the host is not serving.
        """
        serving = self._serving
        return None if serving is None else serving.http_url

    @property
    def serving(self) -> bool:
        """Whether :meth:`serve` is running (from its call until it returns)."""
        return self._serving is not None

    @property
    def state(self) -> HostState:
        """The host's :class:`~trioevents.HostState` (stopped, connecting, serving, ...).

        ``SERVING`` means every consumer is subscribed and the connection is up
        (what a readiness probe asks); see :meth:`wait_state` to await a change.
        """
        return self._state

    async def wait_state(self, *states: HostState) -> HostState:
        """Wait until :attr:`state` is one of *states*; return it.

        Returns at once if it already is. Call it in a loop (or with
        :func:`trio.move_on_after`) to follow every change.
        """
        while self._state not in states:
            await self._state_changed.wait()
        await trio.lowlevel.checkpoint()
        return self._state

    def _set_state(self, state: HostState) -> None:
        if state is self._state:
            return
        self._state = state
        self._state_changed.set()
        self._state_changed = trio.Event()
        logger.debug("state: %s", state.value)
        notify_state(self._observers, state)

    def add_observer(self, observer: Observer) -> None:
        """Tell *observer* about what the host does from now on (see :class:`Observer`)."""
        self._observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop telling an observer added with :meth:`add_observer`.

        Raises
        ------
        ValueError
            The observer was not added.
        """
        self._observers.remove(observer)

    # -- hooks for tests and tools

    def add_worker_hook(self, hook: WorkerHook) -> None:
        """Call ``hook(worker_ctx, entrypoint, result, exc)`` after every worker.

        The hook runs in the worker's task once the method and its dependencies'
        ``worker_result`` and ``worker_teardown`` hooks finished, before the
        delivery is settled. It must not block or raise.
        :func:`trioevents.testing.entrypoint_waiter` is built on it.
        """
        self._worker_hooks.append(hook)

    def remove_worker_hook(self, hook: WorkerHook) -> None:
        """Stop calling a hook added with :meth:`add_worker_hook`.

        Raises
        ------
        ValueError
            The hook was not added.
        """
        self._worker_hooks.remove(hook)

    def replace_dependency(
        self, service: str, attr_name: str, provider: DependencyProvider[Any]
    ) -> None:
        """Use *provider* instead of the dependency ``service.attr_name`` from now on.

        :func:`trioevents.testing.replace_dependencies` is built on it.

        Raises
        ------
        RuntimeError
            The host is serving: replacements apply when it starts.
        """
        if self.serving:
            raise RuntimeError(
                "dependencies must be replaced before the host starts serving"
            )
        self._replacements.setdefault(service, {})[attr_name] = provider

    def _bind(self, publisher: Publisher) -> list[ServiceBinding]:
        bindings: list[ServiceBinding] = []
        seen: dict[str, type] = {}
        for cls in self.services:
            name = service_name_of(cls)
            if name in seen:
                raise ConfigurationError(
                    f"two services named {name!r} in one host: "
                    f"{seen[name].__qualname__} and {cls.__qualname__}"
                )
            seen[name] = cls
            bindings.append(
                ServiceBinding(
                    cls,
                    config=self.config,
                    codec=self._codec,
                    publisher=publisher,
                    worker_hooks=self._worker_hooks,
                    replacements=self._replacements.get(name),
                    observers=self._told,
                )
            )
        return bindings

    # -- serving

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or stopped.

        Sets up every extension, starts them, starts one consumer per entrypoint and
        reports started (``await nursery.start(host.serve)`` returns) once every
        consumer is ready.

        Raises
        ------
        ConfigurationError
            A service or handler is misconfigured, or ``HTTP_ADDRESS`` cannot be
            served (the ``http`` extra is missing, the address is taken); raised
            before started.
        BrokerUnavailable
            No connection could be made in ``CONNECT_ATTEMPTS`` tries.
        trio.BusyResourceError
            The host is already serving.
        """
        if self._serving is not None:
            raise trio.BusyResourceError("this ServiceHost is already serving")
        if self.config.http_address is not None:
            check_http_extra()
        publisher = Publisher(self.config, self._codec, self._told)
        serving = _Serving(self._bind(publisher), publisher)
        transport = self.transport
        self._serving = serving
        self._set_state(HostState.CONNECTING)
        try:
            with unwrap_lone_exception():
                async with self._operator_endpoint(serving):
                    await self._serve(transport, serving, task_status)
        finally:
            publisher.close()
            self._serving = None
            serving.stopped.set()
            self._set_state(HostState.STOPPED)

    @asynccontextmanager
    async def _operator_endpoint(self, serving: _Serving) -> AsyncIterator[None]:
        """Serve ``HTTP_ADDRESS`` (health, readiness, metrics) around the block."""
        address = self.config.http_address
        if address is None:
            yield
            return
        app = operator_app(self, self._observers)
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            serving.http_url = await nursery.start(
                functools.partial(serve_operator_http, app, address, shutdown=shutdown)
            )
            logger.info(
                "operator endpoint on %s: /healthz, /readyz, /metrics",
                serving.http_url,
            )
            yield
            shutdown.set()

    async def _serve(
        self,
        transport: abc.Transport,
        serving: _Serving,
        task_status: trio.TaskStatus[None],
    ) -> None:
        extensions = [ext for b in serving.bindings for ext in b.extensions]
        for ext in extensions:
            await ext.setup()
        for ext in extensions:
            await ext.start()

        def connection_failed(cause: BaseException) -> None:
            serving.publisher.connection_failed(cause)
            if self._state is HostState.SERVING:
                self._set_state(HostState.RECONNECTING)

        keeper = ConnectionKeeper(
            transport, self.config, logger=logger, on_failure=connection_failed
        )
        async with trio.open_nursery() as workers:

            async def serve_connection(connection: abc.Connection) -> None:
                await self._serve_connection(
                    connection, serving, keeper, workers, task_status
                )

            await keeper.run(serve_connection, stop=serving.stop_requested)
            # Stopped gracefully: workers still running (e.g. the stop came during
            # an outage) get what is left of the grace period.
            if workers.cancel_scope.deadline == math.inf:
                grace = self.config.shutdown_grace
                workers.cancel_scope.deadline = trio.current_time() + grace
        if workers.cancel_scope.cancelled_caught:
            logger.warning(
                "the grace period ended: unfinished handlers were cancelled and "
                "their messages return to the queue"
            )
        for binding in serving.bindings:
            for dep in binding.dependencies.values():
                await dep.stop()
        logger.info("stopped")

    async def _serve_connection(
        self,
        connection: abc.Connection,
        serving: _Serving,
        keeper: ConnectionKeeper,
        workers: trio.Nursery,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Serve on one connection until stopped gracefully or the connection dies."""
        extensions = [ext for b in serving.bindings for ext in b.extensions]
        entrypoints = [ep for b in serving.bindings for ep in b.entrypoints]
        context = ConnectionContext(connection, workers)
        resumed = keeper.ever_ready
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serving.publisher.run, connection)
            for ext in extensions:
                await ext.declare(connection)
            async with trio.open_nursery() as consumers:
                for ep in entrypoints:
                    await consumers.start(ep.run, context)
                keeper.ready()
                logger.info(
                    "%s %s",
                    "resumed" if resumed else "serving",
                    ", ".join(b.name for b in serving.bindings),
                )
                self._set_state(HostState.SERVING)
                if not resumed:
                    task_status.started()
                await serving.stop_requested.wait()
                self._set_state(HostState.STOPPING)
                grace = self.config.shutdown_grace
                logger.info(
                    "stopping: consumers cancelled, finishing in-flight work "
                    "(grace %s s)",
                    grace,
                )
                deadline = trio.current_time() + grace
                consumers.cancel_scope.deadline = deadline
                workers.cancel_scope.deadline = deadline
                for ep in entrypoints:
                    await ep.stop()
            nursery.cancel_scope.cancel()

    async def stop(self) -> None:
        """Stop gracefully and wait until :meth:`serve` returned.

        Consumers stop first; in-flight handlers finish (and are acked) within
        ``SHUTDOWN_GRACE`` seconds; what is still running then is cancelled.
        Does nothing if the host is not serving.
        """
        serving = self._serving
        if serving is None:
            await trio.lowlevel.checkpoint()
            return
        serving.stop_requested.set()
        if self._state is not HostState.STOPPED:
            self._set_state(HostState.STOPPING)
        await serving.stopped.wait()

    # -- dispatching from outside any service

    @asynccontextmanager
    async def dispatcher(self) -> AsyncIterator[StandaloneDispatch]:
        """Open a dispatcher for events from outside any service.

        Works whether or not :meth:`serve` runs (nameko's standalone
        ``event_dispatcher``); the ``dispatch`` it gives may be awaited from many
        tasks at once and sends no worker-context headers::

            async with host.dispatcher() as dispatch:
                await dispatch("orders", "order_placed", {"id": 1})

        It keeps its own connection, through the same publish path as the
        workers' dispatchers: ``await dispatch(...)`` returns once the broker
        confirmed the event. A lost connection is reconnected with the host's
        backoff, for as long as the block runs; a dispatch meanwhile waits, at
        most ``PUBLISH_TIMEOUT``, then raises
        :class:`~trioevents.BrokerUnavailable`. Connection failures never escape
        the block itself.

        Raises
        ------
        BrokerUnavailable
            On entering: no connection could be made in ``CONNECT_ATTEMPTS``
            tries.
        """
        publisher = Publisher(self.config, self._codec, self._told)
        keeper = ConnectionKeeper(
            self.transport,
            self.config,
            logger=logger,
            on_failure=publisher.connection_failed,
        )

        closing = trio.Event()

        async def keep_publishing(*, task_status: trio.TaskStatus[None]) -> None:
            async def serve(connection: abc.Connection) -> None:
                first = not keeper.ever_ready
                keeper.ready()
                if first:
                    task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(publisher.run, connection)
                    await closing.wait()
                    # Leave the connection's block normally: it closes with a
                    # close handshake.
                    nursery.cancel_scope.cancel()

            await keeper.run(serve, stop=closing)

        async def dispatch(
            source_service: str, event_type: str, event_data: Any, **options: Any
        ) -> None:
            checked = check_publish_options(options)
            exchange = event_exchange_name(source_service)
            await publisher.dispatch(exchange, event_type, event_data, checked)

        try:
            with unwrap_lone_exception():
                async with trio.open_nursery() as nursery:
                    await nursery.start(keep_publishing)
                    try:
                        yield dispatch
                    finally:
                        closing.set()
        finally:
            publisher.close()
