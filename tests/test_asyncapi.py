"""AsyncAPI: ``EventDispatcher(events=...)``, payload schemas, the document, the CLI.

The payload schemas are checked with ``jsonschema``: each is a valid JSON Schema
(the Draft 2020-12 meta-schema, and Draft 7's, on which AsyncAPI's schema object
is built), what the project's converter puts on the wire for real instances
validates against it, and wrong payloads do not. The document is checked
against the structure AsyncAPI 3.0 requires (``support/asyncapi.py``: the
official JSON Schema cannot be fetched here), and every ``$ref`` in it must
point at something that exists.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import pathlib
import re
import subprocess
import sys
import typing
import uuid
from typing import TYPE_CHECKING, Any, Literal, NewType, TypedDict

import attrs
import jsonschema
import pytest

import trioevents
from trioevents import (
    BROADCAST,
    SINGLETON,
    Backoff,
    Config,
    ConfigurationError,
    EventDispatcher,
    EventHandler,
    EventHandlerConfigurationError,
    asyncapi_document,
    event_handler,
)
from trioevents._configfile import import_yaml
from trioevents._schema import SchemaBuilder
from trioevents._serialization import decode_payload, encode_payload, make_converter
from trioevents.cli import import_services, main

from .support.asyncapi import check_document, refs, resolve, validator
from .support.brokers import dispatch
from .support.recording import Recorder

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONVERTER = make_converter()
UTC = datetime.UTC
yaml = import_yaml()


# ---------------------------------------------------------------- the types


class Color(enum.Enum):
    """A colour of the shop's range."""

    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Access(enum.IntFlag):
    READ = 4
    WRITE = 2


Sku = NewType("Sku", str)
T = typing.TypeVar("T")


@attrs.frozen
class Line:
    sku: Sku
    quantity: int
    price: decimal.Decimal


@dataclasses.dataclass(frozen=True)
class Address:
    street: str
    city: str
    postcode: str | None = None


@dataclasses.dataclass
class Category:
    """A category and those under it (a schema that refers to itself)."""

    name: str
    children: list[Category] = dataclasses.field(default_factory=list)


class Basket(TypedDict):
    id: int
    prices: list[str]


@attrs.frozen
class Page(typing.Generic[T]):
    items: list[T]
    next: int | None = None


@attrs.frozen
class Order:
    """Every kind of field the converter handles."""

    id: uuid.UUID
    placed_at: datetime.datetime
    ship_on: datetime.date
    slot: datetime.time
    lines: list[Line]
    address: Address
    color: Color
    priority: Priority
    access: Access
    kind: Literal["retail", "wholesale"]
    tags: frozenset[str]
    size: tuple[float, float, float]
    history: tuple[int, ...]
    notes: dict[str, str]
    stock: dict[Color, int]
    signature: bytes
    category: Category
    basket: Basket
    related: Page[Line]
    coupon: str | None = None
    paid: bool = False
    discount: decimal.Decimal | int = 0
    meta: dict[str, Any] = attrs.Factory(dict)


ORDER = Order(
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    placed_at=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    ship_on=datetime.date(2024, 5, 3),
    slot=datetime.time(9, 30, tzinfo=UTC),
    lines=[Line(Sku("tea"), 2, decimal.Decimal("3.50"))],
    address=Address("1 High St", "Leeds"),
    color=Color.GREEN,
    priority=Priority.HIGH,
    access=Access.READ | Access.WRITE,
    kind="retail",
    tags=frozenset({"gift", "fragile"}),
    size=(1.0, 2.5, 3.0),
    history=(1, 2, 3),
    notes={"door": "blue"},
    stock={Color.RED: 3},
    signature=b"\xff\x00binary",
    category=Category("food", [Category("tea")]),
    basket={"id": 1, "prices": ["9.99"]},
    related=Page([Line(Sku("cup"), 1, decimal.Decimal(4))], next=2),
    coupon="SPRING",
    discount=decimal.Decimal("1.25"),
    meta={"anything": [1, {"goes": None}]},
)


# ------------------------------------------------------------- the services


