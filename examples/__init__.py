"""Runnable examples: ``trioevents run examples.shop``."""
