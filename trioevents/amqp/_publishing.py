"""The publish bookkeeping of one connection: confirms, returns, re-sends.

:class:`Publishing` owns the connection's publish channel (in confirm mode) and
the publishes in flight on it. It is synchronous: the connection's
:meth:`~._connection.AmqpConnection.publish` queues a :class:`Publish` whole
with :meth:`Publishing.issue` and waits for its event; the reader task hands it
confirms, nacks, returns and the close of the publish channel.

When the broker refuses a publish it closes the channel, and with it every
publish in flight there goes unconfirmed. Only the refused one (the *culprit*)
fails; the others are sent again on a new channel (at least once: one the broker
had routed before the close arrives twice)::

    PIPELINING ──close, culprit named in the reply──> fail it, re-send the others
        │                                                        (PIPELINING)
        └──close, culprit not named──> TRIAL: the in-flight publishes are sent
                                       again one at a time, each after the
                                       previous one's confirm; new ones wait

    TRIAL ──confirm of the last one──> send the waiting ones (PIPELINING)
    TRIAL ──close──> the publish on trial was the culprit: fail it, go on
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING, Final, final

import attrs
import trio

from .._exceptions import InvalidRequest, LocalProtocolError, PublishNotConfirmed
from ._events import Nacked
from ._mux import Role, Waiter, fresh

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._exceptions import ChannelClosedByBroker
    from .._message import Properties
    from ._events import ChannelClosed, Confirmed, Returned
    from ._mux import Channel, ChannelMux

__all__ = ["Publish", "Publishing"]

#: Basic.Publish's (class id, method id): a channel error caused by a publish.
_BASIC_PUBLISH: Final = (60, 40)
#: How RabbitMQ names the refused publish in its reply text: a pattern whose
#: group is a value of the publish, and which value of a :class:`Publish` that is.
_NAMED_IN_REPLY: Final[
    tuple[tuple[re.Pattern[str], Callable[[Publish], object]], ...]
] = (
    # 404 "no exchange 'x' in vhost 'v'", 403 "cannot publish to internal
    # exchange 'x' in vhost 'v'"
    (
        re.compile(r"exchange '((?:[^']|'(?! in vhost))*)' in vhost"),
        lambda pub: pub.exchange,
    ),
    # 406 "user_id property set to 'x' but authenticated user was 'y'"
    (
        re.compile(r"user_id property set to '((?:[^']|'(?! but auth))*)' but auth"),
        lambda pub: pub.properties.user_id,
    ),
)


@attrs.define(eq=False)
class Publish:
    """A published message waiting for its confirm."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    mandatory: bool
    event: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None
    returned: str | None = None
    abandoned: bool = False

    def done(self, error: BaseException | None = None) -> None:
        if self.event.is_set():
            return
        self.error = error
        self.event.set()

    def describe(self) -> str:
        return (
            f"message to exchange {self.exchange!r} with routing key "
            f"{self.routing_key!r}"
        )


