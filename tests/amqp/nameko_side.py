"""The nameko half of ``test_nameko_interop.py``: run it with a Python that has nameko.

Usage: ``python nameko_side.py AMQP_URI [twin]``. Prints ``ready`` once its
consumers are up, then serves until it is terminated.

Default mode: the service ``nameko_billing`` handles the trioevents event
``trio_orders.order_placed`` and answers with ``nameko_billing.order_seen``,
echoing the payload, the call id stack and the context data its worker got.

``twin`` mode: a service ``trio_audit`` whose ``on_seen`` handles
``nameko_billing.order_seen``, so that nameko declares the very queue the
trioevents service ``trio_audit`` declared (a flag mismatch would fail it with
PRECONDITION_FAILED). Run it only when no event is in flight.

This file is never imported by the test suite (it needs eventlet).
"""

import logging
import sys

import eventlet

eventlet.monkey_patch()

from nameko.events import EventDispatcher, event_handler  # noqa: E402
from nameko.extensions import DependencyProvider  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402


class Context(DependencyProvider):
    """Hand the worker its own WorkerContext."""

    def get_dependency(self, worker_ctx):
        return worker_ctx


class NamekoBilling:
    name = "nameko_billing"
    dispatch = EventDispatcher()
    context = Context()

    @event_handler("trio_orders", "order_placed")
    def on_order(self, payload):
        self.dispatch(
            "order_seen",
            {
                "echo": payload,
                "by": "nameko",
                "call_id_stack": list(self.context.call_id_stack),
                "data": dict(self.context.data),
            },
        )


class TrioAuditTwin:
    name = "trio_audit"

    @event_handler("nameko_billing", "order_seen")
    def on_seen(self, payload):  # pragma: no cover - never gets an event
        pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    runner = ServiceRunner({"AMQP_URI": sys.argv[1]})
    twin = sys.argv[2:] == ["twin"]
    runner.add_service(TrioAuditTwin if twin else NamekoBilling)
    runner.start()
    print("ready", flush=True)  # noqa: T201 (the test waits for it)
    # Serve until SIGTERM. A blocking read of stdin would stall eventlet's hub.
    runner.wait()


if __name__ == "__main__":
    main()
