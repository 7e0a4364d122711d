"""The RabbitMQ transport, built from an ``amqp://`` or ``amqps://`` URI."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs

from .. import abc
from .._connecting import Failover
from .._exceptions import (
    AccessRefusedByBroker,
    BrokerUnavailable,
    ConfigurationError,
)
from .._uri import AmqpAddress, parse_broker_uri
from ._connection import open_amqp_connection
from ._dial import connect_stream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

    from ._connection import AmqpConnection

__all__ = ["AmqpAddress", "AmqpParameters", "AmqpTransport", "make_ssl_context"]

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


#: The older name of :class:`~trioevents._uri.AmqpAddress`.
AmqpParameters = AmqpAddress


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
@attrs.frozen
class _Node:
    """How to connect to one address of the URI: its options over the defaults."""

    address: AmqpAddress
    heartbeat: float | None
    frame_max: int
    channel_max: int
    connect_timeout: float
    auth_mechanism: Literal["PLAIN", "EXTERNAL"]
    ssl_context: ssl.SSLContext | None


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

    Several addresses separated by ``;`` (kombu's failover form,
    ``amqp://u:p@rabbit1/;amqp://u:p@rabbit2/``) are the nodes of a cluster,
    each with its own login, virtual host and options. Each
    :meth:`open_connection` is one round: it tries the nodes one after the
    other, in the order *failover_strategy* gives (see :ref:`failover`), and
    connects to the first that answers; the caller's backoff runs between
    rounds.

    Parameters
    ----------
    uri
        The broker's URI, or several separated by ``;``.
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
        each take (per node).
    frame_max, channel_max
        Frame size and channel limits to ask for (the lower of ours and the
        broker's wins).
    client_properties
        Extra client properties shown by the broker, e.g.
        ``{"connection_name": "orders"}``.
    close_timeout
        How long closing a connection or a consumer may wait for the broker. A
        close that runs because its task was cancelled waits 1 s at most, so
        that cancelling is prompt even when the broker does not answer.
    max_message_size
        The largest message body read (``MAX_MESSAGE_SIZE``); a larger one is
        skipped as it arrives, never buffered, and delivered with an empty body
        and a :class:`~trioevents.Defect` saying so. ``None``: no limit.
    failover_strategy
        ``FAILOVER_STRATEGY``: ``"round-robin"`` (kombu's default) or
        ``"shuffle"``; the order in which several addresses are tried.

    Raises
    ------
    ConfigurationError
        The URI (naming the bad address, password masked), the ssl options or
        the failover strategy are invalid.
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
        max_message_size: int | None = None,
        failover_strategy: Literal["round-robin", "shuffle"] = "round-robin",
    ) -> None:
        parsed = parse_broker_uri(uri)
        if parsed.is_memory:
            raise ConfigurationError(
                f"{parsed.masked!r} is not an AMQP URI (amqp://... or amqps://...)"
            )
        self._uri = parsed.masked
        self._failover = Failover(len(parsed.addresses), failover_strategy)
        self._client_properties = dict(client_properties or {})
        self._close_timeout = close_timeout
        self._max_message_size = max_message_size
        self._server_hostname = None
        if isinstance(ssl_options, Mapping):
            self._server_hostname = ssl_options.get("server_hostname")
        tls_asked = ssl_options is not None and ssl_options is not False
        ssl_context = None
        if tls_asked or any(address.tls for address in parsed.addresses):
            ssl_context = make_ssl_context(ssl_options)
        self._nodes = tuple(
            _Node(
                address,
                heartbeat=(
                    address.heartbeat if address.heartbeat is not None else heartbeat
                ),
                frame_max=address.frame_max or frame_max,
                channel_max=(
                    address.channel_max
                    if address.channel_max is not None
                    else channel_max
                ),
                connect_timeout=address.connect_timeout or connect_timeout,
                auth_mechanism=address.auth_mechanism or "PLAIN",
                ssl_context=ssl_context if address.tls or tls_asked else None,
            )
            for address in parsed.addresses
        )

    def __repr__(self) -> str:
        return f"AmqpTransport({self._uri!r})"

    @property
    def parameters(self) -> AmqpAddress:
        """What the URI says of its first address (the password is left out of
        its repr)."""
        return self._nodes[0].address

    @property
    def addresses(self) -> tuple[AmqpAddress, ...]:
        """Every address of the URI, in the order given."""
        return tuple(node.address for node in self._nodes)

    @property
    def failover_strategy(self) -> Literal["round-robin", "shuffle"]:
        """The order in which the addresses are tried (``FAILOVER_STRATEGY``)."""
        return self._failover.strategy

    @property
    def heartbeat(self) -> float | None:
        """The heartbeat interval asked for, in seconds (``0`` or ``None``: off),
        of the first address."""
        return self._nodes[0].heartbeat

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (``amqps://`` or *ssl_options*), to every
        address."""
        return all(node.ssl_context is not None for node in self._nodes)

    @property
    def uri(self) -> str:
        """The URI with every password masked, fit for logs."""
        return self._uri

    def open_connection(self) -> AbstractAsyncContextManager[AmqpConnection]:
        """Open a connection; see :meth:`trioevents.abc.Transport.open_connection`.

        With several addresses, the first of this round's order that answers
        (a refused login counts as not answering: the next node is tried);
        the connection's :attr:`~AmqpConnection.peer` names that node. The
        connection is closed with a close handshake when the ``async with``
        ends, and raises :class:`~trioevents.ConnectionLost` out of it if it was
        lost while the body ran (the body is cancelled then; the next round
        tries that node last).

        Raises
        ------
        AccessRefusedByBroker
            The broker refused the login or the virtual host; the message says
            what to fix.
        BrokerUnavailable
            No address answered: the broker cannot be reached or the TLS
            handshake failed. The message names each address with its password
            masked and says why (e.g. ``Connection refused``).
        ConnectionLost
            The connection was lost while the body ran.
        """
        return self._open_connection()

    @asynccontextmanager
    async def _open_connection(self) -> AsyncIterator[AmqpConnection]:
        index: int | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                index, connection = await self._connect_first(stack)
                yield connection
        except BaseException:
            if index is not None:
                self._failover.failed(index)
            raise

    async def _connect_first(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[int, AmqpConnection]:
        """Connect to the first node of this round that answers (in *stack*)."""
        errors: list[BrokerUnavailable] = []
        for index in self._failover.order():
            try:
                connection = await stack.enter_async_context(
                    self._connect(self._nodes[index])
                )
            except BrokerUnavailable as exc:
                errors.append(exc)
                continue
            self._failover.connected(index)
            return index, connection
        if len(errors) == 1:
            raise errors[0]
        reasons = "; ".join(str(error) for error in errors)
        message = f"no node of {self._uri} answered ({len(errors)} tried): {reasons}"
        last = errors[-1]
        if all(isinstance(error, AccessRefusedByBroker) for error in errors):
            # Every node refused the login or the vhost: no retry can help.
            assert isinstance(last, AccessRefusedByBroker)
            raise AccessRefusedByBroker(
                message, last.reply_code, last.reply_text
            ) from last
        raise BrokerUnavailable(message) from last

    @asynccontextmanager
    async def _connect(self, node: _Node) -> AsyncIterator[AmqpConnection]:
        address = node.address
        peer = repr(address.masked)
        stream = await connect_stream(
            address.host,
            address.port,
            ssl_context=node.ssl_context,
            server_hostname=self._server_hostname,
            connect_timeout=node.connect_timeout,
            peer=peer,
        )
        async with open_amqp_connection(
            stream,
            username=address.username,
            password=address.password,
            virtual_host=address.virtual_host,
            auth_mechanism=node.auth_mechanism,
            heartbeat=node.heartbeat,
            frame_max=node.frame_max,
            channel_max=node.channel_max,
            client_properties=self._client_properties,
            handshake_timeout=node.connect_timeout,
            close_timeout=self._close_timeout,
            max_body_size=self._max_message_size,
            peer=peer,
        ) as connection:
            yield connection
