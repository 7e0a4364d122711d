"""Bad input, end to end, on both brokers.

Each malformed message is published straight to the event exchange with the
transport (no dispatcher to tidy it up) at a serving host. Whatever it is, the
host keeps serving (a good event published after it is handled), the message
is not lost (it is handled, or it lands in ``{queue}.dlq`` with its body and
headers plus ``x-trioevents-error`` naming the cause), and one clear log line
names the queue, the message id and the cause. Also here: headers of the wrong
type, a handler that never returns, passwords never printed, and no codec that
runs code.

The hosts run with ``max_workers=1``: a worker settles its delivery (the
dead-letter copy confirmed, then the ack) before the next one starts, so once
the good event is handled the bad one is settled too.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import pathlib
import pickle
import traceback
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

import trioevents
from trioevents import (
    Backoff,
    BrokerUnavailable,
    ConfigurationError,
    Delivery,
    HandlerTimeout,
    Properties,
    ServiceHost,
    WorkerContext,
    event_handler,
)
from trioevents._host import transport_for_uri

from .helpers import Recorder, WorkerCtx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from trioevents import abc
    from trioevents.testing import HostFactory

SOURCE = "src"
EXCHANGE = "src.events"
EVENT = "ping"
GOOD_BODY = b'{"n": 1}'
GOOD_ORDER = b'{"id": 1, "total": "9.99"}'
#: Large enough for a 100k-deep JSON bomb to reach the depth check.
MAX_MESSAGE_SIZE = 300_000
HOST_CONFIG: dict[str, Any] = {
    "max_workers": 1,
    "MAX_MESSAGE_SIZE": MAX_MESSAGE_SIZE,
    "SHUTDOWN_GRACE": 1,
}

recorder = Recorder()
detonations: list[str] = []


@pytest.fixture(autouse=True)
def fresh_recorder() -> Iterator[None]:
    global recorder
    recorder = Recorder()
    detonations.clear()
    yield
    assert detonations == [], "a message body was executed"


def detonate(how: str) -> str:
    """What a pickle or YAML body would call if anything ever loaded it."""
    detonations.append(how)
    return how


class Detonator:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return detonate, ("pickle",)


# ------------------------------------------------------------------- services


class Sink:
    name = "sink"
    ctx = WorkerCtx()

    @event_handler(SOURCE, EVENT)
    async def handle(self, payload: Any) -> None:
        recorder.record("sink", (payload, self.ctx))


@attrs.frozen
class OrderPlaced:
    id: int
    total: str
    items: list[int] = attrs.Factory(list)


class Typed:
    name = "typed"

    @event_handler(SOURCE, EVENT)
    async def handle(self, event: OrderPlaced) -> None:
        recorder.record("typed", event)


class Retrying:
    """Fails every attempt at any event but the good one: exercises the retry counter."""

    name = "retrying"

    @event_handler(SOURCE, EVENT, retry=Backoff(0.05, 0.05))
    async def handle(self, payload: Any) -> None:
        recorder.record("retrying", payload)
        if payload != {"n": 1}:
            raise ValueError("always fails")


class Hanging:
    name = "hanging"

    @event_handler(SOURCE, EVENT, timeout=0.2)
    async def handle(self, payload: Any) -> None:
        recorder.record("hanging", payload)
        if payload.get("hang"):
            await trio.sleep_forever()


class HangingWithRetry:
    name = "hanging_retry"

    @event_handler(SOURCE, EVENT, timeout=0.2, retry=Backoff(0.05))
    async def handle(self, payload: Any) -> None:
        recorder.record("hanging_retry", payload)
        if payload.get("hang"):
            await trio.sleep_forever()


def queue_of(service: type) -> str:
    return f"evt-{SOURCE}-{EVENT}--{service.name}.handle"  # type: ignore[attr-defined]


# -------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def connect(uri: str) -> AsyncIterator[abc.Connection]:
    async with transport_for_uri(uri).open_connection() as connection:
        yield connection


async def publish(uri: str, body: bytes, properties: Properties) -> None:
    """Publish a raw message to the event exchange, bypassing the dispatcher."""
    async with connect(uri) as connection:
        await connection.publish(EXCHANGE, EVENT, body, properties)


async def publish_good(uri: str, body: bytes = GOOD_BODY) -> None:
    await publish(
        uri,
        body,
        Properties(
            content_type="application/json",
            content_encoding="utf-8",
            message_id="good",
            delivery_mode=2,
        ),
    )


async def take_all(uri: str, queue: str) -> list[Delivery]:
    """Take (and ack) every message ready in *queue*; none if it does not exist."""
    out = []
    async with connect(uri) as connection:
        try:
            declared = await connection.declare_queue(queue, passive=True)
        except trioevents.NotFound:
            return []
    async with connect(uri) as connection:
        async with connection.open_consumer(queue) as consumer:
            with trio.fail_after(10):
                for _ in range(declared.message_count):
                    delivery = await consumer.receive()
                    await delivery.ack()
                    out.append(delivery)
    return out


async def ready_in(uri: str, queue: str) -> int:
    async with connect(uri) as connection:
        return (await connection.declare_queue(queue, passive=True)).message_count


@contextlib.asynccontextmanager
async def dlq_consumer(uri: str, queue: str) -> AsyncIterator[abc.Consumer]:
    """Consume the DLQ of *queue*, declared as the host declares it."""
    async with connect(uri) as connection:
        await connection.declare_queue(f"{queue}.dlq", durable=True, arguments={})
        async with connection.open_consumer(f"{queue}.dlq") as consumer:
            yield consumer


def problems(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    """The trioevents WARNING+ log lines that contain every one of *needles*."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("trioevents")
        and record.levelno >= logging.WARNING
        and all(needle in record.getMessage() for needle in needles)
    ]


