"""One publish RabbitMQ refuses fails alone, however many are in flight beside it (#12).

RabbitMQ refuses a publish by closing the publish channel, which cuts off every
publish in flight on it. The refused one must fail; the others, confirmed or not,
must not: the AMQP transport publishes them again on a new channel (see
``tests/amqp/test_publishing.py`` for the cases the broker does not name). Each
test sends 200 publishes at once, one of them bad, and checks that exactly that
one fails and the 199 others are confirmed and arrive.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import (
    Config,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    ServiceHost,
)
from trioevents._codec import PayloadCodec
from trioevents._message import Properties
from trioevents._publisher import Publisher
from trioevents.amqp import AmqpTransport

from ..support.brokers import take_all, watch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.rabbitmq

#: Generous: the broker shares two cores with the tests.
DEADLINE = 60
COUNT = 200
#: The index of the bad publish: in the middle, with publishes on both sides.
CULPRIT = COUNT // 2
#: A user other than the one the connection logged in as (``guest``).
FOREIGN_USER = Properties(user_id="someone-else")


async def _send_all(
    send: Callable[[int], Awaitable[object]],
) -> dict[int, BaseException | None]:
    """Run ``send(index)`` for every index at once; return what each raised."""
    outcomes: dict[int, BaseException | None] = {}

    async def one() -> None:
        # Number the publishes in the order they are queued (trio starts tasks
        # in a random order; nothing yields before a publish is queued).
        index = next(numbers)
        try:
            await send(index)
        except Exception as exc:
            outcomes[index] = exc
        else:
            outcomes[index] = None

    numbers = itertools.count()
    async with trio.open_nursery() as nursery:
        for _ in range(COUNT):
            nursery.start_soon(one)
    return outcomes


def _check(
    outcomes: dict[int, BaseException | None],
    arrived: list[int],
    error: type[Exception],
) -> None:
    culprit = outcomes.pop(CULPRIT)
    assert isinstance(culprit, error), culprit
    failed = {index: exc for index, exc in outcomes.items() if exc is not None}
    assert failed == {}, f"{len(failed)} innocent publishes failed"
    # At least once: an innocent publish may arrive twice (sent again unconfirmed).
    assert set(arrived) == set(range(COUNT)) - {CULPRIT}


async def test_a_foreign_user_id_fails_only_its_own_publish(rabbit_vhost: str) -> None:
    """RabbitMQ names the user id it refused: that publish alone fails."""
    with trio.fail_after(DEADLINE):
        async with AmqpTransport(rabbit_vhost).open_connection() as conn:
            queue = (await conn.declare_queue("refusals")).name

            async def send(index: int) -> None:
                properties = FOREIGN_USER if index == CULPRIT else None
                await conn.publish("", queue, b"%d" % index, properties)

            outcomes = await _send_all(send)
        arrived = [int(d.body) for d in await take_all(rabbit_vhost, queue)]
    _check(outcomes, arrived, PreconditionFailed)


async def test_a_missing_exchange_fails_only_its_own_publish(rabbit_vhost: str) -> None:
    """RabbitMQ names the exchange it did not find: that publish alone fails.

    The publishes before it were routed, but their confirms were cut off: they
    are sent again too (so they may arrive twice).
    """
    with trio.fail_after(DEADLINE):
        async with AmqpTransport(rabbit_vhost).open_connection() as conn:
            queue = (await conn.declare_queue("refusals")).name

            async def send(index: int) -> None:
                exchange = "no-such-exchange" if index == CULPRIT else ""
                await conn.publish(exchange, queue, b"%d" % index)

            outcomes = await _send_all(send)
        arrived = [int(d.body) for d in await take_all(rabbit_vhost, queue)]
    _check(outcomes, arrived, NotFound)


async def test_a_foreign_user_id_fails_only_its_own_dispatch(
    rabbit_vhost: str,
) -> None:
    """Through the host's one publish path, 32 publishes in flight at a time."""
    queue = await watch(rabbit_vhost, "src")
    config = Config.from_mapping({"AMQP_URI": rabbit_vhost})
    publisher = Publisher(config, PayloadCodec.from_config(config))
    with trio.fail_after(DEADLINE):
        async with AmqpTransport(rabbit_vhost).open_connection() as conn:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.run, conn)

                async def send(index: int) -> None:
                    if index == CULPRIT:
                        await publisher.publish(
                            "src.events", "ev", b"%d" % index, FOREIGN_USER
                        )
                    else:
                        await publisher.dispatch("src.events", "ev", index, {})

                outcomes = await _send_all(send)
                nursery.cancel_scope.cancel()
        arrived = [int(d.body) for d in await take_all(rabbit_vhost, queue)]
    _check(outcomes, arrived, PreconditionFailed)


async def test_an_expiration_rabbitmq_refuses_fails_only_its_own_dispatch(
    rabbit_vhost: str,
) -> None:
    """An expiration past RabbitMQ's limit is refused before it is sent.

    It used to pass the local checks, and RabbitMQ's refusal failed every
    dispatch in flight beside it.
    """
    queue = await watch(rabbit_vhost, "src")
    host = ServiceHost([], {"AMQP_URI": rabbit_vhost})
    with trio.fail_after(DEADLINE):
        async with host.dispatcher() as dispatch:

            async def send(index: int) -> None:
                options: dict[str, Any] = {}
                if index == CULPRIT:
                    options["expiration"] = "99999999999999999999"
                await dispatch("src", "ev", index, **options)

            outcomes = await _send_all(send)
        arrived = [int(d.body) for d in await take_all(rabbit_vhost, queue)]
    _check(outcomes, arrived, InvalidRequest)
