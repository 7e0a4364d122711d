"""One AMQP channel: its state, and how the broker's frames on it become events.

The connection (:mod:`._protocol`) owns the channel numbers and routes the
broker's method, content header and body frames for channel *n* to
:meth:`Channel.on_method`, :meth:`~Channel.on_header` and
:meth:`~Channel.on_body`. The channel answers what AMQP makes it answer
(``Close-Ok``, ``Cancel-Ok``, ``Flow-Ok``) through the ``send`` it was given,
gives its number back through ``release`` once it is closed, and returns the
events: deliveries and returns reassembled from their frames, publisher
confirms, the replies to its requests in request order, the broker's cancels,
flow changes and closes.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, final

import attrs
from pamqp import commands, frame as pamqp_frame

from .._exceptions import LocalProtocolError
from ._events import (
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    Confirmed,
    ConsumerCancelledByBroker,
    Delivered,
    Nacked,
    Returned,
)
from ._frames import BASIC_CLASS_ID, Violation
from ._state import ChannelState, ConfirmTracker

if TYPE_CHECKING:
    from collections.abc import Callable

    from pamqp import base as pamqp_base

    from .._message import Properties
    from ._events import Event, Reply
    from ._header import ContentHeader
    from ._state import Request

__all__ = ["Channel", "Content", "Pending"]


@final
@attrs.frozen
class Pending:
    """A request on a channel waiting for its reply.

    Attributes
    ----------
    request
        The request's row in the request table.
    no_ack
        For ``Basic.Consume``: whether the consumer's deliveries need no ack.
    """

    request: Request
    no_ack: bool = False


@final
@attrs.define
class Content:
    """A content-bearing method whose header and body are still arriving."""

    method: commands.Basic.Deliver | commands.Basic.Return
    no_ack: bool
    properties: Properties | None = None
    body_size: int = 0
    received: int = 0
    chunks: list[bytes] = attrs.Factory(list)
    #: Why the properties could not be read as sent, if they could not.
    problem: str | None = None
    #: The body is larger than the channel keeps: its frames are counted only.
    dropping: bool = False


@final
@attrs.define(eq=False)
class Channel:
    """One channel that is not closed, as the connection knows it.

    Parameters
    ----------
    number
        The channel number.
    send
        Queues a frame for the broker.
    release
        Called with :attr:`number` once the channel is closed (by the broker,
        or by its ``Close-Ok``): the number is free again.
    max_body_size
        The largest body kept; larger ones are not buffered (``None``: no limit).
    """

    number: int
    send: Callable[[bytes], None]
    release: Callable[[int], object]
    max_body_size: int | None = attrs.field(default=None, kw_only=True)
    state: ChannelState = ChannelState.OPENING
    #: Requests awaiting replies, oldest first (replies come in order).
    pending: deque[Pending] = attrs.Factory(deque)
    #: Set by ``Confirm.Select``: the publish tags awaiting confirms.
    confirms: ConfirmTracker | None = None
    #: False while the broker stopped the flow (``Channel.Flow``).
    flow_active: bool = True
    #: The message being received, if any.
    content: Content | None = None
    #: Delivery tags to ack, nack or reject.
    unacked: set[int] = attrs.Factory(set)
    #: Consumers whose deliveries need no ack.
    no_ack_consumers: set[str] = attrs.Factory(set)
    #: Our own Channel.Close arguments, while CLOSING.
    close_args: tuple[int, str, int, int] = (0, "", 0, 0)
    #: Whether ChannelClosed was emitted (simultaneous close: broker's Close
    #: came while we were CLOSING, Close-Ok still to come).
    close_reported: bool = False

    # ------------------------------------------------------------------
    # What requests change

    def start_confirms(self) -> None:
        """Count publishes for confirms from now on (``Confirm.Select`` made)."""
        if self.confirms is None:
            self.confirms = ConfirmTracker()

    def consumer_started(self, consumer_tag: str, no_ack: bool) -> None:
        """Remember a consumer: its deliveries are unacked unless *no_ack*."""
        if no_ack:
            self.no_ack_consumers.add(consumer_tag)

    def consumer_ended(self, consumer_tag: str) -> None:
        """Forget a cancelled consumer."""
        self.no_ack_consumers.discard(consumer_tag)

    def start_close(self, close_args: tuple[int, str, int, int]) -> None:
        """Enter CLOSING (``Channel.Close`` queued): forget pending replies."""
        self.state = ChannelState.CLOSING
        self.close_args = close_args
        self.pending.clear()
        self.content = None

    def settle(self, delivery_tag: int, multiple: bool) -> list[int]:
        """Return the unacked tags an ack, nack or reject of *delivery_tag* settles.

        With *multiple*, every unacked tag up to *delivery_tag* (``0``: all).
        Nothing changes: the caller forgets the tags once the frame is queued.

        Raises
        ------
        LocalProtocolError
            The tag is not an unacked delivery of this channel.
        """
        unacked = self.unacked
        if multiple and delivery_tag == 0:
            return list(unacked)
        if delivery_tag not in unacked:
            raise LocalProtocolError(
                f"delivery tag {delivery_tag} is not an unacked delivery on channel {self.number}"
            )
        if multiple:
            return [tag for tag in unacked if tag <= delivery_tag]
        return [delivery_tag]

    # ------------------------------------------------------------------
    # The broker's methods

    def on_method(self, method: pamqp_base.Frame) -> Event | None:
        """Take a method frame the broker sent on this channel.

        Raises
        ------
        Violation
            The method is not one the channel can get now.
        """
        number = self.number
        if self.content is not None:
            raise Violation(
                505, f"{method.name} on channel {number} in the middle of a message"
            )
        if self.state is ChannelState.CLOSING:
            return self._on_method_while_closing(method)
        if isinstance(method, commands.Basic.Deliver):
            consumer_tag = method.consumer_tag or ""
            self.content = Content(method, consumer_tag in self.no_ack_consumers)
            return None
        if isinstance(method, commands.Basic.Ack | commands.Basic.Nack):
            return self._on_confirm(method)
        pending = self.pending
        if pending and isinstance(method, pending[0].request.reply):
            return self._on_reply(pending.popleft(), method)
        if isinstance(method, commands.Basic.Return):
            self.content = Content(method, no_ack=True)
            return None
        if isinstance(method, commands.Channel.Close):
            self.send(pamqp_frame.marshal(commands.Channel.CloseOk(), number))
            self.release(number)
            return _closed_by_broker(number, method)
        if isinstance(method, commands.Basic.Cancel):
            consumer_tag = method.consumer_tag or ""
            self.consumer_ended(consumer_tag)
            if not method.nowait:
                cancel_ok = commands.Basic.CancelOk(consumer_tag)
                self.send(pamqp_frame.marshal(cancel_ok, number))
            return ConsumerCancelledByBroker(number, consumer_tag)
        if isinstance(method, commands.Channel.Flow):
            active = bool(method.active)
            self.flow_active = active
            self.send(pamqp_frame.marshal(commands.Channel.FlowOk(active), number))
            return ChannelFlow(number, active)
        expected = pending[0].request.reply.name if pending else "nothing"
        raise Violation(
            505, f"unexpected {method.name} on channel {number} (expected {expected})"
        )

    def _on_method_while_closing(self, method: pamqp_base.Frame) -> Event | None:
        number = self.number
        if isinstance(method, commands.Channel.CloseOk):
            self.release(number)
            if self.close_reported:
                return None
            code, text, class_id, method_id = self.close_args
            return ChannelClosed(
                number, code, text, class_id, method_id, by_broker=False
            )
        if isinstance(method, commands.Channel.Close):
            # Both sides closed at once: answer, report the broker's reason,
            # and keep the number until our Close is answered too.
            self.send(pamqp_frame.marshal(commands.Channel.CloseOk(), number))
            if self.close_reported:
                return None
            self.close_reported = True
            return _closed_by_broker(number, method)
        if isinstance(method, commands.Basic.Ack | commands.Basic.Nack):
            # Confirms that made it before the close are still good news.
            return self._on_confirm(method)
        if isinstance(method, commands.Basic.Deliver | commands.Basic.Return):
            self.content = Content(method, no_ack=True)  # swallow its content
        return None

    def _on_reply(self, pending: Pending, method: Any) -> Reply:
        event = pending.request.answer(self.number, method)
        if isinstance(event, ChannelOpened):
            self.state = ChannelState.OPEN
        elif isinstance(method, commands.Basic.ConsumeOk):
            self.consumer_started(method.consumer_tag or "", pending.no_ack)
        elif isinstance(method, commands.Basic.CancelOk):
            self.consumer_ended(method.consumer_tag or "")
        return event

    def _on_confirm(
        self, method: commands.Basic.Ack | commands.Basic.Nack
    ) -> Event | None:
        confirms = self.confirms
        if confirms is None:
            raise Violation(
                505,
                f"{method.name} on channel {self.number}, which is not in confirm mode",
            )
        tag = method.delivery_tag or 0
        tags = confirms.settle(tag, bool(method.multiple))
        if tags is None:
            raise Violation(
                505,
                f"{method.name} for unknown publish tag {tag} on channel {self.number}",
            )
        if not tags:
            return None
        if isinstance(method, commands.Basic.Ack):
            return Confirmed(self.number, tags)
        return Nacked(self.number, tags)

    # ------------------------------------------------------------------
    # The broker's content

    def on_header(self, header: ContentHeader) -> Event | None:
        """Take a content header the broker sent on this channel.

        Raises
        ------
        Violation
            No method announced content, or it already got its header.
        """
        content = self.content
        if content is None:
            if self.state is ChannelState.CLOSING:
                return None
            raise Violation(
                505, f"content header on channel {self.number} without a method"
            )
        if content.properties is not None:
            raise Violation(505, f"second content header on channel {self.number}")
        if header.class_id != BASIC_CLASS_ID:
            raise Violation(505, f"content header of class {header.class_id}")
        content.properties = header.properties
        content.body_size = header.body_size
        content.problem = header.problem
        limit = self.max_body_size
        if limit is not None and header.body_size > limit:
            content.dropping = True
            content.problem = (
                f"its body of {header.body_size} bytes exceeds MAX_MESSAGE_SIZE "
                f"({limit} bytes): not read"
            )
        if header.body_size == 0:
            return self._content_done(content, b"")
        return None

    def on_body(self, data: bytes) -> Event | None:
        """Take a content body frame's payload the broker sent on this channel.

        Raises
        ------
        Violation
            No header announced the body, or the body is longer than announced.
        """
        content = self.content
        if content is None or content.properties is None:
            if self.state is ChannelState.CLOSING and content is None:
                return None
            raise Violation(
                505, f"content body on channel {self.number} without a header"
            )
        content.received += len(data)
        if content.received > content.body_size:
            raise Violation(
                501,
                f"content body on channel {self.number} longer than the announced "
                f"{content.body_size} bytes",
            )
        if content.dropping:
            return (
                None
                if content.received < content.body_size
                else (self._content_done(content, b""))
            )
        if content.received < content.body_size:
            content.chunks.append(data)
            return None
        if content.chunks:
            content.chunks.append(data)
            data = b"".join(content.chunks)
        return self._content_done(content, data)

    def _content_done(self, content: Content, body: bytes) -> Event | None:
        self.content = None
        if self.state is ChannelState.CLOSING:
            return None
        method = content.method
        properties = content.properties
        assert properties is not None
        if isinstance(method, commands.Basic.Deliver):
            delivery_tag = method.delivery_tag or 0
            if not content.no_ack:
                self.unacked.add(delivery_tag)
            return Delivered(
                self.number,
                method.consumer_tag or "",
                delivery_tag,
                bool(method.redelivered),
                method.exchange or "",
                method.routing_key or "",
                properties,
                body,
                problem=content.problem,
                body_dropped=content.dropping,
            )
        return Returned(
            self.number,
            method.reply_code or 0,
            method.reply_text or "",
            method.exchange or "",
            method.routing_key or "",
            properties,
            body,
        )


def _closed_by_broker(channel: int, method: commands.Channel.Close) -> ChannelClosed:
    return ChannelClosed(
        channel,
        method.reply_code or 0,
        method.reply_text or "",
        method.class_id or 0,
        method.method_id or 0,
        by_broker=True,
    )
