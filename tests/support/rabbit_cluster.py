"""A throwaway RabbitMQ cluster beside the default broker, for the cluster tests.

:class:`RabbitCluster` starts nodes ``t1``, ``t2``, ... (``t1-<token>@localhost``:
a token of their own, so that two test sessions on one machine never meet) from
the package's own scripts (``.../rabbitmq_server-<version>/sbin``, not the
wrappers on ``PATH``, which switch to the ``rabbitmq`` user and use the default
node's files), clusters them (``stop_app``, ``join_cluster <t1>``,
``start_app``) and removes every trace of them at the end.

Each node has its own ports (free ones, picked at start), data, logs, pid file,
config file, an empty plugin list and an empty ``rabbitmq-env.conf``; the
nodes share a private ``HOME`` whose fresh ``.erlang.cookie`` no other node
has, so nothing here can reach the default node (``rabbit@...`` on port 5672)
or its files, and nothing ever stops it. Each node runs in a process group of
its own: :meth:`RabbitCluster.close` ends those groups and nothing else.

Time and memory (RabbitMQ 3.10 on two cores): a node boots in ~6 s and holds
~140 MiB; three, clustered, are ready in ~30 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: Where the rabbitmq-server package keeps its own scripts.
SBIN_GLOB: Final = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"
#: Overrides the directory of the scripts.
SBIN_VARIABLE: Final = "TRIOEVENTS_RABBITMQ_SBIN"
#: How long a node may take to boot (or to come back) on a busy machine.
BOOT_TIMEOUT: Final = 120.0
#: How long a rabbitmqctl call may take.
CTL_TIMEOUT: Final = 120.0
#: How long a node may take to stop gracefully before it is killed.
STOP_TIMEOUT: Final = 30.0


class ClusterError(Exception):
    """The throwaway cluster could not be started or driven."""


def find_sbin() -> pathlib.Path | None:
    """The directory of ``rabbitmq-server`` and ``rabbitmqctl``, if installed."""
    given = os.environ.get(SBIN_VARIABLE)
    candidates = [pathlib.Path(given)] if given else []
    candidates += sorted(pathlib.Path("/").glob(SBIN_GLOB.lstrip("/")), reverse=True)
    for candidate in candidates:
        if (candidate / "rabbitmq-server").is_file() and (
            candidate / "rabbitmqctl"
        ).is_file():
            return candidate
    return None


def free_ports(count: int) -> list[int]:
    """*count* distinct TCP ports free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return ports


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@attrs.define(eq=False)
class Node:
    """One node of the throwaway cluster."""

    #: ``t1``, ``t2``, ...: how reports name the node.
    name: str
    #: The Erlang node name, unique to this cluster: ``t1-<token>@localhost``.
    nodename: str
    port: int
    dist_port: int
    base: pathlib.Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> pathlib.Path:
        return self.base / "pid"

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, as the client logs name the node."""
        return f"127.0.0.1:{self.port}"

    def uri(self, virtual_host: str = "/") -> str:
        path = urllib.parse.quote(virtual_host, safe="")
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{path}"

    def beam_pid(self) -> int | None:
        """The process id of the node's Erlang VM while it runs, else ``None``.

        Read from the node's pid file, and only if that process is in the
        process group this node was started in (a stale pid may be anyone's).
        """
        if self.process is None:
            return None
        try:
            pid = int(self.pid_file.read_text().strip())
            if os.getpgid(pid) != self.process.pid:
                return None
        except (OSError, ValueError):
            return None
        return pid

    def rss_mib(self) -> float:
        """The Erlang VM's resident memory in MiB (0 when it is not running)."""
        pid = self.beam_pid()
        try:
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
        except (OSError, TypeError):
            return 0.0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@attrs.define(eq=False)
class RabbitCluster:
    """Nodes ``t1``, ``t2``, ... of a throwaway cluster under *root*.

    Build it with :meth:`start`; always :meth:`close` it.
    """

    root: pathlib.Path
    sbin: pathlib.Path
    nodes: list[Node] = attrs.Factory(list)
    #: Seconds :meth:`start` took, nodes booted and clustered.
    start_seconds: float = 0.0

    @classmethod
    def start(
        cls, root: pathlib.Path, sbin: pathlib.Path, *, size: int = 3
    ) -> RabbitCluster:
        """Boot *size* nodes and cluster them; remove everything if that fails."""
        began = time.monotonic()
        cluster = cls(root, sbin)
        try:
            home = root / "home"
            home.mkdir(parents=True)
            cookie = home / ".erlang.cookie"
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)
            ports = free_ports(2 * size)
            token = secrets.token_hex(3)
            for number in range(size):
                node = Node(
                    f"t{number + 1}",
                    nodename=f"t{number + 1}-{token}@localhost",
                    port=ports[2 * number],
                    dist_port=ports[2 * number + 1],
                    base=root / f"t{number + 1}",
                )
                cluster._write_files(node)
                cluster.nodes.append(node)
            for node in cluster.nodes:
                cluster.boot(node)
            for node in cluster.nodes:
                cluster.wait_up(node)
            seed, *others = cluster.nodes
            with ThreadPoolExecutor(len(others) or 1) as pool:
                list(pool.map(lambda node: cluster._join(node, seed), others))
            cluster.check_members()
        except BaseException:
            cluster.close()
            raise
        cluster.start_seconds = time.monotonic() - began
        return cluster

    # -- files and environment

    def _write_files(self, node: Node) -> None:
        node.base.mkdir()
        (node.base / "enabled_plugins").write_text("[].\n")
        (node.base / "rabbitmq-env.conf").write_text("")
        (node.base / "rabbitmq.conf").write_text(
            "loopback_users.guest = true\nlog.console = false\nlog.file.level = info\n"
        )

    def env(self, node: Node) -> dict[str, str]:
        """The environment of *node*'s server and of the CLI calls on it."""
        base = node.base
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
        return {
            **{name: os.environ[name] for name in keep if name in os.environ},
            "HOME": str(self.root / "home"),
            "RABBITMQ_NODENAME": node.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-kernel inet_dist_use_interface {127,0,0,1}"
            ),
        }

    # -- driving nodes

    def boot(self, node: Node) -> None:
        """Start *node*'s server (in a process group of its own); don't wait."""
        node.pid_file.unlink(missing_ok=True)
        output = (node.base / "server.out").open("ab")
        with output:
            node.process = subprocess.Popen(
                [str(self.sbin / "rabbitmq-server")],
                env=self.env(node),
                cwd=node.base,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_up(self, node: Node, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until *node* takes AMQP connections.

        Raises
        ------
        ClusterError
            Its server exited, or it took longer than *timeout*.
        """
        deadline = time.monotonic() + timeout
        while not port_open(node.port):
            if not node.running:
                raise ClusterError(f"{node.nodename} exited: {self._tail(node)}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{node.nodename} did not open port {node.port} within "
                    f"{timeout} s: {self._tail(node)}"
                )
            time.sleep(0.2)

    def ctl(self, node: Node, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """Run ``rabbitmqctl -n <node> ARGS``; return its output."""
        done = subprocess.run(
            [str(self.sbin / "rabbitmqctl"), "-n", node.nodename, *args],
            env=self.env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(
                f"rabbitmqctl -n {node.nodename} {' '.join(args)} failed "
                f"({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def _join(self, node: Node, seed: Node) -> None:
        self.ctl(node, "stop_app")
        self.ctl(node, "join_cluster", seed.nodename)
        self.ctl(node, "start_app")
        self.wait_up(node)

    def check_members(self) -> None:
        """Check that every node runs, clustered with the others.

        Raises
        ------
        ClusterError
            A node is missing from the running nodes.
        """
        status = json.loads(
            self.ctl(self.nodes[0], "cluster_status", "--formatter", "json")
        )
        running = set(status.get("running_nodes", []))
        expected = {node.nodename for node in self.nodes}
        if running != expected:
            raise ClusterError(
                f"running nodes {sorted(running)}, not {sorted(expected)}"
            )

    def kill(self, node: Node) -> None:
        """SIGKILL *node*'s Erlang VM, as a crash would; wait until it is gone."""
        pid = node.beam_pid()
        if pid is None:
            raise ClusterError(f"{node.nodename} is not running")
        os.kill(pid, signal.SIGKILL)
        if node.process is not None:
            node.process.wait(timeout=STOP_TIMEOUT)

    def revive(self, node: Node) -> None:
        """Boot *node* again (it rejoins the cluster) and wait until it serves."""
        self.boot(node)
        self.wait_up(node)

    def ensure_running(self) -> None:
        """Bring back every node a test left dead or stopped; wait until all serve."""
        dead = [node for node in self.nodes if not node.running]
        for node in dead:
            self.boot(node)
        for node in self.nodes:
            if node not in dead and not port_open(node.port):
                self.ctl(node, "start_app")
            self.wait_up(node)
        if dead:
            self.check_members()

    def stop_app(self, node: Node) -> None:
        """Stop the RabbitMQ application of *node* (its VM keeps running)."""
        self.ctl(node, "stop_app")

    def start_app(self, node: Node) -> None:
        """Start the RabbitMQ application of *node* again; wait until it serves."""
        self.ctl(node, "start_app")
        self.wait_up(node)

    def leader(self, queue: str, virtual_host: str = "/") -> Node:
        """The node holding the leader of quorum queue *queue*.

        Asks a node that runs, with ``rabbitmqctl list_queues name leader``.
        """
        asked = next(node for node in self.nodes if node.running)
        rows = json.loads(
            self.ctl(
                asked,
                "list_queues",
                "--quiet",
                "-p",
                virtual_host,
                "name",
                "leader",
                "--formatter",
                "json",
            )
        )
        for row in rows:
            if row["name"] == queue:
                return self.node_named(row["leader"])
        raise ClusterError(f"no queue {queue!r} in {virtual_host!r}: {rows}")

    def add_vhost(self, name: str) -> None:
        """Make virtual host *name*, open to ``guest``."""
        node = next(node for node in self.nodes if node.running)
        self.ctl(node, "add_vhost", name)
        self.ctl(node, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")

    def delete_vhost(self, name: str) -> None:
        node = next(node for node in self.nodes if node.running)
        self.ctl(node, "delete_vhost", name)

    def node_named(self, nodename: str) -> Node:
        return next(node for node in self.nodes if node.nodename == nodename)

    def node_at(self, address: str) -> Node:
        """The node whose AMQP port *address* (``host:port``) names."""
        port = int(address.rpartition(":")[2])
        return next(node for node in self.nodes if node.port == port)

    def uri(self, nodes: Iterable[Node] | None = None, virtual_host: str = "/") -> str:
        """kombu's failover URI over *nodes* (default: every node, in order)."""
        chosen: Sequence[Node] = list(nodes) if nodes is not None else self.nodes
        return ";".join(node.uri(virtual_host) for node in chosen)

    def memory_mib(self) -> list[float]:
        return [round(node.rss_mib()) for node in self.nodes]

    # -- the end

    def close(self) -> None:
        """Stop every node (gracefully, then killed) and remove its files."""
        running = [node for node in self.nodes if node.process is not None]
        for node in running:
            self._signal_group(node, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in running:
            assert node.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # The wrapper waited for its VM; whatever is left of the group goes.
            self._signal_group(node, signal.SIGKILL)
            node.process.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _signal_group(node: Node, signum: int) -> None:
        """Signal the process group *node* was started in (its wrapper, its VM)."""
        assert node.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(node.process.pid, signum)

    @staticmethod
    def _tail(node: Node, lines: int = 15) -> str:
        texts = []
        for path in (
            node.base / "server.out",
            node.base / "log" / f"{node.nodename}.log",
        ):
            with contextlib.suppress(OSError):
                texts.append("\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(texts) or "(no output)"
