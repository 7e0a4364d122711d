"""nameko's events on trio: :class:`EventDispatcher` and :func:`event_handler`.

Topology and wire format are nameko 2.14's (see ``docs/amqp.rst``): each source
service publishes to the durable topic exchange ``{service}.events`` with the event
type as routing key; each handler consumes a queue named after its handler type.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio

from ._exceptions import (
    ConfigurationError,
    EventHandlerConfigurationError,
    InvalidRequest,
    SerializationError,
    TransportError,
)
from ._extensions import DependencyProvider, Entrypoint
from ._message import ExchangeType, Properties
from ._retry import (
    ORIGINAL_ROUTING_KEY_HEADER,
    Backoff,
    attempts_so_far,
    check_combination,
    copied_headers,
    dead_letter_headers,
    dlq_name,
    retry_queue_name,
)

if TYPE_CHECKING:
    from . import abc
    from ._message import Delivery
    from ._worker import WorkerContext

__all__ = [
    "BROADCAST",
    "SERVICE_POOL",
    "SINGLETON",
    "EventDispatcher",
    "EventHandler",
    "HandlerType",
    "event_exchange_name",
    "event_handler",
]

logger = logging.getLogger("trioevents.events")


class HandlerType(enum.Enum):
    """How the instances of a cluster share each event (nameko's handler types)."""

    #: Every service type gets each event once, shared among its instances.
    SERVICE_POOL = "service_pool"
    #: One handler in the whole cluster gets each event.
    SINGLETON = "singleton"
    #: Every running handler instance gets each event.
    BROADCAST = "broadcast"


SERVICE_POOL: Final = HandlerType.SERVICE_POOL
SINGLETON: Final = HandlerType.SINGLETON
BROADCAST: Final = HandlerType.BROADCAST


def event_exchange_name(service_name: str) -> str:
    """Return the name of the exchange *service_name* dispatches its events to."""
    return f"{service_name}.events"


#: ``dispatch(event_type, event_data, **options)`` as injected into a worker.
Dispatch = Callable[..., Awaitable[None]]

#: Options a dispatch accepts, with the type each must have.
PUBLISH_OPTIONS: Final[Mapping[str, type | tuple[type, ...]]] = {
    "delivery_mode": int,
    "priority": int,
    "expiration": (str, int),
    "headers": Mapping,
    "mandatory": bool,
    "message_id": str,
    "correlation_id": str,
}


def check_publish_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check dispatch options; raise :class:`ConfigurationError` naming a bad one."""
    checked: dict[str, Any] = {}
    for key, value in options.items():
        expected = PUBLISH_OPTIONS.get(key)
        if expected is None:
            known = ", ".join(sorted(PUBLISH_OPTIONS))
            raise ConfigurationError(
                f"unknown dispatch option {key!r}; known options: {known}"
            )
        if not isinstance(value, expected) or isinstance(value, bool) != (
            expected is bool
        ):
            raise ConfigurationError(
                f"dispatch option {key!r} has the wrong type: {value!r}"
            )
        checked[key] = str(value) if key == "expiration" else value
    return checked


def build_properties(
    content_type: str,
    content_encoding: str,
    headers: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> tuple[Properties, bool]:
    """Build nameko's message properties; return them and the ``mandatory`` flag."""
    extra = options.get("headers")
    if extra:
        headers = {**(headers or {}), **extra}
    properties = Properties(
        content_type=content_type,
        content_encoding=content_encoding,
        headers=headers or None,
        delivery_mode=options.get("delivery_mode", 2),
        priority=options.get("priority", 0),
        expiration=options.get("expiration"),
        message_id=options.get("message_id"),
        correlation_id=options.get("correlation_id"),
    )
    return properties, bool(options.get("mandatory", False))


class EventDispatcher(DependencyProvider["Dispatch"]):
    """Give each worker an async ``dispatch(event_type, event_data, **options)``.

    Events go to the exchange ``{service}.events`` with *event_type* as routing
    key; ``await dispatch(...)`` returns once the broker confirmed the message.

    Parameters
    ----------
    **publish_options
        Defaults for every dispatch: ``delivery_mode``, ``priority``,
        ``expiration``, ``headers``, ``mandatory``, ``message_id``,
        ``correlation_id``. A dispatch's own options override them.

    Raises
    ------
    ConfigurationError
        An unknown option or one of the wrong type.
    """

    def __init__(self, **publish_options: Any) -> None:
        self.publish_options = check_publish_options(publish_options)

    async def declare(self, connection: abc.Connection) -> None:
        exchange = event_exchange_name(self.service_name)
        await connection.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
        logger.info("declared exchange %r", exchange)

    def get_dependency(self, worker_ctx: WorkerContext) -> Dispatch:
        runner = self._runner
        exchange = event_exchange_name(self.service_name)
        defaults = self.publish_options

        async def dispatch(event_type: str, event_data: Any, **options: Any) -> None:
            merged = {**defaults, **check_publish_options(options)}
            await runner.host._publish_event(
                exchange, event_type, event_data, merged, worker_ctx
            )

        return dispatch


class EventHandler(Entrypoint):
    """Call a service method for each event of *event_type* from *source_service*.

    Parameters
    ----------
    source_service
        The ``name`` of the service that dispatches the event.
    event_type
        The event type; also the binding key, so ``*`` and ``#`` wildcards work.
    handler_type
        :data:`SERVICE_POOL` (default), :data:`SINGLETON` or :data:`BROADCAST`.
    reliable_delivery
        Keep a durable queue that collects events while no handler runs; if
        false the queue goes away with its consumer.
    requeue_on_error
        Requeue the event when the handler raises: ``True`` for any exception,
        or a tuple of exception types to requeue only those. Otherwise the event
        is acked and the error logged (nameko's behaviour).

    Raises
    ------
    EventHandlerConfigurationError
        ``BROADCAST`` with ``reliable_delivery=True`` and the default
        :attr:`broadcast_identifier`, or an invalid option.
    """

    def __init__(
        self,
        source_service: str,
        event_type: str,
        handler_type: HandlerType | str = HandlerType.SERVICE_POOL,
        reliable_delivery: bool = True,
        requeue_on_error: bool | tuple[type[BaseException], ...] = False,
        *,
        retry: Backoff | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise EventHandlerConfigurationError(
                f"unknown event_handler option(s): {', '.join(sorted(kwargs))}"
            )
        named: tuple[tuple[str, object], ...] = (
            ("source_service", source_service),
            ("event_type", event_type),
        )
        for what, value in named:
            if not isinstance(value, str) or not value:
                raise EventHandlerConfigurationError(
                    f"{what} must be a non-empty str, not {value!r}"
                )
        try:
            self.handler_type = HandlerType(handler_type)
        except ValueError:
            raise EventHandlerConfigurationError(
                f"unknown handler_type {handler_type!r}; use SERVICE_POOL, "
                "SINGLETON or BROADCAST"
            ) from None
        requeue: object = requeue_on_error
        if not isinstance(requeue, bool) and not (
            isinstance(requeue, tuple)
            and all(
                isinstance(t, type) and issubclass(t, BaseException) for t in requeue
            )
        ):
            raise EventHandlerConfigurationError(
                "requeue_on_error must be a bool or a tuple of exception types, "
                f"not {requeue_on_error!r}"
            )
        if retry is not None and not isinstance(retry, Backoff):
            raise EventHandlerConfigurationError(
                f"retry must be a trioevents.Backoff, not {retry!r}"
            )
        check_combination(retry, requeue_on_error)
        limit: object = timeout
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0
        ):
            raise EventHandlerConfigurationError(
                f"timeout must be a positive number of seconds, not {timeout!r}"
            )
        self.retry = retry
        self.timeout = None if timeout is None else float(timeout)
        self.source_service = source_service
        self.event_type = event_type
        self.reliable_delivery = bool(reliable_delivery)
        self.requeue_on_error = requeue_on_error
        if (
            self.handler_type is HandlerType.BROADCAST
            and self.reliable_delivery
            and type(self).broadcast_identifier is EventHandler.broadcast_identifier
        ):
            raise EventHandlerConfigurationError(
                "You are using the default broadcast identifier which is not "
                "compatible with reliable delivery: override the "
                "broadcast_identifier property in a subclass of EventHandler, or "
                "pass reliable_delivery=False."
            )
        self._consumer: Any = None
        self._intake = trio.CancelScope()
        self._default_identifier = uuid.uuid4().hex

    # -- naming (nameko's, see DESIGN.md section 3)

    @property
    def broadcast_identifier(self) -> str:
        """Tell the queues of ``BROADCAST`` handler instances apart.

        By default a new uuid each time the host starts, so an instance never sees
        the events dispatched while it was down. To get those (reliable delivery),
        override this property in a subclass with something stable per instance,
        such as the host name.
        """
        return self._default_identifier

    @property
    def queue_name(self) -> str:
        """The name of the queue this handler consumes."""
        src, event_type = self.source_service, self.event_type
        if self.handler_type is HandlerType.SINGLETON:
            return f"evt-{src}-{event_type}"
        name = f"evt-{src}-{event_type}--{self.service_name}.{self.method_name}"
        if self.handler_type is HandlerType.BROADCAST:
            name = f"{name}-{self.broadcast_identifier}"
        return name

    def queue_flags(self) -> dict[str, bool]:
        """The ``durable`` / ``auto_delete`` / ``exclusive`` flags of the queue."""
        exclusive = (
            self.handler_type is HandlerType.BROADCAST and not self.reliable_delivery
        )
        return {
            "durable": True,
            "auto_delete": not self.reliable_delivery,
            "exclusive": exclusive,
        }

    # -- lifecycle

    async def setup(self) -> None:
        self._default_identifier = uuid.uuid4().hex
        identifier: object = self.broadcast_identifier
        if not isinstance(identifier, str) or not identifier:
            raise EventHandlerConfigurationError(
                f"broadcast_identifier must be a non-empty str, not {identifier!r}"
            )
        self._annotation = self._runner.payload_annotation(self.method_name)
        self._intake = trio.CancelScope()

    async def stop(self) -> None:
        self._intake.cancel()
        consumer = self._consumer
        if consumer is not None:
            await consumer.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        runner = self._runner
        connection = runner.host._connection
        exchange = event_exchange_name(self.source_service)
        queue = self.queue_name
        await connection.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
        flags = self.queue_flags()
        await connection.declare_queue(
            queue,
            durable=flags["durable"],
            auto_delete=flags["auto_delete"],
            exclusive=flags["exclusive"],
        )
        await connection.bind_queue(queue, exchange, self.event_type)
        logger.info(
            "declared queue %r, bound to %r by %r", queue, exchange, self.event_type
        )
        limiter = runner.limiter
        self._intake = trio.CancelScope()
        async with connection.open_consumer(
            queue, prefetch_count=runner.prefetch_count
        ) as consumer:
            self._consumer = consumer
            logger.info(
                "consuming %r for %s.%s", queue, self.service_name, self.method_name
            )
            in_flight = _InFlight()
            workers = runner.host._workers
            try:
                task_status.started()
                # stop() cancels the intake only: workers keep running, and a
                # delivery taken but not started goes back when we close.
                with self._intake:
                    async for delivery in consumer:
                        # receive() was this iteration's checkpoint: only wait
                        # for the limiter when every worker slot is busy.
                        try:
                            limiter.acquire_on_behalf_of_nowait(delivery)
                        except trio.WouldBlock:
                            await limiter.acquire_on_behalf_of(delivery)
                        in_flight.count += 1
                        workers.start_soon(self._handle, delivery, in_flight)
                # Stopping: keep the consumer (and so the deliveries' channel)
                # open until our in-flight workers settled their deliveries.
                await in_flight.wait_idle()
            finally:
                self._consumer = None

    async def _handle(self, delivery: Delivery, in_flight: _InFlight) -> None:
        try:
            await self._handle_delivery(delivery)
        finally:
            self._runner.limiter.release_on_behalf_of(delivery)
            in_flight.done()

    async def _handle_delivery(self, delivery: Delivery) -> None:
        runner = self._runner
        props = delivery.properties
        where = f"{self.service_name}.{self.method_name}"
        queue = self.queue_name
        attempt = attempts_so_far(props.headers, queue)
        try:
            payload = runner.decode(delivery, self._annotation)
        except SerializationError as exc:
            logger.error(
                "dead-lettering undecodable event %r from %r for %s (message id "
                "%s) to %r: %s",
                _event_type(delivery),
                self.source_service,
                where,
                props.message_id,
                dlq_name(queue),
                exc,
            )
            await self._dead_letter(delivery, exc, attempt)
            return
        ctx, _, error = await self._run_worker((payload,), props.headers)
        if error is None:
            await _settle(delivery)
            return
        exc_info = (type(error), error, error.__traceback__)
        policy = self.retry
        if policy is not None:
            delay_ms = policy.delay_ms(attempt) if policy.retries(error) else None
            if delay_ms is not None:
                logger.warning(
                    "error handling event %r from %r in %s (message id %s, call id "
                    "%s), attempt %d of %d; retrying in %s s",
                    _event_type(delivery),
                    self.source_service,
                    where,
                    props.message_id,
                    ctx.call_id,
                    attempt,
                    policy.max_attempts,
                    delay_ms / 1000,
                    exc_info=exc_info,
                )
                await self._republish(
                    delivery,
                    retry_queue_name(queue, delay_ms),
                    self._retry_arguments(delay_ms),
                    error,
                    attempt,
                )
            else:
                logger.error(
                    "error handling event %r from %r in %s (message id %s, call id "
                    "%s), attempt %d; giving up: dead-lettered to %r",
                    _event_type(delivery),
                    self.source_service,
                    where,
                    props.message_id,
                    ctx.call_id,
                    attempt,
                    dlq_name(queue),
                    exc_info=exc_info,
                )
                await self._dead_letter(delivery, error, attempt)
            return
        requeue = self.requeue_on_error is True or (
            isinstance(self.requeue_on_error, tuple)
            and isinstance(error, self.requeue_on_error)
        )
        logger.error(
            "error handling event %r from %r in %s (message id %s, call id %s)%s",
            _event_type(delivery),
            self.source_service,
            where,
            props.message_id,
            ctx.call_id,
            "; requeued" if requeue else "; acked (not requeued)",
            exc_info=exc_info,
        )
        if requeue:
            await _settle(delivery, requeue=True, reject=True)
        else:
            await _settle(delivery)

    # -- retries and dead letters (see _retry.py)

    def _retry_arguments(self, delay_ms: int) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.queue_name,
        }
        if not self.reliable_delivery:
            # the handler queue is not kept either: don't leak retry queues
            arguments["x-expires"] = delay_ms + 60_000
        return arguments

    def _dlq_arguments(self) -> dict[str, Any]:
        return {} if self.reliable_delivery else {"x-expires": 86_400_000}

    async def _dead_letter(
        self, delivery: Delivery, error: BaseException, attempt: int
    ) -> None:
        await self._republish(
            delivery, dlq_name(self.queue_name), self._dlq_arguments(), error, attempt
        )

    async def _republish(
        self,
        delivery: Delivery,
        queue: str,
        arguments: dict[str, Any],
        error: BaseException,
        attempt: int,
    ) -> None:
        """Put a copy of *delivery* in *queue*, then ack it (at-least-once).

        The copy carries the original headers plus ours; if the broker cannot
        take that (headers too large for an AMQP frame), a copy with a brief
        error, then one with the original headers alone. Only if even that is
        refused is the delivery rejected without requeue: it would fail again.
        """
        copies = [
            dead_letter_headers(delivery, error, attempt),
            dead_letter_headers(delivery, error, attempt, brief=True),
            copied_headers(delivery),
        ]
        host = self._runner.host
        try:
            await host._connection.declare_queue(
                queue, durable=True, arguments=arguments
            )
            for number, headers in enumerate(copies, 1):
                properties = attrs.evolve(
                    delivery.properties, headers=headers or None, expiration=None
                )
                try:
                    await host._publish("", queue, delivery.body, properties)
                    break
                except InvalidRequest as exc:
                    if number == len(copies):
                        raise
                    logger.warning(
                        "cannot copy event %r (message id %s) to %r with our "
                        "headers: %s; trying with fewer",
                        _event_type(delivery),
                        delivery.properties.message_id,
                        queue,
                        exc,
                    )
        except InvalidRequest as exc:
            logger.error(
                "cannot copy event %r (message id %s) to %r: %s; rejected without "
                "requeue (dead-lettered only if its queue has a dead-letter "
                "exchange)",
                _event_type(delivery),
                delivery.properties.message_id,
                queue,
                exc,
            )
            await _settle(delivery, requeue=False, reject=True)
            return
        except (TransportError, trio.ClosedResourceError) as exc:
            logger.error(
                "could not move event %r (message id %s) to %r: %s; requeued",
                _event_type(delivery),
                delivery.properties.message_id,
                queue,
                exc,
            )
            await _settle(delivery, requeue=True, reject=True)
            return
        await _settle(delivery)


