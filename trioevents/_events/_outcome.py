"""Carrying out the failure policy's decision for one delivery: log, copy, settle.

:func:`carry_out` takes a :data:`~._failure.Decision` and does the I/O: ack or
requeue the delivery, or put a copy in a retry or dead-letter queue (declared on
the delivery's connection, published through the host's one publish path) and
then ack it. Each outcome is logged once, with the event type, the handler, the
message id and the worker's call id.

At-least-once throughout: the delivery is acked only after its copy was
confirmed. If the broker cannot take the copy (headers too large for a frame),
smaller copies are tried; if none fits, the delivery is rejected without requeue
(it would fail the same way again). If the copy cannot be made because the
connection went away, the delivery is requeued.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import trio

from .._connecting import LOST
from .._exceptions import BrokerUnavailable, InvalidRequest, TransportError
from .._observe import Outcome
from ._failure import Ack, DeadLetter, Reject, Requeue, Retry
from ._retry import ORIGINAL_ROUTING_KEY_HEADER, copied_headers, dead_letter_headers
from ._topology import dead_letter_queue, retry_queue

if TYPE_CHECKING:
    from .. import abc
    from .._message import Delivery
    from .._publisher import Publisher
    from ._failure import Decision
    from ._retry import Backoff
    from ._topology import QueueSpec

__all__ = ["COPY_RETRY_DELAYS", "HandlerSite", "carry_out", "event_type_of", "settle"]

logger = logging.getLogger("trioevents.events")

#: Seconds before each new try of a copy the broker refused (the last repeats).
COPY_RETRY_DELAYS: Final = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: A refused copy is logged at most once per this many seconds.
_COPY_LOG_INTERVAL: Final = 60.0


@final
@attrs.frozen(eq=False)
class HandlerSite:
    """Where a delivery is handled, as the outcome's logs and copies need it.

    Attributes
    ----------
    source_service
        The service that dispatched the event.
    where
        ``"{service}.{method}"`` of the handler.
    queue
        The handler's queue (retry and dead-letter queues are named after it).
    retry
        The handler's retry policy, if any (for the logs' attempt counts).
    connection
        The connection the delivery came on: the copy's queue is declared on it.
    publisher
        The host's publish path, which publishes the copies.
    """

    source_service: str
    where: str
    queue: QueueSpec
    retry: Backoff | None
    connection: abc.Connection
    publisher: Publisher


def event_type_of(delivery: Delivery) -> str:
    """The event type of *delivery*, also when it comes back from a retry queue."""
    headers = delivery.properties.headers or {}
    original = headers.get(ORIGINAL_ROUTING_KEY_HEADER)
    if isinstance(original, str) and len(original) <= 255:  # a routing key's limit
        return original
    return delivery.routing_key


async def carry_out(
    decision: Decision,
    delivery: Delivery,
    site: HandlerSite,
    *,
    error: BaseException | None,
    attempt: int,
    call_id: str | None,
) -> Outcome:
    """Log *decision* for *delivery* and carry it out (see the module docstring).

    Returns what became of the delivery.

    Parameters
    ----------
    decision
        What :func:`~._failure.decide` decided.
    delivery
        The delivery to settle.
    site
        The handler's queue, connection and publisher.
    error
        What the handler raised, or why the payload could not be decoded.
    attempt
        Which attempt this was.
    call_id
        The worker's call id (``None`` if no worker ran).
    """
    if error is None and type(decision) is Ack:
        await settle(delivery)  # the common case: nothing to log
        return Outcome.ACK
    props = delivery.properties
    event = (event_type_of(delivery), site.source_service, site.where, props.message_id)
    exc_info = None if error is None else (type(error), error, error.__traceback__)
    match decision:
        case Ack() if error is None:
            await settle(delivery)
            return Outcome.ACK
        case Ack():
            logger.error(
                "error handling event %r from %r in %s (message id %s, call id "
                "%s); acked (not requeued)",
                *event,
                call_id,
                exc_info=exc_info,
            )
            await settle(delivery)
            return Outcome.ACK
        case Requeue():
            logger.error(
                "error handling event %r from %r in %s (message id %s, call id "
                "%s); requeued%s",
                *event,
                call_id,
                _past_delivery_limit(delivery, site.queue),
                exc_info=exc_info,
            )
            await settle(delivery, requeue=True, reject=True)
            return Outcome.REQUEUE
        case Retry(delay_ms):
            max_attempts = site.retry.max_attempts if site.retry is not None else "?"
            logger.warning(
                "error handling event %r from %r in %s (message id %s, call id "
                "%s), attempt %d of %s; retrying in %s s",
                *event,
                call_id,
                attempt,
                max_attempts,
                delay_ms / 1000,
                exc_info=exc_info,
            )
            assert error is not None
            return await _copy_then_ack(
                delivery,
                site,
                retry_queue(site.queue, delay_ms),
                error,
                attempt,
                Outcome.RETRY,
            )
        case Reject():
            logger.error(
                "rejecting event %r from %r for %s (message id %s) without "
                "requeue: %s (dead-lettered only if its queue has a dead-letter "
                "exchange)",
                *event,
                error,
            )
            await settle(delivery, requeue=False, reject=True)
            return Outcome.REJECTED
        case DeadLetter(undecodable=True):
            dlq = dead_letter_queue(site.queue)
            logger.error(
                "dead-lettering undecodable event %r from %r for %s (message id "
                "%s) to %r: %s",
                *event,
                dlq.name,
                error,
            )
            assert error is not None
            return await _copy_then_ack(
                delivery, site, dlq, error, attempt, Outcome.UNDECODABLE
            )
        case DeadLetter():
            dlq = dead_letter_queue(site.queue)
            logger.error(
                "error handling event %r from %r in %s (message id %s, call id "
                "%s), attempt %d; giving up: dead-lettered to %r",
                *event,
                call_id,
                attempt,
                dlq.name,
                exc_info=exc_info,
            )
            assert error is not None
            return await _copy_then_ack(
                delivery, site, dlq, error, attempt, Outcome.DEAD_LETTER
            )


def _past_delivery_limit(delivery: Delivery, queue: QueueSpec) -> str:
    """Say so if requeueing *delivery* makes its quorum queue dead-letter it.

    The queue's ``x-delivery-limit`` is a backstop: once a message was
    redelivered that many times (``x-delivery-count``), the next return moves it
    to the queue's dead-letter target instead.
    """
    limit = queue.arguments.get("x-delivery-limit")
    count = (delivery.properties.headers or {}).get("x-delivery-count", 0)
    if not isinstance(limit, int) or not isinstance(count, int) or count < limit:
        return ""
    return (
        f", but it was redelivered {count} times, the queue's delivery limit: the "
        f"broker moves it to {dead_letter_queue(queue).name!r} instead"
    )


async def _copy_then_ack(
    delivery: Delivery,
    site: HandlerSite,
    queue: QueueSpec,
    error: BaseException,
    attempt: int,
    copied: Outcome,
) -> Outcome:
    """Put a copy of *delivery* in *queue*, then ack it (at-least-once).

    Returns *copied* once the copy is in; :attr:`Outcome.REJECTED` or
    :attr:`Outcome.REQUEUE` if it could not be made.

    The copy carries the original headers plus ours; if the broker cannot take
    that (headers too large for an AMQP frame), a copy with a brief error, then
    one with the original headers alone. Only if even that is refused is the
    delivery rejected without requeue: it would fail again.

    If the broker refuses the copy for another reason (the queue is full with
    ``reject-publish``, permissions forbid it, it exists with other arguments),
    the delivery is kept, unacked, and the copy tried again after a growing
    delay (:data:`COPY_RETRY_DELAYS`), logged at most once a minute: never a hot
    loop, and the handler does not run again. If the connection goes away
    meanwhile, the delivery is requeued.
    """
    copies = [
        dead_letter_headers(delivery, error, attempt),
        dead_letter_headers(delivery, error, attempt, brief=True),
        copied_headers(delivery),
    ]
    what = (event_type_of(delivery), delivery.properties.message_id, queue.name)
    refusals = 0
    logged_at = -math.inf
    while True:
        try:
            await _copy(delivery, site, queue, copies, what)
        except InvalidRequest as exc:
            logger.error(
                "cannot copy event %r (message id %s) to %r: %s; rejected without "
                "requeue (dead-lettered only if its queue has a dead-letter exchange)",
                *what,
                exc,
            )
            await settle(delivery, requeue=False, reject=True)
            return Outcome.REJECTED
        except (*LOST, BrokerUnavailable) as exc:
            logger.error(
                "could not move event %r (message id %s) to %r: %s; requeued",
                *what,
                exc,
            )
            await settle(delivery, requeue=True, reject=True)
            return Outcome.REQUEUE
        except TransportError as exc:
            delay = COPY_RETRY_DELAYS[min(refusals, len(COPY_RETRY_DELAYS) - 1)]
            refusals += 1
            now = trio.current_time()
            if now - logged_at >= _COPY_LOG_INTERVAL:
                logged_at = now
                logger.error(
                    "the broker refuses the copy of event %r (message id %s) to %r: "
                    "%s; the event is kept unacked and the copy tried again in %s s "
                    "(refused %d time%s so far)",
                    *what,
                    exc,
                    delay,
                    refusals,
                    "" if refusals == 1 else "s",
                )
            await trio.sleep(delay)
            continue
        break
    if refusals:
        logger.warning(
            "copied event %r (message id %s) to %r after %d refusal%s",
            *what,
            refusals,
            "" if refusals == 1 else "s",
        )
    await settle(delivery)
    return copied


async def _copy(
    delivery: Delivery,
    site: HandlerSite,
    queue: QueueSpec,
    copies: list[dict[str, Any]],
    what: tuple[str, str | None, str],
) -> None:
    """Declare *queue* and publish the first of *copies* the broker can take."""
    await queue.declare(site.connection)
    for number, headers in enumerate(copies, 1):
        properties = attrs.evolve(
            delivery.properties, headers=headers or None, expiration=None
        )
        try:
            await site.publisher.publish("", queue.name, delivery.body, properties)
            return
        except InvalidRequest as exc:
            if number == len(copies):
                raise
            logger.warning(
                "cannot copy event %r (message id %s) to %r with our headers: "
                "%s; trying with fewer",
                *what,
                exc,
            )


async def settle(
    delivery: Delivery, *, requeue: bool = False, reject: bool = False
) -> None:
    """Ack or reject *delivery*.

    Settling is not a cancellation point (see :class:`~trioevents.Delivery`):
    once called it settles, so a late cancel cannot leave it half done. A
    connection that went away is logged: the broker redelivers the message.
    """
    try:
        if reject:
            await delivery.reject(requeue=requeue)
        else:
            await delivery.ack()
    except (TransportError, trio.ClosedResourceError) as exc:
        logger.warning(
            "could not settle delivery %s of %r: %s",
            delivery.delivery_tag,
            event_type_of(delivery),
            exc,
        )
