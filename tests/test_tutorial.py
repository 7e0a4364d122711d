"""docs/tutorial.rst, followed literally: its files written out, its commands run.

Each code block of the tutorial names its file (``:caption: checkout.py``); the
``tutorial`` fixture writes them into a directory of their own, and the tests
run the tutorial's console commands there as its reader would, checking the
output it shows (timestamps, durations and runs of spaces aside). Commands that
name the local RabbitMQ run on a fresh vhost instead.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import pathlib
import queue
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Final

import attrs
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from trioevents.testing import RabbitAdmin

ROOT: Final = pathlib.Path(__file__).resolve().parent.parent
TUTORIAL: Final = (ROOT / "docs" / "tutorial.rst").read_text()
#: How the tutorial names the RabbitMQ on the reader's machine, and shows it.
LOCAL_RABBITMQ: Final = "amqp://guest:guest@localhost:5672/"
LOCAL_RABBITMQ_SHOWN: Final = "amqp://guest:****@localhost:5672/"
WAIT: Final = 60.0  # seconds: generous, for a loaded machine


# ---------------------------------------------------------------- the page, parsed


@attrs.frozen
class Block:
    """A ``code-block`` of the page: its language, its caption, its text."""

    language: str
    caption: str
    text: str


@attrs.frozen
class Command:
    """A console command of the page (``$ ...``) and the output shown after it."""

    line: str
    output: tuple[str, ...]


def code_blocks(rst: str) -> list[Block]:
    lines = rst.splitlines()
    found = []
    index = 0
    while index < len(lines):
        directive = re.fullmatch(r"\.\. code-block:: (\S+)", lines[index])
        index += 1
        if directive is None:
            continue
        options = {}
        while index < len(lines) and (
            option := re.fullmatch(r"\s+:(\w+): (.*)", lines[index])
        ):
            options[option[1]] = option[2]
            index += 1
        body = []
        while index < len(lines) and (
            not lines[index].strip() or lines[index].startswith("    ")
        ):
            body.append(lines[index])
            index += 1
        text = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        found.append(Block(directive[1], options.get("caption", ""), text))
    return found


def literal_block_after(rst: str, paragraph_end: str) -> list[str]:
    """The lines of the ``::`` literal block that follows *paragraph_end*."""
    after = rst.split(paragraph_end, 1)[1].splitlines()[1:]
    lines = []
    for line in after:
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line.strip())
    return [line for line in lines if line]


def console_commands(rst: str) -> list[Command]:
    commands: list[Command] = []
    for block in code_blocks(rst):
        if block.language != "console":
            continue
        text = block.text.replace(" \\\n", " ")  # continued lines
        for chunk in re.split(r"^\$ ", text, flags=re.MULTILINE)[1:]:
            line, *output = chunk.rstrip("\n").split("\n")
            commands.append(Command(" ".join(line.split()), tuple(output)))
    return commands


def command(prefix: str) -> Command:
    """The one command of the page that is *prefix*, or else starts with it."""
    commands = console_commands(TUTORIAL)
    found = [c for c in commands if c.line == prefix] or [
        c for c in commands if c.line.startswith(prefix)
    ]
    assert len(found) == 1, (prefix, found)
    return found[0]


# -------------------------------------------------------------- running commands


def environment() -> dict[str, str]:
    """The reader's environment, with trioevents from the tree under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    env["MYPYPATH"] = str(ROOT)  # mypy too: not an installed copy elsewhere
    return env


def argv(line: str, uri: str = LOCAL_RABBITMQ) -> list[str]:
    """The command *line* as this test runs it: on *uri*, from this venv."""
    words = shlex.split(line.replace(LOCAL_RABBITMQ, uri))
    program, args = words[0], words[1:]
    if program in ("python", "mypy"):
        prefix = [sys.executable] + (["-m", "mypy"] if program == "mypy" else [])
        return [*prefix, *args]
    if program == "trioevents":
        script = pathlib.Path(sys.executable).with_name("trioevents")
        return [str(script) if script.exists() else sys.executable, *args]
    raise AssertionError(f"the test does not know how to run {program!r}")