class Orders:
    name = "orders"
    dispatch = EventDispatcher(
        events={
            "order_placed": Order,
            "lines_added": list[Line],
            "ping": Any,
            "address_changed": Address | None,
        },
        priority=3,
    )
    untyped = EventDispatcher()

    @event_handler("web", "checkout")
    async def on_checkout(self, basket: Basket) -> None: ...


class Billing:
    name = "billing"

    @event_handler("orders", "order_placed", retry=Backoff(1, 5))
    async def charge(self, order: Order) -> None: ...

    @event_handler("orders", "lines_added", requeue_on_error=(KeyError,))
    async def on_lines(self, lines: list[Line]) -> None: ...


@dataclasses.dataclass
class OrderSummary:
    """Only the part of an order the audit reads."""

    id: uuid.UUID
    kind: str


class Audit:
    name = "audit"

    @event_handler("orders", "order_placed", handler_type=SINGLETON, timeout=5)
    async def record(self, order: OrderSummary) -> None: ...

    @event_handler("orders", "#", handler_type=BROADCAST, reliable_delivery=False)
    @event_handler("orders", "ping", handler_type=BROADCAST, reliable_delivery=False)
    async def everything(self, event):  # no annotation: plain JSON
        pass


class NamedHandler(EventHandler):
    @property
    def broadcast_identifier(self) -> str:
        return "host-1"


class Cache:
    name = "cache"

    @NamedHandler.decorator("orders", "order_placed", handler_type=BROADCAST)
    async def invalidate(self, event: dict[str, Any]) -> None: ...


SERVICES = [Orders, Billing, Audit, Cache]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document(SERVICES)


def on_the_wire(value: object) -> Any:
    """*value* as a handler's broker delivers it: encoded, then plain JSON."""
    body, _, _ = encode_payload(value, converter=CONVERTER)
    return json.loads(body)


def payload_ref(document: dict[str, Any], operation: str) -> str:
    """The ``$ref`` of the payload of *operation*'s (only) message."""
    (message,) = document["operations"][operation]["messages"]
    target = resolve(document, message["$ref"])["$ref"]
    return f"{target}/payload"


# ------------------------------------------------ EventDispatcher(events=...)


def test_a_dispatcher_declares_what_it_sends() -> None:
    dispatcher = EventDispatcher(events={"order_placed": Order}, priority=3)
    assert dict(dispatcher.events) == {"order_placed": Order}
    assert dispatcher.publish_options == {"priority": 3}
    with pytest.raises(TypeError):
        dispatcher.events["other"] = Line  # type: ignore[index] # read-only


