"""The pytest plugin of trioevents: brokers and hosts for each test.

Installing trioevents registers it (the ``pytest11`` entry point ``trioevents``),
so every project that has trioevents installed gets these fixtures; disable it
with ``-p no:trioevents``.

Fixtures (see ``docs/testing.rst`` for worked examples):

``memory_uri``
    A ``memory://`` URI of a fresh embedded broker, dropped after the test.
``trioevents_rabbit_admin`` (session; also ``rabbit_admin``)
    A :class:`~trioevents.testing.RabbitAdmin` on ``--trioevents-rabbit-api-uri``.
``trioevents_rabbit_vhost`` (also ``rabbit_vhost``)
    An AMQP URI on a fresh vhost of ``--trioevents-amqp-uri``, deleted after the
    test.
``trioevents_rabbit_config`` (also ``rabbit_config``)
    ``{"AMQP_URI": trioevents_rabbit_vhost}`` (nameko's ``rabbit_config``).
``broker_uri``
    Parametrized: the test runs once on a fresh embedded broker (``[memory]``)
    and once on a fresh RabbitMQ vhost (``[amqp]``, marked ``rabbitmq``).
``host_factory`` (async: needs pytest-trio)
    A :class:`~trioevents.testing.HostFactory` whose hosts run in the test's
    nursery, on ``broker_uri`` / ``trioevents_rabbit_vhost`` if the test uses
    one, else on ``memory_uri``; they are stopped gracefully after the test.

Living beside nameko's plugin
-----------------------------
nameko's pytest plugin, loaded too when nameko is installed in the same
environment, has the options ``--amqp-uri`` and ``--rabbit-api-uri`` and the
fixture ``rabbit_config``. So this plugin's options and RabbitMQ fixtures carry
the prefix ``trioevents`` (``--trioevents-amqp-uri``,
``trioevents_rabbit_config``), and their short names (``--amqp-uri``,
``rabbit_config``, ...) are added as aliases only where no other plugin has
them: with nameko installed, ``rabbit_config`` and ``--amqp-uri`` are nameko's,
and ``rabbit_vhost`` and ``rabbit_admin`` stay trioevents'. The short option
names are added once the plugins and the initial ``conftest.py`` files are
loaded, whichever of them registers first.

The ``rabbitmq`` marker: a test so marked needs the live broker. Without one it
is skipped, or failed when ``TRIOEVENTS_REQUIRE_RABBITMQ=1``, so that the
project's CI never passes by skipping. Every URI the plugin prints has its
password masked. Only ``host_factory`` is async; the other fixtures are plain
functions and work in any project, trio or not.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import uuid
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import pytest
import trio

from .._exceptions import ConfigurationError
from .._memory import drop_broker
from .._uri import parse_amqp_address
from . import _short_names
from ._environ import env_flag
from ._rabbit import RabbitAdmin, broker_problem, new_vhost_name, vhost_uri
from ._services import HostFactory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator, Iterator

__all__ = [
    "broker_uri",
    "host_factory",
    "memory_uri",
    "trioevents_rabbit_admin",
    "trioevents_rabbit_config",
    "trioevents_rabbit_vhost",
]

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_API_URI = "http://guest:guest@127.0.0.1:15672/api/"
RABBITMQ_MARKER = "rabbitmq: needs the live broker; gets a fresh vhost"
#: Set to 1 to fail, instead of skip, the rabbitmq tests when there is no broker.
REQUIRE_RABBITMQ: Final = "TRIOEVENTS_REQUIRE_RABBITMQ"


@final
@attrs.frozen
class _Option:
    """A command-line option of the plugin: its own name and its short alias."""

    name: str
    alias: str
    dest: str
    environ: str
    default: str
    help: str

    @property
    def initial(self) -> str:
        """The value without the option: the environment variable's, or the default."""
        return os.environ.get(self.environ, self.default)


_AMQP_URI = _Option(
    "--trioevents-amqp-uri",
    "--amqp-uri",
    "trioevents_amqp_uri",
    "TRIOEVENTS_AMQP_URI",
    DEFAULT_AMQP_URI,
    "RabbitMQ to run the rabbitmq-marked tests on (its vhost is replaced by a "
    "fresh one per test)",
)
_API_URI = _Option(
    "--trioevents-rabbit-api-uri",
    "--rabbit-api-uri",
    "trioevents_rabbit_api_uri",
    "TRIOEVENTS_RABBIT_API_URI",
    DEFAULT_API_URI,
    "the RabbitMQ management HTTP API, used to make and remove vhosts",
)
_OPTIONS: Final = (_AMQP_URI, _API_URI)

_problem_key = pytest.StashKey[str | None]()


# ------------------------------------------------------------------------ options


