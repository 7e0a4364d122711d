"""Payload codecs and the cattrs converter (``trioevents._serialization``).

Encoding and decoding without a broker; then typed payloads end to end, on both
brokers (what a message that does not decode becomes is in
``test_events_outcome.py``); last, that no module runs code from a message or a
config file.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import decimal
import enum
import inspect
import json
import pathlib
import uuid
from typing import TYPE_CHECKING, Any

import attrs
import cattrs
import pytest

import trioevents
from trioevents import (
    ConfigurationError,
    EventDispatcher,
    SerializationError,
    event_handler,
)
from trioevents._serialization import (
    DEFAULT_MAX_DEPTH,
    check_annotation,
    decode_payload,
    encode_payload,
    is_plain_annotation,
    make_converter,
)

from .support.brokers import dispatch
from .support.detonator import detonations, pickled
from .support.recording import Recorder

if TYPE_CHECKING:
    from trioevents.testing import HostFactory

CONVERTER = make_converter()


@attrs.frozen
class OrderPlaced:
    id: int
    total: decimal.Decimal
    tags: list[str] = attrs.field(factory=list)


@dataclasses.dataclass
class Shipped:
    order_id: int
    at: datetime.datetime


@attrs.frozen
class Everything:
    when: datetime.datetime
    day: datetime.date
    clock: datetime.time
    uid: uuid.UUID
    amount: decimal.Decimal
    raw: bytes


@attrs.frozen
class Tagged:
    ref: str


class Colour(enum.StrEnum):
    RED = "red"


def encode(value: object, **kwargs: Any) -> bytes:
    body, _, _ = encode_payload(value, converter=CONVERTER, **kwargs)
    return body


def decode(body: bytes, annotation: object = inspect.Parameter.empty, **kw: Any) -> Any:
    return decode_payload(
        body, "application/json", "utf-8", annotation, converter=CONVERTER, **kw
    )


def kombu(marker: str, value: object) -> dict[str, object]:
    return {"__type__": marker, "__value__": value}


# ----------------------------------------------------------------- encoding


def test_encode_matches_nameko_wire_format() -> None:
    """Same bytes, content type and encoding as nameko's kombu JSON serializer."""
    assert encode_payload({"id": 2, "via": "rpc"}, converter=CONVERTER) == (
        b'{"id": 2, "via": "rpc"}',
        "application/json",
        "utf-8",
    )


def test_encode_escapes_non_ascii() -> None:
    assert encode({"name": "café ☕"}) == b'{"name": "caf\\u00e9 \\u2615"}'


def test_encode_unstructures_attrs_instances() -> None:
    body = encode(OrderPlaced(id=1, total=decimal.Decimal("9.99"), tags=["a"]))
    assert json.loads(body) == {"id": 1, "total": "9.99", "tags": ["a"]}


def test_encode_unstructures_dataclasses_in_containers() -> None:
    at = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    body = encode([Shipped(order_id=1, at=at)])
    assert json.loads(body) == [{"order_id": 1, "at": "2024-05-01T12:30:00+00:00"}]


def test_encode_writes_iso_8601_and_strings_for_value_types() -> None:
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    body = encode(
        {
            "when": datetime.datetime(2024, 5, 1, 12, 30),
            "day": datetime.date(2024, 5, 1),
            "clock": datetime.time(12, 30, 5),
            "uid": uid,
            "amount": decimal.Decimal("9.990"),
        }
    )
    assert json.loads(body) == {
        "when": "2024-05-01T12:30:00",
        "day": "2024-05-01",
        "clock": "12:30:05",
        "uid": "12345678-1234-5678-1234-567812345678",
        "amount": "9.990",
    }


def test_encode_writes_bytes_in_kombu_wrapping() -> None:
    assert json.loads(encode({"a": b"hi", "b": b"\xff"})) == {
        "a": kombu("bytes", "hi"),
        "b": kombu("base64", "/w=="),
    }


