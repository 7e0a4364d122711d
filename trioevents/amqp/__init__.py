"""The RabbitMQ transport: AMQP 0-9-1 over trio.

The package is built in layers:

``_protocol``
    A sans-IO AMQP 0-9-1 client (connection and channel state machines over
    pamqp frames) that is fed bytes and produces events and bytes to send. It
    imports neither trio nor socket.
``_events``
    The events that ``_protocol`` produces.
"""
