"""Typed configuration with nameko's keys, read from a mapping or YAML.

An existing nameko config file works unchanged::

    AMQP_URI: amqp://${RABBIT_USER:guest}:${RABBIT_PASSWORD:guest}@${RABBIT_HOST:localhost}/
    max_workers: 10
    serializer: json
    LOGGING:
        version: 1
        ...

Keys and attributes:

========================  ========================  =======================================
config key                attribute                 default
========================  ========================  =======================================
``AMQP_URI``              ``amqp_uri``              ``"memory://"``
``max_workers``           ``max_workers``           ``10``
``PREFETCH_COUNT``        ``prefetch_count``        ``None`` (follows ``max_workers``)
``HEARTBEAT``             ``heartbeat``             ``60`` seconds (``0`` or ``None``: off)
``serializer``            ``serializer``            ``"json"`` (the only one)
``AMQP_SSL``              ``amqp_ssl``              ``None``
``SHUTDOWN_GRACE``        ``shutdown_grace``        ``30`` seconds
``parent_calls_tracked``  ``parent_calls_tracked``  ``10``
``PUBLISH_TIMEOUT``       ``publish_timeout``       ``30`` seconds (``None``: no deadline)
``CONNECT_ATTEMPTS``      ``connect_attempts``      ``5`` tries before ``serve()`` gives up
``RECONNECT_DELAY``       ``reconnect_delay``       ``0.5`` seconds, doubled per failure
``RECONNECT_MAX_DELAY``   ``reconnect_max_delay``   ``30`` seconds
``LOGGING``               ``logging_config``        ``None``
``MAX_MESSAGE_SIZE``      ``max_message_size``      16 MiB
``MAX_JSON_DEPTH``        ``max_json_depth``        ``100``
========================  ========================  =======================================

nameko spells ``serializer`` and ``parent_calls_tracked`` in lower case;
``SERIALIZER`` and ``PARENT_CALLS_TRACKED`` are accepted too. Other keys nameko
knows (``rpc_exchange``, ``WEB_SERVER_ADDRESS``, ...) are kept in
:attr:`Config.extra` and logged at debug level; any other key is kept there too
and logged as a **warning** through :mod:`logging` (logger
``trioevents.config``), not :mod:`warnings`, so that test suites that turn
warnings into errors still load an application's own keys, which nameko services
keep in the same file.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, final

import attrs

from ._exceptions import ConfigurationError
from ._uri import masked_uri, parse_broker_uri

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Config", "expand_env_vars"]

logger = logging.getLogger("trioevents.config")

_MIB = 1024 * 1024
_AMQP_SHORT_MAX = 65535


# ---------------------------------------------------------------- validators


def _fail(key: str, expected: str, value: object) -> ConfigurationError:
    return ConfigurationError(
        f"config key {key!r}: expected {expected}, got {value!r} "
        f"({type(value).__name__})"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _int_at_least(key: str, low: int, high: int | None = None) -> Validator:
    expected = f"an integer >= {low}" + (f" and <= {high}" if high else "")

    def check(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
        if not _is_int(value) or value < low or (high is not None and value > high):
            raise _fail(key, expected, value)

    return check


def _seconds(key: str, *, optional: bool = False, positive: bool = False) -> Validator:
    expected = "a number of seconds " + ("> 0" if positive else ">= 0")
    if optional:
        expected += " or null"

    def check(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not _is_number(value) or value < 0 or (positive and value == 0):
            raise _fail(key, expected, value)

    return check


def _check_amqp_uri(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or "://" not in value:
        shown = masked_uri(value) if isinstance(value, str) else value
        raise _fail("AMQP_URI", "a broker URI such as memory:// or amqp://host/", shown)
    parse_broker_uri(value)


def _check_prefetch(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not _is_int(value) or not 0 <= value <= _AMQP_SHORT_MAX:
        raise _fail("PREFETCH_COUNT", f"null or an integer 0..{_AMQP_SHORT_MAX}", value)


def _check_heartbeat(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not _is_number(value) or not 0 <= value <= _AMQP_SHORT_MAX:
        raise _fail(
            "HEARTBEAT",
            f"a number of seconds 0..{_AMQP_SHORT_MAX}, or 0 or null to disable it",
            value,
        )


def _check_serializer(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
    if value != "json":
        raise ConfigurationError(
            f"config key 'serializer': {value!r} is not supported; trioevents "
            "speaks 'json' only (nameko's default)"
        )


def _check_amqp_ssl(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(
            "AMQP_SSL",
            "null, a boolean or a mapping of ssl options (ca_certs, certfile, "
            "keyfile, cert_reqs, ...)",
            value,
        )


def _check_logging(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or value.get("version") != 1:
        raise _fail(
            "LOGGING", "null or a logging.config.dictConfig mapping (version: 1)", value
        )


def _check_extra(_: Any, __: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(
            f"Config.extra must be a mapping with string keys, got {value!r}"
        )


def _copy_mapping(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


# ---------------------------------------------------------------------- Config


@final
@attrs.frozen(kw_only=True)
class Config:
    """The configuration of a host, the CLI and the testing kit.

    Build it from nameko-style keys with :meth:`from_mapping` or
    :meth:`from_yaml`, or directly with the attribute names. Every value is
    checked; a wrong one raises :class:`~trioevents.ConfigurationError` naming the
    config key.

    Attributes
    ----------
    amqp_uri
        ``AMQP_URI``: the broker; ``memory://`` (or ``memory://NAME``) is the
        embedded broker.
    max_workers
        ``max_workers``: how many handlers of one service run at once.
    prefetch_count
        ``PREFETCH_COUNT``: unacked deliveries per consumer; ``None`` follows
        :attr:`max_workers`.
    heartbeat
        ``HEARTBEAT``: the AMQP heartbeat in seconds; ``0`` or ``None`` disables
        it (nameko passes ``None`` on to kombu, which disables it too).
    serializer
        ``serializer``: ``"json"``, the only codec.
    amqp_ssl
        ``AMQP_SSL``: ``None`` (plain), ``True`` (TLS with default settings) or
        nameko's mapping of ssl options (``ca_certs``, ``certfile``, ``keyfile``,
        ``cert_reqs``).
    shutdown_grace
        ``SHUTDOWN_GRACE``: seconds a graceful stop lets in-flight handlers run.
    parent_calls_tracked
        ``parent_calls_tracked``: parent call ids kept in a call id stack.
    publish_timeout
        ``PUBLISH_TIMEOUT``: seconds a dispatch waits for the broker's confirm;
        ``None`` waits for ever.
    connect_attempts
        ``CONNECT_ATTEMPTS``: how many times ``serve()`` tries to connect before
        it fails with :class:`~trioevents.BrokerUnavailable`. Once serving, a lost
        connection is retried for ever.
    reconnect_delay
        ``RECONNECT_DELAY``: seconds before the first reconnect; each failure
        doubles it (with jitter) up to :attr:`reconnect_max_delay`.
    reconnect_max_delay
        ``RECONNECT_MAX_DELAY``: the longest wait between two connection attempts.
    logging_config
        ``LOGGING``: a :func:`logging.config.dictConfig` mapping, or ``None``.
    max_message_size
        ``MAX_MESSAGE_SIZE``: the largest body sent or accepted, in bytes.
    max_json_depth
        ``MAX_JSON_DEPTH``: how deeply JSON arrays and objects may nest.
    extra
        Every other key, as given: application settings (nameko services keep
        theirs in the same file) and nameko keys trioevents does not use.
    """

    amqp_uri: str = attrs.field(default="memory://", validator=_check_amqp_uri)
    max_workers: int = attrs.field(
        default=10, validator=_int_at_least("max_workers", 1)
    )
    prefetch_count: int | None = attrs.field(default=None, validator=_check_prefetch)
    heartbeat: float | None = attrs.field(default=60, validator=_check_heartbeat)
    serializer: str = attrs.field(default="json", validator=_check_serializer)
    amqp_ssl: bool | Mapping[str, Any] | None = attrs.field(
        default=None, validator=_check_amqp_ssl, converter=_copy_mapping, hash=False
    )
    shutdown_grace: float = attrs.field(
        default=30, validator=_seconds("SHUTDOWN_GRACE")
    )
    parent_calls_tracked: int = attrs.field(
        default=10, validator=_int_at_least("parent_calls_tracked", 0)
    )
    publish_timeout: float | None = attrs.field(
        default=30, validator=_seconds("PUBLISH_TIMEOUT", optional=True, positive=True)
    )
    connect_attempts: int = attrs.field(
        default=5, validator=_int_at_least("CONNECT_ATTEMPTS", 1)
    )
    reconnect_delay: float = attrs.field(
        default=0.5, validator=_seconds("RECONNECT_DELAY")
    )
    reconnect_max_delay: float = attrs.field(
        default=30, validator=_seconds("RECONNECT_MAX_DELAY")
    )
    logging_config: Mapping[str, Any] | None = attrs.field(
        default=None, validator=_check_logging, converter=_copy_mapping, hash=False
    )
    max_message_size: int = attrs.field(
        default=16 * _MIB, validator=_int_at_least("MAX_MESSAGE_SIZE", 1)
    )
    max_json_depth: int = attrs.field(
        default=100, validator=_int_at_least("MAX_JSON_DEPTH", 1)
    )
    extra: Mapping[str, Any] = attrs.field(
        factory=dict, validator=_check_extra, converter=_copy_mapping, hash=False
    )

    @property
    def effective_prefetch_count(self) -> int:
        """:attr:`prefetch_count`, or :attr:`max_workers` when it is ``None``."""
        if self.prefetch_count is None:
            return self.max_workers
        return self.prefetch_count

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Self:
        """Build a config from nameko-style keys.

        Unknown keys are kept in :attr:`extra` and logged as a warning (with a
        hint when only the case differs from a known key); nameko keys trioevents
        does not use are kept there and logged at debug level.

        Raises
        ------
        ConfigurationError
            A value has the wrong type or is out of range (the message names the
            key), or a key is given twice (e.g. ``serializer`` and
            ``SERIALIZER``).
        """
        if not isinstance(mapping, Mapping):
            raise ConfigurationError(
                f"the config must be a mapping of keys to values, got "
                f"{type(mapping).__name__}"
            )
        kwargs: dict[str, Any] = {}
        given_as: dict[str, str] = {}
        extra: dict[str, Any] = {}
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"config keys must be strings, got {key!r}")
            attribute = _KEY_TO_ATTRIBUTE.get(key)
            if attribute is None:
                extra[key] = value
                _log_unused_key(key)
                continue
            if attribute in given_as:
                raise ConfigurationError(
                    f"config keys {given_as[attribute]!r} and {key!r} both set "
                    f"{_ATTRIBUTE_TO_KEY[attribute]!r}; keep one"
                )
            given_as[attribute] = key
            kwargs[attribute] = value
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str] | IO[str]) -> Self:
        """Build a config from YAML, with nameko's environment substitution.

        A plain scalar holding ``${VAR}`` or ``${VAR:default}`` (or any scalar
        tagged ``!env_var``) is expanded as nameko's ``env_var_constructor`` does:
        ``VAR`` from the environment, else the default (itself expanded, so
        ``${A:${B:x}}`` works), else the empty string; the result is then read as
        YAML, so ``${PORT:5672}`` is the integer 5672 and an unset ``${X}`` is
        ``null``. Quoted scalars without the tag are left alone, as in nameko.
        YAML is read with :func:`yaml.safe_load` semantics: no Python tags.

        Parameters
        ----------
        source
            A path (:class:`os.PathLike`, e.g. :class:`pathlib.Path`), an open
            text file, or the YAML text itself (a :class:`str` is always text).

        Raises
        ------
        ConfigurationError
            The file cannot be read, the YAML is invalid or not a mapping, or a
            value is wrong (see :meth:`from_mapping`).
        """
        where = "the config"
        if isinstance(source, os.PathLike):
            where = f"config file {os.fspath(source)!r}"
            try:
                with open(source, encoding="utf-8") as file:
                    text = file.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"cannot read {where}: {exc}") from exc
        elif isinstance(source, str):
            text = source
        else:
            where = f"config file {getattr(source, 'name', source)!r}"
            text = source.read()
        yaml = _import_yaml()
        try:
            loaded = yaml.load(text, Loader=_env_var_loader())
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{where} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            hint = (
                " (to read a file, pass a pathlib.Path)"
                if isinstance(source, str)
                else ""
            )
            raise ConfigurationError(
                f"{where} must be a YAML mapping of keys to values, got "
                f"{type(loaded).__name__}{hint}"
            )
        return cls.from_mapping(loaded)

    def to_mapping(self, *, mask_password: bool = False) -> dict[str, Any]:
        """Return the config with nameko's keys, :attr:`extra` included.

        Parameters
        ----------
        mask_password
            Hide the password of ``AMQP_URI`` (see :func:`masked_uri`), as
            ``show-config`` does.
        """
        result: dict[str, Any] = {}
        for attribute, key in _ATTRIBUTE_TO_KEY.items():
            value = getattr(self, attribute)
            result[key] = dict(value) if isinstance(value, Mapping) else value
        if mask_password:
            result["AMQP_URI"] = masked_uri(self.amqp_uri)
        for key, value in self.extra.items():
            result.setdefault(key, value)
        return result


#: attribute -> the key nameko writes (the one :meth:`Config.to_mapping` uses).
_ATTRIBUTE_TO_KEY: dict[str, str] = {
    "amqp_uri": "AMQP_URI",
    "max_workers": "max_workers",
    "prefetch_count": "PREFETCH_COUNT",
    "heartbeat": "HEARTBEAT",
    "serializer": "serializer",
    "amqp_ssl": "AMQP_SSL",
    "shutdown_grace": "SHUTDOWN_GRACE",
    "parent_calls_tracked": "parent_calls_tracked",
    "publish_timeout": "PUBLISH_TIMEOUT",
    "connect_attempts": "CONNECT_ATTEMPTS",
    "reconnect_delay": "RECONNECT_DELAY",
    "reconnect_max_delay": "RECONNECT_MAX_DELAY",
    "logging_config": "LOGGING",
    "max_message_size": "MAX_MESSAGE_SIZE",
    "max_json_depth": "MAX_JSON_DEPTH",
}
_KEY_TO_ATTRIBUTE: dict[str, str] = {
    **{key: attribute for attribute, key in _ATTRIBUTE_TO_KEY.items()},
    "SERIALIZER": "serializer",
    "PARENT_CALLS_TRACKED": "parent_calls_tracked",
}
# Keys nameko (2.x) reads that trioevents has no use for.
_NAMEKO_UNUSED_KEYS = frozenset(
    {
        "rpc_exchange",
        "WEB_SERVER_ADDRESS",
        "SERIALIZERS",
        "ACCEPT",
        "TRANSPORT_OPTIONS",
        "LOGIN_METHOD",
        "SERVICE_CONTAINER_CLS",
        "SERVICE_RUNNER_CLS",
    }
)
_KEYS_BY_LOWER = {key.lower(): key for key in _KEY_TO_ATTRIBUTE}


def _log_unused_key(key: str) -> None:
    if key in _NAMEKO_UNUSED_KEYS:
        logger.debug("config key %r is nameko's; trioevents does not use it", key)
        return
    close = _KEYS_BY_LOWER.get(key.lower())
    hint = f" (did you mean {close!r}? keys are case-sensitive)" if close else ""
    logger.warning("unknown config key %r%s; it is kept in Config.extra", key, hint)


# ------------------------------------------------------------- YAML and ${ENV}


def _import_yaml() -> Any:
    """Import PyYAML (untyped: it is only touched here, at the boundary)."""
    try:
        return importlib.import_module("yaml")
    except ImportError as exc:  # pragma: no cover - a dependency of trioevents
        raise ConfigurationError(
            "reading YAML config needs PyYAML: pip install pyyaml"
        ) from exc


_ENV_VAR_TAG = "!env_var"
# nameko's IMPLICIT_ENV_VAR_MATCHER: the plain scalars that get the tag.
_IMPLICIT_ENV_VAR = re.compile(r".*\$\{.*\}.*")


@functools.cache
def _env_var_loader() -> Any:
    """Return a SafeLoader subclass that expands ``${VAR:default}`` like nameko.

    A subclass, so the global PyYAML loaders are left as they are (nameko
    registers its constructor on them).
    """
    yaml = _import_yaml()

    def construct(loader: Any, node: Any) -> Any:
        raw = loader.construct_scalar(node)
        return yaml.safe_load(expand_env_vars(raw))

    loader_cls: Any = type("EnvVarSafeLoader", (yaml.SafeLoader,), {})
    loader_cls.add_constructor(_ENV_VAR_TAG, construct)
    loader_cls.add_implicit_resolver(_ENV_VAR_TAG, _IMPLICIT_ENV_VAR, None)
    return loader_cls


def expand_env_vars(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:default}`` in *text* (nameko's rules).

    ``VAR`` (no ``{``, ``}``, ``:`` or white space) is read from *environ*
    (:data:`os.environ` by default) and used as it is. If unset, the default is
    used, itself expanded, so defaults may hold ``${...}`` and braces; with no
    default the result is the empty string. Text that is not a well-formed
    ``${VAR...}`` is left as it is.
    """
    env = os.environ if environ is None else environ
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("${", pos)
        if start == -1:
            out.append(text[pos:])
            return "".join(out)
        parsed = _parse_reference(text, start + 2)
        if parsed is None:
            out.append(text[pos : start + 2])
            pos = start + 2
            continue
        name, default, end = parsed
        out.append(text[pos:start])
        value = env.get(name)
        if value is None:
            value = expand_env_vars(default, env) if default else ""
        out.append(value)
        pos = end


def _parse_reference(text: str, pos: int) -> tuple[str, str | None, int] | None:
    """Parse ``NAME[:default]}`` at *pos*; return name, default and end, or None."""
    name_end = pos
    while (
        name_end < len(text)
        and text[name_end] not in "{}:"
        and not text[name_end].isspace()
    ):
        name_end += 1
    if name_end == pos or name_end == len(text):
        return None
    name = text[pos:name_end]
    if text[name_end] == "}":
        return name, None, name_end + 1
    if text[name_end] != ":":
        return None
    depth = 0
    for index in range(name_end + 1, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return name, text[name_end + 1 : index], index + 1
            depth -= 1
    return None
