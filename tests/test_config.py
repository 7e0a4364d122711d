"""Typed configuration with nameko's keys (``trioevents._config``)."""

from __future__ import annotations

import collections.abc
import io
import logging
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from trioevents import (
    Config,
    ConfigurationError,
    DependencyProvider,
    ServiceHost,
    WorkerContext,
    event_handler,
)
from trioevents._config import _env_var_loader, expand_env_vars
from trioevents._configfile import Layer
from trioevents._secrets import is_secret_key
from trioevents._uri import parse_broker_uri

from .support.detonator import detonations, yaml_document

if TYPE_CHECKING:
    from pathlib import Path

NAMEKO_CONFIG = """\
AMQP_URI: amqp://guest:guest@localhost:5672/
max_workers: 5
PREFETCH_COUNT: 20
HEARTBEAT: 30
serializer: json
AMQP_SSL:
    ca_certs: /etc/ssl/ca.pem
    cert_reqs: 2
parent_calls_tracked: 4
rpc_exchange: nameko-rpc
WEB_SERVER_ADDRESS: 0.0.0.0:8000
LOGGING:
    version: 1
    handlers:
        console:
            class: logging.StreamHandler
    root:
        level: INFO
        handlers: [console]
"""


def test_defaults() -> None:
    config = Config()
    assert config.amqp_uri == "memory://"
    assert config.max_workers == 10
    assert config.prefetch_count is None
    assert config.heartbeat == 60
    assert config.serializer == "json"
    assert config.amqp_ssl is None
    assert config.shutdown_grace == 30
    assert config.parent_calls_tracked == 10
    assert config.publish_timeout == 30
    assert config.logging_config is None
    assert config.max_message_size == 16 * 1024 * 1024
    assert config.max_json_depth == 100
    assert config.queue_type == "classic"
    assert config.quorum_delivery_limit == 20
    assert config.extra == {}


def test_an_empty_mapping_gives_the_defaults() -> None:
    assert Config.from_mapping({}) == Config()


@pytest.mark.parametrize(
    ("key", "attribute", "value"),
    [
        ("AMQP_URI", "amqp_uri", "amqp://rabbit/"),
        ("max_workers", "max_workers", 3),
        ("PREFETCH_COUNT", "prefetch_count", 7),
        ("HEARTBEAT", "heartbeat", 15),
        ("serializer", "serializer", "json"),
        ("AMQP_SSL", "amqp_ssl", {"certfile": "c.pem"}),
        ("SHUTDOWN_GRACE", "shutdown_grace", 2.5),
        ("parent_calls_tracked", "parent_calls_tracked", 3),
        ("PUBLISH_TIMEOUT", "publish_timeout", 5),
        ("LOGGING", "logging_config", {"version": 1}),
        ("MAX_MESSAGE_SIZE", "max_message_size", 1024),
        ("MAX_JSON_DEPTH", "max_json_depth", 20),
        ("QUEUE_TYPE", "queue_type", "quorum"),
        ("QUORUM_DELIVERY_LIMIT", "quorum_delivery_limit", 5),
    ],
)
def test_nameko_keys_set_their_attributes(key: str, attribute: str, value: Any) -> None:
    assert getattr(Config.from_mapping({key: value}), attribute) == value


@pytest.mark.parametrize(
    ("key", "attribute", "value"),
    [
        ("SERIALIZER", "serializer", "json"),
        ("PARENT_CALLS_TRACKED", "parent_calls_tracked", 2),
    ],
)
def test_upper_case_spellings_are_accepted(
    key: str, attribute: str, value: Any
) -> None:
    assert getattr(Config.from_mapping({key: value}), attribute) == value


def test_a_key_given_in_both_spellings_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'serializer' and 'SERIALIZER'"):
        Config.from_mapping({"serializer": "json", "SERIALIZER": "json"})


def test_prefetch_follows_max_workers_unless_set() -> None:
    assert Config(max_workers=4).effective_prefetch_count == 4
    assert Config(max_workers=4, prefetch_count=9).effective_prefetch_count == 9


