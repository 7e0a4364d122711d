"""Payload codecs and the cattrs converter (the shape of ``cattrs.preconf``).

Event bodies are JSON, as nameko publishes them: ``application/json``, ``utf-8``,
``ensure_ascii`` and :func:`json.dumps`' default separators, so an event reads
``{"id": 2, "via": "rpc"}`` on the wire whichever side sent it.

Two layers:

- The **converter** (:func:`make_converter`, :func:`configure_converter`) turns
  attrs classes, dataclasses and the usual scalar types into JSON-ready values and
  back. On the way out ``datetime``, ``date`` and ``time`` become ISO 8601 strings,
  ``UUID`` and ``Decimal`` become ``str(value)`` (the form kombu 4, which nameko 2.14
  uses, puts on the wire), and ``bytes`` become kombu's
  ``{"__type__": "bytes" | "base64", "__value__": ...}`` wrapping, since JSON has no
  natural form for them.
- The **codec** (:func:`encode_payload`, :func:`decode_payload`) owns the wire:
  content type and encoding, UTF-8, size and nesting limits, kombu 5's
  ``{"__type__": ..., "__value__": ...}`` wrapping on the way in, and the choice
  between handing a handler the plain JSON value or structuring it with cattrs.

Every failure is a :class:`~trioevents.SerializationError` whose ``__cause__`` is
the underlying error. Nothing here ever executes code from a message: there is no
pickle, and the JSON reader builds only ``dict``/``list``/scalars plus the few
value types listed above.
"""

from __future__ import annotations

import base64
import collections.abc
import datetime
import decimal
import functools
import inspect
import json
import reprlib
import typing
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import cattrs
from cattrs.strategies import configure_union_passthrough

from ._exceptions import ConfigurationError, SerializationError

if TYPE_CHECKING:
    from cattrs.converters import BaseConverter

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "JSON_CONTENT_ENCODING",
    "JSON_CONTENT_TYPE",
    "check_annotation",
    "configure_converter",
    "decode_payload",
    "encode_payload",
    "is_plain_annotation",
    "make_converter",
]

#: The content type of every body trioevents publishes (nameko's).
JSON_CONTENT_TYPE = "application/json"
#: The content encoding of every body trioevents publishes (nameko's).
JSON_CONTENT_ENCODING = "utf-8"
#: How deeply JSON arrays and objects may nest in a payload, by default.
DEFAULT_MAX_DEPTH = 100

# Annotations that mean "give me the decoded JSON value as it is".
_PLAIN_ANNOTATIONS: frozenset[Any] = frozenset(
    {
        None,
        Any,
        object,
        dict,
        typing.Dict,  # noqa: UP006 - the bare typing alias is a distinct object
        collections.abc.Mapping,
        collections.abc.MutableMapping,
        typing.Mapping,
        typing.MutableMapping,
        inspect.Parameter.empty,
    }
)

# The types a JSON array may be structured into; checked strictly (see below).
_ARRAY_ORIGINS: frozenset[Any] = frozenset(
    {
        list,
        tuple,
        set,
        frozenset,
        deque,
        collections.abc.Sequence,
        collections.abc.MutableSequence,
        collections.abc.Set,
        collections.abc.MutableSet,
        collections.abc.Iterable,
        collections.abc.Collection,
    }
)

_UTF8_NAMES = frozenset({"utf-8", "utf8"})

# Error messages quote a message's values briefly: they end up in logs and in
# the x-trioevents-error header, and a payload may be megabytes.
_BRIEF = reprlib.Repr()  # keyword arguments need Python 3.12
_BRIEF.maxstring = _BRIEF.maxother = 80
_BRIEF.maxlevel = 2
#: How many structuring problems a SerializationError lists.
_MAX_PROBLEMS = 10
_MAX_PROBLEM_LENGTH = 200


def _brief(value: object) -> str:
    return _BRIEF.repr(value)


