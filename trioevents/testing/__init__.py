"""Testing helpers for trioevents.

* :func:`worker_factory` -- a service instance with mocked dependencies, for unit
  tests without any broker.
* :func:`replace_dependencies` -- swap dependencies of a service in a host before
  it starts.
* :class:`entrypoint_waiter` -- wait until a worker of an entrypoint finished
  (nameko's 30-second timeout: :class:`EntrypointWaiterTimeout`).
* :class:`HostFactory` -- start hosts in a nursery and stop them all (the
  ``host_factory`` fixture of the pytest plugin, ``trioevents.testing.pytest_plugin``).
* :class:`RabbitAdmin` -- the management API client behind the per-test vhosts.
* :func:`check_transport` -- the conformance suite every transport passes.
* :class:`FlakyTransport` -- the embedded broker with connections that can be cut
  or refused, to test what a service does when its broker goes away.
"""

from __future__ import annotations

from ._conformance import (
    TRANSPORT_CHECKS as TRANSPORT_CHECKS,
    check_transport as check_transport,
)
from ._faults import FlakyTransport as FlakyTransport
from ._rabbit import RabbitAdmin as RabbitAdmin
from ._services import (
    HostFactory as HostFactory,
    replace_dependencies as replace_dependencies,
    worker_factory as worker_factory,
)
from ._waiting import (
    DeliveryNotHandled as DeliveryNotHandled,
    EntrypointWaiterTimeout as EntrypointWaiterTimeout,
    WaitResult as WaitResult,
    entrypoint_waiter as entrypoint_waiter,
)

__all__ = [
    "TRANSPORT_CHECKS",
    "DeliveryNotHandled",
    "EntrypointWaiterTimeout",
    "FlakyTransport",
    "HostFactory",
    "RabbitAdmin",
    "WaitResult",
    "check_transport",
    "entrypoint_waiter",
    "replace_dependencies",
    "worker_factory",
]
