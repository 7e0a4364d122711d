"""nameko 2.14 and trioevents exchange events both ways on RabbitMQ, and share
a pytest session.

nameko needs eventlet, which never goes into the project's environment: the
nameko side (``nameko_side.py``) runs in a subprocess with nameko's own Python,
the ``nameko_python`` fixture (``tests/nameko_python.py`` says how to make one;
``.ci/run`` builds it). Without one the tests are skipped; with
``TRIOEVENTS_NAMEKO_PYTHON`` set (as in CI) or ``TRIOEVENTS_REQUIRE_NAMEKO=1``
they must run, and fail instead.

The chain: the test dispatches ``test_driver.place`` (with a ``nameko.language``
header); trioevents' ``trio_orders.place`` dispatches ``order_placed``; nameko's
``nameko_billing.on_order`` answers with ``order_seen``; trioevents'
``trio_audit.on_seen`` gets it. A spy queue captures both cross-framework
messages so that their AMQP properties can be compared, and each side then
declares the other's queue, which fails if names or flags differ.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import urllib.parse
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import EventDispatcher, ServiceHost, event_handler
from trioevents.testing import RabbitAdmin, entrypoint_waiter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SIDE = pathlib.Path(__file__).with_name("nameko_side.py")

pytestmark = pytest.mark.rabbitmq


class TrioOrders:
    name = "trio_orders"
    dispatch = EventDispatcher()

    @event_handler("test_driver", "place")
    async def place(self, payload: dict[str, Any]) -> None:
        await self.dispatch("order_placed", payload)


class TrioAudit:
    name = "trio_audit"

    @event_handler("nameko_billing", "order_seen")
    async def on_seen(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload


class NamekoBillingTwin:
    """Declares nameko's queue from trioevents; never gets an event."""

    name = "nameko_billing"

    @event_handler("trio_orders", "order_placed")
    async def on_order(self, payload: dict[str, Any]) -> None:  # pragma: no cover
        raise AssertionError("the twin got an event")


PAYLOAD = {
    "id": 7,
    "items": [{"sku": "tea", "qty": 2, "tags": {"hot": True, "origin": None}}],
    "note": "caf\u00e9 \u2615 \u65e5\u672c \U0001f600",
    "ratio": 0.25,
}

QUEUES = {
    "evt-test_driver-place--trio_orders.place",
    "evt-trio_orders-order_placed--nameko_billing.on_order",
    "evt-nameko_billing-order_seen--trio_audit.on_seen",
}
EXCHANGES = {"test_driver.events", "trio_orders.events", "nameko_billing.events"}
SPY = "spy"


