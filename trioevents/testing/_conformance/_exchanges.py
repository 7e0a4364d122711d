"""The exchange checks.

Declares and redeclares of every type and flag, passive declares, the reserved
``amq.`` names and the standard exchanges, the default exchange, internal and
auto-delete exchanges, and deleting one.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from ..._exceptions import AccessRefused, PreconditionFailed
from ..._message import ExchangeType
from ._registry import _check
from ._support import (
    _DEFAULT_EXCHANGE,
    _VHOST,
    _assert_no_exchange,
    _assert_no_queue,
    _assert_refused,
    _assert_usable,
    _bodies,
    _drain,
    _inequivalent,
    _name,
    _reserved,
    _wait_until_missing,
)

if TYPE_CHECKING:
    from ._registry import MakeTransport


@_check
async def check_exchange_declare_every_type_and_flag(
    make_transport: MakeTransport,
) -> None:
    """Exchanges of each type and flag set declare, redeclare the same, and exist."""
    async with make_transport().open_connection() as conn:
        for exchange_type in ExchangeType:
            for flags in (
                {},
                {"durable": True},
                {"auto_delete": True},
                {"internal": True},
                {"durable": True, "auto_delete": True, "internal": True},
            ):
                name = _name(f"x-{exchange_type.value}")
                await conn.declare_exchange(
                    name, exchange_type, arguments={"x-conformance": 1}, **flags
                )
                await conn.declare_exchange(
                    name, exchange_type, arguments={"x-conformance": 1}, **flags
                )
                await conn.declare_exchange(name, passive=True)
                await conn.delete_exchange(name)
                await _assert_no_exchange(conn, name)


@_check
async def check_exchange_redeclare_with_other_flags_fails(
    make_transport: MakeTransport,
) -> None:
    """A redeclare with another type, durable, auto_delete or internal is 406."""
    async with make_transport().open_connection() as conn:
        name = _name("x")
        await conn.declare_exchange(name, ExchangeType.TOPIC, durable=True)
        await _assert_refused(
            conn,
            PreconditionFailed,
            _inequivalent("type", "exchange", name),
            lambda: conn.declare_exchange(name, ExchangeType.DIRECT, durable=True),
        )
        await _assert_refused(
            conn,
            PreconditionFailed,
            _inequivalent("durable", "exchange", name),
            lambda: conn.declare_exchange(name, ExchangeType.TOPIC),
        )
        await _assert_refused(
            conn,
            PreconditionFailed,
            _inequivalent("auto_delete", "exchange", name),
            lambda: conn.declare_exchange(
                name, ExchangeType.TOPIC, durable=True, auto_delete=True
            ),
        )
        await _assert_refused(
            conn,
            PreconditionFailed,
            _inequivalent("internal", "exchange", name),
            lambda: conn.declare_exchange(
                name, ExchangeType.TOPIC, durable=True, internal=True
            ),
        )
        # The exchange is unchanged by the refused redeclares.
        await conn.declare_exchange(name, ExchangeType.TOPIC, durable=True)


@_check
async def check_exchange_redeclare_compares_only_alternate_exchange(
    make_transport: MakeTransport,
) -> None:
    """Exchange arguments are not compared on redeclare, except ``alternate-exchange``."""
    async with make_transport().open_connection() as conn:
        name = _name("x")
        await conn.declare_exchange(
            name, ExchangeType.FANOUT, arguments={"x-conformance": 1}
        )
        await conn.declare_exchange(name, ExchangeType.FANOUT)
        await conn.declare_exchange(
            name, ExchangeType.FANOUT, arguments={"x-conformance": 2}
        )
        await _assert_refused(
            conn,
            PreconditionFailed,
            _inequivalent("alternate-exchange", "exchange", name),
            lambda: conn.declare_exchange(
                name, ExchangeType.FANOUT, arguments={"alternate-exchange": "other"}
            ),
        )


@_check
async def check_exchange_passive_declare(make_transport: MakeTransport) -> None:
    """A passive declare finds an exchange whatever flags it names; else 404."""
    async with make_transport().open_connection() as conn:
        missing = _name("missing")
        await _assert_no_exchange(conn, missing)
        await _assert_no_exchange(conn, "amq.conformance-missing")
        # Passive declares do not create anything.
        await _assert_no_exchange(conn, missing)
        name = _name("x")
        await conn.declare_exchange(name, ExchangeType.TOPIC, durable=True)
        await conn.declare_exchange(name, ExchangeType.DIRECT, passive=True)
        await conn.declare_exchange(
            name, ExchangeType.FANOUT, auto_delete=True, internal=True, passive=True
        )
        await conn.declare_exchange(name, ExchangeType.TOPIC, durable=True)


@_check
async def check_reserved_amq_names_are_refused(make_transport: MakeTransport) -> None:
    """New ``amq.`` exchanges and queues are 403; system exchanges cannot go."""
    async with make_transport().open_connection() as conn:
        exchange = f"amq.{_name('x')}"
        await _assert_refused(
            conn,
            AccessRefused,
            _reserved("exchange", exchange),
            lambda: conn.declare_exchange(exchange, ExchangeType.TOPIC),
        )
        queue = f"amq.{_name('q')}"
        await _assert_refused(
            conn,
            AccessRefused,
            _reserved("queue", queue),
            lambda: conn.declare_queue(queue),
        )
        await _assert_no_queue(conn, queue)
        await _assert_refused(
            conn,
            AccessRefused,
            rf"ACCESS_REFUSED - deletion of system exchange 'amq\.direct' {_VHOST} "
            r"not allowed$",
            lambda: conn.delete_exchange("amq.direct"),
        )
        # The prefix is case-sensitive.
        upper = f"AMQ.{_name('q')}"
        assert (await conn.declare_queue(upper)).name == upper
        assert await conn.delete_queue(upper) == 0


@_check
async def check_standard_exchanges_exist(make_transport: MakeTransport) -> None:
    """``amq.direct``, ``amq.fanout`` and ``amq.topic`` exist, durable, and route."""
    async with make_transport().open_connection() as conn:
        for name, exchange_type in (
            ("amq.direct", ExchangeType.DIRECT),
            ("amq.fanout", ExchangeType.FANOUT),
            ("amq.topic", ExchangeType.TOPIC),
        ):
            await conn.declare_exchange(name, passive=True)
            # Redeclaring a system exchange as it is is allowed ...
            await conn.declare_exchange(name, exchange_type, durable=True)
            # ... with other flags it is the usual 406.
            await _assert_refused(
                conn,
                PreconditionFailed,
                _inequivalent("durable", "exchange", name),
                functools.partial(conn.declare_exchange, name, exchange_type),
            )
        queue = (await conn.declare_queue(_name("q"))).name
        key = f"{queue}.#"
        await conn.bind_queue(queue, "amq.topic", key)
        await conn.publish("amq.topic", f"{queue}.event", b"via amq.topic")
        delivered = await _drain(conn, queue)
        assert _bodies(delivered) == [b"via amq.topic"]
        assert delivered[0].exchange == "amq.topic"
        await conn.unbind_queue(queue, "amq.topic", key)
        await conn.delete_queue(queue)


@_check
async def check_default_exchange_cannot_be_changed(
    make_transport: MakeTransport,
) -> None:
    """Declaring, deleting, binding to or unbinding from ``""`` is 403."""
    async with make_transport().open_connection() as conn:
        queue = (await conn.declare_queue(_name("q"))).name
        for operation in (
            lambda: conn.declare_exchange("", ExchangeType.DIRECT, durable=True),
            lambda: conn.declare_exchange("", passive=True),
            lambda: conn.delete_exchange(""),
            lambda: conn.bind_queue(queue, "", "other-key"),
            lambda: conn.unbind_queue(queue, "", queue),
        ):
            await _assert_refused(conn, AccessRefused, _DEFAULT_EXCHANGE, operation)
        # Still routes by queue name.
        await conn.publish("", queue, b"direct to queue")
        assert _bodies(await _drain(conn, queue)) == [b"direct to queue"]


@_check
async def check_internal_exchange_refuses_publishes(
    make_transport: MakeTransport,
) -> None:
    """Publishing to an internal exchange is 403 and delivers nothing."""
    async with make_transport().open_connection() as conn:
        exchange = _name("internal")
        await conn.declare_exchange(exchange, ExchangeType.FANOUT, internal=True)
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.bind_queue(queue, exchange)
        await _assert_refused(
            conn,
            AccessRefused,
            rf"ACCESS_REFUSED - cannot publish to internal exchange "
            rf"'{re.escape(exchange)}' {_VHOST}$",
            lambda: conn.publish(exchange, "", b"refused"),
        )
        assert await _drain(conn, queue) == []


@_check
async def check_auto_delete_exchange_goes_with_its_last_binding(
    make_transport: MakeTransport,
) -> None:
    """An auto-delete exchange lives until its last binding goes, not before."""
    async with make_transport().open_connection() as conn:
        exchange = _name("x")
        await conn.declare_exchange(exchange, ExchangeType.DIRECT, auto_delete=True)
        # Never bound: it stays.
        await conn.declare_exchange(exchange, passive=True)
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.bind_queue(queue, exchange, "one")
        await conn.bind_queue(queue, exchange, "two")
        await conn.unbind_queue(queue, exchange, "one")
        await conn.declare_exchange(exchange, passive=True)
        await conn.unbind_queue(queue, exchange, "two")
        await _wait_until_missing(lambda: conn.declare_exchange(exchange, passive=True))
        await _assert_usable(conn)

        # Deleting the bound queue removes the last binding too.
        other = _name("x")
        await conn.declare_exchange(other, ExchangeType.FANOUT, auto_delete=True)
        await conn.bind_queue(queue, other)
        await conn.delete_queue(queue)
        await _wait_until_missing(lambda: conn.declare_exchange(other, passive=True))
        await _assert_usable(conn)


@_check
async def check_delete_exchange(make_transport: MakeTransport) -> None:
    """Delete removes an exchange and its bindings; if_unused is 406; missing is fine."""
    async with make_transport().open_connection() as conn:
        exchange = _name("x")
        await conn.declare_exchange(exchange, ExchangeType.DIRECT)
        queue = (await conn.declare_queue(_name("q"))).name
        await conn.bind_queue(queue, exchange, "k")
        await _assert_refused(
            conn,
            PreconditionFailed,
            rf"PRECONDITION_FAILED - exchange '{re.escape(exchange)}' {_VHOST} in use$",
            lambda: conn.delete_exchange(exchange, if_unused=True),
        )
        await conn.declare_exchange(exchange, passive=True)
        await conn.publish(exchange, "k", b"still bound")
        assert _bodies(await _drain(conn, queue)) == [b"still bound"]

        await conn.delete_exchange(exchange)
        await _assert_no_exchange(conn, exchange)
        # The bindings went with it: a new exchange of the same name routes nowhere.
        await conn.declare_exchange(exchange, ExchangeType.DIRECT)
        await conn.publish(exchange, "k", b"unbound")
        assert await _drain(conn, queue) == []
        # Unused now, so if_unused deletes it.
        await conn.delete_exchange(exchange, if_unused=True)
        await _assert_no_exchange(conn, exchange)
        # Deleting what is not there is not an error.
        await conn.delete_exchange(exchange)
        await conn.delete_exchange(_name("missing"), if_unused=True)
        await _assert_usable(conn)
