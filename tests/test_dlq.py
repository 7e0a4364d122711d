"""Dead-letter tools (``trioevents._dlq``): peek, replay and purge, on both brokers.

The dead letters are real ones: :class:`~.support.deadletters.Billing` fails
with ``retry=Backoff(...)`` until its events are dead-lettered; the test then
fixes it and replays. The embedded broker runs in virtual time
(``broker_clock``). Tests wait for outcomes and for a sentinel event, never for
time.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import pytest
import trio

import trioevents._dlq
from trioevents import (
    ConnectionLost,
    InvalidRequest,
    MemoryTransport,
    NotFound,
    Outcome,
    Properties,
    Publisher,
    open_dead_letter_queue,
)
from trioevents.testing import FlakyTransport

from .support import deadletters
from .support.brokers import connect, publish, queue_depth, take_all
from .support.deadletters import (
    DLQ,
    EVENT,
    QUEUE,
    Outcomes,
    Shipping,
    fail_events,
    handle_all,
)

if TYPE_CHECKING:
    from trioevents import ReplayOutcome


@pytest.fixture(autouse=True)
def ledger() -> deadletters.Ledger:
    return deadletters.reset()


def config(uri: str) -> dict[str, Any]:
    return {"AMQP_URI": uri}


# ------------------------------------------------------------------------- peek


async def test_peek_shows_why_each_message_failed(
    broker_uri: str, broker_clock: trio.testing.MockClock | None
) -> None:
    await fail_events(broker_uri, [1, 2, 3])
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        listing = await dlq.peek(2)
    assert listing.queue == DLQ
    assert listing.message_count == 3
    assert listing.consumer_count == 0
    first, second = listing.letters
    assert first.position == 1
    assert first.message_id == "order-1"
    assert first.error == "RuntimeError: card declined for order 1"
    assert first.traceback is not None
    assert "Traceback" in first.traceback
    assert first.attempts == 3
    assert first.original_exchange == "orders.events"
    assert first.original_routing_key == "order_placed"
    assert first.body == b'{"id": 1}'
    assert first.decoded_body() == (True, {"id": 1})
    assert first.redelivered is False
    assert second.message_id == "order-2"
    as_json = first.as_json()
    assert as_json["body"] == {"id": 1}
    assert as_json["attempts"] == 3
    assert "x-trioevents-error" not in as_json["headers"]
    assert "x-death" not in as_json["headers"]


async def test_peek_puts_the_messages_back_in_order_marked_redelivered(
    broker_uri: str, broker_clock: trio.testing.MockClock | None
) -> None:
    await fail_events(broker_uri, [1, 2, 3])
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        await dlq.peek(2)
        again = await dlq.peek()
        assert await dlq.count() == 3
    assert [letter.message_id for letter in again.letters] == [
        "order-1",
        "order-2",
        "order-3",
    ]
    assert [letter.redelivered for letter in again.letters] == [True, True, False]


async def test_peek_zero_only_counts(broker_uri: str) -> None:
    async with connect(broker_uri) as connection:
        await connection.declare_queue(DLQ, durable=True)
    await publish(broker_uri, "", DLQ, b"{}")
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        listing = await dlq.peek(0)
    assert (listing.message_count, listing.letters) == (1, ())
    assert await queue_depth(broker_uri, DLQ) == 1


# ----------------------------------------------------------------------- replay


async def test_replay_puts_the_events_back_where_the_handler_handles_them(
    broker_uri: str,
    broker_clock: trio.testing.MockClock | None,
    ledger: deadletters.Ledger,
) -> None:
    await fail_events(broker_uri, [1, 2, 3])
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        report = await dlq.replay()
    assert [o.letter.message_id for o in report.replayed] == [
        "order-1",
        "order-2",
        "order-3",
    ]
    assert {(o.exchange, o.routing_key) for o in report.outcomes} == {
        ("orders.events", "order_placed")
    }
    assert (report.skipped, report.left, report.stopped) == ((), 0, None)
    outcomes = Outcomes()
    assert await handle_all(broker_uri, outcomes) == [1, 2, 3]
    replayed = [e for e in outcomes.seen if e.message_id is not None]
    # the failure headers and x-death are gone: the attempts count from one
    assert [e.attempt for e in replayed] == [1, 1, 1]
    assert not any(key.startswith("x-trioevents-") for key in replayed[0].headers)
    assert "x-death" not in replayed[0].headers
    assert await queue_depth(broker_uri, DLQ) == 0


async def test_replay_keeps_the_original_properties_and_headers(
    broker_uri: str,
) -> None:
    async with connect(broker_uri) as connection:
        await connection.declare_queue(DLQ, durable=True)
        await connection.declare_exchange("orders.events", durable=True)
        await connection.declare_queue("watch")
        await connection.bind_queue("watch", "orders.events", "#")
    headers = {
        "nameko.call_id_stack": ["web.checkout.1"],
        "custom": "kept",
        "x-trioevents-error": "RuntimeError: no",
        "x-trioevents-attempts": 3,
        "x-trioevents-original-exchange": "orders.events",
        "x-trioevents-original-routing-key": "order_placed",
        "x-death": [{"queue": "q.retry.50", "reason": "expired", "count": 2}],
        "x-first-death-queue": "q.retry.50",
    }
    sent = Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=3,
        message_id="m-1",
        correlation_id="c-1",
        app_id="tests",
    )
    await publish(broker_uri, "", DLQ, b'{"id": 7}', sent)
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        report = await dlq.replay()
    assert len(report.replayed) == 1
    (copy,) = await take_all(broker_uri, "watch")
    assert (copy.exchange, copy.routing_key) == ("orders.events", "order_placed")
    assert copy.body == b'{"id": 7}'
    assert copy.properties.headers == {
        "nameko.call_id_stack": ["web.checkout.1"],
        "custom": "kept",
    }
    assert copy.properties.message_id == "m-1"
    assert copy.properties.correlation_id == "c-1"
    assert copy.properties.priority == 3
    assert copy.properties.app_id == "tests"
    assert copy.properties.delivery_mode == 2


async def test_replay_to_the_original_exchange_reaches_every_handler_of_the_event(
    broker_uri: str,
    broker_clock: trio.testing.MockClock | None,
    ledger: deadletters.Ledger,
) -> None:
    """Shipping handled the event fine, and gets it again: the exchange fans out."""
    await fail_events(broker_uri, [1], services=[Shipping])
    assert ledger.shipped == [1]
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        await dlq.replay()
    assert await queue_depth(broker_uri, "evt-orders-order_placed--shipping.ship") == 1


async def test_replay_to_the_handler_queue_reaches_that_handler_alone(
    broker_uri: str,
    broker_clock: trio.testing.MockClock | None,
    ledger: deadletters.Ledger,
) -> None:
    await fail_events(broker_uri, [1, 2], services=[Shipping])
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        report = await dlq.replay(to_handler_queue=True)
    assert {(o.exchange, o.routing_key) for o in report.outcomes} == {("", QUEUE)}
    assert await queue_depth(broker_uri, "evt-orders-order_placed--shipping.ship") == 0
    outcomes = Outcomes()
    assert await handle_all(broker_uri, outcomes) == [1, 2]
    # the handler still sees the event type, and counts its attempts from one
    assert [(e.event_type, e.attempt) for e in outcomes.seen[:2]] == [
        (EVENT, 1),
        (EVENT, 1),
    ]


async def test_replay_reads_only_the_first_limit_messages(
    broker_uri: str,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    await fail_events(broker_uri, [1, 2, 3])
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        report = await dlq.replay(2)
        (rest,) = (await dlq.peek()).letters
    assert [o.letter.message_id for o in report.replayed] == ["order-1", "order-2"]
    assert report.left == 1
    assert rest.message_id == "order-3"


async def test_replay_skips_what_it_cannot_replay_and_leaves_it_in_place(
    broker_uri: str,
) -> None:
    """No origin headers, an exchange gone, a copy no queue takes: all stay, in order."""
    origin = {
        "x-trioevents-original-exchange": "orders.events",
        "x-trioevents-original-routing-key": "order_placed",
    }
    async with connect(broker_uri) as connection:
        await connection.declare_queue(DLQ, durable=True)
        await connection.declare_exchange("orders.events", durable=True)
        await connection.declare_exchange("lonely.events", durable=True)
        await connection.declare_queue(QUEUE, durable=True)
        await connection.bind_queue(QUEUE, "orders.events", "order_placed")
    letters: list[dict[str, Any] | None] = [
        origin,
        None,
        {**origin, "x-trioevents-original-exchange": "gone.events"},
        origin,
        {**origin, "x-trioevents-original-exchange": "lonely.events"},
        {"x-trioevents-original-exchange": "orders.events"},
        origin,
    ]
    for number, headers in enumerate(letters, 1):
        properties = Properties(message_id=f"m-{number}", headers=headers)
        await publish(broker_uri, "", DLQ, b"{}", properties)
    seen: list[ReplayOutcome] = []
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        report = await dlq.replay(on_outcome=seen.append)
        left = (await dlq.peek()).letters
    assert list(report.outcomes) == seen
    assert [o.letter.message_id for o in report.replayed] == ["m-1", "m-4", "m-7"]
    skipped = {o.letter.message_id: o.skipped for o in report.skipped}
    assert list(skipped) == ["m-2", "m-3", "m-5", "m-6"]
    assert skipped["m-2"] == (
        "no x-trioevents-original-exchange or x-trioevents-original-routing-key "
        "header: nowhere to replay it to"
    )
    assert "the broker refused the copy: 404" in str(skipped["m-3"])
    assert "the broker refused the copy" in str(skipped["m-5"])
    assert "no x-trioevents-original-routing-key header" in str(skipped["m-6"])
    assert report.left == 4
    assert [letter.message_id for letter in left] == ["m-2", "m-3", "m-5", "m-6"]
    assert await queue_depth(broker_uri, QUEUE) == 3


async def test_a_replay_stops_when_skipped_messages_fill_its_window(
    broker_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipped messages are held unacked; once they fill the prefetch, it stops."""
    monkeypatch.setattr(trioevents._dlq, "REPLAY_WINDOW", 2)
    async with connect(broker_uri) as connection:
        await connection.declare_queue(DLQ, durable=True)
    for number in range(1, 5):
        await publish(broker_uri, "", DLQ, b"{}", Properties(message_id=f"m-{number}"))
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        report = await dlq.replay()
        left = (await dlq.peek()).letters
    assert [o.letter.message_id for o in report.skipped] == ["m-1", "m-2"]
    assert report.stopped == "2 skipped messages fill the window of 2 unacked messages"
    assert report.left == 4
    assert [letter.message_id for letter in left] == ["m-1", "m-2", "m-3", "m-4"]


