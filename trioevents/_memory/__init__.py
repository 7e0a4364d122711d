"""The embedded broker (``memory://``): an in-process model of RabbitMQ.

Brokers are shared per process by name: every ``memory://NAME`` transport reaches
the same broker, which outlives the connections that use it.

What is modelled: the default exchange and ``amq.direct`` / ``amq.fanout`` /
``amq.topic``; direct, fanout and topic exchanges (RabbitMQ's ``*`` / ``#``
matching); durable / auto-delete / internal exchanges; durable / auto-delete /
exclusive / server-named queues; per-consumer prefetch; round-robin among competing
consumers; FIFO with requeued messages back at their original position; message and
queue TTL (``expiration``, ``x-message-ttl``, ``x-expires``); ``x-max-length`` and
``x-max-length-bytes`` with ``x-overflow`` ``drop-head`` / ``reject-publish`` /
``reject-publish-dlx``; dead-lettering with RabbitMQ's ``x-death`` headers and its
cycle detection; classic and quorum queues (``x-queue-type``): a quorum queue is
durable only, puts requeued messages at the back, counts them in
``x-delivery-count`` and dead-letters (or drops) them past ``x-delivery-limit``.
Not modelled: ``x-dead-letter-strategy=at-least-once`` is taken, but dead-lettering
is synchronous here, so a message whose dead-letter target does not exist is
dropped (RabbitMQ keeps it in the source queue and tries again later).

The modules, each importing only the ones above it:

* ``_routing``: exchanges and their bindings; direct, fanout and topic routing.
* ``_queuetypes``: RabbitMQ's queue types (classic, quorum): which flags and
  arguments each takes, and what a redeclare compares.
* ``_model``: the broker's state: messages, queues, the broker (its clock,
  expiry, dead-lettering, deletion) and the per-process registry of brokers.
* ``_consumer``: :class:`MemoryConsumer`, one consumer's deliveries from the
  queue handing them over to their settlement.
* ``_transport``: :class:`MemoryTransport` and :class:`MemoryConnection`, the
  seam's AMQP methods over the model.
"""

from __future__ import annotations

from ._consumer import MemoryConsumer as MemoryConsumer
from ._model import drop_broker as drop_broker
from ._transport import (
    MemoryConnection as MemoryConnection,
    MemoryTransport as MemoryTransport,
)

__all__ = ["MemoryConnection", "MemoryConsumer", "MemoryTransport", "drop_broker"]
