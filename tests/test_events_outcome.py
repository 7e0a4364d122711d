"""After the handler: ack, requeue or dead-letter (``trioevents._events._outcome``).

On both brokers. A failed handler's delivery is acked and logged (nameko), or
requeued if ``requeue_on_error`` covers the error. A message that cannot be
decoded never reaches a handler: whatever is wrong with it, the host keeps
serving (a good event published after it is handled), the message is not lost
(it lands in ``{queue}.dlq`` with its body and headers plus
``x-trioevents-error`` naming the cause), and one clear log line names the
queue, the message id and the cause. The decision itself is tested without a
broker in ``test_events_policy.py``; retries in ``test_events_retry.py``.

The hosts of the dead-letter tests run with ``max_workers=1``: a worker settles
its delivery (the dead-letter copy confirmed, then the ack) before the next one
starts, so once the good event is handled the bad one is settled too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs
import pytest

import trioevents
from trioevents import Properties, event_handler

from .support.brokers import connect, dispatch, publish, queue_depth, take_all
from .support.detonator import detonations, pickled, yaml_document
from .support.recording import Recorder, problems

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trioevents.testing import HostFactory

SOURCE = "src"
EXCHANGE = "src.events"
EVENT = "ping"
GOOD = {"n": 1}
GOOD_ORDER = {"id": 1, "total": "9.99"}
#: Large enough for a 100k-deep JSON bomb to reach the depth check.
MAX_MESSAGE_SIZE = 300_000
HOST_CONFIG: dict[str, Any] = {
    "max_workers": 1,
    "MAX_MESSAGE_SIZE": MAX_MESSAGE_SIZE,
    "SHUTDOWN_GRACE": 1,
}

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_recorder() -> Iterator[None]:
    global recorder
    recorder = Recorder()
    detonations.clear()
    yield
    assert detonations == [], "a message body was executed"


def queue_of(service: type) -> str:
    return f"evt-{SOURCE}-{EVENT}--{service.name}.handle"  # type: ignore[attr-defined]


# ------------------------------------------------------------ a handler that fails


class Failing:
    name = "failing"

    @event_handler(SOURCE, EVENT)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])
        if payload["n"] == 1:
            raise RuntimeError("boom")


async def test_an_error_without_requeue_is_acked_and_the_host_keeps_serving(
    broker_uri: str, host_factory: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await host_factory(Failing)
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1}, message_id="m-1")
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 2})
    calls = await recorder.wait_for(2)
    await host_factory.aclose()  # graceful: what is in flight finishes, is acked
    assert sorted(n for _, n in calls) == [1, 2]
    assert len(recorder.calls) == 2
    assert await queue_depth(broker_uri, queue_of(Failing)) == 0
    errors = [
        r
        for r in caplog.records
        if r.levelname == "ERROR" and r.name.startswith("trioevents")
    ]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "message id m-1" in message
    # the worker's call id, as nameko's call_id_stack carries it on
    assert re.search(r"call id failing\.handle\.[0-9a-f-]{36}\b", message)
    assert errors[0].exc_info is not None


class Requeuing:
    name = "requeuing"
    failures = 0

    @event_handler(SOURCE, EVENT, requeue_on_error=True)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", payload["n"])
        if Requeuing.failures < 2:
            Requeuing.failures += 1
            raise RuntimeError("not yet")
        recorder.record("done", payload["n"])


async def test_requeue_on_error_redelivers_until_it_succeeds(
    broker_uri: str, host_factory: HostFactory
) -> None:
    Requeuing.failures = 0
    await host_factory(Requeuing)
    await dispatch(broker_uri, SOURCE, EVENT, {"n": 1})
    calls = await recorder.wait_for(4)
    await host_factory.aclose()
    assert calls == [("attempt", 1), ("attempt", 1), ("attempt", 1), ("done", 1)]
    assert await queue_depth(broker_uri, queue_of(Requeuing)) == 0


class Picky:
    name = "picky"
    lookups = 0

    @event_handler(SOURCE, EVENT, requeue_on_error=(LookupError,))
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", payload["kind"])
        if payload["kind"] == "lookup":
            Picky.lookups += 1
            if Picky.lookups == 1:
                raise KeyError("retry me")
        if payload["kind"] == "value":
            raise ValueError("drop me")


async def test_requeue_on_error_tuple_requeues_only_those_types(
    broker_uri: str, host_factory: HostFactory
) -> None:
    Picky.lookups = 0
    await host_factory(Picky)
    await dispatch(broker_uri, SOURCE, EVENT, {"kind": "value"}, {"kind": "lookup"})
    calls = await recorder.wait_for(3)
    await host_factory.aclose()
    # ValueError: acked, seen once. KeyError (a LookupError): requeued, seen twice.
    assert sorted(kind for _, kind in calls) == ["lookup", "lookup", "value"]
    assert len(recorder.calls) == 3
    assert await queue_depth(broker_uri, queue_of(Picky)) == 0


# ------------------------------------------------ undecodable: dead-lettered


class Sink:
    name = "sink"

    @event_handler(SOURCE, EVENT)
    async def handle(self, payload: Any) -> None:
        recorder.record(self.name, payload)


@attrs.frozen
class OrderPlaced:
    id: int
    total: str
    items: list[int] = attrs.Factory(list)


class Typed:
    name = "typed"

    @event_handler(SOURCE, EVENT)
    async def handle(self, event: OrderPlaced) -> None:
        recorder.record(self.name, event)


@attrs.frozen
class Bad:
    """A malformed message and what its dead-lettering must say."""

    id: str
    body: bytes
    cause: str
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    service: type = Sink


def _many_wrong_items() -> bytes:
    return b'{"id": 1, "total": "9.99", "items": [' + b'"x", ' * 1999 + b'"x"]}'


BAD_MESSAGES = [
    Bad(
        "oversized",
        b'"' + b"a" * MAX_MESSAGE_SIZE + b'"',
        f"exceed the limit of {MAX_MESSAGE_SIZE} bytes (MAX_MESSAGE_SIZE)",
    ),
    Bad("invalid-utf8", b'{"n": "\xff\xfe\xc3"}', "not valid UTF-8"),
    Bad(
        "json-bomb",
        b"[" * 100_000 + b"]" * 100_000,
        "nests deeper than 100 levels (MAX_JSON_DEPTH)",
    ),
    Bad(
        "just-too-deep",
        b'{"a": ' * 101 + b"1" + b"}" * 101,
        "nests deeper than 100 levels (MAX_JSON_DEPTH)",
    ),
    Bad("not-json", b"hello, world", "not valid JSON"),
    Bad("empty-body", b"", "not valid JSON"),
    Bad("truncated-json", b'{"n": ', "not valid JSON"),
    Bad(
        "pickle",
        pickled(),
        "unsupported content type 'application/x-python-serialize'",
        content_type="application/x-python-serialize",
        content_encoding="binary",
    ),
    Bad(
        "yaml",
        yaml_document("yaml").encode(),
        "unsupported content type 'application/x-yaml'",
        content_type="application/x-yaml",
    ),
    Bad(
        "text-plain", b'{"n": 1}', "unsupported content type", content_type="text/plain"
    ),
    Bad(
        "encoding-binary",
        b'{"n": 1}',
        "unsupported content encoding 'binary'",
        content_encoding="binary",
    ),
    Bad(
        "encoding-latin-1",
        b'{"n": "\xe9"}',
        "unsupported content encoding 'latin-1'",
        content_encoding="latin-1",
    ),
    Bad(
        "charset-latin-1",
        b'{"n": 1}',
        "unsupported charset",
        content_type="application/json; charset=latin-1",
    ),
    Bad(
        "unknown-kombu-marker",
        b'{"__type__": "pickle", "__value__": "' + b"A" * 100_000 + b'"}',
        "unknown kombu type marker 'pickle'",
    ),
    Bad(
        "missing-field",
        b'{"id": 1}',
        "does not match OrderPlaced: required field missing @ $.total",
        service=Typed,
    ),
    Bad(
        "wrong-field-type",
        b'{"id": "one", "total": "9.99"}',
        "does not match OrderPlaced: invalid value for type, expected int @ $.id",
        service=Typed,
    ),
    Bad("not-an-object", b"[1, 2]", "does not match OrderPlaced", service=Typed),
    Bad(
        "two-thousand-wrong-items",
        _many_wrong_items(),
        "expected int @ $.items[9]; and 1990 more",  # not 2000 problems
        service=Typed,
    ),
]


@pytest.mark.parametrize("bad", BAD_MESSAGES, ids=lambda bad: bad.id)
async def test_an_undecodable_message_is_dead_lettered_and_the_host_keeps_serving(
    bad: Bad,
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = queue_of(bad.service)
    await host_factory(bad.service, HOST_CONFIG)
    headers = {"custom": "kept", "nameko.call_id_stack": ["web.checkout.1"]}
    message_id = f"bad-{bad.id}"
    await publish(
        broker_uri,
        EXCHANGE,
        EVENT,
        bad.body,
        Properties(
            content_type=bad.content_type,
            content_encoding=bad.content_encoding,
            headers=headers,
            message_id=message_id,
            delivery_mode=2,
        ),
    )
    good = GOOD_ORDER if bad.service is Typed else GOOD
    await dispatch(broker_uri, SOURCE, EVENT, good)

    ((who, value),) = await recorder.wait_for(1)  # the host keeps serving
    assert who == bad.service.name  # type: ignore[attr-defined]
    if bad.service is Typed:  # the good one is structured
        assert value == OrderPlaced(id=1, total="9.99")

    if bad.id == "oversized" and not broker_uri.startswith("memory"):
        # The RabbitMQ transport does not even read a body over the limit, so
        # there is nothing to copy: rejected without requeue, with the reason.
        assert await take_all(broker_uri, f"{queue}.dlq") == []
        assert await queue_depth(broker_uri, queue) == 0
        (line,) = problems(caplog, message_id)
        assert "rejecting event" in line
        assert f"exceeds MAX_MESSAGE_SIZE ({MAX_MESSAGE_SIZE} bytes)" in line
        return
    (dead,) = await take_all(broker_uri, f"{queue}.dlq")
    assert dead.body == bad.body
    assert dead.properties.message_id == message_id
    assert dead.properties.content_type == bad.content_type
    assert dead.properties.content_encoding == bad.content_encoding
    assert dead.properties.headers is not None
    assert headers.items() <= dead.properties.headers.items()
    error = dead.properties.headers["x-trioevents-error"]
    assert error.startswith("SerializationError: ")
    assert bad.cause in error
    assert len(error) <= 1000
    assert dead.properties.headers["x-trioevents-original-exchange"] == EXCHANGE
    assert dead.properties.headers["x-trioevents-original-routing-key"] == EVENT
    assert await queue_depth(broker_uri, queue) == 0  # nothing left behind, or lost

    (line,) = problems(caplog, message_id)
    assert f"{queue}.dlq" in line
    assert bad.cause in line
    assert len(line) < 2000  # a clear line, not the payload echoed back


async def test_a_message_whose_headers_fill_a_frame_still_reaches_the_dlq(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The error headers may not fit next to large original headers (AMQP frame).

    The copy then goes without the traceback: the reason is still on it.
    """
    queue = queue_of(Sink)
    await host_factory(Sink, HOST_CONFIG)
    headers = {"padding": "p" * 130_000}
    await publish(
        broker_uri,
        EXCHANGE,
        EVENT,
        b"not json",
        Properties(content_type="application/json", headers=headers, message_id="big"),
    )
    await dispatch(broker_uri, SOURCE, EVENT, GOOD)
    await recorder.wait_for(1)
    (dead,) = await take_all(broker_uri, f"{queue}.dlq")
    assert dead.body == b"not json"
    assert dead.properties.headers is not None
    assert dead.properties.headers["padding"] == headers["padding"]
    assert "not valid JSON" in dead.properties.headers["x-trioevents-error"]
    assert await queue_depth(broker_uri, queue) == 0
    assert problems(caplog, "big", f"{queue}.dlq")


@pytest.mark.rabbitmq
async def test_a_message_too_large_to_copy_at_all_is_rejected_not_looped(
    rabbit_vhost: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Headers that fill the frame to the brim leave no room for any error header.

    The copy then goes as it came; the cause is in the log.
    """
    queue = queue_of(Sink)
    await host_factory(Sink, HOST_CONFIG)
    base = Properties(content_type="application/json", message_id="brim")
    size = 131_072
    async with connect(rabbit_vhost) as connection:
        while True:  # the largest padding that fits in one frame
            properties = attrs.evolve(base, headers={"padding": "p" * size})
            try:
                await connection.publish(EXCHANGE, EVENT, b"not json", properties)
            except trioevents.InvalidRequest:
                size -= 1
            else:
                break
    await dispatch(rabbit_vhost, SOURCE, EVENT, GOOD)
    await recorder.wait_for(1)
    (dead,) = await take_all(rabbit_vhost, f"{queue}.dlq")
    assert dead.body == b"not json"
    assert dead.properties.headers == {"padding": "p" * size}
    assert await queue_depth(rabbit_vhost, queue) == 0
    (line,) = problems(caplog, "brim", "not valid JSON")
    assert f"{queue}.dlq" in line
