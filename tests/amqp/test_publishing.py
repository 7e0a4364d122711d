"""Tests of publishing (:mod:`trioevents.amqp._publishing`) over a memory stream.

Confirms, nacks and returns, cancelled publishes, a blocked connection and
publishes re-sent after a refusal, against the scripted
:class:`~tests.amqp.fake_broker.FakeBroker` on ``autojump_clock``.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from pamqp import body as pamqp_body, commands, header as pamqp_header

from trioevents._exceptions import NotFound, PreconditionFailed, PublishNotConfirmed
from trioevents._message import Properties

from .fake_broker import connection, publish_task

#: A guard in virtual time: a test that waits for a frame never sent fails.
GUARD = 600

# --------------------------------------------------------------------------- confirms


async def test_publish_returns_once_confirmed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        outcome = await publish_task(
            nursery, conn, "x", b"hello", properties=Properties(message_id="m1")
        )
        channel = await broker.open_channel(confirms=True)
        publish, properties, body = await broker.expect_message()
        assert (publish.exchange, publish.routing_key, body) == ("x", "k", b"hello")
        assert properties.message_id == "m1"
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {}, "publish returned before its confirm"
        await broker.send((channel, commands.Basic.Ack(1)))
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"result": None}


async def test_multiple_confirms_release_every_publish(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        outcomes = [
            await publish_task(nursery, conn, "x", b"%d" % index) for index in range(3)
        ]
        channel = await broker.open_channel(confirms=True)
        bodies = [(await broker.expect_message())[2] for _ in range(3)]
        assert bodies == [b"0", b"1", b"2"]
        await broker.send((channel, commands.Basic.Ack(3, multiple=True)))
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == [{"result": None}] * 3


async def test_nack_raises_publish_not_confirmed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        nacked = await publish_task(nursery, conn, "x", b"0")
        acked = await publish_task(nursery, conn, "x", b"1")
        channel = await broker.open_channel(confirms=True)
        await broker.expect_message()
        await broker.expect_message()
        await broker.send(
            (channel, commands.Basic.Nack(1)), (channel, commands.Basic.Ack(2))
        )
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(nacked["error"], PublishNotConfirmed)
        assert "nacked" in str(nacked["error"])
        assert acked == {"result": None}


async def test_a_nack_renews_the_publish_channel_once_it_is_idle(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A channel nacking everything (RabbitMQ 3.10 after a quorum queue leader's
    node died) is not published on again: the next publish opens a new one."""
    with trio.fail_after(10):
        await _renewed_after_nacks(nursery)


async def _renewed_after_nacks(nursery: trio.Nursery) -> None:
    async with connection(nursery) as (conn, broker):
        first = await publish_task(nursery, conn, "x", b"0")
        second = await publish_task(nursery, conn, "x", b"1")
        channel = await broker.open_channel(confirms=True)
        await broker.expect_message()
        await broker.expect_message()
        await broker.send((channel, commands.Basic.Nack(1)))
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(first["error"], PublishNotConfirmed)
        assert second == {}  # still in flight: the channel stays
        await broker.send((channel, commands.Basic.Nack(2)))
        await broker.expect(commands.Channel.Close, channel)
        await broker.send((channel, commands.Channel.CloseOk()))
        again = await publish_task(nursery, conn, "x", b"1")
        # A Channel.Open (and Confirm.Select) again: a new channel, which may
        # reuse the closed one's number.
        renewed = await broker.open_channel(confirms=True)
        await broker.expect_message()
        await broker.send((renewed, commands.Basic.Ack(1)))
        await trio.testing.wait_all_tasks_blocked()
        assert again == {"result": None}


