"""nameko's :class:`EventDispatcher`: a worker's ``dispatch(event_type, event_data)``."""

from __future__ import annotations

import logging
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError
from .._extensions import DependencyProvider
from .._publisher import check_publish_options
from .._serialization import check_annotation
from ._topology import declare_event_exchange, event_exchange_name

if TYPE_CHECKING:
    from .. import abc
    from .._worker import WorkerContext

__all__ = ["Dispatch", "EventDispatcher"]

logger = logging.getLogger("trioevents.events")

#: ``dispatch(event_type, event_data, **options)`` as injected into a worker.
Dispatch = Callable[..., Awaitable[None]]


class EventDispatcher(DependencyProvider["Dispatch"]):
    """Give each worker an async ``dispatch(event_type, event_data, **options)``.

    Events go to the exchange ``{service}.events`` with *event_type* as routing
    key; ``await dispatch(...)`` returns once the broker confirmed the message.
    The worker's context travels on as ``nameko.*`` headers.

    Parameters
    ----------
    events
        The events this dispatcher sends: event type -> payload type (an attrs
        class, a dataclass, or any annotation a handler may take, such as
        ``list[Item]``; ``Any`` or ``dict`` for plain JSON). A declaration for
        readers and tools: :func:`~trioevents.asyncapi_document` lists each as
        a ``send`` operation with the payload's JSON Schema. Dispatch does not
        check it: an event type not declared is dispatched all the same, and
        so is a payload of another type (its receivers check what they get).
    **publish_options
        Defaults for every dispatch: ``delivery_mode``, ``priority``,
        ``expiration``, ``headers``, ``mandatory``, ``message_id``,
        ``correlation_id``. A dispatch's own options override them.

    Attributes
    ----------
    events
        The declared events, read-only (empty if none were declared).

    Raises
    ------
    ConfigurationError
        An unknown option or one of the wrong type; *events* not a mapping, an
        event type that is not a non-empty ``str`` or holds a wildcard (``*``,
        ``#``), or a payload type the converter cannot structure (a string
        instead of a type, say).

    Examples
    --------
    ::

        class Orders:
            name = "orders"
            dispatch = EventDispatcher(events={"order_placed": OrderPlaced})
    """

    def __init__(
        self, *, events: Mapping[str, object] | None = None, **publish_options: Any
    ) -> None:
        self.events = _check_events(events)
        self.publish_options = check_publish_options(publish_options)

    async def declare(self, connection: abc.Connection) -> None:
        exchange = await declare_event_exchange(connection, self.service_name)
        logger.info("declared exchange %r", exchange)

    def get_dependency(self, worker_ctx: WorkerContext) -> Dispatch:
        publisher = self.service.publisher
        exchange = event_exchange_name(self.service_name)
        defaults = self.publish_options

        service = self.service_name

        async def dispatch(event_type: str, event_data: Any, **options: Any) -> None:
            merged = {**defaults, **check_publish_options(options)}
            await publisher.dispatch(
                exchange,
                event_type,
                event_data,
                merged,
                worker_ctx.dispatch_headers(),
                service=service,
                worker_ctx=worker_ctx,
            )

        return dispatch


def _check_events(events: object) -> Mapping[str, object]:
    """Check ``EventDispatcher(events=...)``; return it as a read-only mapping."""
    if events is None:
        return types.MappingProxyType({})
    if not isinstance(events, Mapping):
        raise ConfigurationError(
            "EventDispatcher(events=...) takes a mapping of event type to payload "
            f"type, such as {{'order_placed': OrderPlaced}}, not {events!r}"
        )
    checked: dict[str, object] = {}
    for event_type, payload_type in events.items():
        if not isinstance(event_type, str) or not event_type:
            raise ConfigurationError(
                "EventDispatcher(events=...): an event type must be a non-empty "
                f"str, not {event_type!r}"
            )
        if "*" in event_type or "#" in event_type:
            raise ConfigurationError(
                f"EventDispatcher(events=...): {event_type!r} holds a wildcard; an "
                "event type a dispatcher sends is a routing key ('*' and '#' are "
                "patterns in handlers' event types only)"
            )
        if isinstance(payload_type, str):
            raise ConfigurationError(
                f"EventDispatcher(events=...): the payload type of {event_type!r} "
                f"must be a type, not the string {payload_type!r}"
            )
        try:
            check_annotation(payload_type)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"EventDispatcher(events=...): the payload type of {event_type!r}: "
                f"{exc}"
            ) from exc
        checked[event_type] = payload_type
    return types.MappingProxyType(checked)
