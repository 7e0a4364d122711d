"""Shared helpers of the benchmark suite: machine facts, statistics, memory, brokers.

Every other module of the suite imports this one; it imports nothing of theirs.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import urllib.parse
import uuid
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final

import trio

from trioevents import MemoryTransport, Properties, abc
from trioevents._memory import drop_broker
from trioevents.amqp import AmqpTransport

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The payload every scenario sends: what a small real event looks like on the wire.
BODY: Final = b'{"id": 1, "sku": "A-1001", "quantity": 2, "total": "19.98"}'
#: nameko's message properties (what ``dispatch`` publishes: persistent JSON).
PROPERTIES: Final = Properties(
    content_type="application/json",
    content_encoding="utf-8",
    delivery_mode=2,
    priority=0,
)

PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
MIB: Final = 1024 * 1024


# --------------------------------------------------------------------------- memory


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB.

    On Linux that is ``VmHWM`` of ``/proc/self/status``: the high-water mark of
    this program's own memory. ``ru_maxrss`` (``resource.getrusage``) is the
    fallback elsewhere; on Linux it is no good in a child process, because it
    also counts the parent's memory at the time of the fork (the kernel keeps
    the larger of the pre-exec and post-exec peaks).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return maxrss / MIB if sys.platform == "darwin" else maxrss / 1024


def current_rss_mib() -> float:
    """Return this process's current resident set size in MiB (``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except OSError:  # not Linux: the peak is the best we have
        return peak_rss_mib()
    return resident_pages * PAGE_SIZE / MIB


def broker_pid(uri: str) -> int | None:
    """Return the pid of the local RabbitMQ (``beam.smp``) *uri* points at, if any.

    Only for a broker on this machine (``localhost``, ``127.0.0.1`` or ``::1``)
    whose process this user can see; ``None`` otherwise.
    """
    host = urllib.parse.urlsplit(uri).hostname or ""
    if not uri.startswith("amqp") or host not in ("localhost", "127.0.0.1", "::1"):
        return None
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="utf-8") as comm:
                if comm.read().strip() == "beam.smp":
                    return int(entry)
        except OSError:
            continue
    return None


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process *pid* used so far."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # utime and stime are the 14th and 15th fields (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --------------------------------------------------------------------------- statistics


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Return ``{"min", "median", "max"}`` of *values*."""
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Return the *fraction* quantile (0..1) of *sorted_values*, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * fraction // 1))  # ceil, at least 1
    return sorted_values[int(rank) - 1]


# --------------------------------------------------------------------------- brokers


def memory_uri() -> str:
    """Return a fresh ``memory://`` URI: every run gets its own embedded broker."""
    return f"memory://bench-{uuid.uuid4().hex[:12]}"


def transport_for(uri: str) -> abc.Transport:
    """Return the transport of *uri* (``memory://NAME`` or ``amqp://``)."""
    if uri.startswith("memory://"):
        return MemoryTransport.from_uri(uri)
    return AmqpTransport(uri)


def release(uri: str) -> None:
    """Forget the embedded broker of a ``memory://`` *uri* (no-op for RabbitMQ)."""
    if uri.startswith("memory://"):
        drop_broker(uri[len("memory://") :].strip("/"))


def unique(prefix: str) -> str:
    """Return a name no earlier run used, such as ``prefix-1a2b3c4d``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def machine_info() -> dict[str, Any]:
    """Describe the machine and the software the figures were measured with."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "trio": trio.__version__,
        "trioevents": _version("trioevents"),
        "pamqp": _version("pamqp"),
        "cattrs": _version("cattrs"),
        "load_average": list(os.getloadavg()),
    }
