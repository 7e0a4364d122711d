"""Tests of AmqpTransport's URI parsing and TLS options (no broker needed)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio

from trioevents._exceptions import BrokerUnavailable, ConfigurationError
from trioevents.amqp import AmqpTransport, make_ssl_context


def test_query_options_override_keyword_arguments() -> None:
    transport = AmqpTransport("amqp://h/?heartbeat=5", heartbeat=60)
    assert transport.parameters.heartbeat == 5


@pytest.mark.parametrize(
    "uri",
    [
        "memory://",
        "http://localhost/",
        "amqp://localhost:notaport/",
        "amqp://localhost/?heartbeat=soon",
        "amqp://localhost/?heartbeat=-1",
        "amqp://localhost/?frame_max=1.5",
        "amqp://localhost/?login_method=CRAM-MD5",
        "amqp://localhost/?ssl=maybe",
        "amqp://localhost/?hearbeat=5",
    ],
)
def test_invalid_uris_are_configuration_errors(uri: str) -> None:
    with pytest.raises(ConfigurationError):
        AmqpTransport(uri)


def test_password_never_shows() -> None:
    uri = "amqp://user:s3cret@localhost:5672/v"
    transport = AmqpTransport(uri)
    for text in (repr(transport), transport.uri, repr(transport.parameters)):
        assert "s3cret" not in text
    assert "user:****@localhost" in repr(transport)
    with pytest.raises(ConfigurationError) as info:
        AmqpTransport("amqp://user:s3cret@localhost/?bad=1")
    assert "s3cret" not in str(info.value)


def test_tls_context_verifies_by_default() -> None:
    for options in (None, True):
        context = make_ssl_context(options)
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname


def test_ssl_options_turn_tls_on_for_amqp_uris() -> None:
    assert AmqpTransport("amqp://h/", ssl_options=True).tls
    assert AmqpTransport("amqps://h/").tls
    assert not AmqpTransport("amqp://h/").tls
    assert not AmqpTransport("amqp://h/", ssl_options=False).tls


@pytest.mark.parametrize("cert_reqs", [ssl.CERT_NONE, "CERT_NONE", "none"])
def test_cert_reqs_none_turns_verification_off(cert_reqs: Any) -> None:
    context = make_ssl_context({"cert_reqs": cert_reqs})
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname


def test_an_ssl_context_is_used_as_it_is() -> None:
    context = ssl.create_default_context()
    assert make_ssl_context(context) is context


@pytest.mark.parametrize(
    "options",
    [
        {"ca_cert": "typo.pem"},
        {"cert_reqs": "sometimes"},
        {"cert_reqs": 7},
        {"keyfile": "key.pem"},
        {"ca_certs": "/nonexistent/ca.pem"},
        "yes",
    ],
)
def test_bad_ssl_options_are_configuration_errors(options: Any) -> None:
    with pytest.raises(ConfigurationError):
        make_ssl_context(options)


async def test_nothing_listening_is_broker_unavailable() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    transport = AmqpTransport(f"amqp://guest:s3cret@127.0.0.1:{port}/")
    with trio.fail_after(30), pytest.raises(BrokerUnavailable) as info:
        async with transport.open_connection():
            pytest.fail("connected to nothing")
    message = str(info.value)
    assert "s3cret" not in message
    assert f"127.0.0.1:{port}" in message


# --------------------------------------------------------------------------
# The host picks AmqpTransport for amqp:// URIs, with HEARTBEAT and AMQP_SSL


def test_host_uses_amqp_transport_with_config() -> None:
    from trioevents import ServiceHost

    host = ServiceHost(
        [], config={"AMQP_URI": "amqp://guest:secret@localhost:5672/", "HEARTBEAT": 0}
    )
    transport = host.transport
    assert isinstance(transport, AmqpTransport)
    assert transport.heartbeat == 0
    assert not transport.tls
    assert "secret" not in repr(transport)


def test_host_amqp_ssl_turns_tls_on_for_amqp_uris() -> None:
    from trioevents import ServiceHost

    host = ServiceHost(
        [], config={"AMQP_URI": "amqp://localhost/", "AMQP_SSL": {"cert_reqs": 0}}
    )
    assert isinstance(host.transport, AmqpTransport)
    assert host.transport.tls
    assert host.transport.heartbeat == 60  # the HEARTBEAT default


def test_transport_for_uri_rejects_unknown_schemes() -> None:
    from trioevents._host import transport_for_uri

    with pytest.raises(ConfigurationError, match="unsupported scheme") as info:
        transport_for_uri("redis://u:secret@localhost/")
    assert "secret" not in str(info.value)
    assert isinstance(transport_for_uri("amqps://localhost/"), AmqpTransport)
