"""nameko's own Python: the tests and doc examples that run real nameko 2.14.

nameko needs eventlet, which never enters the project's environment: nameko runs
in a subprocess with a Python of its own, a virtual environment with nameko,
pytest, pytest-trio and trioevents (so that it is also a venv that nameko and
trioevents share, as a team moving over has)::

    python3 -m venv /tmp/nameko-venv
    /tmp/nameko-venv/bin/pip install nameko==2.14.1 pytest pytest-trio -e .

``$TRIOEVENTS_NAMEKO_PYTHON`` names its ``python`` (default
``/tmp/nameko-venv/bin/python``); ``.ci/run`` builds one and sets it. Without
one, the nameko tests are skipped, unless ``TRIOEVENTS_NAMEKO_PYTHON`` is set or
``TRIOEVENTS_REQUIRE_NAMEKO=1``: then they fail, so that CI never passes by
skipping them.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
from typing import Final

import pytest

from trioevents._uri import masked_uri
from trioevents.testing._environ import env_flag

__all__ = [
    "NAMEKO_TEST_OPTIONS",
    "find_nameko_python",
    "is_nameko_source",
    "run_nameko_file",
]

PYTHON_VARIABLE: Final = "TRIOEVENTS_NAMEKO_PYTHON"
REQUIRE_VARIABLE: Final = "TRIOEVENTS_REQUIRE_NAMEKO"
DEFAULT_PYTHON: Final = "/tmp/nameko-venv/bin/python"
RECIPE: Final = (
    "python3 -m venv /tmp/nameko-venv && /tmp/nameko-venv/bin/pip install "
    "nameko==2.14.1 pytest pytest-trio -e ."
)
#: What ``nameko test`` needs in a venv shared with trioevents: eventlet's
#: monkey-patching, which it applies before loading plugins, breaks trio's import.
NAMEKO_TEST_OPTIONS: Final = ("-p", "no:trioevents", "-p", "no:trio")

_VERSIONS = """
import importlib.metadata as m
for name in ("nameko", "pytest", "pytest-trio", "trioevents"):
    print(name, m.version(name))
"""


def _problem(python: pathlib.Path) -> str | None:
    """Say why *python* cannot run the nameko tests, or ``None``."""
    if not python.exists():
        return f"no nameko Python at {python}"
    done = subprocess.run(
        [str(python), "-c", _VERSIONS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} lacks a package the nameko tests need ({last})"
    versions = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    if not versions["nameko"].startswith("2.14."):
        return f"{python} has nameko {versions['nameko']}, not 2.14"
    return None


def find_nameko_python() -> pathlib.Path:
    """Return nameko's Python; skip without one, or fail if one is required."""
    given = os.environ.get(PYTHON_VARIABLE)
    python = pathlib.Path(given or DEFAULT_PYTHON)
    problem = _problem(python)
    if problem is None:
        return python
    message = f"{problem}: make one with {RECIPE} and set {PYTHON_VARIABLE}"
    if given or env_flag(REQUIRE_VARIABLE):
        why = f"{PYTHON_VARIABLE} is set" if given else f"{REQUIRE_VARIABLE}=1"
        pytest.fail(f"{message} ({why}: the nameko tests must run)", pytrace=False)
    pytest.skip(message)


def is_nameko_source(source: str) -> bool:
    """Whether a doc example is nameko's code (it imports nameko)."""
    return re.search(r"^\s*(from|import) nameko\b", source, re.MULTILINE) is not None


def run_nameko_file(
    python: pathlib.Path, path: pathlib.Path, *pytest_args: str
) -> None:
    """Run *path* with nameko's Python, as its user would, in its folder.

    A ``test_*.py`` file runs under ``nameko test`` (*pytest_args* added); any
    other file as a script.

    Raises
    ------
    AssertionError
        It failed; with its output. URIs in the command are shown masked.
    """
    if path.name.startswith("test_"):
        command = ["-m", "nameko", "test", path.name, *NAMEKO_TEST_OPTIONS]
        command += ["-p", "no:cacheprovider", *pytest_args]
    else:
        command = [path.name]
    done = subprocess.run(
        [str(python), *command],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        shown = " ".join(masked_uri(arg) for arg in command)
        raise AssertionError(
            f"nameko's Python failed ({done.returncode}): {shown}\n"
            f"{done.stdout}{done.stderr}"
        )
