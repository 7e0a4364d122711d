"""AMQP_URI: parsing one or several addresses, and the masked form of each."""

from __future__ import annotations

import traceback

import pytest
import trio

import trioevents
import trioevents.testing
from trioevents import ConfigurationError, ServiceHost
from trioevents._uri import (
    broker_uri_text,
    masked_uri,
    parse_amqp_address,
    parse_broker_uri,
    with_virtual_host,
)


@pytest.mark.parametrize(
    ("uri", "virtual_host"),
    [
        ("amqp://guest:guest@localhost:5672//", "/"),  # kombu / nameko spelling
        ("amqp://guest:guest@localhost:5672/", "/"),
        ("amqp://localhost", "/"),
        ("amqp://localhost/%2F", "/"),
        ("amqp://localhost/orders", "orders"),
        ("amqp://localhost/%2Forders", "/orders"),
        ("amqp://localhost/a%2Fb", "a/b"),
        ("amqp://localhost/caf%C3%A9", "caf\u00e9"),
    ],
)
def test_virtual_host_is_the_decoded_path(uri: str, virtual_host: str) -> None:
    assert parse_amqp_address(uri).virtual_host == virtual_host


def test_credentials_host_and_port() -> None:
    params = parse_amqp_address("amqp://us%40er:p%3As%2Fs@rabbit.example:5673/v")
    assert (params.username, params.password) == ("us@er", "p:s/s")
    assert (params.host, params.port, params.tls) == ("rabbit.example", 5673, False)


def test_defaults() -> None:
    params = parse_amqp_address("amqp://localhost")
    assert (params.username, params.password) == ("guest", "guest")
    assert (params.port, params.tls) == (5672, False)
    assert params.heartbeat is None


def test_amqps_defaults_to_port_5671_with_tls() -> None:
    params = parse_amqp_address("amqps://localhost/")
    assert (params.port, params.tls) == (5671, True)
    assert parse_amqp_address("amqp://localhost/?ssl=1").tls


def test_ipv6_host() -> None:
    params = parse_amqp_address("amqp://[::1]:5672/")
    assert (params.host, params.port) == ("::1", 5672)


def test_query_options() -> None:
    params = parse_amqp_address(
        "amqp://h/?heartbeat=30&frame_max=8192&channel_max=100&connect_timeout=2.5"
        "&login_method=external"
    )
    assert params.heartbeat == 30
    assert (params.frame_max, params.channel_max) == (8192, 100)
    assert params.connect_timeout == 2.5
    assert params.auth_mechanism == "EXTERNAL"


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:****@localhost:5672/"),
        (
            "amqps://u:s3cr3t@rabbit/vhost?heartbeat=5",
            "amqps://u:****@rabbit/vhost?heartbeat=5",
        ),
        ("amqp://u:p@ss@host/", "amqp://u:****@host/"),
        ("amqp://u:pw@[::1]:5671/%2f", "amqp://u:****@[::1]:5671/%2f"),
        ("amqp://guest@localhost/", "amqp://guest@localhost/"),
        ("amqp://localhost/", "amqp://localhost/"),
        ("memory://", "memory://"),
        ("memory://orders", "memory://orders"),
    ],
)
def test_masked_uri_hides_only_the_password(uri: str, masked: str) -> None:
    assert masked_uri(uri) == masked


@pytest.mark.parametrize(
    "password", ["se#cret", "se?cret", "se/cret", "se@cret", "se:cret", "se%23cret"]
)
def test_masked_uri_hides_passwords_with_uri_delimiters(password: str) -> None:
    """A password that is not percent-encoded still never shows."""
    uri = f"amqp://guest:{password}@rabbit.example:5672/orders"
    assert masked_uri(uri) == "amqp://guest:****@rabbit.example:5672/orders"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("guest:Secret@host/", "guest:****@host/"),
        ("amqp//guest:Secret@host/", "amqp//guest:****@host/"),
        ("amqp:/guest:Se/cret@host/", "amqp:****@host/"),
        ("amqp//guest:Se@cret@host/v", "amqp//guest:****@host/v"),
    ],
)
def test_masked_uri_hides_the_password_of_a_mistyped_uri(
    text: str, masked: str
) -> None:
    """A ``--broker`` without ``://`` is shown in an error: masked all the same."""
    assert masked_uri(text) == masked


def test_masked_uri_leaves_the_rest_alone() -> None:
    assert masked_uri("amqp://rabbit/vhost?x=a@b") == "amqp://rabbit/vhost?x=a@b"
    assert masked_uri("amqp://guest@rabbit/") == "amqp://guest@rabbit/"
    assert masked_uri("memory://") == "memory://"
    assert (
        masked_uri("amqp://u:p@rabbit/v?heartbeat=5#frag")
        == "amqp://u:****@rabbit/v?heartbeat=5#frag"
    )


def test_every_password_of_a_failover_list_is_masked() -> None:
    uri = "amqp://a:pw1@rabbit1:5672//;amqp://b:pw2@rabbit2:5672//"
    assert (
        masked_uri(uri) == "amqp://a:****@rabbit1:5672//;amqp://b:****@rabbit2:5672//"
    )


