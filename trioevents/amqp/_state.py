"""Connection and channel states, and the tables that move them.

Like h11's ``_state.py``, the rules live here as data:

* :data:`CONNECTION_TRANSITIONS`: which method the broker may send on channel
  0 in each :class:`ConnectionState`, and the state it leads to;
* :data:`REQUEST_STATES`: the channel states requests may be made in.

:class:`ConfirmTracker` counts a channel's publishes awaiting confirms. Nothing
here does I/O or builds frames; :mod:`._channel` and :mod:`._protocol` drive it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, final

import attrs
from pamqp import commands

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pamqp import base as pamqp_base


__all__ = [
    "CLOSABLE",
    "CONNECTION_TRANSITIONS",
    "REQUEST_STATES",
    "ChannelState",
    "ConfirmTracker",
    "ConnectionState",
]


class ConnectionState(enum.Enum):
    """Where a :class:`~._protocol.Connection` is in its life."""

    #: The protocol header is queued; waiting for ``Connection.Start``.
    AWAIT_START = "await_start"
    #: ``Start-Ok`` is queued; waiting for ``Connection.Tune``.
    AWAIT_TUNE = "await_tune"
    #: ``Tune-Ok`` and ``Open`` are queued; waiting for ``Connection.Open-Ok``.
    AWAIT_OPEN_OK = "await_open_ok"
    #: Open for channels.
    OPEN = "open"
    #: We sent ``Connection.Close``; waiting for ``Close-Ok``.
    CLOSING = "closing"
    #: The close handshake is over; only the socket is left to close.
    CLOSED = "closed"
    #: The broker broke the protocol; see :meth:`~._protocol.Connection.next_event`.
    ERROR = "error"


class ChannelState(enum.Enum):
    """Where a channel is in its life. A closed channel has no state."""

    #: ``Channel.Open`` sent; requests may already be pipelined behind it.
    OPENING = "opening"
    #: ``Channel.Open-Ok`` received.
    OPEN = "open"
    #: We sent ``Channel.Close``; the number is reusable after ``Close-Ok``.
    CLOSING = "closing"


_S = ConnectionState

#: ``(state, method the broker sent on channel 0)`` → the next state. A method
#: missing for the state is unexpected (``505``), except while CLOSING, when
#: everything but ``Close`` and ``Close-Ok`` is discarded. ``Connection.Close``
#: may come at every step: the broker refuses a login or a virtual host that
#: way. (CLOSED ignores every frame and ERROR reads none.)
CONNECTION_TRANSITIONS: Final[
    Mapping[tuple[ConnectionState, type[pamqp_base.Frame]], ConnectionState]
] = {
    (_S.AWAIT_START, commands.Connection.Start): _S.AWAIT_TUNE,
    (_S.AWAIT_TUNE, commands.Connection.Tune): _S.AWAIT_OPEN_OK,
    (_S.AWAIT_OPEN_OK, commands.Connection.OpenOk): _S.OPEN,
    (_S.AWAIT_OPEN_OK, commands.Connection.Blocked): _S.AWAIT_OPEN_OK,
    (_S.AWAIT_OPEN_OK, commands.Connection.Unblocked): _S.AWAIT_OPEN_OK,
    (_S.OPEN, commands.Connection.Blocked): _S.OPEN,
    (_S.OPEN, commands.Connection.Unblocked): _S.OPEN,
    (_S.CLOSING, commands.Connection.CloseOk): _S.CLOSED,
    **{
        (state, commands.Connection.Close): _S.CLOSED
        for state in (
            _S.AWAIT_START,
            _S.AWAIT_TUNE,
            _S.AWAIT_OPEN_OK,
            _S.OPEN,
            _S.CLOSING,  # both sides closed at once
        )
    },
}

#: The states our ``close()`` may start from (before that, close the socket).
CLOSABLE: Final = (_S.AWAIT_OPEN_OK, _S.OPEN)

#: The channel states requests may be made in: behind an unanswered
#: ``Channel.Open`` (pipelined) or open. (A tuple: ``in`` compares identities.)
REQUEST_STATES: Final = (ChannelState.OPENING, ChannelState.OPEN)


@final
@attrs.define
class ConfirmTracker:
    """The unconfirmed publish tags of a channel in confirm mode.

    Tags are handed out in order, so the unconfirmed tags are
    ``range(low, next) - done``: ``done`` only holds tags confirmed out of
    order, which keeps every operation cheap however many are in flight.
    """

    low: int = 1
    next: int = 1
    done: set[int] = attrs.Factory(set)

    def publish(self) -> int:
        """Take the tag of the next publish."""
        tag = self.next
        self.next += 1
        return tag

    @property
    def outstanding(self) -> int:
        """How many publishes await a confirm."""
        return self.next - self.low - len(self.done)

    def settle(self, tag: int, multiple: bool) -> tuple[int, ...] | None:
        """Settle *tag*; return the newly settled tags or None if invalid."""
        if multiple:
            upto = self.next - 1 if tag == 0 else tag
            if upto >= self.next:
                return None
            if upto < self.low:
                return ()
            if self.done:
                done = self.done
                tags = tuple(t for t in range(self.low, upto + 1) if t not in done)
                self.done = {t for t in done if t > upto}
            else:
                tags = tuple(range(self.low, upto + 1))
            self.low = upto + 1
            return tags
        if not self.low <= tag < self.next or tag in self.done:
            return None
        if tag == self.low:
            self.low += 1
            while self.low in self.done:
                self.done.remove(self.low)
                self.low += 1
        else:
            self.done.add(tag)
        return (tag,)
