"""The ``trioevents`` command: run, dispatch, show-config, dlq; and the example shop.

The ``run`` tests start the real command in a subprocess and talk to it with
signals; they wait for log lines (with generous timeouts), never for time.
"""

from __future__ import annotations

import collections
import decimal
import importlib.util
import io
import json
import os
import pathlib
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
import uuid
from typing import IO, TYPE_CHECKING, Any

import pytest
import trio

import trioevents
from trioevents import Config, ExchangeType
from trioevents._configfile import import_yaml
from trioevents._host import transport_for_uri
from trioevents.cli import import_services, main
from trioevents.testing import worker_factory

from .support import deadletters
from .support.brokers import publish
from .support.deadletters import DLQ, fail_events, handle_all, via
from .support.tcpproxy import open_tcp_proxy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds: generous, for a loaded machine
#: The environment variables that configure the command: none leak into a test.
CONFIG_VARIABLES = [f"TRIOEVENTS_{key.upper()}" for key in Config()] + ["AMQP_URI"]


def _environ(**extra: str) -> dict[str, str]:
    """This process's environment without config variables, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _command() -> str:
    """The installed ``trioevents`` console script, next to this Python."""
    script = shutil.which("trioevents", path=str(pathlib.Path(sys.executable).parent))
    if script is None:
        pytest.fail(
            "the trioevents command is not installed next to "
            f"{sys.executable}: python -m pip install -e '.[test]'"
        )
    return script


class Process:
    """A command in a subprocess whose output lines a test can wait for."""

    def __init__(
        self, args: Sequence[str], cwd: pathlib.Path, env: dict[str, str]
    ) -> None:
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert self.popen.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.popen.stdout,), daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, text: str) -> str:
        """Wait for an output line containing *text* (or find it); return it."""
        for seen in self.lines:
            if text in seen:
                return seen
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(
                    f"no line with {text!r} in {WAIT} s; output:\n{self.output}"
                )
            if line is None:
                self._queue.put(None)
                pytest.fail(
                    f"the process ended without {text!r}; output:\n{self.output}"
                )
            self.lines.append(line)
            if text in line:
                return line

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self) -> int:
        """Wait for the process to end; return its exit status."""
        try:
            code = self.popen.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            pytest.fail(f"the process did not stop in {WAIT} s; output:\n{self.output}")
        self._reader.join(WAIT)
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def index(self, text: str) -> int:
        """The number of the first line containing *text*."""
        for number, line in enumerate(self.lines):
            if text in line:
                return number
        pytest.fail(f"no line with {text!r}; output:\n{self.output}")

    def close(self) -> None:
        """Kill the process if it still runs; release its pipe."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._reader.join(WAIT)
        assert self.popen.stdout is not None
        self.popen.stdout.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.close()


def start(
    processes: list[Process],
    args: Sequence[str],
    cwd: pathlib.Path = ROOT,
    **env: str,
) -> Process:
    process = Process(args, cwd, _environ(**env))
    processes.append(process)
    return process


# A service module for the subprocess tests: its entrypoint runs one worker as soon
# as the host starts, and the worker waits until the host is asked to stop (or,
# with forever=True, never finishes).
SERVICE_MODULE = '''
from __future__ import annotations

import logging

import trio

from trioevents import ConnectionContext, Entrypoint

say = logging.getLogger("work")


class OnStart(Entrypoint):
    """Run the method once, at start; tell it when the host is stopping."""

    def __init__(self) -> None:
        self.stopping = trio.Event()

    async def stop(self) -> None:
        self.stopping.set()

    async def run(
        self, context: ConnectionContext, *, task_status: trio.TaskStatus[None]
    ) -> None:
        task_status.started()
        await self.spawn_worker((self.stopping,))


class Worker:
    name = "worker"

    @OnStart.decorator
    async def work(self, stopping: trio.Event) -> None:
        say.info("work started")
        await stopping.wait()
        say.info("stop requested; finishing the work in flight")
        await trio.sleep({delay})
        say.info("work finished")
'''


def service_module(directory: pathlib.Path, *, delay: str = "0") -> str:
    name = f"svc_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(SERVICE_MODULE.format(delay=delay))
    return name


def _assert_in_flight_work_finished(run: Process, signalled: str, stopped: str) -> None:
    """The worker of SERVICE_MODULE finished between the signal and ``stopped``."""
    order = [
        run.index(signalled),
        run.index("stop requested; finishing the work in flight"),
        run.index("work finished"),
        run.index(stopped),
    ]
    assert order == sorted(order)


# ----------------------------------------------------------- the README command


def test_readme_command_shows_events_flowing_and_stops_on_sigterm(
    processes: list[Process],
) -> None:
    """``trioevents run examples.shop``: events flow, SIGTERM stops it cleanly."""
    shop = start(processes, [_command(), "run", "examples.shop"])
    shop.expect("serving orders, billing, notifications, web")
    shop.expect("press Ctrl-C to stop")
    shop.expect("web: dispatched checkout 1")
    shop.expect("notifications: charged 1 handled")
    shop.signal(signal.SIGTERM)
    assert shop.wait() == 0
    assert shop.index("SIGTERM: stopping gracefully") < shop.index("stopped")
    assert shop.expect("SIGTERM: stopping gracefully").endswith(
        "INFO [trioevents.host] SIGTERM: stopping gracefully"
    )  # nothing about Ctrl-C: SIGTERM is no Ctrl-C
    assert "stopping: " in shop.output
    assert "Traceback" not in shop.output


