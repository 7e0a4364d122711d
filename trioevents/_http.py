"""The operators' HTTP endpoint of a host: ``/healthz``, ``/readyz``, ``/metrics``.

``HTTP_ADDRESS`` (or ``trioevents run --http :9100``) makes :meth:`ServiceHost.serve
<trioevents.ServiceHost.serve>` serve, in its own nursery, with hypercorn's trio
worker (no threads)::

    /healthz   200 while the trio loop answers (liveness)
    /readyz    200 when the host is SERVING, else 503 and the state (readiness)
    /metrics   prometheus-client's exposition of the host's PrometheusMetrics

This module imports hypercorn and prometheus-client only when it serves, so the
core imports without them (the ``http`` extra installs both).
"""

from __future__ import annotations

import logging
import re
import socket
from typing import TYPE_CHECKING, Any, Final, final

import trio

from ._exceptions import ConfigurationError
from ._extras import extra_missing, needs_extra
from ._observe import HostState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from ._host import ServiceHost
    from ._observe import Observer

__all__ = [
    "HTTP_EXTRA_MODULES",
    "OperatorApp",
    "check_http_extra",
    "operator_app",
    "parse_http_address",
    "serve_operator_http",
]

logger = logging.getLogger("trioevents.http")

#: What ``HTTP_ADDRESS`` needs: hypercorn's trio worker.
HTTP_EXTRA_MODULES: Final = ("hypercorn.trio",)
#: Seconds open HTTP connections get to finish once the host stopped.
_GRACE: Final = 1.0

_ADDRESS: Final = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})"
)
_EXAMPLES: Final = '":9100" (every interface), "127.0.0.1:9100" or "[::1]:9100"'


def parse_http_address(text: str) -> tuple[str, int]:
    """Read ``HTTP_ADDRESS``: ``"[HOST]:PORT"`` -> ``(host, port)``.

    ``":9100"`` listens on every IPv4 interface (``0.0.0.0``); an IPv6 host is
    written in brackets (``"[::]:9100"``). Port ``0`` takes a free port (tests).

    Raises
    ------
    ConfigurationError
        *text* is not such an address.
    """
    match = _ADDRESS.fullmatch(text.strip())
    if match is None or int(match["port"]) > 65535:
        raise ConfigurationError(
            f"config key 'HTTP_ADDRESS': expected [HOST]:PORT such as {_EXAMPLES}, "
            f"got {text!r}"
        )
    host = match["ipv6"] or match["host"] or "0.0.0.0"
    return host, int(match["port"])


def check_http_extra() -> None:
    """Raise the error for ``HTTP_ADDRESS`` without the ``http`` extra, if so.

    Raises
    ------
    ConfigurationError
        hypercorn is not installed; the message names the extra.
    """
    error = extra_missing("HTTP_ADDRESS", "http", *HTTP_EXTRA_MODULES)
    if error is not None:
        raise error


@final
class OperatorApp:
    """The ASGI application of the endpoint: health, readiness and metrics.

    Parameters
    ----------
    state
        Returns the host's state (``host.state``).
    metrics
        prometheus-client's ASGI application, or ``None``.
    no_metrics
        Why there is no ``/metrics`` (shown with a 404), when *metrics* is ``None``.
    """

    def __init__(
        self,
        state: Callable[[], HostState],
        metrics: Callable[..., Awaitable[None]] | None,
        no_metrics: str = "",
    ) -> None:
        self._state = state
        self._metrics = metrics
        self._no_metrics = no_metrics

    async def __call__(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":  # websockets: not served
            return
        path, method = scope["path"], scope["method"]
        if method not in ("GET", "HEAD"):
            await _respond(send, method, 405, "only GET and HEAD\n")
        elif path == "/healthz":
            # Answered by the trio loop itself: the loop is responsive.
            await _respond(send, method, 200, "ok\n")
        elif path == "/readyz":
            state = self._state()
            status = 200 if state is HostState.SERVING else 503
            await _respond(send, method, status, f"{state.value}\n")
        elif path == "/metrics" and self._metrics is not None:
            await self._metrics(scope, receive, send)
        elif path == "/metrics":
            await _respond(send, method, 404, f"{self._no_metrics}\n")
        else:
            await _respond(
                send, method, 404, "not found: try /healthz, /readyz or /metrics\n"
            )


async def _lifespan(
    receive: Callable[[], Awaitable[Mapping[str, Any]]],
    send: Callable[[Any], Awaitable[None]],
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(
    send: Callable[[Any], Awaitable[None]], method: str, status: int, text: str
) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send(
        {"type": "http.response.body", "body": b"" if method == "HEAD" else body}
    )


def operator_app(host: ServiceHost, observers: Sequence[Observer]) -> OperatorApp:
    """Build the endpoint's app for *host*, with the metrics of its observers.

    ``/metrics`` exposes the registry of the host's
    :class:`~trioevents.prometheus.PrometheusMetrics` observer; a host without
    one gets one on prometheus-client's default registry.
    """
    try:
        from .prometheus import PrometheusMetrics
    except ImportError as exc:
        reason = needs_extra("/metrics", "prometheus", exc)
        logger.warning("no /metrics: %s", reason)
        return OperatorApp(lambda: host.state, None, reason)
    metrics = next((o for o in observers if isinstance(o, PrometheusMetrics)), None)
    if metrics is None:
        metrics = PrometheusMetrics()
        host.add_observer(metrics)
    metrics.describe_host(host)
    return OperatorApp(lambda: host.state, metrics.asgi_app())


async def serve_operator_http(
    app: OperatorApp,
    address: str,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* on *address* until *shutdown* is set; report the URL when started.

    hypercorn's trio worker, in the caller's task: no threads, no processes.

    Raises
    ------
    ConfigurationError
        The address cannot be listened on (in use, not this machine's).
    """
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    config = HypercornConfig()
    # Bound here, handed over by file descriptor: a bind error is ours to
    # report, and no socket is left behind.
    config.bind = [f"fd://{_bound_socket(address).detach()}"]
    config.accesslog = None
    config.errorlog = logger
    config.graceful_timeout = _GRACE
    config.include_server_header = False
    await serve(
        app,
        config,
        shutdown_trigger=shutdown.wait,
        task_status=_Started(task_status),
        mode="asgi",
    )


def _bound_socket(address: str) -> socket.socket:
    """A TCP socket bound to ``HTTP_ADDRESS`` (not listening yet).

    Raises
    ------
    ConfigurationError
        The address cannot be bound (in use, not this machine's).
    """
    host, port = parse_http_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"config key 'HTTP_ADDRESS': cannot listen on {address!r}: {exc}"
        ) from exc
    return sock


@final
class _Started:
    """Pass hypercorn's ``started(binds)`` on as ``started(url)``."""

    def __init__(self, task_status: trio.TaskStatus[str]) -> None:
        self._task_status = task_status

    def started(self, value: list[str] | None = None) -> None:
        self._task_status.started((value or ["http://?"])[0])