def test_encode_writes_sets_as_arrays() -> None:
    assert json.loads(encode({"ids": {3}})) == {"ids": [3]}


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        pytest.param(object(), TypeError, id="unsupported-type"),
        pytest.param({"x": float("nan")}, ValueError, id="nan"),
        pytest.param({"x": float("inf")}, ValueError, id="infinity"),
    ],
)
def test_encode_refuses_what_json_cannot_hold(
    value: object, cause: type[Exception]
) -> None:
    with pytest.raises(SerializationError, match="cannot encode") as info:
        encode(value)
    assert isinstance(info.value.__cause__, cause)


def test_encode_refuses_a_self_referencing_value() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="cannot encode") as info:
        encode(loop)
    assert info.value.__cause__ is not None


def test_encode_refuses_payloads_nested_deeper_than_the_limit() -> None:
    nested: list[object] = []
    for _ in range(10):
        nested = [nested]
    encode(nested, max_depth=11)
    with pytest.raises(SerializationError, match="deeper than 10") as info:
        encode(nested, max_depth=10)
    assert isinstance(info.value.__cause__, ValueError)


def test_encode_refuses_a_body_over_max_size() -> None:
    encode("x" * 10, max_size=12)
    with pytest.raises(SerializationError, match="MAX_MESSAGE_SIZE") as info:
        encode("x" * 11, max_size=12)
    assert info.value.__cause__ is not None


# ------------------------------------------------------ decoding, plain values


@pytest.mark.parametrize(
    "annotation",
    [inspect.Parameter.empty, None, Any, dict, object],
    ids=["empty", "None", "Any", "dict", "object"],
)
def test_plain_annotations_get_the_decoded_json_value(annotation: object) -> None:
    assert decode(b'{"id": 1, "tags": ["a"]}', annotation) == {"id": 1, "tags": ["a"]}


def test_plain_annotation_passes_any_json_value_through() -> None:
    assert decode(b"[1, 2]", dict) == [1, 2]


def test_is_plain_annotation_is_false_for_structured_types() -> None:
    assert not is_plain_annotation(OrderPlaced)
    assert not is_plain_annotation(dict[str, int])
    assert not is_plain_annotation(list[Any])


@pytest.mark.parametrize(
    ("content_type", "content_encoding"),
    [
        (None, None),
        ("", ""),
        ("application/json", "utf-8"),
        ("Application/JSON; charset=UTF-8", "UTF-8"),
        ("application/json;charset=utf8", "utf8"),
    ],
)
def test_json_content_types_and_encodings_are_accepted(
    content_type: str | None, content_encoding: str | None
) -> None:
    body = b'{"id": 1}'
    value = decode_payload(body, content_type, content_encoding, converter=CONVERTER)
    assert value == {"id": 1}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("text/plain", b"{}", id="text/plain"),
        # kombu's pickle: a body that runs code when unpickled, never unpickled
        pytest.param("application/x-python-serialize", pickled(), id="pickle"),
        pytest.param("application/x-msgpack", b"\x80", id="msgpack"),  # {}
        pytest.param("application/json; charset=latin-1", b"{}", id="latin-1"),
    ],
)
def test_other_content_types_are_refused(content_type: str, body: bytes) -> None:
    detonations.clear()
    with pytest.raises(SerializationError, match="content type") as info:
        decode_payload(body, content_type, "utf-8", converter=CONVERTER)
    assert isinstance(info.value.__cause__, ValueError)
    assert detonations == []


@pytest.mark.parametrize("content_encoding", ["gzip", "binary", "latin-1"])
def test_other_content_encodings_are_refused(content_encoding: str) -> None:
    with pytest.raises(SerializationError, match="content encoding") as info:
        decode_payload(b"{}", "application/json", content_encoding)
    assert isinstance(info.value.__cause__, ValueError)


def test_invalid_utf8_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="UTF-8") as info:
        decode(b'{"name": "\xff"}')
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"[1,]", b"nope"])
def test_invalid_json_is_a_serialization_error(body: bytes) -> None:
    with pytest.raises(SerializationError, match="not valid JSON") as info:
        decode(body)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_a_body_over_max_size_is_refused_before_decoding() -> None:
    decode(b'"xx"', max_size=4)
    with pytest.raises(SerializationError, match="MAX_MESSAGE_SIZE") as info:
        decode(b'"xxx"', max_size=4)
    assert info.value.__cause__ is not None


