"""Project-wide pytest setup: the ``rabbitmq`` marker and a fresh vhost per test.

All of it comes from trioevents' own pytest plugin,
``trioevents.testing.pytest_plugin``, which installing trioevents registers
(the ``pytest11`` entry point ``trioevents``), so it is loaded once, before this
file: ``--amqp-uri`` / ``--rabbit-api-uri``, the ``rabbit_admin`` (session) and
``rabbit_vhost`` fixtures, and the ``rabbitmq`` marker. Tests marked ``rabbitmq``
need the live broker. Locally they are skipped when it cannot be reached; under
``CI=true`` they fail instead, so CI never passes by skipping them. Each such test
gets its own vhost, made and removed through the management HTTP API
(``rabbitmqctl`` costs seconds of CPU per call).
"""

from __future__ import annotations

import pytest

import trioevents.testing.pytest_plugin as trioevents_plugin
from trioevents.testing import RabbitAdmin as RabbitAdmin

# pytester runs the plugin's own tests (tests/test_pytest_plugin.py).
pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(trioevents_plugin):
        raise pytest.UsageError(
            "trioevents' pytest plugin is not loaded: install the project with "
            "python -m pip install -e '.[test]', or pass -p trioevents"
        )
