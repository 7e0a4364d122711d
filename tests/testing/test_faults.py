"""``trioevents.testing.FlakyTransport``: the embedded broker with faults on demand.

Without faults it passes the conformance suite (``tests/test_transport_conformance.py``,
the ``flaky`` transport); here, what its faults do to the seam. What a host does
about them is tested with the code that reacts: ``tests/test_connecting.py`` and
``tests/test_publisher.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from trioevents import (
    BrokerUnavailable,
    ConnectionLost,
    Delivery,
    MemoryTransport,
    NotFound,
    RemoteProtocolError,
    Settlement,
)
from trioevents.testing import FlakyTransport

if TYPE_CHECKING:
    from trioevents import abc


@pytest.fixture
def flaky(memory_uri: str) -> FlakyTransport:
    return FlakyTransport(MemoryTransport.from_uri(memory_uri))


async def declare(connection: abc.Connection, *bodies: bytes) -> None:
    """Declare the queue ``q`` holding *bodies*."""
    await connection.declare_queue("q")
    for body in bodies:
        await connection.publish("", "q", body)


async def test_cut_fails_pending_and_later_calls_with_connection_lost(
    flaky: FlakyTransport,
) -> None:
    errors: list[BaseException] = []
    async with flaky.open_connection() as connection:
        await declare(connection)
        async with connection.open_consumer("q") as consumer:

            async def receive() -> None:
                with pytest.raises(ConnectionLost) as caught:
                    await consumer.receive()
                errors.append(caught.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                assert flaky.cut() == 1
            with pytest.raises(ConnectionLost, match=r"FlakyTransport\.cut"):
                await connection.publish("", "q", b"late")
    assert len(errors) == 1
    assert flaky.cut() == 0  # nothing open any more


async def test_cut_returns_unsettled_deliveries_to_their_queue(
    flaky: FlakyTransport,
) -> None:
    async with flaky.open_connection() as connection:
        await declare(connection, b"kept")
        await connection.declare_queue("mine", exclusive=True)
        async with connection.open_consumer("q") as consumer:
            delivery = await consumer.receive()
            assert not delivery.redelivered
            flaky.cut()
            with pytest.raises(ConnectionLost):
                await delivery.ack()
    async with flaky.open_connection() as connection:
        declared = await connection.declare_queue("q", passive=True)
        assert declared.message_count == 1
        async with connection.open_consumer("q") as consumer:
            again = await consumer.receive()
            await again.ack()
        assert (again.body, again.redelivered) == (b"kept", True)
        with pytest.raises(NotFound):  # the cut connection's exclusive queue
            await connection.declare_queue("mine", passive=True)


async def test_cut_with_an_error_raises_a_copy_of_it_on_every_call(
    flaky: FlakyTransport,
) -> None:
    error = RemoteProtocolError("501 FRAME_ERROR: garbage from the broker")
    async with flaky.open_connection() as connection:
        flaky.cut(error)
        caught = []
        for _ in range(2):
            with pytest.raises(RemoteProtocolError, match="501 FRAME_ERROR") as info:
                await connection.declare_queue("q")
            caught.append(info.value)
    assert caught[0] is not caught[1]
    assert error not in caught


async def test_refuse_fails_the_next_attempts_then_accepts(
    flaky: FlakyTransport,
) -> None:
    flaky.refuse(2)
    for left in (1, 0):
        with pytest.raises(BrokerUnavailable, match=f"{left} more"):
            async with flaky.open_connection():
                pytest.fail("a refused connection opened")  # pragma: no cover
    async with flaky.open_connection() as connection:
        await declare(connection)
    assert (flaky.attempts, flaky.connects) == (3, 1)


def test_refuse_needs_a_count_of_zero_or_more(flaky: FlakyTransport) -> None:
    flaky.refuse(0)
    with pytest.raises(ValueError, match="-1"):
        flaky.refuse(-1)


async def test_on_settle_reports_each_settlement_once_the_broker_took_it(
    memory_uri: str,
) -> None:
    settled: list[tuple[bytes, Settlement, Settlement | None]] = []

    def record(delivery: Delivery, how: Settlement) -> None:
        settled.append((delivery.body, how, delivery.settled))

    flaky = FlakyTransport(MemoryTransport.from_uri(memory_uri), on_settle=record)
    async with flaky.open_connection() as connection:
        await declare(connection, b"a", b"n", b"r", b"cut")
        async with connection.open_consumer("q") as consumer:
            await (await consumer.receive()).ack()
            await (await consumer.receive()).nack(requeue=False)
            await (await consumer.receive()).reject(requeue=False)
            last = await consumer.receive()
            flaky.cut()
            with pytest.raises(ConnectionLost):
                await last.ack()
    # each reported once, as the delivery itself says it was settled
    assert settled == [
        (b"a", Settlement.ACK, Settlement.ACK),
        (b"n", Settlement.NACK, Settlement.NACK),
        (b"r", Settlement.REJECT, Settlement.REJECT),
    ]
