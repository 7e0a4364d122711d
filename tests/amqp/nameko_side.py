"""The nameko half of ``test_nameko_interop.py``: run it with a Python that has nameko.

Usage: ``python nameko_side.py AMQP_URI``. Prints ``ready`` once its consumer is
up, then serves until it is terminated. Its service handles the trioevents
event ``trio_orders.order_placed`` and answers with ``nameko_billing.order_seen``.
This file is never imported by the test suite (it needs eventlet).
"""

import logging
import sys

import eventlet

eventlet.monkey_patch()

from nameko.events import EventDispatcher, event_handler  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402


class NamekoBilling:
    name = "nameko_billing"
    dispatch = EventDispatcher()

    @event_handler("trio_orders", "order_placed")
    def on_order(self, payload):
        self.dispatch("order_seen", {"echo": payload, "by": "nameko"})


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    runner = ServiceRunner({"AMQP_URI": sys.argv[1]})
    runner.add_service(NamekoBilling)
    runner.start()
    print("ready", flush=True)  # noqa: T201 (the test waits for it)
    # Serve until SIGTERM. A blocking read of stdin would stall eventlet's hub.
    runner.wait()


if __name__ == "__main__":
    main()
