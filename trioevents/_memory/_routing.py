"""Exchanges and routing as RabbitMQ does them: direct, fanout and topic.

RabbitMQ splits a routing key into words at every ``.``; the empty key has no
words (so ``*`` does not match it, ``#`` does) and ``"."`` is two empty words.
In a binding key ``*`` matches exactly one word and ``#`` zero or more.
"""

from __future__ import annotations

from typing import Any

import attrs

from .._message import ExchangeType

__all__ = ["Binding", "Exchange", "split_topic", "topic_matches"]


def split_topic(key: str) -> tuple[str, ...]:
    """Split a routing or binding key into words as RabbitMQ does (``""`` has none)."""
    return tuple(key.split(".")) if key else ()


def topic_matches(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    """Tell whether binding *pattern* matches routing key *words* (AMQP topic rules).

    ``*`` matches exactly one word, ``#`` zero or more.
    """
    # Iterative matcher over (pattern index, word index) states; '#' forks.
    states = {(0, 0)}
    seen: set[tuple[int, int]] = set()
    np, nw = len(pattern), len(words)
    while states:
        pi, wi = states.pop()
        if (pi, wi) in seen:
            continue
        seen.add((pi, wi))
        if pi == np:
            if wi == nw:
                return True
            continue
        token = pattern[pi]
        if token == "#":
            states.add((pi + 1, wi))
            if wi < nw:
                states.add((pi, wi + 1))
        elif wi < nw and (token == "*" or token == words[wi]):
            states.add((pi + 1, wi + 1))
    return False


@attrs.define(eq=False)
class Binding:
    queue: str
    key: str
    arguments: dict[str, Any]
    words: tuple[str, ...]


@attrs.define(eq=False)
class Exchange:
    name: str
    type: ExchangeType
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any]
    bindings: list[Binding] = attrs.Factory(list)
    _routes: dict[str, tuple[str, ...]] = attrs.Factory(dict)

    def bind(self, queue: str, key: str, arguments: dict[str, Any]) -> None:
        for b in self.bindings:
            if b.queue == queue and b.key == key and b.arguments == arguments:
                return
        self.bindings.append(Binding(queue, key, arguments, split_topic(key)))
        self._routes.clear()

    def unbind(self, queue: str, key: str, arguments: dict[str, Any]) -> bool:
        before = len(self.bindings)
        self.bindings = [
            b
            for b in self.bindings
            if not (b.queue == queue and b.key == key and b.arguments == arguments)
        ]
        self._routes.clear()
        return len(self.bindings) != before

    def unbind_queue(self, queue: str) -> bool:
        before = len(self.bindings)
        self.bindings = [b for b in self.bindings if b.queue != queue]
        self._routes.clear()
        return len(self.bindings) != before

    def route(self, routing_key: str) -> tuple[str, ...]:
        """Return the names of the queues a message with *routing_key* goes to."""
        routes = self._routes.get(routing_key)
        if routes is not None:
            return routes
        if self.type is ExchangeType.FANOUT:
            names = [b.queue for b in self.bindings]
        elif self.type is ExchangeType.DIRECT:
            names = [b.queue for b in self.bindings if b.key == routing_key]
        else:
            words = split_topic(routing_key)
            names = [b.queue for b in self.bindings if topic_matches(b.words, words)]
        routes = tuple(dict.fromkeys(names))  # each queue once, in binding order
        if len(self._routes) > 10_000:
            self._routes.clear()
        self._routes[routing_key] = routes
        return routes
