"""Secrets in configuration: which keys hold one, and values fit to show.

Everything that prints configuration (``show-config``, errors, ``repr``) shows
values through :func:`masked_value`; URIs are masked by :mod:`._uri`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ._uri import masked_uri

__all__ = ["MASK", "is_secret_key", "masked_repr", "masked_value"]

#: What a secret value shows as.
MASK: Final = "****"
# Anywhere in a key: DBPASSWORD, client_secret, AUTH_TOKEN, aws_credentials.
_SECRET_PARTS: Final = ("password", "passwd", "secret", "token", "credential")
# As a word of a key: DB_PASS, API_KEY, privateKey, SENTRY_DSN (not KEYFILE).
_SECRET_WORDS: Final = frozenset({"pass", "pwd", "passphrase", "key", "apikey", "dsn"})
_WORD: Final = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def is_secret_key(key: str) -> bool:
    """Whether a config key names a secret (``DB_PASSWORD``, ``API_KEY``, ...)."""
    lowered = key.lower()
    if any(part in lowered for part in _SECRET_PARTS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORD.findall(key))


def masked_value(value: Any, key: str = "", *, secret: bool = False) -> Any:
    """Return *value* fit to show: secrets masked, all the way down.

    The value of a secret-looking key (:func:`is_secret_key`), and everything
    under it, shows as ``****`` (``None``, ``""`` and booleans show as they are:
    they tell nothing). A string holding a URI with a password shows with the
    password masked (:func:`~trioevents._uri.masked_uri`), under any key.
    """
    secret = secret or is_secret_key(key)
    if isinstance(value, Mapping):
        return {
            name: masked_value(
                item, name if isinstance(name, str) else "", secret=secret
            )
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked_value(item, key, secret=secret) for item in value]
    if secret and value is not None and value != "" and not isinstance(value, bool):
        return MASK
    if isinstance(value, str) and _may_hold_credentials(value):
        return masked_uri(value)
    return value


def _may_hold_credentials(text: str) -> bool:
    # "amqp://u:pw@host", and the mistyped "u:pw@host/"; not prose with an "@".
    return "://" in text or ("@" in text and not any(c.isspace() for c in text))


def masked_repr(value: Any) -> str:
    """``repr`` of *value* with its secrets masked (see :func:`masked_value`)."""
    return repr(masked_value(value))
