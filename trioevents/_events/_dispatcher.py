"""nameko's :class:`EventDispatcher`: a worker's ``dispatch(event_type, event_data)``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._extensions import DependencyProvider
from .._publisher import check_publish_options
from ._topology import declare_event_exchange, event_exchange_name

if TYPE_CHECKING:
    from .. import abc
    from .._worker import WorkerContext

__all__ = ["Dispatch", "EventDispatcher"]

logger = logging.getLogger("trioevents.events")

#: ``dispatch(event_type, event_data, **options)`` as injected into a worker.
Dispatch = Callable[..., Awaitable[None]]


class EventDispatcher(DependencyProvider["Dispatch"]):
    """Give each worker an async ``dispatch(event_type, event_data, **options)``.

    Events go to the exchange ``{service}.events`` with *event_type* as routing
    key; ``await dispatch(...)`` returns once the broker confirmed the message.
    The worker's context travels on as ``nameko.*`` headers.

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
        exchange = await declare_event_exchange(connection, self.service_name)
        logger.info("declared exchange %r", exchange)

    def get_dependency(self, worker_ctx: WorkerContext) -> Dispatch:
        publisher = self.service.publisher
        exchange = event_exchange_name(self.service_name)
        defaults = self.publish_options

        service = self.service_name

        async def dispatch(event_type: str, event_data: Any, **options: Any) -> None:
            merged = {**defaults, **check_publish_options(options)}
            await publisher.dispatch(
                exchange,
                event_type,
                event_data,
                merged,
                worker_ctx.dispatch_headers(),
                service=service,
                worker_ctx=worker_ctx,
            )

        return dispatch