def test_run_says_loudly_that_it_serves_on_the_embedded_broker(
    processes: list[Process],
) -> None:
    shop = start(processes, [_command(), "run", "examples.shop"], AMQP_URI="amqp://x/")
    banner = shop.expect("*** EMBEDDED BROKER ***")
    shop.expect("press Ctrl-C to stop")
    shop.signal(signal.SIGTERM)
    assert shop.wait() == 0
    assert " WARNING [trioevents.cli] *** EMBEDDED BROKER *** memory:// " in banner
    assert "no other process (trioevents dispatch included) sees" in banner
    assert "--broker amqp://user:password@host/ or set TRIOEVENTS_AMQP_URI" in banner
    assert "AMQP_URI is set in the environment, but trioevents reads" in banner
    assert shop.index("EMBEDDED BROKER") < shop.index("serving orders")


def test_run_on_rabbitmq_shows_no_banner(
    processes: list[Process], tmp_path: pathlib.Path
) -> None:
    module = service_module(tmp_path)
    run = start(
        processes,
        [_command(), "run", module],
        cwd=tmp_path,
        TRIOEVENTS_AMQP_URI="amqp://guest:s3cret@127.0.0.1:1/",
        TRIOEVENTS_CONNECT_ATTEMPTS="1",
    )
    assert run.wait() == 1
    assert "EMBEDDED BROKER" not in run.output
    assert "running worker on amqp://guest:****@127.0.0.1:1/" in run.output
    assert "s3cret" not in run.output


@pytest.mark.skipif(
    importlib.util.find_spec("hypercorn") is None, reason="needs the 'http' extra"
)
def test_run_http_serves_probes_and_metrics(processes: list[Process]) -> None:
    """``run --http``: the operator endpoint answers while the services run."""
    shop = start(
        processes, [_command(), "run", "examples.shop", "--http", "127.0.0.1:0"]
    )
    line = shop.expect("operator endpoint on http://")
    shop.expect("press Ctrl-C to stop")
    found = re.search(r"operator endpoint on (http://\S+):\s", line)
    assert found is not None, line
    base = found[1]
    with urllib.request.urlopen(base + "/readyz", timeout=WAIT) as ready:
        assert (ready.status, ready.read()) == (200, b"serving\n")
    shop.expect("notifications: charged 1 handled")
    with urllib.request.urlopen(base + "/metrics", timeout=WAIT) as metrics:
        text = metrics.read().decode()
    assert 'trioevents_events_handled_total{handler="billing.charge"' in text
    shop.signal(signal.SIGTERM)
    assert shop.wait() == 0


def test_run_without_the_http_extra_says_which_to_install(
    processes: list[Process], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(HIDE_HYPERCORN)
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    shop = start(
        processes,
        [_command(), "run", "examples.shop", "--http", ":9100"],
        PYTHONPATH=pythonpath,
    )
    assert shop.wait() == 1
    assert (
        "trioevents: error: HTTP_ADDRESS needs the 'http' extra: pip install "
        "'trioevents[http]'" in shop.output
    )


#: Makes hypercorn impossible to import, as if the extra were not installed.
HIDE_HYPERCORN = """
import sys
sys.modules["hypercorn"] = None
"""


# A module that takes as long to import as the test wants: it waits for a file.
SLOW_MODULE = """
import os, pathlib, sys, time
print("importing", flush=True)
flag = pathlib.Path(os.environ["RELEASE_IMPORT"])
deadline = time.monotonic() + 60
while not flag.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
from {module} import Worker

__all__ = ["Worker"]
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_services_import_stops_cleanly(
    signum: int, processes: list[Process], tmp_path: pathlib.Path
) -> None:
    """Before the fix, a SIGTERM before trio's handler was installed exited -15."""
    slow = f"slow_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{slow}.py").write_text(
        SLOW_MODULE.format(module=service_module(tmp_path))
    )
    flag = tmp_path / "release"
    run = start(
        processes, [_command(), "run", slow], cwd=tmp_path, RELEASE_IMPORT=str(flag)
    )
    run.expect("importing")
    run.signal(signum)
    flag.touch()
    assert run.wait() == 0
    run.index("before serving started: stopping")
    assert "work started" not in run.output
    assert "Traceback" not in run.output


EMBEDDED_SCRIPT = """
import logging, sys

import trio

from trioevents import ServiceHost, serve_until_signalled
from {module} import Worker

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
host = ServiceHost([Worker], {{"SHUTDOWN_GRACE": 30}})
sys.exit(trio.run(serve_until_signalled, host))
"""


