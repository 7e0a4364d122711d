"""The synchronous channel requests, one thin typed method a row of the request table.

Each row of the table in :mod:`._state` (:class:`~._state.Request`) says what a
request sends, what answers it, the event the answer becomes, the channel
states it may be made in and how it takes ``nowait``. The methods here only
give each row its typed signature: they pass their arguments as the method's
fields to :meth:`ChannelRequests._request`, the one path every request takes
(check the states, encode, queue, expect the reply), which
:class:`~._protocol.Connection` implements. This is the shape of redis-py's
command mixins over ``execute_command``.

A few requests change the channel once queued (a ``nowait`` consumer, confirm
mode); those lines follow their ``_request`` call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._message import ExchangeType
from ._state import (
    BASIC_CANCEL,
    BASIC_CONSUME,
    BASIC_QOS,
    CONFIRM_SELECT,
    EXCHANGE_DECLARE,
    EXCHANGE_DELETE,
    QUEUE_BIND,
    QUEUE_DECLARE,
    QUEUE_DELETE,
    QUEUE_PURGE,
    QUEUE_UNBIND,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._channel import Channel
    from ._state import Request

__all__ = ["ChannelRequests"]


class ChannelRequests:
    """The requests of the request table, as methods of the connection."""

    __slots__ = ()

    def _request(self, channel: int, request: Request, /, **fields: Any) -> Channel:
        """Check, encode and queue *request* on *channel*; expect its reply.

        *fields* are the request method's fields (``arguments`` as given).

        Returns
        -------
        Channel
            The channel, for what the request changes on it.

        Raises
        ------
        LocalProtocolError
            The connection is not open, or the channel not in a state the
            request may be made in; or the frame is larger than ``frame_max``.
        InvalidRequest
            A field cannot be encoded, or ``nowait`` would leave a name the
            broker chose unknown.
        """
        raise NotImplementedError

    def confirm_select(self, channel: int, *, nowait: bool = False) -> None:
        """Put *channel* in confirm mode (``Confirm.Select``).

        From this request on, every ``basic_publish()`` on the channel gets a
        tag (1, 2, ...) and is confirmed by a :class:`~._events.Confirmed` or
        :class:`~._events.Nacked`. Answered by :class:`~._events.ConfirmSelectOk`
        unless *nowait*.
        """
        self._request(channel, CONFIRM_SELECT, nowait=nowait).start_confirms()

    # ------------------------------------------------------------------
    # Exchanges and queues

    def exchange_declare(
        self,
        channel: int,
        exchange: str,
        exchange_type: str | ExchangeType = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare an exchange. Answered by :class:`~._events.ExchangeDeclareOk` unless *nowait*."""
        if isinstance(exchange_type, ExchangeType):
            exchange_type = exchange_type.value
        self._request(
            channel,
            EXCHANGE_DECLARE,
            exchange=exchange,
            exchange_type=exchange_type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            nowait=nowait,
            arguments=arguments,
        )

    def exchange_delete(
        self,
        channel: int,
        exchange: str,
        *,
        if_unused: bool = False,
        nowait: bool = False,
    ) -> None:
        """Delete an exchange. Answered by :class:`~._events.ExchangeDeleteOk` unless *nowait*."""
        self._request(
            channel,
            EXCHANGE_DELETE,
            exchange=exchange,
            if_unused=if_unused,
            nowait=nowait,
        )

    def queue_declare(
        self,
        channel: int,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare a queue; ``""`` lets the broker name it.

        Answered by :class:`~._events.QueueDeclareOk` (with the name) unless
        *nowait*.

        Raises
        ------
        InvalidRequest
            *nowait* for a server-named queue: its name would never be known.
        """
        self._request(
            channel,
            QUEUE_DECLARE,
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            nowait=nowait,
            arguments=arguments,
        )

    def queue_bind(
        self,
        channel: int,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Bind *queue* to *exchange*. Answered by :class:`~._events.QueueBindOk` unless *nowait*."""
        self._request(
            channel,
            QUEUE_BIND,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            nowait=nowait,
            arguments=arguments,
        )

    def queue_unbind(
        self,
        channel: int,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Unbind *queue* from *exchange*. Answered by :class:`~._events.QueueUnbindOk`."""
        self._request(
            channel,
            QUEUE_UNBIND,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=arguments,
        )

    def queue_purge(self, channel: int, queue: str, *, nowait: bool = False) -> None:
        """Purge *queue*. Answered by :class:`~._events.QueuePurgeOk` unless *nowait*."""
        self._request(channel, QUEUE_PURGE, queue=queue, nowait=nowait)

    def queue_delete(
        self,
        channel: int,
        queue: str,
        *,
        if_unused: bool = False,
        if_empty: bool = False,
        nowait: bool = False,
    ) -> None:
        """Delete *queue*. Answered by :class:`~._events.QueueDeleteOk` unless *nowait*."""
        self._request(
            channel,
            QUEUE_DELETE,
            queue=queue,
            if_unused=if_unused,
            if_empty=if_empty,
            nowait=nowait,
        )

    # ------------------------------------------------------------------
    # Consumers

    def basic_qos(
        self,
        channel: int,
        *,
        prefetch_count: int = 0,
        prefetch_size: int = 0,
        global_: bool = False,
    ) -> None:
        """Limit unacked deliveries. Answered by :class:`~._events.BasicQosOk`."""
        self._request(
            channel,
            BASIC_QOS,
            prefetch_count=prefetch_count,
            prefetch_size=prefetch_size,
            global_=global_,
        )

    def basic_consume(
        self,
        channel: int,
        queue: str,
        consumer_tag: str = "",
        *,
        no_local: bool = False,
        no_ack: bool = False,
        exclusive: bool = False,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Start a consumer on *queue*; ``""`` lets the broker pick the tag.

        Answered by :class:`~._events.BasicConsumeOk` unless *nowait*; then
        :class:`~._events.Delivered` events follow.

        Raises
        ------
        InvalidRequest
            *nowait* without a *consumer_tag*: the tag would never be known.
        """
        ch = self._request(
            channel,
            BASIC_CONSUME,
            queue=queue,
            consumer_tag=consumer_tag,
            no_local=no_local,
            no_ack=no_ack,
            exclusive=exclusive,
            nowait=nowait,
            arguments=arguments,
        )
        if nowait:
            ch.consumer_started(consumer_tag, no_ack)

    def basic_cancel(
        self, channel: int, consumer_tag: str, *, nowait: bool = False
    ) -> None:
        """Cancel a consumer. Answered by :class:`~._events.BasicCancelOk` unless *nowait*.

        Deliveries already on their way may still arrive before the answer.
        """
        ch = self._request(
            channel, BASIC_CANCEL, consumer_tag=consumer_tag, nowait=nowait
        )
        if nowait:
            ch.consumer_ended(consumer_tag)
