"""The embedded broker: an in-process model of AMQP 0-9-1 as RabbitMQ implements it.

Brokers are shared per process by name: every ``memory://NAME`` transport reaches
the same :class:`_Broker`, which outlives the connections that use it. All state
changes are synchronous; the only waits are consumers waiting for deliveries, and
those waits carry the broker's next TTL deadline, so expiry happens on time without
a background task (and instantly under trio's ``autojump_clock``). Every operation
also expires what is due before it runs.

What is modelled: the default exchange and ``amq.direct`` / ``amq.fanout`` /
``amq.topic``; direct, fanout and topic exchanges (RabbitMQ's ``*`` / ``#``
matching); durable / auto-delete / internal exchanges; durable / auto-delete /
exclusive / server-named queues; per-consumer prefetch; round-robin among competing
consumers; FIFO with requeued messages back at their original position; message and
queue TTL (``expiration``, ``x-message-ttl``, ``x-expires``); ``x-max-length`` and
``x-max-length-bytes`` with ``x-overflow`` ``drop-head`` / ``reject-publish`` /
``reject-publish-dlx``; dead-lettering with RabbitMQ's ``x-death`` headers and its
cycle detection.
"""

from __future__ import annotations

import base64
import datetime
import heapq
import itertools
import os
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import trio

from .. import abc
from .._exceptions import (
    AccessRefused,
    ConfigurationError,
    ConsumerCancelled,
    NotFound,
    PreconditionFailed,
    PublishNotConfirmed,
    ResourceLocked,
)
from .._fieldtable import check_table, copy_table, wire_timestamp
from .._message import (
    Delivery,
    ExchangeType,
    Properties,
    QueueDeclared,
    Settlement,
)
from .._uri import parse_broker_uri
from .._validation import (
    check_body,
    check_exchange_type,
    check_name,
    check_prefetch,
    check_properties,
    check_routing_key,
)
from ._routing import Exchange as _Exchange

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from contextlib import AbstractAsyncContextManager

__all__ = ["MemoryTransport", "drop_broker"]

_INF: Final = float("inf")
#: Queue arguments whose values must be equal when a queue is declared again.
_CHECKED_QUEUE_ARGS: Final = (
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
)
_OVERFLOW_MODES: Final = ("drop-head", "reject-publish", "reject-publish-dlx")


def _random_token() -> str:
    return base64.urlsafe_b64encode(os.urandom(16)).decode("ascii").rstrip("=")


def _flag(value: bool) -> str:
    return "true" if value else "false"


# --------------------------------------------------------------------------- messages


class _Message:
    """A message in one queue (each queue holds its own copy of the envelope)."""

    __slots__ = (
        "body",
        "exchange",
        "expires_at",
        "properties",
        "redelivered",
        "routing_key",
        "seq",
    )

    def __init__(
        self,
        seq: int,
        exchange: str,
        routing_key: str,
        properties: Properties,
        body: bytes,
        expires_at: float,
    ) -> None:
        self.seq = seq
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.body = body
        self.expires_at = expires_at
        self.redelivered = False

    def __lt__(self, other: _Message) -> bool:  # for the requeue heap
        return self.seq < other.seq


def _int_arg(arguments: Mapping[str, Any], key: str, queue: str) -> int | None:
    value = arguments.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PreconditionFailed(
            406,
            f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{queue}' in vhost "
            f"'/': {value!r} is not a non-negative integer",
        )
    return value


def _str_arg(arguments: Mapping[str, Any], key: str, queue: str) -> str | None:
    value = arguments.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PreconditionFailed(
            406,
            f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{queue}' in vhost "
            f"'/': {value!r} is not a string",
        )
    return value