@pytest.mark.parametrize(
    "key",
    ["DB_URIS", "SERVICE_IDENTIFIER", "HEARTBEAT_INTERVAL", "AMQP_USER", "API_URI"],
)
def test_application_keys_are_kept_and_logged_at_debug_level(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """nameko services keep their own keys in the config file: no warning per run."""
    with caplog.at_level(logging.DEBUG, logger="trioevents.config"):
        config = Config.from_mapping({key: {"orders": "sqlite://"}})
    assert config.extra == {key: {"orders": "sqlite://"}}
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.DEBUG,
            f"config key {key!r} is the application's; kept in Config.extra",
        )
    ]


@pytest.mark.parametrize(
    ("key", "known"),
    [
        ("AMQP_URL", "AMQP_URI"),
        ("max_worker", "max_workers"),
        ("MAX_WORKERS", "max_workers"),
        ("Heartbeat", "HEARTBEAT"),
        ("PUBLISH_TIMEOUTS", "PUBLISH_TIMEOUT"),
        ("MAX_MSG_SIZE", "MAX_MESSAGE_SIZE"),
    ],
)
def test_a_near_miss_of_a_known_key_is_a_warning_with_a_did_you_mean(
    key: str, known: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trioevents.config"):
        config = Config.from_mapping({key: 3})
    assert config == Config(extra={key: 3})
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"unknown config key {key!r}: did you mean {known!r}?" in record.getMessage()


def test_a_key_differing_only_in_case_says_keys_are_case_sensitive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="trioevents.config"):
        Config.from_mapping({"amqp_uri": "amqp://rabbit/"})
    assert "did you mean 'AMQP_URI'? (keys are case-sensitive)" in caplog.text


def test_every_config_error_is_reported_at_once() -> None:
    mapping: dict[Any, Any] = {
        "max_workers": "lots",
        "HEARTBEAT": -1,
        1: "one",
        "serializer": "json",
        "SERIALIZER": "json",
        "AMQP_URI": "redis://u:secret@host/",
        "SHUTDOWN_GRACE": 5,
    }
    with pytest.raises(ConfigurationError) as caught:
        Config.from_mapping(mapping)
    message = str(caught.value)
    assert message.startswith("5 config errors: ")
    for part in [
        "config key 'max_workers': expected an integer >= 1, got 'lots' (str)",
        "config key 'HEARTBEAT': expected a number of seconds",
        "config keys must be strings, got 1",
        "config keys 'serializer' and 'SERIALIZER' both set 'serializer'",
        "AMQP_URI 'redis://u:****@host/' has an unsupported scheme",
    ]:
        assert part in message
    assert "secret" not in message


def test_direct_construction_reports_every_error_at_once() -> None:
    with pytest.raises(ConfigurationError, match=r"^2 config errors: ") as caught:
        Config(max_workers=0, heartbeat=-1)
    assert "'max_workers'" in str(caught.value)
    assert "'HEARTBEAT'" in str(caught.value)


def test_nameko_keys_trioevents_does_not_use_are_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="trioevents.config"):
        config = Config.from_mapping({"rpc_exchange": "nameko-rpc"})
    assert config.extra == {"rpc_exchange": "nameko-rpc"}
    assert caplog.records == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AMQP_URI", 5),
        ("AMQP_URI", "localhost"),
        ("max_workers", "10"),
        ("max_workers", 0),
        ("max_workers", True),
        ("PREFETCH_COUNT", -1),
        ("PREFETCH_COUNT", 70000),
        ("HEARTBEAT", "60"),
        ("HEARTBEAT", -1),
        ("AMQP_SSL", "yes"),
        ("AMQP_SSL", {1: 2}),
        ("SHUTDOWN_GRACE", -1),
        ("SHUTDOWN_GRACE", float("inf")),
        ("parent_calls_tracked", -1),
        ("PUBLISH_TIMEOUT", 0),
        ("LOGGING", {"handlers": {}}),
        ("LOGGING", "INFO"),
        ("MAX_MESSAGE_SIZE", 0),
        ("MAX_JSON_DEPTH", 1.5),
        ("QUEUE_TYPE", "stream"),
        ("QUEUE_TYPE", "Quorum"),
        ("QUORUM_DELIVERY_LIMIT", 0),
        ("QUORUM_DELIVERY_LIMIT", "20"),
    ],
)
def test_a_wrong_value_is_refused_naming_its_key(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"config key '{key}'"):
        Config.from_mapping({key: value})


