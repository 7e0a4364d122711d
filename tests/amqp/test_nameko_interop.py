"""nameko 2.14 and trioevents exchange events both ways on RabbitMQ.

nameko needs eventlet, which never goes into the project's environment: the
nameko side (``nameko_side.py``) runs in a subprocess with a Python of its own,
``$TRIOEVENTS_NAMEKO_PYTHON`` or ``/tmp/nameko-venv/bin/python``; made with::

    python3 -m venv /tmp/nameko-venv && /tmp/nameko-venv/bin/pip install nameko==2.14.1

Without it the test is skipped, under ``CI=true`` too: nameko is an optional
cross-check, not a dependency.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Any

import pytest
import trio

from trioevents import EventDispatcher, ServiceHost, event_handler
from trioevents.testing import entrypoint_waiter

NAMEKO_PYTHON = pathlib.Path(
    os.environ.get("TRIOEVENTS_NAMEKO_PYTHON", "/tmp/nameko-venv/bin/python")
)
SIDE = pathlib.Path(__file__).with_name("nameko_side.py")

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.skipif(
        not NAMEKO_PYTHON.exists(),
        reason=f"nameko is not installed: no {NAMEKO_PYTHON} (set "
        "TRIOEVENTS_NAMEKO_PYTHON to a Python with nameko==2.14.1; skipped under CI "
        "too, nameko is optional)",
    ),
]


class TrioOrders:
    name = "trio_orders"
    dispatch = EventDispatcher()


class TrioAudit:
    name = "trio_audit"

    @event_handler("nameko_billing", "order_seen")
    async def on_seen(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload


PAYLOAD = {"id": 7, "items": [{"sku": "tea", "qty": 2}], "note": "caf\u00e9 \u2615"}


async def test_nameko_and_trioevents_exchange_events_both_ways(
    rabbit_vhost: str,
) -> None:
    host = ServiceHost([TrioOrders, TrioAudit], {"AMQP_URI": rabbit_vhost})
    process = await trio.lowlevel.open_process(
        [str(NAMEKO_PYTHON), str(SIDE), rabbit_vhost],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(60):
            output = b""
            while b"ready" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, f"the nameko side exited: {output!r}"
                output += chunk
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            with trio.fail_after(60):
                async with entrypoint_waiter(host, "trio_audit", "on_seen") as waited:
                    async with host.dispatcher() as dispatch:
                        await dispatch("trio_orders", "order_placed", PAYLOAD)
            # nameko decoded our event, and we decoded nameko's answer.
            assert waited.get() == {"echo": PAYLOAD, "by": "nameko"}
            # nameko's call id came along in nameko.call_id_stack.
            worker_ctx = waited.worker_ctx
            assert worker_ctx is not None
            parents = worker_ctx.call_id_stack[:-1]
            assert any(c.startswith("nameko_billing.on_order.") for c in parents)
            await host.stop()
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