@attrs.define(eq=False)
class _Queue:
    broker: _Broker
    name: str
    durable: bool
    auto_delete: bool
    exclusive_owner: MemoryConnection | None
    arguments: dict[str, Any]
    dlx: str | None = None
    dlrk: str | None = None
    message_ttl: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    expires: int | None = None
    #: Messages never delivered, in order (all newer than any requeued one).
    fresh: deque[_Message] = attrs.Factory(deque)
    #: Requeued messages, a heap ordered by original position.
    requeued: list[_Message] = attrs.Factory(list)
    ready_bytes: int = 0
    consumers: list[MemoryConsumer] = attrs.Factory(list)
    next_consumer: int = 0
    had_consumer: bool = False
    seq: itertools.count[int] = attrs.Factory(itertools.count)
    last_used: float = 0.0
    deleted: bool = False

    def __attrs_post_init__(self) -> None:
        args, name = self.arguments, self.name
        self.dlx = _str_arg(args, "x-dead-letter-exchange", name)
        self.dlrk = _str_arg(args, "x-dead-letter-routing-key", name)
        self.message_ttl = _int_arg(args, "x-message-ttl", name)
        self.max_length = _int_arg(args, "x-max-length", name)
        self.max_length_bytes = _int_arg(args, "x-max-length-bytes", name)
        self.expires = _int_arg(args, "x-expires", name)
        if self.expires == 0:
            raise PreconditionFailed(
                406,
                f"PRECONDITION_FAILED - invalid arg 'x-expires' for queue '{name}' in "
                "vhost '/': {value_zero,0}",
            )
        overflow = _str_arg(args, "x-overflow", name)
        if overflow is not None:
            if overflow not in _OVERFLOW_MODES:
                raise PreconditionFailed(
                    406,
                    f"PRECONDITION_FAILED - invalid arg 'x-overflow' for queue '{name}'"
                    f" in vhost '/': {overflow!r} is not one of {_OVERFLOW_MODES}",
                )
            self.overflow = overflow

    # -- the ready list

    def __len__(self) -> int:
        return len(self.fresh) + len(self.requeued)

    def _head(self) -> _Message | None:
        if self.requeued:
            return self.requeued[0]
        return self.fresh[0] if self.fresh else None

    def _pop_head(self) -> _Message:
        msg = heapq.heappop(self.requeued) if self.requeued else self.fresh.popleft()
        self.ready_bytes -= len(msg.body)
        return msg

    def head_deadline(self) -> float:
        head = self._head()
        return _INF if head is None else head.expires_at

    def idle_deadline(self) -> float:
        if self.expires is None or self.consumers:
            return _INF
        return self.last_used + self.expires / 1000

    def purge(self) -> int:
        count = len(self)
        self.fresh.clear()
        self.requeued.clear()
        self.ready_bytes = 0
        return count

    # -- in and out

    def enqueue(
        self,
        exchange: str,
        routing_key: str,
        properties: Properties,
        body: bytes,
        now: float,
    ) -> bool:
        """Add a published message; return False if overflow refused it."""
        if self.overflow != "drop-head" and self._full_for(len(body)):
            if self.overflow == "reject-publish-dlx":
                msg = _Message(-1, exchange, routing_key, properties, body, _INF)
                self.broker.dead_letter(self, msg, "maxlen")
            return False
        ttl = self.message_ttl
        if properties.expiration is not None:
            per_message = int(properties.expiration)
            ttl = per_message if ttl is None else min(ttl, per_message)
        expires_at = _INF if ttl is None else now + ttl / 1000
        msg = _Message(
            next(self.seq), exchange, routing_key, properties, body, expires_at
        )
        self.fresh.append(msg)
        self.ready_bytes += len(body)
        if expires_at != _INF:
            self.broker.note_deadline(self, expires_at)
        self.dispatch()
        self._drop_overflow()
        if ttl == 0:
            self.broker.expire_queue(self, now)
        return True

    def _full_for(self, size: int) -> bool:
        if self.max_length is not None and len(self) + 1 > self.max_length:
            return True
        return (
            self.max_length_bytes is not None
            and self.ready_bytes + size > self.max_length_bytes
        )

    def _drop_overflow(self) -> None:
        while (self.max_length is not None and len(self) > self.max_length) or (
            self.max_length_bytes is not None
            and self.ready_bytes > self.max_length_bytes
        ):
            self.broker.dead_letter(self, self._pop_head(), "maxlen")

    def requeue(self, msg: _Message) -> None:
        if self.deleted:
            return
        msg.redelivered = True
        heapq.heappush(self.requeued, msg)
        self.ready_bytes += len(msg.body)
        if msg.expires_at != _INF:
            self.broker.note_deadline(self, msg.expires_at)

    def dispatch(self) -> None:
        """Hand ready messages to consumers with room, round-robin."""
        consumers = self.consumers
        if not consumers:
            return
        n = len(consumers)
        while self.fresh or self.requeued:
            start = self.next_consumer % n
            for i in range(n):
                consumer = consumers[(start + i) % n]
                if consumer.has_room():
                    break
            else:
                return
            self.next_consumer = (start + i + 1) % n
            consumer.deliver(self, self._pop_head())

    # -- consumers

    def add_consumer(self, consumer: MemoryConsumer) -> None:
        self.consumers.append(consumer)
        self.had_consumer = True
        self.dispatch()

    def remove_consumer(self, consumer: MemoryConsumer, now: float) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self.last_used = now
        if self.auto_delete and self.had_consumer and not self.consumers:
            self.broker.delete_queue(self)
        elif self.expires is not None and not self.consumers:
            self.broker.note_deadline(self, self.idle_deadline())


