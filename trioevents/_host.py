"""ServiceHost: runs services' extensions and workers inside one trio nursery.

Task structure (who owns what)::

    serve()                       opens the connection and the one nursery
    ├── publisher                 the only task that publishes for workers
    └── consumers nursery
        └── EventHandler.run      one per entrypoint: owns its consumer
            └── worker tasks      one per delivery, bounded by max_workers

A graceful :meth:`ServiceHost.stop` cancels the consumers first, lets the
in-flight workers finish within ``SHUTDOWN_GRACE`` and ack, then cancels what is
left. Cancelling :meth:`ServiceHost.serve` stops at once: unfinished handlers are
cancelled and their messages go back to the queue, never acked.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import typing
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, final

import attrs
import trio

from ._config import Config
from ._events import (
    build_properties,
    check_publish_options,
    event_exchange_name,
)
from ._exceptions import (
    BrokerUnavailable,
    ConfigurationError,
    ConnectionLost,
    EventHandlerConfigurationError,
    HandlerTimeout,
    RemoteProtocolError,
    TransportError,
)
from ._extensions import DependencyProvider, Entrypoint, entrypoints_of
from ._groups import leaves, unwrap_lone_exception
from ._memory import MemoryTransport
from ._message import ExchangeType
from ._serialization import (
    check_annotation,
    decode_payload,
    encode_payload,
    make_converter,
)
from ._uri import masked_uri, parse_broker_uri
from ._worker import WorkerContext
from .amqp import AmqpTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from . import abc
    from ._message import Delivery, Properties

__all__ = ["ServiceHost", "StandaloneDispatch", "transport_for_uri"]

logger = logging.getLogger("trioevents.host")


def transport_for_uri(uri: str, config: Config | None = None) -> abc.Transport:
    """Return the transport for an ``AMQP_URI``.

    ``memory://NAME`` is the embedded broker of that name; ``amqp://`` and
    ``amqps://`` are RabbitMQ (:class:`~trioevents.amqp.AmqpTransport`), with
    ``HEARTBEAT`` and ``AMQP_SSL`` taken from *config*.

    Parameters
    ----------
    uri
        The broker's URI.
    config
        The host's configuration; defaults apply when ``None``.

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
    return AmqpTransport(uri, heartbeat=config.heartbeat, ssl_options=config.amqp_ssl)


class StandaloneDispatch(Protocol):
    """``await dispatch(source_service, event_type, event_data, **options)``."""

    async def __call__(
        self, source_service: str, event_type: str, event_data: Any, **options: Any
    ) -> None: ...


@attrs.define(eq=False)
class _PublishRequest:
    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    mandatory: bool
    done: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None
    #: The dispatcher gave up waiting (PUBLISH_TIMEOUT): don't publish it late.
    abandoned: bool = False


class _Started:
    """Calls ``task_status.started()`` once, on the first successful connect."""

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self._task_status = task_status
        self.done = False

    def started(self) -> None:
        if not self.done:
            self.done = True
            self._task_status.started()


#: What a dead connection raises. A broker that broke the protocol closed the
#: connection too: we connect again rather than take the host down.
_LOST = (
    ConnectionLost,
    RemoteProtocolError,
    trio.ClosedResourceError,
    trio.BrokenResourceError,
)

#: Publishes in flight at once per connection (each waiting for its confirm).
_PUBLISHERS = 32


def _connection_failure(exc: BaseException) -> BaseException | None:
    """Return the cause if *exc* means the connection failed, else None.

    A group counts if every leaf in it is a connection failure.
    """
    found = leaves(exc)
    if found and all(isinstance(e, (*_LOST, BrokerUnavailable)) for e in found):
        return found[0]
    return None


