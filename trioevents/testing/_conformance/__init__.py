"""The transport conformance suite: the rules every :class:`~trioevents.abc.Transport` keeps.

Shaped like :func:`trio.testing.check_one_way_stream`: :func:`check_transport` runs
every check against transports from a factory, and :data:`TRANSPORT_CHECKS` maps each
check's name to its function so that a test module can run one test per check::

    @pytest.mark.parametrize("name", TRANSPORT_CHECKS)
    async def test_transport_conformance(name, make_transport):
        await TRANSPORT_CHECKS[name](make_transport)

Each check calls ``make_transport()`` once and opens its connections on that
transport; it still gives its queues and exchanges unique names, so a broker shared
between checks is fine. A check fails with :class:`AssertionError`, never hangs
(each wait is bounded by :func:`trio.fail_after`), and waits with :func:`trio.sleep`
only, so it runs in no time under ``autojump_clock`` on the embedded broker and in
real time on RabbitMQ. The few time-dependent checks use TTLs of 100-300 ms and
assert lower bounds only.

The checks live in one module per section: ``_exchanges``, ``_queues``,
``_routing``, ``_publishing``, ``_consuming``, ``_dead_letters``,
``_queue_types`` and ``_bad_input``. Each marks its checks ``@_check`` (``_registry``, which also runs
them) and builds them from the helpers in ``_support``. A new check goes into its
section's module as ``async def check_<what it checks>(make_transport)``.

Every expectation was measured on RabbitMQ 3.10.8. The surprising facts:

* Redeclaring with another ``exclusive`` flag is 405 RESOURCE_LOCKED, not 406.
  Unknown ``x-`` arguments are never compared; of an exchange's arguments only
  ``alternate-exchange`` is. A passive declare ignores every flag and the type.
* ``amq.topic`` redeclared with its own type and flags is fine; a *new* ``amq.``
  name is 403. Every operation on the default exchange ``""``, even a passive
  declare, is 403 "operation not permitted on the default exchange".
* Deleting a missing exchange or queue and unbinding anything missing are no-ops;
  purging a missing queue is 404.
* ``message_count`` (declare, delete, purge) counts ready messages only; unacked
  deliveries are neither counted nor purged.
* Topic keys split on ``.``: ``""`` has no words (``*`` does not match it, ``#``
  does) and ``"."`` is two empty words (``*.*`` matches it).
* A requeued message goes back to its original position, ahead of later ones.
* A dead-lettered message loses ``expiration`` (kept as ``original-expiration`` in
  its ``x-death`` entry, whatever the reason); ``x-death`` is newest first, one
  entry per (queue, reason) whose ``count`` grows while its other fields keep their
  first values. There is no ``x-last-death-*`` before RabbitMQ 3.13.
* ``x-overflow=reject-publish`` nacks without dead-lettering; ``reject-publish-dlx``
  nacks and dead-letters (reason ``maxlen``). ``x-max-length-bytes`` counts bodies.
* Header values keep their AMQP types exactly (``d`` doubles, ``x`` byte arrays,
  ``D`` decimals, ``V`` void, ...); timestamps carry whole seconds only.
* A message requeued after its TTL passed expires at once. Every declare of an
  ``x-expires`` queue, passive ones too, renews its lease.
* The default exchange works as a dead-letter exchange (with
  ``x-dead-letter-routing-key`` naming the queue); a DLX that does not exist
  drops the message silently.
* A quorum queue (``x-queue-type``) must be durable, not exclusive, not
  auto-delete and not server-named (406); each type refuses the other's
  arguments; a redeclare with the other type is 406 ``inequivalent arg
  'x-queue-type'`` (or the first other argument that differs, in the existing
  type's own order). A value given on one side only is shown with its AMQP type
  (``received the value 'quorum' of type 'longstr' but current is none``).
* A quorum queue puts a requeued message at the back, counts every return
  (nack, reject, a closed consumer) in ``x-delivery-count`` (absent on the first
  delivery), and past ``x-delivery-limit`` returns dead-letters it (reason
  ``delivery_limit``, the count not kept) or drops it.
* RabbitMQ itself refuses ``expiration="abc"`` or ``"-5"`` and ``delivery_mode=3``
  (406), and a ``user_id`` other than the connection's user (406), so the
  round-trip check leaves ``user_id`` out. 3.10 takes an ``expiration`` up to
  315360000000 ms, older versions up to 4294967295 ms, and ``CC`` / ``BCC``
  headers only as arrays: the transports refuse the rest locally.
"""

from __future__ import annotations

from . import (
    _bad_input,
    _consuming,
    _dead_letters,
    _exchanges,
    _publishing,
    _queue_types,
    _queues,
    _routing,
)
from ._registry import (
    TRANSPORT_CHECKS as TRANSPORT_CHECKS,
    check_transport as check_transport,
)

__all__ = ["TRANSPORT_CHECKS", "check_transport"]

#: The section modules, in the order the docs above describe them. Importing one
#: registers its checks; :data:`TRANSPORT_CHECKS` orders them by name regardless.
_SECTIONS = (
    _exchanges,
    _queues,
    _routing,
    _publishing,
    _consuming,
    _dead_letters,
    _queue_types,
    _bad_input,
)
