"""The one publish path: every event a host or a dispatcher sends goes through here.

A :class:`Publisher` encodes the payload, builds nameko's properties, and hands
the message to the publishing tasks of whichever connection is up; the caller
waits for the broker's confirm, at most ``PUBLISH_TIMEOUT`` seconds. Workers'
dispatchers (:class:`~trioevents.EventDispatcher`), the retry and dead-letter
copies of event handlers, and :meth:`ServiceHost.dispatcher
<trioevents.ServiceHost.dispatcher>` all use it::

    caller ─ publish() ─► requests (channel) ─► _PUBLISHERS tasks ─► connection.publish
         ◄──── done ────────────────────────────── confirm / error ◄─┘

A request whose publish was interrupted (the connection died, or its task was
cancelled) goes back to the front of the line and is published again on the next
connection: at-least-once, and a dispatch never returns before its message was
confirmed. A caller that stops waiting (cancelled, or past ``PUBLISH_TIMEOUT``)
abandons its request if it was not sent yet; a request already on the wire is
seen through.

A message the broker nacks is published again, after a delay that starts at
``RECONNECT_DELAY`` and doubles up to ``RECONNECT_MAX_DELAY``, until it is
confirmed or ``PUBLISH_TIMEOUT`` is over: RabbitMQ nacks what it cannot take
*for now*, such as a publish to a quorum queue whose leader's node just died
(the cluster elects another within seconds), or to a full queue with
``x-overflow=reject-publish``. A ``mandatory`` message is not published again:
its refusal may be a ``basic.return`` (no queue took it), which waiting does not
mend.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import attrs
import trio

from ._connecting import LOST
from ._exceptions import (
    BrokerUnavailable,
    ConfigurationError,
    ConnectionLost,
    PublishNotConfirmed,
    TransportError,
)
from ._message import ExchangeType, Properties
from ._observe import DispatchedEvent, observe

if TYPE_CHECKING:
    from collections.abc import Sequence

    from . import abc
    from ._codec import PayloadCodec
    from ._config import Config
    from ._observe import Observer
    from ._worker import WorkerContext

__all__ = [
    "PUBLISH_OPTIONS",
    "Publisher",
    "StandaloneDispatch",
    "build_properties",
    "check_publish_options",
]

#: Publishes in flight at once per connection (each waiting for its confirm).
_PUBLISHERS: Final = 32
#: Requests queued for the publishing tasks before callers wait to queue more.
_QUEUED: Final = 1024
#: The shortest wait before a nacked message is published again (seconds).
_MIN_NACK_DELAY: Final = 0.05

#: Options a dispatch accepts, with the type each must have.
PUBLISH_OPTIONS: Final[Mapping[str, type | tuple[type, ...]]] = {
    "delivery_mode": int,
    "priority": int,
    "expiration": (str, int),
    "headers": Mapping,
    "mandatory": bool,
    "message_id": str,
    "correlation_id": str,
}


def check_publish_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check dispatch options; raise :class:`ConfigurationError` naming a bad one."""
    checked: dict[str, Any] = {}
    for key, value in options.items():
        expected = PUBLISH_OPTIONS.get(key)
        if expected is None:
            known = ", ".join(sorted(PUBLISH_OPTIONS))
            raise ConfigurationError(
                f"unknown dispatch option {key!r}; known options: {known}"
            )
        if not isinstance(value, expected) or isinstance(value, bool) != (
            expected is bool
        ):
            raise ConfigurationError(
                f"dispatch option {key!r} has the wrong type: {value!r}"
            )
        checked[key] = str(value) if key == "expiration" else value
    return checked


