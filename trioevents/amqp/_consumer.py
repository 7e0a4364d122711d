"""The consumer of one queue, on a channel of its own.

:func:`open_amqp_consumer` opens a channel, sets its prefetch, starts consuming
and yields an :class:`AmqpConsumer`; leaving it closes the channel, which makes
the broker requeue every unsettled delivery. The consumer gets the connection's
:class:`~._mux.ChannelMux` and nothing else of it; the connection's reader
task drives it through :class:`~._mux.ChannelConsumer`.

States (:class:`_ConsumerState`)::

    OPENING ──Consume-Ok──> ACTIVE ──cancel()──> CANCELLING ──Cancel-Ok──> CANCELLED
                              │                      │
                              └──broker's Cancel─────┴──> BROKER_CANCELLED

    any but CLOSED ──its channel closed by the broker, or the connection──> FAILED
    any ──open failed, or left (open_amqp_consumer)──> CLOSED
"""

from __future__ import annotations

import enum
from collections import deque
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, final

import trio

from .. import abc
from .._exceptions import ChannelClosedByBroker, ConnectionLost, ConsumerCancelled
from .._message import Defect, Delivery, Settlement
from .._validation import check_name, check_prefetch
from ._events import BasicCancelOk, BasicConsumeOk
from ._mux import Role, Waiter, fresh

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ._events import Delivered, Reply
    from ._mux import Channel, ChannelMux

__all__ = ["AmqpConsumer", "open_amqp_consumer"]


@asynccontextmanager
async def open_amqp_consumer(
    mux: ChannelMux,
    consumers: set[AmqpConsumer],
    queue: str,
    *,
    prefetch_count: int,
    exclusive: bool,
) -> AsyncIterator[AmqpConsumer]:
    """Consume *queue* on a new channel of *mux*; close the channel at the end.

    Parameters
    ----------
    mux
        The connection's channels.
    consumers
        The connection's open consumers: the new one is in it from the moment
        its channel is opened until it is closed (the connection tells each of
        them when it is lost).
    queue, prefetch_count, exclusive
        As in :meth:`trioevents.abc.Connection.open_consumer`.
    """
    # No cancel scope may span the yield: the consumer may be closed after
    # its connection (e.g. by hand with __aexit__), as the seam allows.
    check_name(queue, "queue name")
    check_prefetch(prefetch_count)
    await trio.lowlevel.checkpoint_if_cancelled()
    mux.check_usable()
    proto = mux.proto
    ch = mux.open_channel(Role.CONSUMER)
    consumer = AmqpConsumer(mux, ch, queue, prefetch_count)
    ch.consumer = consumer
    consumers.add(consumer)
    try:
        if prefetch_count:
            proto.basic_qos(ch.number, prefetch_count=prefetch_count)
            ch.waiters.append(Waiter(abandoned=True))
        consume = Waiter(on_reply=consumer._on_consume_ok)
        proto.basic_consume(ch.number, queue, exclusive=exclusive)
        ch.waiters.append(consume)
        mux.wake_writer()
        await consume.wait()
    except BaseException:
        consumers.discard(consumer)
        consumer._abandon()
        raise
    try:
        yield consumer
    finally:
        consumers.discard(consumer)
        await consumer._close()


class _ConsumerState(enum.Enum):
    OPENING = "opening"
    ACTIVE = "active"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    BROKER_CANCELLED = "cancelled by the broker"
    FAILED = "failed"
    CLOSED = "closed"


