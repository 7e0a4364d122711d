"""An AsyncAPI 3.0 document of the events of some service classes.

:func:`asyncapi_document` reads what the classes declare, without a host or a
broker, and describes it as `AsyncAPI 3.0 <https://www.asyncapi.com/docs/reference/specification/v3.0.0>`_:

* a **channel** per exchange and routing key: ``{source}.events`` (topic,
  durable) and the event type, with the AMQP channel binding;
* a ``send`` **operation** per event type an :class:`~trioevents.EventDispatcher`
  declares (``EventDispatcher(events={...})``) and a ``receive`` operation per
  event handler, whose AMQP binding names the handler's queue and its flags
  (``x-queue``) and whose ``x-trioevents`` says its handler type, reliable
  delivery, retries and dead-letter queue;
* a **message** per payload type seen on a channel, with the payload's JSON
  Schema (:mod:`._schema`: the form the converter puts on the wire) and the
  ``nameko.*`` context headers;
* **servers** from an ``AMQP_URI`` (passwords never appear).

The names and flags come from :mod:`._events._topology`, as the host declares
them.
"""

from __future__ import annotations

import inspect
import json
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

from ._codec import PayloadCodec
from ._config import Config
from ._events import EventDispatcher, EventHandler, HandlerType
from ._events._topology import (
    QueueType,
    dead_letter_queue,
    event_exchange_name,
    handler_queue,
)
from ._extensions import entrypoints_of
from ._schema import SchemaBuilder, component_key, type_label
from ._serialization import JSON_CONTENT_ENCODING, JSON_CONTENT_TYPE
from ._service import service_name_of
from ._uri import parse_broker_uri
from ._worker import CALL_ID_STACK_CONTEXT_KEY, HEADER_PREFIX

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._events._topology import QueueSpec
    from ._schema import Schema

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document"]

#: The AsyncAPI version of the documents.
ASYNCAPI_VERSION: Final = "3.0.0"
#: The version of the AMQP bindings the documents use.
AMQP_BINDING_VERSION: Final = "0.3.0"
#: The named schema of the context headers every message may carry.
HEADERS_SCHEMA: Final = "NamekoContextHeaders"
#: What a ``BROADCAST`` queue name holds where its per-start identifier goes.
BROADCAST_PLACEHOLDER: Final = "{broadcast_identifier}"
#: nameko's default ``parent_calls_tracked``, plus the call itself.
_CALL_ID_STACK_SIZE: Final = 11

_SHARING: Final = {
    HandlerType.SERVICE_POOL: "Every event once per service, shared among its "
    "instances.",
    HandlerType.SINGLETON: "Every event once in the whole cluster.",
    HandlerType.BROADCAST: "Every event to every running instance, each with a "
    "queue of its own.",
}


def asyncapi_document(
    services: Sequence[type],
    *,
    title: str | None = None,
    version: str = "1.0.0",
    description: str | None = None,
    uri: str | None = None,
    config: Config | None = None,
) -> dict[str, Any]:
    """Describe the events of *services* as an AsyncAPI 3.0 document.

    Every event type a dispatcher declares (``EventDispatcher(events={...})``)
    becomes a ``send`` operation and every event handler a ``receive``
    operation, on the channel of the source service's exchange and the event
    type; payloads are described by JSON Schemas derived from the declared
    types and the handlers' annotations, in the form the converter puts on the
    wire. What a dispatcher sends without declaring it is not in the document
    (``info.description`` names such dispatchers).

    Parameters
    ----------
    services
        Service classes (each with a ``name``), as a host takes them.
    title
        ``info.title``; by default the services' names.
    version
        ``info.version``: the version of the services' API.
    description
        ``info.description``; by default a summary of the services.
    uri
        An ``AMQP_URI``: each RabbitMQ address becomes a server (its password
        left out); ``memory://`` and ``None`` give no servers.
    config
        The services' configuration: its ``QUEUE_TYPE`` and
        ``QUORUM_DELIVERY_LIMIT`` decide the queues of handlers that do not set
        ``queue_type`` (default: classic queues).

    Returns
    -------
    dict
        The document: JSON-ready dicts, lists, strings, numbers and booleans,
        for ``json.dumps`` or ``yaml.safe_dump``.

    Raises
    ------
    ConfigurationError
        A class has no ``name``, a handler's payload annotation cannot be
        resolved or structured, or *uri* is not an ``AMQP_URI``.
    """
    document = _Document(uri, config if config is not None else Config())
    names: list[str] = []
    undeclared: list[str] = []
    for cls in services:
        name = service_name_of(cls)
        names.append(name)
        for attr in dir(cls):
            value = inspect.getattr_static(cls, attr, None)
            if isinstance(value, EventDispatcher):
                if not value.events:
                    undeclared.append(f"{name}.{attr}")
                document.add_dispatcher(name, attr, value)
                continue
            handlers = [
                ep for ep in entrypoints_of(value) if isinstance(ep, EventHandler)
            ]
            for handler in handlers:
                document.add_handler(
                    cls, name, attr, handler, several=len(handlers) > 1
                )
    info: dict[str, Any] = {
        "title": title if title is not None else ", ".join(names) or "no services",
        "version": version,
        "description": description
        if description is not None
        else _summary(names, undeclared),
    }
    return document.build(info)


