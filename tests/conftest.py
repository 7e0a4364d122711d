"""Fixtures shared by the tests (the project-wide setup is the root ``conftest.py``)."""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def broker_clock(broker_uri: str) -> trio.testing.MockClock | None:
    """Virtual time on the embedded broker; real time on RabbitMQ.

    pytest-trio runs the test with the clock this returns. On RabbitMQ a task
    waiting for the socket counts as blocked, so an autojump clock would rush
    the broker's round trips into their timeouts: such tests use short delays
    there, and bound every wait with a generous ``fail_after`` instead.
    """
    if broker_uri.startswith("memory"):
        return trio.testing.MockClock(autojump_threshold=0)
    return None