def pytest_addoption(
    parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager
) -> None:
    group = parser.getgroup("trioevents")
    for option in _OPTIONS:
        group.addoption(
            option.name,
            dest=option.dest,
            default=option.initial,
            help=f"{option.help}; default ${option.environ} or {option.default}",
        )
    if _conftests_loaded(pluginmanager):
        # Registered by a conftest's pytest_plugins: the other plugins are in.
        _add_aliases(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(parser: pytest.Parser) -> Generator[None, None, None]:
    """Offer the short option names once plugins and initial conftests are in."""
    try:
        return (yield)
    finally:
        _add_aliases(parser)


def _conftests_loaded(pluginmanager: pytest.PytestPluginManager) -> bool:
    return any(
        name.endswith("conftest.py") for name, _ in pluginmanager.list_name_plugin()
    )


def _option_taken(parser: pytest.Parser, name: str) -> bool:
    # pytest has no public way to list the options added so far: read its groups.
    groups = [parser._anonymous, *parser._groups]
    return any(name in option.names() for group in groups for option in group.options)


def _add_aliases(parser: pytest.Parser) -> None:
    """Add ``--amqp-uri`` and ``--rabbit-api-uri`` where no plugin has them."""
    group = parser.getgroup("trioevents")
    for option in _OPTIONS:
        if not _option_taken(parser, option.alias):
            group.addoption(
                option.alias,
                dest=option.dest,
                default=option.initial,
                help=f"same as {option.name} (absent where another plugin, such "
                f"as nameko's, has {option.alias})",
            )


def _amqp_uri(config: pytest.Config) -> str:
    uri: str = config.getoption(_AMQP_URI.dest)
    return uri


def _admin(config: pytest.Config) -> RabbitAdmin:
    return RabbitAdmin(config.getoption(_API_URI.dest))


def _check_uris(config: pytest.Config) -> None:
    """Refuse URIs that do not parse, up front, with their passwords masked."""
    try:
        parse_amqp_address(_amqp_uri(config))
        _admin(config)
    except ConfigurationError as exc:
        raise pytest.UsageError(f"trioevents: {exc}") from None


# ---------------------------------------------------------------- short fixture names


SHORT_FIXTURE_NAMES: Final = ("rabbit_admin", "rabbit_config", "rabbit_vhost")


def _fixture_elsewhere(config: pytest.Config, name: str) -> bool:
    """Whether a plugin other than this one (conftests aside) defines *name*."""
    this = sys.modules[__name__]
    for plugin_name, plugin in config.pluginmanager.list_name_plugin():
        if plugin is this or plugin_name.endswith("conftest.py"):
            continue  # a conftest's fixture overrides ours anyway
        if inspect.getattr_static(plugin, name, None) is not None:
            return True
    return False


def _register_short_names(config: pytest.Config) -> None:
    """Register ``rabbit_config`` and co. where no other plugin has the name."""
    holder = types.ModuleType("trioevents-short-names")
    for name in SHORT_FIXTURE_NAMES:
        if not _fixture_elsewhere(config, name):
            setattr(holder, name, getattr(_short_names, name))
    config.pluginmanager.register(holder, holder.__name__)


# -------------------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", RABBITMQ_MARKER)
    _check_uris(config)
    _register_short_names(config)


def _broker_problem(config: pytest.Config) -> str | None:
    """Say why the live broker cannot be used (checked once per session)."""
    if _problem_key not in config.stash:
        config.stash[_problem_key] = broker_problem(_amqp_uri(config), _admin(config))
    return config.stash[_problem_key]


def _require_broker(config: pytest.Config) -> None:
    problem = _broker_problem(config)
    if problem is not None:
        if env_flag(REQUIRE_RABBITMQ):
            pytest.fail(
                f"{problem} ({REQUIRE_RABBITMQ}=1: the rabbitmq tests must run)",
                pytrace=False,
            )
        pytest.skip(problem)


def _uses_pytest_trio(config: pytest.Config) -> bool:
    return any(
        getattr(plugin, "__name__", None) == "pytest_trio.plugin"
        for plugin in config.pluginmanager.get_plugins()
    )


def _require_trio_test(item: pytest.Item) -> None:
    """Say plainly what ``host_factory`` needs, before pytest fails obscurely."""
    if not _uses_pytest_trio(item.config):
        pytest.fail(
            "the host_factory fixture is async: it needs pytest-trio "
            "(python -m pip install pytest-trio), with trio_mode = true in the "
            "pytest configuration or @pytest.mark.trio on the test",
            pytrace=False,
        )
    if item.get_closest_marker("trio") is None:
        pytest.fail(
            "the host_factory fixture is async: use it from an async test that "
            "pytest-trio runs (trio_mode = true in the pytest configuration, or "
            "@pytest.mark.trio on the test)",
            pytrace=False,
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``rabbitmq`` tests without a broker (or fail them, if required);
    say what ``host_factory`` needs when pytest-trio cannot run it."""
    if item.get_closest_marker("rabbitmq") is not None:
        _require_broker(item.config)
    if "host_factory" in getattr(item, "fixturenames", ()):
        _require_trio_test(item)


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def trioevents_rabbit_admin(request: pytest.FixtureRequest) -> RabbitAdmin:
    """The management API client; skips (or fails, if required) without a broker.

    Also ``rabbit_admin``, where no other plugin has that name.
    """
    _require_broker(request.config)
    return _admin(request.config)


@pytest.fixture
def trioevents_rabbit_vhost(
    request: pytest.FixtureRequest, trioevents_rabbit_admin: RabbitAdmin
) -> Iterator[str]:
    """Make a fresh vhost for one test; yield an AMQP URI onto it; remove it after.

    Also ``rabbit_vhost``, where no other plugin has that name.
    """
    name = new_vhost_name()
    trioevents_rabbit_admin.create_vhost(name)
    try:
        yield vhost_uri(_amqp_uri(request.config), name)
    finally:
        trioevents_rabbit_admin.delete_vhost(name)


@pytest.fixture
def trioevents_rabbit_config(trioevents_rabbit_vhost: str) -> dict[str, Any]:
    """A host config on a fresh vhost: ``{"AMQP_URI": trioevents_rabbit_vhost}``.

    Also ``rabbit_config``, where no other plugin (such as nameko's) has that name.
    """
    return {"AMQP_URI": trioevents_rabbit_vhost}


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
    name = "memory_uri" if request.param == "memory" else "trioevents_rabbit_vhost"
    uri: str = request.getfixturevalue(name)
    return uri


@pytest.fixture
def _trioevents_host_uri(request: pytest.FixtureRequest) -> str:
    """The broker ``host_factory`` uses: the one the test asked for, else memory."""
    for name in ("broker_uri", "trioevents_rabbit_vhost"):
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
