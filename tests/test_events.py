"""The events API on the embedded broker: handler types, delivery, payloads."""

from __future__ import annotations

import dataclasses
import decimal
import re
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trioevents import (
    BROADCAST,
    SINGLETON,
    EventDispatcher,
    EventHandler,
    EventHandlerConfigurationError,
    WorkerContext,
    event_handler,
)

from .helpers import (
    Recorder,
    WorkerCtx,
    fresh_uri,
    make_host,
    queue_depth,
    queue_exists,
)

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_recorder() -> None:
    global recorder
    recorder = Recorder()


# --------------------------------------------------------------------- handler types


class Pool:
    name = "pool"

    @event_handler("src", "ping")
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])


class OtherPool:
    name = "other"

    @event_handler("src", "ping")
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])


async def test_service_pool_shares_each_event_among_instances(
    nursery: trio.Nursery,
) -> None:
    uri = fresh_uri()
    hosts = [
        make_host([Pool], uri),
        make_host([Pool], uri),
        make_host([OtherPool], uri),
    ]
    for host in hosts:
        await nursery.start(host.serve)
    async with hosts[0].dispatcher() as dispatch:
        for n in range(20):
            await dispatch("src", "ping", {"n": n})
    calls = await recorder.wait_for(40)
    await trio.testing.wait_all_tasks_blocked()
    pool = sorted(n for who, n in calls if who == "pool")
    other = sorted(n for who, n in calls if who == "other")
    assert pool == list(range(20))  # each once for the two "pool" instances
    assert other == list(range(20))  # and once for the other service
    assert len(recorder.calls) == 40
    nursery.cancel_scope.cancel()


class SingleA:
    name = "single_a"

    @event_handler("src", "ping", handler_type=SINGLETON)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])


class SingleB:
    name = "single_b"

    @event_handler("src", "ping", handler_type=SINGLETON)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])


async def test_singleton_gets_each_event_once_in_the_cluster(
    nursery: trio.Nursery,
) -> None:
    uri = fresh_uri()
    a, b = make_host([SingleA], uri), make_host([SingleB], uri)
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    async with a.dispatcher() as dispatch:
        for n in range(10):
            await dispatch("src", "ping", {"n": n})
    calls = await recorder.wait_for(10)
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(n for _, n in calls) == list(range(10))
    assert {who for who, _ in calls} == {"single_a", "single_b"}  # round-robin
    assert await queue_exists(uri, "evt-src-ping")
    nursery.cancel_scope.cancel()


class Cache:
    name = "cache"

    @event_handler("src", "ping", handler_type=BROADCAST, reliable_delivery=False)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])


async def test_broadcast_reaches_every_instance(nursery: trio.Nursery) -> None:
    uri = fresh_uri()
    hosts = [make_host([Cache], uri) for _ in range(3)]
    for host in hosts:
        await nursery.start(host.serve)
    async with hosts[0].dispatcher() as dispatch:
        await dispatch("src", "ping", {"n": 1})
        await dispatch("src", "ping", {"n": 2})
    calls = await recorder.wait_for(6)
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(n for _, n in calls) == [1, 1, 1, 2, 2, 2]
    nursery.cancel_scope.cancel()


def test_reliable_broadcast_with_the_default_identifier_is_refused() -> None:
    with pytest.raises(EventHandlerConfigurationError, match="broadcast identifier"):

        class Bad:
            name = "bad"

            @event_handler("src", "ping", handler_type=BROADCAST)
            async def handle(self, payload: Any) -> None: ...


class StableBroadcast(EventHandler):
    @property
    def broadcast_identifier(self) -> str:
        return "node-7"


class Reliable:
    name = "reliable"

    @StableBroadcast.decorator("src", "ping", handler_type=BROADCAST)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])


async def test_custom_broadcast_identifier_names_a_durable_queue() -> None:
    uri = fresh_uri()
    queue = "evt-src-ping--reliable.handle-node-7"
    host = make_host([Reliable], uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        assert await queue_exists(uri, queue)
        nursery.cancel_scope.cancel()
    # reliable: the queue outlives the host and keeps what is dispatched meanwhile
    async with host.dispatcher() as dispatch:
        await dispatch("src", "ping", {"n": 5})
    assert await queue_depth(uri, queue) == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        assert await recorder.wait_for(1) == [("reliable", 5)]
        nursery.cancel_scope.cancel()


# -------------------------------------------------------------- reliable delivery


class Unreliable:
    name = "unreliable"

    @event_handler("src", "ping", reliable_delivery=False)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])


async def test_reliable_delivery_keeps_events_across_a_restart() -> None:
    uri = fresh_uri()
    host = make_host([Pool], uri)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await host.stop()
    async with host.dispatcher() as dispatch:
        await dispatch("src", "ping", {"n": 1})
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        assert await recorder.wait_for(1) == [("pool", 1)]
        await host.stop()


