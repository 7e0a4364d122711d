"""Testing helpers for trioevents: the transport conformance suite and more."""

from __future__ import annotations
