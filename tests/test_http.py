"""The operators' HTTP endpoint (``HTTP_ADDRESS``): probes and ``/metrics``."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import (
    ConfigurationError,
    HostState,
    MemoryTransport,
    ServiceHost,
    event_handler,
)
from trioevents.testing import FlakyTransport

from .support import http, relay
from .support.recording import Settled
from .support.tcpproxy import open_tcp_proxy

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

pytest.importorskip("hypercorn")
prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from trioevents.prometheus import PrometheusMetrics  # noqa: E402

#: Listen on a free port of the loopback interface.
LOCAL = "127.0.0.1:0"


class Relay(relay.Relay):
    @event_handler("web", "boom")
    async def boom(self, payload: Any) -> None:
        raise ValueError("boom")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_are_scraped_over_http_and_move(
    broker_uri: str, host_factory: HostFactory
) -> None:
    host = host_factory.make(Relay, {"HTTP_ADDRESS": LOCAL, "max_workers": 4})
    settled = Settled()
    host.add_observer(settled)
    PrometheusMetrics(prometheus_client.CollectorRegistry()).attach(host)
    await host_factory.start(host)
    assert host.http_url is not None
    url = host.http_url + "/metrics"

    before = samples((await http.get(url)).text)
    async with host.dispatcher() as dispatch:
        await dispatch("web", "in", {"n": 1})
        await dispatch("web", "boom", {"n": 2})
    await settled.wait_for(2)
    response = await http.get(url)
    after = samples(response.text)

    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    handled = "trioevents_events_handled_total"
    for handler in ("relay.relay", "relay.boom"):
        labels = {"service": "relay", "handler": handler, "outcome": "ack"}
        assert value(before, handled, **labels) == 0
        assert value(after, handled, **labels) == 1
    dispatched = "trioevents_events_dispatched_total"
    out = {"service": "relay", "exchange": "relay.events", "event_type": "out"}
    assert value(after, dispatched, **out) == value(before, dispatched, **out) + 1
    standalone = {"service": "", "exchange": "web.events", "event_type": "in"}
    assert value(after, dispatched, **standalone) == 1
    duration = "trioevents_handler_duration_seconds_count"
    assert value(after, duration, service="relay", handler="relay.relay") == 1
    confirm = "trioevents_publish_confirm_seconds_count"
    assert value(after, confirm, service="relay", exchange="relay.events") == 1
    assert value(after, "trioevents_max_workers", service="relay") == 4
    assert value(after, "trioevents_consumer_prefetch", service="relay") == 4
    assert value(after, "trioevents_workers_in_flight", service="relay") == 0
    state = "trioevents_host_state"
    assert value(after, state, trioevents_host_state="serving") == 1
    assert value(after, state, trioevents_host_state="connecting") == 0


async def test_readiness_follows_the_connection_on_the_embedded_broker(
    memory_uri: str,
) -> None:
    """/readyz is 503 while the connection is down; /healthz stays 200."""
    transport = FlakyTransport(MemoryTransport.from_uri(memory_uri))
    config = {
        "AMQP_URI": memory_uri,
        "HTTP_ADDRESS": LOCAL,
        "RECONNECT_DELAY": 0.01,
        "RECONNECT_MAX_DELAY": 0.05,
    }
    host = ServiceHost([Relay], config, transport=transport)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        assert host.http_url is not None
        ready = await http.get(host.http_url + "/readyz")
        assert (ready.status, ready.text) == (200, "serving\n")

        transport.refuse(10**6)
        transport.cut()
        await host.wait_state(HostState.RECONNECTING)
        ready = await http.get(host.http_url + "/readyz")
        assert (ready.status, ready.text) == (503, "reconnecting\n")
        alive = await http.get(host.http_url + "/healthz")
        assert (alive.status, alive.text) == (200, "ok\n")

        transport.refuse(0)
        with trio.fail_after(30):
            await host.wait_state(HostState.SERVING)
        ready = await http.get(host.http_url + "/readyz")
        assert (ready.status, ready.text) == (200, "serving\n")
        await host.stop()
    assert host.http_url is None


@pytest.mark.rabbitmq
async def test_readiness_follows_the_connection_to_rabbitmq(rabbit_vhost: str) -> None:
    """Through a TCP proxy: cut and held, the host cannot reconnect until resumed."""
    async with open_tcp_proxy(5672) as proxy:
        uri = rabbit_vhost.replace(":5672/", f":{proxy.port}/", 1)
        config = {
            "AMQP_URI": uri,
            "HTTP_ADDRESS": LOCAL,
            "RECONNECT_DELAY": 0.05,
            "RECONNECT_MAX_DELAY": 0.2,
        }
        host = ServiceHost([Relay], config)
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            assert host.http_url is not None
            assert (await http.get(host.http_url + "/readyz")).status == 200

            proxy.stall()  # new connections hang in their handshake
            proxy.cut()
            with trio.fail_after(30):
                await host.wait_state(HostState.RECONNECTING)
            ready = await http.get(host.http_url + "/readyz")
            assert (ready.status, ready.text) == (503, "reconnecting\n")
            assert (await http.get(host.http_url + "/healthz")).status == 200

            proxy.resume()
            with trio.fail_after(60):
                await host.wait_state(HostState.SERVING)
            assert (await http.get(host.http_url + "/readyz")).status == 200
            await host.stop()


async def test_unknown_paths_are_404(host_factory: HostFactory) -> None:
    host = await host_factory(Relay, {"HTTP_ADDRESS": LOCAL})
    assert host.http_url is not None
    response = await http.get(host.http_url + "/nope")
    assert response.status == 404
    assert "/healthz" in response.text


async def test_an_address_in_use_fails_serve_with_a_config_error(
    host_factory: HostFactory,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = host_factory.make(Relay, {"HTTP_ADDRESS": f"127.0.0.1:{port}"})
        with pytest.raises(ConfigurationError, match=r"HTTP_ADDRESS.*cannot listen"):
            await host_factory.start(host)
    assert host.state is HostState.STOPPED