@pytest.fixture
def clock(broker_uri: str) -> trio.testing.MockClock | None:
    """Virtual time on the embedded broker; real time on RabbitMQ.

    A task waiting for the socket counts as blocked, so an autojump clock would
    rush RabbitMQ's round trips into their timeouts.
    """
    if broker_uri.startswith("memory"):
        return trio.testing.MockClock(autojump_threshold=0)
    return None


# ------------------------------------------------ undecodable: dead-lettered


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
        pickle.dumps(Detonator()),
        "unsupported content type 'application/x-python-serialize'",
        content_type="application/x-python-serialize",
        content_encoding="binary",
    ),
    Bad(
        "yaml",
        b"!!python/object/apply:tests.test_bad_input.detonate ['yaml']\n",
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
        bad.body,
        Properties(
            content_type=bad.content_type,
            content_encoding=bad.content_encoding,
            headers=headers,
            message_id=message_id,
            delivery_mode=2,
        ),
    )
    good = GOOD_ORDER if bad.service is Typed else GOOD_BODY
    await publish_good(broker_uri, good)

    ((who, _),) = await recorder.wait_for(1)  # the host keeps serving
    assert who == bad.service.name  # type: ignore[attr-defined]

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
    assert await ready_in(broker_uri, queue) == 0  # nothing left behind, or lost

    (line,) = problems(caplog, message_id)
    assert f"{queue}.dlq" in line
    assert bad.cause in line
    assert len(line) < 2000  # a clear line, not the payload echoed back
    if bad.service is Typed:  # the good one is structured
        assert recorder.calls[0][1] == OrderPlaced(id=1, total="9.99")


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
        b"not json",
        Properties(content_type="application/json", headers=headers, message_id="big"),
    )
    await publish_good(broker_uri)
    await recorder.wait_for(1)
    (dead,) = await take_all(broker_uri, f"{queue}.dlq")
    assert dead.body == b"not json"
    assert dead.properties.headers is not None
    assert dead.properties.headers["padding"] == headers["padding"]
    assert "not valid JSON" in dead.properties.headers["x-trioevents-error"]
    assert await ready_in(broker_uri, queue) == 0
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
    await publish_good(rabbit_vhost)
    await recorder.wait_for(1)
    (dead,) = await take_all(rabbit_vhost, f"{queue}.dlq")
    assert dead.body == b"not json"
    assert dead.properties.headers == {"padding": "p" * size}
    assert await ready_in(rabbit_vhost, queue) == 0
    (line,) = problems(caplog, "brim", "not valid JSON")
    assert f"{queue}.dlq" in line


