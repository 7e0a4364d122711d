"""A consumer of the embedded broker: deliveries held until they are settled.

A queue hands messages to its consumers synchronously (:meth:`MemoryConsumer.deliver`,
within its prefetch); :meth:`MemoryConsumer.receive` returns them in order and
waits through :meth:`Broker.wait <._model.Broker.wait>`, which also expires
messages when their TTL is due.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING, final

import attrs
import trio

from .. import abc
from .._exceptions import ConsumerCancelled
from .._fieldtable import copy_table
from .._message import Delivery, Settlement

if TYPE_CHECKING:
    from ._model import Broker, Message, Queue

__all__ = ["MemoryConsumer"]


@final
class MemoryConsumer(abc.Consumer):
    """A consumer of one queue of the embedded broker.

    It is the queue's :class:`~._model.Subscriber`. The connection that opens it
    tracks it and calls :meth:`close` when either of them closes.

    Parameters
    ----------
    broker
        The broker of *queue*: its clock (:meth:`~._model.Broker.now`,
        :meth:`~._model.Broker.tick`, :meth:`~._model.Broker.wait`) and
        dead-lettering of rejected messages.
    queue
        The queue consumed.
    tag
        The consumer tag.
    prefetch
        The most unsettled deliveries held (``0``: no limit).
    exclusive
        Whether it asked to be the queue's only consumer.
    """

    def __init__(
        self,
        broker: Broker,
        queue: Queue,
        tag: str,
        prefetch: int,
        exclusive: bool,
    ) -> None:
        self._broker = broker
        self._queue_obj = queue
        self._tag = tag
        self._prefetch = prefetch
        self.exclusive = exclusive
        self._tags = itertools.count(1)
        #: Deliveries not settled yet, by tag (given to receive() or still buffered).
        self._unsettled: dict[int, tuple[Queue, Message]] = {}
        self._buffer: deque[Delivery] = deque()
        #: Receivers waiting for a delivery: one is woken per delivery.
        self._waiting = trio.lowlevel.ParkingLot()
        self._state = "active"  # active | cancelled | broker-cancelled | closed

    @property
    def consumer_tag(self) -> str:
        return self._tag

    @property
    def queue(self) -> str:
        return self._queue_obj.name

    def __repr__(self) -> str:
        return f"<MemoryConsumer {self._tag} of {self.queue!r} ({self._state})>"

    # -- called by the queue

    def has_room(self) -> bool:
        return self._prefetch == 0 or len(self._unsettled) < self._prefetch

    def deliver(self, queue: Queue, msg: Message) -> None:
        tag = next(self._tags)
        self._unsettled[tag] = (queue, msg)
        props = msg.properties
        if props.headers or msg.delivery_count:
            headers = copy_table(props.headers) if props.headers else {}
            if msg.delivery_count:  # a quorum queue's count of earlier returns
                headers["x-delivery-count"] = msg.delivery_count
            props = attrs.evolve(props, headers=headers)
        self._buffer.append(
            Delivery(
                delivery_tag=tag,
                redelivered=msg.redelivered,
                exchange=msg.exchange,
                routing_key=msg.routing_key,
                properties=props,
                body=msg.body,
                consumer_tag=self._tag,
                settler=self._settle,
            )
        )
        self._waiting.unpark(count=1)

    def cancelled_by_broker(self) -> None:
        if self._state == "active":
            self._state = "broker-cancelled"
            self._broker.now()
            self._return_buffered()
            self._wake()

    def _wake(self) -> None:
        """Wake every receiver: the consumer's state changed."""
        self._waiting.unpark_all()

    # -- the seam

    async def receive(self) -> Delivery:
        # A buffered delivery is returned without a trip through the scheduler
        # (only a cancellation is checked for): its worker acks it, and an ack
        # yields, so a worker still lets others run once per delivery.
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._state == "cancelled":
                raise trio.EndOfChannel
            if self._state == "broker-cancelled":
                raise ConsumerCancelled(
                    f"consumer {self._tag} was cancelled by the broker: queue "
                    f"{self.queue!r} was deleted"
                )
            if self._state == "closed":
                raise trio.ClosedResourceError("the consumer is closed")
            await self._broker.park(self._waiting)

    async def cancel(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state == "active":
            self._state = "cancelled"
            now = self._broker.tick()
            queue = self._queue_obj
            queue.remove_consumer(self, now)
            self._return_buffered()
            queue.dispatch()
            self._wake()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _return_buffered(self) -> None:
        touched: set[Queue] = set()
        while self._buffer:
            delivery = self._buffer.pop()
            queue, msg = self._unsettled.pop(delivery.delivery_tag)
            queue.requeue(msg)
            touched.add(queue)
        for queue in touched:
            queue.dispatch()

    def close(self) -> None:
        """Close the consumer at once; its unsettled deliveries go back to the queue.

        Closing twice does nothing. :meth:`receive` raises
        :class:`trio.ClosedResourceError` afterwards, and so does settling a
        delivery that went back.
        """
        if self._state == "closed":
            return
        now = self._broker.now()
        self._buffer.clear()
        unsettled, self._unsettled = self._unsettled, {}
        queue = self._queue_obj
        was_active = self._state == "active"
        self._state = "closed"
        for q, msg in unsettled.values():
            q.requeue(msg)
        if was_active:
            queue.remove_consumer(self, now)
        queue.dispatch()
        self._wake()

    async def _settle(self, delivery: Delivery, how: Settlement, requeue: bool) -> None:
        # Not a cancellation point: settle, then only yield (see Delivery).
        entry = self._unsettled.pop(delivery.delivery_tag, None)
        if entry is None:
            raise trio.ClosedResourceError(
                f"cannot {how.value} delivery {delivery.delivery_tag}: its consumer "
                f"{self._tag} is closed and the message went back to its queue"
            )
        queue, msg = entry
        if how is not Settlement.ACK:
            if requeue:
                queue.requeue(msg)
            else:
                self._broker.dead_letter(queue, msg, "rejected")
        queue.dispatch()
        await trio.lowlevel.cancel_shielded_checkpoint()
