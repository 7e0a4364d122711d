"""trioevents: nameko-style events on trio, over RabbitMQ or an embedded broker."""

from __future__ import annotations

from ._codec import PayloadCodec as PayloadCodec
from ._config import Config as Config
from ._events import (
    BROADCAST as BROADCAST,
    SERVICE_POOL as SERVICE_POOL,
    SINGLETON as SINGLETON,
    Backoff as Backoff,
    EventDispatcher as EventDispatcher,
    EventHandler as EventHandler,
    HandlerType as HandlerType,
    event_handler as event_handler,
)
from ._exceptions import (
    AccessRefused as AccessRefused,
    AccessRefusedByBroker as AccessRefusedByBroker,
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
    ConnectionContext as ConnectionContext,
    DependencyProvider as DependencyProvider,
    Entrypoint as Entrypoint,
    Extension as Extension,
    ServiceContext as ServiceContext,
    WorkerResult as WorkerResult,
)
from ._host import ServiceHost as ServiceHost
from ._memory import MemoryTransport as MemoryTransport
from ._message import (
    Defect as Defect,
    Delivery as Delivery,
    ExchangeType as ExchangeType,
    Properties as Properties,
    QueueDeclared as QueueDeclared,
    Settlement as Settlement,
)
from ._publisher import Publisher as Publisher
from ._signals import serve_until_signalled as serve_until_signalled
from ._version import __version__ as __version__
from ._worker import WorkerContext as WorkerContext

__all__ = [
    "BROADCAST",
    "SERVICE_POOL",
    "SINGLETON",
    "AccessRefused",
    "AccessRefusedByBroker",
    "AlreadySettled",
    "Backoff",
    "BrokerUnavailable",
    "ChannelClosedByBroker",
    "Config",
    "ConfigurationError",
    "ConnectionContext",
    "ConnectionLost",
    "ConsumerCancelled",
    "Defect",
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
    "PayloadCodec",
    "PreconditionFailed",
    "Properties",
    "ProtocolError",
    "PublishNotConfirmed",
    "Publisher",
    "QueueDeclared",
    "RemoteProtocolError",
    "ResourceLocked",
    "SerializationError",
    "ServiceContext",
    "ServiceHost",
    "Settlement",
    "TransportError",
    "TrioEventsError",
    "WorkerContext",
    "WorkerResult",
    "event_handler",
    "serve_until_signalled",
]


def _fixup_module_metadata() -> None:
    """Show public names as ``trioevents.X`` in tracebacks and docs (as trio does)."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trioevents."):
            obj.__module__ = "trioevents"


_fixup_module_metadata()
del _fixup_module_metadata
