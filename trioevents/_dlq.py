"""Dead-letter tools: look into a dead-letter queue, replay its messages, purge it.

A handler's dead-letter queue ``{queue}.dlq`` (:mod:`._events._retry`) holds the
events that failed for good, with ``x-trioevents-*`` headers saying why.
:func:`open_dead_letter_queue` opens one on the broker ``AMQP_URI`` names and
gives a :class:`DeadLetterQueue`:

* :meth:`~DeadLetterQueue.peek` reads the first messages and puts them back
  (``nack`` with requeue): nothing is consumed, but the broker marks each message
  it handed out ``redelivered``;
* :meth:`~DeadLetterQueue.replay` republishes each message where it was first
  published (or straight to the handler's queue), without our failure headers
  and ``x-death``, and acks the dead-letter copy only once the broker confirmed
  the republish: at-least-once, so an interrupted replay loses nothing and
  doubles at most the message in flight;
* :meth:`~DeadLetterQueue.purge` drops the ready messages.

``trioevents dlq list | replay | purge`` (:mod:`.cli`) is a thin shell over it.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from collections.abc import Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import trio

from ._codec import PayloadCodec
from ._config import Config
from ._connecting import connection_failure
from ._events._retry import (
    ATTEMPTS_HEADER,
    ERROR_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    TRACEBACK_HEADER,
)
from ._events._topology import DLQ_SUFFIX
from ._exceptions import InvalidRequest, NotFound, TransportError
from ._groups import unwrap_lone_exception
from ._host import transport_for_uri
from ._publisher import Publisher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from . import abc
    from ._message import Delivery, Properties, QueueDeclared

__all__ = [
    "DeadLetter",
    "DeadLetterListing",
    "DeadLetterQueue",
    "ReplayOutcome",
    "ReplayReport",
    "check_dead_letter_queue_name",
    "open_dead_letter_queue",
]

#: The prefix of the failure headers a handler adds to a dead letter.
FAILURE_HEADER_PREFIX: Final = "x-trioevents-"
#: Headers the broker adds when it dead-letters a message (``x-death`` counts the
#: retries), dropped from a replayed copy so that its attempts count from one.
_BROKER_DEATH_HEADERS: Final = ("x-death",)
_BROKER_DEATH_PREFIXES: Final = ("x-first-death-", "x-last-death-")
#: The most deliveries a replay holds unacked at once: prefetched ones, and the
#: skipped ones it keeps until the end so that they stay where they were.
REPLAY_WINDOW: Final = 100
#: The most messages one peek reads: AMQP's largest prefetch count, since it
#: holds them all unacked before it puts them back.
PEEK_MAX: Final = 65535
#: Seconds to wait for a message the queue reported but the broker does not
#: deliver (another consumer took it): then the queue is taken as shorter.
RECEIVE_WITHIN: Final = 10.0


def check_dead_letter_queue_name(queue: str, *, force: bool = False) -> None:
    """Refuse a queue whose name does not end in ``.dlq``, unless *force*.

    Raises
    ------
    InvalidRequest
        *queue* is not a dead-letter queue's name and *force* is false.
    """
    if not queue.endswith(DLQ_SUFFIX) and not force:
        raise InvalidRequest(
            f"{queue!r} is not a dead-letter queue (its name does not end in "
            f"{DLQ_SUFFIX!r}); force it (--force, force=True) to use it anyway"
        )


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or limit < 0):
        raise InvalidRequest(f"limit must be a number >= 0 or None, not {limit!r}")


def _json_safe(value: Any) -> Any:
    """*value* (an AMQP field value) as JSON can hold it."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def _is_failure_header(key: str) -> bool:
    return key.startswith(FAILURE_HEADER_PREFIX)


def _is_death_header(key: str) -> bool:
    return key in _BROKER_DEATH_HEADERS or key.startswith(_BROKER_DEATH_PREFIXES)


