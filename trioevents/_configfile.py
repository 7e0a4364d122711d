"""Where config values come from: YAML with ``${VAR:default}``, and the environment.

Each source is read into a :class:`Layer`: nameko keys and their values as the
source gives them, where each came from, and which values came from environment
variables (such a value is never shown in an error: it may be a password).
:mod:`trioevents._config` stacks the layers (defaults < file < environment <
command-line flags) and checks the result.

Reading a value as YAML follows nameko's rule (``${PORT:5672}`` is the integer
5672), with one exception that keeps secrets whole: text that YAML would read
as a mapping or a list, would cut short at a ``#`` (a comment), or cannot read
at all stays the text it is, with a warning naming the line and the variables,
never the value.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import os
import re
from collections.abc import Collection, Mapping
from typing import IO, Any, Final, final

import attrs

from ._exceptions import ConfigurationError

__all__ = [
    "ENV_PREFIX",
    "Layer",
    "closest",
    "environ_layer",
    "expand_env_vars",
    "import_yaml",
    "read_yaml_value",
    "yaml_layer",
]

logger = logging.getLogger("trioevents.config")

#: ``TRIOEVENTS_AMQP_URI``, ``TRIOEVENTS_MAX_WORKERS``, ...: a config key, upper case.
ENV_PREFIX: Final = "TRIOEVENTS_"
_NEAR_MISS_CUTOFF: Final = 0.85


@final
@attrs.frozen
class Layer:
    """One source of config values.

    Attributes
    ----------
    name
        The source as the user knows it: ``"config.yaml"``, ``"environment"``,
        ``"--broker"``.
    values
        Keys and values as the source gives them (not checked yet).
    sources
        Key -> where its value came from, where finer than :attr:`name`
        (``"TRIOEVENTS_MAX_WORKERS"``).
    hidden
        Key -> the environment variables its value came from (``"${PASSWORD}"``,
        ``"$TRIOEVENTS_AMQP_URI"``): errors name them instead of the value.
    """

    name: str
    values: Mapping[Any, Any]
    sources: Mapping[str, str] = attrs.field(factory=dict)
    hidden: Mapping[str, str] = attrs.field(factory=dict)

    def source_of(self, key: str) -> str:
        """Where the value of *key* came from."""
        return self.sources.get(key, self.name)


def closest(name: str, known: Collection[str]) -> str | None:
    """Return the name of *known* that *name* is a near miss of, if any.

    A name differing only in case, or close enough by :mod:`difflib`
    (``AMQP_URL`` for ``AMQP_URI``, ``max_worker`` for ``max_workers``).
    """
    by_lower = {candidate.lower(): candidate for candidate in known}
    match = difflib.get_close_matches(
        name.lower(), by_lower, n=1, cutoff=_NEAR_MISS_CUTOFF
    )
    return by_lower[match[0]] if match else None


# --------------------------------------------------------------------- YAML


def import_yaml() -> Any:
    """Import PyYAML (untyped: it is only touched here, at the boundary)."""
    try:
        return importlib.import_module("yaml")
    except ImportError as exc:  # pragma: no cover - a dependency of trioevents
        raise ConfigurationError(
            "reading YAML config needs PyYAML: pip install pyyaml"
        ) from exc


def read_yaml_value(text: str, *, collections: bool = False) -> tuple[Any, str | None]:
    """Read *text* as one YAML value, as nameko reads an expanded ``${VAR}``.

    Returns the value and ``None``, or *text* itself and why it was not read:
    YAML would cut it short (a ``#`` starting a comment), read a mapping or a list
    (unless *collections*), or cannot read it.
    """
    yaml = import_yaml()
    try:
        loader = yaml.SafeLoader(text)  # may raise: it checks the characters
    except yaml.YAMLError:
        return text, "is not valid YAML"
    try:
        node = loader.get_single_node()
        if node is None:
            if text.strip():
                return text, "YAML would read as a comment (it starts with '#')"
            return None, None
        if node.end_mark.index < len(text.rstrip()):
            return text, "a '#' would cut short (YAML reads the rest as a comment)"
        if not collections and not isinstance(node, yaml.ScalarNode):
            kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
            return text, f"YAML would read as a {kind}"
        return loader.construct_document(node), None
    except yaml.YAMLError:
        return text, "is not valid YAML"
    finally:
        loader.dispose()


_ENV_VAR_TAG: Final = "!env_var"
# nameko's IMPLICIT_ENV_VAR_MATCHER: the plain scalars that get the tag.
_IMPLICIT_ENV_VAR: Final = re.compile(r".*\$\{.*\}.*")
_REFERENCE: Final = re.compile(r"\$\{([^{}:\s]+)")


def _references(raw: str) -> str:
    """``${A}, ${B}``: the variables *raw* refers to (defaults included)."""
    names = dict.fromkeys(_REFERENCE.findall(raw))
    return ", ".join(f"${{{name}}}" for name in names) or repr(raw)


@functools.cache
def _env_var_loader() -> Any:
    """Return a SafeLoader subclass that expands ``${VAR:default}`` like nameko.

    A subclass, so the global PyYAML loaders are left as they are (nameko
    registers its constructor on them). An instance's ``trioevents_where`` names
    the source in warnings.
    """
    yaml = import_yaml()

    def construct(loader: Any, node: Any) -> Any:
        raw = loader.construct_scalar(node)
        value, why = read_yaml_value(expand_env_vars(raw))
        if why is not None:
            logger.warning(
                "%s, line %d: %s expands to text that %s; it is kept as text",
                loader.trioevents_where,
                node.start_mark.line + 1,
                _references(raw),
                why,
            )
        return value

    loader_cls: Any = type(
        "EnvVarSafeLoader", (yaml.SafeLoader,), {"trioevents_where": "the config"}
    )
    loader_cls.add_constructor(_ENV_VAR_TAG, construct)
    loader_cls.add_implicit_resolver(_ENV_VAR_TAG, _IMPLICIT_ENV_VAR, None)
    return loader_cls


def _env_references(node: Any) -> dict[str, str]:
    """Top-level key -> the variables its value expands (from the composed tree)."""
    yaml = import_yaml()
    if not isinstance(node, yaml.MappingNode):
        return {}
    hidden: dict[str, str] = {}
    for key_node, value_node in node.value:
        raw = [n.value for n in _walk(yaml, value_node) if n.tag == _ENV_VAR_TAG]
        if raw and isinstance(key_node.value, str):
            hidden[key_node.value] = _references(" ".join(raw))
    return hidden


def _walk(yaml: Any, node: Any) -> list[Any]:
    """Every scalar node under *node*."""
    if isinstance(node, yaml.ScalarNode):
        return [node]
    children = node.value
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in children for child in pair]
    return [scalar for child in children for scalar in _walk(yaml, child)]


def _yaml_error(where: str, text: str, exc: Exception) -> str:
    """One line for a YAML error: the source, line and column, and the problem.

    PyYAML's own message names ``"<unicode string>"`` and quotes the text
    around the error; this one does neither.
    """
    yaml = import_yaml()
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or type(exc).__name__
        if exc.context and exc.problem:
            what += f" ({exc.context})"
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    elif isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        what = f"character #x{exc.character:04x}: {exc.reason}"
    else:  # pragma: no cover - every PyYAML error is one of the above
        return f"{where} is not valid YAML: {exc}"
    at = f", line {line}, column {column}" if line else ""
    return f"{where}{at}: not valid YAML: {what}"


def yaml_layer(source: str | os.PathLike[str] | IO[str]) -> Layer:
    """Read YAML config from a path, an open file or text (see ``Config.from_yaml``).

    Raises
    ------
    ConfigurationError
        The file cannot be read, or the YAML is invalid or not a mapping.
    """
    where, name = "the config", "YAML"
    if isinstance(source, os.PathLike):
        name = os.fspath(source)
        where = f"config file {name!r}"
        try:
            with open(source, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read {where}: {exc}") from exc
    elif isinstance(source, str):
        text = source
    else:
        name = str(getattr(source, "name", "<stream>"))
        where = f"config file {name!r}"
        text = source.read()
    yaml = import_yaml()
    loader = None
    try:
        loader = _env_var_loader()(text)  # may raise: it checks the characters
        loader.trioevents_where = where
        node = loader.get_single_node()
        loaded = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigurationError(_yaml_error(where, text, exc)) from exc
    finally:
        if loader is not None:
            loader.dispose()
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        hint = (
            " (to read a file, pass a pathlib.Path)" if isinstance(source, str) else ""
        )
        raise ConfigurationError(
            f"{where} must be a YAML mapping of keys to values, got "
            f"{type(loaded).__name__}{hint}"
        )
    return Layer(name, loaded, hidden=_env_references(node))


# -------------------------------------------------------------- environment


def environ_layer(
    environ: Mapping[str, str], keys: Collection[str], *, text_keys: Collection[str]
) -> Layer:
    """Read ``TRIOEVENTS_<KEY>`` variables for the config *keys*.

    The value of a key in *text_keys* is taken as it is; any other is read as
    YAML (``8`` is a number, ``true`` a boolean, ``null`` nothing,
    ``{ca_certs: ca.pem}`` a mapping). An empty variable counts as unset. A
    variable that is a near miss of one (``TRIOEVENTS_AMQP_URL``) is logged as a
    warning; other ``TRIOEVENTS_`` variables are not ours to judge.
    """
    by_variable = {ENV_PREFIX + key.upper(): key for key in keys}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for variable, text in environ.items():
        if not variable.upper().startswith(ENV_PREFIX) or not text:
            continue
        key = by_variable.get(variable)
        if key is None:
            near = closest(variable, by_variable)
            if near is not None:
                logger.warning(
                    "environment variable %s is not a trioevents setting; did you "
                    "mean %s? (names are case-sensitive)",
                    variable,
                    near,
                )
            continue
        values[key] = (
            text if key in text_keys else read_yaml_value(text, collections=True)[0]
        )
        sources[key] = variable
    hidden = {key: f"${variable}" for key, variable in sources.items()}
    return Layer("environment", values, sources=sources, hidden=hidden)


# ------------------------------------------------------------------ ${VAR}


def expand_env_vars(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:default}`` in *text* (nameko's rules).

    ``VAR`` (no ``{``, ``}``, ``:`` or white space) is read from *environ*
    (:data:`os.environ` by default) and used as it is. If unset, the default is
    used, itself expanded, so defaults may hold ``${...}`` and braces; with no
    default the result is the empty string. Text that is not a well-formed
    ``${VAR...}`` is left as it is.
    """
    env = os.environ if environ is None else environ
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("${", pos)
        if start == -1:
            out.append(text[pos:])
            return "".join(out)
        parsed = _parse_reference(text, start + 2)
        if parsed is None:
            out.append(text[pos : start + 2])
            pos = start + 2
            continue
        name, default, end = parsed
        out.append(text[pos:start])
        value = env.get(name)
        if value is None:
            value = expand_env_vars(default, env) if default else ""
        out.append(value)
        pos = end


def _parse_reference(text: str, pos: int) -> tuple[str, str | None, int] | None:
    """Parse ``NAME[:default]}`` at *pos*; return name, default and end, or None."""
    name_end = pos
    while (
        name_end < len(text)
        and text[name_end] not in "{}:"
        and not text[name_end].isspace()
    ):
        name_end += 1
    if name_end == pos or name_end == len(text):
        return None
    name = text[pos:name_end]
    if text[name_end] == "}":
        return name, None, name_end + 1
    if text[name_end] != ":":
        return None
    depth = 0
    for index in range(name_end + 1, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return name, text[name_end + 1 : index], index + 1
            depth -= 1
    return None
