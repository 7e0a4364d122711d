"""Testing helpers for trioevents: the transport conformance suite and more."""

from __future__ import annotations

from ._conformance import (
    TRANSPORT_CHECKS as TRANSPORT_CHECKS,
    check_transport as check_transport,
)

__all__ = ["TRANSPORT_CHECKS", "check_transport"]