def _summary(names: list[str], undeclared: list[str]) -> str:
    text = (
        f"The events of {', '.join(names) or 'no services'}. Each service "
        "dispatches its events to the durable topic exchange `{service}.events`, "
        "with the event type as routing key; each event handler consumes a queue "
        "of its own (nameko's topology)."
    )
    if undeclared:
        text += (
            " Not listed: the events of dispatchers that declare none "
            f"(EventDispatcher(events={{...}})): {', '.join(undeclared)}."
        )
    return text


class _Document:
    """The parts of one document, filled service by service."""

    def __init__(self, uri: str | None, config: Config) -> None:
        self.config = config
        self.schemas = SchemaBuilder()
        self.schemas.add(HEADERS_SCHEMA, _context_headers_schema())
        self.codec = PayloadCodec()
        self.servers, self.vhost = _servers(uri)
        self.channels: dict[str, dict[str, Any]] = {}
        self.channel_ids: dict[tuple[str, str], str] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}

    # -- operations

    def add_dispatcher(
        self, service: str, attr: str, dispatcher: EventDispatcher
    ) -> None:
        options = dispatcher.publish_options
        amqp: dict[str, Any] = {
            "deliveryMode": options.get("delivery_mode", 2),
            "priority": options.get("priority", 0),
        }
        if "mandatory" in options:
            amqp["mandatory"] = options["mandatory"]
        for event_type, payload_type in dispatcher.events.items():
            channel_id = self._channel(service, event_type)
            message = self._message(channel_id, service, event_type, payload_type)
            operation_id = component_key(f"send.{service}.{event_type}")
            operation = self.operations.setdefault(
                operation_id,
                {
                    "action": "send",
                    "channel": {"$ref": f"#/channels/{channel_id}"},
                    "summary": f"{service} dispatches {event_type}",
                    "messages": [],
                    "bindings": {
                        "amqp": {**amqp, "bindingVersion": AMQP_BINDING_VERSION}
                    },
                    "x-trioevents": {"service": service, "dispatchers": []},
                },
            )
            if message not in operation["messages"]:
                operation["messages"].append(message)
            operation["x-trioevents"]["dispatchers"].append(attr)

    def add_handler(
        self,
        cls: type,
        service: str,
        method: str,
        handler: EventHandler,
        *,
        several: bool,
    ) -> None:
        source, event_type = handler.source_service, handler.event_type
        annotation = self.codec.payload_annotation(cls, method)
        channel_id = self._channel(source, event_type)
        message = self._message(channel_id, source, event_type, annotation)
        queue = _handler_queue(handler, service, method, self.config)
        reliable = handler.reliable_delivery
        keeping = (
            "The queue outlives its consumers: events dispatched while no handler "
            "runs are kept."
            if reliable
            else "The queue goes away with its consumer: events dispatched while "
            "no handler runs are not kept."
        )
        base = f"receive.{service}.{method}"
        if several:
            base += f".{source}.{event_type}"
        self.operations[_unique(component_key(base), self.operations)] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"{service}.{method} handles {event_type} from {source}",
            "description": f"{_SHARING[handler.handler_type]} {keeping} A message "
            "is acked once the handler finished.",
            "messages": [message],
            "bindings": {
                "amqp": {
                    "ack": True,
                    "bindingVersion": AMQP_BINDING_VERSION,
                    "x-queue": self._queue_binding(queue),
                }
            },
            "x-trioevents": _handler_extension(handler, service, method, queue),
        }

    # -- channels and messages

    def _channel(self, source: str, event_type: str) -> str:
        """The id of the channel of *event_type* on *source*'s exchange."""
        known = self.channel_ids.get((source, event_type))
        if known is not None:
            return known
        channel_id = _unique(
            component_key(f"{event_exchange_name(source)}.{event_type}"),
            self.channels,
        )
        exchange: dict[str, Any] = {
            "name": event_exchange_name(source),
            "type": "topic",
            "durable": True,
            "autoDelete": False,
        }
        if self.vhost is not None:
            exchange["vhost"] = self.vhost
        pattern = "*" in event_type or "#" in event_type
        what = (
            f"The events whose routing key matches {event_type!r}"
            if pattern
            else f"The {event_type} events"
        )
        self.channels[channel_id] = {
            "address": event_type,
            "description": f"{what} of {source}: exchange "
            f"{event_exchange_name(source)} (topic, durable), routing key "
            f"{'pattern ' if pattern else ''}{event_type}.",
            "messages": {},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": exchange,
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        self.channel_ids[(source, event_type)] = channel_id
        return channel_id

    def _message(
        self, channel_id: str, source: str, event_type: str, annotation: object
    ) -> dict[str, str]:
        """A reference to the channel's message for payloads of *annotation*.

        Payloads of one schema share a message; another schema on the same
        channel (a handler that reads the event as another type) gets its own.
        """
        payload = self.schemas.payload_schema(annotation)
        channel_messages: dict[str, dict[str, str]] = self.channels[channel_id][
            "messages"
        ]
        for key, ref in channel_messages.items():
            name = ref["$ref"].rpartition("/")[2]
            if self.messages[name]["payload"] == payload:
                return {"$ref": f"#/channels/{channel_id}/messages/{key}"}
        label = type_label(annotation)
        key = component_key(event_type)
        name = component_key(f"{source}.{event_type}")
        if channel_messages:
            key = component_key(f"{event_type}.{label}")
            name = component_key(f"{source}.{event_type}.{label}")
        key = _unique(key, channel_messages)
        name = _unique(name, self.messages)
        self.messages[name] = {
            "name": event_type,
            "title": label,
            "summary": f"{event_type} from {source}",
            "contentType": JSON_CONTENT_TYPE,
            "headers": {"$ref": f"#/components/schemas/{HEADERS_SCHEMA}"},
            "payload": payload,
            "bindings": {
                "amqp": {
                    "contentEncoding": JSON_CONTENT_ENCODING,
                    "messageType": event_type,
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        channel_messages[key] = {"$ref": f"#/components/messages/{name}"}
        return {"$ref": f"#/channels/{channel_id}/messages/{key}"}

    def _queue_binding(self, queue: QueueSpec) -> dict[str, Any]:
        binding: dict[str, Any] = {
            "name": queue.name,
            "durable": queue.durable,
            "exclusive": queue.exclusive,
            "autoDelete": queue.auto_delete,
        }
        if self.vhost is not None:
            binding["vhost"] = self.vhost
        if queue.arguments:
            binding["arguments"] = dict(queue.arguments)
        return binding

    # -- the whole

    def build(self, info: dict[str, Any]) -> dict[str, Any]:
        document: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info}
        if self.servers:
            document["servers"] = self.servers
        document.update(
            {
                "defaultContentType": JSON_CONTENT_TYPE,
                "channels": self.channels,
                "operations": self.operations,
                "components": {
                    "messages": self.messages,
                    "schemas": self.schemas.definitions,
                },
            }
        )
        # A copy in plain JSON types, sharing no object (YAML would show shared
        # ones as anchors and aliases).
        built: dict[str, Any] = json.loads(json.dumps(document))
        return built


def _unique(key: str, taken: Mapping[str, object]) -> str:
    """*key*, or *key* with a number added if *taken* holds it already."""
    if key not in taken:
        return key
    number = 2
    while f"{key}_{number}" in taken:
        number += 1
    return f"{key}_{number}"


def _handler_queue(
    handler: EventHandler, service: str, method: str, config: Config
) -> QueueSpec:
    """The queue *handler* consumes; a per-start identifier as a placeholder."""
    identifier = BROADCAST_PLACEHOLDER
    overridden = type(handler).broadcast_identifier is not (
        EventHandler.broadcast_identifier
    )
    if handler.handler_type is HandlerType.BROADCAST and overridden:
        try:
            value: object = handler.broadcast_identifier
        except Exception:  # it may need a host: keep the placeholder
            value = None
        if isinstance(value, str) and value:
            identifier = value
    return handler_queue(
        handler.source_service,
        handler.event_type,
        handler.handler_type,
        service,
        method,
        reliable_delivery=handler.reliable_delivery,
        broadcast_identifier=identifier,
        queue_type=_queue_type(handler, config),
        delivery_limit=config.quorum_delivery_limit,
    )


def _queue_type(handler: EventHandler, config: Config) -> QueueType:
    """The handler's own queue type, else the config's (non-reliable: classic)."""
    if handler.queue_type is not None:
        return handler.queue_type
    if not handler.reliable_delivery:
        return QueueType.CLASSIC
    return QueueType(config.queue_type)


def _handler_extension(
    handler: EventHandler, service: str, method: str, queue: QueueSpec
) -> dict[str, Any]:
    requeue = handler.requeue_on_error
    extension: dict[str, Any] = {
        "service": service,
        "method": method,
        "handlerType": handler.handler_type.value,
        "reliableDelivery": handler.reliable_delivery,
        "queue": queue.name,
        "queueType": queue.queue_type.value,
        "requeueOnError": requeue
        if isinstance(requeue, bool)
        else [error.__name__ for error in requeue],
        "deadLetterQueue": dead_letter_queue(queue).name,
    }
    limit = queue.arguments.get("x-delivery-limit")
    if limit is not None:
        extension["deliveryLimit"] = limit
    if handler.retry is not None:
        extension["retry"] = {
            "delays": list(handler.retry.delays),
            "retryOn": [error.__name__ for error in handler.retry.retry_on],
        }
    if handler.timeout is not None:
        extension["timeout"] = handler.timeout
    return extension


def _servers(uri: str | None) -> tuple[dict[str, Any], str | None]:
    """The servers of *uri*, and the virtual host they share (if one)."""
    if uri is None:
        return {}, None
    broker = parse_broker_uri(uri)
    servers: dict[str, Any] = {}
    for number, address in enumerate(broker.addresses, start=1):
        key = "rabbitmq" if len(broker.addresses) == 1 else f"rabbitmq-{number}"
        servers[key] = {
            "host": address.node,
            "pathname": "/" + urllib.parse.quote(address.virtual_host, safe=""),
            "protocol": "amqps" if address.tls else "amqp",
            "protocolVersion": "0.9.1",
            "description": f"AMQP_URI {address.masked}",
        }
    vhosts = {address.virtual_host for address in broker.addresses}
    return servers, vhosts.pop() if len(vhosts) == 1 else None


def _context_headers_schema() -> Schema:
    return {
        "title": "nameko context headers",
        "description": "The context of the worker that dispatched the event, as "
        f"nameko sends it: each context key as a {HEADER_PREFIX}<key> header "
        "(custom keys too). A standalone dispatch sends none; other headers may "
        "come too.",
        "type": "object",
        "properties": {
            HEADER_PREFIX + CALL_ID_STACK_CONTEXT_KEY: {
                "type": "array",
                "items": {"type": "string"},
                "description": "The calls that led to the event, oldest first, each "
                '"{service}.{method}.{uuid4}": the last parent_calls_tracked + 1 '
                f"({_CALL_ID_STACK_SIZE} by default).",
            },
            HEADER_PREFIX + "language": {"type": "string"},
            HEADER_PREFIX + "user_id": {"type": "string"},
            HEADER_PREFIX + "auth_token": {"type": "string"},
        },
    }
