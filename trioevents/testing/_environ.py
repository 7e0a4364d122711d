"""Environment switches of the testing kit and of the project's own tests."""

from __future__ import annotations

import os

__all__ = ["env_flag"]

_TRUE = frozenset({"1", "true", "yes", "on"})


def env_flag(name: str) -> bool:
    """Whether environment variable *name* is set to ``1`` (or true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in _TRUE
