"""The failure policy of an event handler: what happens to a delivery, decided purely.

:func:`decide` looks at how the handler ended (or that the payload could not be
decoded), the attempt number and the handler's options, and returns one of

* :class:`Ack` -- the handler succeeded; or it failed, has neither ``retry`` nor
  ``requeue_on_error``, and the error is logged (nameko's behaviour);
* :class:`Requeue` -- ``requeue_on_error`` covers the error: the broker
  redelivers the message;
* :class:`Retry` -- the ``retry`` policy covers the error and has attempts left:
  a copy waits in the retry queue for ``delay_ms``, then comes back;
* :class:`DeadLetter` -- the payload (or the message's properties) cannot be
  decoded, or the ``retry`` policy gave up (attempts exhausted, or an error it
  does not retry): a copy goes to the dead-letter queue;
* :class:`Reject` -- the message's body was too large to be read at all: there
  is nothing to copy, so it is rejected without requeue (the broker
  dead-letters it if its queue has a dead-letter exchange).

No I/O happens here; :mod:`._outcome` carries a decision out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import attrs

if TYPE_CHECKING:
    from ._retry import Backoff

__all__ = ["Ack", "DeadLetter", "Decision", "Reject", "Requeue", "Retry", "decide"]


@final
@attrs.frozen
class Ack:
    """Settle the delivery as done."""


@final
@attrs.frozen
class Requeue:
    """Return the delivery to its queue (``requeue_on_error``)."""


@final
@attrs.frozen
class Retry:
    """Put a copy in the retry queue for *delay_ms*, then ack the delivery."""

    delay_ms: int


@final
@attrs.frozen
class DeadLetter:
    """Put a copy in the dead-letter queue, then ack the delivery."""

    #: The payload could not be decoded (no handler ran).
    undecodable: bool = False


@final
@attrs.frozen
class Reject:
    """Reject the delivery without requeue (its body was not kept)."""


Decision = Ack | Requeue | Retry | DeadLetter | Reject


def decide(
    error: BaseException | None,
    *,
    attempt: int = 1,
    retry: Backoff | None = None,
    requeue_on_error: bool | tuple[type[BaseException], ...] = False,
    undecodable: bool = False,
    body_dropped: bool = False,
) -> Decision:
    """Decide what happens to a delivery once its handler ended.

    Parameters
    ----------
    error
        What the handler (or its dependencies' hooks) raised; ``None`` if it
        succeeded.
    attempt
        Which attempt this was (1 for the first; see
        :func:`~trioevents._events._retry.attempts_so_far`).
    retry
        The handler's retry policy, if any.
    requeue_on_error
        The handler's ``requeue_on_error``: ``True``, or the exception types to
        requeue.
    undecodable
        The payload could not be decoded: no handler ran.
    body_dropped
        The message's body was too large to be read: no handler ran.
    """
    if body_dropped:
        return Reject()
    if undecodable:
        return DeadLetter(undecodable=True)
    if error is None:
        return Ack()
    if retry is not None:
        delay_ms = retry.delay_ms(attempt) if retry.retries(error) else None
        return DeadLetter() if delay_ms is None else Retry(delay_ms)
    if requeue_on_error is True or (
        isinstance(requeue_on_error, tuple) and isinstance(error, requeue_on_error)
    ):
        return Requeue()
    return Ack()
