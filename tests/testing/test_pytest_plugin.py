"""The pytest plugin, from the outside: throwaway projects run by pytester."""

from __future__ import annotations

import pathlib
import shutil
import textwrap
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from trioevents.testing import RabbitAdmin

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"

TRIO_INI = """
[pytest]
trio_mode = true
addopts = -ra --strict-markers --strict-config
filterwarnings = error
"""

SHOP = """
from __future__ import annotations

from typing import Any

from trioevents import EventDispatcher, event_handler

handled: list[Any] = []


class Orders:
    name = "orders"
    dispatch = EventDispatcher()

    @event_handler("web", "checkout")
    async def on_checkout(self, payload: dict[str, Any]) -> str:
        await self.dispatch("order_placed", {"id": payload["id"]})
        return f"order {payload['id']}"


class Billing:
    name = "billing"

    @event_handler("orders", "order_placed")
    async def charge(self, event: dict[str, Any]) -> None:
        handled.append(event)
"""

SHOP_TESTS = """
from __future__ import annotations

import trio

from trioevents.testing import (
    HostFactory,
    entrypoint_waiter,
    replace_dependencies,
    worker_factory,
)

from shopkit.services import Billing, Orders, handled


async def test_unit_with_worker_factory() -> None:
    orders = worker_factory(Orders)
    assert await orders.on_checkout({"id": 1}) == "order 1"
    orders.dispatch.assert_awaited_once_with("order_placed", {"id": 1})


async def test_events_flow_between_hosts(host_factory: HostFactory) -> None:
    billing = await host_factory([Billing])
    orders = await host_factory([Orders])
    async with orders.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(billing, "billing", "charge") as waited:
                await dispatch("web", "checkout", {"id": 2})
    assert waited.exception is None
    assert handled == [{"id": 2}]


async def test_replaced_dispatcher(host_factory: HostFactory) -> None:
    host = host_factory.make([Orders])
    dispatch_mock = replace_dependencies(host, "dispatch")
    await host_factory.start(host)
    async with host_factory.dispatcher() as dispatch:
        with trio.fail_after(10):
            async with entrypoint_waiter(host, "orders", "on_checkout") as waited:
                await dispatch("web", "checkout", {"id": 3})
    assert waited.get() == "order 3"
    dispatch_mock.assert_awaited_once_with("order_placed", {"id": 3})


async def test_on_both_brokers(host_factory: HostFactory, broker_uri: str) -> None:
    assert host_factory.uri == broker_uri
    host = await host_factory([Billing])
    assert host.config.amqp_uri == broker_uri
"""


def _shop_project(pytester: pytest.Pytester) -> None:
    pytester.makeini(TRIO_INI)
    package = pytester.mkpydir("shopkit")
    (package / "services.py").write_text(SHOP)
    tests = pytester.mkdir("tests")
    (tests / "test_shop.py").write_text(SHOP_TESTS)


def test_a_fresh_project_uses_only_the_installed_fixtures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No conftest: the fixtures come from the pytest11 entry point alone."""
    monkeypatch.delenv("TRIOEVENTS_REQUIRE_RABBITMQ", raising=False)
    _shop_project(pytester)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-m", "not rabbitmq"
    )
    result.assert_outcomes(passed=4, deselected=1)


def test_broker_uri_runs_a_test_on_both_brokers(pytester: pytest.Pytester) -> None:
    _shop_project(pytester)
    pytester.syspathinsert()
    result = pytester.runpytest("--collect-only", "-q", "-m", "rabbitmq")
    result.stdout.fnmatch_lines(
        ["tests/test_shop.py::test_on_both_brokers[[]amqp[]]", "*1/5 tests collected*"]
    )


def test_each_test_gets_a_fresh_embedded_broker(pytester: pytest.Pytester) -> None:
    pytester.makeini(TRIO_INI)
    pytester.makepyfile(
        """
        import trio
        from trioevents import MemoryTransport

        seen = []

        async def declare_and_publish(uri):
            async with MemoryTransport.from_uri(uri).open_connection() as conn:
                declared = await conn.declare_queue("q", durable=True)
                await conn.publish("", "q", b"x")
                return declared.message_count

        def test_one(memory_uri):
            seen.append(memory_uri)
            assert trio.run(declare_and_publish, memory_uri) == 0

        def test_two(memory_uri):
            assert memory_uri not in seen
            assert trio.run(declare_and_publish, memory_uri) == 0
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_hosts_are_stopped_gracefully_after_the_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(TRIO_INI)
    pytester.makepyfile(
        """
        import trio
        from trioevents import DependencyProvider, event_handler

        events = []

        class Lifecycle(DependencyProvider[None]):
            async def stop(self):
                events.append("stopped gracefully")

        class Service:
            name = "service"
            lifecycle = Lifecycle()

            @event_handler("src", "ping")
            async def ping(self, payload):
                pass

        async def test_start(host_factory):
            host = await host_factory([Service])
            assert host.config.amqp_uri.startswith("memory://trioevents-test-")
            assert events == []

        def test_after():
            assert events == ["stopped gracefully"]
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


def test_sync_fixtures_work_without_pytest_trio(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project that does not use trio still gets the plugin, unbroken."""
    monkeypatch.delenv("TRIOEVENTS_REQUIRE_RABBITMQ", raising=False)  # a skip
    pytester.makeini("[pytest]\naddopts = --strict-markers\nfilterwarnings = error\n")
    pytester.makepyfile(
        """
        import pytest
        from trioevents import EventDispatcher
        from trioevents.testing import worker_factory

        class Service:
            dispatch = EventDispatcher()

        def test_fixtures(memory_uri):
            assert memory_uri.startswith("memory://")
            assert worker_factory(Service).dispatch is not None

        @pytest.mark.rabbitmq
        def test_marker_is_registered():
            pass
        """
    )
    result = pytester.runpytest(
        "-p", "no:trio", "--amqp-uri", "amqp://guest:guest@127.0.0.1:1/"
    )
    result.assert_outcomes(passed=1, skipped=1)


def test_options_have_their_own_names_and_the_short_ones(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "trioevents:",
            "*--trioevents-amqp-uri=*",
            "*--trioevents-rabbit-api-uri=*",
            "*--amqp-uri=TRIOEVENTS_AMQP_URI",
            "*same as --trioevents-amqp-uri*",
            "*--rabbit-api-uri=TRIOEVENTS_RABBIT_API_URI",
            "*same as --trioevents-rabbit-api-uri*",
        ]
    )


