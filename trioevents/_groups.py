"""Exception groups: flatten them, and let a lone exception out unwrapped.

trio's nurseries wrap what their tasks raise in an :class:`ExceptionGroup`, even
a single exception. Our ``async with`` APIs and ``serve()`` follow
trio-websocket: when only one thing went wrong, the caller gets that exception
itself, with its own cause and traceback, not a group of one.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["leaves", "lone_exception", "unwrap_lone_exception"]


def leaves(exc: BaseException) -> list[BaseException]:
    """Return the exceptions in *exc*, with every exception group flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def lone_exception(exc: BaseException) -> BaseException | None:
    """Return the one exception *exc* stands for, or ``None`` if there are several.

    A group whose leaves are all :class:`trio.Cancelled` stands for the first:
    being cancelled several times over is still being cancelled.
    """
    found = leaves(exc)
    if len(found) == 1 or all(isinstance(leaf, trio.Cancelled) for leaf in found):
        return found[0]
    return None


@contextlib.contextmanager
def unwrap_lone_exception() -> Iterator[None]:
    """Re-raise a group that stands for one exception as that exception.

    The exception keeps its own ``__cause__`` and ``__context__`` (the group is
    not chained onto it); a group of several exceptions is raised as it is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        lone = lone_exception(group)
        if lone is None:
            raise
        context = lone.__context__
        try:
            raise lone
        finally:
            lone.__context__ = context
            del lone, context
