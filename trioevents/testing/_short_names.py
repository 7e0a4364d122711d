"""nameko's names for the plugin's RabbitMQ fixtures: ``rabbit_config`` and co.

The pytest plugin registers each of these only where no other plugin (such as
nameko's) defines a fixture of that name; the ``trioevents_``-prefixed fixtures
are always there. This module is never a plugin itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._rabbit import RabbitAdmin

__all__ = ["rabbit_admin", "rabbit_config", "rabbit_vhost"]


@pytest.fixture(scope="session")
def rabbit_admin(trioevents_rabbit_admin: RabbitAdmin) -> RabbitAdmin:
    """``trioevents_rabbit_admin``, by nameko's kind of name."""
    return trioevents_rabbit_admin


@pytest.fixture
def rabbit_vhost(trioevents_rabbit_vhost: str) -> str:
    """``trioevents_rabbit_vhost``, by its short name."""
    return trioevents_rabbit_vhost


@pytest.fixture
def rabbit_config(trioevents_rabbit_config: dict[str, Any]) -> dict[str, Any]:
    """``trioevents_rabbit_config``, by nameko's name."""
    return trioevents_rabbit_config
