"""The whole error tree of trioevents.

::

    TrioEventsError(Exception)
    ├── ConfigurationError
    │   └── EventHandlerConfigurationError   (nameko's name)
    ├── SerializationError                    __cause__ = the codec / cattrs error
    ├── HandlerTimeout                        a handler ran past its ``timeout``
    └── TransportError
        ├── InvalidRequest(ValueError)        refused before it reaches a broker
        ├── AlreadySettled                    a delivery acked / nacked / rejected twice
        ├── BrokerUnavailable                 connect / handshake failed
        │   └── AccessRefusedByBroker         login or vhost refused: not retried
        ├── ConnectionLost                    heartbeat or socket loss
        ├── ConsumerCancelled                 the broker cancelled a consumer
        ├── PublishNotConfirmed               nack, unroutable ``mandatory``, overflow
        ├── ChannelClosedByBroker             .reply_code, .reply_text
        │   ├── AccessRefused                 403
        │   ├── NotFound                      404
        │   ├── ResourceLocked                405
        │   └── PreconditionFailed            406
        └── ProtocolError
            ├── LocalProtocolError            we were about to break AMQP
            └── RemoteProtocolError           the peer broke AMQP

The broker-side errors keep RabbitMQ's reply codes and texts so that the embedded
broker and RabbitMQ raise the same exception for the same mistake.
"""

from __future__ import annotations

from typing import final

__all__ = [
    "AccessRefused",
    "AccessRefusedByBroker",
    "AlreadySettled",
    "BrokerUnavailable",
    "ChannelClosedByBroker",
    "ConfigurationError",
    "ConnectionLost",
    "ConsumerCancelled",
    "EventHandlerConfigurationError",
    "HandlerTimeout",
    "InvalidRequest",
    "LocalProtocolError",
    "NotFound",
    "PreconditionFailed",
    "ProtocolError",
    "PublishNotConfirmed",
    "RemoteProtocolError",
    "ResourceLocked",
    "SerializationError",
    "TransportError",
    "TrioEventsError",
]


class TrioEventsError(Exception):
    """Base class of every error raised by trioevents."""


class ConfigurationError(TrioEventsError):
    """A service, handler or host is configured in a way that cannot work."""


class EventHandlerConfigurationError(ConfigurationError):
    """An event handler's options contradict each other (nameko's name)."""


class SerializationError(TrioEventsError):
    """A payload could not be encoded or decoded; ``__cause__`` tells why."""


@final
class HandlerTimeout(TrioEventsError):
    """A handler ran longer than its ``timeout`` and was cancelled."""


class TransportError(TrioEventsError):
    """Base class of the errors raised by a transport (broker connection)."""


@final
class InvalidRequest(TransportError, ValueError):
    """A request was refused before it reached the broker.

    Examples are an unknown exchange type, a routing key longer than 255 bytes or a
    message body that is not :class:`bytes`.
    """


@final
class AlreadySettled(TransportError):
    """A delivery was acked, nacked or rejected a second time.

    Each delivery can be settled exactly once; the first settle stands.
    """


class BrokerUnavailable(TransportError):
    """The broker could not be reached, or refused the connection."""


@final
class AccessRefusedByBroker(BrokerUnavailable):
    """The broker refused the login or the virtual host while connecting.

    ``403 ACCESS_REFUSED`` (a wrong user name or password, or a certificate the
    broker does not accept) or ``530 NOT_ALLOWED`` (a virtual host that does not
    exist or the user may not use). Trying again cannot help until the
    configuration changes, so a host or dispatcher that has not connected yet
    fails at once instead of retrying ``CONNECT_ATTEMPTS`` times; the message
    says what to fix.

    Attributes
    ----------
    reply_code
        ``403`` or ``530``.
    reply_text
        The broker's explanation, e.g. ``"NOT_ALLOWED - vhost shop not found"``.
    """

    def __init__(self, message: str, reply_code: int, reply_text: str) -> None:
        super().__init__(message, reply_code, reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text

    def __str__(self) -> str:
        return str(self.args[0])


class ConnectionLost(TransportError):
    """The connection to the broker is gone (socket error, heartbeat, close)."""


class ConsumerCancelled(TransportError):
    """The broker cancelled a consumer (e.g. its queue was deleted)."""


class PublishNotConfirmed(TransportError):
    """The broker did not take responsibility for a published message.

    Raised for a ``basic.nack``, for a ``mandatory`` message that could not be
    routed (``basic.return``) and for a message refused by a full queue with
    ``x-overflow=reject-publish``.
    """


class ChannelClosedByBroker(TransportError):
    """The broker refused an operation and closed the channel it came on.

    Attributes
    ----------
    reply_code
        The AMQP reply code, e.g. ``404``.
    reply_text
        The broker's explanation, e.g. ``"NOT_FOUND - no queue 'q' in vhost '/'"``.
    """

    #: The reply code subclasses stand for; ``0`` on the base class.
    code: int = 0

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_code, reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text

    def __str__(self) -> str:
        return f"{self.reply_code} {self.reply_text}"

    @staticmethod
    def from_reply(reply_code: int, reply_text: str) -> ChannelClosedByBroker:
        """Build the most specific subclass for *reply_code*."""
        cls = _BY_CODE.get(reply_code, ChannelClosedByBroker)
        return cls(reply_code, reply_text)


@final
class AccessRefused(ChannelClosedByBroker):
    """403 ACCESS_REFUSED: e.g. a reserved ``amq.`` name or an exclusive consumer."""

    code = 403


@final
class NotFound(ChannelClosedByBroker):
    """404 NOT_FOUND: a passive declare, bind, consume or publish named nothing."""

    code = 404


@final
class ResourceLocked(ChannelClosedByBroker):
    """405 RESOURCE_LOCKED: an exclusive queue belongs to another connection."""

    code = 405


@final
class PreconditionFailed(ChannelClosedByBroker):
    """406 PRECONDITION_FAILED: e.g. a redeclare with different flags."""

    code = 406


_BY_CODE: dict[int, type[ChannelClosedByBroker]] = {
    cls.code: cls
    for cls in (AccessRefused, NotFound, ResourceLocked, PreconditionFailed)
}


class ProtocolError(TransportError):
    """AMQP 0-9-1 was broken by one side of the connection."""


@final
class LocalProtocolError(ProtocolError):
    """We were about to send something that breaks the protocol."""


@final
class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol."""


def describe_exception(exc: BaseException) -> str:
    """Return ``"TypeName: message"`` for *exc*, even if its ``__str__`` fails.

    Exceptions come from user code (handlers, dependencies): formatting one must
    never raise in the code that handles it.
    """
    name = type(exc).__qualname__
    try:
        text = str(exc)
    except Exception as error:  # a broken __str__ of the user's exception
        text = f"<str() failed: {type(error).__qualname__}>"
    return f"{name}: {text}" if text else name
