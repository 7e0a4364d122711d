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
html_theme = "alabaster"
exclude_patterns = ["_build"]
