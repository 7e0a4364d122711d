"""The RabbitMQ transport: AMQP 0-9-1 over trio.

The package is built in layers:

``_protocol``
    A sans-IO AMQP 0-9-1 client (connection and channel state machines over
    pamqp frames) that is fed bytes and produces events and bytes to send. It
    imports neither trio nor socket.
``_events``
    The events that ``_protocol`` produces.
``_dial``
    Opening the byte stream: TCP, TLS, timeouts, the broker named in errors.
``_channels``
    The channels of a connection and what their users share with it (the
    protocol, the writer's wake-up, the channel table); topology requests.
``_publishing``
    The publish bookkeeping: confirms, returns, re-sending after a refusal.
``_consumer``
    :class:`AmqpConsumer`: one queue on its own channel, and its states.
``_connection``
    The only reads and writes: a reader, a writer and a heartbeat task drive
    the protocol over a trio stream and implement
    :class:`trioevents.abc.Connection`.
``_transport``
    :class:`AmqpTransport`: URIs, TLS options, connecting.
"""

from __future__ import annotations

from ._connection import AmqpConnection as AmqpConnection
from ._consumer import AmqpConsumer as AmqpConsumer
from ._transport import (
    AmqpAddress as AmqpAddress,
    AmqpParameters as AmqpParameters,
    AmqpTransport as AmqpTransport,
    make_ssl_context as make_ssl_context,
)

__all__ = [
    "AmqpAddress",
    "AmqpConnection",
    "AmqpConsumer",
    "AmqpParameters",
    "AmqpTransport",
    "make_ssl_context",
]