async def test_a_replayed_event_that_fails_again_is_not_replayed_twice(
    broker_uri: str,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    """The replay reads the messages that were there when it started, no more."""
    await fail_events(broker_uri, [1, 2, 3])
    outcomes = Outcomes()
    host = deadletters.billing_host(broker_uri, outcomes)  # still failing
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
            report = await dlq.replay()
            await outcomes.wait_for(Outcome.DEAD_LETTER, 3)
            assert await dlq.count() == 3
        await host.stop()
    assert len(report.replayed) == 3


# ------------------------------------------------------------ interrupted replay


async def test_a_replay_cancelled_half_way_loses_nothing(
    broker_uri: str,
    broker_clock: trio.testing.MockClock | None,
) -> None:
    """Cancelled after 3 confirmed republishes, then run again: each event once.

    Except perhaps the 3rd on RabbitMQ: the cancel also cancels the connection's
    tasks, and the ack queued last may not reach the broker before the
    connection is gone; its dead letter is then replayed again (at-least-once).
    """
    ids = list(range(1, 9))
    await fail_events(broker_uri, ids)
    first: list[ReplayOutcome] = []
    with trio.CancelScope() as scope:

        def cancel_after_three(outcome: ReplayOutcome) -> None:
            first.append(outcome)
            if len(first) == 3:
                scope.cancel()

        async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
            await dlq.replay(on_outcome=cancel_after_three)
    assert scope.cancelled_caught
    assert [o.letter.message_id for o in first] == ["order-1", "order-2", "order-3"]
    assert await queue_depth(broker_uri, QUEUE) == 3  # nothing published after
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        report = await dlq.replay()
    assert report.left == 0
    counts = collections.Counter(await handle_all(broker_uri))
    assert set(counts) == set(ids)
    doubled = {event_id for event_id, count in counts.items() if count > 1}
    assert doubled <= {3}
    assert len(report.replayed) == 5 + len(doubled)
    if broker_uri.startswith("memory"):
        assert not doubled


async def test_a_replay_cut_between_confirm_and_ack_replays_that_message_again(
    memory_uri: str,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection is cut once the 4th copy is confirmed, before its ack.

    The broker takes the 4th dead letter back, and the replay fails with
    ConnectionLost. Run again, it replays the 4th and the rest: every event is
    handled, the 4th twice (at-least-once), no other one twice.
    """
    ids = list(range(1, 9))
    await fail_events(memory_uri, ids)
    flaky = FlakyTransport(MemoryTransport.from_uri(memory_uri))
    confirmed: list[bytes] = []
    publish = Publisher.publish

    async def publish_then_cut(self: Publisher, *args: Any, **kwargs: Any) -> None:
        await publish(self, *args, **kwargs)
        confirmed.append(args[2])
        if len(confirmed) == 4:
            flaky.cut()

    monkeypatch.setattr(Publisher, "publish", publish_then_cut)
    first: list[ReplayOutcome] = []
    with pytest.raises(ConnectionLost):
        async with open_dead_letter_queue(
            DLQ, config(memory_uri), transport=flaky
        ) as dlq:
            await dlq.replay(on_outcome=first.append)
    monkeypatch.undo()
    assert [o.letter.message_id for o in first] == ["order-1", "order-2", "order-3"]
    assert confirmed[-1] == b'{"id": 4}'
    assert await queue_depth(memory_uri, DLQ) == 5  # the 4th is back
    async with open_dead_letter_queue(DLQ, config(memory_uri)) as dlq:
        report = await dlq.replay()
    assert report.replayed[0].letter.message_id == "order-4"
    assert report.left == 0
    counts = collections.Counter(await handle_all(memory_uri))
    assert set(counts) == set(ids)
    assert {event_id for event_id, count in counts.items() if count > 1} == {4}
    assert sum(counts.values()) == len(ids) + 1


# ------------------------------------------------------------------------ purge


async def test_purge_drops_the_ready_messages(
    broker_uri: str, broker_clock: trio.testing.MockClock | None
) -> None:
    await fail_events(broker_uri, [1, 2])
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        assert await dlq.purge() == 2
        assert await dlq.count() == 0


# -------------------------------------------------------------------- refusals


async def test_a_queue_that_does_not_exist_is_refused(broker_uri: str) -> None:
    with pytest.raises(NotFound, match="none was yet, or the name is wrong"):
        async with open_dead_letter_queue("nope.dlq", config(broker_uri)):
            pass  # pragma: no cover


async def test_a_queue_that_is_not_a_dlq_needs_force(broker_uri: str) -> None:
    async with connect(broker_uri) as connection:
        await connection.declare_queue(QUEUE, durable=True)
    with pytest.raises(InvalidRequest, match=r"not a dead-letter queue .*\.dlq"):
        async with open_dead_letter_queue(QUEUE, config(broker_uri)):
            pass  # pragma: no cover
    async with open_dead_letter_queue(QUEUE, config(broker_uri), force=True) as dlq:
        assert dlq.handler_queue is None
        assert await dlq.count() == 0
        with pytest.raises(InvalidRequest, match="no handler queue"):
            await dlq.replay(to_handler_queue=True)


async def test_a_negative_limit_is_refused(broker_uri: str) -> None:
    async with connect(broker_uri) as connection:
        await connection.declare_queue(DLQ, durable=True)
    async with open_dead_letter_queue(DLQ, config(broker_uri)) as dlq:
        with pytest.raises(InvalidRequest, match="limit"):
            await dlq.peek(-1)
        with pytest.raises(InvalidRequest, match="limit"):
            await dlq.replay(-1)
