"""The seam adapters: the embedded broker as a :class:`~trioevents.abc.Transport`.

:class:`MemoryConnection` keeps AMQP's rules (names, flags, equivalence checks,
exclusive access, RabbitMQ's reply codes and texts) and changes the broker's
state through :mod:`._model`; :class:`MemoryConsumer` holds one consumer's
deliveries until they are settled.
"""

from __future__ import annotations

import base64
import itertools
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from .. import abc
from .._exceptions import (
    AccessRefused,
    ConfigurationError,
    NotFound,
    PreconditionFailed,
    PublishNotConfirmed,
    ResourceLocked,
)
from .._fieldtable import check_table, copy_table, wire_timestamp
from .._message import ExchangeType, Properties, QueueDeclared
from .._uri import parse_broker_uri
from .._validation import (
    check_body,
    check_exchange_type,
    check_name,
    check_prefetch,
    check_properties,
    check_routing_key,
)
from ._consumer import MemoryConsumer
from ._model import get_broker
from ._queuetypes import (
    compared_arguments,
    equivalent,
    inequivalent,
    server_named_refusal,
)
from ._routing import Exchange

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from contextlib import AbstractAsyncContextManager

    from ._model import Broker, Queue

__all__ = ["MemoryConnection", "MemoryTransport"]


def _random_token() -> str:
    return base64.urlsafe_b64encode(os.urandom(16)).decode("ascii").rstrip("=")


def _flag(value: bool) -> str:
    return "true" if value else "false"


# --------------------------------------------------------------------------- the seam


@final
class MemoryTransport(abc.Transport):
    """The embedded broker's transport.

    Parameters
    ----------
    name
        The broker's name: every transport with the same name in one process
        reaches the same broker (``memory://NAME``; ``memory://`` is ``""``).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name

    @classmethod
    def from_uri(cls, uri: str) -> MemoryTransport:
        """Build a transport for a ``memory://NAME`` URI."""
        parsed = parse_broker_uri(uri)
        if parsed.memory_name is None:
            raise ConfigurationError(f"not a memory:// URI: {parsed.masked!r}")
        return cls(parsed.memory_name)

    def __repr__(self) -> str:
        return f"MemoryTransport({self.name!r})"

    def open_connection(self) -> AbstractAsyncContextManager[MemoryConnection]:
        """Open a connection to the broker; see :meth:`abc.Transport.open_connection`."""
        return self._open_connection()

    @asynccontextmanager
    async def _open_connection(self) -> AsyncIterator[MemoryConnection]:
        await trio.lowlevel.checkpoint()
        connection = MemoryConnection(get_broker(self.name))
        try:
            yield connection
        finally:
            connection.close()


_connection_ids = itertools.count(1)