def run(line: str, cwd: pathlib.Path, uri: str = LOCAL_RABBITMQ) -> list[str]:
    done = subprocess.run(
        argv(line, uri),
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"$ {line}\n{done.stdout}{done.stderr}"
    return done.stdout.splitlines()


def pattern(shown: str) -> str:
    """An fnmatch pattern for a line the page shows: times and spacing vary."""
    escaped = glob.escape(shown.replace(LOCAL_RABBITMQ_SHOWN, "\0"))
    escaped = re.sub(r"^\d\d:\d\d:\d\d", "*", escaped)  # log timestamps
    escaped = re.sub(r"\d+\.\d+s\b", "*s", escaped)  # pytest's duration
    escaped = re.sub(r" {2,}", "*", escaped)  # pytest pads to the terminal
    return escaped.replace("\0", "*")


def assert_shown(shown: Iterable[str], actual: Sequence[str]) -> None:
    """Each line the page shows matches an actual line, in order (``...``: any)."""
    position = 0
    for line in shown:
        if line.strip() == "...":
            continue
        for index in range(position, len(actual)):
            if fnmatch.fnmatchcase(actual[index], pattern(line)):
                position = index + 1
                break
        else:
            raise AssertionError(f"{line!r} not in the output:\n" + "\n".join(actual))


@pytest.fixture
def tutorial(tmp_path: pathlib.Path) -> pathlib.Path:
    """A directory with every file of the tutorial, as its reader saved them."""
    for block in code_blocks(TUTORIAL):
        if block.caption:
            (tmp_path / block.caption).write_text(block.text)
    return tmp_path


# ------------------------------------------------------------------------- tests


def test_every_code_block_names_its_file() -> None:
    files = [b for b in code_blocks(TUTORIAL) if b.language not in ("console",)]
    assert files
    for block in files:
        assert re.fullmatch(r"[\w.]+\.(py|toml)", block.caption), block
    assert sorted(b.caption for b in files) == [
        "checkout.py",
        "demo.py",
        "pyproject.toml",
        "test_checkout.py",
    ]


def test_it_installs_from_a_checkout() -> None:
    """trioevents is not on PyPI: the install command names a checkout."""
    install = command("python -m pip install -e")
    assert install.line == "python -m pip install -e path/to/trioevents"
    assert "pip install trioevents" not in TUTORIAL


def test_the_demo_runs_on_the_embedded_broker(tutorial: pathlib.Path) -> None:
    demo = command("python demo.py")
    assert demo.line == "python demo.py"
    assert_shown(demo.output, run(demo.line, tutorial))


def test_importing_the_services_runs_nothing(tutorial: pathlib.Path) -> None:
    assert run("python -c 'import checkout, demo'", tutorial) == []


@pytest.mark.rabbitmq
def test_the_demo_runs_on_rabbitmq_and_leaves_the_queues_it_says(
    tutorial: pathlib.Path, rabbit_vhost: str, rabbit_admin: RabbitAdmin
) -> None:
    demo = command(f"python demo.py {LOCAL_RABBITMQ}")
    assert_shown(demo.output, run(demo.line, tutorial, rabbit_vhost))
    vhost = urllib.parse.urlsplit(rabbit_vhost).path[1:]
    queues = {q["name"] for q in rabbit_admin.request("GET", f"queues/{vhost}")}
    removed = {
        c.line.split()[-1]
        for c in console_commands(TUTORIAL)
        if c.line.startswith("rabbitmqctl delete_queue ")
    }
    assert queues == removed


@pytest.mark.rabbitmq
def test_trioevents_run_serves_the_services_until_ctrl_c(
    tutorial: pathlib.Path, rabbit_vhost: str
) -> None:
    serve = command("trioevents run checkout")
    dispatch = command("trioevents dispatch web checkout")
    logged = literal_block_after(TUTORIAL, "and the services log::")
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + WAIT
        while not any(text in line for line in seen):
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))

    with subprocess.Popen(
        argv(serve.line, rabbit_vhost),
        cwd=tutorial,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line.rstrip())

        threading.Thread(target=read, daemon=True).start()
        try:
            wait_for("press Ctrl-C to stop")
            assert_shown(dispatch.output, run(dispatch.line, tutorial, rabbit_vhost))
            wait_for("charging ada")
            wait_for("placed order 1")
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=WAIT) == 0, "\n".join(seen)
    assert_shown(serve.output, seen)
    for line in logged:  # in either order (the page says why)
        assert_shown([line], seen)


def test_the_tutorial_tests_pass(tutorial: pathlib.Path) -> None:
    tests = command("python -m pytest")
    assert_shown(tests.output, run(tests.line, tutorial))


def test_the_tutorial_code_passes_mypy_strict(tutorial: pathlib.Path) -> None:
    mypy = command("mypy --strict")
    assert_shown(mypy.output, run(mypy.line, tutorial))
