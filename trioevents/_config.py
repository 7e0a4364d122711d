"""Typed configuration with nameko's keys, read from a mapping, YAML or the environment.

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
``QUEUE_TYPE``            ``queue_type``            ``"classic"`` (or ``"quorum"``)
``QUORUM_DELIVERY_LIMIT`` ``quorum_delivery_limit`` ``20`` redeliveries
``FAILOVER_STRATEGY``     ``failover_strategy``     ``"round-robin"`` (or ``"shuffle"``)
``HTTP_ADDRESS``          ``http_address``          ``None`` (no operator HTTP endpoint)
``CONNECTION_NAME``       ``connection_name``       ``None`` (``trioevents:<services>@<host>:<pid>``)
========================  ========================  =======================================

``AMQP_URI`` may name several RabbitMQ nodes, as kombu's failover form
``amqp://u:p@rabbit1/;amqp://u:p@rabbit2/`` (what nameko config files hold) or
as a YAML list of URIs, which is joined into that form; ``FAILOVER_STRATEGY``
says in which order they are tried (see :ref:`failover`).

nameko spells ``serializer`` and ``parent_calls_tracked`` in lower case;
``SERIALIZER`` and ``PARENT_CALLS_TRACKED`` are accepted too. Any other key is
the application's own (nameko services keep theirs in the same file): it is kept
in :attr:`Config.extra` and logged at debug level, unless it is a near miss of a
known key (``AMQP_URL``, ``max_worker``, ``MAX_WORKERS``), which is logged as a
**warning** with a did-you-mean, through :mod:`logging` (logger
``trioevents.config``), not :mod:`warnings`.

:meth:`Config.load` stacks the sources: defaults < a YAML file < ``TRIOEVENTS_<KEY>``
environment variables (``TRIOEVENTS_AMQP_URI``, ``TRIOEVENTS_MAX_WORKERS``, ...).
Values that look secret (keys naming a password, secret, token, key,
credential, DSN; URIs with a password) are masked wherever a config is shown.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Final, Literal, final

import attrs

from ._configfile import (
    Layer,
    _env_var_loader as _env_var_loader,  # tests reach the loader here
    closest,
    environ_layer,
    expand_env_vars,
    yaml_layer,
)
from ._exceptions import ConfigurationError
from ._http import parse_http_address
from ._secrets import masked_repr as _masked_repr, masked_value
from ._uri import broker_uri_text, parse_broker_uri

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "FAILOVER_STRATEGIES",
    "Config",
    "FailoverStrategy",
    "LoadedConfig",
    "expand_env_vars",
]

logger = logging.getLogger("trioevents.config")

_MIB = 1024 * 1024
_AMQP_SHORT_MAX = 65535

#: ``FAILOVER_STRATEGY``: the order in which the addresses of ``AMQP_URI`` are
#: tried (kombu's names).
FailoverStrategy = Literal["round-robin", "shuffle"]
FAILOVER_STRATEGIES: Final[tuple[FailoverStrategy, ...]] = ("round-robin", "shuffle")

# ---------------------------------------------------------------- checking

#: Check a value; return what was expected when it is wrong, else ``None``.
Check = Callable[[Any], str | None]
_CHECK: Final = "trioevents.check"


@final
@attrs.frozen
class _Problem:
    """One thing wrong with a config: a key's value, or a key itself."""

    key: str
    expected: str = ""
    value: object = None
    #: The whole message, when it is not "expected ..., got ...".
    message: str | None = None

    def render(self, hidden: Mapping[str, str]) -> str:
        """The message; a value from the environment is named, not shown."""
        if self.message is not None:
            return self.message
        if self.key in hidden:
            shown = f"a value from {hidden[self.key]}"
        else:
            shown = repr(masked_value(self.value, self.key))
        return (
            f"config key {self.key!r}: expected {self.expected}, got {shown} "
            f"({type(self.value).__name__})"
        )


def _error(
    problems: Sequence[_Problem], hidden: Mapping[str, str]
) -> ConfigurationError:
    """One error listing every problem."""
    messages = [problem.render(hidden) for problem in problems]
    if len(messages) == 1:
        return ConfigurationError(messages[0])
    return ConfigurationError(f"{len(messages)} config errors: " + "; ".join(messages))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _int_at_least(low: int, high: int | None = None) -> Check:
    expected = f"an integer >= {low}" + (f" and <= {high}" if high else "")

    def check(value: Any) -> str | None:
        if not _is_int(value) or value < low or (high is not None and value > high):
            return expected
        return None

    return check


