"""The throwaway RabbitMQ cluster the tests of this folder run on.

``rabbit_cluster`` (session) starts three nodes beside the default broker
(:mod:`tests.support.rabbit_cluster`) and removes them at the end;
``cluster`` hands it to a test with every node serving (a node an earlier test
killed or stopped is brought back) and ``cluster_vhost`` makes a fresh virtual
host on it. The tests are marked ``rabbitmq_cluster``: the root
``conftest.py`` skips them unless asked for (``--run-cluster`` or
``TRIOEVENTS_CLUSTER_TESTS=1``, as ``.ci/run`` does). Asked for without the
rabbitmq-server package, they skip, or fail when
``TRIOEVENTS_REQUIRE_RABBITMQ=1`` (CI).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from trioevents.testing._environ import env_flag
from trioevents.testing.pytest_plugin import REQUIRE_RABBITMQ

from ..support.rabbit_cluster import SBIN_VARIABLE, RabbitCluster, find_sbin

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="session")
def rabbit_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RabbitCluster]:
    """Three clustered nodes, ``t1`` ... ``t3``, for the session."""
    sbin = find_sbin()
    if sbin is None:
        problem = (
            "the cluster tests need the rabbitmq-server package's own scripts "
            f"(/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin), or {SBIN_VARIABLE}"
        )
        if env_flag(REQUIRE_RABBITMQ):
            pytest.fail(f"{problem} ({REQUIRE_RABBITMQ}=1)", pytrace=False)
        pytest.skip(problem)
    cluster = RabbitCluster.start(tmp_path_factory.mktemp("rabbit-cluster"), sbin)
    try:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(  # noqa: T201 - the figures belong in the CI log
                f"\n[cluster] {len(cluster.nodes)} nodes up and clustered in "
                f"{cluster.start_seconds:.1f} s; resident memory (MiB): "
                f"{cluster.memory_mib()}"
            )
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(rabbit_cluster: RabbitCluster) -> RabbitCluster:
    """The cluster, every node serving."""
    rabbit_cluster.ensure_running()
    return rabbit_cluster


@pytest.fixture
def cluster_vhost(cluster: RabbitCluster) -> Iterator[str]:
    """A fresh virtual host on the cluster, deleted after the test."""
    name = f"trioevents-cluster-{uuid.uuid4().hex[:12]}"
    cluster.add_vhost(name)
    try:
        yield name
    finally:
        cluster.delete_vhost(name)
