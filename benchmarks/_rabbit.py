"""The local RabbitMQ for the suite: is it there, its versions, a vhost for a run.

Only :mod:`run` imports this (it imports :mod:`trioevents.testing`, which the
scenario processes have no use for).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.error
import uuid
from typing import TYPE_CHECKING, Final

from trioevents.testing import RabbitAdmin
from trioevents.testing._rabbit import broker_problem, vhost_uri

if TYPE_CHECKING:
    from collections.abc import Iterator

DEFAULT_AMQP_URI: Final = os.environ.get(
    "TRIOEVENTS_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"
)
DEFAULT_API_URI: Final = os.environ.get(
    "TRIOEVENTS_RABBIT_API_URI", "http://guest:guest@127.0.0.1:15672/api/"
)


class RabbitMQ:
    """The local RabbitMQ, if reachable: versions and a benchmark vhost.

    Parameters
    ----------
    amqp_uri, api_uri
        The broker and its management API.
    """

    def __init__(self, amqp_uri: str, api_uri: str) -> None:
        self.amqp_uri = amqp_uri
        self.admin = RabbitAdmin(api_uri)

    def problem(self) -> str | None:
        """Say why the broker cannot be used, or ``None``."""
        return broker_problem(self.amqp_uri, self.admin)

    def versions(self) -> dict[str, str]:
        """Return the broker's and Erlang's versions (management API ``overview``)."""
        overview = self.admin.request("GET", "overview")
        return {
            "rabbitmq": str(overview.get("rabbitmq_version", "?")),
            "erlang": str(overview.get("erlang_version", "?")),
        }

    @contextlib.contextmanager
    def vhost(self) -> Iterator[str]:
        """Create a fresh vhost for the benchmark, yield its URI, delete it after."""
        name = f"trioevents-bench-{uuid.uuid4().hex[:12]}"
        self.admin.create_vhost(name)
        try:
            yield vhost_uri(self.amqp_uri, name)
        finally:
            self._delete(name)

    def _delete(self, name: str, attempts: int = 5) -> None:
        # The broker may be restarting (other jobs share it): try a few times,
        # then say what was left behind.
        for attempt in range(attempts):
            try:
                self.admin.delete_vhost(name)
            except (OSError, urllib.error.URLError) as exc:
                if attempt == attempts - 1:
                    print(
                        f"could not delete the vhost {name!r}: {exc}", file=sys.stderr
                    )
                    return
                time.sleep(2)
            else:
                return
