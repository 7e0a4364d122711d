"""trioevents: nameko-style events on trio, over RabbitMQ or an embedded broker."""

from __future__ import annotations

from ._config import Config as Config
from ._events import (
    BROADCAST as BROADCAST,
    SERVICE_POOL as SERVICE_POOL,
    SINGLETON as SINGLETON,
    EventDispatcher as EventDispatcher,
    EventHandler as EventHandler,
    HandlerType as HandlerType,
    event_handler as event_handler,
)
from ._exceptions import (
    AccessRefused as AccessRefused,
    AlreadySettled as AlreadySettled,
    BrokerUnavailable as BrokerUnavailable,
    ChannelClosedByBroker as ChannelClosedByBroker,
    ConfigurationError as ConfigurationError,
    ConnectionLost as ConnectionLost,
    ConsumerCancelled as ConsumerCancelled,
    EventHandlerConfigurationError as EventHandlerConfigurationError,
    HandlerTimeout as HandlerTimeout,
    InvalidRequest as InvalidRequest,
    LocalProtocolError as LocalProtocolError,
    NotFound as NotFound,
    PreconditionFailed as PreconditionFailed,
    ProtocolError as ProtocolError,
    PublishNotConfirmed as PublishNotConfirmed,
    RemoteProtocolError as RemoteProtocolError,
    ResourceLocked as ResourceLocked,
    SerializationError as SerializationError,
    TransportError as TransportError,
    TrioEventsError as TrioEventsError,
)
from ._extensions import (
    DependencyProvider as DependencyProvider,
    Entrypoint as Entrypoint,
    Extension as Extension,
)
from ._host import ServiceHost as ServiceHost
from ._memory import MemoryTransport as MemoryTransport
from ._message import (
    Delivery as Delivery,
    ExchangeType as ExchangeType,
    Properties as Properties,
    QueueDeclared as QueueDeclared,
    Settlement as Settlement,
)
from ._retry import Backoff as Backoff
from ._version import __version__ as __version__
from ._worker import WorkerContext as WorkerContext

__all__ = [
    "BROADCAST",
    "SERVICE_POOL",
    "SINGLETON",
    "AccessRefused",
    "AlreadySettled",
    "Backoff",
    "BrokerUnavailable",
    "ChannelClosedByBroker",
    "Config",
    "ConfigurationError",
    "ConnectionLost",
    "ConsumerCancelled",
    "Delivery",
    "DependencyProvider",
    "Entrypoint",
    "EventDispatcher",
    "EventHandler",
    "EventHandlerConfigurationError",
    "ExchangeType",
    "Extension",
    "HandlerTimeout",
    "HandlerType",
    "InvalidRequest",
    "LocalProtocolError",
    "MemoryTransport",
    "NotFound",
    "PreconditionFailed",
    "Properties",
    "ProtocolError",
    "PublishNotConfirmed",
    "QueueDeclared",
    "RemoteProtocolError",
    "ResourceLocked",
    "SerializationError",
    "ServiceHost",
    "Settlement",
    "TransportError",
    "TrioEventsError",
    "WorkerContext",
    "event_handler",
]


def _fixup_module_metadata() -> None:
    """Show public names as ``trioevents.X`` in tracebacks and docs (as trio does)."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trioevents."):
            obj.__module__ = "trioevents"


_fixup_module_metadata()
del _fixup_module_metadata
