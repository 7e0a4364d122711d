"""nameko's :class:`EventHandler` and :func:`event_handler`, on trio.

Each handler consumes its queue (see :mod:`._topology`) on every connection the
host makes, starts a worker per delivery in the host's worker nursery (at most
``max_workers`` per service at once), and once the worker finished asks the
failure policy (:mod:`._failure`) what to do with the delivery, which
:mod:`._outcome` carries out.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import trio

from .._connecting import LOST
from .._contexts import in_context
from .._exceptions import (
    ChannelClosedByBroker,
    ConsumerCancelled,
    EventHandlerConfigurationError,
    PreconditionFailed,
    ResourceLocked,
    SerializationError,
)
from .._extensions import Entrypoint
from .._observe import HandledEvent, Outcome, observe
from ._failure import decide
from ._outcome import HandlerSite, carry_out, event_type_of
from ._retry import Backoff, attempts_so_far, check_combination
from ._topology import (
    QUORUM_NEEDS_RELIABLE_DELIVERY,
    HandlerType,
    QueueSpec,
    QueueType,
    declare_event_exchange,
    explain_refused_declare,
    handler_queue,
    handler_topology,
)

if TYPE_CHECKING:
    from .. import abc
    from .._config import Config
    from .._extensions import ConnectionContext
    from .._message import Delivery
    from .._worker import WorkerContext

__all__ = ["EventHandler", "event_handler"]

logger = logging.getLogger("trioevents.events")

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")


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
    retry
        A :class:`~trioevents.Backoff` policy: bounded retries after delays kept
        by the broker, then the dead-letter queue ``{queue}.dlq``. Excludes
        *requeue_on_error*.
    timeout
        Seconds the handler may run; past that it is cancelled and fails with
        :class:`~trioevents.HandlerTimeout` (then handled like any error).
    queue_type
        ``"classic"`` or ``"quorum"`` (or a :class:`~trioevents.QueueType`): the
        type of the handler's queue and of its retry and dead-letter queues.
        ``None`` (default) follows the config's ``QUEUE_TYPE`` for a reliable
        handler; a handler without *reliable_delivery* is always classic. See
        :doc:`cluster`.

    Raises
    ------
    EventHandlerConfigurationError
        ``BROADCAST`` with ``reliable_delivery=True`` and the default
        :attr:`broadcast_identifier`, ``queue_type="quorum"`` without
        *reliable_delivery*, or an invalid option.
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
        queue_type: QueueType | str | None = None,
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
        self.queue_type = _checked_queue_type(queue_type, self.reliable_delivery)
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
        self._consumer: abc.Consumer | None = None
        self._stopping = trio.Event()
        self._received = False
        self._default_identifier = uuid.uuid4().hex
        self._annotation: Any = Any

    # -- naming (nameko's, see ._topology)

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
    def queue(self) -> QueueSpec:
        """The queue this handler consumes: name, flags and arguments."""
        return self._queue_of(self.effective_queue_type)

    @property
    def effective_queue_type(self) -> QueueType:
        """The type of the handler's queues, from its ``queue_type`` or the config.

        Without ``queue_type``, the config's ``QUEUE_TYPE``; a handler without
        ``reliable_delivery`` is always classic.
        """
        if self.queue_type is not None:
            return self.queue_type
        if not self.reliable_delivery:
            return QueueType.CLASSIC
        return QueueType(self.service.config.queue_type)

    def _queue_of(self, queue_type: QueueType) -> QueueSpec:
        return handler_queue(
            self.source_service,
            self.event_type,
            self.handler_type,
            self.service_name,
            self.method_name,
            reliable_delivery=self.reliable_delivery,
            broadcast_identifier=self.broadcast_identifier,
            queue_type=queue_type,
            delivery_limit=self.service.config.quorum_delivery_limit,
        )

    @property
    def queue_name(self) -> str:
        """The name of the queue this handler consumes."""
        return self.queue.name

    def queue_flags(self) -> dict[str, bool]:
        """The ``durable`` / ``auto_delete`` / ``exclusive`` flags of the queue."""
        queue = self.queue
        return {
            "durable": queue.durable,
            "auto_delete": queue.auto_delete,
            "exclusive": queue.exclusive,
        }

    # -- lifecycle

    async def setup(self) -> None:
        self._default_identifier = uuid.uuid4().hex
        identifier: object = self.broadcast_identifier
        if not isinstance(identifier, str) or not identifier:
            raise EventHandlerConfigurationError(
                f"broadcast_identifier must be a non-empty str, not {identifier!r}"
            )
        self._annotation = self.service.codec.payload_annotation(
            self.service.cls, self.method_name
        )
        self._stopping = trio.Event()

    async def stop(self) -> None:
        self._stopping.set()
        consumer = self._consumer
        if consumer is not None:
            await consumer.cancel()

    async def run(
        self, context: ConnectionContext, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Declare the queue, consume it, and start a worker per delivery.

        Recovers by itself, with backoff, from what the broker does to one
        consumer while the connection lives: a queue deleted under it (the
        broker cancels the consumer: declared again and consumed again), a
        channel the broker closes (e.g. RabbitMQ's ``consumer_timeout``), and an
        exclusive queue still held by an earlier connection the broker has not
        noticed is dead (``RESOURCE_LOCKED``).
        """
        config = self.service.config
        failures = 0
        started = False
        while not self._stopping.is_set():
            try:
                queue = await self._declare(context.connection)
            except ResourceLocked as exc:
                if not self._new_exclusive_queue(exc):
                    failures += 1
                    await self._back_off(failures, config)
                continue
            if started:
                ready = None
            else:
                ready = task_status.started
                started = True
            self._received = False
            try:
                await self._consume(context, queue, ready)
            except ConsumerCancelled as exc:
                logger.warning(
                    "%s: the broker cancelled the consumer of %r (%s); declaring "
                    "the queue again and consuming it again",
                    self._where,
                    queue.name,
                    exc,
                )
            except ChannelClosedByBroker as exc:
                logger.error(
                    "%s: the broker closed the channel consuming %r: %s; consuming "
                    "it again%s",
                    self._where,
                    queue.name,
                    exc,
                    _consumer_timeout_advice(exc),
                )
            else:
                return  # stopped
            failures = 1 if self._received else failures + 1
            await self._back_off(failures, config)

    @property
    def _where(self) -> str:
        return f"{self.service_name}.{self.method_name}"

    async def _declare(self, connection: abc.Connection) -> QueueSpec:
        """Declare the exchange and the queue, and bind it.

        A quorum queue's dead-letter and retry queues are declared with it (see
        :func:`~._topology.handler_topology`); a classic queue's when first needed.

        Raises
        ------
        EventHandlerConfigurationError
            A queue exists as the other type (or with another delivery limit),
            with what to do about it.
        """
        queue = self.queue
        exchange = await declare_event_exchange(connection, self.source_service)
        queues = handler_topology(queue, _retry_delays_ms(self.retry))
        if queue.queue_type is QueueType.CLASSIC:
            queues = queues[:1]
        for index, spec in enumerate(queues):
            try:
                await spec.declare(connection)
            except PreconditionFailed as exc:
                problem = await explain_refused_declare(
                    connection, spec, self._twin(spec, index), exc, handler=queue.name
                )
                if problem is None:
                    raise
                raise EventHandlerConfigurationError(
                    f"{self._where}: {problem}"
                ) from exc
        await connection.bind_queue(queue.name, exchange, self.event_type)
        logger.info(
            "declared queue %r, bound to %r by %r",
            queue.name,
            exchange,
            self.event_type,
        )
        return queue

    def _twin(self, spec: QueueSpec, index: int) -> QueueSpec | None:
        """*spec*, the *index*-th queue declared, as the other queue type has it.

        ``None`` for a handler without reliable delivery: it has one type only.
        """
        if not self.reliable_delivery:
            return None
        other = (
            QueueType.QUORUM
            if spec.queue_type is QueueType.CLASSIC
            else QueueType.CLASSIC
        )
        twins = handler_topology(self._queue_of(other), _retry_delays_ms(self.retry))
        return twins[index]

    def _new_exclusive_queue(self, exc: ResourceLocked) -> bool:
        """Handle RESOURCE_LOCKED on our exclusive queue; return whether to retry now.

        The broker still holds an earlier connection of ours that we gave up
        on (it has not missed enough heartbeats yet). With the default
        identifier the queue name is ours to change: take a new one. An
        identifier of the user's own names the same queue again: wait until the
        broker drops the old connection.
        """
        old = self.queue_name
        if type(self).broadcast_identifier is EventHandler.broadcast_identifier:
            self._default_identifier = uuid.uuid4().hex
            logger.warning(
                "%s: queue %r is still held by an earlier connection (%s); "
                "consuming a new broadcast queue %r instead",
                self._where,
                old,
                exc,
                self.queue_name,
            )
            return True
        logger.warning(
            "%s: queue %r is still held by an earlier connection (%s); waiting "
            "for the broker to drop it",
            self._where,
            old,
            exc,
        )
        return False

    async def _back_off(self, failures: int, config: Config) -> None:
        delay = min(
            config.reconnect_delay * 2 ** (failures - 1), config.reconnect_max_delay
        )
        with trio.move_on_after(delay):
            await self._stopping.wait()

    async def _consume(
        self,
        context: ConnectionContext,
        queue: QueueSpec,
        ready: Callable[[], object] | None,
    ) -> None:
        """Consume *queue* until stopped (``_received`` tells if anything came).

        A pool of ``max_workers`` workers takes the deliveries straight from the
        consumer, one at a time each: no task per delivery and no hand-off.
        The workers run in the host's worker nursery, so that a lost connection
        does not cancel a handler (its settle then fails and the broker
        redelivers). Raises what ends consuming otherwise (e.g.
        ConsumerCancelled): once the workers that can still settle have
        finished, or at once when the consumer's channel is gone.
        """
        connection = context.connection
        service = self.service
        site = HandlerSite(
            source_service=self.source_service,
            where=self._where,
            queue=queue,
            retry=self.retry,
            connection=connection,
            publisher=service.publisher,
        )
        async with connection.open_consumer(
            queue.name, prefetch_count=service.prefetch_count
        ) as consumer:
            self._consumer = consumer
            logger.info("consuming %r for %s", queue.name, self._where)
            pool = _Pool(service.max_workers)
            try:
                for _ in range(pool.size):
                    context.worker_nursery.start_soon(self._work, site, consumer, pool)
                if ready is not None:
                    ready()
                if self._stopping.is_set():
                    await consumer.cancel()
                # Stopping (the consumer cancelled) or a broker cancel: the
                # channel stays open until our workers settled on it.
                await pool.wait()
            finally:
                self._consumer = None
            if pool.error is not None:
                raise pool.error

    async def _work(
        self, site: HandlerSite, consumer: abc.Consumer, pool: _Pool
    ) -> None:
        """One worker of the pool: receive, handle, settle; again until it ends.

        Each delivery is handled in a fresh copy of the worker's starting
        :mod:`contextvars` context, as if it had a task of its own: what one
        handler sets is never seen by the next.
        """
        limiter = self.service.limiter
        pristine = contextvars.copy_context()
        try:
            while True:
                try:
                    delivery = await consumer.receive()
                except trio.EndOfChannel:
                    return  # the consumer was cancelled: stopping
                except (ConsumerCancelled, ChannelClosedByBroker, *LOST) as exc:
                    pool.fail(exc)
                    return
                self._received = True
                try:
                    limiter.acquire_on_behalf_of_nowait(delivery)
                except trio.WouldBlock:
                    await limiter.acquire_on_behalf_of(delivery)
                try:
                    await in_context(
                        pristine.copy(), self._handle_delivery(site, delivery)
                    )
                except Exception:
                    # A bug of ours, not the handler's (those are settled):
                    # the delivery goes back with the consumer; the pool lives.
                    logger.exception(
                        "%s: internal error handling delivery %s",
                        self._where,
                        delivery.delivery_tag,
                    )
                finally:
                    limiter.release_on_behalf_of(delivery)
        finally:
            pool.exited()

    async def _handle_delivery(self, site: HandlerSite, delivery: Delivery) -> None:
        props = delivery.properties
        attempt = attempts_so_far(props.headers, site.queue.name)
        observers = self.service.observers
        if not observers:
            await self._handle_unobserved(site, delivery, attempt)
            return
        event = HandledEvent(
            service=self.service_name,
            handler=site.where,
            source_service=self.source_service,
            event_type=event_type_of(delivery),
            queue=site.queue.name,
            headers=dict(props.headers or {}),
            message_id=props.message_id,
            redelivered=delivery.redelivered,
            attempt=attempt,
        )
        with observe(observers, "handling", event):
            (
                event.outcome,
                event.error,
                event.worker_ctx,
            ) = await self._handle_unobserved(site, delivery, attempt)

    async def _handle_unobserved(
        self, site: HandlerSite, delivery: Delivery, attempt: int
    ) -> tuple[Outcome, BaseException | None, WorkerContext | None]:
        """Read the delivery, run the worker, settle; say how it went."""
        defect = delivery.defect
        if defect is not None:
            unreadable = SerializationError(defect.reason)
            decision = decide(
                unreadable, undecodable=True, body_dropped=defect.body_dropped
            )
            outcome = await carry_out(
                decision,
                delivery,
                site,
                error=unreadable,
                attempt=attempt,
                call_id=None,
            )
            return outcome, unreadable, None
        try:
            payload = self.service.codec.decode(delivery, self._annotation)
        except SerializationError as exc:
            outcome = await carry_out(
                decide(exc, undecodable=True),
                delivery,
                site,
                error=exc,
                attempt=attempt,
                call_id=None,
            )
            return outcome, exc, None
        worker = await self.service.run_worker(
            self, (payload,), delivery.properties.headers
        )
        decision = decide(
            worker.exception,
            attempt=attempt,
            retry=self.retry,
            requeue_on_error=self.requeue_on_error,
        )
        outcome = await carry_out(
            decision,
            delivery,
            site,
            error=worker.exception,
            attempt=attempt,
            call_id=worker.worker_ctx.call_id,
        )
        return outcome, worker.exception, worker.worker_ctx


