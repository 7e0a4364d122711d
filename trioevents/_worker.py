"""The worker context: who is running, on whose behalf, and what travels on.

Every delivery a handler runs for gets a :class:`WorkerContext`. Like nameko's, it
carries

- a ``call_id``, ``"{service}.{method}.{uuid4}"``;
- the ``call_id_stack``: the stack the message came with (its
  ``nameko.call_id_stack`` header) plus the new ``call_id``, capped to the last
  ``parent_calls_tracked + 1`` entries;
- ``data``: the message's other ``nameko.*`` headers with the prefix stripped
  (``language``, ``user_id``, ``auth_token``, custom keys).

Every event dispatched from that worker carries the context on as headers
(:meth:`WorkerContext.dispatch_headers`), so a chain of services, trioevents or
nameko, sees one call stack. A standalone dispatch sends no context headers.
"""

from __future__ import annotations

import contextlib
import logging
import random
import reprlib
from typing import TYPE_CHECKING, Any, final

import attrs

from ._fieldtable import field_value_problem

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CALL_ID_STACK_CONTEXT_KEY",
    "DEFAULT_PARENT_CALLS_TRACKED",
    "HEADER_PREFIX",
    "WorkerContext",
]

logger = logging.getLogger("trioevents.worker")

#: The prefix of the context headers (nameko's ``HEADER_PREFIX``, plus the dot).
HEADER_PREFIX = "nameko."
#: The context key of the call id stack (nameko's ``CALL_ID_STACK_CONTEXT_KEY``).
CALL_ID_STACK_CONTEXT_KEY = "call_id_stack"
#: How many parent calls a stack keeps (nameko's ``DEFAULT_PARENT_CALLS_TRACKED``).
DEFAULT_PARENT_CALLS_TRACKED = 10

_CALL_ID_STACK_HEADER = HEADER_PREFIX + CALL_ID_STACK_CONTEXT_KEY


