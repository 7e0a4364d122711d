"""Exchanges and routing of the embedded broker (``trioevents._memory._routing``)."""

from __future__ import annotations

import pytest

from trioevents._memory._routing import split_topic, topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("*", "a", True),
        ("*", "", False),
        ("*", "a.b", False),
        ("#", "", True),
        ("#", "a.b.c", True),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("a.#", "b.a", False),
        ("#.a", "a", True),
        ("#.a", "x.y.a", True),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b", True),
        ("a.*.#", "a.b.c.d", True),
        ("#.#", "", True),
        ("#.#", "a.b", True),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y.c", False),
        ("*.*", ".", True),
        ("*", ".", False),
        ("a..b", "a..b", True),
        ("a.*.b", "a..b", True),
        ("a.#", "a.", True),
        ("", "", True),
        ("", "a", False),
        ("order_placed", "order_placed", True),
        ("order.*", "order.placed", True),
    ],
)
def test_topic_matching_follows_rabbitmq(
    pattern: str, key: str, expected: bool
) -> None:
    assert topic_matches(split_topic(pattern), split_topic(key)) is expected


def test_empty_key_has_no_words() -> None:
    assert split_topic("") == ()
    assert split_topic(".") == ("", "")