def test_an_embedded_host_stops_gracefully_on_ctrl_c(
    processes: list[Process], tmp_path: pathlib.Path
) -> None:
    """``trio.run(serve_until_signalled, host)``: no KeyboardInterrupt traceback."""
    script = tmp_path / "serve.py"
    script.write_text(
        EMBEDDED_SCRIPT.format(module=service_module(tmp_path, delay="0.2"))
    )
    run = start(processes, [sys.executable, str(script)], cwd=tmp_path)
    run.expect("work started")
    run.expect("trioevents.host: press Ctrl-C to stop")
    run.signal(signal.SIGINT)
    assert run.wait() == 0
    _assert_in_flight_work_finished(
        run,
        "Ctrl-C (SIGINT): stopping gracefully (Ctrl-C again stops at once)",
        "trioevents.host: stopped",
    )
    assert "Traceback" not in run.output
    assert "KeyboardInterrupt" not in run.output


def test_example_script_runs_the_same_services(processes: list[Process]) -> None:
    shop = start(processes, [sys.executable, str(ROOT / "examples" / "shop.py")])
    shop.expect("serving orders, billing, notifications, web")
    shop.expect("billing: order_placed 1 handled")
    shop.signal(signal.SIGINT)
    assert shop.wait() == 0
    shop.index("stopped")


# -------------------------------------------------------------------- run


def test_sigterm_lets_in_flight_work_finish(
    processes: list[Process], tmp_path: pathlib.Path
) -> None:
    module = service_module(tmp_path, delay="0.2")
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            SHUTDOWN_GRACE: ${GRACE:30}
            LOGGING:
              version: 1
              disable_existing_loggers: false
              formatters: {plain: {format: "LOG %(name)s: %(message)s"}}
              handlers:
                err: {class: logging.StreamHandler, formatter: plain, stream: ext://sys.stderr}
              root: {level: INFO, handlers: [err]}
            """
        )
    )
    run = start(
        processes, [_command(), "run", module, "--config", str(config)], cwd=tmp_path
    )
    run.expect("work started")
    run.expect("LOG trioevents.host: press Ctrl-C to stop")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    _assert_in_flight_work_finished(
        run, "SIGTERM: stopping gracefully", "LOG trioevents.host: stopped"
    )
    assert "grace 30" in run.output


def test_second_ctrl_c_stops_at_once(
    processes: list[Process], tmp_path: pathlib.Path
) -> None:
    module = service_module(tmp_path, delay="3600")
    config = tmp_path / "config.yaml"
    config.write_text("SHUTDOWN_GRACE: 3600\n")
    run = start(
        processes, [_command(), "run", module, "--config", str(config)], cwd=tmp_path
    )
    run.expect("press Ctrl-C to stop")
    run.expect("work started")
    run.signal(signal.SIGINT)
    run.expect("stop requested; finishing the work in flight")
    run.signal(signal.SIGINT)
    assert run.wait() == 130
    run.index("Ctrl-C (SIGINT): stopping at once")
    assert "work finished" not in run.output


def _run_fails(
    args: Sequence[str], cwd: pathlib.Path = ROOT, *, alone: bool = True
) -> str:
    """Run the command; check it fails with a one-line error; return that line.

    With ``alone``, nothing else was printed; otherwise the lines logged before
    the failure (the connection attempts) are allowed.
    """
    done = subprocess.run(
        [_command(), *args],
        cwd=cwd,
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 1, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 or not alone, done.stderr
    assert lines[-1].startswith("trioevents: error: "), done.stderr
    return lines[-1]


def test_bad_config_fails_in_one_line_naming_the_key(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("AMQP_URI: memory://\nmax_workers: lots\n")
    line = _run_fails(["run", "examples.shop", "--config", str(config)])
    assert "'max_workers'" in line


def test_bad_logging_config_fails_in_one_line(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "LOGGING: {version: 1, handlers: {h: {class: no.such.Handler}}}\n"
    )
    line = _run_fails(["run", "examples.shop", "--config", str(config)])
    assert "config key 'LOGGING'" in line


def test_bad_module_path_fails_in_one_line() -> None:
    line = _run_fails(["run", "examples.no_such_module"])
    assert "cannot import 'examples.no_such_module'" in line


def test_unreachable_broker_fails_in_one_line(tmp_path: pathlib.Path) -> None:
    # Until the RabbitMQ transport lands, amqp:// is refused at once; then the
    # connection to port 1 is refused (after CONNECT_ATTEMPTS attempts).
    config = tmp_path / "config.yaml"
    config.write_text("CONNECT_ATTEMPTS: 1\n")
    line = _run_fails(
        [
            "run",
            "examples.shop",
            "--config",
            str(config),
            "--broker",
            "amqp://guest:s3cret@127.0.0.1:1/",
        ],
        alone=False,
    )
    assert "s3cret" not in line


def test_python_dash_m_runs_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trioevents", "--version"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"trioevents {trioevents.__version__}"


# ---------------------------------------------------------- in-process: errors


@pytest.fixture(autouse=True)
def _keep_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` puts the current directory on sys.path; undo it after each test.

    And no config variable of this environment configures the command.
    """
    monkeypatch.setattr(sys, "path", [*sys.path])
    for variable in CONFIG_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def _error_line(capsys: pytest.CaptureFixture[str], *, alone: bool = True) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1 or not alone, lines
    assert lines[-1].startswith("trioevents: error: "), lines
    return lines[-1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("examples.shop:Nope", "module 'examples.shop' has no 'Nope'"),
        ("examples.shop:say", "'examples.shop:say' is not a class"),
        ("json", "module 'json' defines no service class"),
        (":Orders", "names no module"),
        ("examples.missing", "cannot import 'examples.missing'"),
        ("examples.shop:OrderPlaced", "is not a service class: it has no name"),
        (
            "checkout.py",
            "'checkout.py' is a file name; run takes a module: did you mean "
            "'checkout'?",
        ),
        ("./myapp/orders.py:Orders", "did you mean 'myapp.orders:Orders'?"),
        ("myapp/orders", "did you mean 'myapp.orders'?"),
    ],
)
def test_run_refuses_what_is_not_a_service(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", spec]) == 1
    assert message in _error_line(capsys)


def test_a_module_failing_at_import_is_one_line(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('no database')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", name]) == 1
    assert "RuntimeError('no database')" in _error_line(capsys)


def test_a_broker_uri_without_a_scheme_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "examples.shop", "--broker", "localhost"]) == 1
    assert "'AMQP_URI'" in _error_line(capsys)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["run"]) == 2
    assert main(["frobnicate"]) == 2
    assert "usage: trioevents" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"trioevents {trioevents.__version__}"


