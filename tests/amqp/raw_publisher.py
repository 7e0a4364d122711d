"""A raw AMQP publisher: sends content headers our own client would never send.

Our client refuses properties AMQP cannot carry as we read them (non-UTF-8
strings, timestamps past datetime), but anyone who may publish to an exchange
can send them. :func:`publish_raw` speaks just enough AMQP 0-9-1 (with pamqp's
method frames) to put a hand-made content header on the wire, with publisher
confirms, so that tests can see what a host does with such a message.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import trio
from pamqp import commands, frame as pamqp_frame

from trioevents._uri import parse_amqp_address

if TYPE_CHECKING:
    from pamqp import base as pamqp_base

__all__ = ["publish_raw"]

_FRAME_HEADER = struct.Struct(">BHI")
_FRAME_END = b"\xce"


class _Link:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, channel: int, method: pamqp_base.Frame) -> None:
        await self.stream.send_all(pamqp_frame.marshal(method, channel))

    async def send_frame(self, frame_type: int, channel: int, payload: bytes) -> None:
        await self.stream.send_all(
            _FRAME_HEADER.pack(frame_type, channel, len(payload)) + payload + _FRAME_END
        )

    async def receive(self) -> Any:
        while True:
            if len(self.buffer) >= 7:
                _, _, size = _FRAME_HEADER.unpack_from(self.buffer)
                if len(self.buffer) >= size + 8:
                    data = bytes(self.buffer[: size + 8])
                    del self.buffer[: size + 8]
                    _, _, value = pamqp_frame.unmarshal(data)
                    return value
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("the broker closed the connection")
            self.buffer += chunk

    async def expect(self, kind: type[Any]) -> Any:
        value = await self.receive()
        if not isinstance(value, kind):
            raise AssertionError(f"expected {kind.__name__}, got {value!r}")
        return value


async def publish_raw(
    uri: str,
    exchange: str,
    routing_key: str,
    properties: bytes,
    body: bytes,
) -> None:
    """Publish *body* with the raw property bytes *properties* and wait for the confirm.

    *properties* is what follows the body size in a content header: the
    property flags and the property list, as the test builds them.
    """
    address = parse_amqp_address(uri)
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        link = _Link(stream)
        await stream.send_all(b"AMQP\x00\x00\x09\x01")
        await link.expect(commands.Connection.Start)
        await link.send(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "raw test publisher"},
                mechanism="PLAIN",
                response=f"\0{address.username}\0{address.password}",
                locale="en_US",
            ),
        )
        tune = await link.expect(commands.Connection.Tune)
        await link.send(
            0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0)
        )
        await link.send(0, commands.Connection.Open(address.virtual_host))
        await link.expect(commands.Connection.OpenOk)
        await link.send(1, commands.Channel.Open())
        await link.expect(commands.Channel.OpenOk)
        await link.send(1, commands.Confirm.Select())
        await link.expect(commands.Confirm.SelectOk)
        await link.send(
            1, commands.Basic.Publish(exchange=exchange, routing_key=routing_key)
        )
        content_header = struct.pack(">HHQ", 60, 0, len(body)) + properties
        await link.send_frame(2, 1, content_header)
        frame_max = tune.frame_max - 8
        for start in range(0, len(body), frame_max):
            await link.send_frame(3, 1, body[start : start + frame_max])
        confirm = await link.receive()
        if not isinstance(confirm, commands.Basic.Ack):
            raise AssertionError(f"the broker did not confirm: {confirm!r}")
        await link.send(0, commands.Connection.Close(200, "done", 0, 0))
        await link.expect(commands.Connection.CloseOk)
