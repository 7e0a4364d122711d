"""A service that relays each ``web.in`` event as ``relay.out``: a dispatch from
inside a handler, for tests of what observers see."""

from __future__ import annotations

from typing import Any

from trioevents import EventDispatcher, event_handler


class Relay:
    name = "relay"
    dispatch = EventDispatcher()

    @event_handler("web", "in")
    async def relay(self, payload: Any) -> None:
        await self.dispatch("out", payload)
