"""What the conformance checks share: names, bounded waits, refusals, comparisons.

Unique names, receiving and draining, waiting for the broker to act on its own,
the reply texts of refused operations, and comparisons of header values,
properties and ``x-death``. Every wait is bounded by ``_WAIT`` and fails the check
with :class:`AssertionError`; every reply-text pattern matches both brokers
(``_VHOST`` stands for the embedded broker's name or RabbitMQ's vhost).
"""

from __future__ import annotations

import datetime
import functools
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

import attrs
import trio

from ..._exceptions import ChannelClosedByBroker, InvalidRequest, NotFound
from ..._message import ExchangeType, Properties

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..._message import Delivery, Settlement
    from ...abc import Connection, Consumer

#: The longest any single wait in a check may take before the check fails.
_WAIT = 10.0
#: How often a check looks again while it waits for the broker to act on its own.
_POLL = 0.05
#: The short TTL used by the time-dependent checks, in milliseconds.
_TTL_MS = 200
#: Matches the vhost part of a reply text: memory's broker name or RabbitMQ's vhost.
_VHOST = r"in vhost '[^']*'"

_E = TypeVar("_E", bound=Exception)


def _name(kind: str) -> str:
    """Return a unique exchange or queue name."""
    return f"conformance-{kind}-{uuid.uuid4().hex[:12]}"


async def _receive(consumer: Consumer) -> Delivery:
    """Receive one delivery, failing the check if none comes."""
    try:
        with trio.fail_after(_WAIT):
            return await consumer.receive()
    except trio.TooSlowError:
        raise AssertionError(
            f"no delivery from {consumer.queue!r} within {_WAIT} s"
        ) from None


async def _receive_n(consumer: Consumer, count: int) -> list[Delivery]:
    return [await _receive(consumer) for _ in range(count)]


async def _receive_and_ack(conn: Connection, queue: str, count: int) -> list[Delivery]:
    """Receive *count* deliveries on a new consumer of *queue*, then ack them all."""
    async with conn.open_consumer(queue) as consumer:
        got = await _receive_n(consumer, count)
        for delivery in got:
            await delivery.ack()
    return got


async def _assert_receive_raises(
    consumer: Consumer, error: type[_E], failure: str
) -> _E:
    """Check that the next :meth:`~trioevents.abc.Consumer.receive` raises *error*.

    Parameters
    ----------
    failure
        What the :class:`AssertionError` says, with the delivery, if one comes.

    Returns
    -------
    Exception
        The *error* raised.
    """
    try:
        with trio.fail_after(_WAIT):
            delivery = await consumer.receive()
    except error as exc:
        return exc
    raise AssertionError(f"{failure}: {delivery!r}")


def _settlement(delivery: Delivery) -> Settlement | None:
    return delivery.settled


def _bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [delivery.body for delivery in deliveries]


async def _drain(conn: Connection, queue: str) -> list[Delivery]:
    """Return (acked) every message of *queue*, in order.

    Publishes a marker through the default exchange and consumes up to it, so no
    timing is involved: what came before the marker is all there was. Not for
    queues whose TTL or length limit could drop the marker.
    """
    marker = f"conformance-marker-{uuid.uuid4().hex}".encode()
    await conn.publish("", queue, marker)
    got: list[Delivery] = []
    async with conn.open_consumer(queue) as consumer:
        while True:
            delivery = await _receive(consumer)
            await delivery.ack()
            if delivery.body == marker:
                return got
            got.append(delivery)


async def _message_count(conn: Connection, queue: str) -> int:
    return (await conn.declare_queue(queue, passive=True)).message_count


async def _wait_for_count(conn: Connection, queue: str, count: int) -> None:
    """Wait until *queue* holds *count* ready messages (for TTL expiry)."""
    try:
        with trio.fail_after(_WAIT):
            # The broker expires messages on its own: nothing to wait on but its state.
            while await _message_count(conn, queue) != count:  # noqa: ASYNC110
                await trio.sleep(_POLL)
    except trio.TooSlowError:
        raise AssertionError(
            f"{queue!r} did not come to {count} messages within {_WAIT} s"
        ) from None


async def _wait_until_missing(probe: Callable[[], Awaitable[object]]) -> None:
    """Wait until *probe* (a passive declare) raises :class:`NotFound`."""
    try:
        with trio.fail_after(_WAIT):
            while True:
                try:
                    await probe()
                except NotFound:
                    return
                await trio.sleep(_POLL)
    except trio.TooSlowError:
        raise AssertionError(f"still there after {_WAIT} s") from None


async def _assert_usable(conn: Connection) -> None:
    """Check that *conn* still declares, publishes, consumes and deletes."""
    queue = (await conn.declare_queue(_name("usable"))).name
    await conn.publish("", queue, b"still usable")
    assert _bodies(await _drain(conn, queue)) == [b"still usable"], (
        "the connection lost a message after an error"
    )
    assert await conn.delete_queue(queue) == 0