class _InFlight:
    """Counts one consumer's running workers; lets it wait until none is left.

    Workers run in the host's worker nursery, not in the consumer task, so that a
    lost connection does not cancel them (their settle fails and the broker
    redelivers; their dispatches wait for the reconnect).
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle: trio.Event | None = None

    def done(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        if self.count:
            self._idle = trio.Event()
            await self._idle.wait()
        else:
            await trio.lowlevel.checkpoint()


def _event_type(delivery: Delivery) -> str:
    """The event type of *delivery*, also when it comes back from a retry queue."""
    headers = delivery.properties.headers or {}
    original = headers.get(ORIGINAL_ROUTING_KEY_HEADER)
    if isinstance(original, str) and len(original) <= 255:  # a routing key's limit
        return original
    return delivery.routing_key


async def _settle(
    delivery: Delivery, *, requeue: bool = False, reject: bool = False
) -> None:
    """Ack or reject *delivery*.

    Settling is not a cancellation point (see :class:`~trioevents.Delivery`):
    once called it settles, so a late cancel cannot leave it half done.
    """
    try:
        if reject:
            await delivery.reject(requeue=requeue)
        else:
            await delivery.ack()
    except (TransportError, trio.ClosedResourceError) as exc:
        # The connection went away: the broker redelivers the message.
        logger.warning(
            "could not settle delivery %s of %r: %s",
            delivery.delivery_tag,
            _event_type(delivery),
            exc,
        )


F = TypeVar("F", bound=Callable[..., Any])


def event_handler(
    source_service: str,
    event_type: str,
    handler_type: HandlerType | str = HandlerType.SERVICE_POOL,
    reliable_delivery: bool = True,
    requeue_on_error: bool | tuple[type[BaseException], ...] = False,
    *,
    retry: Backoff | None = None,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Declare a service method as a handler of *event_type* from *source_service*.

    nameko's decorator: ``@event_handler("orders", "order_placed")``. The method
    must be ``async def`` and take the event payload as its argument; annotate it
    with an attrs class or dataclass to get the payload structured by cattrs.

    Parameters
    ----------
    source_service
        The ``name`` of the service that dispatches the event.
    event_type
        The event type (the binding key: ``*`` and ``#`` wildcards work).
    handler_type
        How a cluster shares each event; see :ref:`handler-types`.
    reliable_delivery
        Keep events while no handler runs (a durable, non-auto-delete queue).
    requeue_on_error
        Requeue on an exception: ``True`` for any, or a tuple of exception types.
    retry
        A :class:`~trioevents.Backoff` policy: bounded retries after delays kept
        by the broker, then the dead-letter queue ``{queue}.dlq``. Excludes
        *requeue_on_error*.
    timeout
        Seconds the handler may run; past that it is cancelled and fails with
        :class:`~trioevents.HandlerTimeout` (then handled like any error).

    Raises
    ------
    EventHandlerConfigurationError
        ``BROADCAST`` with ``reliable_delivery=True`` and the default identifier,
        or an invalid option.
    """
    decorate: Callable[[F], F] = EventHandler.decorator(
        source_service,
        event_type,
        handler_type=handler_type,
        reliable_delivery=reliable_delivery,
        requeue_on_error=requeue_on_error,
        retry=retry,
        timeout=timeout,
    )
    return decorate