class _ServiceRunner:
    """One service class bound to one host: its extensions and its workers."""

    def __init__(self, host: ServiceHost, cls: type) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"service class {cls.__qualname__} has no name: give it a class "
                'attribute such as name = "orders"'
            )
        self.host = host
        self.cls = cls
        self.name = name
        config = host.config
        self.max_workers = config.max_workers
        self.prefetch_count = (
            config.prefetch_count
            if config.prefetch_count is not None
            else config.max_workers
        )
        self.limiter = trio.CapacityLimiter(self.max_workers)
        self.dependencies: dict[str, DependencyProvider[Any]] = {}
        self.entrypoints: list[Entrypoint] = []
        for attr in dir(cls):
            value = inspect.getattr_static(cls, attr, None)
            if isinstance(value, DependencyProvider):
                self.dependencies[attr] = value._bind_attr(self, attr)
                continue
            declared = entrypoints_of(value)
            if not declared:
                continue
            if not inspect.iscoroutinefunction(value):
                raise ConfigurationError(
                    f"{cls.__qualname__}.{attr} is an entrypoint but not an "
                    "'async def' method"
                )
            self.entrypoints.extend(ep._bind_method(self, attr) for ep in declared)
        # trioevents.testing.replace_dependencies: swapped in before serving.
        for attr, provider in host._dependency_replacements.get(name, {}).items():
            self.dependencies[attr] = provider._bind_attr(self, attr)

    @property
    def extensions(self) -> list[DependencyProvider[Any] | Entrypoint]:
        return [*self.dependencies.values(), *self.entrypoints]

    def payload_annotation(self, method_name: str) -> Any:
        """Return the annotation of the payload parameter of *method_name*."""
        fn = getattr(self.cls, method_name)
        params = list(inspect.signature(fn).parameters.values())[1:]
        where = f"{self.cls.__qualname__}.{method_name}"
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise ConfigurationError(
                f"{where} must take the event payload as its first argument"
            )
        required = [
            p
            for p in params[1:]
            if p.default is inspect.Parameter.empty
            and p.kind
            not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if required:
            raise ConfigurationError(
                f"{where} takes more required arguments than the event payload"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise ConfigurationError(
                f"the annotations of {where} cannot be resolved: {exc}"
            ) from exc
        annotation = hints.get(params[0].name, Any)
        try:
            check_annotation(annotation, converter=self.host._converter)
        except ConfigurationError as exc:
            raise EventHandlerConfigurationError(
                f"{where}: the payload annotation cannot be structured: {exc}"
            ) from exc
        return annotation

    def decode(self, delivery: Delivery, annotation: Any) -> Any:
        """Decode a delivery's payload for a handler (raises SerializationError)."""
        props = delivery.properties
        config = self.host.config
        return decode_payload(
            delivery.body,
            props.content_type,
            props.content_encoding,
            annotation,
            converter=self.host._converter,
            max_depth=config.max_json_depth,
            max_size=config.max_message_size,
        )

    async def run_worker(
        self,
        entrypoint: Entrypoint,
        args: tuple[Any, ...],
        headers: Mapping[str, Any] | None,
    ) -> tuple[WorkerContext, Any, BaseException | None]:
        ctx = WorkerContext.from_headers(
            self.name,
            entrypoint.method_name,
            headers,
            parent_calls_tracked=self.host.config.parent_calls_tracked,
        )
        service = self.cls()
        deps = list(self.dependencies.values())
        result: Any = None
        error: BaseException | None = None
        try:
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
        for hook in self.host._worker_hooks:
            hook(ctx, entrypoint, result, error)
        return ctx, result, error


#: Called with ``(worker_ctx, entrypoint, result, exc)`` after every worker.
WorkerHook = typing.Callable[
    [WorkerContext, Entrypoint, Any, "BaseException | None"], None
]


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
    ) -> None:
        if isinstance(services, type):
            services = [services]
        self.services = list(services)
        self.config = (
            config if isinstance(config, Config) else Config.from_mapping(config or {})
        )
        self._transport: abc.Transport | None = transport
        self._converter = make_converter()
        self._serving = False
        self._runners: list[_ServiceRunner] = []
        self._connection: abc.Connection = _NOT_CONNECTED
        self._publish_send: trio.MemorySendChannel[_PublishRequest] | None = None
        self._publish_receive: trio.MemoryReceiveChannel[_PublishRequest] | None = None
        self._pending: deque[_PublishRequest] = deque()
        self._workers: trio.Nursery = _NOT_CONNECTED
        self._connected_once = False
        self._stop_requested: trio.Event | None = None
        self._stopped: trio.Event | None = None
        self._worker_hooks: list[WorkerHook] = []
        #: service name -> attribute -> provider (see replace_dependencies).
        self._dependency_replacements: dict[
            str, dict[str, DependencyProvider[Any]]
        ] = {}

    def __repr__(self) -> str:
        names = ", ".join(getattr(s, "name", s.__qualname__) for s in self.services)
        return f"<ServiceHost [{names}] on {masked_uri(self.config.amqp_uri)}>"

    @property
    def transport(self) -> abc.Transport:
        """The transport ``AMQP_URI`` selects."""
        if self._transport is None:
            self._transport = transport_for_uri(self.config.amqp_uri, self.config)
        return self._transport

    def _make_runners(self) -> list[_ServiceRunner]:
        runners: list[_ServiceRunner] = []
        seen: dict[str, type] = {}
        for cls in self.services:
            if not isinstance(cls, type):
                raise ConfigurationError(f"services must be classes, not {cls!r}")
            runner = _ServiceRunner(self, cls)
            if runner.name in seen:
                raise ConfigurationError(
                    f"two services named {runner.name!r} in one host: "
                    f"{seen[runner.name].__qualname__} and {cls.__qualname__}"
                )
            seen[runner.name] = cls
            runners.append(runner)
        return runners

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
            A service or handler is misconfigured (raised before started).
        trio.BusyResourceError
            The host is already serving.
        """
        if self._serving:
            raise trio.BusyResourceError("this ServiceHost is already serving")
        runners = self._make_runners()
        transport = self.transport
        self._serving = True
        self._runners = runners
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()
        try:
            with unwrap_lone_exception():
                await self._serve(transport, runners, task_status)
        finally:
            self._serving = False
            self._connection = _NOT_CONNECTED
            self._publish_send = self._publish_receive = None
            self._stopped.set()

    async def _serve(
        self,
        transport: abc.Transport,
        runners: list[_ServiceRunner],
        task_status: trio.TaskStatus[None],
    ) -> None:
        extensions = [ext for runner in runners for ext in runner.extensions]
        send, receive = trio.open_memory_channel[_PublishRequest](1024)
        self._publish_send, self._publish_receive = send, receive
        self._pending.clear()
        for ext in extensions:
            await ext.setup()
        for ext in extensions:
            await ext.start()
        started = _Started(task_status)
        assert self._stop_requested is not None
        async with trio.open_nursery() as workers:
            self._workers = workers
            await self._connection_loop(transport, runners, started)
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
        for runner in runners:
            for dep in runner.dependencies.values():
                await dep.stop()
        logger.info("stopped")

    async def _connection_loop(
        self,
        transport: abc.Transport,
        runners: list[_ServiceRunner],
        started: _Started,
    ) -> None:
        """Serve, reconnecting with capped exponential backoff, until stopped."""
        config = self.config
        uri = masked_uri(config.amqp_uri)
        assert self._stop_requested is not None
        failures = 0
        while True:
            try:
                await self._serve_connection(transport, runners, started)
                break
            except BaseException as exc:
                cause = _connection_failure(exc)
                if cause is None:
                    raise
                if self._stop_requested.is_set():
                    logger.warning("connection lost while stopping: %s", cause)
                    break
                failures = 1 if self._connected_once else failures + 1
                self._connected_once = False
                if not started.done and failures >= config.connect_attempts:
                    raise BrokerUnavailable(
                        f"could not connect to {uri} ({failures} attempts): {cause}"
                    ) from cause
                delay = min(
                    config.reconnect_delay * 2 ** (failures - 1),
                    config.reconnect_max_delay,
                ) * random.uniform(0.5, 1.0)
                logger.warning(
                    "%s %s: %s; reconnecting in %.1f s (attempt %d)",
                    "connection lost to"
                    if failures == 1 and started.done
                    # after a loss, the attempts to connect again fail
                    else "cannot connect to",
                    uri,
                    cause,
                    delay,
                    failures + 1,
                )
                with trio.move_on_after(delay):
                    await self._stop_requested.wait()
                if self._stop_requested.is_set():
                    break

    async def _serve_connection(
        self,
        transport: abc.Transport,
        runners: list[_ServiceRunner],
        started: _Started,
    ) -> None:
        """Serve on one connection until stopped gracefully or the connection dies."""
        extensions = [ext for runner in runners for ext in runner.extensions]
        entrypoints = [ep for runner in runners for ep in runner.entrypoints]
        assert self._stop_requested is not None
        async with transport.open_connection() as connection:
            self._connection = connection
            try:
                logger.info("connected to %s", masked_uri(self.config.amqp_uri))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._publisher, connection)
                    for ext in extensions:
                        await ext.declare(connection)
                    async with trio.open_nursery() as consumers:
                        for ep in entrypoints:
                            await consumers.start(ep.run)
                        self._connected_once = True
                        logger.info(
                            "%s %s",
                            "resumed" if started.done else "serving",
                            ", ".join(runner.name for runner in runners),
                        )
                        started.started()
                        await self._stop_requested.wait()
                        grace = self.config.shutdown_grace
                        logger.info(
                            "stopping: consumers cancelled, finishing in-flight "
                            "work (grace %s s)",
                            grace,
                        )
                        deadline = trio.current_time() + grace
                        consumers.cancel_scope.deadline = deadline
                        self._workers.cancel_scope.deadline = deadline
                        for ep in entrypoints:
                            await ep.stop()
                    nursery.cancel_scope.cancel()
            finally:
                self._connection = _NOT_CONNECTED

    async def stop(self) -> None:
        """Stop gracefully and wait until :meth:`serve` returned.

        Consumers stop first; in-flight handlers finish (and are acked) within
        ``SHUTDOWN_GRACE`` seconds; what is still running then is cancelled.
        Does nothing if the host is not serving.
        """
        if not self._serving or self._stop_requested is None or self._stopped is None:
            await trio.lowlevel.checkpoint()
            return
        self._stop_requested.set()
        await self._stopped.wait()

    # -- publishing

    def _encode(self, event_data: Any) -> tuple[bytes, str, str]:
        config = self.config
        return encode_payload(
            event_data,
            converter=self._converter,
            max_depth=config.max_json_depth,
            max_size=config.max_message_size,
        )

    async def _publisher(self, connection: abc.Connection) -> None:
        """Publish what workers queued, on *connection*, until it dies.

        ``_PUBLISHERS`` tasks take requests from the one channel, so that many
        publishes wait for their confirms at once (the broker may confirm them
        together, ``multiple=True``) while each dispatcher still waits for its
        own. A request whose publish was interrupted (the connection died, or
        this task was cancelled) goes back to the front of the line and is
        published again on the next connection: at-least-once, never a success
        reported for an unconfirmed message.
        """
        async with trio.open_nursery() as nursery:
            for _ in range(_PUBLISHERS):
                nursery.start_soon(self._publish_loop, connection)

    async def _publish_loop(self, connection: abc.Connection) -> None:
        receive = self._publish_receive
        assert receive is not None
        pending = self._pending
        while True:
            request = pending.popleft() if pending else await receive.receive()
            if request.abandoned:
                continue
            try:
                await connection.publish(
                    request.exchange,
                    request.routing_key,
                    request.body,
                    request.properties,
                    mandatory=request.mandatory,
                )
            except _LOST as exc:
                pending.appendleft(request)
                raise ConnectionLost(f"publishing failed: {exc}") from exc
            except TransportError as exc:
                request.error = exc
                request.done.set()
            except BaseException:
                pending.appendleft(request)
                raise
            else:
                request.done.set()

    async def _publish_event(
        self,
        exchange: str,
        event_type: str,
        event_data: Any,
        options: Mapping[str, Any],
        worker_ctx: WorkerContext | None,
    ) -> None:
        body, content_type, content_encoding = self._encode(event_data)
        headers = worker_ctx.dispatch_headers() if worker_ctx is not None else None
        properties, mandatory = build_properties(
            content_type, content_encoding, headers, options
        )
        await self._publish(exchange, event_type, body, properties, mandatory)

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        mandatory: bool = False,
    ) -> None:
        """Publish through the publisher task; return once the broker confirmed."""
        send = self._publish_send
        if send is None:
            raise trio.ClosedResourceError("the host is not serving")
        request = _PublishRequest(exchange, routing_key, body, properties, mandatory)
        # Cancelled before send() returned: nothing was queued. Cancelled while
        # waiting for the confirm: the publisher still publishes it (at-least-once).
        with trio.move_on_after(self.config.publish_timeout or math.inf) as scope:
            await send.send(request)
            await request.done.wait()
        if scope.cancelled_caught:
            request.abandoned = True
            raise BrokerUnavailable(
                f"the broker did not confirm the message to {exchange!r} within "
                f"PUBLISH_TIMEOUT ({self.config.publish_timeout} s)"
            )
        if request.error is not None:
            raise request.error

    @asynccontextmanager
    async def dispatcher(self) -> AsyncIterator[StandaloneDispatch]:
        """Open a connection for dispatching events from outside any service.

        Works whether or not :meth:`serve` runs (nameko's standalone
        ``event_dispatcher``); the ``dispatch`` it gives may be awaited from many
        tasks at once and sends no worker-context headers::

            async with host.dispatcher() as dispatch:
                await dispatch("orders", "order_placed", {"id": 1})
        """
        declared: set[str] = set()
        async with self.transport.open_connection() as connection:

            async def dispatch(
                source_service: str, event_type: str, event_data: Any, **options: Any
            ) -> None:
                checked = check_publish_options(options)
                exchange = event_exchange_name(source_service)
                body, content_type, content_encoding = self._encode(event_data)
                properties, mandatory = build_properties(
                    content_type, content_encoding, None, checked
                )
                if exchange not in declared:
                    await connection.declare_exchange(
                        exchange, ExchangeType.TOPIC, durable=True
                    )
                    declared.add(exchange)
                await connection.publish(
                    exchange, event_type, body, properties, mandatory=mandatory
                )

            yield dispatch


class _NotConnected:
    def __getattr__(self, name: str) -> Any:
        raise trio.ClosedResourceError("the host is not connected to a broker")


_NOT_CONNECTED: Any = _NotConnected()
