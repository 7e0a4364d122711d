"""The channels of one AMQP connection, shared by the parts that use them.

:class:`ChannelMux` is what the connection (:mod:`._connection`) hands its
publishing (:mod:`._publishing`) and its consumers (:mod:`._consumer`): the
sans-IO protocol their frames are queued in, the writer's wake-up, the table of
open channels and whether the connection still takes requests. None of them
reaches into the connection itself, and this module imports none of them.

Channels: one for topology requests (:class:`RequestChannel`), one in confirm
mode for publishes (:class:`~._publishing.Publishing`), and one per consumer
(closing a consumer closes its channel, which makes the broker requeue its
unsettled deliveries). A broker refusal closes only the channel of the request;
the channel is reopened for the next request, and requests that were pipelined
behind the refused one (which the broker discarded unseen) are sent again on the
new channel.
"""

from __future__ import annotations

import copy
import enum
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol, final

import attrs
import trio

from .._exceptions import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._exceptions import ChannelClosedByBroker
    from ._events import Delivered, Reply
    from ._protocol import Connection as ProtocolConnection

__all__ = [
    "Channel",
    "ChannelConsumer",
    "ChannelMux",
    "RequestChannel",
    "Role",
    "Waiter",
    "fresh",
]


def fresh(error: BaseException) -> BaseException:
    """Return a copy of *error* to raise in one more task.

    Each waiter gets its own exception object, so that tracebacks of different
    tasks do not pile up on one instance.
    """
    clone = copy.copy(error)
    clone.__cause__ = error.__cause__
    clone.__traceback__ = None
    return clone


class Role(enum.Enum):
    """What a channel is for."""

    TOPOLOGY = "topology"
    PUBLISH = "publish"
    CONSUMER = "consumer"


@attrs.define(eq=False)
class Waiter:
    """A request waiting for its reply on a channel (a tiny future).

    Attributes
    ----------
    retry
        Queues the request again on another channel; set for requests that can
        be sent again when the broker discarded them (after an earlier request
        on the same channel was refused).
    on_reply
        Called by the reader with the reply, before anyone wakes up: state
        changes that must happen even if the waiting task was cancelled.
    """

    retry: Callable[[int], None] | None = None
    on_reply: Callable[[Reply], None] | None = None
    event: trio.Event = attrs.Factory(trio.Event)
    reply: Reply | None = None
    error: BaseException | None = None
    abandoned: bool = False

    def resolve(self, reply: Reply) -> None:
        if self.event.is_set():
            return
        self.reply = reply
        if self.on_reply is not None:
            self.on_reply(reply)
        self.event.set()

    def fail(self, error: BaseException) -> None:
        if self.event.is_set():
            return
        self.error = error
        self.event.set()

    async def wait(self) -> Reply:
        try:
            await self.event.wait()
        except BaseException:
            self.abandoned = True
            raise
        if self.error is not None:
            raise fresh(self.error)
        assert self.reply is not None
        return self.reply


class ChannelConsumer(Protocol):
    """The consumer of a channel, as the connection's reader task sees it.

    :class:`~._consumer.AmqpConsumer` implements it; the reader calls it as the
    events of the channel come in, and never waits for it.
    """

    def on_delivery(self, event: Delivered) -> None:
        """Take a delivery for the consumer's buffer."""

    def on_broker_cancel(self) -> None:
        """Note that the broker cancelled the consumer (its queue is gone)."""

    def on_channel_closed(self, error: BaseException | None) -> None:
        """Note the channel is gone: by the broker (*error*) or by our close."""


@attrs.define(eq=False)
class Channel:
    """One incarnation of a channel number.

    When the number is reused, a new :class:`Channel` stands for it, so nothing
    of an earlier incarnation (e.g. a delivery tag) can leak onto the new one.
    """

    number: int
    role: Role
    waiters: deque[Waiter] = attrs.Factory(deque)
    #: False from the moment the channel starts closing (or is closed).
    open: bool = True
    #: Set once the channel is closed for good (by either side or with the
    #: connection).
    closed: trio.Event = attrs.Factory(trio.Event)
    consumer: ChannelConsumer | None = None
    flow_active: bool = True


