"""Optional features and the extras that install them: one wording for every error.

The core needs none of these packages; a feature that does says which extra to
install when its package is missing::

    otel        opentelemetry-api                tracing (trioevents.otel)
    prometheus  prometheus-client                metrics (trioevents.prometheus)
    http        hypercorn, prometheus-client     HTTP_ADDRESS / run --http
"""

from __future__ import annotations

import importlib

from ._exceptions import ConfigurationError

__all__ = ["extra_missing", "needs_extra"]


def needs_extra(what: str, extra: str, cause: ImportError) -> str:
    """Say that *what* needs *extra*, and how to install it; *cause* says what failed."""
    return (
        f"{what} needs the {extra!r} extra: pip install 'trioevents[{extra}]' ({cause})"
    )


def extra_missing(what: str, extra: str, *modules: str) -> ConfigurationError | None:
    """Return the error for using *what* without *extra*, or ``None`` if installed.

    Parameters
    ----------
    what
        The feature as the user asked for it (``"HTTP_ADDRESS"``).
    extra
        The extra that installs *modules*.
    modules
        The modules the feature imports.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return ConfigurationError(needs_extra(what, extra, exc))
    return None
