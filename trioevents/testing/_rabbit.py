"""A tiny client of the RabbitMQ management HTTP API, for test fixtures."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, final

from .._exceptions import ConfigurationError
from .._uri import masked_uri, parse_amqp_address, with_virtual_host

__all__ = ["RabbitAdmin", "broker_problem", "new_vhost_name", "vhost_uri"]


@final
class RabbitAdmin:
    """A small, synchronous client of the RabbitMQ management HTTP API.

    The pytest plugin's session fixture ``rabbit_admin`` is one; the
    ``rabbit_vhost`` fixture uses it to make and remove a vhost per test
    (``rabbitmqctl`` costs seconds of CPU per call, the HTTP API milliseconds).

    Parameters
    ----------
    api_uri
        The API's base URI with credentials, such as
        ``http://guest:guest@127.0.0.1:15672/api/``. Its password is never
        shown: the repr and every error mask it.

    Attributes
    ----------
    base
        The API's base URI, without credentials.
    user
        The user the API is called as; new vhosts grant it every permission.

    Raises
    ------
    ConfigurationError
        *api_uri* is not an ``http://`` or ``https://`` URI with a host.
    """

    def __init__(self, api_uri: str) -> None:
        shown = masked_uri(api_uri)
        try:
            parts = urllib.parse.urlsplit(api_uri)
            hostname, _port = parts.hostname, parts.port  # both may raise ValueError
        except ValueError:
            raise ConfigurationError(
                f"the RabbitMQ management API URI {shown!r} does not parse "
                "(percent-encode / ? # @ and : in the user name and password)"
            ) from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise ConfigurationError(
                f"the RabbitMQ management API URI {shown!r} is not an http:// or "
                "https:// URI with a host, such as "
                "http://guest:guest@127.0.0.1:15672/api/"
            )
        address = parts.netloc.rpartition("@")[2]
        self.base = f"{parts.scheme}://{address}{parts.path}"
        if not self.base.endswith("/"):
            self.base += "/"
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.user = user
        self._shown = shown
        self._auth = f"Basic {token}"

    def __repr__(self) -> str:
        return f"RabbitAdmin({self._shown!r})"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call the API: ``request("GET", "vhosts")``; return the decoded JSON."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self._auth)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def create_vhost(self, name: str) -> None:
        """Create vhost *name* and give :attr:`user` every permission on it."""
        quoted = urllib.parse.quote(name, safe="")
        self.request("PUT", f"vhosts/{quoted}")
        self.request(
            "PUT",
            f"permissions/{quoted}/{urllib.parse.quote(self.user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def delete_vhost(self, name: str) -> None:
        """Delete vhost *name* and everything in it (no error if it is gone)."""
        quoted = urllib.parse.quote(name, safe="")
        try:
            self.request("DELETE", f"vhosts/{quoted}")
        except urllib.error.HTTPError as exc:  # pragma: no cover - already gone
            if exc.code != 404:
                raise


def _reachable(uri: str) -> bool:
    address = parse_amqp_address(uri)
    try:
        socket.create_connection((address.host, address.port), timeout=2).close()
    except OSError:
        return False
    return True


def broker_problem(amqp_uri: str, admin: RabbitAdmin) -> str | None:
    """Say why the broker at *amqp_uri* cannot be used for tests, or ``None``."""
    if not _reachable(amqp_uri):
        return f"RabbitMQ is not reachable at {masked_uri(amqp_uri)}"
    try:
        admin.request("GET", "overview")
    except (OSError, urllib.error.URLError) as exc:
        return f"the RabbitMQ management API at {admin.base} failed: {exc}"
    return None


def new_vhost_name() -> str:
    """Return a fresh vhost name, ``trioevents-test-<random>``."""
    return f"trioevents-test-{uuid.uuid4().hex[:12]}"


def vhost_uri(amqp_uri: str, vhost: str) -> str:
    """Return *amqp_uri* pointed at *vhost* (credentials and host kept)."""
    return with_virtual_host(amqp_uri, vhost)