@pytest.mark.parametrize("value", ["pickle", "yaml", "msgpack", "JSON"])
def test_only_the_json_serializer_is_supported(value: str) -> None:
    with pytest.raises(ConfigurationError, match="config key 'serializer'"):
        Config.from_mapping({"serializer": value})


def test_optional_values_accept_null() -> None:
    config = Config.from_mapping(
        {"PREFETCH_COUNT": None, "HEARTBEAT": None, "PUBLISH_TIMEOUT": None}
    )
    assert (config.prefetch_count, config.heartbeat, config.publish_timeout) == (
        None,
        None,
        None,
    )


def test_direct_construction_checks_values_too() -> None:
    with pytest.raises(ConfigurationError, match="'max_workers'"):
        Config(max_workers=0)


def test_the_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.max_workers = 3  # type: ignore[misc]


def test_mappings_are_copied_in() -> None:
    ssl = {"certfile": "c.pem"}
    config = Config.from_mapping({"AMQP_SSL": ssl})
    ssl["certfile"] = "other.pem"
    assert config.amqp_ssl == {"certfile": "c.pem"}


def test_from_mapping_refuses_what_is_not_a_mapping() -> None:
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        Config.from_mapping(["AMQP_URI"])  # type: ignore[arg-type]


def test_from_mapping_refuses_keys_that_are_not_strings() -> None:
    with pytest.raises(ConfigurationError, match="keys must be strings"):
        Config.from_mapping({1: "x"})  # type: ignore[dict-item]


def test_to_mapping_uses_nameko_keys_and_round_trips() -> None:
    config = Config.from_mapping(
        {"AMQP_URI": "amqp://u:p@h/", "max_workers": 3, "DB": "x"}
    )
    mapping = config.to_mapping()
    assert mapping["AMQP_URI"] == "amqp://u:p@h/"
    assert mapping["max_workers"] == 3
    assert mapping["serializer"] == "json"
    assert mapping["parent_calls_tracked"] == 10
    assert mapping["DB"] == "x"
    assert Config.from_mapping(mapping) == config


def test_to_mapping_can_mask_the_password() -> None:
    config = Config(amqp_uri="amqp://guest:secret@rabbit:5672/")
    assert config.to_mapping(mask_secrets=True)["AMQP_URI"] == (
        "amqp://guest:****@rabbit:5672/"
    )


SECRETS = {
    "DB_PASSWORD": "hunter2",
    "DB_URI": "postgres://orders:pw-in-uri@db/orders",
    "stripe": {"api_key": "sk_live_1", "public": "pk_live_2"},
    "SENTRY_DSN": "https://dsn-key@sentry.example/1",
    "tokens": ["tok-1", "tok-2"],
    "LOGIN": "guest:pw-typo@rabbit/",
    "EMPTY_PASSWORD": "",
    "USE_TOKEN": True,
}
HIDDEN = ["secret", "hunter2", "pw-in-uri", "sk_live_1", "dsn-key", "tok-1", "pw-typo"]


def test_to_mapping_can_mask_every_secret() -> None:
    config = Config(amqp_uri="amqp://guest:secret@rabbit/", extra=SECRETS)
    shown = config.to_mapping(mask_secrets=True)
    assert not [word for word in HIDDEN if word in repr(shown)]
    assert shown["DB_PASSWORD"] == "****"
    assert shown["DB_URI"] == "postgres://orders:****@db/orders"
    assert shown["stripe"] == {"api_key": "****", "public": "pk_live_2"}
    assert shown["tokens"] == ["****", "****"]
    assert (shown["EMPTY_PASSWORD"], shown["USE_TOKEN"]) == ("", True)
    assert config.to_mapping()["DB_PASSWORD"] == "hunter2"


