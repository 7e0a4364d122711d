"""The live-broker fixtures: a fresh vhost per test through the management API."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from trioevents.testing import RabbitAdmin


@pytest.mark.rabbitmq
def test_each_test_gets_its_own_empty_vhost(
    rabbit_admin: RabbitAdmin, rabbit_vhost: str
) -> None:
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(rabbit_vhost).path[1:])
    assert vhost.startswith("trioevents-test-")
    names = {v["name"] for v in rabbit_admin.request("GET", "vhosts")}
    assert vhost in names
    quoted = urllib.parse.quote(vhost, safe="")
    assert rabbit_admin.request("GET", f"queues/{quoted}") == []
    permissions = rabbit_admin.request("GET", f"vhosts/{quoted}/permissions")
    assert [p["user"] for p in permissions] == [rabbit_admin.user]
