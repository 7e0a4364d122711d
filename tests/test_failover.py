"""Failing over between the nodes of a cluster: which address is tried next.

:class:`~trioevents._connecting.Failover` decides the order (``FAILOVER_STRATEGY``);
the AMQP transport tries one round of it per ``open_connection`` and the
connection keeper backs off between rounds and logs the node in use. Here the
nodes are fakes (:mod:`tests.support.fake_nodes`): no broker needed. The real
thing, a 3-node RabbitMQ cluster losing nodes, is ``tests/cluster/``.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from trioevents import BrokerUnavailable, ConfigurationError, ConnectionLost
from trioevents._config import Config
from trioevents._connecting import ConnectionKeeper, Failover
from trioevents._host import transport_for_uri
from trioevents.amqp import AmqpTransport

from .support.fake_nodes import FakeNodes

if TYPE_CHECKING:
    from trioevents import abc

#: Three nodes, each with its own login and virtual host.
CLUSTER = (
    "amqp://ann:pw-one@r1:5672/v1;amqp://bob:pw-two@r2:5672/v2;"
    "amqp://cy:pw-three@r3:5672/v3"
)
PASSWORDS = ("pw-one", "pw-two", "pw-three")
NODES = ("r1:5672", "r2:5672", "r3:5672")


@pytest.fixture
def nodes(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> FakeNodes:
    return FakeNodes(nursery).install(monkeypatch)


# ------------------------------------------------------------------- the policy


def test_round_robin_starts_with_the_first_address() -> None:
    assert Failover(3).order() == [0, 1, 2]


def test_round_robin_keeps_to_the_node_it_connected_to() -> None:
    failover = Failover(3)
    failover.connected(1)
    assert failover.order() == [1, 2, 0]


def test_round_robin_tries_the_node_it_lost_last() -> None:
    failover = Failover(3)
    failover.connected(1)
    failover.failed(1)
    assert failover.order() == [2, 0, 1]
    failover.connected(2)
    failover.failed(2)
    assert failover.order() == [0, 1, 2]


def test_a_round_that_failed_everywhere_starts_at_the_same_place() -> None:
    """Until something answers, every round begins with the first address."""
    failover = Failover(3)
    for _ in range(3):
        assert failover.order() == [0, 1, 2]


def test_shuffle_varies_the_order_and_tries_the_node_it_lost_last() -> None:
    failover = Failover(3, "shuffle", rng=random.Random(7))
    firsts = {failover.order()[0] for _ in range(50)}
    assert firsts == {0, 1, 2}  # clients spread over the nodes
    failover.connected(1)
    failover.failed(1)
    orders = [failover.order() for _ in range(20)]
    assert all(sorted(order) == [0, 1, 2] and order[-1] == 1 for order in orders)


def test_an_unknown_strategy_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="'round-robin' or 'shuffle'"):
        Failover(2, "random")  # type: ignore[arg-type]


def test_the_strategy_comes_from_the_config() -> None:
    config = Config.from_mapping({"AMQP_URI": CLUSTER, "FAILOVER_STRATEGY": "shuffle"})
    transport = transport_for_uri(config.amqp_uri, config)
    assert isinstance(transport, AmqpTransport)
    assert transport.failover_strategy == "shuffle"
    assert [a.node for a in transport.addresses] == list(NODES)


# ----------------------------------------------------------- the AMQP transport


async def test_connects_to_the_first_address_that_answers(
    nodes: FakeNodes,
) -> None:
    nodes.down.add("r1:5672")
    transport = AmqpTransport(CLUSTER)
    async with transport.open_connection() as connection:
        assert connection.peer == "amqp://bob:****@r2:5672/v2"
    assert nodes.dialed == ["r1:5672", "r2:5672"]
    # r2's own login and virtual host
    assert nodes.logins("r2:5672") == [("\0bob\0pw-two", "v2")]


async def test_a_refused_login_moves_on_to_the_next_address(
    nodes: FakeNodes,
) -> None:
    """Credentials may differ per address: one node refusing them is not all."""
    nodes.refuse_login.add("r1:5672")
    async with AmqpTransport(CLUSTER).open_connection() as connection:
        assert connection.peer == "amqp://bob:****@r2:5672/v2"


async def test_after_a_loss_the_next_node_is_tried_first(nodes: FakeNodes) -> None:
    transport = AmqpTransport(CLUSTER)
    peers = []

    async def lose_a_connection() -> None:
        async with transport.open_connection() as connection:
            peers.append(connection.peer)
            raise ConnectionLost("r1 died")

    with pytest.raises(ConnectionLost):
        await lose_a_connection()
    assert peers == ["amqp://ann:****@r1:5672/v1"]
    nodes.down.add("r2:5672")
    async with transport.open_connection() as connection:
        assert connection.peer.endswith("@r3:5672/v3")
    assert nodes.dialed == ["r1:5672", "r2:5672", "r3:5672"]


async def test_a_closed_connection_keeps_its_node(nodes: FakeNodes) -> None:
    transport = AmqpTransport(CLUSTER)
    for _ in range(2):
        async with transport.open_connection():
            pass
    assert nodes.dialed == ["r1:5672", "r1:5672"]


async def test_no_address_answering_names_each_one_masked(nodes: FakeNodes) -> None:
    nodes.down.update(NODES)
    with pytest.raises(BrokerUnavailable) as caught:
        async with AmqpTransport(CLUSTER).open_connection():
            pytest.fail("connected to a node that is down")
    message = str(caught.value)
    assert "3 tried" in message
    for name, node in zip(("ann", "bob", "cy"), NODES, strict=True):
        assert f"{name}:****@{node}" in message
    assert not any(password in message for password in PASSWORDS)


# ------------------------------------------------------------------ the keeper


async def test_the_keeper_logs_the_node_in_use_and_backs_off_per_round(
    nodes: FakeNodes,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connected to r1, lost, r2 down: r3 at once; then everything down."""
    caplog.set_level(logging.INFO, logger="test.keeper")
    config = Config(amqp_uri=CLUSTER, reconnect_delay=1, reconnect_max_delay=1)
    keeper = ConnectionKeeper(
        AmqpTransport(CLUSTER), config, logger=logging.getLogger("test.keeper")
    )
    peers: list[str] = []
    round_started: list[float] = []

    async def serve(connection: abc.Connection) -> None:
        keeper.ready()
        peers.append(connection.peer)  # type: ignore[attr-defined]
        round_started.append(trio.current_time())
        if len(peers) == 1:
            nodes.down.add("r2:5672")
            raise ConnectionLost("r1 died")
        if len(peers) == 2:
            nodes.down.update(NODES)
            raise ConnectionLost("r3 died")
        return

    async def revive_r1() -> None:
        await trio.sleep(2.5)  # virtual time: a round or two fail everywhere
        nodes.down.discard("r1:5672")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(revive_r1)
        await keeper.run(serve)
    assert nodes.dialed.count("r1:5672") >= 3
    assert [peer.rpartition("@")[2] for peer in peers] == [
        "r1:5672/v1",
        "r3:5672/v3",
        "r1:5672/v1",
    ]
    # r3 was reached in the round that followed r1's loss, after one backoff
    assert round_started[1] - round_started[0] < 1.01
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "connected to amqp://ann:****@r1:5672/v1"
    assert messages[1].startswith("connection lost to amqp://ann:****@r1:5672/v1: ")
    assert messages[2] == "connected to amqp://cy:****@r3:5672/v3"
    assert any("cannot connect to 'amqp://ann:****@r1" in m for m in messages)
    assert not any(password in "".join(messages) for password in PASSWORDS)