def _seconds(*, optional: bool = False, positive: bool = False) -> Check:
    expected = "a number of seconds " + ("> 0" if positive else ">= 0")
    if optional:
        expected += " or null"

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not _is_number(value) or value < 0 or (positive and value == 0):
            return expected
        return None

    return check


def _check_amqp_uri(value: Any) -> str | None:
    if isinstance(value, list | tuple):
        value = broker_uri_text(value)  # a ConfigurationError naming the item
    if not isinstance(value, str) or "://" not in value:
        return "a broker URI such as memory:// or amqp://host/, or a list of them"
    parse_broker_uri(value)  # a ConfigurationError, the URI masked
    return None


def _amqp_uri_text(value: Any) -> Any:
    """A list of addresses becomes kombu's ``;``-separated form; a bad one is
    left for the check to report."""
    if isinstance(value, list | tuple):
        try:
            return broker_uri_text(value)
        except ConfigurationError:
            return value
    return value


def _check_failover_strategy(value: Any) -> str | None:
    if value in FAILOVER_STRATEGIES:
        return None
    return " or ".join(repr(name) for name in FAILOVER_STRATEGIES)


def _check_prefetch(value: Any) -> str | None:
    if value is None or (_is_int(value) and 0 <= value <= _AMQP_SHORT_MAX):
        return None
    return f"null or an integer 0..{_AMQP_SHORT_MAX}"


def _check_heartbeat(value: Any) -> str | None:
    if value is None or (_is_number(value) and 0 <= value <= _AMQP_SHORT_MAX):
        return None
    return f"a number of seconds 0..{_AMQP_SHORT_MAX}, or 0 or null to disable it"


def _check_serializer(value: Any) -> str | None:
    if value == "json":
        return None
    return "'json' (nameko's default, the only serializer trioevents speaks)"