def _retry_delays_ms(retry: Backoff | None) -> list[int]:
    """The delays of *retry*, in milliseconds: one retry queue each."""
    if retry is None:
        return []
    delays = (retry.delay_ms(attempt) for attempt in range(1, retry.max_attempts))
    return [delay for delay in delays if delay is not None]


def _checked_queue_type(
    queue_type: QueueType | str | None, reliable_delivery: bool
) -> QueueType | None:
    """Return *queue_type* as a :class:`QueueType`; refuse what cannot be."""
    if queue_type is None:
        return None
    try:
        checked = QueueType(queue_type)
    except ValueError:
        raise EventHandlerConfigurationError(
            f"unknown queue_type {queue_type!r}; use 'classic' or 'quorum'"
        ) from None
    if checked is QueueType.QUORUM and not reliable_delivery:
        raise EventHandlerConfigurationError(QUORUM_NEEDS_RELIABLE_DELIVERY)
    return checked


def _consumer_timeout_advice(exc: ChannelClosedByBroker) -> str:
    """Say what to change when RabbitMQ's ``consumer_timeout`` closed the channel."""
    if exc.reply_code == 406 and "acknowledgement" in exc.reply_text:
        return (
            " (a delivery stayed unacked longer than RabbitMQ's consumer_timeout, "
            "30 min by default: a handler ran too long. Give the handler a "
            "timeout= shorter than consumer_timeout, or raise consumer_timeout in "
            "the broker's configuration; its message is redelivered)"
        )
    return ""