def _clip(text: str, limit: int = _MAX_PROBLEM_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summarize_problems(problems: list[str]) -> str:
    shown = [_clip(p) for p in problems[:_MAX_PROBLEMS]]
    if len(problems) > _MAX_PROBLEMS:
        shown.append(f"and {len(problems) - _MAX_PROBLEMS} more")
    return "; ".join(shown)


# --------------------------------------------------------------------- converter


def configure_converter(converter: BaseConverter) -> None:
    """Configure *converter* for JSON event payloads.

    Unstructuring (dispatching):

    * ``datetime``, ``date`` and ``time`` become ISO 8601 strings
      (:meth:`~datetime.datetime.isoformat`);
    * ``UUID`` and ``Decimal`` become ``str(value)``;
    * ``bytes`` become kombu's ``{"__type__": "bytes", "__value__": text}`` when they
      are valid UTF-8, else ``{"__type__": "base64", "__value__": b64}``.

    Structuring (handling), strict because JSON values are typed:

    * ``str`` accepts strings only, plus the values kombu 5 senders wrap
      (``UUID`` and ``Decimal`` as ``str(value)``, dates and times as ISO 8601), so
      an ``id: str`` field reads the same whichever nameko version sent it;
    * ``int`` accepts integers but not booleans; ``float`` accepts integers and
      floats; ``bool`` accepts booleans only;
    * ``Decimal`` accepts strings, integers and floats (a float through its
      ``repr``, so ``9.99`` gives ``Decimal("9.99")``);
    * ``datetime``, ``date``, ``time`` accept ISO 8601 strings, ``UUID`` accepts its
      string forms, ``bytes`` accepts kombu's wrapping (already decoded);
    * lists, tuples, sets and other collections accept JSON arrays only, not
      strings or objects (cattrs alone would turn ``"abc"`` into
      ``["a", "b", "c"]``);
    * unions of ``str``, ``bool``, ``int``, ``float`` and ``None`` are passed
      through (:func:`cattrs.strategies.configure_union_passthrough`).

    Subclasses of ``str`` and ``int`` (string and integer enums) keep cattrs'
    behaviour of calling the class.

    Parameters
    ----------
    converter
        The converter to configure, usually a fresh :class:`cattrs.Converter`.
    """
    converter.register_unstructure_hook(datetime.datetime, _isoformat)
    converter.register_unstructure_hook(datetime.date, _isoformat)
    converter.register_unstructure_hook(datetime.time, _isoformat)
    converter.register_unstructure_hook(uuid.UUID, str)
    converter.register_unstructure_hook(decimal.Decimal, str)
    converter.register_unstructure_hook(bytes, _unstructure_bytes)

    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(decimal.Decimal, _structure_decimal)
    converter.register_structure_hook(datetime.datetime, _structure_datetime)
    converter.register_structure_hook(datetime.date, _structure_date)
    converter.register_structure_hook(datetime.time, _structure_time)
    converter.register_structure_hook(uuid.UUID, _structure_uuid)
    converter.register_structure_hook(bytes, _structure_bytes)
    _register_strict_arrays(converter)
    configure_union_passthrough(
        typing.Union[str, bool, int, float, None],  # noqa: UP007 - a runtime value
        converter,
    )


def make_converter(**kwargs: Any) -> cattrs.Converter:
    """Build a :class:`cattrs.Converter` configured by :func:`configure_converter`.

    Sets are unstructured as lists unless *kwargs* override
    ``unstruct_collection_overrides``. Extra keys in a payload are ignored by
    default (pass ``forbid_extra_keys=True`` to refuse them), so a sender may add
    fields before its receivers know them.

    Parameters
    ----------
    **kwargs
        Passed to :class:`cattrs.Converter`.
    """
    kwargs["unstruct_collection_overrides"] = {
        collections.abc.Set: list,
        **kwargs.get("unstruct_collection_overrides", {}),
    }
    converter = cattrs.Converter(**kwargs)
    configure_converter(converter)
    return converter


@functools.cache
def _get_default_converter() -> cattrs.Converter:
    return make_converter()


def _isoformat(value: datetime.date | datetime.time) -> str:
    return value.isoformat()


def _unstructure_bytes(value: bytes) -> dict[str, str]:
    try:
        return {"__type__": "bytes", "__value__": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"__type__": "base64", "__value__": base64.b64encode(value).decode()}


def _type_error(expected: str, value: object) -> TypeError:
    return TypeError(f"expected {expected}, got {type(value).__name__}")


def _structure_str(value: object, cl: Any) -> str:
    if cl is not str:  # a str subclass, e.g. a string enum: cattrs' default
        subclassed: str = cl(value)
        return subclassed
    if isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise _type_error("a string", value)


def _structure_int(value: object, cl: Any) -> int:
    if cl is not int:  # an int subclass, e.g. an IntEnum: cattrs' default
        subclassed: int = cl(value)
        return subclassed
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _type_error("an integer", value)


def _structure_bool(value: object, _: type[bool]) -> bool:
    if isinstance(value, bool):
        return value
    raise _type_error("a boolean", value)


def _structure_float(value: object, _: type[float]) -> float:
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return float(value)
    raise _type_error("a number", value)


def _structure_decimal(value: object, _: type[decimal.Decimal]) -> decimal.Decimal:
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, bool):
        raise _type_error("a decimal string or number", value)
    if isinstance(value, float):
        value = repr(value)
    if isinstance(value, str | int):
        try:
            return decimal.Decimal(value)
        except decimal.InvalidOperation:
            raise ValueError(f"not a decimal number: {_brief(value)}") from None
    raise _type_error("a decimal string or number", value)