def test_a_dispatcher_declares_nothing_by_default() -> None:
    assert dict(EventDispatcher().events) == {}
    assert EventDispatcher(delivery_mode=1).publish_options == {"delivery_mode": 1}


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([("order_placed", Order)], "takes a mapping of event type to payload type"),
        ({"": Order}, "an event type must be a non-empty str, not ''"),
        ({1: Order}, "an event type must be a non-empty str, not 1"),
        ({"order.*": Order}, "'order.*' holds a wildcard"),
        ({"order.#": Order}, "'order.#' holds a wildcard"),
        ({"order_placed": "Order"}, "must be a type, not the string 'Order'"),
        ({"order_placed": object()}, "payloads cannot be structured into"),
    ],
)
def test_a_bad_declaration_is_a_configuration_error(
    events: object, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        EventDispatcher(events=events)  # type: ignore[arg-type] # what is refused


def test_an_unknown_publish_option_is_still_refused() -> None:
    with pytest.raises(ConfigurationError, match="nope"):
        EventDispatcher(events={"a": Line}, nope=1)


@attrs.frozen
class Declared:
    id: int


recorder = Recorder()


class Sender:
    name = "sender"
    dispatch = EventDispatcher(events={"declared": Declared})

    @event_handler("test", "go")
    async def go(self, payload: dict[str, Any]) -> None:
        await self.dispatch("undeclared", {"any": "thing"})
        await self.dispatch("declared", {"not": "a Declared"})


class Receiver:
    name = "receiver"

    @event_handler("sender", "*")
    async def got(self, payload: dict[str, Any]) -> None:
        recorder.record("got", payload)


async def test_dispatch_does_not_check_the_declaration(
    host_factory: HostFactory, memory_uri: str
) -> None:
    """An undeclared event type, or a payload of another type, is sent as ever."""
    await host_factory([Sender, Receiver])
    await dispatch(memory_uri, "test", "go", {})
    calls = await recorder.wait_for(2)
    assert sorted(str(payload) for _, payload in calls) == [
        "{'any': 'thing'}",
        "{'not': 'a Declared'}",
    ]


# ------------------------------------------------------------ payload schemas


def named_schemas(document: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = document["components"]["schemas"]
    return schemas


def test_every_schema_is_a_valid_json_schema(document: dict[str, Any]) -> None:
    schemas = [
        *named_schemas(document).values(),
        *(
            message["payload"]
            for message in document["components"]["messages"].values()
        ),
    ]
    assert len(schemas) > 10
    for schema in schemas:
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft7Validator.check_schema(schema)


def test_what_the_converter_sends_validates(document: dict[str, Any]) -> None:
    """Real instances, unstructured and encoded by the project's codec."""
    samples = {
        "send.orders.order_placed": ORDER,
        "send.orders.lines_added": [Line(Sku("tea"), 1, decimal.Decimal("0.5"))],
        "send.orders.address_changed": Address("1 High St", "Leeds", "LS1"),
        "send.orders.ping": {"whatever": [1, 2]},
        "receive.billing.charge": ORDER,
        "receive.audit.record": OrderSummary(ORDER.id, "retail"),
        "receive.orders.on_checkout": Basket(id=3, prices=["1.00"]),
    }
    for operation, sample in samples.items():
        wire = on_the_wire(sample)
        validator(document, payload_ref(document, operation)).validate(wire)


def test_none_validates_where_the_type_is_optional(document: dict[str, Any]) -> None:
    check = validator(document, payload_ref(document, "send.orders.address_changed"))
    check.validate(on_the_wire(None))


def test_a_sample_is_what_a_handler_accepts() -> None:
    """The samples are the wire form: the codec reads them back into the objects."""
    body, content_type, encoding = encode_payload(ORDER, converter=CONVERTER)
    decoded = decode_payload(body, content_type, encoding, Order, converter=CONVERTER)
    assert decoded == ORDER


def _without(key: str) -> Any:
    wire = on_the_wire(ORDER)
    del wire[key]
    return wire


def _with(path: str, value: object) -> Any:
    wire = on_the_wire(ORDER)
    *parents, last = path.split(".")
    node = wire
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return wire


WRONG_ORDERS = {
    "a list, not an object": [1, 2],
    "no id": _without("id"),
    "no lines": _without("lines"),
    "an id that is a number": _with("id", 12),
    "an id that is no UUID": _with("id", "12"),
    "a date that is no date": _with("ship_on", "tomorrow"),
    "a quantity that is a string": _with("lines.0.quantity", "2"),
    "a price that is a number": _with("lines.0.price", 3.5),
    "a line without its sku": _with("lines.0", {"quantity": 1, "price": "1"}),
    "a colour not in the enum": _with("color", "blue"),
    "a priority that is its name": _with("priority", "HIGH"),
    "a kind not in the Literal": _with("kind", "export"),
    "a set with a repeated item": _with("tags", ["gift", "gift"]),
    "a tuple too long": _with("size", [1, 2, 3, 4]),
    "a tuple with a string": _with("size", [1, "2", 3]),
    "bytes not wrapped": _with("signature", "binary"),
    "bytes with an unknown marker": _with(
        "signature", {"__type__": "hex", "__value__": "ff"}
    ),
    "a note that is a number": _with("notes", {"door": 1}),
    "a stock key not a colour": _with("stock", {"blue": 1}),
    "a nested category without a name": _with("category.children", [{}]),
    "a basket price that is a number": _with("basket.prices", [9.99]),
    "a page of numbers": _with("related.items", [1]),
    "a coupon that is a number": _with("coupon", 5),
    "paid as a string": _with("paid", "yes"),
}


@pytest.mark.parametrize("wire", WRONG_ORDERS.values(), ids=WRONG_ORDERS.keys())
def test_a_wrong_payload_does_not_validate(
    document: dict[str, Any], wire: object
) -> None:
    check = validator(document, payload_ref(document, "send.orders.order_placed"))
    assert not check.is_valid(wire)


def test_other_keys_are_allowed(document: dict[str, Any]) -> None:
    """Receivers ignore keys they do not know, so a sender may add fields first."""
    check = validator(document, payload_ref(document, "send.orders.order_placed"))
    check.validate({**on_the_wire(ORDER), "added_later": True})


def test_the_schemas_say_what_is_on_the_wire(document: dict[str, Any]) -> None:
    order = named_schemas(document)["Order"]
    fields = order["properties"]
    assert order["title"] == "Order"
    assert order["description"] == "Every kind of field the converter handles."
    assert fields["id"] == {"type": "string", "format": "uuid"}
    assert fields["placed_at"] == {"type": "string", "format": "date-time"}
    assert fields["ship_on"] == {"type": "string", "format": "date"}
    assert fields["slot"] == {"type": "string", "format": "time"}
    assert fields["lines"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Line"},
    }
    assert fields["tags"] == {
        "type": "array",
        "items": {"type": "string"},
        "uniqueItems": True,
    }
    assert fields["size"]["prefixItems"] == [{"type": "number"}] * 3
    assert fields["history"] == {"type": "array", "items": {"type": "integer"}}
    assert fields["kind"] == {"type": "string", "enum": ["retail", "wholesale"]}
    assert fields["coupon"] == {"type": ["string", "null"], "default": None}
    assert fields["paid"] == {"type": "boolean", "default": False}
    assert fields["discount"]["anyOf"] == [
        {"type": "string", "format": "decimal"},
        {"type": "integer"},
    ]
    assert fields["meta"] == {"type": "object"}  # a factory default is not shown
    assert fields["signature"]["properties"]["__type__"] == {
        "enum": ["bytes", "base64"]
    }
    assert order["required"] == [
        name
        for name in attrs.fields_dict(Order)
        if name not in {"coupon", "paid", "discount", "meta"}
    ]
    assert named_schemas(document)["Line"]["properties"]["sku"] == {"type": "string"}


def test_enums_are_named_schemas_of_their_values(document: dict[str, Any]) -> None:
    schemas = named_schemas(document)
    assert schemas["Color"] == {
        "title": "Color",
        "description": "A colour of the shop's range.",
        "type": "string",
        "enum": ["red", "green"],
    }
    assert schemas["Priority"]["enum"] == [1, 2]
    assert schemas["Access"] == {"title": "Access", "type": "integer"}  # any flags
    assert schemas["Order"]["properties"]["stock"]["propertyNames"] == {
        "$ref": "#/components/schemas/Color"
    }


def test_a_class_that_refers_to_itself_is_described_once(
    document: dict[str, Any],
) -> None:
    category = named_schemas(document)["Category"]
    assert category["properties"]["children"]["items"] == {
        "$ref": "#/components/schemas/Category"
    }
    assert category["required"] == ["name"]


def test_a_generic_class_is_named_for_its_arguments(document: dict[str, Any]) -> None:
    page = named_schemas(document)["Page_Line"]
    assert page["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Line"}


def test_an_untyped_payload_is_any_json_value(document: dict[str, Any]) -> None:
    message = resolve(document, "#/components/messages/orders.ping")
    assert message["payload"] == {}
    assert message["title"] == "JSON"


def test_a_mapping_annotation_is_an_object(document: dict[str, Any]) -> None:
    check = validator(document, payload_ref(document, "receive.cache.invalidate"))
    check.validate({"id": 1})
    assert not check.is_valid([1])


@attrs.frozen
class Wrapper(typing.Generic[T]):
    page: Page[T]


def test_type_arguments_reach_nested_generic_classes() -> None:
    builder = SchemaBuilder()
    assert builder.schema(list[Wrapper[Line]]) == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Wrapper_Line"},
    }
    builder.schema(Wrapper[Address])
    pages = {
        name: schema["properties"]["items"]["items"]
        for name, schema in builder.definitions.items()
        if name.startswith("Page_")
    }
    assert pages == {
        "Page_Line": {"$ref": "#/components/schemas/Line"},
        "Page_Address": {"$ref": "#/components/schemas/Address"},
    }


def test_a_type_without_a_known_schema_is_any_value_said_so() -> None:
    """What the converter cannot handle never reaches a document (handlers and
    declarations refuse it), but the builder says so rather than guess."""
    assert SchemaBuilder().schema(pathlib.Path) == {
        "description": "Path: any JSON value (no schema known)"
    }


# --------------------------------------------------------------- the document


def test_the_document_has_asyncapi_3s_structure(document: dict[str, Any]) -> None:
    check_document(document)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    found = list(refs(document))
    assert len(found) > 30
    for ref in found:
        assert resolve(document, ref) is not None


def test_a_dangling_reference_is_caught(document: dict[str, Any]) -> None:
    """The structure check itself catches what it should."""
    broken = json.loads(json.dumps(document))
    broken["operations"]["receive.billing.charge"]["channel"]["$ref"] += "-gone"
    with pytest.raises(KeyError):
        check_document(broken)
    broken = json.loads(json.dumps(document))
    broken["operations"]["receive.billing.charge"]["action"] = "publish"
    with pytest.raises(jsonschema.ValidationError):
        check_document(broken)


def test_a_channel_per_exchange_and_routing_key(document: dict[str, Any]) -> None:
    channel = document["channels"]["orders.events.order_placed"]
    assert channel["address"] == "order_placed"
    assert channel["bindings"]["amqp"] == {
        "is": "routingKey",
        "exchange": {
            "name": "orders.events",
            "type": "topic",
            "durable": True,
            "autoDelete": False,
        },
        "bindingVersion": "0.3.0",
    }
    assert set(document["channels"]) == {
        "orders.events.order_placed",
        "orders.events.lines_added",
        "orders.events.ping",
        "orders.events.address_changed",
        "web.events.checkout",
        "orders.events._",  # the pattern "#"
    }
    assert document["channels"]["orders.events._"]["address"] == "#"


def test_a_send_per_declared_event_type(document: dict[str, Any]) -> None:
    sends = {
        name: op
        for name, op in document["operations"].items()
        if op["action"] == "send"
    }
    assert set(sends) == {
        "send.orders.order_placed",
        "send.orders.lines_added",
        "send.orders.ping",
        "send.orders.address_changed",
    }
    send = sends["send.orders.order_placed"]
    assert send["channel"] == {"$ref": "#/channels/orders.events.order_placed"}
    assert send["bindings"]["amqp"] == {
        "deliveryMode": 2,
        "priority": 3,  # the dispatcher's publish option
        "bindingVersion": "0.3.0",
    }
    assert send["x-trioevents"] == {"service": "orders", "dispatchers": ["dispatch"]}


def test_dispatchers_that_declare_nothing_are_named(document: dict[str, Any]) -> None:
    assert (
        "Not listed: the events of dispatchers that declare none"
        in (document["info"]["description"])
    )
    assert "orders.untyped" in document["info"]["description"]


def test_both_sides_of_an_event_share_its_message(document: dict[str, Any]) -> None:
    operations = document["operations"]
    sent = operations["send.orders.order_placed"]["messages"]
    assert operations["receive.billing.charge"]["messages"] == sent
    message = resolve(document, sent[0]["$ref"])
    assert message == {"$ref": "#/components/messages/orders.order_placed"}
    assert resolve(document, message["$ref"])["payload"] == {
        "$ref": "#/components/schemas/Order"
    }


def test_a_handler_reading_another_type_has_a_message_of_its_own(
    document: dict[str, Any],
) -> None:
    messages = document["channels"]["orders.events.order_placed"]["messages"]
    assert messages == {
        "order_placed": {"$ref": "#/components/messages/orders.order_placed"},
        "order_placed.OrderSummary": {
            "$ref": "#/components/messages/orders.order_placed.OrderSummary"
        },
        "order_placed.dict_str_Any_": {
            "$ref": "#/components/messages/orders.order_placed.dict_str_Any_"
        },
    }
    assert document["operations"]["receive.audit.record"]["messages"] == [
        {
            "$ref": "#/channels/orders.events.order_placed/messages/order_placed.OrderSummary"
        }
    ]


def test_messages_carry_the_context_headers(document: dict[str, Any]) -> None:
    message = document["components"]["messages"]["orders.order_placed"]
    assert message["name"] == "order_placed"
    assert message["contentType"] == "application/json"
    assert message["bindings"]["amqp"]["contentEncoding"] == "utf-8"
    headers = resolve(document, message["headers"]["$ref"])
    check = jsonschema.Draft202012Validator(headers)
    check.validate(
        {
            "nameko.call_id_stack": ["web.checkout.1", "orders.on_checkout.2"],
            "nameko.language": "en-gb",
            "nameko.user_id": "u42",
            "nameko.custom": {"any": "value"},
        }
    )
    assert not check.is_valid({"nameko.call_id_stack": "web.checkout.1"})


def _receive(document: dict[str, Any], name: str) -> dict[str, Any]:
    operation: dict[str, Any] = document["operations"][name]
    assert operation["action"] == "receive"
    return operation


@pytest.mark.parametrize(
    ("operation", "queue", "flags"),
    [
        (
            "receive.billing.charge",
            "evt-orders-order_placed--billing.charge",
            (True, False, False),
        ),
        ("receive.audit.record", "evt-orders-order_placed", (True, False, False)),
        (
            "receive.audit.everything.orders.ping",
            "evt-orders-ping--audit.everything-{broadcast_identifier}",
            (True, True, True),
        ),
        (
            "receive.cache.invalidate",
            "evt-orders-order_placed--cache.invalidate-host-1",
            (True, False, False),
        ),
    ],
)
def test_a_receive_names_the_handlers_queue_and_flags(
    document: dict[str, Any], operation: str, queue: str, flags: tuple[bool, ...]
) -> None:
    """Names and flags as nameko declares them (``docs/amqp.rst``)."""
    binding = _receive(document, operation)["bindings"]["amqp"]
    assert binding["ack"] is True
    durable, exclusive, auto_delete = flags
    assert binding["x-queue"] == {
        "name": queue,
        "durable": durable,
        "exclusive": exclusive,
        "autoDelete": auto_delete,
    }


def test_a_receive_says_how_the_handler_takes_events(
    document: dict[str, Any],
) -> None:
    charge = _receive(document, "receive.billing.charge")["x-trioevents"]
    assert charge == {
        "service": "billing",
        "method": "charge",
        "handlerType": "service_pool",
        "reliableDelivery": True,
        "queue": "evt-orders-order_placed--billing.charge",
        "queueType": "classic",
        "requeueOnError": False,
        "deadLetterQueue": "evt-orders-order_placed--billing.charge.dlq",
        "retry": {"delays": [1.0, 5.0], "retryOn": ["Exception"]},
    }
    lines = _receive(document, "receive.billing.on_lines")["x-trioevents"]
    assert lines["requeueOnError"] == ["KeyError"]
    record = _receive(document, "receive.audit.record")["x-trioevents"]
    assert (record["handlerType"], record["timeout"]) == ("singleton", 5.0)
    everything = _receive(document, "receive.audit.everything.orders._")
    assert everything["x-trioevents"]["reliableDelivery"] is False
    assert "Every event to every running instance" in everything["description"]
    assert "are not kept" in everything["description"]


def test_info_is_overridable() -> None:
    document = asyncapi_document(
        [Billing], title="Shop", version="2.1.0", description="All of it."
    )
    assert document["info"] == {
        "title": "Shop",
        "version": "2.1.0",
        "description": "All of it.",
    }
    assert asyncapi_document([Billing, Audit])["info"]["title"] == "billing, audit"


@pytest.mark.parametrize("uri", [None, "memory://", "memory://shop"])
def test_no_servers_without_rabbitmq(uri: str | None) -> None:
    assert "servers" not in asyncapi_document([Billing], uri=uri)


def test_servers_come_from_amqp_uri_without_passwords() -> None:
    uri = "amqp://shop:s3cret@rabbit1:5673/prod;amqps://shop:s3cret@rabbit2/prod"
    document = asyncapi_document([Billing], uri=uri)
    check_document(document)
    assert document["servers"] == {
        "rabbitmq-1": {
            "host": "rabbit1:5673",
            "pathname": "/prod",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "description": "AMQP_URI amqp://shop:****@rabbit1:5673/prod",
        },
        "rabbitmq-2": {
            "host": "rabbit2:5671",
            "pathname": "/prod",
            "protocol": "amqps",
            "protocolVersion": "0.9.1",
            "description": "AMQP_URI amqps://shop:****@rabbit2/prod",
        },
    }
    assert "s3cret" not in json.dumps(document)
    queue = document["operations"]["receive.billing.charge"]["bindings"]["amqp"]
    assert queue["x-queue"]["vhost"] == "prod"


def test_a_bad_uri_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unsupported scheme"):
        asyncapi_document([Billing], uri="redis://localhost")


def test_a_class_without_a_name_is_refused() -> None:
    class Nameless:
        @event_handler("a", "b")
        async def handle(self, payload: dict[str, Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="has no name"):
        asyncapi_document([Nameless])


def test_a_payload_annotation_that_cannot_be_structured_is_refused() -> None:
    class Broken:
        name = "broken"

        @event_handler("a", "b")
        async def handle(self, payload: object()) -> None: ...  # type: ignore[valid-type]

    with pytest.raises(EventHandlerConfigurationError, match=r"Broken\.handle"):
        asyncapi_document([Broken])


def test_the_document_is_plain_json_sharing_nothing(document: dict[str, Any]) -> None:
    assert json.loads(json.dumps(document)) == document
    assert "&id" not in yaml.safe_dump(document)  # no YAML anchors or aliases


def test_it_is_exported() -> None:
    assert trioevents.asyncapi_document is asyncapi_document
    assert asyncapi_document.__module__ == "trioevents"


# ------------------------------------------------------------ the command


@pytest.fixture
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command puts the current directory on sys.path; undo it. And no
    ``TRIOEVENTS_*`` variable of this environment configures it."""
    monkeypatch.setattr(sys, "path", [*sys.path])
    monkeypatch.delenv("TRIOEVENTS_AMQP_URI", raising=False)
    monkeypatch.delenv("AMQP_URI", raising=False)


def _shop_document() -> dict[str, Any]:
    return asyncapi_document(import_services(["examples.shop"]), uri="memory://")


@pytest.mark.usefixtures("_no_config_from_the_environment")
@pytest.mark.parametrize(
    ("name", "load"), [("shop.yaml", yaml.safe_load), ("shop.json", json.loads)]
)
def test_the_command_writes_the_shops_document(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    load: Any,
) -> None:
    path = tmp_path / name
    assert main(["asyncapi", "examples.shop", "-o", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"wrote {path}: AsyncAPI 3.0.0, 3 channel(s), 7 operation(s)\n"
    )
    document = load(path.read_text(encoding="utf-8"))
    check_document(document)
    assert document == _shop_document()


@pytest.mark.usefixtures("_no_config_from_the_environment")
def test_the_shops_document_has_both_sides_of_each_event() -> None:
    """Four services: each event the shop dispatches is sent and received."""
    document = _shop_document()
    operations = document["operations"]
    assert sorted(operations) == [
        "receive.billing.charge",
        "receive.notifications.charged",
        "receive.notifications.order_placed",
        "receive.orders.on_checkout",
        "send.billing.charged",
        "send.orders.order_placed",
        "send.web.checkout",
    ]
    for channel in document["channels"]:
        actions = {
            op["action"]
            for op in operations.values()
            if op["channel"]["$ref"] == f"#/channels/{channel}"
        }
        assert actions == {"send", "receive"}, channel
    check = validator(document, payload_ref(document, "send.orders.order_placed"))
    from examples.shop import OrderPlaced

    check.validate(on_the_wire(OrderPlaced(1, "ada", decimal.Decimal("15.00"))))
    assert not check.is_valid({"id": 1, "customer": "ada", "total": 15})


@pytest.mark.usefixtures("_no_config_from_the_environment")
def test_the_format_follows_the_file_name_unless_given(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shop.yaml"
    assert main(["asyncapi", "examples.shop", "-o", str(path), "--format", "json"]) == 0
    assert json.loads(path.read_text())["asyncapi"] == "3.0.0"
    path = tmp_path / "shop.txt"
    assert main(["asyncapi", "examples.shop", "-o", str(path)]) == 0
    assert path.read_text().startswith("asyncapi: 3.0.0\n")


@pytest.mark.usefixtures("_no_config_from_the_environment")
def test_the_command_writes_to_standard_output_with_servers_and_info(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "asyncapi",
        "examples.shop:Billing",
        "--broker",
        "amqp://shop:s3cret@rabbit/",
        "--title",
        "Billing",
        "--api-version",
        "3.2.1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    document = yaml.safe_load(out)
    assert document["info"]["title"] == "Billing"
    assert document["info"]["version"] == "3.2.1"
    assert document["servers"]["rabbitmq"]["host"] == "rabbit:5672"
    assert "s3cret" not in out


@pytest.mark.usefixtures("_no_config_from_the_environment")
def test_the_command_fails_in_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing" / "shop.yaml"
    assert main(["asyncapi", "examples.shop", "-o", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"trioevents: error: cannot write {str(missing)!r}: No such file or directory\n"
    )
    assert main(["asyncapi", "examples.shop:Nope"]) == 1
    assert "has no 'Nope'" in capsys.readouterr().err
    assert main(["asyncapi", "examples.shop", "--format", "xml"]) == 2


def test_python_dash_m_trioevents_asyncapi_writes_the_document(
    tmp_path: pathlib.Path,
) -> None:
    """``python -m trioevents asyncapi`` in a process of its own."""
    path = tmp_path / "shop.json"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "TRIOEVENTS_AMQP_URI": "amqp://guest:guest@localhost:5672/",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trioevents",
            "asyncapi",
            "examples.shop",
            "-o",
            str(path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(path.read_text())
    check_document(document)
    assert set(document["servers"]) == {"rabbitmq"}
    assert "guest:guest" not in path.read_text()


# ------------------------------------------------ the excerpt in the docs


def _yaml_excerpts(path: pathlib.Path) -> list[Any]:
    """The ``code-block:: yaml`` blocks of *path* whose caption names asyncapi."""
    excerpts = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() != ".. code-block:: yaml":
            continue
        options = lines[number + 1 : number + 3]
        if not any(
            ":caption:" in option and "asyncapi" in option for option in options
        ):
            continue
        block = []
        for text in lines[number + 1 :]:
            if text.strip() and not text.startswith("   "):
                break
            if not text.strip().startswith(":"):
                block.append(text)
        excerpts.append(yaml.safe_load("\n".join(block)))
    return excerpts


def _is_part_of(excerpt: object, whole: object) -> bool:
    """Whether *excerpt* is *whole* with some keys of its mappings left out."""
    if isinstance(excerpt, dict):
        return isinstance(whole, dict) and all(
            key in whole and _is_part_of(value, whole[key])
            for key, value in excerpt.items()
        )
    return excerpt == whole


@pytest.mark.usefixtures("_no_config_from_the_environment")
def test_the_docs_quote_the_shops_document() -> None:
    excerpts = _yaml_excerpts(ROOT / "docs" / "operating.rst")
    assert excerpts
    whole = _shop_document()
    for excerpt in excerpts:
        assert _is_part_of(excerpt, whole), excerpt


def test_handlers_follow_the_configured_queue_type() -> None:
    """QUEUE_TYPE: quorum makes reliable handlers' queues quorum; others stay classic."""
    quorum = asyncapi_document(SERVICES, config=Config(queue_type="quorum"))
    charge = _receive(quorum, "receive.billing.charge")["x-trioevents"]
    assert (charge["queueType"], charge["deliveryLimit"]) == ("quorum", 20)
    unreliable = _receive(quorum, "receive.audit.everything.orders.ping")[
        "x-trioevents"
    ]
    assert unreliable["queueType"] == "classic"
    assert "deliveryLimit" not in unreliable