@asynccontextmanager
async def nameko_side(
    python: pathlib.Path, uri: str, *args: str
) -> AsyncIterator[None]:
    """Run ``nameko_side.py`` until it says ``ready``; terminate it after."""
    process = await trio.lowlevel.open_process(
        [str(python), str(SIDE), uri, *args], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(60):
            output = b""
            while b"ready" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, f"the nameko side exited: {output!r}"
                output += chunk
        yield
    finally:
        process.terminate()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


async def api(admin: RabbitAdmin, method: str, path: str, body: Any = None) -> Any:
    return await trio.to_thread.run_sync(admin.request, method, path, body)


async def queue_flags(admin: RabbitAdmin, vhost: str) -> dict[str, tuple[Any, ...]]:
    queues = await api(admin, "GET", f"queues/{vhost}")
    return {
        q["name"]: (q["durable"], q["auto_delete"], q["exclusive"], q["arguments"])
        for q in queues
        if q["name"] != SPY
    }


async def test_nameko_and_trioevents_exchange_events_both_ways(
    nameko_python: pathlib.Path, rabbit_vhost: str, rabbit_admin: RabbitAdmin
) -> None:
    vhost = urllib.parse.quote(
        urllib.parse.unquote(urllib.parse.urlsplit(rabbit_vhost).path[1:]), safe=""
    )
    host = ServiceHost([TrioOrders, TrioAudit], {"AMQP_URI": rabbit_vhost})
    async with nameko_side(nameko_python, rabbit_vhost), trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        # Both sides are up, so both exchanges exist: spy on them.
        await api(rabbit_admin, "PUT", f"queues/{vhost}/{SPY}", {"durable": False})
        for exchange in ("trio_orders.events", "nameko_billing.events"):
            await api(
                rabbit_admin,
                "POST",
                f"bindings/{vhost}/e/{exchange}/q/{SPY}",
                {"routing_key": "#"},
            )
        with trio.fail_after(60):
            async with entrypoint_waiter(host, "trio_audit", "on_seen") as waited:
                async with host.dispatcher() as dispatch:
                    await dispatch(
                        "test_driver",
                        "place",
                        PAYLOAD,
                        headers={"nameko.language": "fr-fr"},
                    )

        # nameko decoded our event, and we decoded nameko's answer.
        answer = waited.get()
        assert answer["echo"] == PAYLOAD
        assert answer["by"] == "nameko"
        # Our call id stack and context data reached nameko's worker ...
        on_order_stack = answer["call_id_stack"]
        assert [c.rsplit(".", 1)[0] for c in on_order_stack] == [
            "trio_orders.place",
            "nameko_billing.on_order",
        ]
        assert answer["data"] == {"language": "fr-fr"}
        # ... and nameko's came back to ours, with that language kept.
        worker_ctx = waited.worker_ctx
        assert worker_ctx is not None
        assert worker_ctx.call_id_stack[:-1] == on_order_stack
        assert worker_ctx.call_id_stack[-1].startswith("trio_audit.on_seen.")
        assert worker_ctx.data == {"language": "fr-fr"}

        # The two cross-framework messages, as the broker holds them.
        got = await api(
            rabbit_admin,
            "POST",
            f"queues/{vhost}/{SPY}/get",
            {"count": 10, "ackmode": "ack_requeue_false", "encoding": "auto"},
        )
        by_exchange = {m["exchange"]: m for m in got}
        assert sorted(by_exchange) == ["nameko_billing.events", "trio_orders.events"]
        ours, theirs = (
            by_exchange["trio_orders.events"],
            by_exchange["nameko_billing.events"],
        )
        assert ours["routing_key"] == "order_placed"
        assert theirs["routing_key"] == "order_seen"
        for message in (ours, theirs):
            props = message["properties"]
            headers = props.pop("headers")
            assert props == {
                "content_type": "application/json",
                "content_encoding": "utf-8",
                "delivery_mode": 2,
                "priority": 0,
            }, message["exchange"]
            assert sorted(headers) == ["nameko.call_id_stack", "nameko.language"]
            assert message["payload_encoding"] == "string"
            assert message["payload"].isascii()  # both ensure_ascii
        assert json.loads(ours["payload"]) == PAYLOAD
        assert json.loads(theirs["payload"]) == answer

        # What both created: the same names and flags as nameko's table.
        flags = await queue_flags(rabbit_admin, vhost)
        assert flags == dict.fromkeys(QUEUES, (True, False, False, {}))
        exchanges = await api(rabbit_admin, "GET", f"exchanges/{vhost}")
        ours_and_theirs = {e["name"]: e for e in exchanges if e["name"] in EXCHANGES}
        assert sorted(ours_and_theirs) == sorted(EXCHANGES)
        for exchange in ours_and_theirs.values():
            assert (exchange["type"], exchange["durable"], exchange["auto_delete"]) == (
                "topic",
                True,
                False,
            )
            assert exchange["arguments"] == {}

        # Each side declares the other's queue: no PRECONDITION_FAILED, no new queue.
        twin = ServiceHost([NamekoBillingTwin], {"AMQP_URI": rabbit_vhost})
        async with trio.open_nursery() as twin_nursery:
            await twin_nursery.start(twin.serve)
            await twin.stop()
        async with nameko_side(nameko_python, rabbit_vhost, "twin"):
            pass
        assert await queue_flags(rabbit_admin, vhost) == flags
        await host.stop()


async def test_traced_events_still_cross_both_ways(
    nameko_python: pathlib.Path, rabbit_vhost: str
) -> None:
    """With tracing on, our events carry ``traceparent``: nameko ignores it and
    answers, and its answer (which carries no trace context) starts a trace of
    its own here."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    from trioevents.otel import OpenTelemetryTracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    host = ServiceHost(
        [TrioOrders, TrioAudit],
        {"AMQP_URI": rabbit_vhost},
        observers=[OpenTelemetryTracing(provider)],
    )
    async with nameko_side(nameko_python, rabbit_vhost), trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        with trio.fail_after(60):
            async with entrypoint_waiter(host, "trio_audit", "on_seen") as waited:
                async with host.dispatcher() as dispatch:
                    await dispatch("test_driver", "place", PAYLOAD)
        assert waited.get()["echo"] == PAYLOAD
        await host.stop()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert sorted(spans) == [
        "process nameko_billing.events",
        "process test_driver.events",
        "publish test_driver.events",
        "publish trio_orders.events",
    ]
    ours = spans["publish trio_orders.events"]
    placed = spans["process test_driver.events"]
    assert ours.parent is not None
    assert ours.parent.span_id == placed.context.span_id
    assert spans["process nameko_billing.events"].parent is None


# ------------------------------------------------- one pytest session, two plugins

BOTH_PLUGINS_TESTS = """
import trio

from trioevents import event_handler
from trioevents.testing import entrypoint_waiter


class Billing:
    name = "billing"

    @event_handler("orders", "order_placed")
    async def charge(self, event: dict) -> dict:
        return event


def test_nameko_keeps_its_rabbit_config(rabbit_config):
    assert rabbit_config["vhost"].startswith("nameko_test_")


async def test_trioevents_keeps_its_own(
    host_factory, trioevents_rabbit_config, rabbit_vhost
):
    assert trioevents_rabbit_config == {"AMQP_URI": rabbit_vhost}
    host = await host_factory([Billing], trioevents_rabbit_config)
    async with entrypoint_waiter(host, "billing", "charge") as waited:
        async with host.dispatcher() as dispatch:
            await dispatch("orders", "order_placed", {"id": 1})
    assert waited.get() == {"id": 1}
"""


def test_nameko_and_trioevents_pytest_plugins_share_a_session(
    nameko_python: pathlib.Path,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    """In nameko's venv, where trioevents is installed too: both plugins load,
    each keeps its options and fixtures (no ``--amqp-uri`` conflict)."""
    amqp_uri: str = request.config.getoption("trioevents_amqp_uri")
    api_uri: str = request.config.getoption("trioevents_rabbit_api_uri")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    (tmp_path / "test_both.py").write_text(BOTH_PLUGINS_TESTS)
    command = [str(nameko_python), "-m", "pytest", "-p", "no:cacheprovider"]
    command += ["--trioevents-amqp-uri", amqp_uri]
    command += ["--trioevents-rabbit-api-uri", api_uri]
    command += ["--amqp-uri", amqp_uri]  # nameko's option
    command += ["--rabbit-api-uri", api_uri.rstrip("/").removesuffix("/api")]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
