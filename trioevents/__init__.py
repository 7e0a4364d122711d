"""trioevents: nameko-style events on trio, over RabbitMQ or an embedded broker."""

from __future__ import annotations

from ._asyncapi import asyncapi_document as asyncapi_document
from ._codec import PayloadCodec as PayloadCodec
from ._config import Config as Config
from ._dlq import (
    DeadLetter as DeadLetter,
    DeadLetterListing as DeadLetterListing,
    DeadLetterQueue as DeadLetterQueue,
    ReplayOutcome as ReplayOutcome,
    ReplayReport as ReplayReport,
    open_dead_letter_queue as open_dead_letter_queue,
)
from ._events import (
    BROADCAST as BROADCAST,
    SERVICE_POOL as SERVICE_POOL,
    SINGLETON as SINGLETON,
    Backoff as Backoff,
    EventDispatcher as EventDispatcher,
    EventHandler as EventHandler,
    HandlerType as HandlerType,
    QueueType as QueueType,
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
from ._observe import (
    DispatchedEvent as DispatchedEvent,
    HandledEvent as HandledEvent,
    HostState as HostState,
    Observer as Observer,
    Outcome as Outcome,
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
    "DeadLetter",
    "DeadLetterListing",
    "DeadLetterQueue",
    "Defect",
    "Delivery",
    "DependencyProvider",
    "DispatchedEvent",
    "Entrypoint",
    "EventDispatcher",
    "EventHandler",
    "EventHandlerConfigurationError",
    "ExchangeType",
    "Extension",
    "HandledEvent",
    "HandlerTimeout",
    "HandlerType",
    "HostState",
    "InvalidRequest",
    "LocalProtocolError",
    "MemoryTransport",
    "NotFound",
    "Observer",
    "Outcome",
    "PayloadCodec",
    "PreconditionFailed",
    "Properties",
    "ProtocolError",
    "PublishNotConfirmed",
    "Publisher",
    "QueueDeclared",
    "QueueType",
    "RemoteProtocolError",
    "ReplayOutcome",
    "ReplayReport",
    "ResourceLocked",
    "SerializationError",
    "ServiceContext",
    "ServiceHost",
    "Settlement",
    "TransportError",
    "TrioEventsError",
    "WorkerContext",
    "WorkerResult",
    "asyncapi_document",
    "event_handler",
    "open_dead_letter_queue",
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