#: An AMQP URI whose password must never be printed, on a port nothing listens on.
SECRET_URI = "amqp://svc:S3cretPW@127.0.0.1:1/"

RABBITMQ_TESTS = """
import pytest

@pytest.mark.rabbitmq
def test_marked():
    pass

def test_vhost(rabbit_vhost):
    pass
"""


@pytest.mark.parametrize(
    ("environ", "outcome"),
    [
        ({}, "skipped"),
        ({"CI": "true"}, "skipped"),  # every user's CI sets it: not ours to act on
        ({"TRIOEVENTS_REQUIRE_RABBITMQ": "1"}, "errors"),
    ],
)
def test_rabbitmq_tests_without_a_broker_skip_unless_required(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    outcome: str,
) -> None:
    """Only ``TRIOEVENTS_REQUIRE_RABBITMQ=1`` turns the skips into failures."""
    for name in ("CI", "TRIOEVENTS_REQUIRE_RABBITMQ"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(RABBITMQ_TESTS)
    result = pytester.runpytest("-ra", "--amqp-uri", SECRET_URI)
    result.assert_outcomes(**{outcome: 2})
    result.stdout.fnmatch_lines(["*RabbitMQ is not reachable at amqp://svc:****@*:1/*"])
    assert "S3cretPW" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("option", "uri"),
    [
        ("--trioevents-amqp-uri", "amqp://svc:S3cretPW@127.0.0.1:1/?heartbeet=5"),
        ("--trioevents-rabbit-api-uri", "ftp://svc:S3cretPW@127.0.0.1:15672/api/"),
        ("--trioevents-rabbit-api-uri", "http://svc:S3cretPW@127.0.0.1:x/api/"),
    ],
)
def test_a_uri_that_does_not_parse_is_a_usage_error_with_its_password_masked(
    pytester: pytest.Pytester, option: str, uri: str
) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(option, uri)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: trioevents: *svc:****@127.0.0.1*"])
    assert "S3cretPW" not in result.stdout.str() + result.stderr.str()


def test_host_factory_without_pytest_trio_says_what_it_needs(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_uses_it(host_factory):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:trio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*the host_factory fixture is async: it needs pytest-trio*"]
    )


def test_host_factory_in_a_test_pytest_trio_does_not_run_says_so(
    pytester: pytest.Pytester,
) -> None:
    """Without trio mode, a test that is not marked ``trio`` cannot use it."""
    pytester.makepyfile(
        """
        def test_uses_it(host_factory):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*use it from an async test that pytest-trio runs (trio_mode = true*"]
    )


# ------------------------------------------------------- beside nameko's plugin

#: What nameko 2.14's pytest plugin (nameko/testing/pytest.py) adds that ours
#: had too: the options --amqp-uri and --rabbit-api-uri, the fixture rabbit_config.
NAMEKO_LIKE_PLUGIN = """
import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--amqp-uri", "--rabbit-amqp-uri", action="store", dest="RABBIT_AMQP_URI",
        default="pyamqp://guest:guest@localhost:5672/",
    )
    parser.addoption(
        "--rabbit-api-uri", "--rabbit-ctl-uri", action="store", dest="RABBIT_API_URI",
        default="http://guest:guest@localhost:15672",
    )


@pytest.fixture
def rabbit_config(request):
    return {"AMQP_URI": request.config.getoption("RABBIT_AMQP_URI"), "by": "nameko"}
"""

BESIDE_NAMEKO_TESTS = """
import pytest

from trioevents.testing import RabbitAdmin


