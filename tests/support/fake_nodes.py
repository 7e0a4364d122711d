"""Stand-ins for the nodes of a RabbitMQ cluster, to test failover without one.

:class:`FakeNodes` replaces the AMQP transport's dialer
(``trioevents.amqp._transport.connect_stream``): each ``host:port`` the
transport dials is a node that is up (a :class:`~tests.amqp.fake_broker.FakeBroker`
answers the handshake over a memory stream, then answers the close), down (the
dial is refused, as a dead node's port refuses it) or refusing the login. It
records the order of the dials, and what each broker was told (login, virtual
host). Everything runs on memory streams, so tests can use ``autojump_clock``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from tests.amqp.fake_broker import FakeBroker
from trioevents._exceptions import BrokerUnavailable
from trioevents.amqp import _transport

if TYPE_CHECKING:
    import pytest


class FakeNodes:
    """The nodes a transport dials, up unless marked otherwise.

    Parameters
    ----------
    nursery
        Where the fake brokers run.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        #: ``host:port`` of the nodes whose port refuses connections.
        self.down: set[str] = set()
        #: ``host:port`` of the nodes that refuse the login (403).
        self.refuse_login: set[str] = set()
        #: Every dial, in order, as ``host:port``.
        self.dialed: list[str] = []
        #: The brokers that answered, per ``host:port``.
        self.brokers: dict[str, list[FakeBroker]] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNodes:
        """Make the AMQP transport dial these nodes; return self."""
        monkeypatch.setattr(_transport, "connect_stream", self.connect_stream)
        return self

    async def connect_stream(
        self, host: str, port: int, *, peer: str = "the broker", **_: Any
    ) -> trio.abc.Stream:
        """Dial ``host:port``: a stream to its fake broker, or a refusal."""
        node = f"{host}:{port}"
        self.dialed.append(node)
        await trio.lowlevel.checkpoint()
        if node in self.down:
            raise BrokerUnavailable(
                f"cannot connect to {peer}: [Errno 111] Connection refused"
            )
        client, server = trio.testing.memory_stream_pair()
        broker = FakeBroker(server)
        self.brokers.setdefault(node, []).append(broker)
        self._nursery.start_soon(self._serve, broker, node in self.refuse_login)
        return client

    async def _serve(self, broker: FakeBroker, refuse_login: bool) -> None:
        if refuse_login:
            await broker.refuse_login()
            return
        await broker.handshake()
        await broker.answer_close()

    def logins(self, node: str) -> list[tuple[str, str]]:
        """The (PLAIN response, virtual host) of each connection *node* opened."""
        return [
            (broker.start_ok.response or "", broker.open.virtual_host)
            for broker in self.brokers.get(node, [])
            if broker.start_ok is not None and broker.open is not None
        ]