# ------------------------------------------------------------ nesting depth


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_the_default_depth_limit_is_100() -> None:
    assert DEFAULT_MAX_DEPTH == 100
    decode(nested_arrays(100))
    with pytest.raises(SerializationError, match="deeper than 100"):
        decode(nested_arrays(101))


def test_the_depth_limit_counts_objects_and_arrays() -> None:
    body = b'{"a": [{"b": [1]}]}'  # depth 4
    assert decode(body, max_depth=4) == {"a": [{"b": [1]}]}
    with pytest.raises(SerializationError, match="deeper than 3"):
        decode(body, max_depth=3)


def test_the_depth_limit_ignores_brackets_inside_strings() -> None:
    assert decode(b'["[[[[[[{{{{{{"]', max_depth=1) == ["[[[[[[{{{{{{"]


def test_a_json_bomb_is_refused_without_a_recursion_error() -> None:
    """A million nested arrays: a SerializationError, never a RecursionError."""
    with pytest.raises(SerializationError, match="deeper") as info:
        decode(nested_arrays(1_000_000), max_depth=10_000)
    assert not isinstance(info.value, RecursionError)


# ---------------------------------------------------- decoding, kombu wrapping


@pytest.mark.parametrize(
    ("wrapped", "expected"),
    [
        (
            kombu("datetime", "2024-05-01T12:30:00+00:00"),
            datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        ),
        (kombu("date", "2024-05-01"), datetime.date(2024, 5, 1)),
        (kombu("time", "12:30:05"), datetime.time(12, 30, 5)),
        (kombu("decimal", "9.99"), decimal.Decimal("9.99")),
        (
            kombu("uuid", {"hex": "12345678123456781234567812345678", "version": 4}),
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
        ),
        (
            kombu("uuid", "12345678-1234-5678-1234-567812345678"),
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
        ),
        (kombu("bytes", "hi"), b"hi"),
        (kombu("base64", "/w=="), b"\xff"),
    ],
    ids=lambda v: v["__type__"] if isinstance(v, dict) else "",
)
def test_kombu_wrapping_decodes_to_python_values(
    wrapped: dict[str, object], expected: object
) -> None:
    """What nameko on kombu 5 sends arrives as it would in a nameko handler."""
    assert decode(json.dumps({"v": wrapped}).encode()) == {"v": expected}


def test_kombu_wrapped_values_structure_into_annotated_fields() -> None:
    body = json.dumps(
        {
            "when": kombu("datetime", "2024-05-01T12:30:00"),
            "day": kombu("date", "2024-05-01"),
            "clock": kombu("time", "12:30:00"),
            "uid": kombu("uuid", {"hex": "12345678" * 4, "version": 4}),
            "amount": kombu("decimal", "1.5"),
            "raw": kombu("bytes", "hi"),
        }
    ).encode()
    assert decode(body, Everything) == Everything(
        when=datetime.datetime(2024, 5, 1, 12, 30),
        day=datetime.date(2024, 5, 1),
        clock=datetime.time(12, 30),
        uid=uuid.UUID("12345678" * 4),
        amount=decimal.Decimal("1.5"),
        raw=b"hi",
    )


def test_a_str_field_reads_a_kombu_wrapped_uuid_as_its_string() -> None:
    body = json.dumps({"ref": kombu("uuid", {"hex": "ab" * 16, "version": 4})})
    assert decode(body.encode(), Tagged) == Tagged(ref=str(uuid.UUID("ab" * 16)))


def test_an_unknown_kombu_marker_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="kombu type marker 'pickle'") as info:
        decode(b'{"__type__": "pickle", "__value__": "x"}')
    assert isinstance(info.value.__cause__, ValueError)


def test_a_bad_kombu_value_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="invalid kombu 'datetime'") as info:
        decode(b'{"__type__": "datetime", "__value__": "yesterday"}')
    assert info.value.__cause__ is not None


