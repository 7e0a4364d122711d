"""Running a coroutine in a :mod:`contextvars` context of its own, inside a task.

trio gives every task a copy of its parent's context, so what a task sets is
its own. A pool worker runs many handlers in one task; :func:`in_context` gives
each its own context all the same, without a task per handler: every step of
the coroutine runs in *context* (``context.run``), and what trio sends or
throws into the task (values, cancellations) passes through unchanged.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Coroutine, Generator

__all__ = ["in_context"]

T = TypeVar("T")


@types.coroutine
def in_context(
    context: contextvars.Context, coro: Coroutine[Any, Any, T]
) -> Generator[Any, Any, T]:
    """Await *coro* with each of its steps run in *context*.

    *context* must not be in use elsewhere (pass a fresh ``copy()``).
    """
    send = coro.send
    throw = coro.throw
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                trap = context.run(send, value)
            else:
                trap = context.run(throw, error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        error = None
        try:
            value = yield trap
        except BaseException as exc:  # cancellation and the rest: into the coroutine
            value = None
            error = exc
