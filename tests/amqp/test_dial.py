"""Tests of dialing the broker (:mod:`trioevents.amqp._dial`).

Every way of failing is :class:`~trioevents.BrokerUnavailable` naming the peer
as the caller does. TCP is faked with a memory stream where time or TLS matters,
so that the tests run on ``autojump_clock``.
"""

from __future__ import annotations

import logging
import ssl

import pytest
import trio
import trio.testing

from trioevents import ServiceHost
from trioevents._exceptions import BrokerUnavailable
from trioevents.amqp._dial import connect_stream

PEER = "'amqp://u:****@h/'"


async def test_a_refused_connection_names_the_peer_and_says_why() -> None:
    """trio's "all attempts to connect ... failed (1 sub-exception)" is unwrapped."""
    with pytest.raises(
        BrokerUnavailable,
        match=r"^cannot connect to 'amqp://u:\*\*\*\*@h/': Connection refused$",
    ) as info:
        await connect_stream("127.0.0.1", 1, peer=PEER)
    assert isinstance(info.value.__cause__, OSError)


async def test_an_unknown_host_says_so() -> None:
    with pytest.raises(
        BrokerUnavailable, match=r"cannot resolve host 'nowhere\.invalid'"
    ):
        await connect_stream("nowhere.invalid", 5672, peer=PEER)


async def test_a_host_says_why_it_cannot_connect_and_names_the_uri_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each log line and the final error: the masked URI once, and the reason."""
    caplog.set_level(logging.WARNING, logger="trioevents")
    host = ServiceHost(
        [],
        {
            "AMQP_URI": "amqp://guest:s3cret@127.0.0.1:1/",
            "CONNECT_ATTEMPTS": 3,
            "RECONNECT_DELAY": 0.01,
        },
    )
    with pytest.raises(BrokerUnavailable) as info:
        async with host.dispatcher():
            pytest.fail("entered without a connection")
    lines = [str(info.value), *(record.getMessage() for record in caplog.records)]
    assert len(lines) == 3  # the error, and two reconnects logged
    for line in lines:
        assert line.count("amqp://guest:****@127.0.0.1:1/") == 1, line
        assert "Connection refused" in line, line
        assert "sub-exception" not in line, line
    assert str(info.value).endswith("(gave up after 3 attempts)")


async def test_a_broker_that_does_not_answer_in_time_is_unavailable(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never_connects(host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()

    monkeypatch.setattr(trio, "open_tcp_stream", never_connects)
    start = trio.current_time()
    with pytest.raises(BrokerUnavailable, match="no answer within 3 s"):
        await connect_stream("h", 5672, connect_timeout=3, peer=PEER)
    assert trio.current_time() - start == pytest.approx(3)


async def test_a_failed_tls_handshake_is_unavailable_and_hangs_up(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    nursery: trio.Nursery,
) -> None:
    client, server = trio.testing.memory_stream_pair()

    async def connected(host: str, port: int) -> trio.abc.Stream:
        return client

    async def answer_in_plain_amqp() -> None:
        await server.receive_some()  # the ClientHello
        await server.send_all(b"AMQP\x00\x00\x09\x01")

    monkeypatch.setattr(trio, "open_tcp_stream", connected)
    nursery.start_soon(answer_in_plain_amqp)
    with pytest.raises(BrokerUnavailable, match=r"^the TLS handshake with 'amqp://u"):
        await connect_stream(
            "h", 5671, ssl_context=ssl.create_default_context(), peer=PEER
        )
    while await server.receive_some():
        pass  # until the client closed its end