def test_objects_with_more_keys_than_the_wrapping_stay_objects() -> None:
    body = b'{"__type__": "date", "__value__": "2024-05-01", "x": 1}'
    assert decode(body) == {"__type__": "date", "__value__": "2024-05-01", "x": 1}


# ------------------------------------------------------ decoding, structured


def test_decode_structures_an_attrs_class() -> None:
    body = b'{"id": 1, "total": "9.99", "tags": ["a"]}'
    assert decode(body, OrderPlaced) == OrderPlaced(1, decimal.Decimal("9.99"), ["a"])


def test_decode_structures_a_dataclass() -> None:
    body = b'{"order_id": 7, "at": "2024-05-01T12:30:00Z"}'
    assert decode(body, Shipped) == Shipped(
        order_id=7, at=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    )


def test_decode_structures_a_list_of_attrs_instances() -> None:
    body = b'[{"id": 1, "total": "1"}, {"id": 2, "total": "2"}]'
    assert decode(body, list[OrderPlaced]) == [
        OrderPlaced(1, decimal.Decimal(1)),
        OrderPlaced(2, decimal.Decimal(2)),
    ]


def test_decode_structures_a_dict_of_dataclasses() -> None:
    body = b'{"a": {"order_id": 1, "at": "2024-05-01T00:00:00"}}'
    assert decode(body, dict[str, Shipped]) == {
        "a": Shipped(order_id=1, at=datetime.datetime(2024, 5, 1))
    }


def test_decode_structures_an_optional_class() -> None:
    assert decode(b"null", OrderPlaced | None) is None
    assert decode(b'{"id": 1, "total": 2}', OrderPlaced | None) == OrderPlaced(
        1, decimal.Decimal(2)
    )


def test_value_types_round_trip_through_an_attrs_class() -> None:
    value = Everything(
        when=datetime.datetime(2024, 5, 1, 12, 30, 1, 5, tzinfo=datetime.UTC),
        day=datetime.date(2024, 5, 1),
        clock=datetime.time(23, 59, 59),
        uid=uuid.uuid4(),
        amount=decimal.Decimal("-12.3400"),
        raw=b"\x00\xff binary",
    )
    assert decode(encode(value), Everything) == value


def test_a_float_becomes_the_decimal_it_reads_as() -> None:
    assert decode(b'{"id": 1, "total": 9.99}', OrderPlaced).total == decimal.Decimal(
        "9.99"
    )


def test_kombu4_dates_sent_as_midnight_datetimes_read_as_dates() -> None:
    @attrs.frozen
    class Day:
        day: datetime.date

    assert decode(b'{"day": "2024-05-01T00:00:00"}', Day) == Day(
        datetime.date(2024, 5, 1)
    )


def test_string_enums_still_structure() -> None:
    assert decode(b'"red"', Colour) is Colour.RED


def test_a_mismatch_is_a_serialization_error_with_the_cattrs_summary() -> None:
    body = b'{"id": "one", "tags": ["a"]}'
    with pytest.raises(SerializationError) as info:
        decode(body, OrderPlaced)
    message = str(info.value)
    assert "does not match OrderPlaced" in message
    assert "@ $.id" in message
    assert "required field missing @ $.total" in message
    assert isinstance(info.value.__cause__, cattrs.ClassValidationError)
    assert isinstance(info.value.__cause__, ExceptionGroup)


def test_a_mismatch_deep_in_a_list_names_its_path() -> None:
    body = b'[{"id": 1, "total": "1"}, {"id": 2, "total": "x"}]'
    with pytest.raises(SerializationError, match=r"@ \$\[1\]\.total"):
        decode(body, list[OrderPlaced])