@final
class AmqpConsumer(abc.Consumer):
    """A consumer of one queue on its own channel.

    Implements :class:`trioevents.abc.Consumer`. Deliveries wait in a buffer
    (the broker sends at most *prefetch_count* unsettled ones) until
    :meth:`receive` returns them.

    The ``on_*`` methods are for the connection's reader task (they implement
    ``_mux.ChannelConsumer``), not for users.
    """

    def __init__(
        self, mux: ChannelMux, channel: Channel, queue: str, prefetch: int
    ) -> None:
        self._mux = mux
        self._channel = channel
        self._queue = queue
        self._prefetch = prefetch
        self._tag = ""
        self._state = _ConsumerState.OPENING
        self._error: BaseException | None = None
        self._buffer: deque[Delivery] = deque()
        self._wakeup: trio.Event | None = None
        self._cancel_waiter: Waiter | None = None

    @property
    def consumer_tag(self) -> str:
        return self._tag

    @property
    def queue(self) -> str:
        return self._queue

    def __repr__(self) -> str:
        return (
            f"<AmqpConsumer {self._tag or '?'} of {self._queue!r} on channel "
            f"{self._channel.number} ({self._state.value})>"
        )

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def _settle_now(self, delivery_tag: int, how: Settlement, requeue: bool) -> None:
        """Queue the ack, nack or reject of *delivery_tag* and wake the writer."""
        proto = self._mux.proto
        number = self._channel.number
        if how is Settlement.ACK:
            proto.basic_ack(number, delivery_tag)
        elif how is Settlement.NACK:
            proto.basic_nack(number, delivery_tag, requeue=requeue)
        else:
            proto.basic_reject(number, delivery_tag, requeue=requeue)
        self._mux.wake_writer()

    # -- called by the connection (the reader task)

    def _on_consume_ok(self, reply: Reply) -> None:
        assert isinstance(reply, BasicConsumeOk)
        self._tag = reply.consumer_tag
        if self._state is _ConsumerState.OPENING:
            self._state = _ConsumerState.ACTIVE

    def on_delivery(self, event: Delivered) -> None:
        """Buffer a delivery, or send it straight back once cancelling."""
        state = self._state
        if state is _ConsumerState.ACTIVE:
            self._buffer.append(
                Delivery(
                    delivery_tag=event.delivery_tag,
                    redelivered=event.redelivered,
                    exchange=event.exchange,
                    routing_key=event.routing_key,
                    properties=event.properties,
                    body=event.body,
                    consumer_tag=event.consumer_tag,
                    settler=self._settle,
                    defect=None
                    if event.problem is None
                    else Defect(event.problem, body_dropped=event.body_dropped),
                )
            )
            self._wake()
        elif self._channel.open:
            # Sent before the broker saw our cancel: it goes back at once.
            self._settle_now(event.delivery_tag, Settlement.NACK, True)

    def _return_buffered(self) -> None:
        """Give the deliveries :meth:`receive` did not return back to the queue."""
        buffer, self._buffer = self._buffer, deque()
        if self._channel.open:
            for delivery in buffer:
                self._settle_now(delivery.delivery_tag, Settlement.NACK, True)

    def on_broker_cancel(self) -> None:
        """The broker cancelled the consumer: the buffer goes back."""
        if self._state in (_ConsumerState.ACTIVE, _ConsumerState.CANCELLING):
            self._state = _ConsumerState.BROKER_CANCELLED
            self._return_buffered()
            self._wake()

    def _on_cancel_ok(self, reply: Reply) -> None:
        assert isinstance(reply, BasicCancelOk)
        if self._state is _ConsumerState.CANCELLING:
            self._state = _ConsumerState.CANCELLED
        self._wake()

    def on_channel_closed(self, error: BaseException | None) -> None:
        """The channel is gone: by the broker (*error*) or by our own close."""
        self._buffer.clear()
        if error is not None and self._state is not _ConsumerState.CLOSED:
            self._state = _ConsumerState.FAILED
            self._error = error
        self._wake()

    def on_connection_closed(self, error: BaseException) -> None:
        """The connection is gone (lost or closed) with *error*."""
        self._buffer.clear()
        if self._state is not _ConsumerState.CLOSED:
            self._state = _ConsumerState.FAILED
            self._error = error
        self._wake()

    # -- the seam

    async def receive(self) -> Delivery:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._buffer:
                delivery = self._buffer.popleft()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return delivery
            state = self._state
            if state in (_ConsumerState.CANCELLING, _ConsumerState.CANCELLED):
                raise trio.EndOfChannel
            if state is _ConsumerState.BROKER_CANCELLED:
                raise ConsumerCancelled(
                    f"consumer {self._tag} was cancelled by the broker (e.g. its "
                    f"queue {self._queue!r} was deleted)"
                )
            if state is _ConsumerState.FAILED:
                assert self._error is not None
                raise fresh(self._error)
            if state is _ConsumerState.CLOSED:
                raise trio.ClosedResourceError("the consumer is closed")
            if self._wakeup is None:
                self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def cancel(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state is _ConsumerState.ACTIVE and self._channel.open:
            self._state = _ConsumerState.CANCELLING
            waiter = Waiter(on_reply=self._on_cancel_ok)
            # Cancel first, then return the buffer: the broker then cannot hand
            # the returned messages to this consumer again.
            self._mux.proto.basic_cancel(self._channel.number, self._tag)
            self._channel.waiters.append(waiter)
            self._cancel_waiter = waiter
            self._return_buffered()
            self._mux.wake_writer()
            self._wake()
        pending = self._cancel_waiter
        if self._state is _ConsumerState.CANCELLING and pending is not None:
            # If the channel goes meanwhile, nothing is consumed any more either.
            with suppress(
                trio.ClosedResourceError, ChannelClosedByBroker, ConnectionLost
            ):
                await pending.wait()
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _settle(self, delivery: Delivery, how: Settlement, requeue: bool) -> None:
        # Not a cancellation point: the frame is queued whole before we yield.
        if not self._channel.open:
            failure = self._mux.failure
            if failure is not None:
                raise fresh(failure)
            raise trio.ClosedResourceError(
                f"cannot {how.value} delivery {delivery.delivery_tag}: the channel of "
                f"consumer {self._tag} is closed and the message went back to its "
                "queue"
            )
        self._settle_now(delivery.delivery_tag, how, requeue)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- closing

    def _abandon(self) -> None:
        """Undo a consumer whose open failed or was cancelled."""
        self._state = _ConsumerState.CLOSED
        self._mux.close_channel(self._channel)

    async def _close(self) -> None:
        """Close the consumer's channel: its unsettled deliveries go back."""
        if self._state is _ConsumerState.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        self._state = _ConsumerState.CLOSED
        self._buffer.clear()
        self._wake()
        if self._mux.close_channel(self._channel):
            # Wait for Close-Ok: the broker has requeued everything by then.
            with trio.move_on_after(self._mux.close_timeout):
                await self._channel.closed.wait()
        else:
            await trio.lowlevel.checkpoint()