def test_the_repr_masks_every_secret() -> None:
    config = Config(
        amqp_uri="amqp://guest:secret@rabbit/",
        amqp_ssl={"keyfile": "k.pem", "password": "hunter2"},
        extra=SECRETS,
    )
    text = repr(config)
    assert not [word for word in HIDDEN if word in text]
    assert "amqp_uri='amqp://guest:****@rabbit/'" in text
    assert "'keyfile': 'k.pem'" in text


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("DB_PASSWORD", True),
        ("dbPassword", True),
        ("DB_PASS", True),
        ("client_secret", True),
        ("AUTH_TOKEN", True),
        ("api_key", True),
        ("privateKey", True),
        ("aws_credentials", True),
        ("SENTRY_DSN", True),
        ("keyfile", False),
        ("MAX_KEYS", False),
        ("BYPASS_CACHE", False),
        ("AMQP_URI", False),
        ("SERVICE_IDENTIFIER", False),
    ],
)
def test_secret_looking_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AMQP_SSL", {"password": "hunter2", 1: 2}),
        ("LOGGING", {"handlers": {"mail": {"credentials": ["u", "hunter2"]}}}),
        ("AMQP_URI", "guest:hunter2@rabbit/"),
        ("AMQP_URI", "amqp//guest:hunter2@rabbit/"),
        ("AMQP_URI", "amqp://guest:hunter2@rabbit:99999/"),
    ],
)
def test_errors_mask_secrets(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Config.from_mapping({key: value})
    assert "hunter2" not in str(caught.value)
    assert "****" in str(caught.value)


def test_extra_may_not_hold_a_config_key() -> None:
    with pytest.raises(ConfigurationError, match="set the attribute 'max_workers'"):
        Config(extra={"max_workers": 3})


# --------------------------------------------------------- a read-only mapping


def test_config_is_a_read_only_mapping_by_nameko_key() -> None:
    """As nameko extensions read ``self.container.config``."""
    config = Config.from_mapping(
        {"AMQP_URI": "amqp://rabbit/", "max_workers": 3, "SERVICE_IDENTIFIER": "web-1"}
    )
    assert isinstance(config, collections.abc.Mapping)
    assert config["AMQP_URI"] == "amqp://rabbit/"
    assert config["max_workers"] == 3
    assert config["HEARTBEAT"] == 60  # the default
    assert config["SERVICE_IDENTIFIER"] == "web-1"
    assert config.get("SERVICE_IDENTIFIER") == "web-1"
    assert config.get("NOPE", "default") == "default"
    assert "SERVICE_IDENTIFIER" in config
    assert "amqp_uri" not in config  # keys are nameko's, not attribute names
    with pytest.raises(KeyError):
        config["NOPE"]
    assert list(config)[:3] == ["AMQP_URI", "max_workers", "PREFETCH_COUNT"]
    assert list(config)[-1] == "SERVICE_IDENTIFIER"
    # Every field but extra is a key, and SERVICE_IDENTIFIER is one more.
    assert len(config) == len(list(config.keys())) == len(attrs.fields(Config))
    assert dict(config.items())["LOGGING"] is None
    assert not hasattr(config, "__setitem__")
    assert Config.from_mapping(config) == config
    assert hash(config) == hash(Config.from_mapping(config))
    assert config != dict(config)


async def test_an_extension_reads_the_config_as_nameko_does(memory_uri: str) -> None:
    """``self.service.config['SERVICE_IDENTIFIER']``, as nameko's ``self.container.config``."""
    seen: list[object] = []

    class Identified(DependencyProvider[str]):
        async def setup(self) -> None:
            config = self.service.config
            seen.append(config["SERVICE_IDENTIFIER"])
            seen.append(config.get("REGION", "eu"))
            seen.append("AMQP_URI" in config)

        def get_dependency(self, worker_ctx: WorkerContext) -> str:
            return str(self.service.config["SERVICE_IDENTIFIER"])

    class Service:
        name = "identified"
        identity = Identified()

        @event_handler("src", "ping")
        async def on_ping(self, payload: object) -> None: ...

    host = ServiceHost([Service], {"AMQP_URI": memory_uri, "SERVICE_IDENTIFIER": "n1"})
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        await host.stop()
    assert seen == ["n1", "eu", True]


# ------------------------------------------------------------------- YAML


def test_a_nameko_config_file_loads_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(NAMEKO_CONFIG)
    with caplog.at_level(logging.WARNING, logger="trioevents.config"):
        config = Config.from_yaml(path)
    assert config.amqp_uri == "amqp://guest:guest@localhost:5672/"
    assert config.max_workers == 5
    assert config.prefetch_count == 20
    assert config.heartbeat == 30
    assert config.amqp_ssl == {"ca_certs": "/etc/ssl/ca.pem", "cert_reqs": 2}
    assert config.parent_calls_tracked == 4
    assert config.logging_config is not None
    assert config.logging_config["root"]["level"] == "INFO"
    assert caplog.records == []


def test_from_yaml_reads_an_open_file() -> None:
    assert Config.from_yaml(io.StringIO("max_workers: 2\n")).max_workers == 2


def test_an_empty_yaml_document_gives_the_defaults() -> None:
    assert Config.from_yaml("") == Config()


def test_yaml_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"pass a pathlib\.Path"):
        Config.from_yaml("config.yaml")


