"""The embedded broker's state: messages, queues, the broker and its registry.

Every change of state here is synchronous. The only wait is :meth:`Broker.wait`,
which the consumers use: it carries the broker's next TTL deadline, so expiry
happens on time without a background task (and instantly under trio's
``autojump_clock``). :meth:`Broker.tick` expires what is due; the connection
calls it before every operation.

The seam adapters (``_transport``, ``_consumer``) import this module, never the
other way round: a queue knows its consumers only as :class:`Subscriber` and the
connection that owns an exclusive queue only by identity.
"""

from __future__ import annotations

import datetime
import heapq
import itertools
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from .._exceptions import PreconditionFailed
from .._fieldtable import copy_table
from .._message import ExchangeType
from ._queuetypes import QUORUM, check_new_queue
from ._routing import Exchange

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._message import Properties

__all__ = [
    "Broker",
    "Message",
    "Queue",
    "Subscriber",
    "drop_broker",
    "get_broker",
]

_INF: Final = float("inf")
#: Ready messages a consumed queue may hold before its publishers wait.
FLOW_LIMIT: Final = 1000
#: ... and how far its consumers take it down before they go on.
FLOW_RESUME: Final = FLOW_LIMIT // 2
_OVERFLOW_MODES: Final = ("drop-head", "reject-publish", "reject-publish-dlx")


# --------------------------------------------------------------------------- messages