# ----------------------------------------- headers of the wrong type: handled


@pytest.mark.parametrize(
    ("stack", "kept", "warned"),
    [
        pytest.param(42, [], True, id="an-int"),
        pytest.param("web.checkout.1", [], True, id="a-string"),
        pytest.param(
            [1, 2.5, True, None, {"a": 1}, ["x"], "web.checkout.1"],
            ["web.checkout.1"],
            True,
            id="non-strings",
        ),
        pytest.param(
            [f"caller.fire.{n}" for n in range(2000)],
            [f"caller.fire.{n}" for n in range(1990, 2000)],
            False,  # only capped, as nameko does
            id="huge",
        ),
        pytest.param(list(range(2000)), [], True, id="huge-non-strings"),
    ],
)
async def test_a_call_id_stack_of_the_wrong_shape_is_dropped_with_a_warning(
    stack: Any,
    kept: list[str],
    warned: bool,
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await host_factory(Sink, HOST_CONFIG)
    await publish(
        broker_uri,
        b'{"n": 2}',
        Properties(
            content_type="application/json",
            headers={"nameko.call_id_stack": stack, "nameko.user_id": "u42"},
            message_id="stack",
        ),
    )
    ((_, (payload, ctx)),) = await recorder.wait_for(1)
    assert payload == {"n": 2}
    assert isinstance(ctx, WorkerContext)
    assert ctx.data == {"user_id": "u42"}
    assert list(ctx.parent_call_id_stack)[-10:] == kept
    assert len(ctx.call_id_stack) == min(len(kept), 10) + 1
    assert ctx.call_id_stack[-1] == ctx.call_id
    warnings = problems(caplog, "nameko.call_id_stack")
    if not warned:
        assert warnings == []
    else:
        (line,) = warnings  # one line, however many entries were wrong
        assert "sink.handle" in line
        assert len(line) < 500
    await publish_good(broker_uri)
    await recorder.wait_for(2)
    assert await take_all(broker_uri, f"{queue_of(Sink)}.dlq") == []


async def test_context_headers_of_other_types_reach_the_worker_as_they_came(
    broker_uri: str, host_factory: HostFactory
) -> None:
    """``nameko.language`` as bytes (an AMQP byte array) is passed on untouched."""
    await host_factory(Sink, HOST_CONFIG)
    await publish(
        broker_uri,
        GOOD_BODY,
        Properties(
            content_type="application/json",
            headers={"nameko.language": b"en-gb", "nameko.auth_token": 7},
        ),
    )
    ((_, (_, ctx)),) = await recorder.wait_for(1)
    assert ctx.data == {"language": b"en-gb", "auth_token": 7}


RETRY_QUEUE = f"{queue_of(Retrying)}.retry.50"


@pytest.mark.parametrize(
    ("x_death", "calls", "attempts", "kept"),
    [
        # not a list: no attempt counted; the copies go without it
        pytest.param("garbage", 3, 3, False, id="not-a-list"),
        # an entry without a count counts once, as RabbitMQ reads it
        pytest.param(
            [{"queue": RETRY_QUEUE, "reason": "expired"}], 3, 3, True, id="no-count"
        ),
        pytest.param(
            ["junk", 5, [1], {"queue": 7}, {"count": "many"}],
            3,
            3,
            False,
            id="junk-entries",
        ),
        pytest.param(
            [{"queue": RETRY_QUEUE, "reason": "expired", "count": "x"}],
            3,
            3,
            False,
            id="count-not-an-int",
        ),
    ],
)
async def test_a_malformed_x_death_header_never_breaks_the_retry_counter(
    x_death: Any,
    calls: int,
    attempts: int,
    kept: bool,
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The retry counter reads what it can; the copies it makes are sound.

    RabbitMQ 3.10 crashes the queue, and loses the message, when it
    dead-letters one whose ``x-death`` holds entries that are not tables, or a
    count that is not an integer: such entries never go to a retry queue. The
    header as it came is kept in ``x-trioevents-invalid-x-death``.
    """
    queue = queue_of(Retrying)
    await host_factory(Retrying, HOST_CONFIG)
    async with dlq_consumer(broker_uri, queue) as dlq:
        await publish(
            broker_uri,
            b'{"n": 2}',
            Properties(
                content_type="application/json",
                headers={"x-death": x_death},
                message_id="x-death",
            ),
        )
        with trio.fail_after(10):
            dead = await dlq.receive()
            await dead.ack()
    await publish_good(broker_uri)
    seen = await recorder.wait_for(calls + 1)
    assert [payload for _, payload in seen] == [{"n": 2}] * calls + [{"n": 1}]
    assert dead.body == b'{"n": 2}'
    headers = dead.properties.headers
    assert headers is not None
    assert headers["x-trioevents-attempts"] == attempts
    assert headers["x-trioevents-error"] == "ValueError: always fails"
    if kept:
        assert "x-trioevents-invalid-x-death" not in headers
    else:
        assert headers["x-trioevents-invalid-x-death"] == x_death
    assert all(isinstance(death.get("count", 1), int) for death in headers["x-death"])
    assert problems(caplog, "message id x-death", "giving up")
    assert await ready_in(broker_uri, queue) == 0


# --------------------------------------------------- a handler that never returns


async def test_a_handler_that_never_returns_times_out_and_is_acked(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
    clock: trio.testing.MockClock | None,
) -> None:
    """Without a retry policy a timed-out event is acked and logged (nameko)."""
    queue = queue_of(Hanging)
    await host_factory(Hanging, HOST_CONFIG)
    await publish(
        broker_uri,
        b'{"hang": true}',
        Properties(content_type="application/json", message_id="hang"),
    )
    await publish_good(broker_uri)
    calls = await recorder.wait_for(2)
    assert [payload for _, payload in calls] == [{"hang": True}, {"n": 1}]
    (line,) = problems(caplog, "hang", "acked (not requeued)")
    assert "hanging.handle" in line
    (record,) = [r for r in caplog.records if r.exc_info and "hang" in r.getMessage()]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], HandlerTimeout)
    assert "timeout of 0.2 s" in str(record.exc_info[1])
    assert await ready_in(broker_uri, queue) == 0
    assert await take_all(broker_uri, f"{queue}.dlq") == []


async def test_a_handler_that_never_returns_is_retried_then_dead_lettered(
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
    clock: trio.testing.MockClock | None,
) -> None:
    queue = queue_of(HangingWithRetry)
    await host_factory(HangingWithRetry, {**HOST_CONFIG, "max_workers": 2})
    async with dlq_consumer(broker_uri, queue) as dlq:
        await publish(
            broker_uri,
            b'{"hang": true}',
            Properties(content_type="application/json", message_id="hang"),
        )
        await publish_good(broker_uri)
        with trio.fail_after(10):
            dead = await dlq.receive()
            await dead.ack()
    calls = await recorder.wait_for(3)
    assert sorted(str(payload) for _, payload in calls) == [
        "{'hang': True}",
        "{'hang': True}",
        "{'n': 1}",
    ]
    assert dead.body == b'{"hang": true}'
    assert dead.properties.headers is not None
    error = dead.properties.headers["x-trioevents-error"]
    assert error.startswith("HandlerTimeout: hanging_retry.handle did not finish")
    assert dead.properties.headers["x-trioevents-attempts"] == 2
    assert problems(caplog, "hang", "retrying in 0.05 s")
    assert problems(caplog, "hang", "giving up", f"{queue}.dlq")
    assert await ready_in(broker_uri, queue) == 0


# -------------------------------------------------------- credentials: masked

SECRET = "s3cr3t-Pa55word"


def all_text(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """Everything a user could see: the error, its causes, every log record."""
    formatter = logging.Formatter()
    seen = [
        *traceback.format_exception(exc),
        repr(exc),
        *(formatter.format(record) for record in caplog.records),
        *(repr(record.args) for record in caplog.records),
    ]
    return "\n".join(seen)


async def test_an_unreachable_broker_never_shows_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioevents")
    host = ServiceHost(
        [Sink],
        {
            "AMQP_URI": f"amqp://guest:{SECRET}@127.0.0.1:1/vhost",
            "CONNECT_ATTEMPTS": 2,
            "RECONNECT_DELAY": 0.01,
        },
    )
    with pytest.raises(BrokerUnavailable) as caught:
        await host.serve()
    assert "amqp://guest:****@127.0.0.1:1/vhost" in str(caught.value)
    assert problems(caplog, "cannot connect to amqp://guest:****@127.0.0.1:1/vhost")
    assert SECRET not in all_text(caught.value, caplog)
    assert SECRET not in repr(host)
    assert SECRET not in repr(host.transport)

    with pytest.raises(BrokerUnavailable) as caught:
        async with host.dispatcher():
            pass  # pragma: no cover
    assert SECRET not in all_text(caught.value, caplog)


@pytest.mark.rabbitmq
async def test_a_refused_login_never_shows_the_password(
    rabbit_vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioevents")
    uri = rabbit_vhost.replace("guest:guest@", f"guest:{SECRET}@")
    assert SECRET in uri
    host = ServiceHost(
        [Sink], {"AMQP_URI": uri, "CONNECT_ATTEMPTS": 2, "RECONNECT_DELAY": 0.01}
    )
    with pytest.raises(BrokerUnavailable, match="403 ACCESS_REFUSED") as caught:
        await host.serve()
    assert "guest:****@" in str(caught.value)
    assert SECRET not in all_text(caught.value, caplog)


@pytest.mark.parametrize("password", ["se#cret", "se?cret"])
def test_a_uri_that_does_not_parse_never_shows_the_password(password: str) -> None:
    uri = f"amqp://guest:{password}@127.0.0.1:5672/"
    with pytest.raises(ConfigurationError) as caught:
        ServiceHost([Sink], {"AMQP_URI": uri}).transport  # noqa: B018
    assert password not in "".join(traceback.format_exception(caught.value))


# ---------------------------------------------------- no codec that runs code

PACKAGE = pathlib.Path(trioevents.__file__).parent
#: Modules that turn bytes into objects by running code, or can be told to.
UNSAFE_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "cloudpickle",
    "dill",
    "jsonpickle",
    "marshal",
    "shelve",
}


def _sources() -> list[pathlib.Path]:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 10
    return paths


def test_no_module_imports_a_code_running_codec() -> None:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            found += [
                f"{path.name}: import {name}"
                for name in names
                if name.split(".")[0] in UNSAFE_MODULES
            ]
    assert found == []


def test_no_module_calls_eval_exec_or_an_unsafe_yaml_loader() -> None:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in ("eval", "exec", "unsafe_load", "full_load", "load_all"):
                found.append(f"{path.name}:{node.lineno}: {name}()")
            elif name == "load" and isinstance(func, ast.Attribute):
                owner = ast.unparse(func.value)
                loader = [k for k in node.keywords if k.arg == "Loader"]
                if owner == "yaml" and not loader:
                    found.append(
                        f"{path.name}:{node.lineno}: yaml.load() without Loader"
                    )
    assert found == []


def test_the_yaml_loader_is_a_safe_loader() -> None:
    yaml = pytest.importorskip("yaml")
    from trioevents._config import _env_var_loader

    assert issubclass(_env_var_loader(), yaml.SafeLoader)
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        trioevents.Config.from_yaml(
            "AMQP_URI: !!python/object/apply:tests.test_bad_input.detonate ['config']\n"
        )
