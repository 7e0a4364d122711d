"""The transport seam: the one interface between trioevents and a broker.

A :class:`Transport` opens :class:`Connection` objects; a connection declares the
topology, publishes with confirms and opens :class:`Consumer` objects that yield
:class:`~trioevents.Delivery` objects. The embedded broker (``memory://``) and the
RabbitMQ transport (``amqp://``) both implement it and both pass
:func:`trioevents.testing.check_transport`.

The rules every implementation keeps (AMQP 0-9-1 as RabbitMQ implements it):

* A broker refusal raises a :class:`~trioevents.ChannelClosedByBroker` subclass
  with RabbitMQ's reply code and text; the connection stays usable.
* Bad arguments raise :class:`~trioevents.InvalidRequest` before anything is sent.
* :meth:`Connection.publish` returns once the broker took the message (publisher
  confirm); a cancelled publish sends the whole message or nothing.
* A consumer never holds more unsettled deliveries than its prefetch count.
* Closing a consumer or a connection returns its unsettled deliveries to their
  queues, where they are redelivered with ``redelivered=True``.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Self

import trio

from ._message import ExchangeType

if TYPE_CHECKING:
    from collections.abc import Mapping
    from contextlib import AbstractAsyncContextManager

    from ._message import Delivery, Properties, QueueDeclared

__all__ = ["Connection", "Consumer", "Transport"]


class Transport(abc.ABC):
    """A broker that connections can be opened to."""

    @abc.abstractmethod
    def open_connection(self) -> AbstractAsyncContextManager[Connection]:
        """Open a connection; closing it returns its unsettled deliveries.

        Exclusive queues declared on the connection are deleted when it closes.

        Raises
        ------
        BrokerUnavailable
            The broker cannot be reached or refused the connection.
        """


class Connection(abc.ABC):
    """A connection to a broker: topology, publishing and consuming."""

    @abc.abstractmethod
    async def declare_exchange(
        self,
        name: str,
        type: ExchangeType = ExchangeType.TOPIC,  # noqa: A002 - AMQP's name
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare an exchange, or check that it exists (*passive*).

        Raises
        ------
        NotFound
            *passive* and there is no such exchange.
        PreconditionFailed
            The exchange exists with another type or other flags.
        AccessRefused
            A name starting with ``amq.`` (reserved), unless *passive*.
        InvalidRequest
            *type* is not an :class:`~trioevents.ExchangeType` or *name* is invalid.
        """

    @abc.abstractmethod
    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete an exchange and its bindings (no error if it does not exist).

        Raises
        ------
        PreconditionFailed
            *if_unused* and the exchange has bindings.
        """

    @abc.abstractmethod
    async def declare_queue(
        self,
        name: str = "",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        exclusive: bool = False,
        passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueDeclared:
        """Declare a queue, or check that it exists (*passive*).

        An empty *name* asks the broker to choose one (``amq.gen-...``). Arguments
        understood by both transports: ``x-dead-letter-exchange``,
        ``x-dead-letter-routing-key``, ``x-message-ttl``, ``x-max-length``,
        ``x-max-length-bytes``, ``x-overflow`` (``drop-head``, ``reject-publish``,
        ``reject-publish-dlx``) and ``x-expires``.

        Raises
        ------
        NotFound
            *passive* and there is no such queue.
        PreconditionFailed
            The queue exists with other flags or arguments.
        ResourceLocked
            The queue is exclusive to another connection.
        AccessRefused
            A name starting with ``amq.`` (reserved), unless *passive*.
        """

    @abc.abstractmethod
    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Bind *queue* to *exchange* with the binding key *routing_key*.

        Raises
        ------
        NotFound
            The queue or the exchange does not exist.
        ResourceLocked
            The queue is exclusive to another connection.
        """

    @abc.abstractmethod
    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Remove a binding (no error if there is no such binding)."""

    @abc.abstractmethod
    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; return how many messages it held.

        Deleting a queue that does not exist is not an error (returns 0). Its
        consumers are cancelled (:class:`~trioevents.ConsumerCancelled`).

        Raises
        ------
        PreconditionFailed
            *if_unused* and it has consumers, or *if_empty* and it has messages.
        ResourceLocked
            The queue is exclusive to another connection.
        """

    @abc.abstractmethod
    async def purge_queue(self, name: str) -> int:
        """Drop the ready messages of a queue; return how many there were.

        Raises
        ------
        NotFound
            There is no such queue.
        ResourceLocked
            The queue is exclusive to another connection.
        """

    @abc.abstractmethod
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties | None = None,
        *,
        mandatory: bool = False,
    ) -> None:
        """Publish a message and wait for the broker's confirm.

        A message that no queue takes is dropped silently, unless *mandatory*.

        Raises
        ------
        NotFound
            There is no such exchange.
        PublishNotConfirmed
            The broker nacked the message, or it was *mandatory* and unroutable,
            or a full queue with ``x-overflow=reject-publish`` refused it.
        InvalidRequest
            *body* is not bytes, *routing_key* is longer than 255 bytes, or the
            properties hold values AMQP cannot carry.
        """

    @abc.abstractmethod
    def open_consumer(
        self,
        queue: str,
        *,
        prefetch_count: int = 0,
        exclusive: bool = False,
    ) -> AbstractAsyncContextManager[Consumer]:
        """Consume *queue*; the consumer is cancelled and closed on exit.

        Parameters
        ----------
        queue
            The queue to consume.
        prefetch_count
            The most unsettled deliveries the consumer holds (``0``: no limit).
        exclusive
            Ask to be the queue's only consumer.

        Raises
        ------
        NotFound
            There is no such queue.
        ResourceLocked
            The queue is exclusive to another connection.
        AccessRefused
            *exclusive* and the queue has consumers, or it has an exclusive one.
        """


class Consumer(abc.ABC):
    """A consumer of one queue: an async iterator of deliveries.

    Iteration ends after :meth:`cancel`. If the broker cancels the consumer (its
    queue was deleted) iteration raises :class:`~trioevents.ConsumerCancelled`.
    """

    @property
    @abc.abstractmethod
    def consumer_tag(self) -> str:
        """The consumer's tag, unique within its connection."""

    @property
    @abc.abstractmethod
    def queue(self) -> str:
        """The name of the consumed queue."""

    @abc.abstractmethod
    async def receive(self) -> Delivery:
        """Wait for the next delivery.

        Raises
        ------
        trio.EndOfChannel
            The consumer was cancelled with :meth:`cancel`.
        ConsumerCancelled
            The broker cancelled the consumer.
        ConnectionLost
            The connection is gone.
        """

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving deliveries.

        Deliveries the consumer was given but :meth:`receive` did not return yet go
        back to the queue at once. Deliveries already returned can still be
        settled until the consumer is closed.
        """

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Delivery:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