class Message:
    """A message in one queue (each queue holds its own copy of the envelope)."""

    __slots__ = (
        "body",
        "delivery_count",
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
        #: How many times a quorum queue took it back (``x-delivery-count``).
        self.delivery_count = 0

    def __lt__(self, other: Message) -> bool:  # for the requeue heap
        return self.seq < other.seq


class Subscriber(Protocol):
    """What a queue needs of a consumer (:class:`~trioevents._memory.MemoryConsumer`)."""

    @property
    def exclusive(self) -> bool:
        """Whether the consumer asked to be the queue's only consumer."""

    def has_room(self) -> bool:
        """Tell whether the consumer may take another delivery (its prefetch)."""

    def deliver(self, queue: Queue, msg: Message) -> None:
        """Take *msg* from *queue*; it is the consumer's until settled or returned."""

    def cancelled_by_broker(self) -> None:
        """Stop consuming: the queue was deleted."""


# --------------------------------------------------------------------------- queues


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
class Queue:
    """A queue: its ready messages in order, its consumers and its limits.

    A classic queue puts a requeued message back at its original position; a
    quorum queue (``x-queue-type``) puts it at the back, counts each return in
    the message's ``x-delivery-count`` and, past ``x-delivery-limit`` returns,
    dead-letters it (reason ``delivery_limit``) or drops it.

    Raises
    ------
    PreconditionFailed
        An argument (``x-message-ttl``, ``x-overflow``, ...) has an invalid value,
        or the queue type refuses an argument or a flag (see :mod:`._queuetypes`).
    """

    broker: Broker
    name: str
    durable: bool
    auto_delete: bool
    #: The connection that declared the queue exclusive (compared by identity).
    exclusive_owner: object | None
    arguments: dict[str, Any]
    dlx: str | None = None
    dlrk: str | None = None
    message_ttl: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    expires: int | None = None
    #: ``"classic"`` or ``"quorum"``.
    queue_type: str = "classic"
    #: Returns a quorum queue allows before it dead-letters (``x-delivery-limit``).
    delivery_limit: float | None = None
    #: Messages never delivered, in order (all newer than any requeued one); on a
    #: quorum queue also the requeued ones, at the back.
    fresh: deque[Message] = attrs.Factory(deque)
    #: Requeued messages of a classic queue, a heap ordered by original position.
    requeued: list[Message] = attrs.Factory(list)
    ready_bytes: int = 0
    consumers: list[Subscriber] = attrs.Factory(list)
    next_consumer: int = 0
    had_consumer: bool = False
    seq: itertools.count[int] = attrs.Factory(itertools.count)
    last_used: float = 0.0
    deleted: bool = False
    #: Publishers waiting for the consumers to catch up (see :meth:`flooded`).
    drained: trio.Event | None = None

    def __attrs_post_init__(self) -> None:
        args, name = self.arguments, self.name
        self.queue_type = check_new_queue(
            name,
            durable=self.durable,
            auto_delete=self.auto_delete,
            exclusive=self.exclusive_owner is not None,
            arguments=args,
        )
        limit = args.get("x-delivery-limit")
        # RabbitMQ takes any value; only a number ever limits anything.
        if isinstance(limit, int | float) and not isinstance(limit, bool):
            self.delivery_limit = limit
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

    def _head(self) -> Message | None:
        if self.requeued:
            return self.requeued[0]
        return self.fresh[0] if self.fresh else None

    def _pop_head(self) -> Message:
        msg = heapq.heappop(self.requeued) if self.requeued else self.fresh.popleft()
        self.ready_bytes -= len(msg.body)
        if self.drained is not None and len(self) <= FLOW_RESUME:
            self.release_publishers()
        return msg

    # -- flow control

    def flooded(self) -> bool:
        """Whether publishers should wait: consumers are far behind.

        As RabbitMQ's flow control holds back a publisher that outruns a queue,
        a publish that leaves a consumed queue with more than
        :data:`FLOW_LIMIT` ready messages waits until its consumers took it
        down to :data:`FLOW_RESUME`. A queue nobody consumes keeps what it is
        given (its consumers may come later), as RabbitMQ's queues do.
        """
        return bool(self.consumers) and len(self) > FLOW_LIMIT

    async def wait_drained(self) -> None:
        """Wait until the consumers caught up (or went, or the queue did)."""
        if self.drained is None:
            self.drained = trio.Event()
        await self.drained.wait()

    def release_publishers(self) -> None:
        """Let the publishers waiting on this queue go on."""
        if self.drained is not None:
            self.drained.set()
            self.drained = None

    def head_deadline(self) -> float:
        """Return when the message at the head expires (``inf``: never)."""
        head = self._head()
        return _INF if head is None else head.expires_at

    def idle_deadline(self) -> float:
        """Return when the queue expires unused (``x-expires``; ``inf``: never)."""
        if self.expires is None or self.consumers:
            return _INF
        return self.last_used + self.expires / 1000

    def purge(self) -> int:
        """Drop every ready message; return how many there were."""
        count = len(self)
        self.fresh.clear()
        self.requeued.clear()
        self.ready_bytes = 0
        self.release_publishers()
        return count

    def expire(self, now: float) -> None:
        """Dead-letter (or drop) the expired messages at the head."""
        while (head := self._head()) is not None and head.expires_at <= now:
            self.broker.dead_letter(self, self._pop_head(), "expired")

    def rebase(self, delta: float) -> None:
        """Move every deadline by *delta*: the clock changed, the TTLs left did not."""
        for msg in itertools.chain(self.fresh, self.requeued):
            if msg.expires_at != _INF:
                msg.expires_at += delta
        self.last_used += delta

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
                msg = Message(-1, exchange, routing_key, properties, body, _INF)
                self.broker.dead_letter(self, msg, "maxlen")
            return False
        ttl = self.message_ttl
        if properties.expiration is not None:
            per_message = int(properties.expiration)
            ttl = per_message if ttl is None else min(ttl, per_message)
        expires_at = _INF if ttl is None else now + ttl / 1000
        msg = Message(
            next(self.seq), exchange, routing_key, properties, body, expires_at
        )
        self.fresh.append(msg)
        self.ready_bytes += len(body)
        if expires_at != _INF:
            self.broker.note_deadline(self, expires_at)
        self.dispatch()
        self._drop_overflow()
        if ttl == 0:
            self.expire(now)
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

    def requeue(self, msg: Message) -> None:
        """Take *msg* back, marked redelivered (see the class docstring for where)."""
        if self.deleted:
            return
        msg.redelivered = True
        if self.queue_type == QUORUM:
            msg.delivery_count += 1
            limit = self.delivery_limit
            if limit is not None and msg.delivery_count > limit:
                self.broker.dead_letter(self, msg, "delivery_limit")
                return
            self.fresh.append(msg)
        else:
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

    def add_consumer(self, consumer: Subscriber) -> None:
        """Start delivering to *consumer*."""
        self.consumers.append(consumer)
        self.had_consumer = True
        self.dispatch()

    def remove_consumer(self, consumer: Subscriber, now: float) -> None:
        """Stop delivering to *consumer*; an auto-delete queue may go with it."""
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self.last_used = now
        if not self.consumers:
            self.release_publishers()
        if self.auto_delete and self.had_consumer and not self.consumers:
            self.broker.delete_queue(self)
        elif self.expires is not None and not self.consumers:
            self.broker.note_deadline(self, self.idle_deadline())


# --------------------------------------------------------------------------- broker


class Broker:
    """The state of one named embedded broker: its exchanges, queues and clock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        for xname, xtype in (
            ("amq.direct", ExchangeType.DIRECT),
            ("amq.fanout", ExchangeType.FANOUT),
            ("amq.topic", ExchangeType.TOPIC),
        ):
            self.exchanges[xname] = Exchange(xname, xtype, True, False, False, {})
        #: Queues that may hold a message or an idle timer due at some point.
        self._timed: set[Queue] = set()
        self._deadline = _INF
        self._scopes: set[trio.CancelScope] = set()
        #: Lots whose receivers park without a timer (nothing was due).
        self._untimed: set[trio.lowlevel.ParkingLot] = set()
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
            self._untimed = set()
        self._last_now = now
        return now

    def _rebase(self, delta: float) -> None:
        # A new trio run has its own clock: keep every remaining TTL as it was.
        for queue in self.queues.values():
            queue.rebase(delta)
        self._deadline = _INF if self._deadline == _INF else self._deadline + delta

    def note_deadline(self, queue: Queue, deadline: float) -> None:
        """Remember that *queue* has something due at *deadline*."""
        self._timed.add(queue)
        if deadline < self._deadline:
            self._deadline = deadline
            for scope in self._scopes:
                scope.deadline = deadline
            # Receivers parked without a timer: wake them to park with one.
            untimed, self._untimed = self._untimed, set()
            for lot in untimed:
                lot.unpark_all()

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
            queue.expire(now)
            next_due = min(queue.head_deadline(), queue.idle_deadline())
            if next_due == _INF:
                self._timed.discard(queue)
            deadline = min(deadline, next_due)
        self._deadline = deadline
        for scope in self._scopes:
            scope.deadline = deadline

    async def park(self, lot: trio.lowlevel.ParkingLot) -> None:
        """Park in *lot* until unparked, or until a message is due to expire.

        Waiting receivers are what drives expiry (the broker has no task of its
        own): when the earliest deadline comes, the receiver wakes, expires
        what is due and returns, so that its caller looks again.
        """
        if self._deadline == _INF:
            # Nothing is due: no timer (a cancel scope per wait is the costly
            # part); a deadline noted meanwhile wakes us to park with one.
            self._untimed.add(lot)
            await lot.park()
            return
        with trio.move_on_at(self._deadline) as scope:
            self._scopes.add(scope)
            try:
                await lot.park()
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught:
            self.tick()

    # -- dead letters

    def dead_letter(self, queue: Queue, msg: Message, reason: str) -> None:
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

    # -- queues and bindings

    def add_queue(
        self,
        name: str,
        *,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: object | None,
        arguments: dict[str, Any],
        now: float,
    ) -> Queue:
        """Create queue *name*, unused since *now*.

        Raises
        ------
        PreconditionFailed
            An argument has an invalid value (see :class:`Queue`).
        """
        queue = Queue(self, name, durable, auto_delete, exclusive_owner, arguments)
        queue.last_used = now
        self.queues[name] = queue
        if queue.expires is not None:
            self.note_deadline(queue, queue.idle_deadline())
        return queue

    def unbind(
        self, exchange: Exchange, queue: str, key: str, arguments: dict[str, Any]
    ) -> None:
        """Remove a binding; an auto-delete exchange left with none goes too."""
        if exchange.unbind(queue, key, arguments):
            self._auto_delete_exchange(exchange)

    def delete_queue(self, queue: Queue) -> int:
        """Delete *queue* and its bindings, cancel its consumers; return its depth."""
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

    def _auto_delete_exchange(self, exchange: Exchange) -> None:
        if exchange.auto_delete and not exchange.bindings:
            self.exchanges.pop(exchange.name, None)


# --------------------------------------------------------------------------- registry

_BROKERS: dict[str, Broker] = {}


def get_broker(name: str) -> Broker:
    """Return the broker called *name*, creating it the first time."""
    broker = _BROKERS.get(name)
    if broker is None:
        broker = _BROKERS[name] = Broker(name)
    return broker


def drop_broker(name: str) -> None:
    """Forget the embedded broker called *name* (its state is lost).

    Connections still open to it keep working on the old state; new connections
    get a fresh, empty broker.
    """
    _BROKERS.pop(name, None)
