"""RabbitMQ's queue types as the embedded broker models them: classic and quorum.

``x-queue-type`` picks the type when a queue is created (absent: ``classic``).
Measured on RabbitMQ 3.10.8:

* A quorum queue is durable, never exclusive or auto-delete, never server-named;
  asking for one otherwise is 406 ``invalid property 'auto-delete'`` (then
  ``'exclusive-owner'``, then ``'non-durable'``, checked in that order).
* Each type refuses the arguments of the other (406 ``invalid arg ... of queue
  type rabbit_quorum_queue``): a quorum queue takes no ``x-max-priority`` or
  ``x-queue-mode``, a classic one no ``x-delivery-limit`` or
  ``x-dead-letter-strategy``.
* A redeclare compares the arguments the *existing* queue's type knows, in its
  own order (:func:`compared_arguments`), after ``durable`` and ``auto_delete``;
  ``x-queue-type`` absent and ``"classic"`` are the same. The reply text shows a
  value given on one side only with its AMQP type (:func:`inequivalent`).
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import PreconditionFailed

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CLASSIC",
    "QUORUM",
    "check_new_queue",
    "compared_arguments",
    "equivalent",
    "inequivalent",
    "server_named_refusal",
]

CLASSIC: Final = "classic"
QUORUM: Final = "quorum"
_DLX_STRATEGIES: Final = ("at-most-once", "at-least-once")

#: The arguments each type compares on a redeclare, in RabbitMQ 3.10's order.
_COMPARED: Final[Mapping[str, tuple[str, ...]]] = {
    CLASSIC: (
        "x-expires",
        "x-message-ttl",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-priority",
        "x-overflow",
        "x-queue-mode",
        "x-single-active-consumer",
        "x-queue-type",
    ),
    QUORUM: (
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-dead-letter-strategy",
        "x-expires",
        "x-max-length",
        "x-max-length-bytes",
        "x-overflow",
        "x-single-active-consumer",
        "x-queue-type",
        "x-quorum-initial-group-size",
        "x-delivery-limit",
        "x-message-ttl",
    ),
}
#: Arguments one type knows and the other refuses.
_REFUSED: Final[Mapping[str, tuple[str, ...]]] = {
    CLASSIC: tuple(a for a in _COMPARED[QUORUM] if a not in _COMPARED[CLASSIC]),
    QUORUM: tuple(a for a in _COMPARED[CLASSIC] if a not in _COMPARED[QUORUM]),
}
_MODULES: Final = {CLASSIC: "rabbit_classic_queue", QUORUM: "rabbit_quorum_queue"}


def _where(name: str) -> str:
    return f"for queue '{name}' in vhost '/'"


def check_new_queue(
    name: str,
    *,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: Mapping[str, Any],
) -> str:
    """Return the type of a queue about to be created, or refuse it as RabbitMQ does.

    Raises
    ------
    PreconditionFailed
        An unknown ``x-queue-type``, an argument the type does not take, a
        quorum queue that is not durable or is exclusive or auto-delete, or an
        invalid ``x-dead-letter-strategy``.
    """
    queue_type = arguments.get("x-queue-type", CLASSIC)
    if queue_type not in _COMPARED:
        raise PreconditionFailed(
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-queue-type' {_where(name)}: "
            f"\"unsupported queue type '{queue_type}'\"",
        )
    for key in _REFUSED[queue_type]:
        if key in arguments:
            raise PreconditionFailed(
                406,
                f"PRECONDITION_FAILED - invalid arg '{key}' {_where(name)} of queue "
                f"type {_MODULES[queue_type]}",
            )
    strategy = arguments.get("x-dead-letter-strategy")
    if strategy is not None and strategy not in _DLX_STRATEGIES:
        raise PreconditionFailed(
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' "
            f"{_where(name)}: invalid_dlx_strategy",
        )
    if queue_type == QUORUM:
        for refused, prop in (
            (auto_delete, "auto-delete"),
            (exclusive, "exclusive-owner"),
            (not durable, "non-durable"),
        ):
            if refused:
                raise PreconditionFailed(
                    406,
                    f"PRECONDITION_FAILED - invalid property '{prop}' {_where(name)}",
                )
    return str(queue_type)


def server_named_refusal(arguments: Mapping[str, Any]) -> PreconditionFailed | None:
    """The refusal of a server-named queue of *arguments*' type, if it has one."""
    if arguments.get("x-queue-type") != QUORUM:
        return None
    return PreconditionFailed(
        406,
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type "
        f"{_MODULES[QUORUM]}",
    )


def compared_arguments(queue_type: str) -> Sequence[str]:
    """The arguments a redeclare of a *queue_type* queue must repeat, in order."""
    return _COMPARED[queue_type]


def equivalent(key: str, got: object, have: object) -> bool:
    """Tell whether argument *key* given as *got* matches the queue's *have*."""
    if key == "x-queue-type":
        return (got or CLASSIC) == (have or CLASSIC)
    return got == have


def inequivalent(key: str, name: str, got: object, have: object) -> PreconditionFailed:
    """RabbitMQ's refusal of a redeclare whose *key* is *got*, not *have*.

    A value present on both sides shows plainly (``received '6' but current is
    '5'``); a value present on one side only shows with its AMQP type (``received
    the value 'quorum' of type 'longstr' but current is none``).
    """
    one_sided = got is None or have is None
    return PreconditionFailed(
        406,
        f"PRECONDITION_FAILED - inequivalent arg '{key}' {_where(name)}: received "
        f"{_shown(got, typed=one_sided)} but current is "
        f"{_shown(have, typed=one_sided)}",
    )


def _shown(value: object, *, typed: bool) -> str:
    if value is None:
        return "none"
    # Erlang's ~p shows booleans in lower case.
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if typed:
        return f"the value '{text}' of type '{_amqp_type(value)}'"
    return f"'{text}'"


def _amqp_type(value: object) -> str:
    """RabbitMQ's name of the field-table type *value* travels as.

    Integers take the smallest signed type that holds them, as the RabbitMQ
    transport sends them (see :mod:`trioevents._fieldtable`).
    """
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        for bits, name in ((8, "byte"), (16, "short"), (32, "signedint")):
            if -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                return name
        return "long"
    simple: tuple[tuple[type, str], ...] = (
        (str, "longstr"),
        (float, "double"),
        (decimal.Decimal, "decimal"),
        (datetime.datetime, "timestamp"),
        (bytes, "binary"),
        (Mapping, "table"),
        (list, "array"),
    )
    for kind, name in simple:
        if isinstance(value, kind):
            return name
    return "void"