class _Pool:
    """The workers of one consumer: how many are left, and why consuming ended."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.live = size
        self.error: BaseException | None = None
        self._done = trio.Event()

    def fail(self, error: BaseException) -> None:
        """A worker's receive failed: remember the first reason.

        A broker cancel leaves the channel open, so the pool ends once every
        worker settled its delivery; a closed channel or connection ends it at
        once (what the others hold can no longer be settled anyway).
        """
        if self.error is None:
            self.error = error
        if not isinstance(error, ConsumerCancelled):
            self._done.set()

    def exited(self) -> None:
        self.live -= 1
        if self.live == 0:
            self._done.set()

    async def wait(self) -> None:
        await self._done.wait()


def _with_signature_of(
    cls: Callable[P, Any],
) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Give the decorated function *cls*'s parameters, for type checkers and docs."""

    def apply(fn: Callable[..., R]) -> Callable[P, R]:
        signature = inspect.signature(cls)
        fn.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation=inspect.signature(fn).return_annotation
        )
        return fn

    return apply


@_with_signature_of(EventHandler)
def event_handler(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Declare a service method as a handler of *event_type* from *source_service*.

    nameko's decorator: ``@event_handler("orders", "order_placed")``. The method
    must be ``async def`` and take the event payload as its argument; annotate it
    with an attrs class or dataclass to get the payload structured by cattrs. It
    takes the parameters of :class:`EventHandler` (``handler_type``,
    ``reliable_delivery``, ``requeue_on_error``, ``retry``, ``timeout``,
    ``queue_type``), which describes each, and is ``EventHandler.decorator``.

    Raises
    ------
    EventHandlerConfigurationError
        ``BROADCAST`` with ``reliable_delivery=True`` and the default identifier,
        ``queue_type="quorum"`` without ``reliable_delivery``, or an invalid
        option.
    """
    decorate: Callable[[F], F] = EventHandler.decorator(*args, **kwargs)
    return decorate
