"""Connection and channel states, and the tables that move them.

Like h11's ``_state.py``, the rules live here as data:

* :data:`CONNECTION_TRANSITIONS`: which method the broker may send on channel
  0 in each :class:`ConnectionState`, and the state it leads to;
* the request table (:class:`Request`, one constant a request): what a
  synchronous channel request sends, in which :class:`ChannelState` it may be
  made, what answers it and what event the answer becomes.

:class:`ConfirmTracker` counts a channel's publishes awaiting confirms. Nothing
here does I/O or builds frames; :mod:`._channel` and :mod:`._protocol` drive it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final, final

import attrs
from pamqp import commands

from ._events import (
    BasicCancelOk,
    BasicConsumeOk,
    BasicQosOk,
    ChannelOpened,
    ConfirmSelectOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    QueueBindOk,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    QueueUnbindOk,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pamqp import base as pamqp_base

    from ._events import Reply

__all__ = [
    "BASIC_CANCEL",
    "BASIC_CONSUME",
    "BASIC_QOS",
    "CHANNEL_OPEN",
    "CLOSABLE",
    "CONFIRM_SELECT",
    "CONNECTION_TRANSITIONS",
    "EXCHANGE_DECLARE",
    "EXCHANGE_DELETE",
    "QUEUE_BIND",
    "QUEUE_DECLARE",
    "QUEUE_DELETE",
    "QUEUE_PURGE",
    "QUEUE_UNBIND",
    "REQUEST_STATES",
    "ChannelState",
    "ConfirmTracker",
    "ConnectionState",
    "Request",
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
@attrs.frozen
class Request:
    """One synchronous AMQP request on a channel: a row of the request table.

    Attributes
    ----------
    method
        The pamqp class of the request.
    reply
        The pamqp class of the broker's answer.
    event
        The :class:`~._events.Reply` the answer becomes: called with the
        channel number and the answer's *carries* fields.
    carries
        The fields of the answer that the event carries, in its order.
    nowait
        Whether the request has a ``nowait`` flag; with it set, no answer
        comes and none is expected.
    named
        With ``nowait``, this field of the request must not be empty: the
        broker's choice would never be known. :attr:`nowait_refusal` says why.
    nowait_refusal
        The :class:`~trioevents.InvalidRequest` message when *named* is empty.
    states
        The channel states the request may be made in.
    """

    method: type[pamqp_base.Frame]
    reply: type[pamqp_base.Frame]
    event: Callable[..., Reply]
    carries: tuple[str, ...] = ()
    nowait: bool = True
    named: str | None = None
    nowait_refusal: str = ""
    states: tuple[ChannelState, ...] = REQUEST_STATES

    def answer(self, channel: int, reply: Any) -> Reply:
        """Turn the broker's *reply* on *channel* into this request's event."""
        return self.event(channel, *[getattr(reply, name) for name in self.carries])


# The request table: Connection has one thin method a request, named after it.

#: ``Channel.Open``, made by ``open_channel()`` on a channel not yet there.
CHANNEL_OPEN: Final = Request(
    commands.Channel.Open,
    commands.Channel.OpenOk,
    ChannelOpened,
    nowait=False,
    states=(),
)
EXCHANGE_DECLARE: Final = Request(
    commands.Exchange.Declare, commands.Exchange.DeclareOk, ExchangeDeclareOk
)
EXCHANGE_DELETE: Final = Request(
    commands.Exchange.Delete, commands.Exchange.DeleteOk, ExchangeDeleteOk
)
QUEUE_DECLARE: Final = Request(
    commands.Queue.Declare,
    commands.Queue.DeclareOk,
    QueueDeclareOk,
    ("queue", "message_count", "consumer_count"),
    named="queue",
    nowait_refusal="a server-named queue cannot be declared with nowait",
)
QUEUE_BIND: Final = Request(commands.Queue.Bind, commands.Queue.BindOk, QueueBindOk)
QUEUE_UNBIND: Final = Request(
    commands.Queue.Unbind, commands.Queue.UnbindOk, QueueUnbindOk, nowait=False
)
QUEUE_PURGE: Final = Request(
    commands.Queue.Purge, commands.Queue.PurgeOk, QueuePurgeOk, ("message_count",)
)
QUEUE_DELETE: Final = Request(
    commands.Queue.Delete, commands.Queue.DeleteOk, QueueDeleteOk, ("message_count",)
)
BASIC_QOS: Final = Request(
    commands.Basic.Qos, commands.Basic.QosOk, BasicQosOk, nowait=False
)
BASIC_CONSUME: Final = Request(
    commands.Basic.Consume,
    commands.Basic.ConsumeOk,
    BasicConsumeOk,
    ("consumer_tag",),
    named="consumer_tag",
    nowait_refusal="a consumer started with nowait needs a consumer_tag",
)
BASIC_CANCEL: Final = Request(
    commands.Basic.Cancel, commands.Basic.CancelOk, BasicCancelOk, ("consumer_tag",)
)
CONFIRM_SELECT: Final = Request(
    commands.Confirm.Select, commands.Confirm.SelectOk, ConfirmSelectOk
)


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