def test_a_module_means_the_service_classes_defined_in_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"services_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """\
            from trioevents import EventDispatcher, event_handler
            from examples.shop import Billing   # imported: not this module's

            class Second:
                name = "second"
                @event_handler("a", "b")
                async def handle(self, payload): ...

            class NotAService:
                dispatch = EventDispatcher()

            class First:
                name = "first"
                @event_handler("a", "c")
                async def handle(self, payload): ...
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    services = import_services([name, "examples.shop:Billing", f"{name}:First"])
    assert [cls.__name__ for cls in services] == ["Second", "First", "Billing"]


def test_a_package_means_the_service_classes_it_re_exports(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As nameko: ``run myapp`` finds what ``myapp/__init__.py`` imports from it."""
    name = f"myapp_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text(
        "from .orders import Orders\n"
        "from examples.shop import Billing  # another package's: not ours\n"
        "from examples.shop import Notifications\n"
        "__all__ = ['Orders', 'Notifications']\n"
    )
    (package / "orders.py").write_text(
        textwrap.dedent(
            """\
            from trioevents import event_handler

            class Orders:
                name = "orders"
                @event_handler("web", "checkout")
                async def on_checkout(self, payload): ...
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    services = import_services([name])
    assert [cls.__name__ for cls in services] == ["Orders", "Notifications"]


# ------------------------------------------------------------------ dispatch


async def _declare(uri: str, queue_name: str, source: str, event_type: str) -> None:
    async with transport_for_uri(uri).open_connection() as conn:
        await conn.declare_exchange(
            f"{source}.events", ExchangeType.TOPIC, durable=True
        )
        await conn.declare_queue(queue_name, durable=True)
        await conn.bind_queue(queue_name, f"{source}.events", event_type)


async def _drain(uri: str, queue_name: str, count: int) -> list[Any]:
    bodies: list[Any] = []
    async with transport_for_uri(uri).open_connection() as conn:
        async with conn.open_consumer(queue_name, prefetch_count=0) as consumer:
            with trio.fail_after(WAIT):
                for _ in range(count):
                    delivery = await consumer.receive()
                    assert delivery.properties.content_type == "application/json"
                    bodies.append(json.loads(delivery.body))
                    await delivery.ack()
        declared = await conn.declare_queue(queue_name, passive=True)
        assert declared.message_count == 0
    return bodies


def test_dispatch_on_the_embedded_broker_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No other process can see ``memory://``: dispatching there reaches no one."""
    assert main(["dispatch", "web", "checkout", '{"id": 1}']) == 1
    line = _error_line(capsys)
    assert "dispatch cannot reach the embedded broker memory://" in line
    assert "--broker amqp://user:password@host/" in line
    assert "TRIOEVENTS_AMQP_URI" in line
    assert capsys.readouterr().out == ""


@pytest.mark.rabbitmq
def test_dispatch_publishes_one_event(
    rabbit_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(_declare, rabbit_vhost, "q", "web", "checkout")
    code = main(["dispatch", "web", "checkout", '{"id": 1}', "--broker", rabbit_vhost])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == 'dispatched web checkout {"id": 1}\n'
    assert captured.err == ""
    assert trio.run(_drain, rabbit_vhost, "q", 1) == [{"id": 1}]


@pytest.mark.rabbitmq
def test_dispatch_reads_the_broker_from_the_environment(
    rabbit_vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trio.run(_declare, rabbit_vhost, "q", "web", "checkout")
    monkeypatch.setenv("TRIOEVENTS_AMQP_URI", rabbit_vhost)
    assert main(["dispatch", "web", "checkout", "[1]"]) == 0
    assert trio.run(_drain, rabbit_vhost, "q", 1) == [[1]]


@pytest.mark.rabbitmq
def test_dispatch_reads_one_event_per_line_from_stdin(
    rabbit_vhost: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trio.run(_declare, rabbit_vhost, "q", "web", "#")
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"id": 1}\n\n[2, 3]\n"four"\n'))
    assert main(["dispatch", "web", "checkout", "-", "--broker", rabbit_vhost]) == 0
    assert capsys.readouterr().out.splitlines() == [
        'dispatched web checkout {"id": 1}',
        "dispatched web checkout [2, 3]",
        'dispatched web checkout "four"',
    ]
    assert trio.run(_drain, rabbit_vhost, "q", 3) == [{"id": 1}, [2, 3], "four"]


@pytest.mark.rabbitmq
def test_dispatch_without_data_sends_an_empty_object(
    rabbit_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(_declare, rabbit_vhost, "q", "web", "ping")
    assert main(["dispatch", "web", "ping", "--broker", rabbit_vhost]) == 0
    assert trio.run(_drain, rabbit_vhost, "q", 1) == [{}]


def test_dispatch_refuses_invalid_json_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = "amqp://guest:guest@127.0.0.1:1/"  # never reached
    assert main(["dispatch", "web", "x", "{nope", "--broker", broker]) == 1
    assert "the event data is not valid JSON" in _error_line(capsys)


@pytest.mark.rabbitmq
def test_dispatch_stops_at_a_line_that_is_not_json(
    rabbit_vhost: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n{nope\n3\n"))
    assert main(["dispatch", "web", "x", "-", "--broker", rabbit_vhost]) == 1
    captured = capsys.readouterr()
    assert captured.out == "dispatched web x 1\n"
    assert "line 2 of standard input is not valid JSON" in captured.err
    assert "1 event(s) were dispatched before it" in captured.err


def test_dispatch_to_an_unreachable_broker_fails_in_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("CONNECT_ATTEMPTS: 1\n")
    broker = "amqp://u:pw@127.0.0.1:1/"
    code = main(["dispatch", "web", "x", "--config", str(config), "--broker", broker])
    assert code == 1
    assert ":pw@" not in _error_line(capsys, alone=False)


# --------------------------------------------------------------- show-config


def _show_config(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[str, dict[str, Any], dict[str, str], str]:
    """Run show-config; return its header, the YAML it printed, each key's source
    and what it logged."""
    assert main(["show-config", *args]) == 0
    captured = capsys.readouterr()
    header, _, body = captured.out.partition("\n")
    sources = dict(re.findall(r"^(\S+):.*  # (.+)$", body, re.MULTILINE))
    return header, import_yaml().safe_load(body), sources, captured.err


def test_show_config_prints_yaml_with_the_password_masked(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RABBIT_PASSWORD", "s3cret")
    monkeypatch.delenv("RABBIT_HOST", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(
        "AMQP_URI: amqp://guest:${RABBIT_PASSWORD}@${RABBIT_HOST:rabbit}:5672/\n"
        "max_workers: 4\n"
        "MY_APP_SETTING: 7\n"
    )
    assert main(["show-config", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out
    assert "AMQP_URI: amqp://guest:****@rabbit:5672/  # " in captured.out
    assert "\nmax_workers: 4  # " in captured.out
    assert "\nMY_APP_SETTING: 7  # " in captured.out
    assert captured.err == ""  # the application's own key: no warning


def test_show_config_lists_the_nodes_of_a_cluster_masked(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``;``-separated AMQP_URI shows as a list, in the order tried."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "AMQP_URI: amqp://a:pw-one@rabbit1:5672/;amqp://b:pw-two@rabbit2:5672/v\n"
        "FAILOVER_STRATEGY: shuffle\n"
    )
    _, shown, sources, _ = _show_config(capsys, "--config", str(config))
    assert shown["AMQP_URI"] == [
        "amqp://a:****@rabbit1:5672/",
        "amqp://b:****@rabbit2:5672/v",
    ]
    assert shown["FAILOVER_STRATEGY"] == "shuffle"
    assert sources["AMQP_URI"] == sources["FAILOVER_STRATEGY"] == str(config)


def test_show_config_masks_the_applications_secrets(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TE_DB_PASSWORD", "abc #1")
    config = tmp_path / "config.yaml"
    config.write_text(
        "DB_PASSWORD: ${TE_DB_PASSWORD}\n"
        "DB_URI: postgres://orders:${TE_DB_PASSWORD}@db/orders\n"
        "STRIPE: {api_key: sk_live_1, account: acct_2}\n"
        "MAILER: {host: smtp, credentials: [u, hunter2]}\n"
    )
    _, shown, _, err = _show_config(capsys, "--config", str(config))
    assert shown["DB_PASSWORD"] == "****"
    assert shown["DB_URI"] == "postgres://orders:****@db/orders"
    assert shown["STRIPE"] == {"api_key": "****", "account": "acct_2"}
    assert shown["MAILER"] == {"host": "smtp", "credentials": ["****", "****"]}
    assert "${TE_DB_PASSWORD} expands to text that a '#' would cut short" in err
    assert "abc" not in err  # named, not shown


def test_show_config_says_where_each_value_came_from(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--broker > TRIOEVENTS_<KEY> > --config > defaults."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "AMQP_URI: memory://file\nmax_workers: 2\nHEARTBEAT: 5\n"
        "LOGGING: {version: 1, disable_existing_loggers: false}\n"
    )
    monkeypatch.setenv("TRIOEVENTS_AMQP_URI", "memory://env")
    monkeypatch.setenv("TRIOEVENTS_MAX_WORKERS", "3")
    header, shown, sources, _ = _show_config(
        capsys, "--config", str(config), "--broker", "memory://flag"
    )
    assert header == (
        f"# effective configuration from --broker, environment, {config} "
        "(other keys: defaults); secrets masked"
    )
    assert (shown["AMQP_URI"], shown["max_workers"]) == ("memory://flag", 3)
    assert (shown["HEARTBEAT"], shown["SHUTDOWN_GRACE"]) == (5, 30)
    assert sources == {
        **dict.fromkeys(Config(), "default"),
        "AMQP_URI": "--broker",
        "max_workers": "TRIOEVENTS_MAX_WORKERS",
        "HEARTBEAT": str(config),
        "LOGGING": str(config),
    }


def test_show_config_with_only_a_flag_does_not_claim_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    header, shown, sources, _ = _show_config(capsys, "--broker", "memory://b")
    assert header == (
        "# effective configuration from --broker (other keys: defaults); secrets masked"
    )
    assert shown["AMQP_URI"] == "memory://b"
    assert sources["AMQP_URI"] == "--broker"


def test_show_config_without_a_file_shows_the_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    header, shown, sources, _ = _show_config(capsys)
    assert header == "# effective configuration from the defaults; secrets masked"
    assert shown == Config().to_mapping()
    assert set(sources.values()) == {"default"}


@pytest.mark.parametrize(
    "broker", ["guest:Secret@host/", "amqp//guest:Secret@host/", "amqp:/guest:Secret@h"]
)
def test_a_mistyped_broker_is_not_echoed_with_its_password(
    broker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show-config", "--broker", broker]) == 1
    line = _error_line(capsys)
    assert "config key 'AMQP_URI'" in line
    assert "Secret" not in line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_workers: lots\n", "config key 'max_workers'"),
        ("- a list\n", "must be a YAML mapping"),
        ("a: 1\nb: [2,\n", ", line 3, column 1: not valid YAML"),
        (
            "max_workers: lots\nHEARTBEAT: -1\n",
            "2 config errors: config key 'max_workers': expected an integer >= 1, got "
            "'lots' (str); config key 'HEARTBEAT'",
        ),
    ],
)
def test_show_config_reports_a_bad_config_in_one_line(
    text: str,
    message: str,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    assert main(["show-config", "--config", str(config)]) == 1
    assert message in _error_line(capsys)


def test_a_missing_config_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show-config", "--config", "/nonexistent/config.yaml"]) == 1
    assert "cannot read config file" in _error_line(capsys)


# -------------------------------------------------------------------- dlq


def test_dlq_on_the_embedded_broker_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No other process can reach ``memory://``: the command says so."""
    assert main(["dlq", "list", DLQ]) == 1
    line = _error_line(capsys)
    assert "dlq cannot reach the embedded broker memory://" in line
    assert "--broker amqp://user:password@host/" in line
    assert "trioevents.open_dead_letter_queue works on memory://" in line


def test_dlq_refuses_a_queue_that_is_not_a_dlq_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = "amqp://guest:guest@127.0.0.1:1/"  # never reached
    assert main(["dlq", "purge", "orders", "--yes", "--broker", broker]) == 1
    assert "'orders' is not a dead-letter queue" in _error_line(capsys)


def test_dlq_refuses_a_negative_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "list", DLQ, "--limit", "-1"]) == 2
    assert "expected a number >= 0, got '-1'" in capsys.readouterr().err


def _failed_orders(
    uri: str, capsys: pytest.CaptureFixture[str], ids: Sequence[int] = (1, 2)
) -> None:
    """Dead-letter the orders *ids* (as the docs' billing service does) on *uri*."""
    deadletters.reset()
    trio.run(fail_events, uri, ids)
    capsys.readouterr()  # what the failing handler logged


@pytest.mark.rabbitmq
def test_dlq_on_a_missing_queue_is_one_line(
    rabbit_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "list", "nope.dlq", "--broker", rabbit_vhost]) == 1
    line = _error_line(capsys)
    assert "404 NOT_FOUND - no queue 'nope.dlq'" in line
    assert "none was yet, or the name is wrong" in line


@pytest.mark.rabbitmq
def test_dlq_list_shows_the_failure_headers(
    rabbit_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _failed_orders(rabbit_vhost, capsys, [1, 2, 3])
    assert main(["dlq", "list", DLQ, "--limit", "2", "--broker", rabbit_vhost]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines() == [
        f"{DLQ}: 3 messages",
        "(showing the first 2; --limit N shows more)",
        "",
        "[1] message id order-1",
        "    error: RuntimeError: card declined for order 1",
        "    attempts: 3",
        "    original exchange: orders.events",
        "    original routing key: order_placed",
        '    body: {"id": 1}',
        "",
        "[2] message id order-2",
        "    error: RuntimeError: card declined for order 2",
        "    attempts: 3",
        "    original exchange: orders.events",
        "    original routing key: order_placed",
        '    body: {"id": 2}',
    ]
    assert main(["dlq", "list", DLQ, "--json", "--broker", rabbit_vhost]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["message_count"] == 3
    assert [m["message_id"] for m in listing["messages"]] == [
        "order-1",
        "order-2",
        "order-3",
    ]
    assert [m["redelivered"] for m in listing["messages"]] == [True, True, False]
    first = listing["messages"][0]
    assert first["body"] == {"id": 1}
    assert first["original_exchange"] == "orders.events"
    assert "RuntimeError: card declined for order 1" in first["traceback"]


@pytest.mark.rabbitmq
def test_dlq_replay_puts_the_events_back_where_the_handler_handles_them(
    rabbit_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _failed_orders(rabbit_vhost, capsys)
    assert main(["dlq", "replay", DLQ, "--broker", rabbit_vhost]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "replayed [1] message id order-1 to exchange 'orders.events', routing key "
        "'order_placed'",
        "replayed [2] message id order-2 to exchange 'orders.events', routing key "
        "'order_placed'",
        f"replayed 2 messages, skipped 0; 0 messages left in {DLQ}",
    ]
    assert trio.run(handle_all, rabbit_vhost) == [1, 2]


@pytest.mark.rabbitmq
def test_dlq_replay_names_what_it_skipped_and_exits_1(
    rabbit_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(_declare, rabbit_vhost, DLQ.removesuffix(".dlq"), "orders", "#")
    trio.run(_declare, rabbit_vhost, DLQ, "orders", "never")
    properties = trioevents.Properties(message_id="m-1")
    trio.run(publish, rabbit_vhost, "", DLQ, b"{}", properties)
    code = main(["dlq", "replay", DLQ, "--to-handler-queue", "--broker", rabbit_vhost])
    assert code == 0  # to the handler queue: the origin headers are not needed
    trio.run(publish, rabbit_vhost, "", DLQ, b"{}", properties)
    capsys.readouterr()
    assert main(["dlq", "replay", DLQ, "--broker", rabbit_vhost]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "skipped [1] message id m-1: no x-trioevents-original-exchange or "
        "x-trioevents-original-routing-key header: nowhere to replay it to; left "
        "in the queue",
        f"replayed 0 messages, skipped 1; 1 message left in {DLQ}",
    ]
    assert captured.err == (
        f"trioevents: error: 1 message could not be replayed and stay in {DLQ}\n"
    )


@pytest.mark.rabbitmq
def test_dlq_purge_refuses_without_yes_and_says_how_many(
    rabbit_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _failed_orders(rabbit_vhost, capsys)
    assert main(["dlq", "purge", DLQ, "--broker", rabbit_vhost]) == 1
    assert _error_line(capsys) == (
        f"trioevents: error: purge would drop 2 messages from {DLQ!r} for good; "
        "pass --yes to drop them"
    )
    assert main(["dlq", "purge", DLQ, "--yes", "--broker", rabbit_vhost]) == 0
    assert capsys.readouterr().out == f"purged 2 messages from {DLQ}\n"
    assert main(["dlq", "list", DLQ, "--broker", rabbit_vhost]) == 0
    assert capsys.readouterr().out == f"{DLQ}: 0 messages\n"


class _Lines:
    """The lines a subprocess writes, read from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.lines: list[str] = []

    async def until(self, predicate: Callable[[list[str]], bool]) -> list[str]:
        """Read lines until *predicate* holds for them (or the stream ends)."""
        with trio.fail_after(WAIT):
            while not predicate(self.lines):
                chunk = await self._stream.receive_some()
                if not chunk:
                    break
                self._buffer += chunk
                *complete, self._buffer = self._buffer.split(b"\n")
                self.lines.extend(line.decode() for line in complete)
        return self.lines


def _replayed(lines: list[str]) -> int:
    return sum(line.startswith("replayed [") for line in lines)


@pytest.mark.rabbitmq
async def test_a_dlq_replay_cut_half_way_then_run_again_loses_nothing(
    rabbit_vhost: str,
) -> None:
    """The connection of ``dlq replay`` is cut after it printed 5 replays.

    The command fails in one line; a second run replays what was not acked.
    Every event is handled, none twice but the one whose copy was in flight.
    """
    deadletters.reset()
    ids = list(range(1, 21))
    await fail_events(rabbit_vhost, ids)
    command = [_command(), "dlq", "replay", DLQ, "--broker"]
    port = urllib.parse.urlsplit(rabbit_vhost).port or 5672
    async with open_tcp_proxy(port) as proxy:
        process = await trio.lowlevel.open_process(
            [*command, via(proxy.port, rabbit_vhost)],
            cwd=ROOT,
            env=_environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        try:
            output = _Lines(process.stdout)
            await output.until(lambda lines: _replayed(lines) >= 5)
            assert proxy.cut() == 1
            await output.until(lambda lines: False)  # to the end
            with trio.fail_after(WAIT):
                assert await process.wait() == 1
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.stdout.aclose()
    first = output.lines
    assert first[-1].startswith("trioevents: error: "), first
    assert 5 <= _replayed(first) < len(ids)
    second = await trio.run_process(
        [*command, rabbit_vhost],
        cwd=ROOT,
        env=_environ(),
        capture_stdout=True,
        capture_stderr=True,
    )
    last = second.stdout.decode().splitlines()[-1]
    assert last.endswith(f"skipped 0; 0 messages left in {DLQ}"), last
    counts = collections.Counter(await handle_all(rabbit_vhost))
    assert set(counts) == set(ids)
    assert sum(counts.values()) - len(ids) <= 1
    assert _replayed(first) + _replayed(second.stdout.decode().splitlines()) == (
        sum(counts.values())
    )


# ------------------------------------------------------- docs/cli.rst transcripts


def _console_transcripts(
    path: pathlib.Path,
) -> list[tuple[int, str, list[str], int | None]]:
    """Each ``$ command`` of the page's ``console`` blocks.

    Its line, the command, what it prints, and the exit status a following
    ``$ echo $?`` shows (or ``None``).
    """
    transcripts: list[tuple[int, str, list[str], int | None]] = []
    lines = path.read_text().splitlines()
    number = 0
    while number < len(lines):
        if lines[number].strip() != ".. code-block:: console":
            number += 1
            continue
        number += 1
        while number < len(lines) and (
            not lines[number].strip() or lines[number].startswith("    ")
        ):
            text = lines[number][4:]
            number += 1
            if text == "$ echo $?":
                line, command, output, _ = transcripts[-1]
                transcripts[-1] = (line, command, output, int(lines[number][4:]))
                number += 1
            elif text.startswith("$ "):
                transcripts.append((number, text[2:], [], None))
            elif text:
                transcripts[-1][2].append(text)
    return transcripts


def _matches(expected: list[str], actual: list[str]) -> bool:
    """Whether *actual* reads as *expected*, where a ``...`` line stands for any."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(_matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return (
        bool(actual) and actual[0] == expected[0] and _matches(expected[1:], actual[1:])
    )


#: The broker the page's RabbitMQ transcripts name; the test gives them a vhost.
PAGE_BROKER = "amqp://guest:guest@localhost/"
_TRANSCRIPTS = _console_transcripts(ROOT / "docs" / "cli.rst")
#: The transcripts that run on their own, without a broker.
CLI_TRANSCRIPTS = [t for t in _TRANSCRIPTS if PAGE_BROKER not in t[1]]
#: The dead-letter transcripts: they run in page order, on dead letters made first.
DLQ_TRANSCRIPTS = [t for t in _TRANSCRIPTS if PAGE_BROKER in t[1]]


def test_the_cli_page_has_transcripts() -> None:
    assert len(CLI_TRANSCRIPTS) >= 5
    assert len(DLQ_TRANSCRIPTS) >= 5


def _run_transcript(
    command: str, broker: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a ``$ trioevents ...`` line of the page (on *broker*, if given)."""
    if broker is not None:
        command = command.replace(PAGE_BROKER, broker)
    words = shlex.split(command)
    env: dict[str, str] = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == "trioevents", command
    return subprocess.run(
        [_command(), *words[1:]],
        cwd=ROOT,
        env=_environ(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=WAIT,
        check=False,
    )


def _check_transcript(
    done: subprocess.CompletedProcess[str],
    output: list[str],
    status: int | None,
    *,
    blank_lines: bool = True,
) -> None:
    actual = done.stdout.splitlines()
    if not blank_lines:  # the page's transcripts cannot show them
        actual = [line for line in actual if line]
    assert _matches(output, actual), "\n".join(
        ["the page says:", *output, "the command prints:", *actual]
    )
    if status is not None:
        assert done.returncode == status


@pytest.mark.parametrize(
    ("command", "output", "status"),
    [transcript[1:] for transcript in CLI_TRANSCRIPTS],
    ids=[f"cli.rst:{transcript[0]}" for transcript in CLI_TRANSCRIPTS],
)
def test_the_cli_page_quotes_what_the_command_prints(
    command: str, output: list[str], status: int | None
) -> None:
    """Every ``$ trioevents ...`` of docs/cli.rst prints what the page says."""
    _check_transcript(_run_transcript(command), output, status)


@pytest.mark.rabbitmq
def test_the_cli_page_quotes_what_dlq_prints(rabbit_vhost: str) -> None:
    """The page's dead-letter transcripts, in order, on the docs' failed orders."""
    deadletters.reset()
    trio.run(fail_events, rabbit_vhost, [1, 2])
    for line, command, output, status in DLQ_TRANSCRIPTS:
        done = _run_transcript(command, rabbit_vhost)
        try:
            _check_transcript(done, output, status, blank_lines=False)
        except AssertionError as exc:
            raise AssertionError(f"cli.rst:{line}: {exc}") from None
    assert trio.run(handle_all, rabbit_vhost) == [1]  # replayed: order 1


# ------------------------------------------------------- the example's services


async def test_example_orders_turns_a_checkout_into_an_order() -> None:
    from examples.shop import OrderPlaced, Orders

    orders = worker_factory(Orders)
    await orders.on_checkout({"id": 1, "customer": "c", "prices": ["9.99", "5.01"]})
    orders.dispatch.assert_awaited_once_with(  # type: ignore[attr-defined] # a mock
        "order_placed",
        OrderPlaced(id=1, customer="c", total=decimal.Decimal("15.00")),
    )
