"""The payload codec a host hands its extensions: one converter, the config's limits.

:mod:`trioevents._serialization` holds the functions; :class:`PayloadCodec` binds
them to one cattrs converter and a host's ``MAX_MESSAGE_SIZE`` and
``MAX_JSON_DEPTH``, so that whatever encodes or decodes payloads (the publish
path, event handlers, custom entrypoints) does it the same way.
"""

from __future__ import annotations

import inspect
import typing
from typing import TYPE_CHECKING, Any, final

from ._exceptions import ConfigurationError, EventHandlerConfigurationError
from ._serialization import (
    DEFAULT_MAX_DEPTH,
    check_annotation,
    decode_payload,
    encode_payload,
    make_converter,
)

if TYPE_CHECKING:
    import cattrs

    from ._config import Config
    from ._message import Delivery

__all__ = ["PayloadCodec"]


@final
class PayloadCodec:
    """Encode and decode event payloads with one converter and the host's limits.

    Parameters
    ----------
    converter
        The cattrs converter; by default a fresh one configured for JSON event
        payloads (``trioevents._serialization.make_converter()``).
    max_depth
        ``MAX_JSON_DEPTH``: how deeply JSON arrays and objects may nest.
    max_size
        ``MAX_MESSAGE_SIZE``: the largest body, in bytes; ``None``: no limit.
    """

    def __init__(
        self,
        converter: cattrs.Converter | None = None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_size: int | None = None,
    ) -> None:
        self.converter = converter if converter is not None else make_converter()
        self.max_depth = max_depth
        self.max_size = max_size

    @classmethod
    def from_config(cls, config: Config) -> PayloadCodec:
        """Build the codec of a host with *config*'s limits."""
        return cls(max_depth=config.max_json_depth, max_size=config.max_message_size)

    def encode(self, value: object) -> tuple[bytes, str, str]:
        """Return ``(body, content_type, content_encoding)`` for *value*.

        Raises
        ------
        SerializationError
            The value cannot be JSON, nests too deeply or is too large.
        """
        return encode_payload(
            value,
            converter=self.converter,
            max_depth=self.max_depth,
            max_size=self.max_size,
        )

    def decode(self, delivery: Delivery, annotation: object = Any) -> Any:
        """Decode *delivery*'s body for a parameter annotated *annotation*.

        Raises
        ------
        SerializationError
            The body cannot be decoded or does not fit the annotation.
        """
        props = delivery.properties
        return decode_payload(
            delivery.body,
            props.content_type,
            props.content_encoding,
            annotation,
            converter=self.converter,
            max_depth=self.max_depth,
            max_size=self.max_size,
        )

    def payload_annotation(self, cls: type, method_name: str) -> Any:
        """Return the annotation of the payload parameter of ``cls.method_name``.

        The payload is the method's first argument after ``self``; any other
        argument must have a default. The annotation is resolved with
        :func:`typing.get_type_hints` and checked against the converter, so that
        a payload type cattrs cannot build fails at start-up.

        Raises
        ------
        ConfigurationError
            The method takes no payload argument, or more required arguments.
        EventHandlerConfigurationError
            The annotation cannot be resolved or structured.
        """
        fn = getattr(cls, method_name)
        params = list(inspect.signature(fn).parameters.values())[1:]
        where = f"{cls.__qualname__}.{method_name}"
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise ConfigurationError(
                f"{where} must take the event payload as its first argument"
            )
        required = [
            p
            for p in params[1:]
            if p.default is inspect.Parameter.empty
            and p.kind
            not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if required:
            raise ConfigurationError(
                f"{where} takes more required arguments than the event payload"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise ConfigurationError(
                f"the annotations of {where} cannot be resolved: {exc}"
            ) from exc
        annotation = hints.get(params[0].name, Any)
        try:
            check_annotation(annotation, converter=self.converter)
        except ConfigurationError as exc:
            raise EventHandlerConfigurationError(
                f"{where}: the payload annotation cannot be structured: {exc}"
            ) from exc
        return annotation
