"""Checking an AsyncAPI 3.0 document without the network.

AsyncAPI's official JSON Schema cannot be fetched here, so :data:`ASYNCAPI_3` is
the structure AsyncAPI 3.0 requires, as far as trioevents' documents use it:
the required fields, the shapes of references and of the AMQP 0.3.0 bindings
(which allow no fields but theirs and ``x-`` extensions). :func:`check_document`
adds what a schema cannot say: every ``$ref`` resolves, and an operation's
messages are its channel's. :func:`validator` validates payloads against a
schema of a document, its ``$ref`` resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jsonschema
import referencing
import referencing.jsonschema

if TYPE_CHECKING:
    from collections.abc import Iterator


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local ``$ref`` (``#/a/b``) in *document*; KeyError if it is dangling."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: object) -> Iterator[str]:
    """Every ``$ref`` in *node*, however deep."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


DOCUMENT_URI = "urn:trioevents:asyncapi"


def validator(document: dict[str, Any], ref: str) -> jsonschema.Draft202012Validator:
    """A Draft 2020-12 validator of the schema at *ref* in *document*."""
    resource = referencing.jsonschema.DRAFT202012.create_resource(document)
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        DOCUMENT_URI, resource
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"{DOCUMENT_URI}{ref}"},
        registry=registry,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


KEY = "^[A-Za-z0-9_.\\-]+$"
EXTENSION = "^x-[\\w\\d.\\-_]+$"
REFERENCE = {
    "type": "object",
    "required": ["$ref"],
    "properties": {"$ref": {"type": "string", "pattern": "^#/"}},
}


def _closed(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": properties,
        "patternProperties": {EXTENSION: {}},
        "additionalProperties": False,
    }


AMQP_BINDING_VERSION = {"const": "0.3.0"}
EXCHANGE = _closed(
    {
        "name": {"type": "string", "maxLength": 255},
        "type": {"enum": ["topic", "direct", "fanout", "default", "headers"]},
        "durable": {"type": "boolean"},
        "autoDelete": {"type": "boolean"},
        "vhost": {"type": "string"},
    }
)
QUEUE = _closed(
    {
        "name": {"type": "string", "maxLength": 255},
        "durable": {"type": "boolean"},
        "exclusive": {"type": "boolean"},
        "autoDelete": {"type": "boolean"},
        "vhost": {"type": "string"},
        "arguments": {"type": "object"},
    },
    "name",
    "durable",
    "exclusive",
    "autoDelete",
)
CHANNEL = _closed(
    {
        "address": {"type": ["string", "null"]},
        "title": {"type": "string"},
        "summary": {"type": "string"},
        "description": {"type": "string"},
        "messages": {"type": "object", "additionalProperties": REFERENCE},
        "bindings": _closed(
            {
                "amqp": _closed(
                    {
                        "is": {"enum": ["routingKey", "queue"]},
                        "exchange": EXCHANGE,
                        "queue": QUEUE,
                        "bindingVersion": AMQP_BINDING_VERSION,
                    },
                    "is",
                    "exchange",
                )
            }
        ),
    },
    "address",
    "messages",
)
OPERATION = _closed(
    {
        "action": {"enum": ["send", "receive"]},
        "channel": REFERENCE,
        "title": {"type": "string"},
        "summary": {"type": "string"},
        "description": {"type": "string"},
        "messages": {"type": "array", "items": REFERENCE, "minItems": 1},
        "bindings": _closed(
            {
                "amqp": _closed(
                    {
                        "expiration": {"type": "integer", "minimum": 0},
                        "priority": {"type": "integer"},
                        "deliveryMode": {"enum": [1, 2]},
                        "mandatory": {"type": "boolean"},
                        "ack": {"type": "boolean"},
                        "bindingVersion": AMQP_BINDING_VERSION,
                        "x-queue": QUEUE,
                    }
                )
            }
        ),
    },
    "action",
    "channel",
    "messages",
)
MESSAGE = _closed(
    {
        "name": {"type": "string"},
        "title": {"type": "string"},
        "summary": {"type": "string"},
        "contentType": {"const": "application/json"},
        "headers": REFERENCE,
        "payload": {"type": "object"},
        "bindings": _closed(
            {
                "amqp": _closed(
                    {
                        "contentEncoding": {"const": "utf-8"},
                        "messageType": {"type": "string"},
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                )
            }
        ),
    },
    "name",
    "payload",
    "headers",
)
SERVER = _closed(
    {
        "host": {"type": "string"},
        "pathname": {"type": "string"},
        "protocol": {"enum": ["amqp", "amqps"]},
        "protocolVersion": {"type": "string"},
        "description": {"type": "string"},
    },
    "host",
    "protocol",
)
ASYNCAPI_3 = _closed(
    {
        "asyncapi": {"const": "3.0.0"},
        "info": _closed(
            {
                "title": {"type": "string"},
                "version": {"type": "string"},
                "description": {"type": "string"},
            },
            "title",
            "version",
        ),
        "servers": {"type": "object", "additionalProperties": SERVER},
        "defaultContentType": {"const": "application/json"},
        "channels": {
            "type": "object",
            "propertyNames": {"pattern": KEY},
            "additionalProperties": CHANNEL,
        },
        "operations": {
            "type": "object",
            "propertyNames": {"pattern": KEY},
            "additionalProperties": OPERATION,
        },
        "components": _closed(
            {
                "messages": {
                    "type": "object",
                    "propertyNames": {"pattern": KEY},
                    "additionalProperties": MESSAGE,
                },
                "schemas": {
                    "type": "object",
                    "propertyNames": {"pattern": KEY},
                    "additionalProperties": {"type": "object"},
                },
            },
        ),
    },
    "asyncapi",
    "info",
)


def check_document(document: dict[str, Any]) -> None:
    """Fail unless *document* has AsyncAPI 3.0's structure and its refs resolve."""
    jsonschema.Draft202012Validator(ASYNCAPI_3).validate(document)
    for ref in refs(document):
        resolve(document, ref)  # a KeyError names a dangling one
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            # AsyncAPI: an operation's messages are some of its channel's.
            assert message["$ref"].startswith(f"{channel}/messages/"), name
