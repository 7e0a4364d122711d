"""The live-broker fixtures: a fresh vhost per test through the management API,
and the API client behind them."""

from __future__ import annotations

import urllib.parse

import pytest

from trioevents import ConfigurationError
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


def test_rabbit_admin_never_shows_its_password() -> None:
    admin = RabbitAdmin("http://svc:S3cretPW@127.0.0.1:15672/api/")
    assert repr(admin) == "RabbitAdmin('http://svc:****@127.0.0.1:15672/api/')"
    assert (admin.base, admin.user) == ("http://127.0.0.1:15672/api/", "svc")


def test_rabbit_admin_keeps_a_uri_without_a_port() -> None:
    assert (
        RabbitAdmin("https://rabbit.example/api").base == "https://rabbit.example/api/"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "http://svc:S3c/retPW@127.0.0.1:15672/api/",  # "/" not percent-encoded
        "amqp://svc:S3cretPW@127.0.0.1:5672/",  # not the HTTP API
    ],
)
def test_rabbit_admin_refuses_a_bad_uri_with_its_password_masked(uri: str) -> None:
    with pytest.raises(ConfigurationError, match=r"svc:\*\*\*\*@") as info:
        RabbitAdmin(uri)
    assert "S3c" not in str(info.value)
