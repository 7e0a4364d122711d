"""A fault double: the embedded broker with connections that can be cut or refused.

:class:`FlakyTransport` wraps a :class:`~trioevents.MemoryTransport` and forwards
everything to it until a test breaks the link on purpose:

* :meth:`FlakyTransport.cut` closes every open connection as a lost socket would:
  the broker takes back each unsettled delivery (redelivered with
  ``redelivered=True``), and every pending or later operation on the connection,
  its consumers and their deliveries raises :class:`~trioevents.ConnectionLost`
  (or the error given);
* :meth:`FlakyTransport.refuse` makes the next connection attempts fail with
  :class:`~trioevents.BrokerUnavailable`, as a broker that is down would.

It only uses the public seam of the embedded broker (:class:`~trioevents.abc.Connection`
and :meth:`MemoryConnection.close <trioevents._memory.MemoryConnection.close>`).
"""

from __future__ import annotations

import copy
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, ParamSpec, TypeVar, final

import trio

from .. import abc
from .._exceptions import BrokerUnavailable, ConnectionLost
from .._message import Delivery, ExchangeType, Settlement

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from contextlib import AbstractAsyncContextManager
    from typing import Any

    from .._memory import MemoryConnection, MemoryConsumer, MemoryTransport
    from .._message import Properties, QueueDeclared