def _check_amqp_ssl(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or _is_str_mapping(value):
        return None
    return (
        "null, a boolean or a mapping of ssl options (ca_certs, certfile, keyfile, "
        "cert_reqs, ...)"
    )


def _check_logging(value: Any) -> str | None:
    if value is None or (isinstance(value, Mapping) and value.get("version") == 1):
        return None
    return "null or a logging.config.dictConfig mapping (version: 1)"


def _check_queue_type(value: Any) -> str | None:
    if isinstance(value, str) and value in ("classic", "quorum"):
        return None
    return "'classic' or 'quorum'"


def _check_http_address(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        parse_http_address(value)  # a ConfigurationError saying what is wrong
        return None
    return 'null or "[HOST]:PORT", such as ":9100" or "127.0.0.1:9100"'


def _check_connection_name(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip()):
        return None
    return "null or a non-empty string"


def _is_str_mapping(value: object) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)


def _problems(values: Mapping[str, Any]) -> list[_Problem]:
    """Check every attribute's value; return each problem (attribute -> value)."""
    problems: list[_Problem] = []
    for field in attrs.fields(Config):
        if field.name not in values or _CHECK not in field.metadata:
            continue
        key, value = _ATTRIBUTE_TO_KEY[field.name], values[field.name]
        try:
            expected = field.metadata[_CHECK](value)
        except ConfigurationError as exc:
            problems.append(_Problem(key, message=str(exc)))
            continue
        if expected is not None:
            problems.append(_Problem(key, expected, value))
    extra = values.get("extra", {})
    if not _is_str_mapping(extra):
        problems.append(
            _Problem(
                "extra",
                message=f"Config.extra must be a mapping with string keys, got "
                f"{_masked_repr(extra)}",
            )
        )
    else:
        problems.extend(
            _Problem(
                key,
                message=f"Config.extra holds the config key {key!r}: set "
                f"the attribute {_KEY_TO_ATTRIBUTE[key]!r} instead",
            )
            for key in extra
            if key in _KEY_TO_ATTRIBUTE
        )
    return problems


def _copy_mapping(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def _field(default: Any, check: Check, **kwargs: Any) -> Any:
    return attrs.field(default=default, metadata={_CHECK: check}, **kwargs)


def _mapping_field(default: Any, check: Check | None = None) -> Any:
    """A mapping-valued field: copied in, left out of the hash, masked in the repr."""
    return attrs.field(
        **({"factory": dict} if default is dict else {"default": default}),
        metadata={} if check is None else {_CHECK: check},
        converter=_copy_mapping,
        hash=False,
        repr=_masked_repr,
    )


# ---------------------------------------------------------------------- Config


@final
@attrs.frozen(kw_only=True)
class Config(Mapping[str, Any]):
    """The configuration of a host, the CLI and the testing kit.

    Build it from nameko-style keys with :meth:`from_mapping`, :meth:`from_yaml`
    or :meth:`load` (file and environment), or directly with the attribute
    names. Every value is checked; wrong ones raise one
    :class:`~trioevents.ConfigurationError` naming each key.

    A config is also a read-only mapping by nameko key, as a nameko extension
    reads ``self.container.config``: ``config["AMQP_URI"]``,
    ``config.get("SERVICE_IDENTIFIER")``, ``"DB_URI" in config``, ``keys()``,
    iteration. It holds every known key (with its default when not given) and
    the application's own keys (:attr:`extra`). An extension reaches it as
    ``self.service.config``.

    Its ``repr()`` masks secrets (see :meth:`to_mapping`).

    Attributes
    ----------
    amqp_uri
        ``AMQP_URI``: the broker; ``memory://`` (or ``memory://NAME``) is the
        embedded broker; ``amqp://``, ``amqps://`` (and kombu's ``pyamqp://``
        and ``librabbitmq://``) are RabbitMQ. Several RabbitMQ nodes are
        separated by ``;`` (kombu's failover form), or given as a list, which is
        joined into that form.
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
        ``CONNECT_ATTEMPTS``: how many times ``serve()`` tries to connect (each
        time to every node of ``AMQP_URI`` in turn) before it fails with
        :class:`~trioevents.BrokerUnavailable`. Once serving, a lost
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
    queue_type
        ``QUEUE_TYPE``: the type of the queues of reliable handlers (and of their
        retry and dead-letter queues): ``"classic"``, or ``"quorum"`` for
        queues replicated across a RabbitMQ cluster. A handler's ``queue_type=``
        overrides it; handlers without ``reliable_delivery`` stay classic.
    quorum_delivery_limit
        ``QUORUM_DELIVERY_LIMIT``: how many times a quorum queue redelivers a
        message (``x-delivery-limit``) before it moves it to the dead-letter
        queue, whatever the handler's ``requeue_on_error``.
    failover_strategy
        ``FAILOVER_STRATEGY``: the order in which the nodes of ``AMQP_URI`` are
        tried: ``"round-robin"`` (kombu's default: the first that answers, and
        after a loss the ones after it) or ``"shuffle"`` (a random order each
        round). See :ref:`failover`.
    http_address
        ``HTTP_ADDRESS``: where the host serves ``/healthz``, ``/readyz`` and
        ``/metrics`` for operators, ``"[HOST]:PORT"`` (``":9100"`` listens on
        every interface, ``"127.0.0.1:9100"`` on one); ``None`` serves nothing.
        Needs the ``http`` extra (see :doc:`operating`).
    connection_name
        ``CONNECTION_NAME``: the name RabbitMQ shows for the host's connections
        (the ``connection_name`` client property); ``None`` names them
        ``trioevents:<services>@<hostname>:<pid>``.
    extra
        Every other key, as given: application settings (nameko services keep
        theirs in the same file) and nameko keys trioevents does not use.
    """

    amqp_uri: str = _field(
        "memory://", _check_amqp_uri, repr=_masked_repr, converter=_amqp_uri_text
    )
    max_workers: int = _field(10, _int_at_least(1))
    prefetch_count: int | None = _field(None, _check_prefetch)
    heartbeat: float | None = _field(60, _check_heartbeat)
    serializer: str = _field("json", _check_serializer)
    amqp_ssl: bool | Mapping[str, Any] | None = _mapping_field(None, _check_amqp_ssl)
    shutdown_grace: float = _field(30, _seconds())
    parent_calls_tracked: int = _field(10, _int_at_least(0))
    publish_timeout: float | None = _field(30, _seconds(optional=True, positive=True))
    connect_attempts: int = _field(5, _int_at_least(1))
    reconnect_delay: float = _field(0.5, _seconds())
    reconnect_max_delay: float = _field(30, _seconds())
    logging_config: Mapping[str, Any] | None = _mapping_field(None, _check_logging)
    max_message_size: int = _field(16 * _MIB, _int_at_least(1))
    max_json_depth: int = _field(100, _int_at_least(1))
    queue_type: str = _field("classic", _check_queue_type)
    quorum_delivery_limit: int = _field(20, _int_at_least(1))
    failover_strategy: Literal["round-robin", "shuffle"] = _field(
        "round-robin", _check_failover_strategy
    )
    http_address: str | None = _field(None, _check_http_address)
    connection_name: str | None = _field(None, _check_connection_name)
    extra: Mapping[str, Any] = _mapping_field(dict)

    def __attrs_post_init__(self) -> None:
        values = {
            field.name: getattr(self, field.name) for field in attrs.fields(Config)
        }
        problems = _problems(values)
        if problems:
            raise _error(problems, {})

    # -- the read-only mapping, by nameko key

    def __getitem__(self, key: str) -> Any:
        attribute = _ATTRIBUTE_BY_KEY.get(key)
        if attribute is not None:
            return getattr(self, attribute)
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from _ATTRIBUTE_BY_KEY
        yield from self.extra

    def __len__(self) -> int:
        return len(_ATTRIBUTE_BY_KEY) + len(self.extra)

    @property
    def effective_prefetch_count(self) -> int:
        """:attr:`prefetch_count`, or :attr:`max_workers` when it is ``None``."""
        if self.prefetch_count is None:
            return self.max_workers
        return self.prefetch_count

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Self:
        """Build a config from nameko-style keys.

        Unknown keys are kept in :attr:`extra`: logged at debug level as the
        application's own, or as a warning with a did-you-mean when they are a
        near miss of a known key (``AMQP_URL``, ``max_worker``, ``MAX_WORKERS``).
        nameko keys trioevents does not use are kept there too.

        Raises
        ------
        ConfigurationError
            Listing every problem at once: a value with the wrong type or out of
            range (the message names the key, secrets masked), a key that is not
            a string, or a key given twice (e.g. ``serializer`` and
            ``SERIALIZER``).
        """
        return cls._build([Layer("the config", mapping)]).config

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str] | IO[str]) -> Self:
        """Build a config from YAML, with nameko's environment substitution.

        A plain scalar holding ``${VAR}`` or ``${VAR:default}`` (or any scalar
        tagged ``!env_var``) is expanded as nameko's ``env_var_constructor`` does:
        ``VAR`` from the environment, else the default (itself expanded, so
        ``${A:${B:x}}`` works), else the empty string; the result is then read as
        YAML, so ``${PORT:5672}`` is the integer 5672 and an unset ``${X}`` is
        ``null``. Unlike nameko, a result YAML would read as a mapping or a
        list, or cut short at a ``#`` (a comment), stays text, with a warning
        naming the line and the variables: a password such as ``ab: cd`` or
        ``abc #1`` arrives whole. Quoted scalars without the tag are left alone,
        as in nameko. YAML is read with :func:`yaml.safe_load` semantics: no
        Python tags.

        Errors name the source and, for invalid YAML, the line and column; they
        never show a value that came from the environment.

        Parameters
        ----------
        source
            A path (:class:`os.PathLike`, e.g. :class:`pathlib.Path`), an open
            text file, or the YAML text itself (a :class:`str` is always text).

        Raises
        ------
        ConfigurationError
            The file cannot be read, the YAML is invalid or not a mapping, or
            values are wrong (see :meth:`from_mapping`).
        """
        return cls._build([yaml_layer(source)]).config

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> Self:
        """Build a config as ``trioevents run`` does: defaults < file < environment.

        Each ``TRIOEVENTS_<KEY>`` environment variable sets the config key
        ``<KEY>`` (upper case: ``TRIOEVENTS_AMQP_URI``,
        ``TRIOEVENTS_MAX_WORKERS``, ``TRIOEVENTS_SERIALIZER``), over the file.
        ``AMQP_URI`` and ``serializer`` are taken as they are; other values are
        read as YAML (``8``, ``true``, ``null``, ``{ca_certs: ca.pem}``). An
        empty variable counts as unset. A plain ``AMQP_URI`` variable is not
        read (another program's may be set); write ``AMQP_URI: ${AMQP_URI}`` in
        the file to use it, as nameko does.

        Parameters
        ----------
        path
            A YAML config file (a :class:`str` is a file name here), or ``None``.
        environ
            The environment (default: :data:`os.environ`).

        Raises
        ------
        ConfigurationError
            As :meth:`from_yaml`; every problem of every source at once.
        """
        return cls._load(path, environ=environ).config

    @classmethod
    def _load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        flags: Layer | None = None,
    ) -> LoadedConfig:
        """:meth:`load`, then *flags* on top; say where each value came from."""
        layers: list[Layer] = []
        if path is not None:
            layers.append(yaml_layer(pathlib.Path(path)))
        layers.append(
            environ_layer(
                os.environ if environ is None else environ,
                _ATTRIBUTE_BY_KEY,
                text_keys=_TEXT_KEYS,
            )
        )
        if flags is not None:
            layers.append(flags)
        return cls._build(layers)

    @classmethod
    def _build(cls, layers: Sequence[Layer]) -> LoadedConfig:
        """Stack *layers* (lowest first) and check the result, every problem at once."""
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        sources: dict[str, str] = {}
        layer_of: dict[str, str] = {}
        hidden: dict[str, str] = {}
        problems: list[_Problem] = []
        for layer in layers:
            if not isinstance(layer.values, Mapping):
                raise ConfigurationError(
                    f"the config must be a mapping of keys to values, got "
                    f"{type(layer.values).__name__}"
                )
            given_as: dict[str, str] = {}
            for key, value in layer.values.items():
                if not isinstance(key, str):
                    problems.append(
                        _Problem(
                            str(key),
                            message=f"config keys must be strings, got {key!r}",
                        )
                    )
                    continue
                attribute = _KEY_TO_ATTRIBUTE.get(key)
                if attribute is None:
                    name = key
                    extra[key] = value
                    _log_unknown_key(key)
                elif attribute in given_as:
                    problems.append(
                        _Problem(
                            key,
                            message=f"config keys {given_as[attribute]!r} and {key!r} "
                            f"both set {_ATTRIBUTE_TO_KEY[attribute]!r}; keep one",
                        )
                    )
                    continue
                else:
                    name = _ATTRIBUTE_TO_KEY[attribute]
                    given_as[attribute] = key
                    kwargs[attribute] = value
                sources[name] = layer.source_of(key)
                layer_of[name] = layer.name
                if key in layer.hidden:
                    hidden[name] = layer.hidden[key]
                else:
                    hidden.pop(name, None)
        defaults = {
            field.name: field.default
            for field in attrs.fields(Config)
            if field.name != "extra"
        }
        problems += _problems({**defaults, **kwargs, "extra": extra})
        if problems:
            raise _error(problems, hidden)
        config = cls(**kwargs, extra=extra)
        used = set(layer_of.values())
        return LoadedConfig(
            config,
            {key: sources.get(key, "default") for key in config},
            tuple(layer.name for layer in reversed(layers) if layer.name in used),
        )

    def to_mapping(self, *, mask_secrets: bool = False) -> dict[str, Any]:
        """Return the config with nameko's keys, :attr:`extra` included.

        Parameters
        ----------
        mask_secrets
            Mask every secret-looking value, as ``show-config`` does: the
            password of ``AMQP_URI`` and of any other URI, and the values of keys
            naming a password, secret, token, key, credential or DSN
            (``DB_PASSWORD``, ``API_KEY``), at any depth.
        """
        result = {key: _copy_mapping(value) for key, value in self.items()}
        if mask_secrets:
            return {key: masked_value(value, key) for key, value in result.items()}
        return result