def new_uuid4() -> str:
    """Return a random version-4 UUID in its string form, as ``str(uuid.uuid4())``.

    From :mod:`random`'s generator rather than :func:`os.urandom`: a call id
    names a call, it guards nothing, and this costs no system call per worker.
    ``random`` reseeds itself in a forked child, so processes never share ids.
    """
    bits = (_getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_getrandbits = random.getrandbits
#: Version 4 in bits 76-79, the RFC 4122 variant (0b10) in bits 62-63.
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def _as_stack(value: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(value)


@final
@attrs.define(eq=False, kw_only=True, repr=False)
class WorkerContext:
    """The context of one worker: one run of one handler for one delivery.

    Build it with :meth:`from_headers` from a delivery's headers, or directly
    (e.g. in unit tests). Compared by identity, so it can key a dict, as in
    nameko.

    Attributes
    ----------
    service_name
        The name of the service running the worker.
    method_name
        The name of the handler method.
    data
        The context data: the incoming ``nameko.*`` headers, prefix stripped,
        except the call id stack. Dependencies may add to it; whatever it holds
        when the worker dispatches is sent on.
    parent_call_id_stack
        The call id stack the message came with (may be empty).
    parent_calls_tracked
        How many parent call ids :attr:`call_id_stack` keeps
        (``parent_calls_tracked`` in the config; nameko's default is 10).
    call_id
        ``"{service_name}.{method_name}.{uuid4}"``, unless given.
    headers
        All the headers of the incoming message, as they came (those without the
        ``nameko.`` prefix are not sent on).
    """

    service_name: str
    method_name: str
    data: dict[str, Any] = attrs.Factory(dict)
    parent_call_id_stack: tuple[str, ...] = attrs.field(default=(), converter=_as_stack)
    parent_calls_tracked: int = attrs.field(default=DEFAULT_PARENT_CALLS_TRACKED)
    call_id: str = attrs.field()
    headers: Mapping[str, Any] = attrs.Factory(dict)
    _call_id_stack: tuple[str, ...] = attrs.field(init=False)

    @call_id.default
    def _new_call_id(self) -> str:
        return f"{self.service_name}.{self.method_name}.{new_uuid4()}"

    @parent_calls_tracked.validator
    def _check_parent_calls_tracked(
        self, attribute: attrs.Attribute[int], value: object
    ) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"parent_calls_tracked must be an integer >= 0, got {value!r}"
            )

    def __attrs_post_init__(self) -> None:
        stack = (*self.parent_call_id_stack, self.call_id)
        self._call_id_stack = stack[-(self.parent_calls_tracked + 1) :]

    @classmethod
    def from_headers(
        cls,
        service_name: str,
        method_name: str,
        headers: Mapping[Any, Any] | None,
        *,
        parent_calls_tracked: int = DEFAULT_PARENT_CALLS_TRACKED,
    ) -> WorkerContext:
        """Build the context of a worker from its delivery's headers.

        ``nameko.call_id_stack`` becomes :attr:`parent_call_id_stack`; every other
        ``nameko.<key>`` header becomes ``data[key]`` (nameko's
        ``HeaderDecoder``). Headers of the wrong shape never fail the worker: a
        call id stack that is not a list, its entries that are not strings, and
        keys that are not strings are dropped with a logged warning.

        Parameters
        ----------
        service_name, method_name
            The service and handler the worker runs.
        headers
            The delivery's application headers (``None`` if it has none).
        parent_calls_tracked
            How many parent call ids the new stack keeps.
        """
        data: dict[str, Any] = {}
        parent_stack: list[str] = []
        raw: Mapping[Any, Any] = headers if headers is not None else {}
        where = f"{service_name}.{method_name}"
        for key, value in raw.items():
            if not isinstance(key, str):
                logger.warning(
                    "%s: ignoring a header whose name is not a string: %r", where, key
                )
                continue
            if not key.startswith(HEADER_PREFIX):
                continue
            name = key[len(HEADER_PREFIX) :]
            if name == CALL_ID_STACK_CONTEXT_KEY:
                parent_stack = _read_call_id_stack(value, where)
            elif name:
                data[name] = value
        return cls(
            service_name=service_name,
            method_name=method_name,
            data=data,
            parent_call_id_stack=parent_stack,
            parent_calls_tracked=parent_calls_tracked,
            headers=dict(raw),
        )

    @property
    def call_id_stack(self) -> list[str]:
        """The parent call ids and this worker's, oldest first, capped.

        At most ``parent_calls_tracked + 1`` entries: the oldest are dropped.
        """
        return list(self._call_id_stack)

    @property
    def immediate_parent_call_id(self) -> str | None:
        """The call id of the worker that dispatched this event, if any."""
        return self.parent_call_id_stack[-1] if self.parent_call_id_stack else None

    @property
    def origin_call_id(self) -> str | None:
        """The oldest call id the event came with, if any (nameko's name).

        Once a chain is longer than the stack is deep, this is the oldest call
        still tracked, not the very first.
        """
        return self.parent_call_id_stack[0] if self.parent_call_id_stack else None

    @property
    def context_data(self) -> dict[str, Any]:
        """:attr:`data` plus ``call_id_stack``: what travels on (nameko's name)."""
        return {**self.data, CALL_ID_STACK_CONTEXT_KEY: self.call_id_stack}

    def dispatch_headers(self) -> dict[str, Any]:
        """Return the headers of an event dispatched by this worker.

        Each :attr:`context_data` entry becomes a ``nameko.<key>`` header, as
        nameko's ``HeaderEncoder`` does. Entries whose value is ``None`` are left
        out (nameko warns about those too), and so are values an AMQP header table
        cannot hold; each is logged as a warning.
        """
        headers: dict[str, Any] = {}
        for key, value in self.context_data.items():
            if value is None:
                logger.warning(
                    "%r: context data %r is None; it is not sent on", self, key
                )
            elif (
                problem := field_value_problem(value, f"context data {key!r}")
            ) is not None:
                logger.warning("%r: %s; it is not sent on", self, problem)
            else:
                headers[HEADER_PREFIX + key] = value
        return headers

    def __repr__(self) -> str:
        return (
            f"<WorkerContext [{self.service_name}.{self.method_name}] "
            f"call_id={self.call_id!r}>"
        )


def _read_call_id_stack(value: object, where: str) -> list[str]:
    if not isinstance(value, list | tuple):
        logger.warning(
            "%s: ignoring the %s header: expected a list of call ids, got %s",
            where,
            _CALL_ID_STACK_HEADER,
            type(value).__name__,
        )
        return []
    stack: list[str] = []
    dropped: list[object] = []
    for item in value:
        entry = item
        if isinstance(entry, bytes):
            with contextlib.suppress(UnicodeDecodeError):
                entry = entry.decode("utf-8")
        if isinstance(entry, str):
            stack.append(entry)
        else:
            dropped.append(entry)
    if dropped:
        # One line per header, however long the list: bad input must not
        # flood the log.
        logger.warning(
            "%s: ignoring %d non-string entr%s of the %s header (the first: %s)",
            where,
            len(dropped),
            "y" if len(dropped) == 1 else "ies",
            _CALL_ID_STACK_HEADER,
            reprlib.repr(dropped[0]),
        )
    return stack