def _structure_datetime(value: object, _: type[datetime.datetime]) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    raise _type_error("an ISO 8601 datetime string", value)


def _structure_date(value: object, _: type[datetime.date]) -> datetime.date:
    if isinstance(value, datetime.datetime):
        raise _type_error("an ISO 8601 date string", value)
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            # kombu 4 sends a date as the datetime of its midnight
            return datetime.datetime.fromisoformat(value).date()
    raise _type_error("an ISO 8601 date string", value)


def _structure_time(value: object, _: type[datetime.time]) -> datetime.time:
    if isinstance(value, datetime.time):
        return value
    if isinstance(value, str):
        return datetime.time.fromisoformat(value)
    raise _type_error("an ISO 8601 time string", value)


def _structure_uuid(value: object, _: type[uuid.UUID]) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        return uuid.UUID(value)
    raise _type_error("a UUID string", value)


def _structure_bytes(value: object, _: type[bytes]) -> bytes:
    if isinstance(value, bytes):
        return value
    raise _type_error(
        'bytes (kombu\'s {"__type__": "bytes" | "base64", ...} wrapping)', value
    )


def _register_strict_arrays(converter: BaseConverter) -> None:
    """Make every collection type accept only JSON arrays.

    The hook cattrs would use is looked up with this factory switched off for the
    type at hand, then wrapped in a type check.
    """
    building: set[Any] = set()

    def is_array_type(t: Any) -> bool:
        origin = typing.get_origin(t) or t
        return origin in _ARRAY_ORIGINS and t not in building

    def factory(t: Any) -> Any:
        building.add(t)
        try:
            inner = converter.get_structure_hook(t, cache_result=False)
        finally:
            building.discard(t)

        def structure_array(value: Any, cl: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise _type_error("a JSON array", value)
            return inner(value, cl)

        return structure_array

    converter.register_structure_hook_factory(is_array_type, factory)


# ------------------------------------------------------------------ annotations


def is_plain_annotation(annotation: object) -> bool:
    """Return whether *annotation* asks for the decoded JSON value as it is.

    That is no annotation (``inspect.Parameter.empty`` or ``None``), ``Any``,
    ``object``, or a bare ``dict`` / ``Mapping``.
    """
    try:
        return annotation in _PLAIN_ANNOTATIONS
    except TypeError:  # unhashable: not one of them
        return False


def check_annotation(
    annotation: object, *, converter: BaseConverter | None = None
) -> None:
    """Check that payloads can be structured into *annotation*.

    A host can call this when it binds a handler, so that an annotation cattrs
    cannot handle fails at start-up rather than on the first message.

    Raises
    ------
    ConfigurationError
        The converter has no way to structure *annotation*.
    """
    if is_plain_annotation(annotation):
        return
    conv = converter if converter is not None else _get_default_converter()
    try:
        conv.get_structure_hook(annotation)
    except Exception as exc:
        raise ConfigurationError(
            f"payloads cannot be structured into {_type_name(annotation)}: {exc}"
        ) from exc


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation)


# ------------------------------------------------------------------------ codec


def encode_payload(
    value: object,
    *,
    converter: BaseConverter | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_size: int | None = None,
) -> tuple[bytes, str, str]:
    """Encode an event payload as nameko does: JSON, ``ensure_ascii``, UTF-8.

    attrs instances, dataclasses and the types :func:`configure_converter` lists
    are unstructured first, so a payload may be, say, a list of attrs instances
    holding datetimes.

    Parameters
    ----------
    value
        The payload.
    converter
        The converter to unstructure with; a shared :func:`make_converter` one
        by default.
    max_depth
        How deeply arrays and objects may nest (receivers enforce the same limit,
        ``MAX_JSON_DEPTH``).
    max_size
        The largest body allowed, in bytes (``MAX_MESSAGE_SIZE``); no limit if
        ``None``.

    Returns
    -------
    tuple[bytes, str, str]
        The body, its content type (``"application/json"``) and its content
        encoding (``"utf-8"``).

    Raises
    ------
    SerializationError
        The value cannot be represented as JSON (an unsupported type, a circular
        reference, NaN or infinity), nests too deeply or is too large.
    """
    conv = converter if converter is not None else _get_default_converter()
    what = f"a payload of type {type(value).__qualname__}"
    try:
        plain = conv.unstructure(value)
        text = _JSON_ENCODER.encode(plain)
    except RecursionError as exc:
        raise SerializationError(
            f"cannot encode {what}: it nests too deeply (or refers to itself)"
        ) from exc
    except Exception as exc:
        raise SerializationError(f"cannot encode {what}: {exc}") from exc
    try:
        _check_depth(text, plain, max_depth)
    except ValueError as exc:
        raise SerializationError(f"cannot encode {what}: {exc}") from exc
    body = text.encode("ascii")
    if max_size is not None and len(body) > max_size:
        err = ValueError(f"{len(body)} bytes > {max_size}")
        raise SerializationError(
            f"cannot encode {what}: its {len(body)} bytes exceed the "
            f"limit of {max_size} bytes (MAX_MESSAGE_SIZE)"
        ) from err
    return body, JSON_CONTENT_TYPE, JSON_CONTENT_ENCODING