@final
@attrs.frozen
class LoadedConfig:
    """A config and where each of its values came from (``show-config``).

    Attributes
    ----------
    config
        The config.
    sources
        Every key of :attr:`config` -> ``"default"``, or the source that set it:
        a file name, an environment variable, a command-line flag.
    layers
        The sources that set at least one key, the strongest first.
    """

    config: Config
    sources: Mapping[str, str]
    layers: tuple[str, ...]


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
    "queue_type": "QUEUE_TYPE",
    "quorum_delivery_limit": "QUORUM_DELIVERY_LIMIT",
    "failover_strategy": "FAILOVER_STRATEGY",
    "http_address": "HTTP_ADDRESS",
    "connection_name": "CONNECTION_NAME",
}
#: nameko key -> attribute: the keys a :class:`Config` mapping holds.
_ATTRIBUTE_BY_KEY: dict[str, str] = {
    key: attribute for attribute, key in _ATTRIBUTE_TO_KEY.items()
}
#: every accepted spelling -> attribute.
_KEY_TO_ATTRIBUTE: dict[str, str] = {
    **_ATTRIBUTE_BY_KEY,
    "SERIALIZER": "serializer",
    "PARENT_CALLS_TRACKED": "parent_calls_tracked",
}
#: Keys whose value an environment variable gives as it is, never read as YAML.
_TEXT_KEYS: Final = frozenset(
    {"AMQP_URI", "serializer", "HTTP_ADDRESS", "CONNECTION_NAME"}
)
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


def _log_unknown_key(key: str) -> None:
    """A near miss of a known key is a warning; anything else is the application's."""
    if key in _NAMEKO_UNUSED_KEYS:
        logger.debug("config key %r is nameko's; trioevents does not use it", key)
        return
    near = closest(key, _KEY_TO_ATTRIBUTE)
    if near is None:
        logger.debug("config key %r is the application's; kept in Config.extra", key)
        return
    hint = " (keys are case-sensitive)" if near.lower() == key.lower() else ""
    logger.warning(
        "unknown config key %r: did you mean %r?%s It is kept in Config.extra and "
        "does not set %r",
        key,
        near,
        hint,
        near,
    )