__all__ = ["FlakyTransport"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


@final
class FlakyTransport(abc.Transport):
    """The embedded broker with faults on demand: cut connections, refused connects.

    Give it to a host as its transport, ``ServiceHost(services, config,
    transport=FlakyTransport(MemoryTransport(name)))``: the host's
    :meth:`~trioevents.ServiceHost.serve` and its
    :meth:`~trioevents.ServiceHost.dispatcher` then connect through it. Without
    faults it behaves as the embedded broker does (it passes
    :func:`~trioevents.testing.check_transport`).

    Parameters
    ----------
    inner
        The embedded broker the connections reach.
    on_settle
        Called with each delivery a consumer handed out and how it was settled
        (:class:`~trioevents.Settlement`), once the broker took the settlement:
        for tests of when a service acks. Settling a delivery of a cut
        connection fails, and is not reported.
    """

    def __init__(
        self,
        inner: MemoryTransport,
        *,
        on_settle: Callable[[Delivery, Settlement], object] | None = None,
    ) -> None:
        self._inner = inner
        self._on_settle = on_settle
        self._links: list[_Link] = []
        self._refusals = 0
        self._attempts = 0
        self._connects = 0

    def __repr__(self) -> str:
        return f"FlakyTransport({self._inner!r})"

    @property
    def inner(self) -> MemoryTransport:
        """The embedded broker's transport, to reach the broker without faults."""
        return self._inner

    @property
    def attempts(self) -> int:
        """How many connections were asked for so far, refused ones included."""
        return self._attempts

    @property
    def connects(self) -> int:
        """How many connections were opened so far."""
        return self._connects

    def refuse(self, times: int) -> None:
        """Refuse the next *times* connection attempts (``0``: accept them again).

        A refused attempt raises :class:`~trioevents.BrokerUnavailable`. Open
        connections are not affected; :meth:`cut` them for an outage.

        Raises
        ------
        ValueError
            *times* is negative.
        """
        if times < 0:
            raise ValueError(f"cannot refuse {times} times")
        self._refusals = times

    def cut(self, error: Exception | None = None) -> int:
        """Cut every open connection at once, as a lost socket would.

        The broker takes back every unsettled delivery of their consumers and
        deletes their exclusive queues. Every pending and later operation on
        the cut connections, their consumers and deliveries raises a copy of
        *error* (:class:`~trioevents.ConnectionLost` if ``None``). New
        connections are not affected unless :meth:`refuse` says so.

        Parameters
        ----------
        error
            What the cut connections raise, for instance a
            :class:`~trioevents.RemoteProtocolError` for a broker that broke
            the protocol.

        Returns
        -------
        int
            How many connections were cut.
        """
        links, self._links = self._links, []
        for link in links:
            link.cut(error)
        return len(links)

    def open_connection(self) -> AbstractAsyncContextManager[abc.Connection]:
        """Open a connection to the broker, unless it is to be refused.

        Raises
        ------
        BrokerUnavailable
            :meth:`refuse` asked for this attempt to fail.
        """
        return self._open_connection()

    @asynccontextmanager
    async def _open_connection(self) -> AsyncIterator[abc.Connection]:
        await trio.lowlevel.checkpoint()
        self._attempts += 1
        if self._refusals:
            self._refusals -= 1
            raise BrokerUnavailable(
                f"connection refused by FlakyTransport ({self._refusals} more "
                "attempts to refuse)"
            )
        async with self._inner.open_connection() as inner:
            self._connects += 1
            link = _Link(inner)
            self._links.append(link)
            try:
                yield _FlakyConnection(link, self._on_settle)
            finally:
                if link in self._links:
                    self._links.remove(link)


class _Link:
    """One connection's state: alive, or cut with the error its calls raise."""

    def __init__(self, inner: MemoryConnection) -> None:
        self.inner = inner
        self.error: Exception | None = None
        self.dead = False

    def cut(self, error: Exception | None) -> None:
        self.dead = True
        self.error = error
        self.inner.close()

    def check(self) -> None:
        """Raise what a call on a cut connection raises; nothing while alive."""
        if not self.dead:
            return
        if self.error is not None:
            raise copy.copy(self.error)
        raise ConnectionLost("the connection was cut (FlakyTransport.cut)")

    async def call(
        self, fn: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Await *fn* on the inner connection; a cut one raises as :meth:`check`."""
        self.check()
        try:
            return await fn(*args, **kwargs)
        except trio.ClosedResourceError:
            self.check()  # closed by cut(): say so as a lost connection would
            raise


@final
class _FlakyConnection(abc.Connection):
    def __init__(
        self,
        link: _Link,
        on_settle: Callable[[Delivery, Settlement], object] | None,
    ) -> None:
        self._link = link
        self._on_settle = on_settle

    def __repr__(self) -> str:
        state = "cut" if self._link.dead else "open"
        return f"<flaky {state} {self._link.inner!r}>"

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
        await self._link.call(
            self._link.inner.declare_exchange,
            name,
            type,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            passive=passive,
            arguments=arguments,
        )

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        await self._link.call(
            self._link.inner.delete_exchange, name, if_unused=if_unused
        )

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
        return await self._link.call(
            self._link.inner.declare_queue,
            name,
            durable=durable,
            auto_delete=auto_delete,
            exclusive=exclusive,
            passive=passive,
            arguments=arguments,
        )

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._link.call(
            self._link.inner.bind_queue,
            queue,
            exchange,
            routing_key,
            arguments=arguments,
        )

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._link.call(
            self._link.inner.unbind_queue,
            queue,
            exchange,
            routing_key,
            arguments=arguments,
        )

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        return await self._link.call(
            self._link.inner.delete_queue,
            name,
            if_unused=if_unused,
            if_empty=if_empty,
        )

    async def purge_queue(self, name: str) -> int:
        return await self._link.call(self._link.inner.purge_queue, name)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties | None = None,
        *,
        mandatory: bool = False,
    ) -> None:
        await self._link.call(
            self._link.inner.publish,
            exchange,
            routing_key,
            body,
            properties,
            mandatory=mandatory,
        )

    def open_consumer(
        self,
        queue: str,
        *,
        prefetch_count: int = 0,
        exclusive: bool = False,
    ) -> AbstractAsyncContextManager[abc.Consumer]:
        return self._open_consumer(queue, prefetch_count, exclusive)

    @asynccontextmanager
    async def _open_consumer(
        self, queue: str, prefetch_count: int, exclusive: bool
    ) -> AsyncIterator[abc.Consumer]:
        self._link.check()
        opening = self._link.inner.open_consumer(
            queue, prefetch_count=prefetch_count, exclusive=exclusive
        )
        async with opening as inner:
            yield _FlakyConsumer(self._link, inner, self._on_settle)


@final
class _FlakyConsumer(abc.Consumer):
    def __init__(
        self,
        link: _Link,
        inner: MemoryConsumer,
        on_settle: Callable[[Delivery, Settlement], object] | None,
    ) -> None:
        self._link = link
        self._inner = inner
        self._on_settle = on_settle

    @property
    def consumer_tag(self) -> str:
        return self._inner.consumer_tag

    @property
    def queue(self) -> str:
        return self._inner.queue

    async def receive(self) -> Delivery:
        inner = await self._link.call(self._inner.receive)
        link, on_settle = self._link, self._on_settle

        async def settle(delivery: Delivery, how: Settlement, requeue: bool) -> None:
            # Not a cancellation point before the broker took it (see Delivery).
            await link.call(_settle, inner, how, requeue)
            if on_settle is not None:
                on_settle(delivery, how)

        return Delivery(
            delivery_tag=inner.delivery_tag,
            redelivered=inner.redelivered,
            exchange=inner.exchange,
            routing_key=inner.routing_key,
            properties=inner.properties,
            body=inner.body,
            consumer_tag=inner.consumer_tag,
            settler=settle,
        )

    async def cancel(self) -> None:
        await self._link.call(self._inner.cancel)


async def _settle(delivery: Delivery, how: Settlement, requeue: bool) -> None:
    if how is Settlement.ACK:
        await delivery.ack()
    elif how is Settlement.NACK:
        await delivery.nack(requeue=requeue)
    else:
        await delivery.reject(requeue=requeue)
