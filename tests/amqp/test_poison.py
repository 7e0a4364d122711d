"""Poison messages from a raw publisher never break the connection (#12).

Anyone who may publish to a source exchange can send a content header no
Python type holds, or a body far over ``MAX_MESSAGE_SIZE``. The host must treat
such a message as one bad message — dead-lettered (or rejected) once, with the
reason — and keep its connection, so that its other consumers, in the same
host, go on as if nothing happened.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import EventDispatcher, event_handler
from trioevents._host import transport_for_uri

from .raw_publisher import publish_raw

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

pytestmark = pytest.mark.rabbitmq

SOURCE = "poison_src"
EXCHANGE = f"{SOURCE}.events"

seen: dict[str, list[Any]] = {"victim": [], "neighbour": []}
arrived = trio.Event()


def note(who: str, value: Any) -> None:
    global arrived
    seen[who].append(value)
    arrived.set()
    arrived = trio.Event()


async def wait_seen(who: str, count: int) -> None:
    with trio.fail_after(30):
        while len(seen[who]) < count:
            await arrived.wait()


@pytest.fixture(autouse=True)
def fresh() -> None:
    global arrived
    for calls in seen.values():
        calls.clear()
    arrived = trio.Event()


class Victim:
    name = "victim"
    dispatch = EventDispatcher()

    @event_handler(SOURCE, "ev")
    async def handle(self, payload: Any) -> None:
        note("victim", payload)


class Neighbour:
    name = "neighbour"

    @event_handler(SOURCE, "other")
    async def handle(self, payload: Any) -> None:
        note("neighbour", payload)


def short(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def table(entries: bytes) -> bytes:
    return struct.pack(">I", len(entries)) + entries


JSON = short(b"application/json")
CONTENT_TYPE, HEADERS, MESSAGE_ID, TIMESTAMP = 1 << 15, 1 << 13, 1 << 7, 1 << 6


def props(flags: int, *values: bytes) -> bytes:
    return struct.pack(">H", flags) + b"".join(values)


#: name -> (raw properties, dead-lettered?)
POISON: dict[str, tuple[bytes, bool]] = {
    "message-id": (props(CONTENT_TYPE | MESSAGE_ID, JSON, short(b"id\xff")), True),
    "content-type": (props(CONTENT_TYPE, short(b"application/\xc3")), True),
    "header-key": (
        props(
            CONTENT_TYPE | HEADERS,
            JSON,
            table(short(b"k\xfe") + b"S" + struct.pack(">I", 1) + b"v"),
        ),
        True,
    ),
    "timestamp-2**62": (
        props(CONTENT_TYPE | TIMESTAMP, JSON, struct.pack(">Q", 2**62)),
        False,
    ),
    "header-timestamp-us": (
        props(
            CONTENT_TYPE | HEADERS,
            JSON,
            table(short(b"at") + b"T" + struct.pack(">Q", 1_700_000_000_000_000)),
        ),
        False,
    ),
}


class Connects(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("connected to"):
            self.count += 1


@pytest.fixture
def connects() -> Any:
    handler = Connects()
    logger = logging.getLogger("trioevents.host")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def dead_letters(uri: str, queue: str) -> list[dict[str, Any]]:
    async with transport_for_uri(uri).open_connection() as connection:
        ready = (await connection.declare_queue(queue, durable=True)).message_count
        headers = []
        async with connection.open_consumer(queue) as consumer:
            for _ in range(ready):
                delivery = await consumer.receive()
                headers.append(dict(delivery.properties.headers or {}))
                await delivery.ack()
    return headers


async def test_poison_properties_are_dead_lettered_and_the_link_stays(
    rabbit_vhost: str, host_factory: HostFactory, connects: Connects
) -> None:
    await host_factory([Victim, Neighbour])
    for number, (raw, _) in enumerate(POISON.values()):
        body = json.dumps({"poison": number}).encode()
        await publish_raw(rabbit_vhost, EXCHANGE, "ev", raw, body)
    async with host_factory.dispatcher() as dispatch:
        for n in range(10):
            await dispatch(SOURCE, "other", {"n": n})
            await dispatch(SOURCE, "ev", {"good": n})
    await wait_seen("neighbour", 10)
    legal = sum(1 for _, dead in POISON.values() if not dead)
    await wait_seen("victim", 10 + legal)
    assert sorted(p["n"] for p in seen["neighbour"]) == list(range(10))
    # the legal-but-odd ones were handled, each once
    handled = [p["poison"] for p in seen["victim"] if "poison" in p]
    assert handled == [i for i, (_, dead) in enumerate(POISON.values()) if not dead]
    dlq = "evt-poison_src-ev--victim.handle.dlq"
    errors = [h["x-trioevents-error"] for h in await dead_letters(rabbit_vhost, dlq)]
    assert len(errors) == sum(1 for _, dead in POISON.values() if dead)
    assert all("not valid UTF-8" in error for error in errors)
    # one connection each for the host and the dispatcher: no reconnect loop
    assert connects.count == 2


class Small:
    name = "small"

    @event_handler(SOURCE, "big")
    async def handle(self, payload: Any) -> None:
        note("victim", payload)


async def test_a_body_over_max_message_size_is_rejected_without_being_read(
    rabbit_vhost: str,
    host_factory: HostFactory,
    connects: Connects,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await host_factory(Small, {"MAX_MESSAGE_SIZE": 1024 * 1024})
    big = json.dumps({"pad": "x" * (5 * 1024 * 1024)}).encode()
    await publish_raw(rabbit_vhost, EXCHANGE, "big", props(CONTENT_TYPE, JSON), big)
    async with host_factory.dispatcher() as dispatch:
        await dispatch(SOURCE, "big", {"small": True})
    await wait_seen("victim", 1)
    assert seen["victim"] == [{"small": True}]
    (line,) = [
        r.getMessage() for r in caplog.records if "rejecting event" in r.getMessage()
    ]
    assert "exceeds MAX_MESSAGE_SIZE (1048576 bytes)" in line
    async with transport_for_uri(rabbit_vhost).open_connection() as connection:
        queue = "evt-poison_src-big--small.handle"
        assert (await connection.declare_queue(queue, passive=True)).message_count == 0
    assert connects.count == 2  # the host and the dispatcher, once each
