"""How a conformance check registers, in which order the checks run, and the runner.

A section module marks each of its checks ``@_check``: the check is registered in
:data:`TRANSPORT_CHECKS` under its function's name without the ``check_`` prefix,
bounded by ``_CHECK_DEADLINE``. The mapping is kept sorted by name whatever order
the section modules are imported in, so :func:`check_transport` and a test module
that runs one test per check see the checks in name order.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, TypeAlias

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ...abc import Transport

    MakeTransport: TypeAlias = Callable[[], Transport]
    TransportCheck: TypeAlias = Callable[[MakeTransport], Awaitable[None]]

__all__ = ["TRANSPORT_CHECKS", "check_transport"]

#: The longest a whole check may take.
_CHECK_DEADLINE = 60.0

#: Every check by name, sorted: ``name -> async check(make_transport)``.
TRANSPORT_CHECKS: dict[str, Callable[[Callable[[], Transport]], Awaitable[None]]] = {}


def _check(fn: TransportCheck) -> TransportCheck:
    """Register *fn* as a check named after it, bounded by ``_CHECK_DEADLINE``.

    Parameters
    ----------
    fn
        The check, named ``check_<name>``.

    Returns
    -------
    TransportCheck
        The bounded check, as registered under ``<name>``.

    Raises
    ------
    ValueError
        A check of that name is registered already (two section modules chose
        the same name).
    """
    name = fn.__name__.removeprefix("check_")
    if name in TRANSPORT_CHECKS:
        raise ValueError(f"two transport checks are named {name!r}")

    @functools.wraps(fn)
    async def bounded(make_transport: MakeTransport) -> None:
        with trio.fail_after(_CHECK_DEADLINE):
            await fn(make_transport)

    TRANSPORT_CHECKS[name] = bounded
    # Keep the one mapping everyone holds sorted by name, in place.
    ordered = sorted(TRANSPORT_CHECKS.items())
    TRANSPORT_CHECKS.clear()
    TRANSPORT_CHECKS.update(ordered)
    return bounded


async def check_transport(make_transport: Callable[[], Transport]) -> None:
    """Check that a transport keeps every rule of the Transport seam.

    Runs each check of :data:`TRANSPORT_CHECKS` in name order; the first failing
    one raises, with a note naming it (:meth:`BaseException.add_note`).

    Parameters
    ----------
    make_transport
        Returns a :class:`~trioevents.abc.Transport` onto an isolated broker
        namespace: a fresh embedded broker, or a fresh RabbitMQ vhost. Each check
        calls it once and opens its connections on what it returns.

    Raises
    ------
    AssertionError
        The transport broke a rule. Other exceptions (a transport error where
        none was due, :class:`trio.TooSlowError` past a check's deadline) fail
        the run too.
    """
    for name, check in TRANSPORT_CHECKS.items():
        try:
            await check(make_transport)
        except Exception as exc:
            exc.add_note(f"in transport check {name!r}")
            raise
