"""The transport conformance suite, one test per check, on every transport.

Each transport is a ``transport_kind`` parameter. ``make_transport`` is the factory
the checks call, each call onto an isolated broker namespace; ``transport_clock``
gives the embedded broker trio's ``autojump_clock`` (its TTLs are trio deadlines, so
the time-dependent checks take no time) and a networked broker real time. To run the
suite on another transport, add its parameter (marked, e.g.
``pytest.param("amqp", marks=pytest.mark.rabbitmq)``) and its branch in both
fixtures.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from trioevents import MemoryTransport
from trioevents._memory import drop_broker
from trioevents.amqp import AmqpTransport
from trioevents.testing import TRANSPORT_CHECKS, FlakyTransport, check_transport

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    import trio

    from trioevents.abc import Transport


@pytest.fixture(
    params=["memory", "flaky", pytest.param("amqp", marks=pytest.mark.rabbitmq)]
)
def transport_kind(request: pytest.FixtureRequest) -> str:
    """The name of the transport under test."""
    kind: str = request.param
    return kind


@pytest.fixture
def transport_clock(
    transport_kind: str, request: pytest.FixtureRequest
) -> trio.abc.Clock | None:
    """``autojump_clock`` for the embedded broker; ``None`` (real time) otherwise."""
    if transport_kind in ("memory", "flaky"):
        autojump: trio.abc.Clock = request.getfixturevalue("autojump_clock")
        return autojump
    return None


@pytest.fixture
def make_transport(
    transport_kind: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Transport]]:
    """Return a factory of transports, each onto a fresh broker namespace."""
    if transport_kind == "amqp":
        # One fresh vhost per test: every check calls the factory once.
        uri: str = request.getfixturevalue("rabbit_vhost")
        yield lambda: AmqpTransport(uri)
        return
    if transport_kind not in ("memory", "flaky"):
        raise LookupError(f"no transport factory for {transport_kind!r}")
    names: list[str] = []

    def make_memory() -> Transport:
        name = f"conformance-{uuid.uuid4().hex}"
        names.append(name)
        if transport_kind == "flaky":
            return FlakyTransport(MemoryTransport(name))
        return MemoryTransport(name)

    yield make_memory
    for name in names:
        drop_broker(name)


@pytest.mark.parametrize("check", list(TRANSPORT_CHECKS))
async def test_transport_conformance(
    check: str,
    make_transport: Callable[[], Transport],
    transport_clock: trio.abc.Clock | None,
) -> None:
    await TRANSPORT_CHECKS[check](make_transport)


def _no_transport() -> Transport:
    raise AssertionError("the replaced checks never make a transport")


async def test_check_transport_runs_every_check_in_name_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []

    def recorder(name: str) -> Callable[[Callable[[], Transport]], Awaitable[None]]:
        async def record(factory: Callable[[], Transport]) -> None:
            assert factory is _no_transport
            ran.append(name)

        return record

    for name in TRANSPORT_CHECKS:
        monkeypatch.setitem(TRANSPORT_CHECKS, name, recorder(name))
    await check_transport(_no_transport)
    assert ran == sorted(TRANSPORT_CHECKS)
    assert list(TRANSPORT_CHECKS) == sorted(TRANSPORT_CHECKS)


async def test_check_transport_names_the_failing_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = next(iter(TRANSPORT_CHECKS))

    async def broken(factory: Callable[[], Transport]) -> None:
        raise AssertionError("broken on purpose")

    monkeypatch.setitem(TRANSPORT_CHECKS, first, broken)
    with pytest.raises(AssertionError, match="broken on purpose") as info:
        await check_transport(_no_transport)
    assert f"in transport check {first!r}" in info.value.__notes__