def decode_payload(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    annotation: object = inspect.Parameter.empty,
    *,
    converter: BaseConverter | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_size: int | None = None,
) -> Any:
    """Decode a message body for a handler parameter annotated *annotation*.

    With no annotation, ``Any``, ``object`` or a bare ``dict`` (see
    :func:`is_plain_annotation`) the handler gets the decoded JSON value; kombu 5's
    ``{"__type__": ..., "__value__": ...}`` wrappings in it are already turned
    into ``datetime``, ``date``, ``time``, ``UUID``, ``Decimal`` or ``bytes``, as a
    nameko handler would see them. Any other annotation (an attrs class, a
    dataclass, ``list[...]``, ``dict[str, ...]``, ``X | None``, ...) is structured
    with cattrs.

    Parameters
    ----------
    body
        The message body.
    content_type
        ``application/json``, with or without a ``charset=utf-8`` parameter;
        ``None`` (or empty) is read as JSON.
    content_encoding
        ``utf-8`` (any case) or ``None``.
    annotation
        The handler parameter's resolved annotation.
    converter
        The converter to structure with; a shared :func:`make_converter` one by
        default.
    max_depth
        How deeply arrays and objects may nest (``MAX_JSON_DEPTH``). The check
        never recurses; the JSON reader itself stops at the interpreter's
        recursion limit whatever this says.
    max_size
        The largest body accepted, in bytes (``MAX_MESSAGE_SIZE``); no limit if
        ``None``.

    Raises
    ------
    SerializationError
        The body is too large, has an unsupported content type or encoding, is
        not UTF-8 or not JSON, nests too deeply, has an unknown kombu type marker,
        or does not fit *annotation*. ``__cause__`` holds the underlying error;
        for a mismatch the message lists each problem with its path
        (:func:`cattrs.transform_error`).
    """
    if max_size is not None and len(body) > max_size:
        err = ValueError(f"{len(body)} bytes > {max_size}")
        raise SerializationError(
            f"the body's {len(body)} bytes exceed the limit of {max_size} bytes "
            "(MAX_MESSAGE_SIZE)"
        ) from err
    try:
        _check_content_type(content_type)
        _check_content_encoding(content_encoding)
    except ValueError as exc:
        raise SerializationError(str(exc)) from exc
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerializationError(f"the body is not valid UTF-8: {exc}") from exc
    try:
        # kombu's wrapping is the only reason for a hook per JSON object: the
        # C decoder reads a payload without one much faster.
        decoder = _JSON_DECODER if '"__type__"' in text else _PLAIN_JSON_DECODER
        value = decoder.decode(text)
    except RecursionError as exc:
        raise SerializationError(
            f"the payload nests deeper than {max_depth} levels (MAX_JSON_DEPTH)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise SerializationError(f"the body is not valid JSON: {exc}") from exc
    except Exception as exc:  # a kombu wrapping that does not decode
        raise SerializationError(
            f"the body cannot be decoded: {_clip(str(exc), 500)}"
        ) from exc
    try:
        _check_depth(text, value, max_depth)
    except ValueError as exc:
        raise SerializationError(f"the payload {exc}") from exc
    if is_plain_annotation(annotation):
        return value
    conv = converter if converter is not None else _get_default_converter()
    try:
        return conv.structure(value, annotation)  # type: ignore[arg-type]
    except Exception as exc:
        problems = _summarize_problems(cattrs.transform_error(exc))
        raise SerializationError(
            f"the payload does not match {_type_name(annotation)}: {problems}"
        ) from exc


def _check_content_type(content_type: str | None) -> None:
    if not content_type or content_type == JSON_CONTENT_TYPE:
        return
    media_type, *params = content_type.split(";")
    if media_type.strip().lower() != JSON_CONTENT_TYPE:
        raise ValueError(
            f"unsupported content type {content_type!r}: trioevents reads "
            f"{JSON_CONTENT_TYPE} only"
        )
    for param in params:
        name, _, charset = param.partition("=")
        if name.strip().lower() != "charset":
            continue
        if charset.strip().strip('"').lower() not in _UTF8_NAMES:
            raise ValueError(
                f"unsupported charset in content type {content_type!r}: JSON is "
                "read as utf-8 only"
            )


def _check_content_encoding(content_encoding: str | None) -> None:
    if content_encoding == JSON_CONTENT_ENCODING:
        return
    if content_encoding and content_encoding.strip().lower() not in _UTF8_NAMES:
        raise ValueError(
            f"unsupported content encoding {content_encoding!r}: trioevents reads "
            f"{JSON_CONTENT_ENCODING} only"
        )


def _check_depth(text: str, value: object, max_depth: int) -> None:
    """Raise ValueError if *value* nests arrays and objects deeper than allowed.

    *text* is its JSON; if it has no more brackets than *max_depth* the value
    cannot nest deeper, which spares the walk for ordinary payloads. The walk
    keeps its own stack, so it cannot hit the recursion limit.
    """
    if text.count("[") + text.count("{") <= max_depth or not isinstance(
        value, dict | list | tuple
    ):
        return
    containers = (dict, list, tuple)
    stack: list[tuple[object, int]] = [(value, 1)]
    push = stack.append
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"nests deeper than {max_depth} levels (MAX_JSON_DEPTH)")
        children = node.values() if isinstance(node, dict) else node
        assert isinstance(children, collections.abc.Iterable)
        for child in children:
            if isinstance(child, containers):
                push((child, depth + 1))


