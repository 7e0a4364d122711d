"""A transport whose connections can be cut: the embedded broker with faults.

``FlakyTransport`` wraps :class:`~trioevents.MemoryTransport`. ``cut()`` kills every
open connection as a lost socket would: pending and later operations raise
:class:`~trioevents.ConnectionLost`, and the broker takes back every unacked
delivery (``redelivered=True``). ``refuse(n)`` makes the next *n* connection
attempts fail with :class:`~trioevents.BrokerUnavailable`.
"""

from __future__ import annotations

import copy
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from trioevents import BrokerUnavailable, ConnectionLost, MemoryTransport, abc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from trioevents import Delivery, ExchangeType, Properties, QueueDeclared
    from trioevents._memory import MemoryConnection, MemoryConsumer


class FlakyTransport(abc.Transport):
    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.live: list[FlakyConnection] = []
        self.refusals = 0
        self.attempts = 0
        self.connects = 0

    def refuse(self, times: int) -> None:
        self.refusals = times

    def cut(self, error: Exception | None = None) -> None:
        """Kill every live connection; its calls raise *error* (ConnectionLost)."""
        for connection in list(self.live):
            connection.die(error)

    @asynccontextmanager
    async def open_connection(self) -> AsyncIterator[FlakyConnection]:
        await trio.lowlevel.checkpoint()
        self.attempts += 1
        if self.refusals:
            self.refusals -= 1
            raise BrokerUnavailable("connection refused (flaky transport)")
        async with self.inner.open_connection() as inner:
            self.connects += 1
            connection = FlakyConnection(inner)
            self.live.append(connection)
            try:
                yield connection
            finally:
                self.live.remove(connection)


class FlakyConnection(abc.Connection):
    def __init__(self, inner: MemoryConnection) -> None:
        self.inner = inner
        self.dead = False
        self.error: Exception | None = None

    def die(self, error: Exception | None = None) -> None:
        self.dead = True
        self.error = error
        self.inner.close()

    def _check(self) -> None:
        if self.dead:
            if self.error is not None:
                raise copy.copy(self.error)
            raise ConnectionLost("the connection was cut")

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._check()
        try:
            return await getattr(self.inner, name)(*args, **kwargs)
        except trio.ClosedResourceError:
            self._check()
            raise

    async def declare_exchange(
        self,
        name: str,
        type: ExchangeType | str = "topic",  # noqa: A002
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._call(
            "declare_exchange",
            name,
            type,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            passive=passive,
            arguments=arguments,
        )

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        await self._call("delete_exchange", name, if_unused=if_unused)

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
        result: QueueDeclared = await self._call(
            "declare_queue",
            name,
            durable=durable,
            auto_delete=auto_delete,
            exclusive=exclusive,
            passive=passive,
            arguments=arguments,
        )
        return result

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._call(
            "bind_queue", queue, exchange, routing_key, arguments=arguments
        )

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._call(
            "unbind_queue", queue, exchange, routing_key, arguments=arguments
        )

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        count: int = await self._call(
            "delete_queue", name, if_unused=if_unused, if_empty=if_empty
        )
        return count

    async def purge_queue(self, name: str) -> int:
        count: int = await self._call("purge_queue", name)
        return count

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties | None = None,
        *,
        mandatory: bool = False,
    ) -> None:
        await self._call(
            "publish", exchange, routing_key, body, properties, mandatory=mandatory
        )

    @asynccontextmanager
    async def open_consumer(
        self, queue: str, *, prefetch_count: int = 0, exclusive: bool = False
    ) -> AsyncIterator[FlakyConsumer]:
        self._check()
        async with self.inner.open_consumer(
            queue, prefetch_count=prefetch_count, exclusive=exclusive
        ) as inner:
            yield FlakyConsumer(self, inner)


class FlakyConsumer(abc.Consumer):
    def __init__(self, connection: FlakyConnection, inner: MemoryConsumer) -> None:
        self.connection = connection
        self.inner = inner

    @property
    def consumer_tag(self) -> str:
        return self.inner.consumer_tag

    @property
    def queue(self) -> str:
        return self.inner.queue

    async def receive(self) -> Delivery:
        self.connection._check()
        try:
            return await self.inner.receive()
        except trio.ClosedResourceError:
            self.connection._check()
            raise

    async def cancel(self) -> None:
        self.connection._check()
        await self.inner.cancel()