@final
class Publishing:
    """The publish channel of a connection and the publishes in flight on it.

    The channel is opened (in confirm mode) by the first publish and again by
    the first one after the broker closed it, or after a nack left it idle
    (see :meth:`on_confirm`).

    Parameters
    ----------
    mux
        The connection's channels: where the publish channel is opened and its
        frames queued.
    """

    def __init__(self, mux: ChannelMux) -> None:
        self._mux = mux
        self._proto = mux.proto
        #: The publish channel, or ``None`` until the next publish opens one.
        self.channel: Channel | None = None
        #: The current channel's unconfirmed publishes by confirm tag.
        self._publishes: dict[int, Publish] = {}
        #: The tag of the last publish matched to a Basic.Return.
        self._last_returned = 0
        #: Returns not matched yet, as (reason, candidate tags).
        self._returns: deque[tuple[str, list[int]]] = deque()
        #: The publish sent alone to find out whether the broker refuses it
        #: (TRIAL), or ``None`` (PIPELINING, or a trial between two publishes).
        self._trial: Publish | None = None
        #: Publishes in doubt, to send one at a time after the trial (never
        #: any without a trial).
        self._suspects: deque[Publish] = deque()
        #: Publishes issued during a trial: sent once every suspect is cleared.
        self._held: deque[Publish] = deque()
        #: Set while the broker takes publishes (see :meth:`update_blocked`).
        self.unblocked = trio.Event()
        self.unblocked.set()

    def update_blocked(self) -> None:
        """Hold publishes while the broker blocks them.

        It does with ``Connection.Blocked`` (e.g. low on memory or disk) or with
        ``Channel.Flow`` on the publish channel; :attr:`unblocked` is cleared
        until both are over.
        """
        publisher = self.channel
        blocked = self._proto.blocked is not None or (
            publisher is not None and not publisher.flow_active
        )
        if blocked and self.unblocked.is_set():
            self.unblocked = trio.Event()
        elif not blocked:
            self.unblocked.set()

    def issue(self, pub: Publish) -> None:
        """Queue *pub* on the publish channel (opened in confirm mode if needed).

        One synchronous step: the whole message and its confirm tag, or nothing.
        The caller wakes the writer. During a trial (see the module doc) *pub*
        waits until the publishes in doubt are cleared.

        Raises
        ------
        InvalidRequest
            The message cannot be framed (e.g. properties larger than a frame).
        """
        if self._trial is not None:
            self._held.append(pub)
            return
        self._send(pub)

    def _send(self, pub: Publish) -> None:
        ch = self.channel
        if ch is None:
            ch = self._mux.open_channel(Role.PUBLISH)
            self._proto.confirm_select(ch.number)
            ch.waiters.append(Waiter(abandoned=True))  # Confirm.Select-Ok
            self.channel = ch
        try:
            tag = self._proto.basic_publish(
                ch.number,
                pub.exchange,
                pub.routing_key,
                pub.body,
                pub.properties,
                mandatory=pub.mandatory,
            )
        except LocalProtocolError as exc:  # e.g. properties larger than a frame
            raise InvalidRequest(str(exc)) from exc
        assert tag is not None
        self._publishes[tag] = pub

    def _resend(self, pub: Publish) -> bool:
        """Send *pub* again on the current channel; return whether it was sent.

        An abandoned publish (its caller stopped waiting) is not sent again.
        """
        if pub.abandoned:
            pub.done(trio.ClosedResourceError("the publish was abandoned"))
            return False
        pub.returned = None
        try:
            self._send(pub)
        except Exception as exc:
            pub.done(exc)
            return False
        return True

    def _forget_channel(self) -> list[tuple[int, Publish]]:
        """Drop the publish channel; return its publishes in tag order."""
        pending = sorted(self._publishes.items())
        self.channel = None
        self._publishes = {}
        self._last_returned = 0
        self._returns.clear()
        return pending

    def fail_all(self, error: BaseException) -> None:
        """Fail every publish in flight or waiting with *error*: the connection is gone.

        Publishers held by a block are let go too (to find the connection gone).
        """
        self.unblocked.set()
        waiting = [*self._suspects, *self._held]
        self._trial = None
        self._suspects.clear()
        self._held.clear()
        for _, pub in self._forget_channel():
            pub.done(error)
        for pub in waiting:
            pub.done(error)

    def on_channel_closed(
        self, event: ChannelClosed, error: ChannelClosedByBroker
    ) -> None:
        """Settle the publishes of the publish channel the broker closed.

        The broker handles publishes in order: it routed those before the one
        it refused, though it will never confirm them now, and discarded those
        after it. The refused one fails with *error*; the others are sent again
        on a new channel. The refused one is the publish on trial if there is
        one, else the first whose exchange or ``user_id`` the reply names; if
        the reply names none, the publishes in flight are tried one at a time
        (see the module doc).
        """
        pending = [pub for _, pub in self._forget_channel()]
        trial = self._trial
        self._trial = None
        culprit = trial if trial is not None else _culprit(event, pending)
        if culprit is not None:
            culprit.done(fresh(error))
            if trial is None:
                for pub in pending:
                    if pub is not culprit:
                        self._resend(pub)
        else:
            self._suspects.extend(pending)
        self._next_trial()

    def _next_trial(self) -> None:
        """Send the next publish in doubt alone; with none left, the held ones."""
        suspects = self._suspects
        while suspects:
            pub = suspects.popleft()
            if self._resend(pub):
                self._trial = pub
                break
        else:
            held, self._held = self._held, deque()
            for pub in held:
                self._resend(pub)
        if self._proto.pending_output:
            self._mux.wake_writer()

    def on_confirm(self, event: Confirmed | Nacked) -> None:
        """Release the publishes an ack or a nack of the broker names."""
        ch = self.channel
        if ch is None or ch.number != event.channel:
            return  # not a publish channel, or one the broker closed
        if self._returns:
            self._match_returns(event.delivery_tags)
        publishes = self._publishes
        nacked = isinstance(event, Nacked)
        for tag in event.delivery_tags:
            pub = publishes.pop(tag, None)
            if pub is None:
                continue
            if pub.returned is not None:
                pub.done(
                    PublishNotConfirmed(
                        f"{pub.describe()} was returned: {pub.returned}"
                    )
                )
            elif nacked:
                pub.done(
                    PublishNotConfirmed(
                        f"{pub.describe()} was nacked by the broker (e.g. a full "
                        "queue with x-overflow=reject-publish)"
                    )
                )
            else:
                pub.done()
        trial = self._trial
        if trial is not None and trial.event.is_set():
            # The broker took the publish on trial (a nack too): it is cleared.
            self._trial = None
            self._next_trial()
        if nacked and not publishes and self._trial is None:
            # A nack may stick to the channel: RabbitMQ 3.10 nacks every publish
            # of a channel that first published to a quorum queue while the
            # queue's record still named a leader whose node had just died
            # (rabbitmq-server#9241). Once nothing is in flight on it, close it:
            # the next publish opens a new channel, which looks the leader up
            # again.
            self._mux.close_channel(ch)
            self._forget_channel()

    def on_return(self, event: Returned) -> None:
        """Note which publishes a ``Basic.Return`` may be about.

        AMQP does not say which publish came back. The candidates are the
        unconfirmed mandatory publishes with the same exchange, routing key and
        body, after the last returned one (the broker returns in publish order).
        The broker confirms a returned message right after the return, so the
        next confirm that names a candidate tells which one it was.
        """
        ch = self.channel
        if ch is None or ch.number != event.channel:
            return
        candidates = [
            tag
            for tag, pub in sorted(self._publishes.items())
            if tag > self._last_returned
            and pub.mandatory
            and pub.returned is None
            and pub.exchange == event.exchange
            and pub.routing_key == event.routing_key
            and pub.body == event.body
        ]
        if candidates:
            self._returns.append((f"{event.reply_code} {event.reply_text}", candidates))

    def _match_returns(self, tags: tuple[int, ...]) -> None:
        """Resolve pending returns with the tags of a confirm, in return order."""
        confirmed = set(tags)
        returns = self._returns
        while returns:
            reason, candidates = returns[0]
            chosen = next(
                (t for t in candidates if t in confirmed and t > self._last_returned),
                None,
            )
            if chosen is None:
                if any(
                    t in self._publishes
                    and t not in confirmed
                    and t > self._last_returned
                    for t in candidates
                ):
                    return  # its confirm is still to come
                returns.popleft()  # no candidate left: nothing to mark
                continue
            returns.popleft()
            self._publishes[chosen].returned = reason
            self._last_returned = chosen


def _culprit(event: ChannelClosed, pending: list[Publish]) -> Publish | None:
    """Find the publish the broker refused in *pending* (in publish order).

    It is the first whose value the reply text names (see ``_NAMED_IN_REPLY``),
    or ``None`` if the close was not caused by a publish or names nothing.
    """
    if (event.class_id, event.method_id) != _BASIC_PUBLISH:
        return None
    for pattern, value_of in _NAMED_IN_REPLY:
        match = pattern.search(event.reply_text)
        if match is not None:
            named = match.group(1)
            return next((pub for pub in pending if value_of(pub) == named), None)
    return None