async def _assert_refused(
    conn: Connection,
    error: type[ChannelClosedByBroker],
    pattern: str,
    operation: Callable[[], Awaitable[object]],
) -> ChannelClosedByBroker:
    """Check that *operation* raises *error* whose reply text matches *pattern*.

    Then check that the connection is still usable.
    """
    caught: ChannelClosedByBroker | None = None
    try:
        await operation()
    except ChannelClosedByBroker as exc:
        caught = exc
    if caught is None:
        raise AssertionError(f"expected {error.__name__} matching {pattern!r}")
    if not isinstance(caught, error):
        raise AssertionError(
            f"expected {error.__name__} ({error.code}), got {caught!r}"
        ) from caught
    assert caught.reply_code == error.code, (caught.reply_code, error.code)
    assert re.match(pattern, caught.reply_text), (
        f"reply text {caught.reply_text!r} does not match {pattern!r}"
    )
    await _assert_usable(conn)
    return caught


async def _assert_raises(
    conn: Connection,
    error: type[Exception] | tuple[type[Exception], ...],
    operation: Callable[[], Awaitable[object]],
    failure: str,
) -> None:
    """Check that *operation* raises *error*; then that *conn* is still usable.

    Parameters
    ----------
    failure
        What the :class:`AssertionError` says if *operation* returns.
    """
    try:
        await operation()
    except error:
        pass
    else:
        raise AssertionError(failure)
    await _assert_usable(conn)


async def _assert_invalid(
    conn: Connection, operation: Callable[[], Awaitable[object]]
) -> None:
    """Check that *operation* raises :class:`InvalidRequest`; *conn* stays usable."""
    await _assert_raises(conn, InvalidRequest, operation, "expected InvalidRequest")


async def _assert_not_found(
    conn: Connection,
    kind: str,
    name: str,
    operation: Callable[[], Awaitable[object]],
) -> None:
    """Check that *operation* is 404 for want of the *kind* (exchange or queue) *name*.

    Then check that *conn* is still usable.
    """
    await _assert_refused(conn, NotFound, _not_found(kind, name), operation)


async def _assert_no_exchange(conn: Connection, name: str) -> None:
    """Check that a passive declare of exchange *name* is 404; *conn* stays usable."""
    declare = functools.partial(conn.declare_exchange, name, passive=True)
    await _assert_not_found(conn, "exchange", name, declare)


async def _assert_no_queue(conn: Connection, name: str) -> None:
    """Check that a passive declare of queue *name* is 404; *conn* stays usable."""
    declare = functools.partial(conn.declare_queue, name, passive=True)
    await _assert_not_found(conn, "queue", name, declare)


async def _consume_once(
    conn: Connection, queue: str, *, exclusive: bool = False
) -> None:
    async with conn.open_consumer(queue, exclusive=exclusive):
        pass


def _not_found(kind: str, name: str) -> str:
    return rf"NOT_FOUND - no {kind} '{re.escape(name)}' {_VHOST}$"


def _inequivalent(arg: str, kind: str, name: str) -> str:
    return (
        rf"PRECONDITION_FAILED - inequivalent arg '{re.escape(arg)}' for {kind} "
        rf"'{re.escape(name)}' {_VHOST}"
    )


def _locked(queue: str) -> str:
    return (
        rf"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
        rf"'{re.escape(queue)}' {_VHOST}"
    )


def _reserved(kind: str, name: str) -> str:
    return (
        rf"ACCESS_REFUSED - {kind} name '{re.escape(name)}' contains reserved "
        r"prefix 'amq\.\*'$"
    )


_DEFAULT_EXCHANGE = r"ACCESS_REFUSED - operation not permitted on the default exchange$"


def _assert_same_value(path: str, expected: object, actual: object) -> None:
    """Check that *actual* equals *expected* with the same types, recursively."""
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{path}: expected a table, got {actual!r}"
        assert set(actual) == set(expected), (
            f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        )
        for key, value in expected.items():
            _assert_same_value(f"{path}[{key!r}]", value, actual[key])
    elif isinstance(expected, list):
        assert type(actual) is list, f"{path}: expected a list, got {actual!r}"
        assert len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            _assert_same_value(f"{path}[{index}]", want, got)
    else:
        message = (
            f"{path}: expected {expected!r} ({type(expected).__name__}), "
            f"got {actual!r} ({type(actual).__name__})"
        )
        assert type(actual) is type(expected), message
        assert actual == expected, message


def _assert_properties(expected: Properties, actual: Properties) -> None:
    for field in attrs.fields(Properties):
        want = getattr(expected, field.name)
        got = getattr(actual, field.name)
        if field.name == "headers" and want is not None:
            _assert_same_value("headers", want, got)
        else:
            assert got == want, f"property {field.name}: expected {want!r}, got {got!r}"