# kombu 5's JSON wrapping: {"__type__": marker, "__value__": value}. The markers
# and value forms are those of kombu/utils/json.py.


def _kombu_datetime(value: object) -> datetime.datetime:
    return datetime.datetime.fromisoformat(_expect_str(value))


def _kombu_date(value: object) -> datetime.date:
    return datetime.datetime.fromisoformat(_expect_str(value)).date()


def _kombu_time(value: object) -> datetime.time:
    return datetime.time.fromisoformat(_expect_str(value))


def _kombu_decimal(value: object) -> decimal.Decimal:
    try:
        return decimal.Decimal(_expect_str(value))
    except decimal.InvalidOperation:
        raise ValueError(f"not a decimal number: {_brief(value)}") from None


def _kombu_uuid(value: object) -> uuid.UUID:
    # kombu writes {"hex": ..., "version": ...}; some versions write str(uuid).
    # The hex already carries an RFC 4122 UUID's version, so it is all we read.
    if isinstance(value, dict):
        return uuid.UUID(hex=_expect_str(value.get("hex")))
    return uuid.UUID(_expect_str(value))


def _kombu_bytes(value: object) -> bytes:
    return _expect_str(value).encode("utf-8")


def _kombu_base64(value: object) -> bytes:
    return base64.b64decode(_expect_str(value), validate=True)


def _expect_str(value: object) -> str:
    if not isinstance(value, str):
        raise _type_error("a string", value)
    return value


_KOMBU_DECODERS: dict[str, collections.abc.Callable[[object], object]] = {
    "datetime": _kombu_datetime,
    "date": _kombu_date,
    "time": _kombu_time,
    "decimal": _kombu_decimal,
    "uuid": _kombu_uuid,
    "bytes": _kombu_bytes,
    "base64": _kombu_base64,
}
_KOMBU_KEYS = frozenset({"__type__", "__value__"})


def _kombu_object_hook(obj: dict[str, Any]) -> object:
    if len(obj) != 2 or obj.keys() != _KOMBU_KEYS:
        return obj
    marker = obj["__type__"]
    decoder = _KOMBU_DECODERS.get(marker) if isinstance(marker, str) else None
    if decoder is None:
        raise ValueError(f"unknown kombu type marker {_brief(marker)} in {_brief(obj)}")
    try:
        return decoder(obj["__value__"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid kombu {marker!r} value: {_clip(str(exc))}") from exc


# One encoder and one decoder for every message: json.dumps / json.loads with
# arguments build new ones per call. Both are stateless, so sharing is safe.
_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, allow_nan=False)
_JSON_DECODER: Final = json.JSONDecoder(object_hook=_kombu_object_hook)
_PLAIN_JSON_DECODER: Final = json.JSONDecoder()
