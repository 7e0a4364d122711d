"""Typed configuration with nameko's keys (``trioevents._config``)."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from trioevents import Config, ConfigurationError
from trioevents._config import _env_var_loader, expand_env_vars

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


def test_unknown_keys_are_kept_and_logged_as_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="trioevents.config"):
        config = Config.from_mapping({"DB_URIS": {"orders": "sqlite://"}})
    assert config.extra == {"DB_URIS": {"orders": "sqlite://"}}
    assert "unknown config key 'DB_URIS'" in caplog.text


def test_a_key_differing_only_in_case_gets_a_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="trioevents.config"):
        config = Config.from_mapping({"MAX_WORKERS": 3})
    assert config.max_workers == 10
    assert "did you mean 'max_workers'?" in caplog.text


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
    assert config.to_mapping(mask_password=True)["AMQP_URI"] == (
        "amqp://guest:****@rabbit:5672/"
    )


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