@final
@attrs.frozen
class DeadLetter:
    """A message of a dead-letter queue, and why it is there.

    Attributes
    ----------
    position
        Its place in the queue when it was read (1 for the head).
    body
        The message body, as it was published.
    properties
        Its properties as they are in the queue: the original ones, with the
        failure headers in :attr:`Properties.headers <trioevents.Properties>`.
    redelivered
        Whether the broker handed it out before (a :meth:`DeadLetterQueue.peek`
        does).
    """

    position: int
    body: bytes
    properties: Properties
    redelivered: bool

    @property
    def headers(self) -> Mapping[str, Any]:
        """The message's headers (an empty mapping if it has none)."""
        return self.properties.headers or {}

    def _text(self, key: str) -> str | None:
        value = self.headers.get(key)
        return value if isinstance(value, str) else None

    @property
    def error(self) -> str | None:
        """``"ExceptionType: message"`` of the last error (``x-trioevents-error``)."""
        return self._text(ERROR_HEADER)

    @property
    def traceback(self) -> str | None:
        """The end of the error's traceback (``x-trioevents-traceback``)."""
        return self._text(TRACEBACK_HEADER)

    @property
    def attempts(self) -> int | None:
        """How many times the handler was tried (``x-trioevents-attempts``)."""
        value = self.headers.get(ATTEMPTS_HEADER)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def original_exchange(self) -> str | None:
        """Where the event was first published (``""``: the default exchange)."""
        return self._text(ORIGINAL_EXCHANGE_HEADER)

    @property
    def original_routing_key(self) -> str | None:
        """The routing key the event was first published with (its event type)."""
        return self._text(ORIGINAL_ROUTING_KEY_HEADER)

    @property
    def message_id(self) -> str | None:
        """The message's ``message_id`` property, if it has one."""
        return self.properties.message_id

    @property
    def other_headers(self) -> dict[str, Any]:
        """The headers that are neither ours nor the broker's dead-lettering ones."""
        return {
            key: value
            for key, value in self.headers.items()
            if not _is_failure_header(key) and not _is_death_header(key)
        }

    def replay_properties(self, *, keep_origin: bool = False) -> Properties:
        """The properties a replayed copy is published with.

        The original properties and headers, without the ``x-trioevents-*``
        failure headers and the broker's ``x-death`` / ``x-first-death-*`` /
        ``x-last-death-*``, so that the handler counts its attempts from one
        again. *keep_origin* keeps the original exchange and routing key headers
        (for a copy published straight to the handler's queue, which tell the
        handler its event type).
        """
        kept = (ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER)
        headers = {
            key: value
            for key, value in self.headers.items()
            if not _is_death_header(key)
            and (not _is_failure_header(key) or (keep_origin and key in kept))
        }
        return attrs.evolve(self.properties, headers=headers or None)

    def decoded_body(self) -> tuple[bool, Any]:
        """``(True, value)`` if the body is UTF-8 JSON, else ``(False, None)``."""
        try:
            return True, json.loads(self.body.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError included
            return False, None

    def as_json(self) -> dict[str, Any]:
        """The message as a JSON-safe mapping (what ``dlq list --json`` prints).

        Keys: ``position``, ``message_id``, ``error``, ``attempts``,
        ``original_exchange``, ``original_routing_key``, ``redelivered``,
        ``content_type``, ``headers`` (:attr:`other_headers`; bytes in base64,
        timestamps in ISO 8601, decimals as strings), ``traceback``, and
        ``body`` (the decoded JSON value) or ``body_base64`` (a body that is not
        UTF-8 JSON).
        """
        decoded, value = self.decoded_body()
        body = (
            {"body": value}
            if decoded
            else {"body_base64": base64.b64encode(self.body).decode("ascii")}
        )
        return {
            "position": self.position,
            "message_id": self.message_id,
            "error": self.error,
            "attempts": self.attempts,
            "original_exchange": self.original_exchange,
            "original_routing_key": self.original_routing_key,
            "redelivered": self.redelivered,
            "content_type": self.properties.content_type,
            "headers": _json_safe(self.other_headers),
            "traceback": self.traceback,
            **body,
        }


async def _receive(consumer: abc.Consumer) -> Delivery | None:
    """The next delivery, or ``None`` if none comes within :data:`RECEIVE_WITHIN`."""
    with trio.move_on_after(RECEIVE_WITHIN):
        return await consumer.receive()
    return None


def _letter(position: int, delivery: Delivery) -> DeadLetter:
    return DeadLetter(
        position, delivery.body, delivery.properties, delivery.redelivered
    )


@final
@attrs.frozen
class DeadLetterListing:
    """What :meth:`DeadLetterQueue.peek` saw.

    Attributes
    ----------
    queue
        The queue's name.
    message_count
        The messages ready in the queue.
    consumer_count
        The queue's consumers (a dead-letter queue normally has none).
    letters
        The first messages, in queue order.
    """

    queue: str
    message_count: int
    consumer_count: int
    letters: tuple[DeadLetter, ...]

    def as_json(self) -> dict[str, Any]:
        """The listing as a JSON-safe mapping (what ``dlq list --json`` prints).

        Keys: ``queue``, ``message_count``, ``consumer_count`` and ``messages``
        (each :meth:`DeadLetter.as_json`).
        """
        return {
            "queue": self.queue,
            "message_count": self.message_count,
            "consumer_count": self.consumer_count,
            "messages": [letter.as_json() for letter in self.letters],
        }


@final
@attrs.frozen
class ReplayOutcome:
    """What became of one message of a replay.

    Attributes
    ----------
    letter
        The dead letter.
    exchange, routing_key
        Where it was (or would have been) republished; ``None`` if its
        headers do not say.
    skipped
        Why it was not replayed (it was left in the queue, where it was), or
        ``None`` if it was replayed: republished, confirmed, and acked.
    """

    letter: DeadLetter
    exchange: str | None
    routing_key: str | None
    skipped: str | None = None

    @property
    def replayed(self) -> bool:
        """Whether the message was republished (and removed from the queue)."""
        return self.skipped is None


@final
@attrs.frozen
class ReplayReport:
    """What :meth:`DeadLetterQueue.replay` did.

    Attributes
    ----------
    queue
        The dead-letter queue.
    outcomes
        One per message read, in queue order.
    left
        The messages ready in the queue when the replay was done (skipped ones,
        ones beyond the limit, and any that failed again meanwhile).
    stopped
        Why the replay stopped before its limit, or ``None``.
    """

    queue: str
    outcomes: tuple[ReplayOutcome, ...]
    left: int
    stopped: str | None = None

    @property
    def replayed(self) -> tuple[ReplayOutcome, ...]:
        """The outcomes of the messages replayed."""
        return tuple(outcome for outcome in self.outcomes if outcome.replayed)

    @property
    def skipped(self) -> tuple[ReplayOutcome, ...]:
        """The outcomes of the messages skipped (left in the queue)."""
        return tuple(outcome for outcome in self.outcomes if not outcome.replayed)


@final
class DeadLetterQueue:
    """A dead-letter queue on a connection: peek, replay, purge.

    Opened by :func:`open_dead_letter_queue`, which checked that the queue
    exists.
    """

    def __init__(
        self, name: str, connection: abc.Connection, publisher: Publisher
    ) -> None:
        self._name = name
        self._connection = connection
        self._publisher = publisher

    def __repr__(self) -> str:
        return f"<DeadLetterQueue {self._name!r}>"

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._name

    @property
    def handler_queue(self) -> str | None:
        """The handler queue this is the dead-letter queue of (``None``: not a ``.dlq``)."""
        if not self._name.endswith(DLQ_SUFFIX):
            return None
        return self._name.removesuffix(DLQ_SUFFIX)

    async def _declared(self) -> QueueDeclared:
        try:
            return await self._connection.declare_queue(self._name, passive=True)
        except NotFound as exc:
            raise NotFound(
                exc.reply_code,
                f"{exc.reply_text} (a dead-letter queue is declared when its first "
                "message is dead-lettered: none was yet, or the name is wrong)",
            ) from exc

    async def count(self) -> int:
        """Return how many messages are ready in the queue.

        Raises
        ------
        NotFound
            The queue does not exist (any more).
        """
        return (await self._declared()).message_count

    async def peek(self, limit: int = 10) -> DeadLetterListing:
        """Read the first *limit* messages (at most 65535), then put them back.

        The messages are consumed, then nacked with requeue: the broker puts each
        back at its place (RabbitMQ does for a classic queue that has no other
        consumer; the embedded broker always does), marked ``redelivered``. On
        a quorum queue, each peek counts as a delivery towards its
        ``delivery-limit``.

        Raises
        ------
        NotFound
            The queue does not exist.
        InvalidRequest
            *limit* is negative.
        """
        _check_limit(limit)
        declared = await self._declared()
        wanted = min(limit, declared.message_count, PEEK_MAX)
        deliveries: list[Delivery] = []
        if wanted:
            async with self._connection.open_consumer(
                self._name, prefetch_count=wanted
            ) as consumer:
                while len(deliveries) < wanted:
                    delivery = await _receive(consumer)
                    if delivery is None:
                        break  # the queue is shorter than it was: another consumer
                    deliveries.append(delivery)
                await consumer.cancel()
                for delivery in deliveries:
                    await delivery.nack(requeue=True)
        letters = tuple(
            _letter(number, delivery) for number, delivery in enumerate(deliveries, 1)
        )
        return DeadLetterListing(
            self._name, declared.message_count, declared.consumer_count, letters
        )

    async def replay(
        self,
        limit: int | None = None,
        *,
        to_handler_queue: bool = False,
        on_outcome: Callable[[ReplayOutcome], object] | None = None,
    ) -> ReplayReport:
        """Republish the first *limit* messages (all if ``None``); ack each once confirmed.

        Each message goes back to the exchange and routing key it was first
        published with (its ``x-trioevents-original-*`` headers), so every
        handler bound there gets it again; with *to_handler_queue*, straight to
        the handler's queue (this queue's name without ``.dlq``, through the
        default exchange), so only the handler that failed does. The copy keeps
        the body and properties; its headers lose the failure headers and
        ``x-death`` (see :meth:`DeadLetter.replay_properties`). It is published
        ``mandatory``: a copy no queue would take is refused, not dropped.

        Messages are replayed one at a time, in queue order, each acked only
        after the broker confirmed its copy. A message whose headers do not say
        where to, or whose copy the broker refuses, is skipped: it stays in the
        queue, at its place (held unacked until the end, then requeued); once
        100 skipped messages are held, the replay stops early and says so in
        :attr:`ReplayReport.stopped`. Only the messages in the queue when the
        replay started are read, so a message that fails again and comes back
        is not replayed twice.

        If the replay is interrupted (cancelled, or the connection is lost), the
        messages not yet acked stay in the queue and a new replay picks them up:
        nothing is lost, and at most one message is replayed twice, the one in
        flight (its copy confirmed, its ack not yet at the broker).

        Parameters
        ----------
        limit
            The most messages to read (replayed or skipped).
        to_handler_queue
            Republish to the handler's queue instead of the original exchange.
        on_outcome
            Called with each :class:`ReplayOutcome` as soon as it is known
            (after the ack, for a replayed message).

        Raises
        ------
        NotFound
            The queue does not exist.
        InvalidRequest
            *limit* is negative, or *to_handler_queue* on a queue that is not a
            ``.dlq``.
        ConnectionLost
            The connection was lost (the messages not acked stay in the queue).
        BrokerUnavailable
            The broker did not confirm a copy within ``PUBLISH_TIMEOUT``.
        """
        _check_limit(limit)
        handler_queue = self.handler_queue
        if to_handler_queue and handler_queue is None:
            raise InvalidRequest(
                f"{self._name!r} is not a dead-letter queue: no handler queue to "
                "replay to"
            )
        declared = await self._declared()
        total = declared.message_count
        wanted = total if limit is None else min(limit, total)
        outcomes: list[ReplayOutcome] = []
        stopped: str | None = None
        if wanted:
            with _collapse_connection_failures():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._publisher.run, self._connection)
                    stopped = await self._replay(
                        wanted,
                        handler_queue if to_handler_queue else None,
                        outcomes,
                        on_outcome,
                    )
                    nursery.cancel_scope.cancel()
        left = (await self._declared()).message_count
        return ReplayReport(self._name, tuple(outcomes), left, stopped)

    async def _replay(
        self,
        wanted: int,
        handler_queue: str | None,
        outcomes: list[ReplayOutcome],
        on_outcome: Callable[[ReplayOutcome], object] | None,
    ) -> str | None:
        """Replay *wanted* messages; return why it stopped early, if it did."""
        window = min(wanted, REPLAY_WINDOW)
        held: list[Delivery] = []
        stopped: str | None = None
        async with self._connection.open_consumer(
            self._name, prefetch_count=window
        ) as consumer:
            while len(outcomes) < wanted:
                if len(held) == window:
                    stopped = (
                        f"{len(held)} skipped messages fill the window of "
                        f"{window} unacked messages"
                    )
                    break
                delivery = await _receive(consumer)
                if delivery is None:
                    stopped = (
                        f"no message came within {RECEIVE_WITHIN:g} s: the queue "
                        "is shorter than it was (another consumer?)"
                    )
                    break
                outcome = await self._replay_one(
                    _letter(len(outcomes) + 1, delivery), handler_queue
                )
                if outcome.replayed:
                    await delivery.ack()
                else:
                    held.append(delivery)
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
            await consumer.cancel()
            for delivery in held:
                await delivery.nack(requeue=True)
        return stopped

    async def _replay_one(
        self, letter: DeadLetter, handler_queue: str | None
    ) -> ReplayOutcome:
        """Republish *letter* and wait for the confirm; say what became of it."""
        exchange, routing_key = letter.original_exchange, letter.original_routing_key
        if handler_queue is not None:
            exchange, routing_key = "", handler_queue
        elif exchange is None or routing_key is None:
            missing = " or ".join(
                header
                for header, value in (
                    (ORIGINAL_EXCHANGE_HEADER, exchange),
                    (ORIGINAL_ROUTING_KEY_HEADER, routing_key),
                )
                if value is None
            )
            return ReplayOutcome(
                letter,
                exchange,
                routing_key,
                f"no {missing} header: nowhere to replay it to",
            )
        properties = letter.replay_properties(keep_origin=handler_queue is not None)
        try:
            await self._publisher.publish(
                exchange, routing_key, letter.body, properties, mandatory=True
            )
        except TransportError as exc:
            if connection_failure(exc) is not None:
                raise
            return ReplayOutcome(
                letter, exchange, routing_key, f"the broker refused the copy: {exc}"
            )
        return ReplayOutcome(letter, exchange, routing_key)

    async def purge(self) -> int:
        """Drop the ready messages for good; return how many there were.

        Messages a consumer holds unacked are not dropped.

        Raises
        ------
        NotFound
            The queue does not exist.
        """
        await self._declared()
        return await self._connection.purge_queue(self._name)


