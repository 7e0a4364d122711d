"""JSON Schemas of payload annotations, in the form the converter puts on the wire.

A handler's payload annotation (or a type an :class:`~trioevents.EventDispatcher`
declares it sends) says what cattrs structures a payload into; this module says
what that payload looks like as JSON, as :func:`~trioevents._serialization.make_converter`
unstructures it:

===================================  ==================================================
annotation                           schema
===================================  ==================================================
none, ``Any``, ``object``, ``dict``  ``{}`` (any JSON value; nested ``dict``: an object)
``str`` / ``int`` / ``float``        ``string`` / ``integer`` / ``number``
``bool`` / ``None``                  ``boolean`` / ``null``
``datetime`` / ``date`` / ``time``   ``string`` with ``format`` ``date-time`` / ``date``
                                     / ``time`` (ISO 8601, ``isoformat()``)
``Decimal`` / ``UUID``               ``string``, ``format`` ``decimal`` / ``uuid``
``bytes``                            kombu's ``{"__type__": "bytes" | "base64",
                                     "__value__": ...}`` object
``enum.Enum`` subclass               ``enum`` of its values (a named schema)
``Literal[...]``                     ``const`` / ``enum``
attrs class, dataclass, TypedDict    ``object``: a property per field, the fields
                                     without default ``required`` (a named schema)
``X | Y``, ``Optional[X]``           ``anyOf`` (``type: [...]`` for plain scalars)
``list[X]``, ``Sequence[X]``, ...    ``array`` of ``X``
``set[X]``, ``frozenset[X]``         ``array`` of ``X``, ``uniqueItems``
``tuple[X, Y]`` / ``tuple[X, ...]``  ``array`` with ``prefixItems`` / of ``X``
``dict[str, X]``, ``Mapping``        ``object`` whose values are ``X``
===================================  ==================================================

Classes and enums become named schemas (:attr:`SchemaBuilder.definitions`),
referred to with ``$ref``, so a class used in several places, or in itself, is
described once. Objects do not forbid other properties: receivers ignore keys
they do not know, so a sender may add fields first.

The schemas use only keywords that JSON Schema Draft 7 (on which AsyncAPI's
schema object is built) and Draft 2020-12 read alike, except ``prefixItems``
(2020-12) for fixed-length tuples.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import decimal
import enum
import inspect
import json
import re
import types
import typing
import uuid
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from ._serialization import is_plain_annotation, make_converter

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cattrs.converters import BaseConverter

__all__ = ["SchemaBuilder", "component_key", "type_label"]

#: A JSON Schema, as a JSON object.
Schema = dict[str, Any]

_SCALARS: Final[Mapping[type, Schema]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    decimal.Decimal: {"type": "string", "format": "decimal"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"},
}

_BYTES: Final[Schema] = {
    "type": "object",
    "description": 'bytes as kombu wraps them: {"__type__": "bytes"} with the text '
    'if they are UTF-8, else {"__type__": "base64"} with their base64',
    "properties": {
        "__type__": {"enum": ["bytes", "base64"]},
        "__value__": {"type": "string"},
    },
    "required": ["__type__", "__value__"],
    "additionalProperties": False,
}

_UNION_ORIGINS: Final = frozenset({typing.Union, types.UnionType})
_NOT_A_KEY_CHARACTER = re.compile(r"[^A-Za-z0-9_.\-]+")
_MODULE_PATH = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])")


def component_key(text: str) -> str:
    """Return *text* as an AsyncAPI component key: other characters become ``_``."""
    return _NOT_A_KEY_CHARACTER.sub("_", text) or "_"


def type_label(annotation: object) -> str:
    """Return a short, readable name of *annotation* (``list[OrderPlaced]``)."""
    if is_plain_annotation(annotation):
        return "JSON"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return _MODULE_PATH.sub("", repr(annotation))


def _copy(schema: Schema) -> Schema:
    copied: Schema = json.loads(json.dumps(schema))
    return copied


@final
class SchemaBuilder:
    """Build JSON Schemas of annotations; classes and enums become named schemas.

    Parameters
    ----------
    ref_prefix
        What a ``$ref`` to a named schema starts with; the name follows.
    converter
        The converter whose wire form the schemas describe; it unstructures
        enum and ``Literal`` values and field defaults. By default
        :func:`~trioevents._serialization.make_converter`'s.

    Attributes
    ----------
    definitions
        The named schemas built so far, by name.
    """

    def __init__(
        self,
        *,
        ref_prefix: str = "#/components/schemas/",
        converter: BaseConverter | None = None,
    ) -> None:
        self.ref_prefix = ref_prefix
        self.converter = converter if converter is not None else make_converter()
        self.definitions: dict[str, Schema] = {}
        self._names: dict[object, str] = {}

    def add(self, name: str, schema: Schema) -> Schema:
        """Add the named schema *name*; return a ``$ref`` to it.

        Raises
        ------
        ValueError
            The name is taken.
        """
        if name in self.definitions:
            raise ValueError(f"a schema named {name!r} exists already")
        self.definitions[name] = schema
        return self._ref(name)

    def payload_schema(self, annotation: object) -> Schema:
        """Return the schema of an event payload annotated *annotation*.

        A plain annotation (none, ``Any``, ``object``, a bare ``dict``: the
        handler gets the decoded JSON value) is ``{}``, any JSON value.
        """
        if is_plain_annotation(annotation):
            return {}
        return self.schema(annotation)

    def schema(self, annotation: object) -> Schema:
        """Return the JSON Schema of values annotated *annotation*."""
        return self._schema(annotation, {})

    # -- the walk

    def _schema(self, t: object, typevars: Mapping[object, object]) -> Schema:
        if isinstance(t, typing.TypeVar):
            bound = typevars.get(t, Any)
            return {} if isinstance(bound, typing.TypeVar) else self._schema(bound, {})
        if t is Any or t is object:
            return {}
        if isinstance(t, typing.NewType):
            return self._schema(t.__supertype__, typevars)
        origin = typing.get_origin(t)
        args = tuple(
            typevars.get(arg, arg) if isinstance(arg, typing.TypeVar) else arg
            for arg in typing.get_args(t)
        )
        if origin is typing.Annotated:
            return self._schema(args[0], typevars)
        if origin in _UNION_ORIGINS:
            return _any_of([self._schema(arg, typevars) for arg in args])
        if origin is typing.Literal:
            return _enum(self._json_values(args))
        if isinstance(t, type) and origin is None:
            return self._class_schema(t, typevars)
        if isinstance(origin, type):
            if _is_structured_class(origin):
                return self._named(origin, args)
            return self._generic_schema(origin, args, typevars)
        return _unknown(t)

    def _class_schema(self, cls: type, typevars: Mapping[object, object]) -> Schema:
        if (
            issubclass(cls, enum.Enum)
            or _is_structured_class(cls)
            or typing.is_typeddict(cls)
        ):
            return self._named(cls, ())
        if cls is bytes:
            return _copy(_BYTES)
        for base in cls.__mro__:
            if base in _SCALARS:
                return _copy(_SCALARS[base])
        if issubclass(cls, collections.abc.Mapping):
            return {"type": "object"}
        if issubclass(cls, collections.abc.Iterable):
            return self._generic_schema(cls, (), typevars)
        return _unknown(cls)

    def _generic_schema(
        self, origin: type, args: tuple[object, ...], typevars: Mapping[object, object]
    ) -> Schema:
        if issubclass(origin, collections.abc.Mapping):
            schema: Schema = {"type": "object"}
            if len(args) == 2:
                names = self._key_schema(args[0], typevars)
                if names is not None:
                    schema["propertyNames"] = names
                values = self._schema(args[1], typevars)
                if values:
                    schema["additionalProperties"] = values
            return schema
        if origin is tuple and args and args[-1] is not Ellipsis:
            return _tuple_schema([self._schema(arg, typevars) for arg in args])
        if issubclass(origin, collections.abc.Iterable) and not issubclass(
            origin, str | bytes
        ):
            schema = {"type": "array"}
            if args:
                items = self._schema(args[0], typevars)
                if items:
                    schema["items"] = items
            if issubclass(origin, collections.abc.Set):
                schema["uniqueItems"] = True
            return schema
        return _unknown(origin)

    def _key_schema(
        self, key: object, typevars: Mapping[object, object]
    ) -> Schema | None:
        """The ``propertyNames`` of a mapping with keys *key*, if they are strings."""
        if key is str:
            return None
        schema = self._schema(key, typevars)
        ref = schema.get("$ref")
        resolved = schema
        if isinstance(ref, str):
            resolved = self.definitions.get(ref.removeprefix(self.ref_prefix), {})
        return schema if resolved.get("type") == "string" else None

    # -- named schemas: classes and enums

    def _named(self, cls: type, args: tuple[object, ...]) -> Schema:
        """A ``$ref`` to the schema of *cls* (with the type arguments *args*)."""
        name = self._names.get((cls, args))
        if name is None:
            name = self._new_name(cls, args)
            self._names[(cls, args)] = name
            self.definitions[name] = {}  # taken; filled below (it may refer to itself)
            self.definitions[name] = self._define(cls, args)
        return self._ref(name)

    def _new_name(self, cls: type, args: tuple[object, ...]) -> str:
        suffix = "".join(f"_{type_label(arg)}" for arg in args)
        candidates = [
            component_key(cls.__name__ + suffix),
            component_key(f"{cls.__module__}.{cls.__qualname__}{suffix}"),
        ]
        for candidate in candidates:
            if candidate not in self.definitions:
                return candidate
        number = 2
        while f"{candidates[-1]}_{number}" in self.definitions:
            number += 1
        return f"{candidates[-1]}_{number}"

    def _define(self, cls: type, args: tuple[object, ...]) -> Schema:
        schema: Schema
        if issubclass(cls, enum.Enum):
            if issubclass(cls, enum.Flag):  # any combination of the flags
                schema = {"type": "integer"}
            else:
                schema = _enum(self._json_values(tuple(member for member in cls)))
        else:
            parameters = getattr(cls, "__parameters__", ())
            typevars = dict(zip(parameters, args, strict=False))
            schema = self._object_schema(cls, typevars)
        described: Schema = {"title": cls.__name__}
        doc = _own_doc(cls)
        if doc:
            described["description"] = doc
        return {**described, **schema}

    def _object_schema(self, cls: type, typevars: Mapping[object, object]) -> Schema:
        hints = _hints(cls)
        properties: Schema = {}
        required: list[str] = []
        for name, has_default, default in _fields(cls):
            schema = self._schema(hints.get(name, Any), typevars)
            if has_default is None:
                required.append(name)
            elif has_default:
                shown = self._json_value(default)
                if shown is not _NO_VALUE:
                    schema = _with_keyword(schema, "default", shown)
            properties[name] = schema
        schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        return schema

    # -- helpers

    def _ref(self, name: str) -> Schema:
        return {"$ref": self.ref_prefix + name}

    def _json_values(self, values: tuple[object, ...]) -> list[object]:
        shown = [self._json_value(value) for value in values]
        return [value for value in shown if value is not _NO_VALUE]

    def _json_value(self, value: object) -> object:
        """*value* as the converter unstructures it into JSON, or ``_NO_VALUE``."""
        try:
            return json.loads(
                json.dumps(self.converter.unstructure(value), allow_nan=False)
            )
        except (TypeError, ValueError):
            return _NO_VALUE


_NO_VALUE: Final = object()


def _is_structured_class(cls: type) -> bool:
    return attrs.has(cls) or dataclasses.is_dataclass(cls)


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: described as any value
        return {}


def _fields(cls: type) -> list[tuple[str, bool | None, object]]:
    """``(key, has_default, default)`` of each field the converter reads and writes.

    *has_default* is ``None`` for a required field, ``False`` for a default made
    by a factory (not shown), ``True`` for a default value. Fields left out of
    ``__init__`` are left out, as cattrs does.
    """
    found: list[tuple[str, bool | None, object]] = []
    if attrs.has(cls):
        for field in attrs.fields(cls):
            if not field.init:
                continue
            if field.default is attrs.NOTHING:
                found.append((field.name, None, None))
            elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type] # attrs' stubs say Factory is a function
                found.append((field.name, False, None))
            else:
                found.append((field.name, True, field.default))
    elif dataclasses.is_dataclass(cls):
        for dc_field in dataclasses.fields(cls):
            if not dc_field.init:
                continue
            if dc_field.default is not dataclasses.MISSING:
                found.append((dc_field.name, True, dc_field.default))
            elif dc_field.default_factory is not dataclasses.MISSING:
                found.append((dc_field.name, False, None))
            else:
                found.append((dc_field.name, None, None))
    else:  # a TypedDict
        required: frozenset[str] = getattr(cls, "__required_keys__", frozenset())
        found.extend(
            (name, None if name in required else False, None) for name in _hints(cls)
        )
    return found


def _own_doc(cls: type) -> str | None:
    """The docstring *cls* itself has, not one it inherits or dataclass made up."""
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str) or not doc.strip():
        return None
    if dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        return None
    return inspect.cleandoc(doc)


def _any_of(schemas: list[Schema]) -> Schema:
    """``anyOf`` of *schemas*; ``type: [...]`` when each is only a type."""
    unique: list[Schema] = []
    for schema in schemas:
        if schema not in unique:
            unique.append(schema)
    if any(not schema for schema in unique):
        return {}
    if len(unique) == 1:
        return unique[0]
    if all(schema.keys() == {"type"} for schema in unique):
        return {"type": [schema["type"] for schema in unique]}
    return {"anyOf": unique}


def _enum(values: list[object]) -> Schema:
    if not values:
        return {"not": {}}  # no value is one of none
    schema: Schema = {"const": values[0]} if len(values) == 1 else {"enum": values}
    kinds = {_json_type(value) for value in values}
    if len(kinds) == 1:
        schema = {"type": kinds.pop(), **schema}
    return schema


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _tuple_schema(items: list[Schema]) -> Schema:
    return {
        "type": "array",
        "prefixItems": items,
        "minItems": len(items),
        "maxItems": len(items),
    }


def _with_keyword(schema: Schema, keyword: str, value: object) -> Schema:
    """*schema* plus *keyword*; a ``$ref`` is wrapped (Draft 7 ignores its siblings)."""
    if "$ref" in schema:
        return {"allOf": [schema], keyword: value}
    return {**schema, keyword: value}


def _unknown(t: object) -> Schema:
    return {"description": f"{type_label(t)}: any JSON value (no schema known)"}
