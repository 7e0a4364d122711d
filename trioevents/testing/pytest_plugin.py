"""The pytest plugin of trioevents: brokers and hosts for each test.

Installing trioevents registers it (the ``pytest11`` entry point ``trioevents``),
so every project that has trioevents installed gets these fixtures; disable it
with ``-p no:trioevents``.

Fixtures (see ``docs/testing.rst`` for worked examples):

``memory_uri``
    A ``memory://`` URI of a fresh embedded broker, dropped after the test.
``rabbit_admin`` (session)
    A :class:`~trioevents.testing.RabbitAdmin` on ``--rabbit-api-uri``.
``rabbit_vhost``
    An AMQP URI on a fresh vhost of ``--amqp-uri``, deleted after the test.
``rabbit_config``
    ``{"AMQP_URI": rabbit_vhost}`` (nameko's ``rabbit_config``).
``broker_uri``
    Parametrized: the test runs once on a fresh embedded broker (``[memory]``)
    and once on a fresh RabbitMQ vhost (``[amqp]``, marked ``rabbitmq``).
``host_factory`` (async: needs pytest-trio)
    A :class:`~trioevents.testing.HostFactory` whose hosts run in the test's
    nursery, on ``broker_uri`` / ``rabbit_vhost`` if the test uses one, else on
    ``memory_uri``; they are stopped gracefully after the test.

The ``rabbitmq`` marker: a test so marked needs the live broker. Without one it
is skipped, or, under ``CI=true``, failed, so that CI never passes by skipping.
Only ``host_factory`` is async; the other fixtures are plain functions and work in
any project, trio or not.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import trio

from .._memory import drop_broker
from ._rabbit import RabbitAdmin, broker_problem, new_vhost_name, vhost_uri
from ._services import HostFactory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

__all__ = [
    "broker_uri",
    "host_factory",
    "memory_uri",
    "rabbit_admin",
    "rabbit_config",
    "rabbit_vhost",
]

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_API_URI = "http://guest:guest@127.0.0.1:15672/api/"
RABBITMQ_MARKER = "rabbitmq: needs the live broker; gets a fresh vhost"

_problem_key = pytest.StashKey[str | None]()


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", RABBITMQ_MARKER)


def _broker_problem(config: pytest.Config) -> str | None:
    """Say why the live broker cannot be used (checked once per session)."""
    if _problem_key not in config.stash:
        admin = RabbitAdmin(config.getoption("--rabbit-api-uri"))
        config.stash[_problem_key] = broker_problem(
            config.getoption("--amqp-uri"), admin
        )
    return config.stash[_problem_key]


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
    name = new_vhost_name()
    rabbit_admin.create_vhost(name)
    try:
        yield vhost_uri(request.config.getoption("--amqp-uri"), name)
    finally:
        rabbit_admin.delete_vhost(name)


@pytest.fixture
def rabbit_config(rabbit_vhost: str) -> dict[str, Any]:
    """A host config on a fresh vhost: ``{"AMQP_URI": rabbit_vhost}``."""
    return {"AMQP_URI": rabbit_vhost}


@pytest.fixture
def memory_uri() -> Iterator[str]:
    """A ``memory://`` URI of a fresh embedded broker, dropped after the test."""
    name = f"trioevents-test-{uuid.uuid4().hex}"
    try:
        yield f"memory://{name}"
    finally:
        drop_broker(name)


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def broker_uri(request: pytest.FixtureRequest) -> str:
    """Run the test on both brokers: a fresh embedded one, a fresh RabbitMQ vhost.

    Select one with ``-k memory`` or ``-m "not rabbitmq"`` / ``-k amqp``.
    """
    name = "memory_uri" if request.param == "memory" else "rabbit_vhost"
    uri: str = request.getfixturevalue(name)
    return uri


@pytest.fixture
def _trioevents_host_uri(request: pytest.FixtureRequest) -> str:
    """The broker ``host_factory`` uses: the one the test asked for, else memory."""
    for name in ("broker_uri", "rabbit_vhost"):
        if name in request.fixturenames:
            uri: str = request.getfixturevalue(name)
            return uri
    memory: str = request.getfixturevalue("memory_uri")
    return memory


@pytest.fixture
async def host_factory(_trioevents_host_uri: str) -> AsyncIterator[HostFactory]:
    """Start hosts in the test's nursery; stop them gracefully after the test.

    ``host = await host_factory([Orders, Billing])`` makes and starts a host;
    ``host_factory.make(...)`` makes one to adjust before
    ``await host_factory.start(host)``. Needs pytest-trio (``trio_mode = true`` or
    ``@pytest.mark.trio``).
    """
    async with trio.open_nursery() as nursery:
        factory = HostFactory(nursery, {"AMQP_URI": _trioevents_host_uri})
        try:
            yield factory
        finally:
            await factory.aclose()
