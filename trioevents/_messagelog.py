"""One log line per dispatched and per handled event, at DEBUG: every host has it.

Logger ``trioevents.messages``; turn it on with ``--log-level DEBUG`` or, alone,
``logging.getLogger("trioevents.messages").setLevel(logging.DEBUG)``::

    dispatched orders.order_placed from orders: confirmed in 1.4 ms (message_id=None, call_id=orders.on_checkout.6f0e...)
    handled orders.order_placed by billing.charge: ack in 2.1 ms (message_id=None, call_id=billing.charge.41c2..., attempt=1)

Off, it costs one :meth:`logging.Logger.isEnabledFor` per event: the host hands
its publisher and services :class:`WithMessageLog`, a view of its observers that
holds the log only while DEBUG is on, so a host without observers of its own
takes the path without observers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, TypeVar, final, overload

from ._observe import DispatchedEvent, HandledEvent, Observer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, MutableSequence
    from contextlib import AbstractContextManager

__all__ = ["MessageLog", "WithMessageLog"]

logger = logging.getLogger("trioevents.messages")

E = TypeVar("E", DispatchedEvent, HandledEvent)


#: What the hooks return while DEBUG is off: nothing to time, nothing to log.
_QUIET: Final = contextlib.nullcontext()


@final
class MessageLog(Observer):
    """Log each dispatch and each handled delivery at DEBUG (``trioevents.messages``)."""

    # Any context manager will do (the seam asks for no more): while DEBUG is
    # off, a shared no-op one, the cheapest there is.
    def dispatching(  # type: ignore[override]
        self, event: DispatchedEvent
    ) -> AbstractContextManager[None]:
        if not logger.isEnabledFor(logging.DEBUG):
            return _QUIET
        return _timed(_log_dispatched, event)

    def handling(  # type: ignore[override]
        self, event: HandledEvent
    ) -> AbstractContextManager[None]:
        if not logger.isEnabledFor(logging.DEBUG):
            return _QUIET
        return _timed(_log_handled, event)


@contextlib.contextmanager
def _timed(log: Callable[[E, float], None], event: E) -> Iterator[None]:
    """Time the block; then ``log(event, milliseconds)``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        log(event, (time.perf_counter() - start) * 1e3)


def _log_dispatched(event: DispatchedEvent, ms: float) -> None:
    ctx = event.worker_ctx
    logger.debug(
        "dispatched %s.%s from %s: %s in %.1f ms (message_id=%s, call_id=%s)",
        event.exchange.removesuffix(".events"),
        event.event_type,
        event.service or "a standalone dispatcher",
        "confirmed" if event.error is None else f"failed: {event.error!r}",
        ms,
        event.message_id,
        None if ctx is None else ctx.call_id,
    )


def _log_handled(event: HandledEvent, ms: float) -> None:
    ctx = event.worker_ctx
    logger.debug(
        "handled %s.%s by %s: %s in %.1f ms (message_id=%s, call_id=%s, attempt=%d%s)",
        event.source_service,
        event.event_type,
        event.handler,
        "cancelled" if event.outcome is None else event.outcome.value,
        ms,
        event.message_id,
        None if ctx is None else ctx.call_id,
        event.attempt,
        "" if event.error is None else f", error={event.error!r}",
    )


@final
class WithMessageLog(Sequence[Observer]):
    """A live view of *observers* with a :class:`MessageLog` first while DEBUG is on.

    It is empty (false) when *observers* is and ``trioevents.messages`` does not
    log DEBUG, so callers skip building events for nobody.
    """

    __slots__ = ("_log", "_observers")

    def __init__(self, observers: MutableSequence[Observer]) -> None:
        self._observers = observers
        self._log = MessageLog()

    def _current(self) -> Sequence[Observer]:
        if logger.isEnabledFor(logging.DEBUG):
            return [self._log, *self._observers]
        return self._observers

    def __bool__(self) -> bool:
        return bool(self._observers) or logger.isEnabledFor(logging.DEBUG)

    def __len__(self) -> int:
        return len(self._current())

    def __iter__(self) -> Iterator[Observer]:
        return iter(self._current())

    @overload
    def __getitem__(self, index: int) -> Observer: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Observer]: ...
    def __getitem__(self, index: int | slice) -> Observer | Sequence[Observer]:
        return self._current()[index]
