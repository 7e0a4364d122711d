"""One log line per dispatched and per handled event, at DEBUG: every host has it.

Logger ``trioevents.messages``; turn it on with ``--log-level DEBUG`` or, alone,
``logging.getLogger("trioevents.messages").setLevel(logging.DEBUG)``::

    dispatched orders.order_placed from orders: confirmed in 1.4 ms (message_id=None, call_id=orders.on_checkout.6f0e...)
    handled orders.order_placed by billing.charge: ack in 2.1 ms (message_id=None, call_id=billing.charge.41c2..., attempt=1)

Off, it costs one :meth:`logging.Logger.isEnabledFor` per event.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, final

from ._observe import Observer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._observe import DispatchedEvent, HandledEvent

__all__ = ["MessageLog"]

logger = logging.getLogger("trioevents.messages")


@final
class MessageLog(Observer):
    """Log each dispatch and each handled delivery at DEBUG (``trioevents.messages``)."""

    @contextlib.contextmanager
    def dispatching(self, event: DispatchedEvent) -> Iterator[None]:
        if not logger.isEnabledFor(logging.DEBUG):
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            ctx = event.worker_ctx
            logger.debug(
                "dispatched %s.%s from %s: %s in %.1f ms (message_id=%s, call_id=%s)",
                event.exchange.removesuffix(".events"),
                event.event_type,
                event.service or "a standalone dispatcher",
                "confirmed" if event.error is None else f"failed: {event.error!r}",
                (time.perf_counter() - start) * 1e3,
                event.message_id,
                None if ctx is None else ctx.call_id,
            )

    @contextlib.contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        if not logger.isEnabledFor(logging.DEBUG):
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            ctx = event.worker_ctx
            outcome = "cancelled" if event.outcome is None else event.outcome.value
            error = "" if event.error is None else f", error={event.error!r}"
            logger.debug(
                "handled %s.%s by %s: %s in %.1f ms "
                "(message_id=%s, call_id=%s, attempt=%d%s)",
                event.source_service,
                event.event_type,
                event.handler,
                outcome,
                (time.perf_counter() - start) * 1e3,
                event.message_id,
                None if ctx is None else ctx.call_id,
                event.attempt,
                error,
            )
