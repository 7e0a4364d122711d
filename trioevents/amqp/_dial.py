"""Dialing the broker: the byte stream an AMQP connection runs over.

:func:`connect_stream` opens TCP (and TLS on top of it) with one deadline for
both, and turns every way that can fail into
:class:`~trioevents.BrokerUnavailable` naming the broker as the caller calls it
(a URI with its password masked), before any AMQP is spoken.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import trio

from .._exceptions import BrokerUnavailable
from .._groups import leaves

if TYPE_CHECKING:
    import ssl

__all__ = ["connect_stream"]


async def connect_stream(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    connect_timeout: float = 10.0,
    peer: str = "the broker",
) -> trio.abc.Stream:
    """Open a TCP stream to *host*:*port*, with TLS if *ssl_context* is given.

    The TLS handshake runs here, so that a certificate problem is reported as
    :class:`~trioevents.BrokerUnavailable` before any AMQP is spoken.

    Raises
    ------
    BrokerUnavailable
        The broker cannot be reached, the TLS handshake failed, or both took
        longer than *connect_timeout*.
    """
    tcp: trio.SocketStream | None = None
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            if ssl_context is None:
                return tcp
            tls = trio.SSLStream(
                tcp, ssl_context, server_hostname=server_hostname or host
            )
            await tls.do_handshake()
            return tls
    except trio.TooSlowError:
        error = BrokerUnavailable(
            f"cannot connect to {peer}: no answer within {connect_timeout} s"
        )
        cause: BaseException | None = None
    except (OSError, trio.BrokenResourceError) as exc:
        if tcp is None:
            reason = _why_not_connected(host, exc)
            error = BrokerUnavailable(f"cannot connect to {peer}: {reason}")
        else:
            reason = str(exc.__cause__ or exc)
            error = BrokerUnavailable(f"the TLS handshake with {peer} failed: {reason}")
        cause = exc
    if tcp is not None:
        await trio.aclose_forcefully(tcp)
    raise error from cause


def _why_not_connected(host: str, exc: BaseException) -> str:
    """Say why :func:`trio.open_tcp_stream` failed, from the errors it wraps.

    It raises ``OSError("all attempts to connect to h:p failed")`` from an
    exception group of one error per address tried; the reasons are in there
    (e.g. ``Connection refused``), each said once.
    """
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host!r}: {exc.strerror or exc}"
    errors = leaves(exc.__cause__) if exc.__cause__ is not None else [exc]
    reasons = [
        os.strerror(error.errno)
        if isinstance(error, OSError) and error.errno
        else str(error)
        for error in errors
    ]
    return "; ".join(dict.fromkeys(reasons))
