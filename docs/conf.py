"""Sphinx configuration for the trioevents docs."""

from __future__ import annotations

import trioevents

project = "trioevents"
author = "the trioevents developers"
copyright = "2026, the trioevents developers"  # noqa: A001 - Sphinx's name
release = trioevents.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinxcontrib_trio",
]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_typehints = "description"
nitpicky = True
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
# No network in CI, so no intersphinx inventories: names from other projects and
# the standard library cannot be cross-referenced and are not reported.
nitpick_ignore_regex = [
    (
        "py:.*",
        r"(trio|attrs|cattrs|typing|collections|contextlib|datetime|enum|ssl)\..*",
    ),
    ("py:.*", r"(os|pathlib|logging|yaml|BaseException)\..*"),
    ("py:.*", r"unittest\..*"),  # worker_factory's mocks
    # the extras' packages (trioevents.otel, trioevents.prometheus)
    ("py:.*", r"(opentelemetry|prometheus_client)\..*"),
    ("py:.*", r"(trace\.)?(TracerProvider|TextMapPropagator|CollectorRegistry)"),
    ("py:.*", r"trioevents\._\w+\.[A-Z]"),  # TypeVars of private modules
    ("py:.*", r"(StandaloneDispatch|MemoryConnection|masked_uri|TRANSPORT_CHECKS)"),
    # internals of the RabbitMQ transport that its public classes' docs name
    ("py:.*", r"(ProtocolConnection|ChannelMux|Channel|open_amqp_connection)"),
    ("py:.*", r"(Any|Self|T|F|Mapping|Sequence|Callable|Awaitable|AsyncIterator)"),
    ("py:.*", r"(bool|int|str|bytes|float|dict|list|tuple|type|object|None)"),
    ("py:.*", r"(BaseException|Exception|ValueError|TypeError)"),
    ("py:.*", r"(AbstractAsyncContextManager|TracebackType|Dispatch|Settler)"),
    # call signatures (typing.Protocol) described in the prose of their users
    ("py:.*", r"(WorkerHook|RunWorker)"),
]
html_theme = "alabaster"
exclude_patterns = ["_build"]