def _assert_recent(path: str, value: object) -> None:
    """Check that *value* is an aware datetime of whole seconds close to now."""
    assert isinstance(value, datetime.datetime), f"{path}: {value!r} is not a datetime"
    assert value.utcoffset() is not None, f"{path}: {value!r} is naive"
    assert value.microsecond == 0, f"{path}: {value!r} has sub-second precision"
    now = datetime.datetime.now(datetime.UTC)
    assert abs(now - value) < datetime.timedelta(hours=1), (
        f"{path}: {value!r} is not the wall-clock time of the death ({now!r})"
    )


def _assert_x_death(
    delivery: Delivery,
    deaths: list[dict[str, object]],
    *,
    first: tuple[str, str, str],
    other_headers: Mapping[str, object] | None = None,
) -> None:
    """Check a dead-lettered delivery's headers against RabbitMQ's shape.

    Parameters
    ----------
    deaths
        The expected ``x-death`` entries, newest first, without ``time``.
    first
        The expected ``(reason, queue, exchange)`` of ``x-first-death-*``.
    other_headers
        The headers the message had before it died, which are kept.
    """
    headers = delivery.properties.headers
    assert headers is not None, "a dead-lettered message has no headers"
    other = dict(other_headers or {})
    expected_keys = {
        *other,
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
    }
    # RabbitMQ 3.13 added x-last-death-*; tolerate them so the suite holds there too.
    last = {"x-last-death-reason", "x-last-death-queue", "x-last-death-exchange"}
    assert expected_keys <= set(headers) <= expected_keys | last, (
        f"dead-letter headers {sorted(headers)} != {sorted(expected_keys)}"
    )
    for key, value in other.items():
        _assert_same_value(f"headers[{key!r}]", value, headers[key])
    reason, queue, exchange = first
    _assert_same_value("x-first-death-reason", reason, headers["x-first-death-reason"])
    _assert_same_value("x-first-death-queue", queue, headers["x-first-death-queue"])
    _assert_same_value(
        "x-first-death-exchange", exchange, headers["x-first-death-exchange"]
    )
    if "x-last-death-reason" in headers:
        newest = deaths[0]
        assert headers["x-last-death-reason"] == newest["reason"]
        assert headers["x-last-death-queue"] == newest["queue"]
        assert headers["x-last-death-exchange"] == newest["exchange"]
    x_death = headers["x-death"]
    assert type(x_death) is list, f"x-death is not a list: {x_death!r}"
    assert len(x_death) == len(deaths), f"x-death {x_death!r} != {deaths!r}"
    for index, (want, got) in enumerate(zip(deaths, x_death, strict=True)):
        path = f"x-death[{index}]"
        assert isinstance(got, Mapping), f"{path} is not a table: {got!r}"
        _assert_same_value(path, want, {k: v for k, v in got.items() if k != "time"})
        assert "time" in got, f"{path} has no time"
        _assert_recent(f"{path}['time']", got["time"])


def _death(
    reason: str,
    queue: str,
    exchange: str,
    routing_keys: list[str],
    *,
    count: int = 1,
    original_expiration: str | None = None,
) -> dict[str, object]:
    entry: dict[str, object] = {
        "count": count,
        "reason": reason,
        "queue": queue,
        "exchange": exchange,
        "routing-keys": routing_keys,
    }
    if original_expiration is not None:
        entry["original-expiration"] = original_expiration
    return entry


def _assert_one_death(
    delivery: Delivery,
    reason: str,
    queue: str,
    exchange: str,
    routing_keys: list[str],
    *,
    original_expiration: str | None = None,
    other_headers: Mapping[str, object] | None = None,
) -> None:
    """Check the headers of a message dead-lettered once, for *reason*, from *queue*.

    *exchange* and *routing_keys* are those it was published with; the rest is as
    for :func:`_assert_x_death`.
    """
    death = _death(
        reason, queue, exchange, routing_keys, original_expiration=original_expiration
    )
    _assert_x_death(
        delivery,
        [death],
        first=(reason, queue, exchange),
        other_headers=other_headers,
    )


def _assert_not_early(elapsed: float) -> None:
    """Check that what expired after *elapsed* seconds outlived half of ``_TTL_MS``.

    Only a lower bound: a broker may expire late, never early.
    """
    assert elapsed >= _TTL_MS / 2000, (
        f"expired after {elapsed:.3f} s, before half the TTL of {_TTL_MS} ms"
    )


async def _dead_letter_target(
    conn: Connection, exchange_type: ExchangeType = ExchangeType.FANOUT
) -> tuple[str, str]:
    """Declare a dead-letter exchange and a queue bound to all it routes."""
    dlx = _name("dlx")
    dlq = _name("dlq")
    await conn.declare_exchange(dlx, exchange_type)
    await conn.declare_queue(dlq)
    await conn.bind_queue(dlq, dlx, "#" if exchange_type is ExchangeType.TOPIC else "")
    return dlx, dlq
