"""``AMQP_URI``: parsed here, once, and shown (password masked) from here.

An ``AMQP_URI`` names the broker:

* ``memory://`` or ``memory://NAME``: the embedded broker of that name;
* ``amqp://user:password@host:port/vhost?option=value`` (``amqps://`` for TLS),
  as nameko and kombu write it; several such addresses separated by ``;`` are
  kombu's failover form (``amqp://rabbit1//;amqp://rabbit2//``), also given
  as a YAML or Python list of URIs (:func:`broker_uri_text` joins it). kombu's
  transport names ``pyamqp://`` (nameko's default broker,
  ``pyamqp://guest:guest@localhost``) and ``librabbitmq://`` mean ``amqp://``.

Everything that reads or prints an ``AMQP_URI`` goes through this module:
:func:`parse_broker_uri` to understand it, :func:`masked_uri` (or
:attr:`BrokerUri.masked`) to show it.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final, Literal, final

import attrs

from ._exceptions import ConfigurationError

__all__ = [
    "AmqpAddress",
    "BrokerUri",
    "broker_uri_text",
    "masked_uri",
    "parse_amqp_address",
    "parse_broker_uri",
    "with_virtual_host",
]

MEMORY: Final = "memory"
#: Every scheme an ``AMQP_URI`` may have, as the error for another one lists them.
SCHEMES: Final = ("memory", "amqp", "amqps", "pyamqp", "librabbitmq")
#: The schemes of RabbitMQ: kombu's transport names (nameko's default broker is
#: ``pyamqp://``) mean ``amqp://``; ``amqps://`` adds TLS.
_AMQP_SCHEMES: Final = frozenset(SCHEMES) - {MEMORY}
_DEFAULT_PORTS: Final = {False: 5672, True: 5671}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_OPTIONS: Final = (
    "heartbeat, frame_max, channel_max, connect_timeout, auth_mechanism, ssl"
)


def _mask_one(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    first_at = rest.find("@")
    if first_at == -1:
        return uri
    # The host part follows the user info's last "@" and ends at the first
    # "/", "?" or "#" after it.
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter, first_at)
        if found != -1:
            end = min(end, found)
    at = rest.rfind("@", 0, end)
    userinfo, hostport_and_tail = rest[:at], rest[at + 1 :]
    user, colon, _password = userinfo.partition(":")
    # Without "://" the text is a mistyped URI ("guest:pw@host/",
    # "amqp//guest:pw@host/"): hide everything from its first ":" to the "@".
    if not colon or (sep and any(c in user for c in "/?#")):
        return uri
    return f"{scheme}{sep}{user}:****@{hostport_and_tail}"


def masked_uri(uri: str) -> str:
    """Return *uri* with every password hidden, for logs, errors and ``show-config``.

    ``amqp://guest:guest@localhost:5672/`` becomes
    ``amqp://guest:****@localhost:5672/``; each address of a ``;``-separated
    list is masked. A URI without a password is returned as it is. A password
    that should have been percent-encoded but was not (``pa#ss``, ``pa/ss``,
    ``pa@ss``) is hidden all the same: the user info ends at the last ``@``
    before the host, wherever ``/``, ``?`` or ``#`` come. Works on text that
    does not parse, too: a mistyped ``guest:pw@host/`` or ``amqp//guest:pw@host/``
    shows as ``guest:****@host/`` and ``amqp//guest:****@host/``.
    """
    return ";".join(_mask_one(part) for part in uri.split(";"))


@final
@attrs.frozen(kw_only=True)
class AmqpAddress:
    """One RabbitMQ address, as read from an ``amqp://`` or ``amqps://`` URI.

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
    #: The URI as given (never shown: see :attr:`masked`).
    uri: str = attrs.field(default="", repr=False, eq=False)

    @classmethod
    def from_uri(cls, uri: str) -> AmqpAddress:
        """Parse an ``amqp://user:password@host:port/vhost?option=value`` URI.

        Raises
        ------
        ConfigurationError
            The URI is not an AMQP URI, or an option is unknown or invalid.
            The message shows the URI with its password masked.
        """
        return parse_amqp_address(uri)

    @property
    def masked(self) -> str:
        """The URI with its password masked."""
        return masked_uri(self.uri)

    @property
    def node(self) -> str:
        """``host:port``, naming the node in logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@final
@attrs.frozen
class BrokerUri:
    """An ``AMQP_URI``, understood.

    Attributes
    ----------
    uri
        The text as given (never shown: see :attr:`masked`).
    scheme
        ``"memory"`` or ``"amqp"`` (``amqps://`` addresses are ``"amqp"``
        with :attr:`AmqpAddress.tls`; ``pyamqp://`` and ``librabbitmq://``
        are ``"amqp"`` too, as in kombu).
    memory_name
        The embedded broker's name (``""`` for ``memory://``); ``None`` for
        RabbitMQ.
    addresses
        The RabbitMQ addresses, in the order given; empty for ``memory://``.
    """

    uri: str = attrs.field(repr=False)
    scheme: Literal["memory", "amqp"]
    memory_name: str | None = None
    addresses: tuple[AmqpAddress, ...] = ()

    @property
    def masked(self) -> str:
        """The URI with every password masked, fit for logs."""
        return masked_uri(self.uri)

    @property
    def is_memory(self) -> bool:
        """Whether this is the embedded broker."""
        return self.scheme == MEMORY


def _scheme_of(uri: str) -> str:
    return uri.partition("://")[0].lower() if "://" in uri else ""


def _unsupported(uri: str) -> ConfigurationError:
    known = ", ".join(f"{scheme}://" for scheme in SCHEMES)
    return ConfigurationError(
        f"AMQP_URI {masked_uri(uri)!r} has an unsupported scheme; use one of {known}"
    )


def broker_uri_text(uri: object) -> str:
    """Return an ``AMQP_URI`` as text: a list of addresses joined by ``;``.

    A YAML or Python list of URIs (``[amqp://u:p@rabbit1/, amqp://u:p@rabbit2/]``)
    becomes kombu's failover form, ``amqp://u:p@rabbit1/;amqp://u:p@rabbit2/``,
    which nameko config files already hold; a str is returned as it is.

    Raises
    ------
    ConfigurationError
        Neither a str nor a non-empty list, or an item that is not a str
        (named by its position, never shown).
    """
    if isinstance(uri, str):
        return uri
    if not isinstance(uri, Sequence) or not uri:
        raise ConfigurationError(
            "AMQP_URI must be a URI such as amqp://host/ or a non-empty list of "
            f"them, not {type(uri).__name__}"
            + (" (empty)" if isinstance(uri, Sequence) else "")
        )
    for position, item in enumerate(uri, 1):
        if not isinstance(item, str):
            raise ConfigurationError(
                f"AMQP_URI: address {position} of the list must be a str such as "
                f"amqp://host/, not {type(item).__name__}"
            )
    return ";".join(item.strip() for item in uri)


def parse_broker_uri(uri: object) -> BrokerUri:
    """Parse an ``AMQP_URI``: ``memory://[NAME]`` or ``;``-separated AMQP URIs.

    Raises
    ------
    ConfigurationError
        Not a str, an unsupported scheme, an address that does not parse, or
        ``memory://`` mixed with other addresses. The message names the bad
        address with its password masked.
    """
    if not isinstance(uri, str):
        raise ConfigurationError(
            f"AMQP_URI must be a str such as memory:// or amqp://host/, not "
            f"{type(uri).__name__}"
        )
    parts = [part.strip() for part in uri.split(";")]
    if _scheme_of(parts[0]) == MEMORY:
        if len(parts) > 1:
            raise ConfigurationError(
                f"AMQP_URI {masked_uri(uri)!r}: memory:// cannot be one of several "
                "addresses"
            )
        name = parts[0].partition("://")[2].strip("/")
        return BrokerUri(uri, MEMORY, memory_name=name)
    if not all(parts):
        raise ConfigurationError(f"AMQP_URI {masked_uri(uri)!r} has an empty address")
    addresses: list[AmqpAddress] = []
    for position, part in enumerate(parts, 1):
        try:
            if _scheme_of(part) not in _AMQP_SCHEMES:
                raise _unsupported(part)
            addresses.append(parse_amqp_address(part))
        except ConfigurationError as exc:
            if len(parts) == 1:
                raise
            raise ConfigurationError(
                f"AMQP_URI address {position} of {len(parts)}: "
                + str(exc).removeprefix("AMQP_URI ")
            ) from None
    return BrokerUri(uri, "amqp", addresses=tuple(addresses))


def parse_amqp_address(uri: str) -> AmqpAddress:
    """Parse one ``amqp://`` or ``amqps://`` URI; see :class:`AmqpAddress`.

    kombu's ``pyamqp://`` and ``librabbitmq://`` are read as ``amqp://``.

    Raises
    ------
    ConfigurationError
        The URI is not an AMQP URI, or an option is unknown or invalid.
    """
    if not isinstance(uri, str):  # untyped callers
        raise ConfigurationError(f"an AMQP URI must be a str, not {type(uri).__name__}")
    shown = masked_uri(uri)
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:
        raise ConfigurationError(f"{shown!r} is not a valid URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _AMQP_SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES if name in _AMQP_SCHEMES)
        raise ConfigurationError(f"{shown!r} is not an AMQP URI ({known})")
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
                f"{shown!r}: unknown option {key!r} (known: {_OPTIONS})"
            )
    return AmqpAddress(
        host=hostname or "localhost",
        port=port or _DEFAULT_PORTS[tls],
        username=urllib.parse.unquote(parts.username or "guest"),
        password=urllib.parse.unquote(parts.password or "guest"),
        virtual_host=virtual_host or "/",
        tls=tls,
        uri=uri,
        **options,
    )


def with_virtual_host(uri: str, virtual_host: str) -> str:
    """Return AMQP *uri* pointed at *virtual_host*; the login and address are kept.

    The query string is dropped.

    Raises
    ------
    ConfigurationError
        *uri* is not one AMQP URI.
    """
    parse_amqp_address(uri)
    parts = urllib.parse.urlsplit(uri)
    path = "/" + urllib.parse.quote(virtual_host, safe="")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


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
