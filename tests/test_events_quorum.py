"""Handlers on quorum queues (``QUEUE_TYPE: quorum``, ``queue_type=``), on both brokers.

What a reliable handler keeps doing on quorum queues (every handler type,
retries then the dead-letter queue), what quorum queues add (the delivery-limit
backstop under ``requeue_on_error``), which handlers stay classic, and the error
that stops the host when a queue exists as the other type. The queue specs
themselves, without a broker, are in ``test_events_policy.py``; the broker's
quorum rules in the conformance suite (``_conformance/_queue_types.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from trioevents import (
    BROADCAST,
    SERVICE_POOL,
    SINGLETON,
    Backoff,
    EventHandlerConfigurationError,
    HandlerType,
    PreconditionFailed,
    QueueType,
    event_handler,
)
from trioevents._events._topology import QueueSpec, handler_queue, handler_topology

from .support.brokers import connect, dead_letters, dispatch, queue_exists
from .support.recording import (
    Recorder,
    StableBroadcast,
    log_lines,
    recording_service,
)

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

SOURCE = "src"
EVENT = "ping"
QUORUM = {"QUEUE_TYPE": "quorum"}

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_recorder() -> None:
    global recorder
    recorder = Recorder()


def pinged(service_name: str, **options: Any) -> type:
    """A service whose handler of ``src``/``ping`` records ``(name, payload["n"])``."""
    return recording_service(service_name, lambda: recorder, SOURCE, EVENT, **options)


ReliableBroadcast = pinged(
    "broadcast", decorator=StableBroadcast.decorator, handler_type=BROADCAST
)


def spec(
    service: str,
    handler_type: HandlerType = SERVICE_POOL,
    queue_type: QueueType = QueueType.QUORUM,
    delivery_limit: int = 20,
) -> QueueSpec:
    """The queue of ``service.handle`` as the topology declares it."""
    return handler_queue(
        SOURCE,
        EVENT,
        handler_type,
        service,
        "handle",
        reliable_delivery=True,
        broadcast_identifier="node-7",
        queue_type=queue_type,
        delivery_limit=delivery_limit,
    )


async def assert_declared_as(uri: str, *queues: QueueSpec) -> None:
    """Check that each of *queues* exists with exactly these flags and arguments.

    A declare of an existing queue with other arguments or another type is 406
    on both brokers; an equal one changes nothing.
    """
    for queue in queues:
        assert await queue_exists(uri, queue.name), queue.name
        async with connect(uri) as connection:
            await queue.declare(connection)


# ------------------------------------------------------------- what keeps working


async def test_every_reliable_handler_type_consumes_a_quorum_queue(
    broker_uri: str, host_factory: HostFactory
) -> None:
    services = [pinged("pool"), pinged("single", handler_type=SINGLETON)]
    await host_factory([*services, ReliableBroadcast], QUORUM)
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
    calls = await recorder.wait_for(3)
    assert sorted(calls) == [("broadcast", 1), ("pool", 1), ("single", 1)]
    await assert_declared_as(
        broker_uri,
        *handler_topology(spec("pool"), []),
        *handler_topology(spec("single", SINGLETON), []),
        *handler_topology(spec("broadcast", BROADCAST), []),
    )


async def test_a_handler_queue_type_overrides_the_config(
    broker_uri: str, host_factory: HostFactory
) -> None:
    await host_factory(pinged("classic", queue_type="classic"), QUORUM)
    await host_factory(pinged("quorum", queue_type=QueueType.QUORUM))
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
    assert sorted(await recorder.wait_for(2)) == [("classic", 1), ("quorum", 1)]
    await assert_declared_as(
        broker_uri, spec("classic", queue_type=QueueType.CLASSIC), spec("quorum")
    )
    # A classic handler's dead-letter queue is made when first needed, not before.
    assert not await queue_exists(broker_uri, "evt-src-ping--classic.handle.dlq")


async def test_handlers_without_reliable_delivery_stay_classic(
    broker_uri: str, host_factory: HostFactory
) -> None:
    services = [
        pinged("unreliable", reliable_delivery=False),
        pinged("cache", handler_type=BROADCAST, reliable_delivery=False),
    ]
    await host_factory(services, QUORUM)
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
    assert sorted(await recorder.wait_for(2)) == [("cache", 1), ("unreliable", 1)]


class Flaky:
    name = "flaky"

    @event_handler(SOURCE, EVENT, retry=Backoff(0.1, 0.3))
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", payload["n"])
        raise ConnectionError(f"attempt {len(recorder.calls)} failed")


async def test_retries_then_the_dead_letter_queue_on_quorum_queues(
    broker_uri: str,
    host_factory: HostFactory,
    broker_clock: object,
) -> None:
    await host_factory(Flaky, QUORUM)
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1}, message_id="m-1")
    (dead,) = await dead_letters(
        broker_uri, "evt-src-ping--flaky.handle", queue_type=QueueType.QUORUM
    )
    assert recorder.calls == [("attempt", 1)] * 3
    assert dead.properties.message_id == "m-1"
    headers = dead.properties.headers or {}
    assert headers["x-trioevents-error"] == "ConnectionError: attempt 3 failed"
    assert headers["x-trioevents-attempts"] == 3
    # Declared at start, as quorum queues: the handler's and its delay queues.
    await assert_declared_as(broker_uri, *handler_topology(spec("flaky"), [100, 300]))


class Poison:
    name = "poison"

    @event_handler(SOURCE, EVENT, requeue_on_error=True)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])
        if payload["n"] == 1:
            raise RuntimeError("poison")


async def test_requeue_on_error_stops_at_the_delivery_limit(
    broker_uri: str, host_factory: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker's backstop: past the limit the message goes to ``.dlq``."""
    queue = "evt-src-ping--poison.handle"
    host = await host_factory(Poison, {**QUORUM, "QUORUM_DELIVERY_LIMIT": 2})
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1}, message_id="m-1")
    (dead,) = await dead_letters(broker_uri, queue, queue_type=QueueType.QUORUM)
    # The first delivery and 2 redeliveries; the broker took it on the third return.
    assert recorder.calls == [("poison", 1)] * 3
    assert dead.properties.message_id == "m-1"
    (death,) = (dead.properties.headers or {})["x-death"]
    assert (death["reason"], death["queue"]) == ("delivery_limit", queue)
    [backstop] = log_lines(caplog, "m-1", "the queue's delivery limit")
    assert f"moves it to '{queue}.dlq'" in backstop
    assert "redelivered 2 times" in backstop
    # The host keeps serving.
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 2})
    assert (await recorder.wait_for(4))[-1] == ("poison", 2)
    assert host.serving