def test_nameko_keeps_its_options_and_fixture(request, rabbit_config):
    assert rabbit_config == {"AMQP_URI": "pyamqp://nameko-host/", "by": "nameko"}
    assert request.config.getoption("RABBIT_API_URI") == "http://nameko-host:15672"


def test_ours_have_their_own_names(request):
    assert request.config.getoption("trioevents_amqp_uri") == "amqp://guest:guest@127.0.0.1:1/"


def test_our_rabbit_fixtures_keep_their_names(trioevents_rabbit_config, rabbit_vhost):
    pass  # skipped: the trioevents broker above cannot be reached
"""


@pytest.mark.parametrize(
    "load", ["-p before ours", "PYTEST_PLUGINS after ours", "conftest pytest_plugins"]
)
def test_nameko_like_plugin_and_ours_share_a_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, load: str
) -> None:
    """Both add --amqp-uri and rabbit_config: the short names go to the other one.

    Whichever plugin registers first: ``-p`` plugins load before the installed
    ones, ``PYTEST_PLUGINS`` after them, a conftest's ``pytest_plugins`` later.
    """
    monkeypatch.delenv("TRIOEVENTS_REQUIRE_RABBITMQ", raising=False)
    pytester.makepyfile(nameko_like=NAMEKO_LIKE_PLUGIN, test_beside=BESIDE_NAMEKO_TESTS)
    pytester.syspathinsert()
    args = [
        "-ra",
        "--amqp-uri=pyamqp://nameko-host/",
        "--rabbit-api-uri=http://nameko-host:15672",
        "--trioevents-amqp-uri=amqp://guest:guest@127.0.0.1:1/",
    ]
    if load.startswith("-p"):
        args += ["-p", "nameko_like"]
    elif load.startswith("PYTEST_PLUGINS"):
        monkeypatch.setenv("PYTEST_PLUGINS", "nameko_like")
    else:
        pytester.makeconftest("pytest_plugins = ['nameko_like']")
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        ["*RabbitMQ is not reachable at amqp://guest:****@*:1/*"]
    )


def test_the_short_names_are_ours_when_the_plugin_comes_from_a_conftest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plugin autoloading off, our plugin named in a conftest: --amqp-uri works."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("TRIOEVENTS_REQUIRE_RABBITMQ", raising=False)
    pytester.makeconftest("pytest_plugins = ['trioevents.testing.pytest_plugin']")
    pytester.makepyfile(
        """
        def test_short_option(request, rabbit_config):
            pass  # skipped: no broker there
        """
    )
    result = pytester.runpytest("-ra", "--amqp-uri", "amqp://guest:guest@127.0.0.1:1/")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*not reachable at amqp://guest:****@127.0.0.1:1/*"])


@pytest.mark.rabbitmq
def test_rabbit_config_gives_each_test_its_own_vhost(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, rabbit_admin: RabbitAdmin
) -> None:
    pytester.makepyfile(
        """
        import urllib.parse

        vhosts = []

        def vhost_of(uri):
            return urllib.parse.unquote(urllib.parse.urlsplit(uri).path[1:])

        def test_one(rabbit_config, rabbit_admin):
            vhost = vhost_of(rabbit_config["AMQP_URI"])
            assert vhost.startswith("trioevents-test-")
            assert vhost in {v["name"] for v in rabbit_admin.request("GET", "vhosts")}
            vhosts.append(vhost)

        def test_two(rabbit_vhost, rabbit_admin):
            assert vhost_of(rabbit_vhost) not in vhosts
            names = {v["name"] for v in rabbit_admin.request("GET", "vhosts")}
            assert vhosts[0] not in names  # removed after test_one
        """
    )
    result = pytester.runpytest(
        "--trioevents-amqp-uri",
        request.config.getoption("trioevents_amqp_uri"),
        "--trioevents-rabbit-api-uri",
        request.config.getoption("trioevents_rabbit_api_uri"),
    )
    result.assert_outcomes(passed=2)


def test_host_factory_works_with_the_trio_marker_instead_of_trio_mode(
    pytester: pytest.Pytester,
) -> None:
    """Async tests without trio_mode work with pytest-trio's own marker."""
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest
            from trioevents import event_handler

            class Service:
                name = "service"

                @event_handler("src", "ping")
                async def ping(self, payload):
                    pass

            @pytest.mark.trio
            async def test_marked(host_factory):
                host = await host_factory(Service)
                assert host.services == [Service]
            """
        )
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_the_example_shop_tests_pass(pytester: pytest.Pytester) -> None:
    """examples/test_shop.py, which docs/testing.rst shows, in a project of its own."""
    target = pytester.mkpydir("examples")
    for name in ("shop.py", "test_shop.py"):
        shutil.copy(EXAMPLES / name, target / name)
    pytester.makeini(TRIO_INI)
    # A subprocess: this process has imported the project's own examples package.
    result = pytester.runpytest_subprocess("-m", "not rabbitmq", "examples")
    result.assert_outcomes(passed=7, deselected=1)