def build_properties(
    content_type: str,
    content_encoding: str,
    headers: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> tuple[Properties, bool]:
    """Build nameko's message properties; return them and the ``mandatory`` flag.

    *headers* are the message's whole headers (the ``headers`` option is not
    merged here: :meth:`Publisher.dispatch` does that).
    """
    properties = Properties(
        content_type=content_type,
        content_encoding=content_encoding,
        headers=headers or None,
        delivery_mode=options.get("delivery_mode", 2),
        priority=options.get("priority", 0),
        expiration=options.get("expiration"),
        message_id=options.get("message_id"),
        correlation_id=options.get("correlation_id"),
    )
    return properties, bool(options.get("mandatory", False))


class StandaloneDispatch(Protocol):
    """``await dispatch(source_service, event_type, event_data, **options)``."""

    async def __call__(
        self, source_service: str, event_type: str, event_data: Any, **options: Any
    ) -> None: ...


@attrs.define(eq=False)
class _Request:
    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    mandatory: bool
    #: Declare the exchange (durable topic) before the first publish to it on a
    #: connection.
    declare: bool
    done: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None
    #: The caller gave up waiting before it was sent: don't publish it late.
    abandoned: bool = False


@final
class Publisher:
    """Publish with confirms over whichever connection is up; see the module doc.

    Parameters
    ----------
    config
        ``PUBLISH_TIMEOUT`` bounds every wait for a confirm; ``RECONNECT_DELAY``
        and ``RECONNECT_MAX_DELAY`` space the publishes of a nacked message.
    codec
        Encodes payloads of :meth:`dispatch`.
    observers
        Told about every dispatch (a live sequence: observers added later are
        told too).
    """

    def __init__(
        self,
        config: Config,
        codec: PayloadCodec,
        observers: Sequence[Observer] = (),
    ) -> None:
        self._timeout = config.publish_timeout
        self._nack_delay = max(config.reconnect_delay, _MIN_NACK_DELAY)
        self._nack_max_delay = max(config.reconnect_max_delay, self._nack_delay)
        self._codec = codec
        self._observers = observers
        self._send, self._receive = trio.open_memory_channel[_Request](_QUEUED)
        self._pending: deque[_Request] = deque()
        self._closed = False
        self._cause: BaseException | None = None
        #: The connection callers publish on directly, while one is up.
        self._connection: abc.Connection | None = None
        #: Exchanges declared on that connection.
        self._declared: set[str] = set()
        #: Requests sent into the channel and not received by a task yet.
        self._queued = 0

    @property
    def codec(self) -> PayloadCodec:
        """The codec that :meth:`dispatch` encodes payloads with."""
        return self._codec

    def connection_failed(self, cause: BaseException) -> None:
        """Remember why no connection is up, to say so if a publish times out."""
        self._cause = cause

    async def dispatch(
        self,
        exchange: str,
        event_type: str,
        event_data: Any,
        options: Mapping[str, Any],
        headers: Mapping[str, Any] | None = None,
        *,
        service: str | None = None,
        worker_ctx: WorkerContext | None = None,
    ) -> None:
        """Publish an event (nameko's format) and wait for its confirm.

        Parameters
        ----------
        exchange
            The source service's events exchange (declared if need be).
        event_type
            The routing key.
        event_data
            The payload, encoded with :attr:`codec`.
        options
            Dispatch options, already checked (``check_publish_options``).
        headers
            The worker context's headers, or ``None`` for a standalone dispatch.
        service, worker_ctx
            Who dispatches (for observers); ``None`` for a standalone dispatch.

        Raises
        ------
        SerializationError
            The payload cannot be encoded.
        BrokerUnavailable
            No confirm came within ``PUBLISH_TIMEOUT``.
        PublishNotConfirmed
            The broker still nacked the message when ``PUBLISH_TIMEOUT`` was
            over (a nack is published again until then), or did not route a
            ``mandatory`` one.
        TransportError
            The broker refused the message otherwise.
        trio.ClosedResourceError
            The publisher was closed (the host stopped serving).
        """
        extra = options.get("headers")
        if extra:
            headers = {**(headers or {}), **extra}
        if not self._observers:
            body, content_type, content_encoding = self._codec.encode(event_data)
            properties, mandatory = build_properties(
                content_type, content_encoding, headers, options
            )
            await self.publish(
                exchange,
                event_type,
                body,
                properties,
                mandatory=mandatory,
                declare=True,
            )
            return
        event = DispatchedEvent(
            service,
            exchange,
            event_type,
            dict(headers or {}),
            options.get("message_id"),
            worker_ctx,
        )
        with observe(self._observers, "dispatching", event):
            try:
                await self._send_event(
                    exchange, event_type, event_data, options, event.headers
                )
            except BaseException as exc:
                event.error = exc
                raise

    async def _send_event(
        self,
        exchange: str,
        event_type: str,
        event_data: Any,
        options: Mapping[str, Any],
        headers: Mapping[str, Any] | None,
    ) -> None:
        body, content_type, content_encoding = self._codec.encode(event_data)
        properties, mandatory = build_properties(
            content_type, content_encoding, headers, options
        )
        await self.publish(
            exchange, event_type, body, properties, mandatory=mandatory, declare=True
        )

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = False,
        declare: bool = False,
    ) -> None:
        """Publish a message and wait for its confirm (see :meth:`dispatch`).

        *declare* declares *exchange* as a durable topic exchange first, once
        per connection.
        """
        if self._closed:
            raise trio.ClosedResourceError("the publisher is closed")
        timeout = self._timeout if self._timeout is not None else math.inf
        deadline = trio.current_time() + timeout
        connection = self._connection
        if (
            connection is not None
            and not self._backlog()
            and (not declare or exchange in self._declared)
        ):
            # The common case, inline (see _publish_once): a live connection,
            # nothing queued ahead, the exchange declared on it already.
            with trio.move_on_at(deadline):
                try:
                    await connection.publish(
                        exchange, routing_key, body, properties, mandatory=mandatory
                    )
                    return
                except LOST:
                    pass  # maybe published, not confirmed: publish it again
                except PublishNotConfirmed:
                    if mandatory:
                        raise
                    # nacked: the loop below publishes it again
        nacks = 0
        while True:
            try:
                await self._publish_once(
                    exchange, routing_key, body, properties,
                    mandatory=mandatory, declare=declare, deadline=deadline,
                )  # fmt: skip
                return
            except PublishNotConfirmed as exc:
                if mandatory:  # maybe returned: no queue took it
                    raise
                nacks += 1
                delay = min(self._nack_delay * 2 ** (nacks - 1), self._nack_max_delay)
                with trio.move_on_at(deadline) as scope:
                    await trio.sleep(delay)
                if scope.cancelled_caught:
                    raise PublishNotConfirmed(
                        f"{exc}; refused {nacks} times within PUBLISH_TIMEOUT "
                        f"({self._timeout} s)"
                    ) from exc

    async def _publish_once(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool,
        declare: bool,
        deadline: float,
    ) -> None:
        """Publish a message once and wait for its confirm, until *deadline*."""
        connection = self._connection
        if connection is not None and not self._backlog():
            # The fast path: the caller publishes on the connection itself (a
            # publish is framed whole before any await, so a cancelled caller
            # leaves no half-sent frame); only a lost connection sends the
            # message through the queue, to the next connection.
            with trio.move_on_at(deadline):
                try:
                    await self._publish_on(
                        connection, exchange, routing_key, body, properties,
                        mandatory=mandatory, declare=declare,
                    )  # fmt: skip
                    return
                except LOST:
                    pass  # maybe published, not confirmed: publish it again
        request = _Request(exchange, routing_key, body, properties, mandatory, declare)
        try:
            # Cancelled before send() returned: nothing was queued. Cancelled
            # while waiting for the confirm: abandoned unless already sent.
            with trio.move_on_at(deadline) as scope:
                await self._send.send(request)
                self._queued += 1
                await request.done.wait()
        finally:
            if not request.done.is_set():
                request.abandoned = True
        if scope.cancelled_caught:
            cause = f"; last connection error: {self._cause}" if self._cause else ""
            raise BrokerUnavailable(
                f"the broker did not confirm the message to {exchange!r} within "
                f"PUBLISH_TIMEOUT ({self._timeout} s){cause}"
            )
        if request.error is not None:
            raise request.error

    def _backlog(self) -> int:
        """How many requests wait in the queue for a publishing task."""
        return len(self._pending) + self._queued

    async def _publish_on(
        self,
        connection: abc.Connection,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool,
        declare: bool,
    ) -> None:
        if declare and exchange not in self._declared:
            await connection.declare_exchange(
                exchange, ExchangeType.TOPIC, durable=True
            )
            self._declared.add(exchange)
        await connection.publish(
            exchange, routing_key, body, properties, mandatory=mandatory
        )

    async def run(self, connection: abc.Connection) -> None:
        """Publish on *connection* until it dies or is cancelled.

        While it runs, callers publish on the connection themselves; the
        publishing tasks it starts take what is queued (publishes that waited
        for this connection, or that a lost connection cut short).

        Raises
        ------
        ConnectionLost
            The connection died; unconfirmed requests wait for the next one.
        """
        self._cause = None
        self._declared = set()
        self._connection = connection
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(_PUBLISHERS):
                    nursery.start_soon(self._publish_loop, connection)
        finally:
            if self._connection is connection:
                self._connection = None

    async def _publish_loop(self, connection: abc.Connection) -> None:
        pending = self._pending
        while True:
            if pending:
                request = pending.popleft()
            else:
                request = await self._receive.receive()
                self._queued -= 1
            if request.abandoned:
                continue
            try:
                await self._publish_on(
                    connection,
                    request.exchange,
                    request.routing_key,
                    request.body,
                    request.properties,
                    mandatory=request.mandatory,
                    declare=request.declare,
                )
            except LOST as exc:
                pending.appendleft(request)
                if self._connection is connection:
                    self._connection = None  # no fast path on a dead connection
                raise ConnectionLost(f"publishing failed: {exc}") from exc
            except TransportError as exc:
                request.error = exc
                request.done.set()
            except BaseException:
                pending.appendleft(request)
                raise
            else:
                request.done.set()

    def close(self) -> None:
        """Refuse new publishes and fail the waiting ones (the host stopped)."""
        self._closed = True
        self._connection = None
        error = trio.ClosedResourceError("the publisher was closed before the confirm")
        waiting = list(self._pending)
        self._pending.clear()
        while True:
            try:
                waiting.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._queued -= 1
        for request in waiting:
            if not request.done.is_set():
                request.error = error
                request.done.set()