async def test_returned_mandatory_publish_is_not_confirmed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The return is matched to its publish even when several are in flight."""
    async with connection(nursery) as (conn, broker):
        routed = await publish_task(nursery, conn, "x", b"same", mandatory=True)
        returned = await publish_task(nursery, conn, "x", b"same", mandatory=True)
        other = await publish_task(nursery, conn, "x", b"other", mandatory=True)
        channel = await broker.open_channel(confirms=True)
        for _ in range(3):
            publish, _, _ = await broker.expect_message()
            assert publish.mandatory
        # Publish 1 was routed (its confirm is late), 2 came back, 3 was routed.
        await broker.send(
            (channel, commands.Basic.Return(312, "NO_ROUTE", "x", "k")),
            (channel, pamqp_header.ContentHeader(0, 4, commands.Basic.Properties())),
            (channel, pamqp_body.ContentBody(b"same")),
            (channel, commands.Basic.Ack(2)),
            (channel, commands.Basic.Ack(3, multiple=True)),
        )
        await trio.testing.wait_all_tasks_blocked()
        assert routed == {"result": None}
        assert other == {"result": None}
        error = returned["error"]
        assert isinstance(error, PublishNotConfirmed)
        assert "312 NO_ROUTE" in str(error)


# --------------------------------------------------------------------------- cancellation


async def test_publish_cancelled_before_it_is_queued_sends_nothing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.publish("x", "k", b"never")
        assert scope.cancelled_caught
        async with trio.open_nursery() as nursery:
            outcome = await publish_task(nursery, conn, "x", b"sent")
            channel = await broker.open_channel(confirms=True)
            _, _, body = await broker.expect_message()
            assert body == b"sent"
            await broker.send((channel, commands.Basic.Ack(1)))
        assert outcome == {"result": None}


async def test_publish_cancelled_while_waiting_for_its_confirm_is_harmless(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        with trio.move_on_after(1) as scope:
            await conn.publish("x", "k", b"first")
        assert scope.cancelled_caught
        channel = await broker.open_channel(confirms=True)
        _, _, body = await broker.expect_message()
        assert body == b"first"
        async with trio.open_nursery() as nursery:
            outcome = await publish_task(nursery, conn, "x", b"second")
            _, _, body = await broker.expect_message()
            assert body == b"second"
            # The late confirm of the abandoned publish is simply dropped.
            await broker.send(
                (channel, commands.Basic.Ack(1)), (channel, commands.Basic.Ack(2))
            )
        assert outcome == {"result": None}


async def test_randomly_cancelled_publishes_arrive_whole_or_not_at_all(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Thousands of deadlines at random points never split a message."""
    rng = random.Random(4)
    body = bytes(range(256)) * 1200  # a little over two frames
    received: list[bytes] = []
    confirmed: list[int] = []

    async with connection(nursery) as (conn, broker):

        async def serve() -> None:
            channel = await broker.open_channel(confirms=True)
            tag = 0
            while True:
                _, _, got = await broker.expect_message()
                received.append(got)
                tag += 1
                if rng.random() < 0.5:
                    await trio.sleep(rng.random() * 0.01)
                await broker.send((channel, commands.Basic.Ack(tag)))

        async with trio.open_nursery() as serving:
            serving.start_soon(serve)
            for attempt in range(300):
                message = b"%04d" % attempt + body
                with trio.move_on_after(rng.random() * 0.01):
                    await conn.publish("x", "k", message)
                    confirmed.append(attempt)
            await conn.publish("x", "k", b"last")
            serving.cancel_scope.cancel()
    assert received[-1] == b"last"
    for got in received[:-1]:
        assert got[4:] == body, "a message arrived damaged"
    numbers = [int(got[:4]) for got in received[:-1]]
    assert numbers == sorted(set(numbers))
    assert set(confirmed) <= set(numbers)
    assert 0 < len(confirmed) < 300, "the deadlines did not vary the outcome"


# --------------------------------------------------------------------------- flow


async def test_blocked_connection_holds_publishes(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with connection(nursery) as (conn, broker):
        await broker.send((0, commands.Connection.Blocked("low on memory")))
        await trio.testing.wait_all_tasks_blocked()
        assert conn.blocked == "low on memory"
        outcome = await publish_task(nursery, conn, "x", b"held")
        # Nothing is sent while blocked.
        with trio.move_on_after(10):
            await broker.expect(commands.Channel.Open)
            pytest.fail("a publish went out while blocked")
        await broker.send((0, commands.Connection.Unblocked()))
        channel = await broker.open_channel(confirms=True)
        _, _, body = await broker.expect_message()
        assert body == b"held"
        await broker.send((channel, commands.Basic.Ack(1)))
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"result": None}
        assert conn.blocked is None


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("exchange", "properties", "code", "text", "error"),
    [
        pytest.param(
            "missing",
            None,
            404,
            "no exchange 'missing' in vhost '/'",
            NotFound,
            id="missing exchange",
        ),
        pytest.param(
            # We do not check user ids ourselves: RabbitMQ does, and names it.
            "x",
            Properties(user_id="it's me"),
            406,
            "user_id property set to 'it's me' but authenticated user was 'guest'",
            PreconditionFailed,
            id="foreign user id",
        ),
    ],
)
async def test_a_refusal_that_names_the_publish_fails_it_alone(
    exchange: str,
    properties: Properties | None,
    code: int,
    text: str,
    error: type[Exception],
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
) -> None:
    """The reply names the exchange or user id: that publish fails, the others
    are sent again.

    The one before it was routed, but its confirm can no longer come: it is sent
    again too (at least once).
    """
    with trio.fail_after(GUARD):
        async with connection(nursery) as (conn, broker):
            before = await publish_task(nursery, conn, "x", b"before")
            refused = await publish_task(
                nursery, conn, exchange, b"no", properties=properties
            )
            after = await publish_task(nursery, conn, "x", b"after")
            channel = await broker.open_channel(confirms=True)
            for _ in range(3):
                await broker.expect_message()
            await broker.send((channel, _refusal(code, text)))
            await broker.expect(commands.Channel.CloseOk, channel)
            channel = await broker.open_channel(confirms=True)
            bodies = [(await broker.expect_message())[2] for _ in range(2)]
            assert bodies == [b"before", b"after"]
            await broker.send((channel, commands.Basic.Ack(2, multiple=True)))
            await trio.testing.wait_all_tasks_blocked()
            assert isinstance(refused["error"], error)
            assert before == after == {"result": None}


