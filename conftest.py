"""Project-wide pytest setup: the ``rabbitmq`` marker, a fresh vhost per test,
the disruptive tests' opt-in, and the docs' code examples as tests.

The fixtures and the marker come from trioevents' own pytest plugin,
``trioevents.testing.pytest_plugin``, which installing trioevents registers
(the ``pytest11`` entry point ``trioevents``), so it is loaded once, before this
file: ``--trioevents-amqp-uri`` / ``--trioevents-rabbit-api-uri`` (also
``--amqp-uri`` / ``--rabbit-api-uri``), the ``trioevents_rabbit_admin`` (session)
and ``trioevents_rabbit_vhost`` fixtures (also ``rabbit_admin`` /
``rabbit_vhost``), and the ``rabbitmq`` marker. Tests marked ``rabbitmq`` need
the live broker. They are skipped when it cannot be reached; with
``TRIOEVENTS_REQUIRE_RABBITMQ=1`` (``.ci/run`` sets it) they fail instead, so CI
never passes by skipping them. Each such test gets its own vhost, made and
removed through the management HTTP API (``rabbitmqctl`` costs seconds of CPU
per call).

Tests that disturb every client of the broker, not just their own vhost (marked
``rabbitmq_restart``: they stop and start the RabbitMQ app), are skipped unless
``--run-disruptive`` or ``TRIOEVENTS_DISRUPTIVE_TESTS=1`` (``.ci/run`` sets it).
Tests that start a throwaway 3-node RabbitMQ cluster beside the default broker
(marked ``rabbitmq_cluster``, in ``tests/cluster/``: ~30 s to start, ~140 MiB a
node) are skipped unless ``--run-cluster`` or ``TRIOEVENTS_CLUSTER_TESTS=1``
(``.ci/run`` sets it); opted in, they fail rather than skip without the
rabbitmq-server package when ``TRIOEVENTS_REQUIRE_RABBITMQ=1``.

Docs examples
-------------
`Sybil <https://sybil.readthedocs.io>`_ runs every ``.. code-block:: python``
(and ``.. invisible-code-block: python``) of ``README.rst`` and ``docs/*.rst`` as
one test each, in page order, sharing one namespace per page. Examples are
synchronous code: those that need trio end with ``trio.run(main)``, so
pytest-trio's ``trio_mode`` leaves them alone. Each page starts and ends with an
empty default embedded broker (``memory://``), so pages cannot see each other's
queues. ``.. skip: next "reason"`` skips an example that cannot run here, and
says so in the report. The tutorial is not run here but by
``tests/test_tutorial.py``, which writes out its files and runs its commands as
its reader would.

An example that names the local RabbitMQ, ``amqp://guest:guest@localhost:5672/``,
runs on a fresh vhost of ``--trioevents-amqp-uri`` instead: the URI is swapped
for the ``trioevents_rabbit_vhost`` fixture's before the example runs, and the
example carries the ``rabbitmq`` marker (so ``-m "not rabbitmq"`` leaves it out,
and it is skipped without a broker, or failed when one is required, like any
``rabbitmq`` test). Such an example must be self-contained: its vhost is deleted
when it ends. (Each example sees the pytest ``request`` in its namespace for
this.)

An example of nameko's code (it imports nameko: the nameko half of a
side-by-side comparison) runs with nameko's own Python, the ``nameko_python``
fixture (``tests/nameko_python.py``): saved in a folder of the page's own as the
file its caption names (``:caption: orders.py``), so that later examples can
import it, and run as a script, or under ``nameko test`` if it is a
``test_*.py``. Without nameko's Python these examples are skipped, unless it is
required (``TRIOEVENTS_NAMEKO_PYTHON`` set, as in CI).

The examples of a page build on each other, so run a page as a whole
(``python -m pytest docs/migrating-from-nameko.rst``): selecting single examples
(``-k``, ``-m rabbitmq``) leaves out the ones that define what they use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import pytest
from sybil import Sybil
from sybil.evaluators.python import pad
from sybil.parsers.rest import CodeBlockParser, SkipParser

import trioevents.testing.pytest_plugin as trioevents_plugin
from tests.nameko_python import find_nameko_python, is_nameko_source, run_nameko_file
from trioevents._memory import drop_broker
from trioevents.testing import RabbitAdmin as RabbitAdmin
from trioevents.testing._environ import env_flag

if TYPE_CHECKING:
    import pathlib

    from sybil import Example

# pytester runs the plugin's own tests (tests/testing/test_pytest_plugin.py).
pytest_plugins = ["pytester"]

#: The URI docs examples use for "the RabbitMQ on this machine".
LOCAL_RABBITMQ = "amqp://guest:guest@localhost:5672/"


# ------------------------------------------------- tests that run when asked for


@attrs.frozen
class OptIn:
    """Tests of a marker that run only when asked for, by flag or variable."""

    marker: str
    flag: str
    variable: str
    #: What the tests do, to say why they were skipped.
    what: str

    @property
    def reason(self) -> str:
        return f"{self.what}; run it with {self.flag} or {self.variable}=1"

    def asked_for(self, config: pytest.Config) -> bool:
        dest = self.flag.removeprefix("--").replace("-", "_")
        return bool(config.getoption(dest)) or env_flag(self.variable)


#: .ci/run sets each variable.
OPT_INS = (
    OptIn(
        "rabbitmq_restart",
        "--run-disruptive",
        "TRIOEVENTS_DISRUPTIVE_TESTS",
        "disruptive: restarts the RabbitMQ app, disconnecting every client of "
        "the broker",
    ),
    OptIn(
        "rabbitmq_cluster",
        "--run-cluster",
        "TRIOEVENTS_CLUSTER_TESTS",
        "starts a throwaway 3-node RabbitMQ cluster beside the default broker "
        "(~30 s, ~140 MiB a node)",
    ),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("trioevents project")
    for opt_in in OPT_INS:
        group.addoption(
            opt_in.flag,
            action="store_true",
            help=f"also run the tests marked {opt_in.marker} ({opt_in.what}); or "
            f"set {opt_in.variable}=1",
        )


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(trioevents_plugin):
        raise pytest.UsageError(
            "trioevents' pytest plugin is not loaded: install the project with "
            "python -m pip install -e '.[test]', or pass -p trioevents"
        )


# ------------------------------------------------------------------ docs examples


def _needs_rabbitmq(example: Example) -> bool:
    return isinstance(example.parsed, str) and LOCAL_RABBITMQ in example.parsed


def _caption(example: Example) -> str:
    options: dict[str, str] = example.region.lexemes.get("options", {})
    return options.get("caption", "")


def _is_nameko_test(example: Example) -> bool:
    source = str(example.parsed)
    return is_nameko_source(source) and _caption(example).startswith("test_")


def _evaluate_python(example: Example) -> None:
    """Run a Python example; one naming the local RabbitMQ on a fresh vhost; one
    of nameko's with nameko's Python."""
    __tracebackhide__ = True
    source = str(example.parsed)
    request: pytest.FixtureRequest = example.namespace["request"]
    if LOCAL_RABBITMQ in source:
        vhost_uri: str = request.getfixturevalue("trioevents_rabbit_vhost")
        source = source.replace(LOCAL_RABBITMQ, vhost_uri)
    if is_nameko_source(source):
        _run_with_nameko(example, source, request)
        return
    padded = pad(source, example.line + example.parsed.line_offset)
    code = compile(padded, example.path, "exec", dont_inherit=True)
    exec(code, example.namespace)
    del example.namespace["__builtins__"]  # exec adds it


def _run_with_nameko(
    example: Example, source: str, request: pytest.FixtureRequest
) -> None:
    """Save nameko's example as the file its caption names, in a folder of the
    page's own, and run it with nameko's Python (``nameko test`` for tests)."""
    python: pathlib.Path = request.getfixturevalue("nameko_python")
    folder: pathlib.Path | None = example.namespace.get("nameko_folder")
    if folder is None:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        folder = example.namespace["nameko_folder"] = factory.mktemp("nameko")
    path = folder / (_caption(example) or f"example_{example.line}.py")
    path.write_text(source)
    config = request.config
    api_uri: str = config.getoption("trioevents_rabbit_api_uri")
    run_nameko_file(
        python,
        path,
        "--amqp-uri",
        config.getoption("trioevents_amqp_uri"),
        "--rabbit-api-uri",  # nameko's has no /api/ at the end
        api_uri.rstrip("/").removesuffix("/api"),
    )


@pytest.fixture(scope="session")
def nameko_python() -> pathlib.Path:
    """nameko 2.14's own Python (``tests/nameko_python.py``): skips without one,
    unless one is required."""
    return find_nameko_python()


def _fresh_memory_broker(namespace: dict[str, Any]) -> None:
    drop_broker("")  # the broker of plain "memory://"


pytest_collect_file = Sybil(
    parsers=[
        CodeBlockParser(language="python", evaluator=_evaluate_python),
        SkipParser(),
    ],
    patterns=["README.rst", "docs/*.rst"],
    # The tutorial's files are run as its reader would: tests/test_tutorial.py.
    excludes=["docs/tutorial.rst"],
    fixtures=["request"],
    setup=_fresh_memory_broker,
    teardown=_fresh_memory_broker,
).pytest()


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Mark the docs examples that run on RabbitMQ with ``rabbitmq``; skip the
    disruptive and cluster tests unless asked for."""
    not_asked = [opt_in for opt_in in OPT_INS if not opt_in.asked_for(config)]
    for item in items:
        example = getattr(item, "example", None)
        if example is not None and (
            _needs_rabbitmq(example) or _is_nameko_test(example)
        ):
            item.add_marker(pytest.mark.rabbitmq)
        for opt_in in not_asked:
            if item.get_closest_marker(opt_in.marker):
                # First, so that this reason wins over the test's own skipif marks.
                item.add_marker(
                    pytest.mark.skipif(True, reason=opt_in.reason), append=False
                )
