"""The name of a host's connections: who is who in RabbitMQ's management UI."""

from __future__ import annotations

import os
import socket
import urllib.parse
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import ServiceHost, event_handler

if TYPE_CHECKING:
    from trioevents.testing import HostFactory, RabbitAdmin


class Orders:
    name = "orders"

    @event_handler("web", "checkout")
    async def on_checkout(self, payload: Any) -> None:
        pass


class Billing:
    name = "billing"

    @event_handler("orders", "order_placed")
    async def charge(self, payload: Any) -> None:
        pass


WHERE = f"{socket.gethostname()}:{os.getpid()}"


def test_a_host_is_named_after_its_services_machine_and_process() -> None:
    assert ServiceHost([Orders, Billing]).connection_name == (
        f"trioevents:orders,billing@{WHERE}"
    )
    assert ServiceHost([]).connection_name == f"trioevents@{WHERE}"
    named = ServiceHost([Orders], {"CONNECTION_NAME": "orders-blue-7"})
    assert named.connection_name == "orders-blue-7"


@pytest.mark.rabbitmq
async def test_rabbitmq_shows_each_connection_by_its_name(
    rabbit_vhost: str, rabbit_admin: RabbitAdmin, host_factory: HostFactory
) -> None:
    await host_factory([Orders, Billing])
    await host_factory(Billing, {"CONNECTION_NAME": "billing-blue-7"})
    vhost = urllib.parse.quote(
        urllib.parse.unquote(urllib.parse.urlsplit(rabbit_vhost).path[1:]), safe=""
    )
    expected = {f"trioevents:orders,billing@{WHERE}", "billing-blue-7"}
    names: set[str] = set()
    # The management API lists a new connection once it has its stats.
    with trio.fail_after(30):
        while names != expected:
            connections = await trio.to_thread.run_sync(
                rabbit_admin.request, "GET", f"vhosts/{vhost}/connections"
            )
            names = {c["client_properties"].get("connection_name") for c in connections}
            if names != expected:
                await trio.sleep(0.2)
    (ours,) = [
        c
        for c in connections
        if c["client_properties"]["connection_name"] == "billing-blue-7"
    ]
    assert ours["client_properties"]["product"] == "trioevents"
