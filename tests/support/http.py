"""A small HTTP/1.1 client over trio (h11, which hypercorn brings): GET one URL.

What a scrape or a probe does: one connection, one request, the whole answer,
bounded by :data:`~tests.support.brokers.DEADLINE`.
"""

from __future__ import annotations

import urllib.parse

import attrs
import h11
import trio

from .brokers import DEADLINE

__all__ = ["Response", "get"]


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


async def get(url: str) -> Response:
    """``GET`` *url* (``http://host:port/path``); return the response."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port
    if host is None or port is None:
        raise ValueError(f"not an http://host:port/ URL: {url!r}")
    connection = h11.Connection(h11.CLIENT)
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            request = h11.Request(
                method="GET",
                target=parts.path or "/",
                headers=[("Host", parts.netloc), ("Connection", "close")],
            )
            await stream.send_all(
                connection.send(request) + connection.send(h11.EndOfMessage())
            )
            status = 0
            headers: dict[str, str] = {}
            body = bytearray()
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some())
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return Response(status, headers, bytes(body))
