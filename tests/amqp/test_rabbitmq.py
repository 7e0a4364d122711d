"""AMQP-only tests against the live RabbitMQ, each on a fresh vhost.

What every transport must do is checked by the conformance suite
(``tests/test_transport_conformance.py``); these tests cover what only the AMQP
transport has: URIs and vhosts, refused logins, TLS, frame sizes and many confirms
in flight. Concurrent publishes around a refused one are in
``test_publish_refusals.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trioevents import ServiceHost
from trioevents._exceptions import (
    AccessRefusedByBroker,
    BrokerUnavailable,
    PublishNotConfirmed,
)
from trioevents._message import Properties
from trioevents.amqp import AmqpTransport

from ..support.tcpproxy import open_tcp_proxy, upstream_port, via

if TYPE_CHECKING:
    import pathlib
    import ssl

    from trioevents.testing import RabbitAdmin

pytestmark = pytest.mark.rabbitmq

#: Generous: the broker shares two cores with the tests.
_DEADLINE = 60


def _with(uri: str, **changes: str) -> str:
    """Return *uri* with some of its parts replaced (netloc, path, query)."""
    return urllib.parse.urlsplit(uri)._replace(**changes).geturl()


def _queue() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def test_the_uri_picks_the_vhost(
    rabbit_vhost: str, rabbit_admin: RabbitAdmin
) -> None:
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(rabbit_vhost).path[1:])
    queue = _queue()
    with trio.fail_after(_DEADLINE):
        async with AmqpTransport(rabbit_vhost).open_connection() as conn:
            await conn.declare_queue(queue)
            assert conn.server_properties["product"] == "RabbitMQ"
    info = rabbit_admin.request(
        "GET",
        f"queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue)}",
    )
    assert (info["name"], info["vhost"]) == (queue, vhost)


@pytest.mark.parametrize("path", ["//", "/", "", "/%2F"])
async def test_default_vhost_spellings_reach_slash(
    rabbit_vhost: str, path: str
) -> None:
    """Only connects: nothing is declared on the default vhost."""
    uri = _with(rabbit_vhost, path=path)
    with trio.fail_after(_DEADLINE):
        async with AmqpTransport(uri).open_connection() as conn:
            assert conn.server_properties["product"] == "RabbitMQ"


async def test_missing_vhost_is_broker_unavailable(rabbit_vhost: str) -> None:
    uri = _with(rabbit_vhost, path=f"/no-such-vhost-{uuid.uuid4().hex[:8]}")
    with trio.fail_after(_DEADLINE), pytest.raises(BrokerUnavailable, match="530"):
        async with AmqpTransport(uri).open_connection():
            pytest.fail("opened a missing vhost")


async def test_bad_password_is_broker_unavailable_with_the_password_masked(
    rabbit_vhost: str,
) -> None:
    parts = urllib.parse.urlsplit(rabbit_vhost)
    uri = _with(
        rabbit_vhost,
        netloc=f"{parts.username}:wr0ng-s3cret@{parts.hostname}:{parts.port}",
    )
    with trio.fail_after(_DEADLINE), pytest.raises(BrokerUnavailable) as info:
        async with AmqpTransport(uri).open_connection():
            pytest.fail("logged in with a wrong password")
    message = str(info.value)
    assert "403 ACCESS_REFUSED" in message
    assert "wr0ng-s3cret" not in message
    assert ":****@" in message


async def test_heartbeat_from_the_uri_is_negotiated(rabbit_vhost: str) -> None:
    with trio.fail_after(_DEADLINE):
        uri = _with(rabbit_vhost, query="heartbeat=7")
        async with AmqpTransport(uri).open_connection() as conn:
            assert conn.heartbeat == 7


@pytest.mark.parametrize(
    ("frame_max", "size"),
    [(4096, 100_000), (131072, 1_000_000), (131072, 8_000_000)],
)
async def test_large_bodies_round_trip(
    rabbit_vhost: str, frame_max: int, size: int
) -> None:
    body = bytes(range(256)) * (size // 256) + b"end"
    uri = _with(rabbit_vhost, query=f"frame_max={frame_max}")
    with trio.fail_after(_DEADLINE):
        async with AmqpTransport(uri).open_connection() as conn:
            assert conn.frame_max == frame_max
            queue = (await conn.declare_queue(_queue())).name
            await conn.publish("", queue, body, Properties(message_id="big"))
            async with conn.open_consumer(queue) as consumer:
                delivery = await consumer.receive()
                await delivery.ack()
    assert delivery.body == body
    assert delivery.properties.message_id == "big"


async def test_many_concurrent_publishes_are_all_confirmed(rabbit_vhost: str) -> None:
    count = 3000
    persistent = Properties(delivery_mode=2, content_type="application/json")
    with trio.fail_after(_DEADLINE):
        async with AmqpTransport(rabbit_vhost).open_connection() as conn:
            queue = (await conn.declare_queue(_queue(), durable=True)).name

            async def publish(index: int) -> None:
                await conn.publish("", queue, b'{"n": %d}' % index, persistent)

            async with trio.open_nursery() as nursery:
                for index in range(count):
                    nursery.start_soon(publish, index)
            declared = await conn.declare_queue(queue, durable=True, passive=True)
            assert declared.message_count == count
            seen: set[bytes] = set()
            async with conn.open_consumer(queue, prefetch_count=100) as consumer:
                while len(seen) < count:
                    delivery = await consumer.receive()
                    seen.add(delivery.body)
                    await delivery.ack()
            assert len(seen) == count
            assert await conn.delete_queue(queue) == 0


async def test_mandatory_returns_reach_the_right_publishes(rabbit_vhost: str) -> None:
    outcomes: dict[int, bool] = {}
    with trio.fail_after(_DEADLINE):
        async with AmqpTransport(rabbit_vhost).open_connection() as conn:
            queue = (await conn.declare_queue(_queue())).name

            async def publish(index: int) -> None:
                routing_key = queue if index % 3 else "nowhere"
                try:
                    await conn.publish("", routing_key, b"same", mandatory=True)
                except PublishNotConfirmed:
                    outcomes[index] = False
                else:
                    outcomes[index] = True

            async with trio.open_nursery() as nursery:
                for index in range(300):
                    nursery.start_soon(publish, index)
            count = (await conn.declare_queue(queue, passive=True)).message_count
    assert outcomes == {index: bool(index % 3) for index in range(300)}
    assert count == 200


async def test_randomly_cancelled_publishes_keep_the_connection_healthy(
    rabbit_vhost: str,
) -> None:
    """Random deadlines on publishes and receives leave no broken frame behind."""
    with trio.fail_after(_DEADLINE):
        async with AmqpTransport(rabbit_vhost).open_connection() as conn:
            queue = (await conn.declare_queue(_queue())).name
            confirmed = 0
            for attempt in range(500):
                with trio.move_on_after((attempt % 7) * 0.0002):
                    await conn.publish("", queue, b"x" * 50_000)
                    confirmed += 1
            await conn.publish("", queue, b"end")
            count = (await conn.declare_queue(queue, passive=True)).message_count
            assert confirmed + 1 <= count <= 501


# --------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """A throwaway CA and a server certificate for localhost, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    path = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=trioevents test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=path,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost", cwd=path,
    )  # fmt: skip
    (path / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2",
        "-extfile", "server.ext", cwd=path,
    )  # fmt: skip
    return {
        "ca": path / "ca.pem",
        "cert": path / "server.pem",
        "key": path / "server.key",
    }


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _tls_proxy(
    server_context: ssl.SSLContext,
    upstream: tuple[str, int],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Terminate TLS on a free port and forward the bytes to RabbitMQ."""

    async def handle(client: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await client.do_handshake()
        except trio.BrokenResourceError:
            return  # the client refused our certificate
        async with await trio.open_tcp_stream(*upstream) as broker:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, broker)
                await _pump(broker, client)
                nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(client)

    listeners: Any = await trio.open_ssl_over_tcp_listeners(
        0, server_context, host="127.0.0.1"
    )
    task_status.started(listeners[0].transport_listener.socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_amqps_through_tls(
    rabbit_vhost: str, tls_files: dict[str, pathlib.Path], nursery: trio.Nursery
) -> None:
    import ssl

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls_files["cert"], tls_files["key"])
    parts = urllib.parse.urlsplit(rabbit_vhost)
    upstream = (parts.hostname or "127.0.0.1", parts.port or 5672)
    port = await nursery.start(_tls_proxy, server_context, upstream)
    uri = _with(rabbit_vhost, scheme="amqps", netloc=f"guest:guest@localhost:{port}")
    with trio.fail_after(_DEADLINE):
        transport = AmqpTransport(uri, ssl_options={"ca_certs": str(tls_files["ca"])})
        async with transport.open_connection() as conn:
            queue = (await conn.declare_queue(_queue())).name
            await conn.publish("", queue, b"over tls")
            async with conn.open_consumer(queue) as consumer:
                delivery = await consumer.receive()
                await delivery.ack()
            assert delivery.body == b"over tls"
        # Verification is on by default: the throwaway CA is not trusted.
        with pytest.raises(BrokerUnavailable, match="TLS handshake"):
            async with AmqpTransport(uri).open_connection():
                pytest.fail("an untrusted certificate was accepted")
        # ... unless the options turn it off, as nameko's AMQP_SSL can.
        insecure = AmqpTransport(uri, ssl_options={"cert_reqs": ssl.CERT_NONE})
        async with insecure.open_connection() as conn:
            assert conn.server_properties["product"] == "RabbitMQ"


@pytest.mark.parametrize("refused", ["password", "vhost"])
async def test_a_refused_login_or_vhost_fails_at_the_first_attempt(
    rabbit_vhost: str, refused: str
) -> None:
    """403 or 530 while connecting cannot succeed on a retry: fail at once.

    It used to be retried ``CONNECT_ATTEMPTS`` times. The proxy counts the
    attempts.
    """
    with trio.fail_after(_DEADLINE):
        async with open_tcp_proxy(upstream_port(rabbit_vhost)) as proxy:
            uri = via(proxy, rabbit_vhost)
            if refused == "password":
                uri, expected = uri.replace("guest:guest@", "guest:wrong@"), "403"
            else:
                uri, expected = _with(uri, path="/no-such-vhost"), "530"
            host = ServiceHost(
                [], {"AMQP_URI": uri, "CONNECT_ATTEMPTS": 5, "RECONNECT_DELAY": 0.01}
            )
            with pytest.raises(AccessRefusedByBroker, match=expected) as caught:
                await host.serve()
            attempts = proxy.statistics().accepted
    assert attempts == 1
    assert caught.value.reply_code == int(expected)
    assert "AMQP_URI" in str(caught.value)  # says what to fix
