"""The opening handshake: what a client answers to ``Connection.Start`` and ``Tune``.

::

    client                                  broker
    protocol header          -->
                             <--  Connection.Start  (versions, mechanisms, locales)
    Connection.Start-Ok      -->                    (credentials, client properties)
                             <--  Connection.Tune   (channel_max, frame_max, heartbeat)
    Connection.Tune-Ok       -->                    (the negotiated values)
    Connection.Open          -->                    (the virtual host)
                             <--  Connection.Open-Ok

:class:`Handshake` holds what we ask for and builds our side; the connection
state machine (:mod:`._state`, :mod:`._protocol`) decides when.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any, Final, Literal, final

from pamqp import commands

from .._exceptions import BrokerUnavailable, InvalidRequest
from .._version import __version__
from ._codec import to_field_table
from ._frames import FRAME_MIN_SIZE, Violation

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pamqp import common as pamqp_common

__all__ = ["CLIENT_CAPABILITIES", "Handshake", "negotiate"]

#: What we tell the broker we understand (RabbitMQ's capability names).
CLIENT_CAPABILITIES: Final[Mapping[str, bool]] = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
    "publisher_confirms": True,
}


def negotiate(ours: int, theirs: int) -> int:
    """Take the lower non-zero value; 0 only if both are 0."""
    if ours and theirs:
        return min(ours, theirs)
    return ours or theirs


@final
class Handshake:
    """Our side of the handshake: the credentials and limits we ask for.

    Parameters
    ----------
    username, password
        Credentials for the ``PLAIN`` mechanism.
    virtual_host
        The virtual host to open.
    auth_mechanism
        ``"PLAIN"`` (username and password) or ``"EXTERNAL"`` (the TLS client
        certificate; RabbitMQ's ``rabbitmq_auth_mechanism_ssl``).
    heartbeat
        The heartbeat interval we ask for, in seconds. The lower non-zero value
        of ours and the broker's wins; ``0`` turns heartbeats off whatever the
        broker proposes (py-amqp's rule, so nameko's ``HEARTBEAT: 0`` carries
        over).
    frame_max
        The largest frame we accept, in bytes (at least 4096); the lower of
        ours and the broker's wins.
    channel_max
        The highest channel number we will use; the lower non-zero value of
        ours and the broker's wins (``0`` on both sides means 65535).
    client_properties
        Extra client properties, e.g. ``{"connection_name": "orders"}``. Keys
        override ours, except ``capabilities``, which is merged into ours.
    locale
        The locale to ask for, if the broker offers it.

    Raises
    ------
    InvalidRequest
        An argument is out of range.
    """

    __slots__ = (
        "auth_mechanism",
        "channel_max",
        "client_properties",
        "frame_max",
        "heartbeat",
        "locale",
        "password",
        "username",
        "virtual_host",
    )

    def __init__(
        self,
        *,
        username: str,
        password: str,
        virtual_host: str,
        auth_mechanism: Literal["PLAIN", "EXTERNAL"],
        heartbeat: int,
        frame_max: int,
        channel_max: int,
        client_properties: Mapping[str, Any] | None,
        locale: str,
    ) -> None:
        if auth_mechanism not in ("PLAIN", "EXTERNAL"):
            raise InvalidRequest(f"unsupported auth mechanism {auth_mechanism!r}")
        if not 0 <= heartbeat <= 65535:
            raise InvalidRequest(f"heartbeat must be 0..65535, not {heartbeat}")
        if not FRAME_MIN_SIZE <= frame_max <= 0xFFFFFFFF:
            raise InvalidRequest(f"frame_max must be 4096..2**32-1, not {frame_max}")
        if not 0 <= channel_max <= 65535:
            raise InvalidRequest(f"channel_max must be 0..65535, not {channel_max}")
        if len(virtual_host.encode("utf-8")) > 127:
            raise InvalidRequest("virtual_host is longer than 127 bytes")
        capabilities = dict(CLIENT_CAPABILITIES)
        props: dict[str, Any] = {
            "product": "trioevents",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "information": "https://pypi.org/project/trioevents/",
        }
        for key, value in (client_properties or {}).items():
            if key == "capabilities":
                capabilities.update(value)
            else:
                props[key] = value
        props["capabilities"] = capabilities
        #: What Start-Ok tells the broker about us.
        self.client_properties: pamqp_common.FieldTable = to_field_table(
            props, "client_properties"
        )
        self.username = username
        self.password = password
        self.virtual_host = virtual_host
        self.auth_mechanism = auth_mechanism
        self.locale = locale
        self.heartbeat = heartbeat
        self.frame_max = frame_max
        self.channel_max = channel_max

    def start_ok(self, start: commands.Connection.Start) -> commands.Connection.StartOk:
        """Answer the broker's *start*: our mechanism, credentials and locale.

        Raises
        ------
        BrokerUnavailable
            The broker speaks another AMQP version or does not offer our SASL
            mechanism.
        """
        if (start.version_major, start.version_minor) != (0, 9):
            raise BrokerUnavailable(
                f"the broker speaks AMQP {start.version_major}-{start.version_minor}, "
                "not 0-9-1"
            )
        mechanisms = _words(start.mechanisms)
        if self.auth_mechanism not in mechanisms:
            raise BrokerUnavailable(
                f"the broker offers the SASL mechanisms {mechanisms}, "
                f"not {self.auth_mechanism}"
            )
        locales = _words(start.locales)
        locale = self.locale if self.locale in locales or not locales else locales[0]
        response = (
            f"\0{self.username}\0{self.password}"
            if self.auth_mechanism == "PLAIN"
            else ""
        )
        return commands.Connection.StartOk(
            client_properties=self.client_properties,
            mechanism=self.auth_mechanism,
            response=response,
            locale=locale,
        )

    def tune_ok(self, tune: commands.Connection.Tune) -> commands.Connection.TuneOk:
        """Answer the broker's *tune* with the values both sides will use.

        Raises
        ------
        Violation
            The broker's ``frame_max`` is below the AMQP minimum.
        """
        frame_max = negotiate(self.frame_max, tune.frame_max)
        if frame_max < FRAME_MIN_SIZE:
            raise Violation(
                501,
                f"frame_max {tune.frame_max} is below the minimum {FRAME_MIN_SIZE}",
            )
        return commands.Connection.TuneOk(
            channel_max=negotiate(self.channel_max, tune.channel_max) or 65535,
            frame_max=frame_max,
            heartbeat=(
                negotiate(self.heartbeat, tune.heartbeat) if self.heartbeat else 0
            ),
        )

    def open(self) -> commands.Connection.Open:
        """Open our virtual host."""
        return commands.Connection.Open(self.virtual_host)


def _words(value: str | bytes) -> list[str]:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.split()
