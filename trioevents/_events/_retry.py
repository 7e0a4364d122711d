"""Bounded retries with backoff: the policy, and what a copy of a failed event carries.

The queues are in :mod:`._topology`. For a handler queue ``Q``:

* ``Q.retry.<ms>`` -- one queue per delay, with ``x-message-ttl=<ms>`` and
  ``x-dead-letter-exchange=""`` / ``x-dead-letter-routing-key=Q``: a message put
  there comes back to ``Q`` when its delay is over. The broker records each trip
  in the message's ``x-death`` header, which is where attempts are counted from.
* ``Q.dlq`` -- the dead-letter queue: messages that failed for good (retries
  exhausted, an error the policy does not retry, an undecodable payload), with
  their original body and headers plus ``x-trioevents-*`` headers saying why.

Both are declared when first needed, so a healthy service has neither (on
quorum queues they are declared with the handler queue: see :mod:`._topology`).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from .._exceptions import EventHandlerConfigurationError, describe_exception
from ._topology import RETRY_INFIX

if TYPE_CHECKING:
    from .._message import Delivery

__all__ = [
    "ERROR_HEADER",
    "ORIGINAL_ROUTING_KEY_HEADER",
    "Backoff",
    "attempts_so_far",
    "check_combination",
    "copied_headers",
    "dead_letter_headers",
]

#: Header of a dead-lettered message: ``"ExceptionType: message"``.
ERROR_HEADER: Final = "x-trioevents-error"
#: The last lines of the traceback of the error.
TRACEBACK_HEADER: Final = "x-trioevents-traceback"
#: Where the message was first published.
ORIGINAL_EXCHANGE_HEADER: Final = "x-trioevents-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER: Final = "x-trioevents-original-routing-key"
#: How many times the handler was tried.
ATTEMPTS_HEADER: Final = "x-trioevents-attempts"
#: An ``x-death`` header RabbitMQ could not update, as it came.
INVALID_X_DEATH_HEADER: Final = "x-trioevents-invalid-x-death"
_TRACEBACK_LIMIT = 4000


@final
@attrs.frozen(init=False)
class Backoff:
    """A retry policy: how long to wait before each new attempt, and for what.

    ``Backoff(1, 5, 30)`` tries a failing handler again after 1 s, then 5 s, then
    30 s; if the fourth attempt fails too, the message goes to the dead-letter
    queue ``{queue}.dlq``. Delays are kept by the broker (TTL queues), so a retry
    survives a restart of the service.

    Parameters
    ----------
    *delays
        Seconds to wait before the 2nd, 3rd, ... attempt (at least one).
    retry_on
        The exception types worth retrying; any other error sends the message
        to the dead-letter queue at once.

    Raises
    ------
    EventHandlerConfigurationError
        No delay, a negative delay, or *retry_on* is not a tuple of exception
        types.
    """

    delays: tuple[float, ...]
    retry_on: tuple[type[BaseException], ...]

    def __init__(
        self,
        *delays: float,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> None:
        checked: list[float] = []
        for delay in delays:
            value: object = delay
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or value < 0
            ):
                raise EventHandlerConfigurationError(
                    f"Backoff delays must be non-negative numbers of seconds, not {delay!r}"
                )
            checked.append(float(value))
        if not checked:
            raise EventHandlerConfigurationError("Backoff needs at least one delay")
        types: object = retry_on
        if not isinstance(types, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in types
        ):
            raise EventHandlerConfigurationError(
                f"retry_on must be a tuple of exception types, not {retry_on!r}"
            )
        self.__attrs_init__(tuple(checked), retry_on)

    @classmethod
    def exponential(
        cls,
        first: float = 1.0,
        *,
        factor: float = 2.0,
        max_delay: float = 300.0,
        retries: int = 5,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> Backoff:
        """Build ``first, first*factor, ...`` capped at *max_delay*, *retries* times."""
        delays = [min(first * factor**n, max_delay) for n in range(retries)]
        return cls(*delays, retry_on=retry_on)

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per delay."""
        return len(self.delays) + 1

    def delay_ms(self, attempt: int) -> int | None:
        """Milliseconds to wait after failed attempt *attempt*; None: give up."""
        if attempt >= self.max_attempts:
            return None
        return round(self.delays[attempt - 1] * 1000)

    def retries(self, error: BaseException) -> bool:
        """Tell whether *error* is worth another attempt."""
        return isinstance(error, self.retry_on)