def test_invalid_yaml_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not valid YAML") as info:
        Config.from_yaml("max_workers: [1,")
    assert info.value.__cause__ is not None


def test_yaml_python_tags_are_refused_by_a_safe_loader() -> None:
    """The loader is a SafeLoader: a tag that would run code is invalid YAML."""
    yaml = pytest.importorskip("yaml")
    assert issubclass(_env_var_loader(), yaml.SafeLoader)
    detonations.clear()
    for document in (
        "x: !!python/object/apply:os.getcwd []\n",
        yaml_document("config", key="AMQP_URI"),
    ):
        with pytest.raises(ConfigurationError, match="not valid YAML"):
            Config.from_yaml(document)
    assert detonations == []


def test_a_yaml_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("AMQP_URI: memory://\nmax_workers: 2\nLOGGING: [1,\n")
    with pytest.raises(ConfigurationError) as caught:
        Config.from_yaml(path)
    message = str(caught.value)
    assert message.startswith(f"config file {str(path)!r}, line 4, column 1: ")
    assert "not valid YAML: expected the node content" in message
    assert "<unicode string>" not in message
    assert "\n" not in message


def test_a_yaml_error_in_text_names_the_line() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Config.from_yaml("a: 1\nb:\tc\n\x07: x\n")
    assert str(caught.value).startswith("the config, line ")
    assert "<unicode string>" not in str(caught.value)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        Config.from_yaml(tmp_path / "missing.yaml")


def test_wrong_values_in_yaml_name_the_key() -> None:
    with pytest.raises(ConfigurationError, match="config key 'max_workers'"):
        Config.from_yaml("max_workers: many\n")


def test_env_vars_are_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TE_RABBIT_HOST", "rabbit.internal")
    config = Config.from_yaml("AMQP_URI: amqp://guest:guest@${TE_RABBIT_HOST}/\n")
    assert config.amqp_uri == "amqp://guest:guest@rabbit.internal/"


def test_env_var_defaults_apply_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TE_UNSET_HOST", raising=False)
    config = Config.from_yaml("AMQP_URI: amqp://${TE_UNSET_HOST:localhost}:5672/\n")
    assert config.amqp_uri == "amqp://localhost:5672/"


def test_substituted_values_are_read_as_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """As nameko: ``${MAX:8}`` is the integer 8, and so is an env value of "8"."""
    monkeypatch.delenv("TE_MAX", raising=False)
    assert Config.from_yaml("max_workers: ${TE_MAX:8}\n").max_workers == 8
    monkeypatch.setenv("TE_MAX", "3")
    assert Config.from_yaml("max_workers: ${TE_MAX:8}\n").max_workers == 3