async def test_unreliable_delivery_loses_events_while_down() -> None:
    uri = fresh_uri()
    host = make_host([Unreliable], uri)
    queue = "evt-src-ping--unreliable.handle"
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        assert await queue_exists(uri, queue)
        await host.stop()
    assert not await queue_exists(uri, queue)  # auto-deleted with its consumer
    async with host.dispatcher() as dispatch:
        await dispatch("src", "ping", {"n": 1})
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        async with host.dispatcher() as dispatch:
            await dispatch("src", "ping", {"n": 2})
        assert await recorder.wait_for(1) == [("unreliable", 2)]
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.calls == [("unreliable", 2)]
        await host.stop()


# ------------------------------------------------------------------------- errors


class Flaky:
    name = "flaky"
    failures = 0

    @event_handler("src", "ping", requeue_on_error=True)
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", payload["n"])
        if Flaky.failures < 2:
            Flaky.failures += 1
            raise RuntimeError("not yet")
        recorder.record("done", payload["n"])


async def test_requeue_on_error_redelivers_until_it_succeeds(
    nursery: trio.Nursery,
) -> None:
    Flaky.failures = 0
    uri = fresh_uri()
    host = make_host([Flaky], uri)
    await nursery.start(host.serve)
    async with host.dispatcher() as dispatch:
        await dispatch("src", "ping", {"n": 1})
    calls = await recorder.wait_for(4)
    assert calls == [("attempt", 1), ("attempt", 1), ("attempt", 1), ("done", 1)]
    await trio.testing.wait_all_tasks_blocked()
    assert await queue_depth(uri, "evt-src-ping--flaky.handle") == 0
    nursery.cancel_scope.cancel()


class Picky:
    name = "picky"

    @event_handler("src", "ping", requeue_on_error=(LookupError,))
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record("attempt", payload["kind"])
        if payload["kind"] == "lookup" and not payload.get("seen"):
            Picky.lookups += 1
            if Picky.lookups == 1:
                raise KeyError("retry me")
        if payload["kind"] == "value":
            raise ValueError("drop me")

    lookups = 0


async def test_requeue_on_error_tuple_requeues_only_those_types(
    nursery: trio.Nursery,
) -> None:
    Picky.lookups = 0
    uri = fresh_uri()
    host = make_host([Picky], uri)
    await nursery.start(host.serve)
    async with host.dispatcher() as dispatch:
        await dispatch("src", "ping", {"kind": "value"})
        await dispatch("src", "ping", {"kind": "lookup"})
    calls = await recorder.wait_for(3)
    await trio.testing.wait_all_tasks_blocked()
    # ValueError: acked, seen once. KeyError (a LookupError): requeued, seen twice.
    assert sorted(kind for _, kind in calls) == ["lookup", "lookup", "value"]
    assert await queue_depth(uri, "evt-src-ping--picky.handle") == 0
    nursery.cancel_scope.cancel()


class Failing:
    name = "failing"

    @event_handler("src", "ping")
    async def handle(self, payload: dict[str, Any]) -> None:
        recorder.record(self.name, payload["n"])
        if payload["n"] == 1:
            raise RuntimeError("boom")