@contextmanager
def _collapse_connection_failures() -> Iterator[None]:
    """Raise a group of connection failures as its first, a lone exception as itself."""
    try:
        with unwrap_lone_exception():
            yield
    except BaseExceptionGroup as group:
        cause = connection_failure(group)
        if cause is None:
            raise
        raise cause from None


@asynccontextmanager
async def open_dead_letter_queue(
    queue: str,
    config: Config | Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    transport: abc.Transport | None = None,
) -> AsyncIterator[DeadLetterQueue]:
    """Connect to the broker and open the dead-letter queue *queue*.

    Works on RabbitMQ and on the embedded broker (``memory://``, this process's).

    Parameters
    ----------
    queue
        The queue's name, ``{handler queue}.dlq``.
    config
        ``AMQP_URI`` (default ``memory://``), ``PUBLISH_TIMEOUT`` and the other
        connection settings of :class:`~trioevents.Config`.
    force
        Open a queue whose name does not end in ``.dlq`` too.
    transport
        A transport to use instead of the one ``AMQP_URI`` names.

    Raises
    ------
    InvalidRequest
        *queue* is not a ``.dlq`` and not *force*.
    NotFound
        There is no such queue.
    BrokerUnavailable
        The broker cannot be reached.

    Examples
    --------
    ::

        async with open_dead_letter_queue(
            "evt-orders-order_placed--billing.charge.dlq", config
        ) as dlq:
            for letter in (await dlq.peek(5)).letters:
                print(letter.message_id, letter.error)
            report = await dlq.replay()
    """
    check_dead_letter_queue_name(queue, force=force)
    config = config if isinstance(config, Config) else Config.from_mapping(config or {})
    if transport is None:
        transport = transport_for_uri(config.amqp_uri, config)
    publisher = Publisher(config, PayloadCodec.from_config(config))
    async with transport.open_connection() as connection:
        dead_letters = DeadLetterQueue(queue, connection, publisher)
        await dead_letters.count()  # it exists
        try:
            yield dead_letters
        finally:
            publisher.close()
