"""A 3-node RabbitMQ cluster losing nodes: failover, quorum queues, no event lost.

Hosts and a dispatcher are given kombu's failover URI over the three nodes of
the throwaway cluster (``conftest.py``); their handler consumes a **quorum**
queue (replicated on every node, so it survives the loss of one). Then a node
dies (SIGKILL) or stops, while events flow. What must hold is what
``tests/amqp/test_faults.py`` states for a cut link (:mod:`tests.support.counting`):
every event whose dispatch returned is handled at least once, duplicates are
bounded, and the same host and dispatcher keep working afterwards.

Each test prints one report line, and each waits for counts and log lines,
bounded by a generous ``fail_after``, never sleeping to synchronize.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from trioevents import Backoff, EventHandler, ServiceHost

from ..support.brokers import connect, dead_letters
from ..support.counting import (
    DEADLINE,
    PREFETCH,
    Sink,
    Tally,
    check,
    counting_service,
    print_line,
    send_all,
    settle_and_report,
)
from ..support.recording import LogWatch, watch_log

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trioevents._events._topology import QueueSpec

    from ..support.rabbit_cluster import Node, RabbitCluster

pytestmark = pytest.mark.rabbitmq_cluster

#: The arguments that make a queue a quorum queue.
QUORUM = {"x-queue-type": "quorum"}
#: What the host logs when it reconnected and consumes again.
RESUMED = "resumed counting"
#: The host lost a connection (or could not make one).
LOST = "connection lost to"
#: The header of a dead letter that says how many times the handler was tried.
ATTEMPTS = "x-trioevents-attempts"


class QuorumEventHandler(EventHandler):
    """An event handler consuming a quorum queue.

    Quorum queues are being added to trioevents on another branch
    (``QUEUE_TYPE: quorum`` in the config, ``event_handler(...,
    queue_type="quorum")``); until then the test declares its handler's queue
    as quorum itself, here. Once that lands, use ``counting_service(sink,
    source)`` with ``QUEUE_TYPE: quorum`` in :func:`make_host` instead.
    """

    @property
    def queue(self) -> QueueSpec:
        spec = super().queue
        return attrs.evolve(spec, arguments={**spec.arguments, **QUORUM})


def quorum_counting_service(sink: Sink, source: str) -> type:
    return counting_service(sink, source, handler=QuorumEventHandler.decorator)


def make_host(services: list[type], uri: str, **config: Any) -> ServiceHost:
    return ServiceHost(
        services,
        {
            "AMQP_URI": uri,
            "max_workers": PREFETCH,
            "RECONNECT_DELAY": 0.1,
            "RECONNECT_MAX_DELAY": 1,
            **config,
        },
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
    count, concurrency, source = 5_000, 10, "cluster_kill"
    sink, tally = Sink(), Tally.of(range(count))
    service = quorum_counting_service(sink, source)
    t1, t2, t3 = cluster.nodes
    first = make_host([service], cluster.uri([t1, t2, t3], cluster_vhost))
    second = make_host([service], cluster.uri([t2, t3, t1], cluster_vhost))
    start = trio.current_time()
    killed: list[Node] = []
    resume_s = -1.0

    async def kill_the_leader() -> None:
        nonlocal resume_s
        leader = await leader_of(cluster, queue_of(source), cluster_vhost)
        await tally.wait_confirmed(count // 3)
        at = trio.current_time()
        await trio.to_thread.run_sync(cluster.kill, leader)
        killed.append(leader)
        after = tally.todo[0]  # the first id dispatched once the node was gone
        await sink.wait_handled([after])
        resume_s = round(trio.current_time() - at, 1)

    with trio.fail_after(DEADLINE * 2):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.serve)
            await nursery.start(second.serve)
            async with first.dispatcher() as dispatch:
                async with trio.open_nursery() as faults:
                    faults.start_soon(kill_the_leader)
                    await send_all(
                        dispatch, tally, source=source, concurrency=concurrency
                    )
                report = await settle_and_report(
                    "leader killed",
                    tally,
                    sink,
                    capsys,
                    start=start,
                    tag="cluster",
                    killed=killed[0].name,
                    resume_s=resume_s,
                    reconnected=host_log.count(RESUMED),
                    resubscribed=host_log.count("consuming it again"),
                    nodes="->".join(connected_nodes(host_log, cluster)),
                )
                # The same dispatcher and both hosts still work.
                await send_all(
                    dispatch, Tally.of([count]), source=source, concurrency=1
                )
                await sink.wait_handled([count])
            await first.stop()
            await second.stop()

    # Two consumers and the dispatcher's connection each lost once at most.
    check(report, losses=2, concurrency=concurrency)
    assert killed
    assert resume_s >= 0
    assert host_log.count(LOST) >= 1  # someone was on the node killed


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
    count, concurrency, source = 2_000, 10, "cluster_restart"
    sink, tally = Sink(), Tally.of(range(count))
    t1, t2, t3 = cluster.nodes
    async with connect(t1.uri(cluster_vhost)) as connection:
        await connection.declare_queue(queue_of(source), durable=True, arguments=QUORUM)
    uri = cluster.uri([t2, t3, t1], cluster_vhost)
    host = make_host([quorum_counting_service(sink, source)], uri)
    start = trio.current_time()

    async def restart_t2() -> None:
        await tally.wait_confirmed(count // 3)
        await trio.to_thread.run_sync(cluster.stop_app, t2)
        await host_log.wait_for(RESUMED)  # failed over
        await trio.to_thread.run_sync(cluster.start_app, t2)

    try:
        with trio.fail_after(DEADLINE * 2):
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                assert (await leader_of(cluster, queue_of(source), cluster_vhost)) is t1
                async with host.dispatcher() as dispatch:
                    async with trio.open_nursery() as faults:
                        faults.start_soon(restart_t2)
                        await send_all(
                            dispatch, tally, source=source, concurrency=concurrency
                        )
                    report = await settle_and_report(
                        "host's node restarted",
                        tally,
                        sink,
                        capsys,
                        start=start,
                        tag="cluster",
                        nodes="->".join(connected_nodes(host_log, cluster)),
                    )
                    await send_all(
                        dispatch, Tally.of([count]), source=source, concurrency=1
                    )
                    await sink.wait_handled([count])
                await host.stop()
    finally:
        await trio.to_thread.run_sync(cluster.ensure_running)

    check(report, losses=1, concurrency=concurrency)
    nodes = connected_nodes(host_log, cluster)
    assert nodes[:2] == ["t2", "t2"]  # the host, then its dispatcher
    assert "t3" in nodes[2:] or "t1" in nodes[2:]  # somewhere else afterwards


# ------------------------------------------------------ retries and the DLQ


async def test_retries_end_in_the_dead_letter_queue_on_the_cluster(
    cluster: RabbitCluster, cluster_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A handler of a quorum queue that always fails: retried, then dead-lettered."""
    count, source = 20, "cluster_dlq"
    attempts: list[int] = []

    class Failing:
        name = "failing"

        @QuorumEventHandler.decorator(source, "ping", retry=Backoff(0.05, 0.1))
        async def handle(self, payload: dict[str, Any]) -> None:
            attempts.append(payload["id"])
            raise RuntimeError("always")

    uri = cluster.uri(virtual_host=cluster_vhost)
    host = make_host([Failing], uri)
    start = trio.current_time()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            async with host.dispatcher() as dispatch:
                for n in range(count):
                    await dispatch(source, "ping", {"id": n})
            letters = await dead_letters(
                uri, "evt-cluster_dlq-ping--failing.handle", count
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
