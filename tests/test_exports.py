"""The public API: ``__all__`` is sorted, complete, and names show as ``trioevents.X``."""

from __future__ import annotations

import trioevents
import trioevents.abc
import trioevents.testing


def _public(module: object) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, type(trioevents))
        and name != "annotations"
    }


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions.
    group = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return group, name


def test_all_is_sorted() -> None:
    assert trioevents.__all__ == sorted(trioevents.__all__, key=_isort_key)


def test_all_lists_every_public_name() -> None:
    assert set(trioevents.__all__) == _public(trioevents)


def test_exported_classes_claim_the_top_level_module() -> None:
    for name in trioevents.__all__:
        obj = getattr(trioevents, name)
        if isinstance(obj, type):
            assert obj.__module__ == "trioevents", name


def test_testing_all_is_sorted_and_complete() -> None:
    names = trioevents.testing.__all__
    assert names == sorted(names, key=_isort_key)
    assert set(names) == _public(trioevents.testing)


def test_abc_exports_the_seam() -> None:
    assert set(trioevents.abc.__all__) == {"Connection", "Consumer", "Transport"}
