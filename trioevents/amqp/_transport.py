"""The RabbitMQ transport, built from an ``amqp://`` or ``amqps://`` URI."""

from __future__ import annotations

import math
import ssl
import urllib.parse
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs

from .. import abc
from .._config import masked_uri
from .._exceptions import ConfigurationError
from ._connection import connect_stream, open_amqp_connection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

    from ._connection import AmqpConnection

__all__ = ["AmqpParameters", "AmqpTransport", "make_ssl_context"]

_DEFAULT_PORTS: Final = {False: 5672, True: 5671}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_CERT_REQS: Final = {
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
}
#: The ``AMQP_SSL`` keys understood (nameko's, which kombu and py-amqp read).
_SSL_KEYS: Final = frozenset(
    {
        "ca_certs",
        "certfile",
        "keyfile",
        "cert_reqs",
        "server_hostname",
        "check_hostname",
    }
)


@final
@attrs.frozen(kw_only=True)
class AmqpParameters:
    """Where and how to connect, as read from an AMQP URI.

    Attributes
    ----------
    host, port
        The broker's address; the port defaults to 5672, or 5671 with TLS.
    username, password
        The login (``guest`` / ``guest`` if the URI has none).
    virtual_host
        The virtual host: the URI's path without its leading ``/``, URL-decoded;
        ``/`` when the path is empty or ``/`` (so ``amqp://host//`` and
        ``amqp://host/`` and ``amqp://host/%2F`` all mean ``/``).
    tls
        ``amqps://``, or ``?ssl=1`` as kombu spells it.
    heartbeat, frame_max, channel_max, connect_timeout, auth_mechanism
        From the query string (``?heartbeat=30&frame_max=131072``); ``None``
        when it does not say.
    """

    host: str
    port: int
    username: str
    password: str = attrs.field(repr=False)
    virtual_host: str
    tls: bool
    heartbeat: float | None = None
    frame_max: int | None = None
    channel_max: int | None = None
    connect_timeout: float | None = None
    auth_mechanism: Literal["PLAIN", "EXTERNAL"] | None = None

    @classmethod
    def from_uri(cls, uri: str) -> AmqpParameters:
        """Parse an ``amqp://user:password@host:port/vhost?option=value`` URI.

        Raises
        ------
        ConfigurationError
            The URI is not an AMQP URI, or an option is unknown or invalid.
        """
        if not isinstance(uri, str):  # untyped callers
            raise ConfigurationError(f"an AMQP URI must be a str, not {uri!r}")
        shown = masked_uri(uri)
        parts = urllib.parse.urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme not in ("amqp", "amqps"):
            raise ConfigurationError(
                f"{shown!r} is not an AMQP URI (amqp://... or amqps://...)"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigurationError(f"{shown!r} has an invalid port") from None
        path = parts.path
        virtual_host = urllib.parse.unquote(path[1:] if path.startswith("/") else path)
        options: dict[str, Any] = {}
        tls = scheme == "amqps"
        for key, value in urllib.parse.parse_qsl(
            parts.query, keep_blank_values=True, strict_parsing=False
        ):
            if key == "ssl":
                tls = tls or _parse_bool(key, value, shown)
            elif key in ("heartbeat", "connect_timeout"):
                options[key] = _parse_number(key, value, shown)
            elif key in ("frame_max", "channel_max"):
                number = _parse_number(key, value, shown)
                if number != int(number):
                    raise ConfigurationError(
                        f"{shown!r}: {key} must be an integer, not {value!r}"
                    )
                options[key] = int(number)
            elif key in ("auth_mechanism", "login_method"):
                mechanism = value.upper()
                if mechanism not in ("PLAIN", "EXTERNAL"):
                    raise ConfigurationError(
                        f"{shown!r}: {key} must be PLAIN or EXTERNAL, not {value!r}"
                    )
                options["auth_mechanism"] = mechanism
            else:
                raise ConfigurationError(
                    f"{shown!r}: unknown option {key!r} (known: heartbeat, frame_max, "
                    "channel_max, connect_timeout, auth_mechanism, ssl)"
                )
        return cls(
            host=parts.hostname or "localhost",
            port=port or _DEFAULT_PORTS[tls],
            username=urllib.parse.unquote(parts.username or "guest"),
            password=urllib.parse.unquote(parts.password or "guest"),
            virtual_host=virtual_host or "/",
            tls=tls,
            **options,
        )


def _parse_bool(key: str, value: str, shown: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{shown!r}: {key} must be a boolean, not {value!r}")


def _parse_number(key: str, value: str, shown: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise ConfigurationError(
            f"{shown!r}: {key} must be a non-negative number, not {value!r}"
        )
    return number


def make_ssl_context(
    options: bool | Mapping[str, Any] | ssl.SSLContext | None,
) -> ssl.SSLContext:
    """Build the TLS context for ``AMQP_SSL`` (nameko's format).

    Parameters
    ----------
    options
        ``None`` or ``True``: the system's trusted CAs, with certificate and host
        name checks. A mapping: ``ca_certs`` (a CA bundle file), ``certfile`` and
        ``keyfile`` (a client certificate, for ``EXTERNAL`` auth or mutual TLS),
        ``cert_reqs`` (``ssl.CERT_REQUIRED`` (the default), ``ssl.CERT_OPTIONAL``
        or ``ssl.CERT_NONE``, also as a name such as ``"CERT_NONE"``),
        ``check_hostname`` (default: true unless ``cert_reqs`` is
        ``CERT_NONE``) and ``server_hostname``. An :class:`ssl.SSLContext` is
        used as it is.

    Raises
    ------
    ConfigurationError
        An unknown key, a bad value or a file that cannot be loaded.
    """
    if isinstance(options, ssl.SSLContext):
        return options
    if options is None or options is True:
        return ssl.create_default_context()
    if options is False or not isinstance(options, Mapping):
        raise ConfigurationError(
            f"AMQP_SSL must be true, a mapping of ssl options or an SSLContext, "
            f"not {options!r}"
        )
    unknown = set(options) - _SSL_KEYS
    if unknown:
        raise ConfigurationError(
            f"AMQP_SSL: unknown option(s) {sorted(unknown)}; known: {sorted(_SSL_KEYS)}"
        )
    cert_reqs = _cert_reqs(options.get("cert_reqs", ssl.CERT_REQUIRED))
    try:
        context = ssl.create_default_context(cafile=options.get("ca_certs"))
        check_hostname = options.get("check_hostname", cert_reqs != ssl.CERT_NONE)
        context.check_hostname = bool(check_hostname)
        context.verify_mode = cert_reqs
        certfile = options.get("certfile")
        if certfile is not None:
            context.load_cert_chain(certfile, options.get("keyfile"))
        elif options.get("keyfile") is not None:
            raise ConfigurationError("AMQP_SSL: keyfile needs a certfile")
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(f"AMQP_SSL: {exc}") from exc
    return context


def _cert_reqs(value: object) -> ssl.VerifyMode:
    if isinstance(value, str):
        found = _CERT_REQS.get(value.lower())
        if found is not None:
            return found
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return ssl.VerifyMode(value)
        except ValueError:
            pass
    raise ConfigurationError(
        f"AMQP_SSL: cert_reqs must be ssl.CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED, "
        f"not {value!r}"
    )


@final
class AmqpTransport(abc.Transport):
    """The RabbitMQ transport: AMQP 0-9-1 connections from a URI.

    ``amqp://user:password@host:port/vhost`` as in nameko and kombu: the
    virtual host is the URL-decoded path without its first ``/``, and an empty
    one means ``/`` (``amqp://guest:guest@localhost:5672//`` is the vhost ``/``).
    ``amqps://`` (or *ssl_options*) turns TLS on. Query options
    ``heartbeat``, ``frame_max``, ``channel_max``, ``connect_timeout``,
    ``auth_mechanism`` (``PLAIN`` or ``EXTERNAL``) and ``ssl`` override the
    keyword arguments.

    Parameters
    ----------
    uri
        The broker's URI.
    heartbeat
        The heartbeat interval to ask for in seconds; ``0`` or ``None`` turns
        heartbeats off, whatever the broker proposes. A broker silent for twice the
        interval is given up as :class:`~trioevents.ConnectionLost`.
    ssl_options
        ``AMQP_SSL`` from a nameko config: ``True``, a mapping of ssl options
        (see :func:`make_ssl_context`) or an :class:`ssl.SSLContext`. Turns TLS
        on for ``amqp://`` URIs too, as in nameko. Certificates are verified
        unless the options say otherwise.
    connect_timeout
        How long the TCP connect, the TLS handshake and the AMQP handshake may
        each take.
    frame_max, channel_max
        Frame size and channel limits to ask for (the lower of ours and the
        broker's wins).
    client_properties
        Extra client properties shown by the broker, e.g.
        ``{"connection_name": "orders"}``.
    close_timeout
        How long closing a connection or a consumer may wait for the broker.

    Raises
    ------
    ConfigurationError
        The URI or the ssl options are invalid.
    """

    def __init__(
        self,
        uri: str,
        *,
        heartbeat: float | None = 60,
        ssl_options: bool | Mapping[str, Any] | ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        frame_max: int = 131072,
        channel_max: int = 2047,
        client_properties: Mapping[str, Any] | None = None,
        close_timeout: float = 5.0,
    ) -> None:
        params = AmqpParameters.from_uri(uri)
        self._params = params
        self._uri = masked_uri(uri)
        self._heartbeat = (
            params.heartbeat if params.heartbeat is not None else heartbeat
        )
        self._frame_max = params.frame_max or frame_max
        self._channel_max = (
            params.channel_max if params.channel_max is not None else channel_max
        )
        self._connect_timeout = params.connect_timeout or connect_timeout
        self._auth_mechanism: Literal["PLAIN", "EXTERNAL"] = (
            params.auth_mechanism or "PLAIN"
        )
        self._client_properties = dict(client_properties or {})
        self._close_timeout = close_timeout
        tls = params.tls or (ssl_options is not None and ssl_options is not False)
        self._ssl_context = make_ssl_context(ssl_options) if tls else None
        self._server_hostname = None
        if isinstance(ssl_options, Mapping):
            self._server_hostname = ssl_options.get("server_hostname")

    def __repr__(self) -> str:
        return f"AmqpTransport({self._uri!r})"

    @property
    def parameters(self) -> AmqpParameters:
        """What the URI says (the password is left out of its repr)."""
        return self._params

    @property
    def heartbeat(self) -> float | None:
        """The heartbeat interval asked for, in seconds (``0`` or ``None``: off)."""
        return self._heartbeat

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (``amqps://`` or *ssl_options*)."""
        return self._ssl_context is not None

    @property
    def uri(self) -> str:
        """The URI with its password masked, fit for logs."""
        return self._uri

    def open_connection(self) -> AbstractAsyncContextManager[AmqpConnection]:
        """Open a connection; see :meth:`trioevents.abc.Transport.open_connection`.

        The connection is closed with a close handshake when the ``async with``
        ends, and raises :class:`~trioevents.ConnectionLost` out of it if it was
        lost while the body ran (the body is cancelled then).

        Raises
        ------
        BrokerUnavailable
            The broker cannot be reached, the TLS handshake failed, or the
            broker refused the login or the virtual host. The message names the
            URI with its password masked.
        ConnectionLost
            The connection was lost while the body ran.
        """
        return self._open_connection()

    @asynccontextmanager
    async def _open_connection(self) -> AsyncIterator[AmqpConnection]:
        params = self._params
        peer = repr(self._uri)
        stream = await connect_stream(
            params.host,
            params.port,
            ssl_context=self._ssl_context,
            server_hostname=self._server_hostname,
            connect_timeout=self._connect_timeout,
            peer=peer,
        )
        async with open_amqp_connection(
            stream,
            username=params.username,
            password=params.password,
            virtual_host=params.virtual_host,
            auth_mechanism=self._auth_mechanism,
            heartbeat=self._heartbeat,
            frame_max=self._frame_max,
            channel_max=self._channel_max,
            client_properties=self._client_properties,
            handshake_timeout=self._connect_timeout,
            close_timeout=self._close_timeout,
            peer=peer,
        ) as connection:
            yield connection