@pytest.mark.parametrize("scheme", ["pyamqp", "librabbitmq", "PyAMQP"])
def test_kombu_transport_names_mean_amqp(scheme: str) -> None:
    """nameko's default broker is ``pyamqp://guest:guest@localhost``, as kombu reads it."""
    parsed = parse_broker_uri(f"{scheme}://guest:s3cret@localhost")
    assert parsed.scheme == "amqp"
    [address] = parsed.addresses
    assert (address.host, address.port, address.tls) == ("localhost", 5672, False)
    assert (address.username, address.password) == ("guest", "s3cret")
    assert address.virtual_host == "/"
    assert parsed.masked == f"{scheme}://guest:****@localhost"


def test_a_kombu_transport_name_may_be_one_of_several_addresses() -> None:
    parsed = parse_broker_uri("pyamqp://r1//;librabbitmq://r2//;amqps://r3//")
    assert [(a.host, a.tls) for a in parsed.addresses] == [
        ("r1", False),
        ("r2", False),
        ("r3", True),
    ]


def test_memory_uris_name_their_broker() -> None:
    assert parse_broker_uri("memory://").memory_name == ""
    assert parse_broker_uri("memory://orders/").memory_name == "orders"
    assert parse_broker_uri("MEMORY://x").is_memory
    assert parse_broker_uri("memory://").addresses == ()


def test_several_addresses_keep_their_order_and_credentials() -> None:
    parsed = parse_broker_uri("amqp://a:1@r1:5672/v1; amqps://b:2@r2/v2")
    assert parsed.scheme == "amqp"
    assert [(a.host, a.port, a.username, a.password, a.virtual_host, a.tls)
            for a in parsed.addresses] == [
        ("r1", 5672, "a", "1", "v1", False),
        ("r2", 5671, "b", "2", "v2", True),
    ]  # fmt: skip
    assert parsed.masked == "amqp://a:****@r1:5672/v1; amqps://b:****@r2/v2"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "redis://u:secret@localhost/",
            "unsupported scheme; use one of memory://, amqp://, amqps://, "
            "pyamqp://, librabbitmq://",
        ),
        ("amqp://u:secret@r1/;redis://u:secret@r2/", "unsupported scheme"),
        ("memory://;amqp://u:secret@r1/", "memory:// cannot be one of several"),
        ("amqp://u:secret@r1/;", "has an empty address"),
        ("amqp://u:secret@[::1/", "is not a valid URI"),
        ("amqp://u:secret@r1:99999/", "is not a valid URI"),
        ("amqp://u:secret@r1/?bad=1", "unknown option 'bad'"),
    ],
)
def test_a_bad_address_is_a_configuration_error_naming_it_masked(
    uri: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_broker_uri(uri)
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)
    assert "u:****@" in str(caught.value)


def test_a_bad_address_of_several_is_named_by_its_position() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_broker_uri("amqp://u:secret@r1/;amqp://u:secret@r2/?bad=1")
    assert str(caught.value).startswith(
        "AMQP_URI address 2 of 2: 'amqp://u:****@r2/?bad=1': unknown option 'bad'"
    )


def test_a_list_of_addresses_is_joined_into_kombu_s_form() -> None:
    assert broker_uri_text(["amqp://r1/", " amqp://r2/ "]) == "amqp://r1/;amqp://r2/"
    assert broker_uri_text("amqp://r1/;amqp://r2/") == "amqp://r1/;amqp://r2/"
    with pytest.raises(ConfigurationError, match="address 2 of the list"):
        broker_uri_text(["amqp://r1/", None])


@pytest.mark.parametrize("password", ["se#cret", "se?cret"])
def test_a_uri_that_does_not_parse_never_shows_the_password(password: str) -> None:
    """Not in the error, nor in any error it was raised from."""
    uri = f"amqp://guest:{password}@127.0.0.1:5672/"
    with pytest.raises(ConfigurationError) as caught:
        ServiceHost([], {"AMQP_URI": uri}).transport  # noqa: B018
    assert password not in "".join(traceback.format_exception(caught.value))


def test_a_uri_that_is_not_a_str_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="must be a str"):
        parse_broker_uri(["amqp://localhost/"])


def test_with_virtual_host_keeps_the_login_and_address() -> None:
    assert (
        with_virtual_host("amqp://u:p@rabbit:5673/old?heartbeat=5", "a/b")
        == "amqp://u:p@rabbit:5673/a%2Fb"
    )


@pytest.mark.rabbitmq
async def test_nameko_default_scheme_reaches_rabbitmq(rabbit_vhost: str) -> None:
    """A nameko config's ``pyamqp://`` URI serves and dispatches on RabbitMQ."""
    received: list[object] = []

    class Listener:
        name = "listener"

        @trioevents.event_handler("src", "ping")
        async def on_ping(self, payload: object) -> None:
            received.append(payload)

    uri = "pyamqp://" + rabbit_vhost.partition("://")[2]
    host = trioevents.ServiceHost([Listener], {"AMQP_URI": uri})
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        with trio.fail_after(10):
            async with trioevents.testing.entrypoint_waiter(
                host, "listener", "on_ping"
            ):
                async with host.dispatcher() as dispatch:
                    await dispatch("src", "ping", {"n": 1})
        await host.stop()
    assert received == [{"n": 1}]
