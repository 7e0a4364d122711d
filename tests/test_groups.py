"""The one helper that unwraps a lone exception of a group."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from trioevents._groups import leaves, lone_exception, unwrap_lone_exception

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def test_leaves_flattens_nested_groups() -> None:
    a, b, c = ValueError("a"), KeyError("b"), OSError("c")
    group = BaseExceptionGroup("outer", [a, ExceptionGroup("inner", [b, c])])
    assert leaves(group) == [a, b, c]
    assert leaves(a) == [a]


def test_lone_exception_is_the_only_leaf_or_none() -> None:
    a = ValueError("a")
    assert lone_exception(ExceptionGroup("g", [ExceptionGroup("h", [a])])) is a
    assert lone_exception(ExceptionGroup("g", [a, KeyError("b")])) is None


async def test_a_lone_exception_escapes_unwrapped_with_its_own_cause() -> None:
    cause = OSError("refused")

    async def fail() -> None:
        raise ValueError("boom") from cause

    async def run(*failing: Callable[[], Awaitable[None]]) -> None:
        with unwrap_lone_exception():
            async with trio.open_nursery() as nursery:
                for fn in failing:
                    nursery.start_soon(fn)

    with pytest.raises(ValueError, match="boom") as caught:
        await run(fail)
    assert caught.value.__cause__ is cause


async def test_several_exceptions_stay_a_group() -> None:
    async def fail(exc: Exception) -> None:
        raise exc

    async def run() -> None:
        with unwrap_lone_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail, ValueError("a"))
                nursery.start_soon(fail, KeyError("b"))

    with pytest.RaisesGroup(ValueError, KeyError):
        await run()