async def test_an_error_without_requeue_is_acked_and_the_host_keeps_serving(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    uri = fresh_uri()
    host = make_host([Failing], uri)
    await nursery.start(host.serve)
    async with host.dispatcher() as dispatch:
        await dispatch("src", "ping", {"n": 1}, message_id="m-1")
        await dispatch("src", "ping", {"n": 2})
    assert [n for _, n in await recorder.wait_for(2)] == [1, 2]
    await trio.testing.wait_all_tasks_blocked()
    assert await queue_depth(uri, "evt-src-ping--failing.handle") == 0
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "message id m-1" in message
    # the worker's call id, as nameko's call_id_stack carries it on
    assert re.search(r"call id failing\.handle\.[0-9a-f-]{36}\b", message)
    assert errors[0].exc_info is not None
    nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------- payloads


@attrs.frozen
class OrderPlaced:
    id: int
    total: decimal.Decimal


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


class Typed:
    name = "typed"
    dispatch = EventDispatcher()

    @event_handler("src", "order_placed")
    async def on_order(self, event: OrderPlaced) -> None:
        recorder.record("order", event)
        await self.dispatch("lines", [Line("a", 1), Line("b", 2)])

    @event_handler("typed", "lines")
    async def on_lines(self, lines: list[Line]) -> None:
        recorder.record("lines", lines)


async def test_typed_payloads_are_structured_and_unstructured(
    nursery: trio.Nursery,
) -> None:
    uri = fresh_uri()
    host = make_host([Typed], uri)
    await nursery.start(host.serve)
    async with host.dispatcher() as dispatch:
        await dispatch("src", "order_placed", OrderPlaced(7, decimal.Decimal("9.99")))
    calls = await recorder.wait_for(2)
    assert calls[0] == ("order", OrderPlaced(7, decimal.Decimal("9.99")))
    assert calls[1] == ("lines", [Line("a", 1), Line("b", 2)])
    nursery.cancel_scope.cancel()


async def test_a_payload_that_does_not_fit_is_rejected_not_looped(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    uri = fresh_uri()
    host = make_host([Typed], uri)
    await nursery.start(host.serve)
    async with host.dispatcher() as dispatch:
        await dispatch(
            "src", "order_placed", {"id": "not a number"}, message_id="bad-1"
        )
        await dispatch("src", "order_placed", {"id": 1, "total": "1.5"})
    calls = await recorder.wait_for(2)
    assert calls[0] == ("order", OrderPlaced(1, decimal.Decimal("1.5")))
    await trio.testing.wait_all_tasks_blocked()
    assert await queue_depth(uri, "evt-src-order_placed--typed.on_order") == 0
    assert any("bad-1" in r.getMessage() for r in caplog.records)
    nursery.cancel_scope.cancel()


class Wild:
    name = "wild"

    @event_handler("src", "order.*")
    async def one_word(self, payload: dict[str, Any]) -> None:
        recorder.record("*", payload["k"])

    @event_handler("src", "order.#")
    async def any_words(self, payload: dict[str, Any]) -> None:
        recorder.record("#", payload["k"])


async def test_wildcard_event_types(nursery: trio.Nursery) -> None:
    uri = fresh_uri()
    host = make_host([Wild], uri)
    await nursery.start(host.serve)
    async with host.dispatcher() as dispatch:
        for key in ("order", "order.placed", "order.placed.eu", "invoice.sent"):
            await dispatch("src", key, {"k": key})
    await recorder.wait_for(4)
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(recorder.calls) == [
        ("#", "order"),
        ("#", "order.placed"),
        ("#", "order.placed.eu"),
        ("*", "order.placed"),
    ]
    nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ worker context


class First:
    name = "first"
    dispatch = EventDispatcher()
    ctx = WorkerCtx()

    @event_handler("src", "start")
    async def handle(self, payload: Any) -> None:
        assert isinstance(self.ctx, WorkerContext)
        recorder.record("first", self.ctx)
        await self.dispatch("next", payload)


class Second:
    name = "second"
    ctx = WorkerCtx()

    @event_handler("first", "next")
    async def handle(self, payload: Any) -> None:
        recorder.record("second", self.ctx)


async def test_context_headers_propagate_through_a_chain(nursery: trio.Nursery) -> None:
    uri = fresh_uri()
    host = make_host([First, Second], uri)
    await nursery.start(host.serve)
    async with host.dispatcher() as dispatch:
        await dispatch(
            "src",
            "start",
            {"x": 1},
            headers={
                "nameko.language": "en-gb",
                "nameko.call_id_stack": ["outside.call.1"],
            },
        )
    (_, first), (_, second) = await recorder.wait_for(2)
    assert first.call_id.startswith("first.handle.")
    assert first.call_id_stack == ["outside.call.1", first.call_id]
    assert second.call_id_stack == ["outside.call.1", first.call_id, second.call_id]
    assert first.data["language"] == "en-gb"
    assert second.data["language"] == "en-gb"
    nursery.cancel_scope.cancel()


async def test_unknown_content_types_are_rejected_and_serving_goes_on(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    from trioevents import MemoryTransport, Properties

    uri = fresh_uri()
    host = make_host([Pool], uri)
    await nursery.start(host.serve)
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        await conn.declare_queue("dead")
        await conn.publish(
            "src.events",
            "ping",
            b"\x80\x04K\x01.",
            Properties(content_type="application/x-python-serialize", message_id="p-1"),
        )
        await conn.publish("src.events", "ping", b'{"n": 2}')
    assert await recorder.wait_for(1) == [("pool", 2)]
    await trio.testing.wait_all_tasks_blocked()
    assert await queue_depth(uri, "evt-src-ping--pool.handle") == 0
    assert any("p-1" in r.getMessage() for r in caplog.records)
    nursery.cancel_scope.cancel()


async def test_a_queue_declared_with_other_arguments_stops_serve_clearly(
    nursery: trio.Nursery,
) -> None:
    """The broker's refusal comes out of serve() unwrapped, before started."""
    from trioevents import MemoryTransport, PreconditionFailed

    uri = fresh_uri()
    queue = "evt-src-ping--pool.handle"
    async with MemoryTransport.from_uri(uri).open_connection() as conn:
        await conn.declare_queue(
            queue, durable=True, arguments={"x-dead-letter-exchange": ""}
        )
        host = make_host([Pool], uri)
        with pytest.raises(PreconditionFailed, match="inequivalent arg"):
            await nursery.start(host.serve)