# -------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "options",
    [
        {"reliable_delivery": False, "queue_type": "quorum"},
        {"handler_type": BROADCAST, "reliable_delivery": False, "queue_type": "quorum"},
        {"handler_type": SINGLETON, "reliable_delivery": False, "queue_type": "quorum"},
    ],
)
def test_a_quorum_queue_for_a_handler_without_reliable_delivery_is_refused(
    options: dict[str, Any],
) -> None:
    with pytest.raises(
        EventHandlerConfigurationError, match="needs reliable_delivery=True"
    ):
        event_handler(SOURCE, EVENT, **options)


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(EventHandlerConfigurationError, match="unknown queue_type"):
        event_handler(SOURCE, EVENT, queue_type="stream")


# ---------------------------------------------------- a queue of the other type


@pytest.mark.parametrize(
    ("existing", "config", "wanted"),
    [
        (QueueType.CLASSIC, QUORUM, QueueType.QUORUM),
        (QueueType.QUORUM, {}, QueueType.CLASSIC),
    ],
)
async def test_a_queue_of_the_other_type_stops_serve_saying_how_to_migrate(
    broker_uri: str,
    host_factory: HostFactory,
    existing: QueueType,
    config: dict[str, str],
    wanted: QueueType,
) -> None:
    queue = spec("pool", queue_type=existing)
    async with connect(broker_uri) as connection:
        await queue.declare(connection)  # as nameko, or a quorum host, left it
    with pytest.raises(EventHandlerConfigurationError) as caught:
        await host_factory(pinged("pool"), config)
    message = str(caught.value)
    assert message.startswith("pool.handle: queue 'evt-src-ping--pool.handle' ")
    assert f"exists as a {existing} queue" in message
    assert f"declares it as a {wanted} queue" in message
    assert "QUEUE_TYPE" in message
    assert "drain" in message
    assert "Migrating from classic queues" in message
    assert isinstance(caught.value.__cause__, PreconditionFailed)
    # The probe left the queue as it was.
    await assert_declared_as(broker_uri, queue)


async def test_a_classic_dead_letter_queue_stops_a_quorum_handler(
    broker_uri: str, host_factory: HostFactory
) -> None:
    async with connect(broker_uri) as connection:
        await connection.declare_queue("evt-src-ping--pool.handle.dlq", durable=True)
    with pytest.raises(
        EventHandlerConfigurationError,
        match=r"queue 'evt-src-ping--pool\.handle\.dlq' exists as a classic queue",
    ):
        await host_factory(pinged("pool"), QUORUM)


async def test_a_changed_delivery_limit_stops_serve_naming_both_limits(
    broker_uri: str, host_factory: HostFactory
) -> None:
    async with connect(broker_uri) as connection:
        for queue in handler_topology(spec("pool", delivery_limit=20), []):
            await queue.declare(connection)
    with pytest.raises(
        EventHandlerConfigurationError,
        match=r"has x-delivery-limit 20, but QUORUM_DELIVERY_LIMIT is 30: .* Set "
        r"QUORUM_DELIVERY_LIMIT back to 20",
    ):
        await host_factory(pinged("pool"), {**QUORUM, "QUORUM_DELIVERY_LIMIT": 30})
