"""The switches of the project's own test run: what runs only when asked for.

``conftest.py`` skips the disruptive tests (``rabbitmq_restart``: they restart
the RabbitMQ app under every client of the broker) unless
``TRIOEVENTS_DISRUPTIVE_TESTS=1`` or ``--run-disruptive``, and the cluster tests
(``rabbitmq_cluster``: they start a throwaway 3-node cluster) unless
``TRIOEVENTS_CLUSTER_TESTS=1`` or ``--run-cluster``; ``.ci/run`` opts in to both.

These tests only ever *plan* the broker-restart test: ``--setup-plan`` runs no
test body and no fixture, and ``rabbitmqctl`` is left off ``PATH`` besides. The
cluster tests are only collected (their skip marks are read at collection).

The tests that run nameko (``tests/nameko_python.py``) skip without nameko's
Python, unless ``TRIOEVENTS_NAMEKO_PYTHON`` names one (``.ci/run`` does) or
``TRIOEVENTS_REQUIRE_NAMEKO=1``: then they fail.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests import nameko_python

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESTART_TEST = (
    "tests/amqp/test_faults.py::test_a_broker_restart_loses_no_confirmed_event"
)


def run_pytest(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the project's tests named by *args* in a pytest of their own."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


CLUSTER_TESTS = "tests/cluster"
#: The variables that opt in to the tests run only when asked for.
OPT_IN_VARIABLES = ("TRIOEVENTS_DISRUPTIVE_TESTS", "TRIOEVENTS_CLUSTER_TESTS")


def plan(*args: str, tests: str = RESTART_TEST, **environ: str) -> str:
    """Plan (never run) *tests*, not opted in unless *args* or *environ* say so;
    return pytest's report."""
    env = {k: v for k, v in os.environ.items() if k not in OPT_IN_VARIABLES}
    env["PATH"] = str(pathlib.Path(sys.executable).parent)  # no rabbitmqctl
    env.update(environ)
    done = run_pytest("--setup-plan", "-rs", tests, *args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_broker_restart_test_is_skipped_unless_asked_for() -> None:
    report = plan()
    assert "1 skipped" in report
    assert "disruptive: restarts the RabbitMQ app" in report
    assert "--run-disruptive or TRIOEVENTS_DISRUPTIVE_TESTS=1" in report


@pytest.mark.parametrize(
    ("args", "environ"),
    [(("--run-disruptive",), {}), ((), {"TRIOEVENTS_DISRUPTIVE_TESTS": "1"})],
)
def test_the_broker_restart_test_runs_when_asked_for(
    args: tuple[str, ...], environ: dict[str, str]
) -> None:
    """Opted in, only its own condition is left: rabbitmqctl, kept off PATH here."""
    report = plan(*args, **environ)
    assert "disruptive" not in report
    assert "needs rabbitmqctl" in report


def test_the_cluster_tests_are_skipped_unless_asked_for() -> None:
    report = plan(tests=CLUSTER_TESTS)
    assert "3 skipped" in report
    assert "starts a throwaway 3-node RabbitMQ cluster" in report
    assert "--run-cluster or TRIOEVENTS_CLUSTER_TESTS=1" in report


@pytest.mark.parametrize(
    ("args", "environ"),
    [(("--run-cluster",), {}), ((), {"TRIOEVENTS_CLUSTER_TESTS": "1"})],
)
def test_the_cluster_tests_run_when_asked_for(
    args: tuple[str, ...], environ: dict[str, str]
) -> None:
    """Asked for, nothing skips them up front: they set the cluster up."""
    report = plan(*args, tests=CLUSTER_TESTS, **environ)
    assert "skipped" not in report
    assert report.count("SETUP    S rabbit_cluster") == 1


# ------------------------------------------------------------------ nameko's Python


@pytest.mark.parametrize(
    ("environ", "outcome"),
    [
        ({}, pytest.skip.Exception),
        ({"TRIOEVENTS_REQUIRE_NAMEKO": "1"}, pytest.fail.Exception),
        ({"TRIOEVENTS_NAMEKO_PYTHON": "/nonexistent/python"}, pytest.fail.Exception),
    ],
)
def test_without_nameko_s_python_the_nameko_tests_skip_unless_required(
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    outcome: type[BaseException],
) -> None:
    for name in ("TRIOEVENTS_NAMEKO_PYTHON", "TRIOEVENTS_REQUIRE_NAMEKO"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(nameko_python, "DEFAULT_PYTHON", "/nonexistent/python")
    with pytest.raises(outcome, match=r"no nameko Python at /nonexistent/python"):
        nameko_python.find_nameko_python()


@pytest.mark.rabbitmq  # as the interop tests: without a broker they skip first
def test_the_interop_tests_fail_when_nameko_s_python_is_named_but_missing() -> None:
    env = {**os.environ, "TRIOEVENTS_NAMEKO_PYTHON": "/nonexistent/python"}
    done = run_pytest("tests/amqp/test_nameko_interop.py", env=env)
    summary = done.stdout.strip().splitlines()[-1]
    # Every interop test errors: none passes, none is skipped.
    assert re.search(r"= \d+ errors in ", summary), done.stdout
    assert "no nameko Python at /nonexistent/python" in done.stdout
    assert "TRIOEVENTS_NAMEKO_PYTHON is set: the nameko tests must run" in done.stdout