@final
class MemoryConnection(abc.Connection):
    """A connection to an embedded broker."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._id = next(_connection_ids)
        self._consumers: set[MemoryConsumer] = set()
        self._closed = False
        self._ctags = itertools.count(1)

    def __repr__(self) -> str:
        return f"<MemoryConnection {self._id} to {self._broker.name!r}>"

    # -- helpers

    async def _enter(self) -> float:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the connection is closed")
        return self._broker.tick()

    def _queue(self, name: str, *, check_owner: bool = True) -> Queue:
        queue = self._broker.queues.get(name)
        if queue is None:
            raise NotFound(404, f"NOT_FOUND - no queue '{name}' in vhost '/'")
        if check_owner:
            self._check_owner(queue)
        return queue

    def _check_owner(self, queue: Queue) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not self:
            raise self._locked(queue)

    @staticmethod
    def _locked(queue: Queue) -> ResourceLocked:
        return ResourceLocked(
            405,
            f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
            f"'{queue.name}' in vhost '/'. It could be originally declared on "
            "another connection or the exclusive property value does not match "
            "that of the original declaration.",
        )

    def _exchange(self, name: str) -> Exchange:
        exchange = self._broker.exchanges.get(name)
        if exchange is None:
            raise NotFound(404, f"NOT_FOUND - no exchange '{name}' in vhost '/'")
        return exchange

    @staticmethod
    def _arguments(arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        if arguments is None:
            return {}
        check_table(arguments)
        return copy_table(arguments)

    # -- exchanges

    async def declare_exchange(
        self,
        name: str,
        type: ExchangeType | str = ExchangeType.TOPIC,  # noqa: A002 - AMQP's name
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        check_name(name, "exchange name")
        xtype = check_exchange_type(type)
        args = self._arguments(arguments)
        await self._enter()
        broker = self._broker
        if name == "":
            raise AccessRefused(
                403, "ACCESS_REFUSED - operation not permitted on the default exchange"
            )
        existing = broker.exchanges.get(name)
        if passive:
            self._exchange(name)
        elif existing is None:
            if name.startswith("amq."):
                raise AccessRefused(
                    403,
                    f"ACCESS_REFUSED - exchange name '{name}' contains reserved "
                    "prefix 'amq.*'",
                )
            broker.exchanges[name] = Exchange(
                name, xtype, durable, auto_delete, internal, args
            )
        else:
            for what, got, have in (
                ("type", xtype.value, existing.type.value),
                ("durable", _flag(durable), _flag(existing.durable)),
                ("auto_delete", _flag(auto_delete), _flag(existing.auto_delete)),
                ("internal", _flag(internal), _flag(existing.internal)),
                (
                    "alternate-exchange",
                    repr(args.get("alternate-exchange")),
                    repr(existing.arguments.get("alternate-exchange")),
                ),
            ):
                if got != have:
                    raise PreconditionFailed(
                        406,
                        f"PRECONDITION_FAILED - inequivalent arg '{what}' for exchange "
                        f"'{name}' in vhost '/': received '{got}' but current is "
                        f"'{have}'",
                    )
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        check_name(name, "exchange name")
        await self._enter()
        broker = self._broker
        if name == "":
            raise AccessRefused(
                403, "ACCESS_REFUSED - operation not permitted on the default exchange"
            )
        if name.startswith("amq."):
            raise AccessRefused(
                403,
                f"ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' "
                "not allowed",
            )
        exchange = broker.exchanges.get(name)
        if exchange is not None:
            if if_unused and exchange.bindings:
                raise PreconditionFailed(
                    406, f"PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use"
                )
            del broker.exchanges[name]
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- queues

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
        check_name(name, "queue name")
        args = self._arguments(arguments)
        now = await self._enter()
        broker = self._broker
        queue = broker.queues.get(name)
        if passive:
            queue = self._queue(name)
        elif name.startswith("amq."):
            raise AccessRefused(
                403,
                f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'",
            )
        elif queue is None:
            if not name:
                refusal = server_named_refusal(args)
                if refusal is not None:
                    raise refusal
                name = f"amq.gen-{_random_token()}"
            queue = broker.add_queue(
                name,
                durable=durable,
                auto_delete=auto_delete,
                exclusive_owner=self if exclusive else None,
                arguments=args,
                now=now,
            )
        else:
            self._check_owner(queue)
            if exclusive and queue.exclusive_owner is None:
                # RabbitMQ's "strict" exclusive check: nobody owns it, so nobody can.
                raise self._locked(queue)
            for what, got, have in (
                ("durable", durable, queue.durable),
                ("auto_delete", auto_delete, queue.auto_delete),
            ):
                if got != have:
                    raise PreconditionFailed(
                        406,
                        f"PRECONDITION_FAILED - inequivalent arg '{what}' for queue "
                        f"'{name}' in vhost '/': received '{_flag(got)}' but current "
                        f"is '{_flag(have)}'",
                    )
            for key in compared_arguments(queue.queue_type):
                got_arg, have_arg = args.get(key), queue.arguments.get(key)
                if not equivalent(key, got_arg, have_arg):
                    raise inequivalent(key, name, got_arg, have_arg)
            queue.last_used = now
        await trio.lowlevel.cancel_shielded_checkpoint()
        return QueueDeclared(queue.name, len(queue), len(queue.consumers))

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        check_name(queue, "queue name")
        check_name(exchange, "exchange name")
        check_routing_key(routing_key)
        args = self._arguments(arguments)
        await self._enter()
        if exchange == "":
            raise AccessRefused(
                403,
                "ACCESS_REFUSED - operation not permitted on the default exchange",
            )
        q = self._queue(queue)
        self._exchange(exchange).bind(q.name, routing_key, args)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        check_name(queue, "queue name")
        check_name(exchange, "exchange name")
        check_routing_key(routing_key)
        args = self._arguments(arguments)
        await self._enter()
        if exchange == "":
            raise AccessRefused(
                403, "ACCESS_REFUSED - operation not permitted on the default exchange"
            )
        q = self._broker.queues.get(queue)
        if q is not None:
            self._check_owner(q)
        x = self._broker.exchanges.get(exchange)
        if x is not None:
            self._broker.unbind(x, queue, routing_key, args)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        check_name(name, "queue name")
        await self._enter()
        queue = self._broker.queues.get(name)
        count = 0
        if queue is not None:
            self._check_owner(queue)
            if if_unused and queue.consumers:
                raise PreconditionFailed(
                    406, f"PRECONDITION_FAILED - queue '{name}' in vhost '/' in use"
                )
            if if_empty and len(queue):
                raise PreconditionFailed(
                    406, f"PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty"
                )
            count = self._broker.delete_queue(queue)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return count

    async def purge_queue(self, name: str) -> int:
        check_name(name, "queue name")
        await self._enter()
        count = self._queue(name).purge()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return count

    # -- publishing

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties | None = None,
        *,
        mandatory: bool = False,
    ) -> None:
        check_name(exchange, "exchange name")
        check_routing_key(routing_key)
        body = check_body(body)
        props = check_properties(properties)
        if props.headers:
            props = attrs.evolve(props, headers=copy_table(props.headers))
        if props.timestamp is not None:
            props = attrs.evolve(props, timestamp=wire_timestamp(props.timestamp))
        now = await self._enter()
        broker = self._broker
        if exchange == "":
            queue = broker.queues.get(routing_key)
            names: tuple[str, ...] = (routing_key,) if queue is not None else ()
        else:
            x = self._exchange(exchange)
            if x.internal:
                raise AccessRefused(
                    403,
                    f"ACCESS_REFUSED - cannot publish to internal exchange "
                    f"'{exchange}' in vhost '/'",
                )
            names = x.route(routing_key)
        refused = False
        routed = False
        flooded: list[Queue] = []
        queues = broker.queues
        for name in names:
            queue = queues.get(name)
            if queue is None:
                continue
            routed = True
            if not queue.enqueue(exchange, routing_key, props, body, now):
                refused = True
            if queue.flooded():
                flooded.append(queue)
        if flooded:
            # Flow control: the message is in; its confirm waits for the
            # consumers to catch up (a cancel here leaves it published).
            for queue in flooded:
                while queue.flooded():
                    await queue.wait_drained()
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        if mandatory and not routed:
            raise PublishNotConfirmed(
                f"message to exchange {exchange!r} with routing key {routing_key!r} "
                "was returned: 312 NO_ROUTE"
            )
        if refused:
            raise PublishNotConfirmed(
                f"message to exchange {exchange!r} with routing key {routing_key!r} "
                "was nacked: a queue it routes to is full (x-overflow)"
            )

    # -- consuming

    def open_consumer(
        self,
        queue: str,
        *,
        prefetch_count: int = 0,
        exclusive: bool = False,
    ) -> AbstractAsyncContextManager[MemoryConsumer]:
        return self._open_consumer(queue, prefetch_count, exclusive)

    @asynccontextmanager
    async def _open_consumer(
        self, queue: str, prefetch_count: int, exclusive: bool
    ) -> AsyncIterator[MemoryConsumer]:
        check_name(queue, "queue name")
        check_prefetch(prefetch_count)
        await self._enter()
        q = self._queue(queue)
        if q.consumers and (exclusive or any(c.exclusive for c in q.consumers)):
            raise AccessRefused(
                403, f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"
            )
        tag = f"amq.ctag-{_random_token()}"
        consumer = MemoryConsumer(self._broker, q, tag, prefetch_count, exclusive)
        self._consumers.add(consumer)
        q.add_consumer(consumer)
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
            yield consumer
        finally:
            consumer.close()
            self._consumers.discard(consumer)

    def close(self) -> None:
        """Close the connection at once, as a lost socket would (idempotent).

        Its consumers close, their unsettled deliveries go back to their queues,
        and the exclusive queues it declared are deleted. Later operations raise
        :class:`trio.ClosedResourceError`.
        """
        if self._closed:
            return
        self._closed = True
        for consumer in self._consumers:
            consumer.close()
        self._consumers.clear()
        for queue in list(self._broker.queues.values()):
            if queue.exclusive_owner is self:
                self._broker.delete_queue(queue)
