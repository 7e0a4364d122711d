"""The RabbitMQ transport: AMQP 0-9-1 over trio.

The package is built in layers, each importing only the ones above it:

``_events``
    The events the sans-IO protocol produces.
``_frames``
    Frames: cutting them out of the received bytes, framing what is sent.
``_codec``
    Message properties and field tables to and from pamqp's forms (what a
    field table may hold is :mod:`trioevents._fieldtable`'s to say).
``_state``
    The connection and channel states, the transition table of channel 0,
    the table of synchronous requests and the publisher-confirm tracker.
``_channel``
    One channel's state machine: how the broker's frames on it become events.
``_handshake``
    What the client answers to ``Connection.Start`` and ``Tune``.
``_requests``
    The synchronous requests as typed methods, one a row of the table.
``_protocol``
    :class:`~._protocol.Connection`, the sans-IO AMQP 0-9-1 client that ties
    them together: fed bytes, it produces events and bytes to send. None of
    the modules so far imports trio or socket.
``_dial``
    Opening the byte stream: TCP, TLS, timeouts, the broker named in errors.
``_mux``
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
