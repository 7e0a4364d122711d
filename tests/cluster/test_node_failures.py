"""A 3-node RabbitMQ cluster losing nodes: failover, quorum queues, no event lost.

Hosts and a dispatcher are given kombu's failover URI over the three nodes of
the throwaway cluster (``conftest.py``); their handler consumes a **quorum**
queue (replicated on every node, so it survives the loss of one). Then a node
dies (SIGKILL) or stops, while events flow. What must hold is what
``tests/amqp/test_faults.py`` states for a cut link (:mod:`tests.support.counting`):
every event whose dispatch returned is handled at least once, duplicates are
bounded, and the same host and dispatcher keep working afterwards.

Each test prints one report line, and each waits for counts and log lines,
bounded by a generous ``fail_after``, never sleeping to synchronize. The test
that kills a node comes last, so that a whole run never waits for a node to
boot again (the ``cluster`` fixture would bring it back for a later test).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from trioevents import Backoff, Config, HandlerType, QueueType, event_handler
from trioevents._events._topology import handler_queue

from ..support.brokers import connect, dead_letters
from ..support.counting import (
    DEADLINE,
    Report,
    Sink,
    Tally,
    check,
    counting_host as make_host,
    counting_service,
    print_line,
    send_all,
    settle_and_report,
)
from ..support.recording import LogWatch, watch_log

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from trioevents._events._topology import QueueSpec

    from ..support.rabbit_cluster import Node, RabbitCluster

pytestmark = pytest.mark.rabbitmq_cluster

#: Tasks dispatching at once, through one dispatcher.
DISPATCHERS = 10
#: Every host of these tests keeps its reliable handlers on quorum queues.
QUORUM = {"QUEUE_TYPE": "quorum"}
#: What the host logs when it reconnected and consumes again.
RESUMED = "resumed counting"
#: The host lost a connection (or could not make one).
LOST = "connection lost"
#: The header of a dead letter that says how many times the handler was tried.
ATTEMPTS = "x-trioevents-attempts"


def quorum_queue_of(source: str) -> QueueSpec:
    """The queue :func:`counting_service`'s handler declares with ``QUORUM``."""
    return handler_queue(
        source,
        "ping",
        HandlerType.SERVICE_POOL,
        "counting",
        "handle",
        reliable_delivery=True,
        queue_type=QueueType.QUORUM,
        delivery_limit=Config().quorum_delivery_limit,
    )


def queue_of(source: str) -> str:
    """The queue of :func:`counting_service`'s handler for events of *source*."""
    return f"evt-{source}-ping--counting.handle"


@pytest.fixture
def host_log() -> Iterator[LogWatch]:
    """What the hosts log at INFO and above while the test runs."""
    with watch_log("trioevents", logging.INFO) as watch:
        yield watch


def connected_nodes(log: LogWatch, cluster: RabbitCluster) -> list[str]:
    """The nodes the logged connections went to, in order (``t1``, ...)."""
    return [
        cluster.node_at(message.rsplit("@", 1)[1].split("/")[0]).name
        for message in log.messages
        if message.startswith("connected to ")
    ]


async def leader_of(cluster: RabbitCluster, queue: str, vhost: str) -> Node:
    return await trio.to_thread.run_sync(cluster.leader, queue, vhost)


@attrs.frozen
class Stream:
    """Numbered events from *source* to a handler recording them in *sink*."""

    source: str
    tally: Tally
    sink: Sink

    @classmethod
    def of(cls, source: str, count: int) -> Stream:
        return cls(source, Tally.of(range(count)), Sink())

    async def dispatch_through(
        self,
        dispatch: Callable[..., Any],
        fault: Callable[[], Awaitable[object]],
        name: str,
        capsys: pytest.CaptureFixture[str],
        *,
        start: float,
        figures: Callable[[], dict[str, object]],
    ) -> Report:
        """Dispatch every event from ``DISPATCHERS`` tasks while *fault* runs.

        Then report what happened (with *figures*, asked once the fault is
        over), and make one more round trip through the same dispatcher.
        """
        async with trio.open_nursery() as faults:
            faults.start_soon(fault)
            await send_all(
                dispatch, self.tally, source=self.source, concurrency=DISPATCHERS
            )
        report = await settle_and_report(
            name, self.tally, self.sink, capsys, start=start, tag="cluster", **figures()
        )
        last = self.tally.total
        await send_all(dispatch, Tally.of([last]), source=self.source, concurrency=1)
        await self.sink.wait_handled([last])
        return report


# ------------------------------------------------------ retries and the DLQ


