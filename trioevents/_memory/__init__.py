"""The embedded broker (``memory://``): an in-process model of RabbitMQ.

The package is layered, each module importing only the ones above it:

* ``_routing``: exchanges and their bindings, RabbitMQ's direct / fanout / topic
  routing;
* ``_transport``: the seam adapters, :class:`MemoryTransport`,
  :class:`MemoryConnection` and :class:`MemoryConsumer`.
"""

from __future__ import annotations

from ._transport import (
    MemoryConnection as MemoryConnection,
    MemoryConsumer as MemoryConsumer,
    MemoryTransport as MemoryTransport,
    drop_broker as drop_broker,
)

__all__ = ["MemoryConnection", "MemoryConsumer", "MemoryTransport", "drop_broker"]