@pytest.mark.parametrize(
    ("body", "annotation"),
    [
        pytest.param(b'"abc"', list[str], id="string-as-list"),
        pytest.param(b'{"a": 1}', list[str], id="object-as-list"),
        pytest.param(b'"abc"', set[str], id="string-as-set"),
        pytest.param(b'"ab"', tuple[str, ...], id="string-as-tuple"),
        pytest.param(b"1.5", int, id="float-as-int"),
        pytest.param(b"true", int, id="bool-as-int"),
        pytest.param(b'"1"', int, id="string-as-int"),
        pytest.param(b"1", bool, id="int-as-bool"),
        pytest.param(b"1", str, id="int-as-str"),
        pytest.param(b"true", float, id="bool-as-float"),
        pytest.param(b"[1]", dict[str, int], id="array-as-dict"),
        pytest.param(b'"nope"', decimal.Decimal, id="bad-decimal"),
        pytest.param(b'"nope"', uuid.UUID, id="bad-uuid"),
        pytest.param(b'"aGk="', bytes, id="string-as-bytes"),
    ],
)
def test_structuring_is_strict_about_json_types(body: bytes, annotation: Any) -> None:
    with pytest.raises(SerializationError, match="does not match"):
        decode(body, annotation)


def test_numbers_widen_to_float() -> None:
    assert decode(b"[1, 2.5]", list[float]) == [1.0, 2.5]


def test_make_converter_passes_options_to_cattrs() -> None:
    strict = make_converter(forbid_extra_keys=True)
    body = b'{"id": 1, "total": "1", "surprise": true}'
    assert decode(body, OrderPlaced) == OrderPlaced(1, decimal.Decimal(1))
    with pytest.raises(SerializationError, match="extra fields found"):
        decode_payload(body, None, None, OrderPlaced, converter=strict)


def test_check_annotation_accepts_what_cattrs_can_structure() -> None:
    check_annotation(OrderPlaced, converter=CONVERTER)
    check_annotation(list[Shipped] | None, converter=CONVERTER)
    check_annotation(inspect.Parameter.empty, converter=CONVERTER)


def test_check_annotation_refuses_what_cattrs_cannot_structure() -> None:
    class Opaque:
        def __init__(self, x: int) -> None:
            self.x = x

    with pytest.raises(ConfigurationError, match="Opaque") as info:
        check_annotation(Opaque, converter=CONVERTER)
    assert info.value.__cause__ is not None


# ------------------------------------------------------------ end to end


recorder = Recorder()


class Shipping:
    name = "shipping"
    dispatch = EventDispatcher()

    @event_handler("orders", "order_placed")
    async def on_order(self, event: OrderPlaced) -> None:
        recorder.record("order", event)
        at = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
        await self.dispatch("shipped", [Shipped(event.id, at)])

    @event_handler("shipping", "shipped")
    async def on_shipped(self, shipments: list[Shipped]) -> None:
        recorder.record("shipped", shipments)


async def test_typed_payloads_are_structured_and_unstructured(
    broker_uri: str, host_factory: HostFactory
) -> None:
    """A dispatched attrs instance arrives as one; a handler's dataclasses too."""
    global recorder
    recorder = Recorder()
    await host_factory(Shipping)
    order = OrderPlaced(7, decimal.Decimal("9.99"), ["gift"])
    await dispatch(broker_uri, "orders", "order_placed", order)
    calls = await recorder.wait_for(2)
    at = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    assert calls == [("order", order), ("shipped", [Shipped(7, at)])]


# ------------------------------------------- no module runs code it is sent

PACKAGE = pathlib.Path(trioevents.__file__).parent
#: Modules that turn bytes into objects by running code, or can be told to.
UNSAFE_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "cloudpickle",
    "dill",
    "jsonpickle",
    "marshal",
    "shelve",
}


def _sources() -> list[pathlib.Path]:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 10
    return paths


def test_no_module_imports_a_code_running_codec() -> None:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            found += [
                f"{path.name}: import {name}"
                for name in names
                if name.split(".")[0] in UNSAFE_MODULES
            ]
    assert found == []


def test_no_module_calls_eval_exec_or_an_unsafe_yaml_loader() -> None:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in ("eval", "exec", "unsafe_load", "full_load", "load_all"):
                found.append(f"{path.name}:{node.lineno}: {name}()")
            elif name == "load" and isinstance(func, ast.Attribute):
                owner = ast.unparse(func.value)
                loader = [k for k in node.keywords if k.arg == "Loader"]
                if owner == "yaml" and not loader:
                    found.append(
                        f"{path.name}:{node.lineno}: yaml.load() without Loader"
                    )
    assert found == []
