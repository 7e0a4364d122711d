"""Payloads that would run code if anything ever loaded them; none ever should.

A pickle of :class:`Detonator`, or a YAML document tagged
``!!python/object/apply:tests.support.detonator.detonate``, calls :func:`detonate`
when loaded by an unsafe codec, which appends to :data:`detonations`. A test
that feeds them to trioevents asserts afterwards that :data:`detonations` is
still empty.
"""

from __future__ import annotations

import pickle

#: How each detonation happened, in order; empty unless something ran a payload.
detonations: list[str] = []

#: A YAML document that calls ``detonate(how)`` if an unsafe loader reads it.
YAML_TAG = "!!python/object/apply:tests.support.detonator.detonate"


def detonate(how: str) -> str:
    """What a pickle or YAML body would call if anything ever loaded it."""
    detonations.append(how)
    return how


class Detonator:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return detonate, ("pickle",)


def pickled() -> bytes:
    """A pickle that calls ``detonate("pickle")`` when unpickled."""
    return pickle.dumps(Detonator())


def yaml_document(how: str, key: str | None = None) -> str:
    """A YAML document that calls ``detonate(how)`` when loaded unsafely."""
    value = f"{YAML_TAG} [{how!r}]"
    return f"{key}: {value}\n" if key else f"{value}\n"