async def test_an_unnamed_refusal_is_found_by_trying_each_publish_alone(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A reply that names no publish: those in flight are tried one at a time.

    Each goes alone and waits for its confirm before the next one goes, so the
    next close names the publish in flight. Publishes made meanwhile wait; once
    the doubt is cleared they go out pipelined again.
    """
    with trio.fail_after(GUARD):
        async with connection(nursery) as (conn, broker):
            outcomes = {
                body: await publish_task(nursery, conn, "x", body)
                for body in (b"one", b"bad", b"three")
            }
            channel = await broker.open_channel(confirms=True)
            for _ in range(3):
                await broker.expect_message()
            await broker.send(
                (channel, _refusal(406, "something RabbitMQ did not like"))
            )
            await broker.expect(commands.Channel.CloseOk, channel)

            async def expect_alone(body: bytes) -> None:
                assert (await broker.expect_message())[2] == body
                with trio.move_on_after(10):
                    await broker.expect_message()
                    pytest.fail(f"a publish went out while {body!r} was on trial")

            # "one" alone; a publish made now waits for the trials.
            channel = await broker.open_channel(confirms=True)
            await expect_alone(b"one")
            outcomes[b"late"] = await publish_task(nursery, conn, "x", b"late")
            await broker.send((channel, commands.Basic.Ack(1)))
            # "bad" alone: the broker refuses it again, so it was the culprit.
            await expect_alone(b"bad")
            await broker.send(
                (channel, _refusal(406, "something RabbitMQ did not like"))
            )
            await broker.expect(commands.Channel.CloseOk, channel)
            # "three" alone on a new channel, then "late" and "new" pipelined.
            channel = await broker.open_channel(confirms=True)
            await expect_alone(b"three")
            await broker.send((channel, commands.Basic.Ack(1)))
            assert (await broker.expect_message())[2] == b"late"
            outcomes[b"new"] = await publish_task(nursery, conn, "x", b"new")
            assert (await broker.expect_message())[2] == b"new"
            await broker.send((channel, commands.Basic.Ack(3, multiple=True)))
            await trio.testing.wait_all_tasks_blocked()
        assert isinstance(outcomes.pop(b"bad")["error"], PreconditionFailed)
        assert all(outcome == {"result": None} for outcome in outcomes.values())


async def test_a_publish_abandoned_in_doubt_is_not_tried(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Its caller stopped waiting: the trial goes on without it."""
    with trio.fail_after(GUARD):
        async with connection(nursery) as (conn, broker):
            abandoned = trio.CancelScope()

            async def publish_abandoned() -> None:
                with abandoned:
                    await conn.publish("x", "k", b"abandoned")

            nursery.start_soon(publish_abandoned)
            await trio.testing.wait_all_tasks_blocked()
            kept = await publish_task(nursery, conn, "x", b"kept")
            channel = await broker.open_channel(confirms=True)
            for _ in range(2):
                await broker.expect_message()
            abandoned.cancel()
            await broker.send((channel, _refusal(406, "no reason given")))
            await broker.expect(commands.Channel.CloseOk, channel)
            channel = await broker.open_channel(confirms=True)
            assert (await broker.expect_message())[2] == b"kept"
            await broker.send((channel, commands.Basic.Ack(1)))
            await trio.testing.wait_all_tasks_blocked()
            assert kept == {"result": None}


def _refusal(code: int, text: str) -> commands.Channel.Close:
    """The Channel.Close RabbitMQ sends when it refuses a Basic.Publish."""
    name = {403: "ACCESS_REFUSED", 404: "NOT_FOUND", 406: "PRECONDITION_FAILED"}[code]
    return commands.Channel.Close(code, f"{name} - {text}", 60, 40)