async def test_retries_end_in_the_dead_letter_queue_on_the_cluster(
    cluster: RabbitCluster, cluster_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A handler of a quorum queue that always fails: retried, then dead-lettered."""
    count, source = 20, "cluster_dlq"
    attempts: list[int] = []

    class Failing:
        name = "failing"

        @event_handler(source, "ping", retry=Backoff(0.05, 0.1))
        async def handle(self, payload: dict[str, Any]) -> None:
            attempts.append(payload["id"])
            raise RuntimeError("always")

    uri = cluster.uri(virtual_host=cluster_vhost)
    host = make_host([Failing], uri, **QUORUM)
    start = trio.current_time()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            async with host.dispatcher() as dispatch:
                for n in range(count):
                    await dispatch(source, "ping", {"id": n})
            letters = await dead_letters(
                uri,
                "evt-cluster_dlq-ping--failing.handle",
                count,
                queue_type=QueueType.QUORUM,
            )
            await host.stop()
    tries = [(letter.properties.headers or {}).get(ATTEMPTS) for letter in letters]
    print_line(
        capsys,
        f"[cluster] retries to the DLQ: events={count} attempts={len(attempts)} "
        f"dead_lettered={len(letters)} "
        f"seconds={round(trio.current_time() - start, 1)}",
    )
    assert sorted(attempts) == sorted(list(range(count)) * 3)
    assert tries == [3] * count


# -------------------------------------------------- the host's node restarted


async def test_the_host_fails_over_when_its_node_stops(
    cluster: RabbitCluster,
    cluster_vhost: str,
    host_log: LogWatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The node the host and dispatcher use (not the leader) stops and starts.

    The queue is declared (as quorum) through t1 before the host starts, so its
    leader is there; the host and the dispatcher connect to t2, whose RabbitMQ
    application is stopped a third of the way through 2,000 events and started
    again once the host has failed over: nothing lost.
    """
    count, source = 2_000, "cluster_restart"
    stream = Stream.of(source, count)
    t1, t2, t3 = cluster.nodes
    async with connect(t1.uri(cluster_vhost)) as connection:
        await quorum_queue_of(source).declare(connection)  # as the host will
    uri = cluster.uri([t2, t3, t1], cluster_vhost)
    host = make_host([counting_service(stream.sink, source)], uri, **QUORUM)
    start = trio.current_time()

    async def restart_t2() -> None:
        await stream.tally.wait_confirmed(count // 3)
        await trio.to_thread.run_sync(cluster.stop_app, t2)
        await host_log.wait_for(RESUMED)  # failed over
        await trio.to_thread.run_sync(cluster.start_app, t2)

    try:
        with trio.fail_after(DEADLINE * 2):
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                assert (await leader_of(cluster, queue_of(source), cluster_vhost)) is t1
                async with host.dispatcher() as dispatch:
                    report = await stream.dispatch_through(
                        dispatch,
                        restart_t2,
                        "host's node restarted",
                        capsys,
                        start=start,
                        figures=lambda: {
                            "nodes": "->".join(connected_nodes(host_log, cluster))
                        },
                    )
                await host.stop()
    finally:
        await trio.to_thread.run_sync(cluster.ensure_running)

    check(report, losses=1, concurrency=DISPATCHERS)
    nodes = connected_nodes(host_log, cluster)
    assert nodes[:2] == ["t2", "t2"]  # the host, then its dispatcher
    assert "t3" in nodes[2:] or "t1" in nodes[2:]  # somewhere else afterwards


# ------------------------------------------------------------ the leader killed


async def test_killing_the_quorum_leader_loses_no_confirmed_event(
    cluster: RabbitCluster,
    cluster_vhost: str,
    host_log: LogWatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """5,000 events; the node holding the queue's leader is SIGKILLed a third in.

    Two instances of the service share the quorum queue: one connected to the
    node that declared it (so to the leader, unless RabbitMQ put it elsewhere),
    one to another node, whose consumer sees the leader move. One long-lived
    dispatcher sends everything from 10 tasks, starting on the first node.
    Reported: the events' figures (``tests.support.counting.Report``), the
    node killed, and ``resume_s``, the seconds from the kill until an event
    dispatched after it was handled.
    """
    count, source = 5_000, "cluster_kill"
    stream = Stream.of(source, count)
    tally, sink = stream.tally, stream.sink
    service = counting_service(sink, source)
    t1, t2, t3 = cluster.nodes
    first = make_host([service], cluster.uri([t1, t2, t3], cluster_vhost), **QUORUM)
    second = make_host([service], cluster.uri([t2, t3, t1], cluster_vhost), **QUORUM)
    start = trio.current_time()
    killed: list[Node] = []
    resume_s = -1.0

    async def kill(leader: Node) -> None:
        nonlocal resume_s
        await tally.wait_confirmed(count // 3)
        at = trio.current_time()
        await trio.to_thread.run_sync(cluster.kill, leader)
        killed.append(leader)
        assert tally.todo, "the node died after the last dispatch"
        after = tally.todo[0]  # the first id dispatched once the node was gone
        await sink.wait_handled([after])
        resume_s = round(trio.current_time() - at, 1)

    with trio.fail_after(DEADLINE * 2):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.serve)
            await nursery.start(second.serve)
            leader = await leader_of(cluster, queue_of(source), cluster_vhost)
            async with first.dispatcher() as dispatch:
                report = await stream.dispatch_through(
                    dispatch,
                    functools.partial(kill, leader),
                    "leader killed",
                    capsys,
                    start=start,
                    figures=lambda: {
                        "killed": leader.name,
                        "resume_s": resume_s,
                        "reconnected": host_log.count(RESUMED),
                        "resubscribed": host_log.count("consuming it again"),
                        "nodes": "->".join(connected_nodes(host_log, cluster)),
                    },
                )
            await first.stop()
            await second.stop()

    # Two consumers and the dispatcher's connection each lost once at most.
    check(report, losses=2, concurrency=DISPATCHERS)
    assert killed == [leader]
    assert resume_s >= 0
    assert host_log.count(LOST) >= 1  # someone was on the node killed
