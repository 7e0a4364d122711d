"""OpenTelemetry tracing of a host: an :class:`~trioevents.Observer` (the ``otel`` extra).

::

    from trioevents.otel import OpenTelemetryTracing

    host = ServiceHost([Orders, Billing], config, observers=[OpenTelemetryTracing()])

Each dispatch is a ``PRODUCER`` span, each handled delivery a ``CONSUMER`` span,
named and described after OpenTelemetry's messaging semantic conventions for
RabbitMQ (also on the embedded broker, which speaks the same model). The W3C
trace context (``traceparent``, ``tracestate``, and ``baggage`` with the default
propagators) travels in the message's headers, so a chain of events is one
trace: each consumer span is a child of the producer span of its message, and
what a handler dispatches is a child of its consumer span. nameko, which reads
only ``nameko.*`` headers, ignores them.

Only ``opentelemetry-api`` is needed: the application sets up the SDK (a
``TracerProvider`` and its exporters); without one, spans are no-ops.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final, final

from ._events._topology import event_exchange_name
from ._extras import needs_extra
from ._observe import Observer, Outcome
from ._version import __version__

try:
    from opentelemetry import context as otel_context, propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind, StatusCode
except ImportError as exc:  # pragma: no cover - tested in a subprocess
    raise ImportError(
        needs_extra("trioevents.otel", "otel", exc), name=exc.name
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

    from ._observe import DispatchedEvent, HandledEvent

__all__ = ["OpenTelemetryTracing"]

# Messaging semantic conventions (opentelemetry-semantic-conventions' names).
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_RABBITMQ_ROUTING_KEY: Final = "messaging.rabbitmq.destination.routing_key"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
ERROR_TYPE: Final = "error.type"
# trioevents' own.
TRIOEVENTS_SERVICE: Final = "trioevents.service"
TRIOEVENTS_HANDLER: Final = "trioevents.handler"
TRIOEVENTS_ATTEMPT: Final = "trioevents.attempt"
TRIOEVENTS_REDELIVERED: Final = "trioevents.redelivered"
TRIOEVENTS_OUTCOME: Final = "trioevents.outcome"

#: Outcomes that get a span event of their own (``trioevents.retry``, ...).
_NOTABLE: Final = frozenset(Outcome) - {Outcome.ACK}


@final
class _HeaderGetter(Getter["Mapping[str, Any]"]):
    """Read trace context from AMQP headers: text values only."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER: Final = _HeaderGetter()


@final
class OpenTelemetryTracing(Observer):
    """Trace dispatches (``PRODUCER``) and handled deliveries (``CONSUMER``).

    Attributes of both kinds of span: ``messaging.system`` (``rabbitmq``),
    ``messaging.destination.name`` (the exchange, ``{service}.events``),
    ``messaging.rabbitmq.destination.routing_key`` (the event type),
    ``messaging.operation.type`` (``send`` / ``process``),
    ``messaging.operation.name`` (``publish`` / ``process``),
    ``messaging.message.id`` (when the message has one) and
    ``trioevents.service``. Consumer spans add
    ``messaging.consumer.group.name`` (the queue), ``trioevents.handler``,
    ``trioevents.attempt``, ``trioevents.redelivered`` and
    ``trioevents.outcome`` (an :class:`~trioevents.Outcome` value, or
    ``cancelled``). A handler's error is recorded as an exception event with
    status ``ERROR`` and ``error.type``; an outcome other than ``ack`` (retry,
    dead-letter, requeue, undecodable, rejected) is also a span event,
    ``trioevents.<outcome>``.

    Parameters
    ----------
    tracer_provider
        Where spans go; the global one (``trace.set_tracer_provider``) when
        ``None``.
    propagator
        How trace context is written to and read from headers; the global one
        (``propagate.set_global_textmap``: W3C trace context and baggage by
        default) when ``None``.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(
            "trioevents", __version__, tracer_provider=tracer_provider
        )
        self._propagator = propagator

    def _textmap(self) -> TextMapPropagator:
        return self._propagator or propagate.get_global_textmap()

    @contextlib.contextmanager
    def dispatching(self, event: DispatchedEvent) -> Iterator[None]:
        attributes: dict[str, AttributeValue] = {
            MESSAGING_SYSTEM: "rabbitmq",
            MESSAGING_DESTINATION_NAME: event.exchange,
            MESSAGING_RABBITMQ_ROUTING_KEY: event.event_type,
            MESSAGING_OPERATION_TYPE: "send",
            MESSAGING_OPERATION_NAME: "publish",
        }
        if event.message_id is not None:
            attributes[MESSAGING_MESSAGE_ID] = event.message_id
        if event.service is not None:
            attributes[TRIOEVENTS_SERVICE] = event.service
        span = self._tracer.start_span(
            f"publish {event.exchange}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        context = trace.set_span_in_context(span)
        self._textmap().inject(event.headers, context=context)
        token = otel_context.attach(context)
        try:
            yield
        finally:
            otel_context.detach(token)
            if event.error is not None:
                _failed(span, event.error)
            span.end()

    @contextlib.contextmanager
    def handling(self, event: HandledEvent) -> Iterator[None]:
        exchange = event_exchange_name(event.source_service)
        attributes: dict[str, AttributeValue] = {
            MESSAGING_SYSTEM: "rabbitmq",
            MESSAGING_DESTINATION_NAME: exchange,
            MESSAGING_RABBITMQ_ROUTING_KEY: event.event_type,
            MESSAGING_CONSUMER_GROUP_NAME: event.queue,
            MESSAGING_OPERATION_TYPE: "process",
            MESSAGING_OPERATION_NAME: "process",
            TRIOEVENTS_SERVICE: event.service,
            TRIOEVENTS_HANDLER: event.handler,
            TRIOEVENTS_ATTEMPT: event.attempt,
            TRIOEVENTS_REDELIVERED: event.redelivered,
        }
        if event.message_id is not None:
            attributes[MESSAGING_MESSAGE_ID] = event.message_id
        parent = self._textmap().extract(event.headers, getter=_GETTER)
        span = self._tracer.start_span(
            f"process {exchange}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        # The handler's own dispatches are children of this span.
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            yield
        finally:
            otel_context.detach(token)
            _handled(span, event)
            span.end()


def _failed(span: Span, error: BaseException) -> None:
    """Record *error* on *span*: an exception event, ``error.type``, status ERROR."""
    span.record_exception(error)
    span.set_attribute(ERROR_TYPE, _qualified_name(type(error)))
    span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")


def _handled(span: Span, event: HandledEvent) -> None:
    """Record how a delivery ended on its span."""
    outcome = event.outcome
    span.set_attribute(
        TRIOEVENTS_OUTCOME, "cancelled" if outcome is None else outcome.value
    )
    if event.error is not None:
        _failed(span, event.error)
    if outcome is None:
        span.add_event("trioevents.cancelled", {TRIOEVENTS_ATTEMPT: event.attempt})
    elif outcome in _NOTABLE:
        span.add_event(
            f"trioevents.{outcome.value}", {TRIOEVENTS_ATTEMPT: event.attempt}
        )


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
