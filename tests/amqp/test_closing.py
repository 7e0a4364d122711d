"""Closing RabbitMQ connections: prompt when cancelled, a full handshake always (#12).

A connection closes with a close handshake (``Connection.Close`` and the broker's
``Close-Ok``), also when its body was cancelled: the reader and the writer keep
running for it. Cancelling a host or a dispatcher used to wait out the close
timeout (5 s) instead, because the tasks the handshake needs had been cancelled
with the body. The bound asserted here (2 s) is generous: the close takes
milliseconds. ``tests/amqp/test_connection.py`` has the same on a scripted broker,
in virtual time.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trioevents import ServiceHost

from ..support.brokers import dispatch, queue_depth
from ..support.recording import Gate, Recorder, holding_service
from ..support.tcpproxy import TcpProxy, open_tcp_proxy, upstream_port, via

pytestmark = pytest.mark.rabbitmq

#: How long a cancelled close may take at most here (it used to take 5 s).
PROMPT = 2.0
DEADLINE = 60
QUEUE = "evt-src-ping--holding.handle"


def holding_host(
    uri: str, recorder: Recorder | None = None, **config: Any
) -> ServiceHost:
    """A host on *uri* whose handler records each event and holds it for good."""
    service = holding_service("holding", recorder or Recorder(), Gate(), "src", "ping")
    return ServiceHost([service], {"AMQP_URI": uri, **config})


async def test_cancelling_serve_returns_at_once(rabbit_vhost: str) -> None:
    host = holding_host(rabbit_vhost)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            cancelled_at = trio.current_time()
            nursery.cancel_scope.cancel()
    assert trio.current_time() - cancelled_at < PROMPT


async def test_cancelling_a_busy_host_returns_at_once_and_its_event_comes_back(
    rabbit_vhost: str,
) -> None:
    """The handler is cancelled unacked: the close makes the broker requeue it."""
    recorder = Recorder()
    host = holding_host(rabbit_vhost, recorder)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            await dispatch(rabbit_vhost, "src", "ping", {"n": 1})
            await recorder.wait_for(1)
            cancelled_at = trio.current_time()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - cancelled_at
        assert await queue_depth(rabbit_vhost, QUEUE) == 1
    assert elapsed < PROMPT


async def test_a_deadline_around_a_dispatcher_ends_it_at_once(
    rabbit_vhost: str,
) -> None:
    host = ServiceHost([], {"AMQP_URI": rabbit_vhost})
    with trio.fail_after(DEADLINE):
        async with host.dispatcher() as send:  # connect outside the deadline
            await send("src", "ping", {"n": 1})
        with trio.move_on_after(0.2) as scope:
            async with host.dispatcher():
                await trio.sleep_forever()
        ended_at = trio.current_time()
    assert scope.cancelled_caught
    assert ended_at - scope.deadline < PROMPT


async def test_stop_past_the_grace_period_returns_at_once(rabbit_vhost: str) -> None:
    grace = 0.5
    recorder = Recorder()
    host = holding_host(rabbit_vhost, recorder, SHUTDOWN_GRACE=grace)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            await dispatch(rabbit_vhost, "src", "ping", {"n": 1})
            await recorder.wait_for(1)
            stopped_at = trio.current_time()
            await host.stop()
            elapsed = trio.current_time() - stopped_at
    assert elapsed < grace + PROMPT


def _handshakes(proxy: TcpProxy) -> dict[int, list[str]]:
    """Per connection, the close methods the proxy saw, as "direction name"."""
    closing = {"Connection.Close", "Connection.CloseOk", "Channel.Close"}
    seen: dict[int, list[str]] = {}
    for method in proxy.methods:
        if method.name in closing or method.name == "Channel.CloseOk":
            seen.setdefault(method.link, []).append(f"{method.direction} {method.name}")
    return dict(sorted(seen.items()))


#: A host's connection: the consumer's channel, then the connection.
SERVE_CLOSE = [
    "up Channel.Close",
    "down Channel.CloseOk",
    "up Connection.Close",
    "down Connection.CloseOk",
]
#: A dispatcher's connection: the connection only (its channels go with it).
DISPATCHER_CLOSE = ["up Connection.Close", "down Connection.CloseOk"]


async def test_a_normal_exit_closes_with_a_full_handshake(rabbit_vhost: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_tcp_proxy(upstream_port(rabbit_vhost), amqp=True) as proxy:
            host = holding_host(via(proxy, rabbit_vhost))
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                async with host.dispatcher() as send:
                    await send("src", "other", {"n": 1})
                await host.stop()
            await proxy.wait_method("Connection.CloseOk", "down", count=2)
    assert _handshakes(proxy) == {1: SERVE_CLOSE, 2: DISPATCHER_CLOSE}


async def test_a_cancelled_exit_still_closes_with_a_full_handshake(
    rabbit_vhost: str,
) -> None:
    """Not a dropped socket: the broker sees the client close, and answers it."""
    with trio.fail_after(DEADLINE):
        async with open_tcp_proxy(upstream_port(rabbit_vhost), amqp=True) as proxy:
            host = holding_host(via(proxy, rabbit_vhost))
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                with trio.move_on_after(0.2):
                    async with host.dispatcher():
                        await trio.sleep_forever()
                cancelled_at = trio.current_time()
                nursery.cancel_scope.cancel()
            elapsed = trio.current_time() - cancelled_at
            await proxy.wait_method("Connection.CloseOk", "down", count=2)
    assert elapsed < PROMPT
    served, dispatched = _handshakes(proxy).values()
    assert dispatched == DISPATCHER_CLOSE
    # RabbitMQ may leave the consumer's Channel.Close unanswered: the
    # Connection.Close right behind it closes every channel.
    up = [name for name in served if name.startswith("up")]
    down = [name for name in served if name.startswith("down")]
    assert up == ["up Channel.Close", "up Connection.Close"]
    assert down[-1] == "down Connection.CloseOk"
