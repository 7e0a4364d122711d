"""Keeping a broker connection: connect, serve on it, reconnect after a loss.

The reconnect policy lives here, next to the connecting it governs: capped
exponential backoff with jitter (``RECONNECT_DELAY`` doubled per failure, up to
``RECONNECT_MAX_DELAY``), and ``CONNECT_ATTEMPTS`` tries before a keeper that was
never ready gives up with :class:`~trioevents.BrokerUnavailable`, or none when
the broker refused the login or the virtual host
(:class:`~trioevents.AccessRefusedByBroker`: only the configuration can fix
that). Once ready, a lost connection is retried for ever. The host's :meth:`serve
<trioevents.ServiceHost.serve>` and :meth:`ServiceHost.dispatcher
<trioevents.ServiceHost.dispatcher>` both keep their connection with a
:class:`ConnectionKeeper`.

Which node to try when ``AMQP_URI`` names several is :class:`Failover`'s
decision (``FAILOVER_STRATEGY``): the AMQP transport asks it for the order of
each round, and tells it which node a connection was made to and which one it
lost. A round tries every node once, one after the other; the keeper's backoff
runs between rounds, so a dead node costs no delay while another answers
(kombu's rule), and ``CONNECT_ATTEMPTS`` counts rounds.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final, Protocol, final, runtime_checkable

import trio

from ._config import FAILOVER_STRATEGIES
from ._exceptions import (
    AccessRefusedByBroker,
    BrokerUnavailable,
    ConfigurationError,
    ConnectionLost,
    RemoteProtocolError,
)
from ._groups import leaves
from ._uri import masked_uri

if TYPE_CHECKING:
    import logging
    from collections.abc import Awaitable, Callable

    from . import abc
    from ._config import Config, FailoverStrategy

__all__ = ["LOST", "ConnectionKeeper", "Failover", "connection_failure"]

#: What a dead connection raises. A broker that broke the protocol closed the
#: connection too: we connect again rather than give up.
LOST: Final = (
    ConnectionLost,
    RemoteProtocolError,
    trio.ClosedResourceError,
    trio.BrokenResourceError,
)


def connection_failure(exc: BaseException) -> BaseException | None:
    """Return the cause if *exc* means the connection failed, else ``None``.

    A group counts if every exception in it is a connection failure.
    """
    found = leaves(exc)
    if found and all(isinstance(e, (*LOST, BrokerUnavailable)) for e in found):
        return found[0]
    return None


@final
class Failover:
    """Which of several broker addresses to try next (``FAILOVER_STRATEGY``).

    Each round tries every address once, in the order :meth:`order` gives:

    ``round-robin`` (kombu's default)
        From the address of the last connection made (the first address to
        begin with), wrapping around: a client keeps to a node that works and
        connects to the first address that answers. Once a connection to a
        node failed, rounds start with the address after it, so the failed
        node is tried last.
    ``shuffle``
        A random order each round, which spreads clients over the nodes; a
        node whose connection just failed is tried last.

    Parameters
    ----------
    count
        How many addresses there are.
    strategy
        ``"round-robin"`` or ``"shuffle"``.
    rng
        The random numbers of ``shuffle`` (tests pass a seeded one).

    Raises
    ------
    ConfigurationError
        An unknown *strategy*.
    """

    def __init__(
        self,
        count: int,
        strategy: FailoverStrategy = "round-robin",
        *,
        rng: random.Random | None = None,
    ) -> None:
        if strategy not in FAILOVER_STRATEGIES:
            known = " or ".join(repr(name) for name in FAILOVER_STRATEGIES)
            raise ConfigurationError(
                f"FAILOVER_STRATEGY must be {known}, not {strategy!r}"
            )
        if count < 1:
            raise ValueError(f"no address to fail over between (count={count})")
        self._count = count
        self._strategy = strategy
        self._rng = rng if rng is not None else random.Random()
        self._start = 0
        self._failed: int | None = None

    @property
    def strategy(self) -> FailoverStrategy:
        """``"round-robin"`` or ``"shuffle"``."""
        return self._strategy

    def order(self) -> list[int]:
        """Return the indexes of the addresses to try in the next round."""
        count = self._count
        if self._strategy == "round-robin":
            return [(self._start + step) % count for step in range(count)]
        order = self._rng.sample(range(count), count)
        if self._failed is not None:
            order.remove(self._failed)
            order.append(self._failed)
        return order

    def connected(self, index: int) -> None:
        """A connection to address *index* was made: start there next time."""
        self._start = index
        self._failed = None

    def failed(self, index: int) -> None:
        """A connection to address *index* was lost: try it last next time."""
        self._failed = index
        if self._start == index:
            self._start = (index + 1) % self._count


@runtime_checkable
class _NamesItsPeer(Protocol):
    """A connection that says which node it is to (password masked)."""

    @property
    def peer(self) -> str: ...


def node_of(connection: object, default: str) -> str:
    """Return the node *connection* is to, fit for logs; *default* if it won't say."""
    return connection.peer if isinstance(connection, _NamesItsPeer) else default


@final
class ConnectionKeeper:
    """Connect to a transport and keep a connection up, for one serve or dispatcher.

    Parameters
    ----------
    transport
        The broker to connect to.
    config
        ``CONNECT_ATTEMPTS``, ``RECONNECT_DELAY``, ``RECONNECT_MAX_DELAY`` and
        ``AMQP_URI`` (for the logs, password masked).
    logger
        Where connecting, losses and reconnect delays are logged.
    on_failure
        Called with the cause of each failed or lost connection.
    """

    def __init__(
        self,
        transport: abc.Transport,
        config: Config,
        *,
        logger: logging.Logger,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._transport = transport
        self._config = config
        self._logger = logger
        self._on_failure = on_failure
        self._uri = masked_uri(config.amqp_uri)
        self._ready = False
        self._ready_on_this_connection = False

    def _about(
        self, cause: BaseException, what: str, node: str, *, alone: str = ""
    ) -> str:
        """Say ``"{what} {node}: {cause}"``, naming the node (or the URI) once.

        The transport's errors may name the broker's address already (the AMQP
        transport's do): then it is ``"{alone}{cause}"``.
        """
        text = str(cause)
        if node in text or self._uri in text:
            return f"{alone}{text}"
        return f"{what} {node}: {text}"

    @property
    def ever_ready(self) -> bool:
        """Whether :meth:`ready` was called on some connection."""
        return self._ready

    def ready(self) -> None:
        """Say that serving on the current connection is under way.

        Until the first call, :meth:`run` gives up after ``CONNECT_ATTEMPTS``
        failures; each call resets the count of failures in a row.
        """
        self._ready = self._ready_on_this_connection = True

    async def run(
        self,
        serve: Callable[[abc.Connection], Awaitable[None]],
        *,
        stop: trio.Event | None = None,
    ) -> None:
        """Call ``serve(connection)`` on each new connection until it returns.

        A connection failure (of the connect or of *serve*) leads to a new
        connection after a delay; any other exception propagates. Returns when
        *serve* returns, or when *stop* is set while no connection is up.

        Raises
        ------
        AccessRefusedByBroker
            The broker refused the login or the virtual host before
            :meth:`ready` was ever called (not retried).
        BrokerUnavailable
            ``CONNECT_ATTEMPTS`` failures in a row before :meth:`ready` was
            ever called.
        """
        config = self._config
        failures = 0
        while True:
            connected = False
            node = self._uri
            self._ready_on_this_connection = False
            try:
                async with self._transport.open_connection() as connection:
                    connected = True
                    node = node_of(connection, self._uri)
                    self._logger.info("connected to %s", node)
                    await serve(connection)
                return
            except BaseException as exc:
                cause = connection_failure(exc)
                if cause is None:
                    raise
            if self._on_failure is not None:
                self._on_failure(cause)
            if stop is not None and stop.is_set():
                self._logger.warning("connection lost while stopping: %s", cause)
                return
            if not self._ready and isinstance(cause, AccessRefusedByBroker):
                raise cause  # only a change of the configuration can fix it
            failures = 1 if self._ready_on_this_connection else failures + 1
            if not self._ready and failures >= config.connect_attempts:
                raise BrokerUnavailable(
                    f"{self._about(cause, 'could not connect to', node)} "
                    f"(gave up after {failures} attempts)"
                ) from cause
            delay = min(
                config.reconnect_delay * 2 ** (failures - 1),
                config.reconnect_max_delay,
            ) * random.uniform(0.5, 1.0)
            self._logger.warning(
                "%s; reconnecting in %.1f s (attempt %d)",
                self._about(
                    cause, "connection lost to", node, alone="connection lost: "
                )
                if connected
                else self._about(cause, "cannot connect to", node),
                delay,
                failures + 1,
            )
            if stop is None:
                await trio.sleep(delay)
                continue
            with trio.move_on_after(delay):
                await stop.wait()
            if stop.is_set():
                return