@final
class ChannelMux:
    """The channels multiplexed over one connection, and what their users share.

    The connection owns one; only the connection sets :attr:`failure` and
    :attr:`closing`.

    Attributes
    ----------
    proto
        The sans-IO protocol: requests are queued in it, whole, synchronously.
    wake_writer
        Tells the writer task that the protocol has output.
    close_timeout
        How long a close handshake (of a channel or the connection) may take.
    channels
        The channels by number until they are closed (the reader task looks
        each event's channel up here).
    failure
        Why the connection was lost (never set by an orderly close).
    closing
        The connection is being closed (or is closed): no new requests.
    """

    def __init__(
        self,
        proto: ProtocolConnection,
        *,
        wake_writer: Callable[[], None],
        close_timeout: float,
    ) -> None:
        self.proto: Final = proto
        self.wake_writer: Final = wake_writer
        self.close_timeout: Final = close_timeout
        self.channels: Final[dict[int, Channel]] = {}
        self.failure: BaseException | None = None
        self.closing = False

    def check_usable(self) -> None:
        """Raise if the connection takes no more requests.

        Raises
        ------
        ConnectionLost
            The connection was lost (a copy of :attr:`failure`, which is a
            :class:`~trioevents.RemoteProtocolError` if the broker broke AMQP).
        trio.ClosedResourceError
            The connection was closed.
        """
        if self.failure is not None:
            raise fresh(self.failure)
        if self.closing:
            raise trio.ClosedResourceError("the connection is closed")

    def open_channel(self, role: Role) -> Channel:
        """Queue a ``Channel.Open``; return the new channel, usable at once.

        Requests queued on it before the ``Open-Ok`` arrives go out after the
        ``Open``, which is all the broker needs.
        """
        number = self.proto.open_channel()
        ch = Channel(number, role)
        ch.waiters.append(Waiter(abandoned=True))  # Channel.Open-Ok
        self.channels[number] = ch
        return ch

    def fail_all(self, error: BaseException) -> None:
        """Mark every channel closed and fail its waiters with *error*.

        The connection is gone (lost or closed), and with it every channel.
        """
        channels = list(self.channels.values())
        self.channels.clear()
        for ch in channels:
            ch.open = False
            ch.closed.set()
            for waiter in ch.waiters:
                waiter.fail(error)
            ch.waiters.clear()

    def close_channel(self, ch: Channel) -> bool:
        """Start closing *ch*; return whether a ``Channel.Close`` was queued.

        When it was, ``ch.closed`` is set once the broker answered (or the
        connection is gone). Nothing is queued when the channel is already
        closing or the connection is lost or being closed.
        """
        if not ch.open:
            return False
        ch.open = False
        if self.failure is not None or self.closing:
            return False
        try:
            self.proto.close_channel(ch.number)
        except LocalProtocolError:
            return False
        self.wake_writer()
        return True


@final
class RequestChannel:
    """The topology channel: requests with a reply, pipelined.

    Opened by the first request and again by the first one after the broker
    closed it.

    Parameters
    ----------
    mux
        The connection's channels.
    """

    def __init__(self, mux: ChannelMux) -> None:
        self._mux = mux
        #: The channel, or ``None`` until the next request opens one.
        self.channel: Channel | None = None

    async def call(self, request: Callable[[int], None]) -> Reply:
        """Send a request with ``request(channel_number)``; return the reply.

        Raises
        ------
        ChannelClosedByBroker
            The broker refused the request.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._mux.check_usable()
        waiter = Waiter(retry=request)
        self._issue(waiter)
        self._mux.wake_writer()
        return await waiter.wait()

    def _issue(self, waiter: Waiter) -> None:
        """Queue *waiter*'s request on the channel (opened if needed)."""
        assert waiter.retry is not None
        ch = self.channel
        if ch is None:
            ch = self._mux.open_channel(Role.TOPOLOGY)
            self.channel = ch
        waiter.retry(ch.number)
        ch.waiters.append(waiter)

    def reset(self) -> None:
        """Forget the channel: the connection is gone, and with it the channel."""
        self.channel = None

    def on_channel_closed(
        self, waiters: deque[Waiter], error: ChannelClosedByBroker
    ) -> None:
        """Fail the refused request; send the ones behind it again.

        Replies come in request order, so the oldest of *waiters* (those of the
        channel the broker closed) is the refused request; the broker discarded
        everything after it without looking.
        """
        self.channel = None
        culprit = waiters.popleft() if waiters else None
        if culprit is None or culprit.retry is None:
            # The channel itself failed to open: nothing behind it ran.
            for waiter in waiters:
                waiter.fail(error)
            if culprit is not None:
                culprit.fail(error)
            return
        culprit.fail(error)
        for waiter in waiters:
            if waiter.abandoned or waiter.retry is None:
                waiter.fail(error)
                continue
            try:
                self._issue(waiter)
            except Exception as exc:
                waiter.fail(exc)
        if self._mux.proto.pending_output:
            self._mux.wake_writer()
