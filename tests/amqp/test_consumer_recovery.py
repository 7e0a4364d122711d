"""What RabbitMQ does to one consumer, survived by a real host (#12).

Through the :class:`~tests.support.tcpproxy.TcpProxy`, a host meets two things
RabbitMQ does that no local fault double can show on a real client connection:

* **consumer_timeout**: a delivery unacked for longer than RabbitMQ's
  ``consumer_timeout`` (30 min by default) makes it close the consumer's channel
  with ``406 PRECONDITION_FAILED - delivery acknowledgement on channel N timed
  out``, and requeue the channel's unacked deliveries. The proxy (``amqp=True``)
  closes the channel on both sides as RabbitMQ would;
* **RESOURCE_LOCKED after a reconnect**: the client sees its connection die
  while the broker still holds it (and its exclusive queues) until it misses
  enough heartbeats. The proxy orphans the connection: the client side is reset,
  the broker side kept open and silent.

The host recovers from both on its own and never stops serving.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import trio
from pamqp import commands

from trioevents import BROADCAST, ResourceLocked, ServiceHost

from ..support.brokers import dispatch, queue_depth, queue_exists
from ..support.recording import (
    Gate,
    Recorder,
    holding_service,
    recording_service,
    watch_log,
)
from ..support.tcpproxy import open_tcp_proxy, upstream_port, via

if TYPE_CHECKING:
    from ..support.tcpproxy import TcpProxy

pytestmark = pytest.mark.rabbitmq

#: Generous: the broker shares two cores with the tests.
DEADLINE = 60
HELD_QUEUE = "evt-src-hold--holding.handle"


def _host(services: list[type], proxy: TcpProxy, uri: str) -> ServiceHost:
    return ServiceHost(
        services,
        {"AMQP_URI": via(proxy, uri), "RECONNECT_DELAY": 0.1, "RECONNECT_MAX_DELAY": 1},
    )


async def test_a_consumer_timeout_is_survived_and_the_delivery_handled_again(
    rabbit_vhost: str,
) -> None:
    """The consumer of a handler that held its delivery too long is closed.

    The host logs what to change, consumes again, gets the delivery back
    (redelivered) and handles it; its connection and its other service were
    never interrupted.
    """
    recorder, gate = Recorder(), Gate()
    # A handler that holds its delivery, and another service of the same host.
    holding = holding_service("holding", recorder, gate, "src", "hold")
    other = recording_service("other", lambda: recorder, "src", "other")
    with (
        watch_log("trioevents", logging.INFO) as log,
        trio.fail_after(DEADLINE),
    ):
        async with open_tcp_proxy(upstream_port(rabbit_vhost), amqp=True) as proxy:
            host = _host([holding, other], proxy, rabbit_vhost)
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                await dispatch(rabbit_vhost, "src", "hold", {"n": 1})
                await recorder.wait_for(1)
                await proxy.time_out_consumer(HELD_QUEUE)
                await log.wait_for("consumer_timeout")
                # Consumed again: the broker requeued the delivery, which comes
                # back while the first handler still holds it.
                await recorder.wait_for(2)
                await dispatch(rabbit_vhost, "src", "other", {"n": 2})
                await recorder.wait_for(3)
                gate.release.set()
                await host.stop()
            assert await queue_depth(rabbit_vhost, HELD_QUEUE) == 0
    assert sorted(recorder.calls) == [("holding", 1), ("holding", 1), ("other", 2)]
    [advice] = [m for m in log.messages if "consumer_timeout" in m]
    assert "406 PRECONDITION_FAILED - delivery acknowledgement" in advice
    assert "timeout=" in advice
    delivered = [
        m.method.redelivered
        for m in proxy.methods
        if m.direction == "down" and isinstance(m.method, commands.Basic.Deliver)
    ]
    assert delivered[:1] == [False]
    assert delivered.count(True) == 1  # the same message, redelivered
    # One connection all along: the other service was never interrupted.
    assert proxy.statistics().accepted == 1
    assert log.count("connection lost") == 0


async def test_a_broadcast_handler_reconnects_past_its_held_exclusive_queue(
    rabbit_vhost: str,
) -> None:
    """The broker still holds the old connection and its exclusive queue.

    Redeclaring the queue after the reconnect is 405 RESOURCE_LOCKED: the
    handler (default identifier) takes a fresh queue and keeps receiving events;
    ``serve()`` never dies.
    """
    recorder = Recorder()
    # Only the broadcast handler: a shared queue would share its events with
    # the consumer the broker still holds for the old connection.
    listener = recording_service(
        "listener",
        lambda: recorder,
        "src",
        "news",
        handler_type=BROADCAST,
        reliable_delivery=False,
    )
    with (
        watch_log("trioevents", logging.INFO) as log,
        trio.fail_after(DEADLINE),
    ):
        async with open_tcp_proxy(upstream_port(rabbit_vhost)) as proxy:
            host = _host([listener], proxy, rabbit_vhost)
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                await dispatch(rabbit_vhost, "src", "news", {"n": 1})
                await recorder.wait_for(1)
                [old] = _consumed(log.messages)
                assert proxy.orphan() == 1
                await log.wait_for("still held by an earlier connection")
                await log.wait_for("resumed")
                # The broker still holds the old queue for the old connection.
                with pytest.raises(ResourceLocked):
                    await queue_exists(rabbit_vhost, old)
                await dispatch(rabbit_vhost, "src", "news", {"n": 2})
                await recorder.wait_for(2)
                assert host.serving
                await host.stop()
    assert recorder.calls == [("listener", 1), ("listener", 2)]
    old_again, new = _consumed(log.messages)
    assert old_again == old
    assert new != old
    assert proxy.statistics().accepted == 2


def _consumed(messages: list[str]) -> list[str]:
    """The broadcast queues the host started consuming, in order."""
    prefix = "consuming 'evt-src-news--listener.handle-"
    return [m.split("'")[1] for m in messages if m.startswith(prefix)]
