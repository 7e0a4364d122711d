"""Behaviour of the embedded broker that the conformance suite cannot see.

Routing (``trioevents._memory._routing``) is tested in ``test_memory_routing.py``.
"""

from __future__ import annotations

import ast
import pathlib
import uuid

import pytest
import trio
import trio.testing

import trioevents._memory
from trioevents import ConfigurationError, MemoryTransport
from trioevents._memory import drop_broker
from trioevents._memory._model import FLOW_LIMIT, FLOW_RESUME


async def test_brokers_are_shared_by_name() -> None:
    name = f"shared-{uuid.uuid4()}"
    async with MemoryTransport(name).open_connection() as one:
        await one.declare_queue("q")
        await one.publish("", "q", b"hello")
    async with MemoryTransport.from_uri(f"memory://{name}").open_connection() as two:
        declared = await two.declare_queue("q", passive=True)
        assert declared.message_count == 1
    async with MemoryTransport(f"other-{uuid.uuid4()}").open_connection() as three:
        await three.declare_queue("q")
        assert (await three.declare_queue("q", passive=True)).message_count == 0
    drop_broker(name)


async def test_dropped_broker_starts_empty() -> None:
    name = f"dropped-{uuid.uuid4()}"
    async with MemoryTransport(name).open_connection() as conn:
        await conn.declare_queue("q")
    drop_broker(name)
    async with MemoryTransport(name).open_connection() as conn:
        declared = await conn.declare_queue("q")
        assert declared.message_count == 0


def test_from_uri_rejects_other_schemes() -> None:
    with pytest.raises(ConfigurationError, match="not a memory:// URI"):
        MemoryTransport.from_uri("amqp://localhost/")
    assert MemoryTransport.from_uri("memory://").name == ""


async def test_a_waiting_consumer_sleeps_until_a_message_comes() -> None:
    """The broker never spins: a waiting consumer is blocked, not polling."""
    async with MemoryTransport(f"idle-{uuid.uuid4()}").open_connection() as conn:
        await conn.declare_queue("q")
        got: list[bytes] = []
        async with conn.open_consumer("q") as consumer:

            async def take_one() -> None:
                got.append((await consumer.receive()).body)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(take_one)
                await trio.testing.wait_all_tasks_blocked()
                assert got == []
                await conn.publish("", "q", b"x")
            assert got == [b"x"]


async def test_cancelled_receive_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryTransport(f"cancel-{uuid.uuid4()}").open_connection() as conn:
        await conn.declare_queue("q")
        async with conn.open_consumer("q", prefetch_count=1) as consumer:
            with trio.move_on_after(1):
                await consumer.receive()
            await conn.publish("", "q", b"kept")
            delivery = await consumer.receive()
            assert delivery.body == b"kept"
            assert not delivery.redelivered
            await delivery.ack()


def test_ttl_survives_a_new_trio_run() -> None:
    """A broker outlives trio runs; a message's remaining TTL is kept across them.

    Time between two runs is not counted: each run has its own clock.
    """
    name = f"runs-{uuid.uuid4()}"
    transport = MemoryTransport(name)

    async def first() -> None:
        async with transport.open_connection() as conn:
            await conn.declare_queue("q", arguments={"x-message-ttl": 60_000})
            await conn.publish("", "q", b"x")

    async def second() -> int:
        async with transport.open_connection() as conn:
            return (await conn.declare_queue("q", passive=True)).message_count

    async def later() -> int:
        async with transport.open_connection() as conn:
            await conn.declare_queue("q", passive=True)
            await trio.sleep(61)
            return (await conn.declare_queue("q", passive=True)).message_count

    trio.run(first, clock=trio.testing.MockClock(rate=0, autojump_threshold=0))
    # The new run's clock starts elsewhere; the message must neither expire at once
    # nor live forever.
    clock = trio.testing.MockClock(autojump_threshold=0)
    clock.jump(1_000_000)
    assert trio.run(second, clock=clock) == 1
    assert trio.run(later, clock=trio.testing.MockClock(autojump_threshold=0)) == 0
    drop_broker(name)


def _package_imports(source: str) -> set[str]:
    """The modules of ``trioevents._memory`` that *source* imports, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level == 0 and module.startswith("trioevents._memory."):
            found.add(module.split(".")[2])
        elif node.level == 1 and module:
            found.add(module.split(".")[0])
        elif node.level == 1:
            found.update(alias.name for alias in node.names)
    return found


def test_the_package_imports_only_downward() -> None:
    """Each module imports only those above it, under TYPE_CHECKING too: no circle."""
    layers = ["_routing", "_queuetypes", "_model", "_consumer", "_transport"]
    package = pathlib.Path(trioevents._memory.__file__).parent
    assert sorted(p.stem for p in package.glob("_*.py") if p.stem != "__init__") == (
        sorted(layers)
    )
    for index, name in enumerate(layers):
        imported = _package_imports((package / f"{name}.py").read_text("utf-8"))
        assert imported <= set(layers[:index]), name


async def test_a_publisher_waits_while_consumers_are_far_behind() -> None:
    """Flow control: a consumed queue holds at most FLOW_LIMIT ready messages."""
    published = 0
    async with MemoryTransport(f"flow-{uuid.uuid4()}").open_connection() as conn:
        await conn.declare_queue("q")
        async with conn.open_consumer("q", prefetch_count=1) as consumer:

            async def publish_all() -> None:
                nonlocal published
                for _ in range(FLOW_LIMIT + 200):
                    await conn.publish("", "q", b"x")
                    published += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_all)
                await trio.testing.wait_all_tasks_blocked()
                # one delivered (unacked), FLOW_LIMIT + 1 ready: the publish
                # that went past the limit waits for its confirm
                assert published == FLOW_LIMIT + 1
                depth = (await conn.declare_queue("q", passive=True)).message_count
                assert depth == FLOW_LIMIT + 1
                for _ in range(FLOW_LIMIT - FLOW_RESUME + 2):
                    delivery = await consumer.receive()
                    await delivery.ack()
            assert published == FLOW_LIMIT + 200


async def test_a_queue_nobody_consumes_takes_everything() -> None:
    """No consumer, no flow control: the queue keeps what it is given."""
    async with MemoryTransport(f"flow-{uuid.uuid4()}").open_connection() as conn:
        await conn.declare_queue("q")
        with trio.fail_after(10):
            for _ in range(FLOW_LIMIT * 2):
                await conn.publish("", "q", b"x")
        depth = (await conn.declare_queue("q", passive=True)).message_count
        assert depth == FLOW_LIMIT * 2
