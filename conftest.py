"""Project-wide pytest setup: the ``rabbitmq`` marker and a fresh vhost per test.

Tests marked ``rabbitmq`` need the live broker. Locally they are skipped when it
cannot be reached; under ``CI=true`` they fail instead, so CI never passes by
skipping them. Each such test gets its own vhost, made and removed through the
management HTTP API (``rabbitmqctl`` costs seconds of CPU per call).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_API_URI = "http://guest:guest@127.0.0.1:15672/api/"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("trioevents")
    group.addoption(
        "--amqp-uri",
        default=os.environ.get("TRIOEVENTS_AMQP_URI", DEFAULT_AMQP_URI),
        help="RabbitMQ to run the rabbitmq-marked tests on (its vhost is replaced "
        "by a fresh one per test)",
    )
    group.addoption(
        "--rabbit-api-uri",
        default=os.environ.get("TRIOEVENTS_RABBIT_API_URI", DEFAULT_API_URI),
        help="the RabbitMQ management HTTP API, used to make and remove vhosts",
    )


class RabbitAdmin:
    """A tiny client of the RabbitMQ management HTTP API (sync, for fixtures)."""

    def __init__(self, api_uri: str) -> None:
        parts = urllib.parse.urlsplit(api_uri)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
        if not self.base.endswith("/"):
            self.base += "/"
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.user = user
        self._auth = f"Basic {token}"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self._auth)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def create_vhost(self, name: str) -> None:
        quoted = urllib.parse.quote(name, safe="")
        self.request("PUT", f"vhosts/{quoted}")
        self.request(
            "PUT",
            f"permissions/{quoted}/{urllib.parse.quote(self.user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def delete_vhost(self, name: str) -> None:
        quoted = urllib.parse.quote(name, safe="")
        try:
            self.request("DELETE", f"vhosts/{quoted}")
        except urllib.error.HTTPError as exc:  # pragma: no cover - already gone
            if exc.code != 404:
                raise


def _reachable(uri: str) -> bool:
    parts = urllib.parse.urlsplit(uri)
    try:
        socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2
        ).close()
    except OSError:
        return False
    return True


_problem: dict[str, str | None] = {}


def _broker_problem(config: pytest.Config) -> str | None:
    """Say why the live broker cannot be used (checked once per session)."""
    if "problem" not in _problem:
        amqp_uri: str = config.getoption("--amqp-uri")
        admin = RabbitAdmin(config.getoption("--rabbit-api-uri"))
        problem = None
        if not _reachable(amqp_uri):
            problem = f"RabbitMQ is not reachable at {amqp_uri}"
        else:
            try:
                admin.request("GET", "overview")
            except (OSError, urllib.error.URLError) as exc:
                problem = f"the RabbitMQ management API at {admin.base} failed: {exc}"
        _problem["problem"] = problem
    return _problem["problem"]


def _require_broker(config: pytest.Config) -> None:
    problem = _broker_problem(config)
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem} (CI=true: the rabbitmq tests must run)")
        pytest.skip(problem)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``rabbitmq`` tests without a broker locally; fail them under CI=true."""
    if item.get_closest_marker("rabbitmq") is not None:
        _require_broker(item.config)


@pytest.fixture(scope="session")
def rabbit_admin(request: pytest.FixtureRequest) -> RabbitAdmin:
    """The management API client; skips (or fails under CI) without a broker."""
    _require_broker(request.config)
    return RabbitAdmin(request.config.getoption("--rabbit-api-uri"))


@pytest.fixture
def rabbit_vhost(
    request: pytest.FixtureRequest, rabbit_admin: RabbitAdmin
) -> Iterator[str]:
    """Make a fresh vhost for one test; yield an AMQP URI onto it; remove it after."""
    name = f"trioevents-test-{uuid.uuid4().hex[:12]}"
    rabbit_admin.create_vhost(name)
    parts = urllib.parse.urlsplit(request.config.getoption("--amqp-uri"))
    uri = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/" + urllib.parse.quote(name, safe=""), "", "")
    )
    try:
        yield uri
    finally:
        rabbit_admin.delete_vhost(name)