def test_an_unset_env_var_without_default_is_null(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TE_UNSET", raising=False)
    assert Config.from_yaml("PREFETCH_COUNT: ${TE_UNSET}\n").prefetch_count is None


def test_defaults_may_nest_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TE_A", raising=False)
    monkeypatch.setenv("TE_B", "4")
    assert Config.from_yaml("max_workers: ${TE_A:${TE_B:1}}\n").max_workers == 4


def test_quoted_scalars_are_substituted_only_when_tagged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TE_HOST", "rabbit")
    config = Config.from_yaml('plain: "${TE_HOST}"\ntagged: !env_var "${TE_HOST}"\n')
    assert config.extra == {"plain": "${TE_HOST}", "tagged": "rabbit"}


def test_an_env_value_is_never_shown_in_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TE_MAX", "hunter2")
    monkeypatch.setenv("TE_PASSWORD", "hunter3")
    with pytest.raises(ConfigurationError) as caught:
        Config.from_yaml(
            "max_workers: ${TE_MAX}\n"
            "HEARTBEAT: x${TE_PASSWORD}y\n"
            "SHUTDOWN_GRACE: lots\n"
        )
    message = str(caught.value)
    assert "hunter" not in message
    assert (
        "config key 'max_workers': expected an integer >= 1, got a value from "
        "${TE_MAX} (str)"
    ) in message
    assert "got a value from ${TE_PASSWORD} (str)" in message
    assert "got 'lots' (str)" in message  # written in the file: shown


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("ab: cd", "YAML would read as a mapping"),
        ("abc #1", "a '#' would cut short"),
        ("a: [b", "is not valid YAML"),
    ],
)
def test_an_expanded_value_stays_whole_text(
    password: str,
    why: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """nameko reads ``ab: cd`` as a mapping and cuts ``abc #1`` to ``abc``: not here."""
    monkeypatch.setenv("TE_PASSWORD", password)
    with caplog.at_level(logging.WARNING, logger="trioevents.config"):
        config = Config.from_yaml(
            "max_workers: 2\nDB_URI: postgres://app:${TE_PASSWORD}@db/orders\n"
        )
    assert config["DB_URI"] == f"postgres://app:{password}@db/orders"
    [record] = caplog.records
    assert record.getMessage() == (
        f"the config, line 2: ${{TE_PASSWORD}} expands to text that {why}"
        + record.getMessage().partition(why)[2]
    )
    assert "kept as text" in record.getMessage()
    assert password not in caplog.text


def test_a_password_yaml_would_read_as_a_mapping_is_no_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """nameko reads it as ``{'amqp://guest:ab': 'cd@rabbit/'}``; the error showed it."""
    monkeypatch.setenv("TE_PASSWORD", "ab: cd")
    with caplog.at_level(logging.WARNING, logger="trioevents.config"):
        config = Config.from_yaml("AMQP_URI: amqp://guest:${TE_PASSWORD}@rabbit/\n")
    assert config.amqp_uri == "amqp://guest:ab: cd@rabbit/"
    [address] = parse_broker_uri(config.amqp_uri).addresses
    assert (address.host, address.password) == ("rabbit", "ab: cd")
    assert "${TE_PASSWORD} expands to text that YAML would read as a mapping" in (
        caplog.text
    )


def test_a_hash_does_not_empty_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TE_DB_PASSWORD", "#not-a-comment")
    config = Config.from_yaml("DB_PASSWORD: ${TE_DB_PASSWORD}\n")
    assert config["DB_PASSWORD"] == "#not-a-comment"


def test_env_var_values_are_used_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TE_OUTER", "${TE_INNER}")
    monkeypatch.setenv("TE_INNER", "no")
    assert expand_env_vars("${TE_OUTER}") == "${TE_INNER}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${X}", "x"),
        ("a-${X}-b", "a-x-b"),
        ("${MISSING}", ""),
        ("${MISSING:}", ""),
        ("${MISSING:d}", "d"),
        ("${MISSING:a:b}", "a:b"),
        ("${MISSING:{braces}}", "{braces}"),
        ("${MISSING:${X}}", "x"),
        ("${MISSING:${ALSO_MISSING:deep}}", "deep"),
        ("${ X}", "${ X}"),
        ("${X", "${X"),
        ("${}", "${}"),
        ("$X", "$X"),
    ],
)
def test_expand_env_vars(text: str, expected: str) -> None:
    assert expand_env_vars(text, {"X": "x"}) == expected


