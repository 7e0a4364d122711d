"""The events layer's pure parts, without a broker: topology and failure policy."""

from __future__ import annotations

import pytest

from trioevents import Backoff, EventHandlerConfigurationError, QueueType
from trioevents._events._failure import Ack, DeadLetter, Requeue, Retry, decide
from trioevents._events._topology import (
    BROADCAST,
    SERVICE_POOL,
    SINGLETON,
    QueueSpec,
    dead_letter_queue,
    event_exchange_name,
    handler_queue,
    handler_topology,
    retry_queue,
)

# ------------------------------------------------------------------ topology


def test_every_service_publishes_to_its_events_exchange() -> None:
    assert event_exchange_name("orders") == "orders.events"


@pytest.mark.parametrize(
    ("handler_type", "reliable", "name", "flags"),
    [
        (SERVICE_POOL, True, "evt-src-ev--svc.meth", (True, False, False)),
        (SERVICE_POOL, False, "evt-src-ev--svc.meth", (True, True, False)),
        (SINGLETON, True, "evt-src-ev", (True, False, False)),
        (SINGLETON, False, "evt-src-ev", (True, True, False)),
        (BROADCAST, False, "evt-src-ev--svc.meth-b1", (True, True, True)),
        (BROADCAST, True, "evt-src-ev--svc.meth-b1", (True, False, False)),
    ],
)
def test_handler_queues_are_named_and_flagged_as_nameko_does(
    handler_type: object, reliable: bool, name: str, flags: tuple[bool, bool, bool]
) -> None:
    queue = handler_queue(
        "src",
        "ev",
        handler_type,  # type: ignore[arg-type]
        "svc",
        "meth",
        reliable_delivery=reliable,
        broadcast_identifier="b1",
    )
    assert queue.name == name
    assert (queue.durable, queue.auto_delete, queue.exclusive) == flags
    assert queue.arguments == {}


def test_a_retry_queue_returns_its_messages_to_the_handler_queue() -> None:
    handler = QueueSpec("evt-src-ev--svc.meth")
    queue = retry_queue(handler, 5000)
    assert queue.name == "evt-src-ev--svc.meth.retry.5000"
    assert (queue.durable, queue.auto_delete, queue.exclusive) == (True, False, False)
    assert queue.arguments == {
        "x-message-ttl": 5000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "evt-src-ev--svc.meth",
    }


def test_queues_of_a_handler_that_keeps_nothing_expire_once_unused() -> None:
    handler = QueueSpec("q", auto_delete=True)
    assert retry_queue(handler, 200).arguments["x-expires"] == 60_200
    assert dead_letter_queue(handler).arguments == {"x-expires": 86_400_000}


def test_a_reliable_handler_keeps_its_dead_letter_queue() -> None:
    dlq = dead_letter_queue(QueueSpec("q"))
    assert (dlq.name, dlq.durable, dlq.auto_delete, dlq.arguments) == (
        "q.dlq",
        True,
        False,
        {},
    )


def quorum_queue() -> QueueSpec:
    return handler_queue(
        "src",
        "ev",
        SERVICE_POOL,
        "svc",
        "meth",
        reliable_delivery=True,
        queue_type=QueueType.QUORUM,
        delivery_limit=7,
    )


def test_a_quorum_handler_queue_dead_letters_past_its_delivery_limit() -> None:
    queue = quorum_queue()
    assert queue.name == "evt-src-ev--svc.meth"
    assert (queue.durable, queue.auto_delete, queue.exclusive) == (True, False, False)
    assert queue.queue_type is QueueType.QUORUM
    assert queue.arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 7,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "evt-src-ev--svc.meth.dlq",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_the_retry_and_dead_letter_queues_of_a_quorum_queue_are_quorum_too() -> None:
    handler = quorum_queue()
    assert retry_queue(handler, 5000).arguments == {
        "x-queue-type": "quorum",
        "x-message-ttl": 5000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "evt-src-ev--svc.meth",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    dlq = dead_letter_queue(handler)
    assert (dlq.name, dlq.durable, dlq.auto_delete, dlq.arguments) == (
        "evt-src-ev--svc.meth.dlq",
        True,
        False,
        {"x-queue-type": "quorum"},
    )


def test_a_handler_topology_is_its_queue_then_its_dead_letter_and_retry_queues() -> (
    None
):
    handler = quorum_queue()
    names = [spec.name for spec in handler_topology(handler, [100, 300, 100])]
    base = "evt-src-ev--svc.meth"
    assert names == [base, f"{base}.dlq", f"{base}.retry.100", f"{base}.retry.300"]


@pytest.mark.parametrize("handler_type", [SERVICE_POOL, SINGLETON, BROADCAST])
def test_a_quorum_queue_needs_reliable_delivery(handler_type: object) -> None:
    with pytest.raises(EventHandlerConfigurationError, match="reliable_delivery"):
        handler_queue(
            "src",
            "ev",
            handler_type,  # type: ignore[arg-type]
            "svc",
            "meth",
            reliable_delivery=False,
            broadcast_identifier="b1",
            queue_type=QueueType.QUORUM,
        )


# ------------------------------------------------------------ failure policy


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


def test_success_is_acked_whatever_the_options() -> None:
    assert decide(None) == Ack()
    assert decide(None, retry=Backoff(1), attempt=9) == Ack()
    assert decide(None, requeue_on_error=True) == Ack()


def test_an_error_without_options_is_acked_as_nameko_does() -> None:
    assert decide(ValueError()) == Ack()


def test_requeue_on_error_requeues_any_or_the_listed_errors() -> None:
    assert decide(ValueError(), requeue_on_error=True) == Requeue()
    listed = (Transient,)
    assert decide(Transient(), requeue_on_error=listed) == Requeue()
    assert decide(Fatal(), requeue_on_error=listed) == Ack()


def test_retries_follow_the_backoff_then_dead_letter() -> None:
    policy = Backoff(1, 5)
    assert decide(Transient(), attempt=1, retry=policy) == Retry(1000)
    assert decide(Transient(), attempt=2, retry=policy) == Retry(5000)
    assert decide(Transient(), attempt=3, retry=policy) == DeadLetter()


def test_an_error_the_policy_does_not_retry_is_dead_lettered_at_once() -> None:
    policy = Backoff(1, retry_on=(Transient,))
    assert decide(Fatal(), attempt=1, retry=policy) == DeadLetter()


def test_an_undecodable_payload_is_dead_lettered_whatever_the_options() -> None:
    error = ValueError("not JSON")
    expected = DeadLetter(undecodable=True)
    assert decide(error, undecodable=True) == expected
    assert decide(error, undecodable=True, requeue_on_error=True) == expected
    assert decide(error, undecodable=True, retry=Backoff(1)) == expected
