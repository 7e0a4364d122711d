"""nameko's events on trio: :class:`EventDispatcher` and :func:`event_handler`.

=================  ==============================================================
module             job
=================  ==============================================================
``_topology``      exchange and queue names, flags and arguments (nameko's)
``_dispatcher``    :class:`EventDispatcher`: a worker's ``dispatch``
``_handler``       :class:`EventHandler` / :func:`event_handler`: consume, run workers
``_failure``       the failure policy, pure: ack, requeue, retry or dead-letter
``_outcome``       carrying a decision out: copies to retry/dead-letter queues, settle
``_retry``         :class:`Backoff` and what a copy of a failed event carries
=================  ==============================================================
"""

from __future__ import annotations

from ._dispatcher import EventDispatcher as EventDispatcher
from ._handler import EventHandler as EventHandler, event_handler as event_handler
from ._retry import Backoff as Backoff
from ._topology import (
    BROADCAST as BROADCAST,
    SERVICE_POOL as SERVICE_POOL,
    SINGLETON as SINGLETON,
    HandlerType as HandlerType,
    QueueType as QueueType,
    event_exchange_name as event_exchange_name,
)

__all__ = [
    "BROADCAST",
    "SERVICE_POOL",
    "SINGLETON",
    "Backoff",
    "EventDispatcher",
    "EventHandler",
    "HandlerType",
    "QueueType",
    "event_exchange_name",
    "event_handler",
]