# --------------------------------------------------------------------------- broker


class _Broker:
    """The state of one named embedded broker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.exchanges: dict[str, _Exchange] = {}
        self.queues: dict[str, _Queue] = {}
        for xname, xtype in (
            ("amq.direct", ExchangeType.DIRECT),
            ("amq.fanout", ExchangeType.FANOUT),
            ("amq.topic", ExchangeType.TOPIC),
        ):
            self.exchanges[xname] = _Exchange(xname, xtype, True, False, False, {})
        #: Queues that may hold a message or an idle timer due at some point.
        self._timed: set[_Queue] = set()
        self._deadline = _INF
        self._scopes: set[trio.CancelScope] = set()
        self._run: object = None
        self._last_now = 0.0

    # -- time

    def now(self) -> float:
        """Return the current trio time, rebasing deadlines if the trio run changed."""
        now = trio.current_time()
        token = trio.lowlevel.current_trio_token()
        if token is not self._run:
            if self._run is not None:
                self._rebase(now - self._last_now)
            self._run = token
            self._scopes = set()
        self._last_now = now
        return now

    def _rebase(self, delta: float) -> None:
        # A new trio run has its own clock: keep every remaining TTL as it was.
        for queue in self.queues.values():
            for msg in itertools.chain(queue.fresh, queue.requeued):
                if msg.expires_at != _INF:
                    msg.expires_at += delta
            queue.last_used += delta
        self._deadline = _INF if self._deadline == _INF else self._deadline + delta

    def note_deadline(self, queue: _Queue, deadline: float) -> None:
        self._timed.add(queue)
        if deadline < self._deadline:
            self._deadline = deadline
            for scope in self._scopes:
                scope.deadline = deadline

    def tick(self) -> float:
        """Expire whatever is due; return the current time."""
        now = self.now()
        if now >= self._deadline:
            self._expire(now)
        return now

    def _expire(self, now: float) -> None:
        deadline = _INF
        for queue in list(self._timed):
            if queue.deleted:
                self._timed.discard(queue)
                continue
            if queue.idle_deadline() <= now:
                self.delete_queue(queue)
                continue
            self.expire_queue(queue, now)
            next_due = min(queue.head_deadline(), queue.idle_deadline())
            if next_due == _INF:
                self._timed.discard(queue)
            deadline = min(deadline, next_due)
        self._deadline = deadline
        for scope in self._scopes:
            scope.deadline = deadline

    def expire_queue(self, queue: _Queue, now: float) -> None:
        """Dead-letter (or drop) the expired messages at the head of *queue*."""
        while (head := queue._head()) is not None and head.expires_at <= now:
            self.dead_letter(queue, queue._pop_head(), "expired")

    async def wait(self, event: trio.Event) -> None:
        """Wait for *event*, waking up to expire messages when one is due."""
        while not event.is_set():
            with trio.move_on_at(self._deadline) as scope:
                self._scopes.add(scope)
                try:
                    await event.wait()
                finally:
                    self._scopes.discard(scope)
            if scope.cancelled_caught:
                self.tick()

    # -- dead letters

    def dead_letter(self, queue: _Queue, msg: _Message, reason: str) -> None:
        """Republish *msg* to *queue*'s dead-letter exchange, or drop it."""
        if queue.dlx is None:
            return
        exchange = self.exchanges.get(queue.dlx) if queue.dlx else None
        if exchange is None and queue.dlx:
            return  # RabbitMQ drops the message when the DLX does not exist
        props = msg.properties
        headers = copy_table(props.headers) if props.headers else {}
        routing_keys = [msg.routing_key]
        for extra in ("CC", "BCC"):
            value = headers.get(extra)
            if isinstance(value, list):
                routing_keys.extend(str(v) for v in value)
        headers.pop("BCC", None)
        death: dict[str, Any] = {
            "count": 1,
            "exchange": msg.exchange,
            "queue": queue.name,
            "reason": reason,
            "routing-keys": routing_keys,
            "time": datetime.datetime.now(datetime.UTC).replace(microsecond=0),
        }
        if props.expiration is not None:
            death["original-expiration"] = props.expiration
        deaths = headers.get("x-death")
        others: list[Any] = []
        matched = False
        for entry in deaths if isinstance(deaths, list) else ():
            if (
                not matched
                and isinstance(entry, dict)
                and entry.get("queue") == queue.name
                and entry.get("reason") == reason
            ):
                # The entry of this queue and reason moves to the front; only its
                # count changes (RabbitMQ keeps the first death's other fields).
                matched = True
                count = entry.get("count")
                death = {**entry, "count": (count if isinstance(count, int) else 0) + 1}
            else:
                others.append(entry)
        headers["x-death"] = [dict(sorted(death.items())), *others]
        headers.setdefault("x-first-death-exchange", msg.exchange)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-reason", reason)
        new_props = attrs.evolve(props, headers=headers, expiration=None)
        routing_key = queue.dlrk if queue.dlrk is not None else msg.routing_key
        keys = [routing_key] if queue.dlrk is not None else routing_keys
        targets: dict[str, None] = {}
        for key in keys:
            # The default exchange ("") routes by queue name.
            for name in exchange.route(key) if exchange is not None else (key,):
                targets[name] = None
        now = self._last_now
        exchange_name = queue.dlx
        for name in targets:
            target = self.queues.get(name)
            if target is None:
                continue
            if reason != "rejected" and self._is_cycle(name, headers["x-death"]):
                continue
            target.enqueue(exchange_name, routing_key, new_props, msg.body, now)

    @staticmethod
    def _is_cycle(queue: str, deaths: list[Any]) -> bool:
        # RabbitMQ's rabbit_dead_letter:is_cycle/2: a cycle back to *queue* with no
        # rejection in it would loop forever, so the message is dropped there.
        for index, entry in enumerate(deaths):
            if isinstance(entry, dict) and entry.get("queue") == queue:
                return all(
                    not (isinstance(e, dict) and e.get("reason") == "rejected")
                    for e in deaths[: index + 1]
                )
        return False

    # -- deletion

    def delete_queue(self, queue: _Queue) -> int:
        count = len(queue)
        queue.deleted = True
        queue.purge()
        if self.queues.get(queue.name) is queue:
            del self.queues[queue.name]
        for exchange in list(self.exchanges.values()):
            if exchange.unbind_queue(queue.name):
                self._auto_delete_exchange(exchange)
        for consumer in list(queue.consumers):
            consumer.cancelled_by_broker()
        queue.consumers.clear()
        self._timed.discard(queue)
        return count

    def _auto_delete_exchange(self, exchange: _Exchange) -> None:
        if exchange.auto_delete and not exchange.bindings:
            self.exchanges.pop(exchange.name, None)