# ------------------------------------------------------ file < environment


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("AMQP_URI: amqp://file/\nmax_workers: 2\nHEARTBEAT: 10\nDB: x\n")
    environ = {"TRIOEVENTS_AMQP_URI": "amqp://env/", "TRIOEVENTS_MAX_WORKERS": "4"}
    config = Config.load(path, environ=environ)
    assert (config.amqp_uri, config.max_workers) == ("amqp://env/", 4)
    assert (config.heartbeat, config["DB"]) == (10, "x")
    assert Config.load(str(path), environ={}).amqp_uri == "amqp://file/"


@pytest.mark.parametrize(
    ("variable", "text", "key", "value"),
    [
        ("TRIOEVENTS_AMQP_URI", "amqp://u:p@rabbit/ #2", "AMQP_URI", "amqp://u:p@rabbit/ #2"),
        ("TRIOEVENTS_AMQP_URI", "pyamqp://guest:guest@localhost", "AMQP_URI", "pyamqp://guest:guest@localhost"),
        ("TRIOEVENTS_MAX_WORKERS", "4", "max_workers", 4),
        ("TRIOEVENTS_PREFETCH_COUNT", "null", "PREFETCH_COUNT", None),
        ("TRIOEVENTS_HEARTBEAT", "2.5", "HEARTBEAT", 2.5),
        ("TRIOEVENTS_AMQP_SSL", "true", "AMQP_SSL", True),
        ("TRIOEVENTS_AMQP_SSL", "{ca_certs: /etc/ca.pem}", "AMQP_SSL", {"ca_certs": "/etc/ca.pem"}),
        ("TRIOEVENTS_SERIALIZER", "json", "serializer", "json"),
        ("TRIOEVENTS_PARENT_CALLS_TRACKED", "3", "parent_calls_tracked", 3),
        ("TRIOEVENTS_SHUTDOWN_GRACE", "5", "SHUTDOWN_GRACE", 5),
    ],
)  # fmt: skip
def test_each_config_key_has_an_environment_variable(
    variable: str, text: str, key: str, value: object
) -> None:
    assert Config.load(environ={variable: text})[key] == value


def test_an_empty_environment_variable_counts_as_unset() -> None:
    assert Config.load(environ={"TRIOEVENTS_AMQP_URI": ""}).amqp_uri == "memory://"


def test_a_plain_amqp_uri_variable_is_not_read() -> None:
    """Another program's ``AMQP_URI`` must not redirect a host: ``${AMQP_URI}`` does."""
    environ = {"AMQP_URI": "amqp://theirs/"}
    assert Config.load(environ=environ).amqp_uri == "memory://"


def test_a_near_miss_environment_variable_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {
        "TRIOEVENTS_AMQP_URL": "amqp://rabbit/",
        "trioevents_max_workers": "3",
        "TRIOEVENTS_NAMEKO_PYTHON": "/usr/bin/python",  # not a setting: not ours
        "TRIOEVENTS_RABBIT_API_URI": "http://rabbit:15672/api/",
    }
    with caplog.at_level(logging.DEBUG, logger="trioevents.config"):
        config = Config.load(environ=environ)
    assert config == Config()
    assert [r.getMessage() for r in caplog.records] == [
        "environment variable TRIOEVENTS_AMQP_URL is not a trioevents setting; did "
        "you mean TRIOEVENTS_AMQP_URI? (names are case-sensitive)",
        "environment variable trioevents_max_workers is not a trioevents setting; "
        "did you mean TRIOEVENTS_MAX_WORKERS? (names are case-sensitive)",
    ]


def test_an_environment_value_is_never_shown_in_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("SHUTDOWN_GRACE: lots\n")
    environ = {
        "TRIOEVENTS_MAX_WORKERS": "hunter2",
        "TRIOEVENTS_AMQP_URI": "localhost:hunter3",
    }
    with pytest.raises(ConfigurationError) as caught:
        Config.load(path, environ=environ)
    message = str(caught.value)
    assert message.startswith("3 config errors: ")
    assert "hunter" not in message
    assert "got a value from $TRIOEVENTS_MAX_WORKERS (str)" in message
    assert "got a value from $TRIOEVENTS_AMQP_URI (str)" in message
    assert "config key 'SHUTDOWN_GRACE'" in message