def attempts_so_far(headers: Mapping[str, Any] | None, queue: str) -> int:
    """Count the attempts a delivery from *queue* already had, from ``x-death``.

    Each trip through a retry queue of *queue* (``reason == "expired"``) is one
    failed attempt; the delivery at hand is the next one.
    """
    if not headers:
        return 1
    deaths = headers.get("x-death")
    prefix = f"{queue}{RETRY_INFIX}"
    failed = 0
    for entry in deaths if isinstance(deaths, list) else ():
        if (
            isinstance(entry, Mapping)
            and entry.get("reason") == "expired"
            and isinstance(entry.get("queue"), str)
            and entry["queue"].startswith(prefix)
        ):
            count = entry.get("count")
            failed += count if isinstance(count, int) and count > 0 else 1
    return failed + 1


def _describe(error: BaseException) -> tuple[str, str]:
    summary = describe_exception(error)
    # traceback formats an exception whose __str__ fails as such, not raising
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    text = "".join(lines)
    return summary[:1000], text[-_TRACEBACK_LIMIT:]


def _is_sound_death(entry: object) -> bool:
    """Tell whether RabbitMQ can update *entry* of an ``x-death`` header.

    RabbitMQ 3.10 crashes the queue, and loses the message, when it dead-letters
    a message whose ``x-death`` holds something other than tables, or a table
    whose ``count`` is not an integer.
    """
    if not isinstance(entry, Mapping):
        return False
    count = entry.get("count", 1)
    return isinstance(count, int) and not isinstance(count, bool)


def copied_headers(delivery: Delivery) -> dict[str, Any]:
    """The original headers of *delivery*, safe to publish to a retry queue.

    Everything is kept but the entries of a malformed ``x-death`` header that
    RabbitMQ could not update (see :func:`_is_sound_death`); if any is dropped,
    the header as it came is kept under ``x-trioevents-invalid-x-death``.
    """
    headers = dict(delivery.properties.headers or {})
    deaths = headers.get("x-death")
    if deaths is None:
        return headers
    sound = (
        [entry for entry in deaths if _is_sound_death(entry)]
        if isinstance(deaths, list)
        else []
    )
    if not isinstance(deaths, list) or len(sound) != len(deaths):
        headers[INVALID_X_DEATH_HEADER] = deaths
        if sound:
            headers["x-death"] = sound
        else:
            del headers["x-death"]
    return headers


def dead_letter_headers(
    delivery: Delivery,
    error: BaseException | str,
    attempts: int,
    *,
    brief: bool = False,
) -> dict[str, Any]:
    """Headers of the copy that goes to a retry or dead-letter queue.

    The original headers are kept (``x-death`` too, less what RabbitMQ could not
    handle: see :func:`copied_headers`); the original exchange and routing key,
    the attempt count and the last error are added. *brief* leaves out the
    traceback and cuts the error to 255 characters, for messages whose own
    headers leave little room in an AMQP frame.
    """
    headers = copied_headers(delivery)
    headers.setdefault(ORIGINAL_EXCHANGE_HEADER, delivery.exchange)
    headers.setdefault(ORIGINAL_ROUTING_KEY_HEADER, delivery.routing_key)
    headers[ATTEMPTS_HEADER] = attempts
    if isinstance(error, BaseException):
        summary, text = _describe(error)
        headers[ERROR_HEADER] = summary
        headers[TRACEBACK_HEADER] = text
    else:
        headers[ERROR_HEADER] = error[:1000]
        headers.pop(TRACEBACK_HEADER, None)
    if brief:
        headers[ERROR_HEADER] = headers[ERROR_HEADER][:255]
        headers.pop(TRACEBACK_HEADER, None)
    return headers


def check_combination(policy: Backoff | None, requeue_on_error: object) -> None:
    """Refuse ``retry=`` together with ``requeue_on_error``."""
    if policy is not None and requeue_on_error not in (False, ()):
        raise EventHandlerConfigurationError(
            "retry= and requeue_on_error= both decide what a failed event does; "
            "use one of them"
        )
