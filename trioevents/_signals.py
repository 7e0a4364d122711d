"""Serve a host until SIGTERM or Ctrl-C: the first stops gracefully, a second at once.

``trio.run(host.serve)`` serves until cancelled: Ctrl-C then arrives as a
:class:`KeyboardInterrupt` that cancels everything at once. A service that
embeds a host runs :func:`serve_until_signalled` instead, as ``trioevents run``
does::

    trio.run(serve_until_signalled, host)
"""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Final

import trio

from ._groups import unwrap_lone_exception

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._host import ServiceHost

__all__ = [
    "EXIT_OK",
    "EXIT_STOPPED_AT_ONCE",
    "held_signals",
    "serve_held_until_signalled",
    "serve_until_signalled",
]

logger = logging.getLogger("trioevents.host")

#: A clean stop: graceful, or before anything was served.
EXIT_OK: Final = 0
#: Stopped at once by a second signal (128 + SIGINT, as a shell reports Ctrl-C).
EXIT_STOPPED_AT_ONCE: Final = 130

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def _signal_name(signum: int) -> str:
    if signum == signal.SIGINT:
        return "Ctrl-C (SIGINT)"
    return signal.Signals(signum).name


async def serve_until_signalled(host: ServiceHost) -> int:
    """Serve *host* until SIGTERM or Ctrl-C (SIGINT); return an exit status.

    The first signal stops gracefully (:meth:`ServiceHost.stop`): consumers are
    cancelled, in-flight handlers finish within ``SHUTDOWN_GRACE`` and are
    acked, and the status is 0. A second signal stops at once: unfinished
    handlers are cancelled and their messages return to the queue, never acked;
    the status is 130. A signal that arrives before the host serves stops it
    before it starts, with status 0. Each step is logged (logger
    ``trioevents.host``).

    Run it with :func:`trio.run` in the main thread (signal handlers can only be
    installed there), typically as a program's last line::

        sys.exit(trio.run(serve_until_signalled, host))

    Parameters
    ----------
    host
        The host to serve; it must not be serving yet.

    Raises
    ------
    TrioEventsError
        What :meth:`ServiceHost.serve` raises (a bad config, a broker that cannot
        be reached, ...), as it is, not in an exception group.
    """
    return await serve_held_until_signalled(host, held=())


async def serve_held_until_signalled(host: ServiceHost, *, held: Sequence[int]) -> int:
    """:func:`serve_until_signalled`, after signals :func:`held_signals` held.

    If one arrived before trio's receiver took over (while the services were
    imported), the host is not started.
    """
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        if held:
            _stopping_before_serving(held[0])
            return EXIT_OK
        stopped_at_once = False
        with unwrap_lone_exception():
            async with trio.open_nursery() as nursery:
                serving = False

                async def serve(*, task_status: trio.TaskStatus[None]) -> None:
                    await host.serve(task_status=task_status)
                    nursery.cancel_scope.cancel()

                async def watch_signals() -> None:
                    nonlocal stopped_at_once
                    stopping = False
                    async for signum in signals:
                        if not serving:
                            _stopping_before_serving(signum)
                            nursery.cancel_scope.cancel()
                            return
                        if not stopping:
                            stopping = True
                            again = (
                                " (Ctrl-C again stops at once)"
                                if signum == signal.SIGINT
                                else ""
                            )
                            logger.info(
                                "%s: stopping gracefully%s", _signal_name(signum), again
                            )
                            nursery.start_soon(host.stop)
                            continue
                        logger.warning(
                            "%s: stopping at once; unfinished handlers are cancelled "
                            "and their messages return to the queue",
                            _signal_name(signum),
                        )
                        stopped_at_once = True
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch_signals)
                await nursery.start(serve)
                serving = True
                logger.info("press Ctrl-C to stop")
    return EXIT_STOPPED_AT_ONCE if stopped_at_once else EXIT_OK


def _stopping_before_serving(signum: int) -> None:
    logger.info("%s before serving started: stopping", _signal_name(signum))


@contextlib.contextmanager
def held_signals() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM until trio's receiver takes over; yield them.

    A program that imports services before serving installs this first, so a
    SIGTERM that arrives meanwhile neither kills the process (exit -15) nor
    interrupts an import half-way: :func:`serve_held_until_signalled` sees it
    and does not start the host. A second signal raises
    :class:`KeyboardInterrupt`: stop at once (an import that hangs). The
    previous handlers are restored on exit.
    """
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in _SIGNALS}
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