def test_load_says_where_each_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("AMQP_URI: amqp://file/\nmax_workers: 2\nAPP: 1\n")
    loaded = Config._load(
        path,
        environ={"TRIOEVENTS_MAX_WORKERS": "4"},
        flags=Layer("--broker", {"AMQP_URI": "amqp://flag/"}),
    )
    assert loaded.config.amqp_uri == "amqp://flag/"
    assert loaded.sources["AMQP_URI"] == "--broker"
    assert loaded.sources["max_workers"] == "TRIOEVENTS_MAX_WORKERS"
    assert loaded.sources["APP"] == str(path)
    assert loaded.sources["HEARTBEAT"] == "default"
    assert loaded.layers == ("--broker", "environment", str(path))
    assert set(loaded.sources) == set(loaded.config)


# ------------------------------------------- several broker addresses (#13)

FAILOVER_YAML = """\
AMQP_URI:
  - amqp://ann:${RABBIT_PASSWORD:pw-one}@rabbit1:5672/
  - amqp://bob:pw-two@rabbit2:5672/
FAILOVER_STRATEGY: shuffle
"""


def test_amqp_uri_may_be_a_yaml_list_of_nodes() -> None:
    config = Config.from_yaml(FAILOVER_YAML)
    assert config.amqp_uri == (
        "amqp://ann:pw-one@rabbit1:5672/;amqp://bob:pw-two@rabbit2:5672/"
    )
    assert config.failover_strategy == "shuffle"
    assert "pw-" not in repr(config)


@pytest.mark.parametrize("given", ["list", "tuple", "joined"])
def test_a_list_of_nodes_is_kombu_s_failover_form(given: str) -> None:
    """A list (from Python too, directly or by key) is the ``;``-joined form,
    what nameko config files already hold, which works unchanged."""
    nodes = ["amqp://a:p1@r1/", " amqp://b:p2@r2/v"]
    value: object = {"list": nodes, "tuple": tuple(nodes), "joined": ";".join(nodes)}[
        given
    ]
    joined = "amqp://a:p1@r1/;amqp://b:p2@r2/v"
    by_key = Config.from_mapping({"AMQP_URI": value})
    assert by_key.amqp_uri.replace("; ", ";") == joined
    assert Config(amqp_uri=value).amqp_uri == by_key.amqp_uri  # type: ignore[arg-type]
    hosts = [a.host for a in parse_broker_uri(by_key.amqp_uri).addresses]
    assert hosts == ["r1", "r2"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "a non-empty list"),
        (["amqp://u:secret@r1/", 5672], "address 2 of the list must be a str"),
        (["amqp://u:secret@r1/", "amqp://u:secret@r2:99999/"], "is not a valid URI"),
        (["amqp://u:secret@r1/", "redis://u:secret@r2/"], "unsupported scheme"),
        (["memory://", "amqp://u:secret@r1/"], "memory:// cannot be one of several"),
    ],
)
def test_a_bad_node_in_the_list_is_named_with_its_password_masked(
    value: object, message: str
) -> None:
    with pytest.raises(ConfigurationError, match="AMQP_URI") as caught:
        Config.from_mapping({"AMQP_URI": value})
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)


def test_failover_strategy_defaults_to_round_robin_and_is_checked() -> None:
    assert Config().failover_strategy == "round-robin"
    assert (
        Config.load(environ={"TRIOEVENTS_FAILOVER_STRATEGY": "shuffle"})[
            "FAILOVER_STRATEGY"
        ]
        == "shuffle"
    )
    with pytest.raises(
        ConfigurationError,
        match="config key 'FAILOVER_STRATEGY': expected 'round-robin' or 'shuffle'",
    ):
        Config.from_mapping({"FAILOVER_STRATEGY": "random"})