_BROKERS: dict[str, _Broker] = {}


def _get_broker(name: str) -> _Broker:
    broker = _BROKERS.get(name)
    if broker is None:
        broker = _BROKERS[name] = _Broker(name)
    return broker


def drop_broker(name: str) -> None:
    """Forget the embedded broker called *name* (its state is lost).

    Connections still open to it keep working on the old state; new connections
    get a fresh, empty broker.
    """
    _BROKERS.pop(name, None)


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
        connection = MemoryConnection(_get_broker(self.name))
        try:
            yield connection
        finally:
            connection._close()


_connection_ids = itertools.count(1)


@final
class MemoryConnection(abc.Connection):
    """A connection to an embedded broker."""

    def __init__(self, broker: _Broker) -> None:
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

    def _queue(self, name: str, *, check_owner: bool = True) -> _Queue:
        queue = self._broker.queues.get(name)
        if queue is None:
            raise NotFound(404, f"NOT_FOUND - no queue '{name}' in vhost '/'")
        if check_owner:
            self._check_owner(queue)
        return queue

    def _check_owner(self, queue: _Queue) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not self:
            raise self._locked(queue)

    @staticmethod
    def _locked(queue: _Queue) -> ResourceLocked:
        return ResourceLocked(
            405,
            f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
            f"'{queue.name}' in vhost '/'. It could be originally declared on "
            "another connection or the exclusive property value does not match "
            "that of the original declaration.",
        )

    def _exchange(self, name: str) -> _Exchange:
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
            broker.exchanges[name] = _Exchange(
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
                name = f"amq.gen-{_random_token()}"
            queue = _Queue(
                broker, name, durable, auto_delete, self if exclusive else None, args
            )
            queue.last_used = now
            broker.queues[name] = queue
            if queue.expires is not None:
                broker.note_deadline(queue, queue.idle_deadline())
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
            for key in _CHECKED_QUEUE_ARGS:
                got_arg, have_arg = args.get(key), queue.arguments.get(key)
                if got_arg != have_arg:
                    raise PreconditionFailed(
                        406,
                        f"PRECONDITION_FAILED - inequivalent arg '{key}' for queue "
                        f"'{name}' in vhost '/': received {got_arg!r} but current is "
                        f"{have_arg!r}",
                    )
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
        if x is not None and x.unbind(queue, routing_key, args):
            self._broker._auto_delete_exchange(x)
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
        queues = broker.queues
        for name in names:
            queue = queues.get(name)
            if queue is None:
                continue
            routed = True
            if not queue.enqueue(exchange, routing_key, props, body, now):
                refused = True
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
        consumer = MemoryConsumer(self, q, tag, prefetch_count, exclusive)
        self._consumers.add(consumer)
        q.add_consumer(consumer)
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
            yield consumer
        finally:
            consumer._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            consumer._close()
        for queue in list(self._broker.queues.values()):
            if queue.exclusive_owner is self:
                self._broker.delete_queue(queue)


@final
class MemoryConsumer(abc.Consumer):
    """A consumer of one queue of the embedded broker."""

    def __init__(
        self,
        connection: MemoryConnection,
        queue: _Queue,
        tag: str,
        prefetch: int,
        exclusive: bool,
    ) -> None:
        self._connection = connection
        self._queue_obj = queue
        self._tag = tag
        self._prefetch = prefetch
        self.exclusive = exclusive
        self._tags = itertools.count(1)
        #: Deliveries not settled yet, by tag (given to receive() or still buffered).
        self._unsettled: dict[int, tuple[_Queue, _Message]] = {}
        self._buffer: deque[Delivery] = deque()
        self._wakeup: trio.Event | None = None
        self._state = "active"  # active | cancelled | broker-cancelled | closed

    @property
    def consumer_tag(self) -> str:
        return self._tag

    @property
    def queue(self) -> str:
        return self._queue_obj.name

    def __repr__(self) -> str:
        return f"<MemoryConsumer {self._tag} of {self.queue!r} ({self._state})>"

    # -- called by the queue

    def has_room(self) -> bool:
        return self._prefetch == 0 or len(self._unsettled) < self._prefetch

    def deliver(self, queue: _Queue, msg: _Message) -> None:
        tag = next(self._tags)
        self._unsettled[tag] = (queue, msg)
        props = msg.properties
        if props.headers:
            props = attrs.evolve(props, headers=copy_table(props.headers))
        self._buffer.append(
            Delivery(
                delivery_tag=tag,
                redelivered=msg.redelivered,
                exchange=msg.exchange,
                routing_key=msg.routing_key,
                properties=props,
                body=msg.body,
                consumer_tag=self._tag,
                settler=self._settle,
            )
        )
        self._wake()

    def cancelled_by_broker(self) -> None:
        if self._state == "active":
            self._state = "broker-cancelled"
            self._connection._broker.now()
            self._return_buffered()
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    # -- the seam

    async def receive(self) -> Delivery:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._buffer:
                delivery = self._buffer.popleft()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return delivery
            if self._state == "cancelled":
                raise trio.EndOfChannel
            if self._state == "broker-cancelled":
                raise ConsumerCancelled(
                    f"consumer {self._tag} was cancelled by the broker: queue "
                    f"{self.queue!r} was deleted"
                )
            if self._state == "closed":
                raise trio.ClosedResourceError("the consumer is closed")
            if self._wakeup is None:
                self._wakeup = trio.Event()
            await self._connection._broker.wait(self._wakeup)

    async def cancel(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state == "active":
            self._state = "cancelled"
            now = self._connection._broker.tick()
            queue = self._queue_obj
            queue.remove_consumer(self, now)
            self._return_buffered()
            queue.dispatch()
            self._wake()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _return_buffered(self) -> None:
        touched: set[_Queue] = set()
        while self._buffer:
            delivery = self._buffer.pop()
            queue, msg = self._unsettled.pop(delivery.delivery_tag)
            queue.requeue(msg)
            touched.add(queue)
        for queue in touched:
            queue.dispatch()

    def _close(self) -> None:
        if self._state == "closed":
            return
        now = self._connection._broker.now()
        self._buffer.clear()
        unsettled, self._unsettled = self._unsettled, {}
        queue = self._queue_obj
        was_active = self._state == "active"
        self._state = "closed"
        for q, msg in unsettled.values():
            q.requeue(msg)
        if was_active:
            queue.remove_consumer(self, now)
        self._connection._consumers.discard(self)
        queue.dispatch()
        self._wake()

    async def _settle(self, delivery: Delivery, how: Settlement, requeue: bool) -> None:
        # Not a cancellation point: settle, then only yield (see Delivery).
        entry = self._unsettled.pop(delivery.delivery_tag, None)
        if entry is None:
            raise trio.ClosedResourceError(
                f"cannot {how.value} delivery {delivery.delivery_tag}: its consumer "
                f"{self._tag} is closed and the message went back to its queue"
            )
        queue, msg = entry
        if how is not Settlement.ACK:
            if requeue:
                queue.requeue(msg)
            else:
                queue.broker.dead_letter(queue, msg, "rejected")
        queue.dispatch()
        await trio.lowlevel.cancel_shielded_checkpoint()
