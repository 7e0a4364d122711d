"""Observers: what a host does, for metrics, tracing, logs and tests.

A host tells its observers about every dispatch and every handled delivery, and
about its state. The hooks are synchronous context managers wrapped around the
work, so that an observer can time it, open a span around it (and make it the
current one, so that a handler's own dispatches become its children), and see
how it ended::

    class Timing(Observer):
        @contextlib.contextmanager
        def handling(self, event: HandledEvent) -> Iterator[None]:
            start = time.perf_counter()
            yield
            print(event.handler, event.outcome, time.perf_counter() - start)

    host = ServiceHost([Billing], config, observers=[Timing()])

Rules for observers: hooks run in the task doing the work and must not block
(no ``await``); an exception an observer raises is logged and swallowed, never
the work's failure; :class:`DispatchedEvent.headers` may be changed in
:meth:`Observer.dispatching` before the message is sent (that is how trace
context travels).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._worker import WorkerContext

__all__ = [
    "DispatchedEvent",
    "HandledEvent",
    "HostState",
    "Observer",
    "Outcome",
    "notify_state",
    "observe",
]

logger = logging.getLogger("trioevents.observe")


class HostState(enum.Enum):
    """Where a host is in its life (:attr:`ServiceHost.state <trioevents.ServiceHost.state>`)."""

    #: Not serving (before :meth:`~trioevents.ServiceHost.serve`, or after it returned).
    STOPPED = "stopped"
    #: Making its first connection and starting its consumers.
    CONNECTING = "connecting"
    #: Every consumer subscribed, the connection up.
    SERVING = "serving"
    #: The connection was lost; connecting again.
    RECONNECTING = "reconnecting"
    #: Stopping gracefully: consumers cancelled, in-flight handlers finishing.
    STOPPING = "stopping"


class Outcome(enum.Enum):
    """What became of a handled delivery."""

    #: Handled (or failed, logged, and acked as nameko does): acked.
    ACK = "ack"
    #: The handler failed; a copy waits in a retry queue.
    RETRY = "retry"
    #: The handler failed for good; a copy is in the dead-letter queue.
    DEAD_LETTER = "dead-letter"
    #: The handler failed; the message went back to its queue (``requeue_on_error``).
    REQUEUE = "requeue"
    #: The message could not be read (its payload or properties): dead-lettered
    #: without running the handler.
    UNDECODABLE = "undecodable"
    #: The message was refused without requeue (too large to read, or no copy
    #: of it could be made).
    REJECTED = "rejected"


@final
@attrs.define(eq=False)
class DispatchedEvent:
    """One dispatch, as :meth:`Observer.dispatching` sees it.

    Attributes
    ----------
    service
        The dispatching service's name; ``None`` for ``host.dispatcher()``.
    exchange
        The source service's events exchange.
    event_type
        The event type (the routing key).
    headers
        The message's headers; an observer may add to them.
    message_id
        The ``message_id`` property, if the dispatch set one.
    worker_ctx
        The dispatching worker's context; ``None`` for ``host.dispatcher()``.
    error
        What the dispatch raised, once it ended; ``None`` if it was confirmed.
    """

    service: str | None
    exchange: str
    event_type: str
    headers: dict[str, Any]
    message_id: str | None = None
    worker_ctx: WorkerContext | None = None
    error: BaseException | None = None


@final
@attrs.define(eq=False)
class HandledEvent:
    """One delivery to an event handler, as :meth:`Observer.handling` sees it.

    Attributes
    ----------
    service, handler
        The handling service's name and ``"{service}.{method}"``.
    source_service, event_type
        Where the event came from (the event type also when it comes back
        from a retry queue).
    queue
        The queue it was consumed from (RabbitMQ's consumer group).
    headers
        The message's headers, as they came.
    message_id
        The ``message_id`` property, if any.
    redelivered
        Whether the broker delivered it before.
    attempt
        Which attempt of a handler with ``retry=`` this is (1 for the first).
    worker_ctx
        The worker's context once a worker ran (``None`` if the message could
        not be read).
    outcome
        What became of it, once settled.
    error
        What the handler raised, or why the message could not be read.
    """

    service: str
    handler: str
    source_service: str
    event_type: str
    queue: str
    headers: dict[str, Any]
    message_id: str | None
    redelivered: bool
    attempt: int
    worker_ctx: WorkerContext | None = None
    outcome: Outcome | None = None
    error: BaseException | None = None


class Observer:
    """Base class of observers: every hook does nothing; override what you need.

    Pass observers to :class:`~trioevents.ServiceHost` (``observers=[...]``) or
    add them with :meth:`~trioevents.ServiceHost.add_observer`.
    """

    @contextlib.contextmanager
    def dispatching(self, event: DispatchedEvent) -> Iterator[None]:
        """Wrap one dispatch, from before it is sent until it is confirmed.

        :attr:`DispatchedEvent.error` is set when it failed.
        """
        yield

    @contextlib.contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        """Wrap one delivery: reading it, the worker, and settling it.

        :attr:`HandledEvent.outcome` (and ``error``) are set before it exits.
        """
        yield

    def state_changed(self, state: HostState) -> None:
        """Called when the host's :class:`HostState` changes."""


def observe(
    observers: Sequence[Observer], hook: str, event: DispatchedEvent | HandledEvent
) -> contextlib.AbstractContextManager[None]:
    """Enter ``observer.<hook>(event)`` of every observer around the block.

    An observer that raises is logged and left out; it can neither fail nor
    swallow the block's own exception (or cancellation). Without observers this
    is a shared no-op context: nothing is allocated per event.
    """
    if not observers:
        return _NOTHING
    return _observed(observers, hook, event)


_NOTHING: Final = contextlib.nullcontext()


@contextlib.contextmanager
def _observed(
    observers: Sequence[Observer], hook: str, event: DispatchedEvent | HandledEvent
) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for observer in observers:
            try:
                context = getattr(observer, hook)(event)
                context.__enter__()
            except Exception:
                logger.exception("observer %r failed to start %s", observer, hook)
                continue
            stack.push(_Guard(context, observer, hook))
        yield


class _Guard:
    """Exit an observer's context; what the observer itself raises is logged."""

    def __init__(
        self,
        context: contextlib.AbstractContextManager[None],
        observer: Observer,
        hook: str,
    ) -> None:
        self._context = context
        self._observer = observer
        self._hook = hook

    def __enter__(self) -> None:  # pragma: no cover - entered by observe()
        pass

    def __exit__(self, *exc_info: Any) -> Literal[False]:
        try:
            self._context.__exit__(*exc_info)
        except BaseException as error:
            if error is not exc_info[1]:
                logger.exception(
                    "observer %r failed to end %s", self._observer, self._hook
                )
        return False  # never swallow the work's own exception


def notify_state(observers: Sequence[Observer], state: HostState) -> None:
    """Tell every observer about *state*; one that raises is logged."""
    for observer in observers:
        try:
            observer.state_changed(state)
        except Exception:
            logger.exception("observer %r failed on state %s", observer, state)
