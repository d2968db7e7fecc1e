"""Sphinx configuration of the evo_mpi documentation site.

Build it with ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``
(warnings are errors, nitpicky: every cross-reference must resolve).
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _version
from typing import Any

sys.path.insert(0, os.path.abspath(".."))

project = "evo_mpi"
author = "evo_mpi developers"
copyright = "2026, evo_mpi developers"
release = _version("evo-mpi")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# docs/data holds the studies' raw outputs (scripts write there), docs/img the figures.
exclude_patterns = ["_build", "data", "img", "Thumbs.db", ".DS_Store"]

# Markdown: GitHub-style heading anchors so that links such as [x](outputs.md#checkpoints) resolve.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4

nitpicky = True
# Types in signatures that belong to other projects and have no page to link to here.
nitpick_ignore_regex = [
    ("py:class", r"(enum|numpy|np|torch|gymnasium|stable_baselines3|mpi4py|argparse|collections\.abc|typing)\..*"),
    ("py:class", r"(Any|Callable|Sequence|Mapping|Iterator|Iterable|NDArray|Path|PathLike)"),
    ("py:class", r"(ndarray|Tensor|Generator|BaseAlgorithm|VecEnv|Env|Module|Optimizer)"),
]

# Names that annotations use for a documented object: the class is documented where users import it.
_ALIASES = {
    "evo_mpi.config.Config": "evo_mpi.Config",
    "evo_mpi.config.schema.Config": "evo_mpi.Config",
    "Config": "evo_mpi.Config",
    "Value": "evo_mpi.space.Value",
}


def _resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    target = _ALIASES.get(node.get("reftarget", ""))
    if target is None or node.get("refdomain") != "py":
        return None
    node["reftarget"] = target
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, "obj", target, node, contnode)


def setup(app: Any) -> None:
    """Resolve the aliases above."""
    app.connect("missing-reference", _resolve_alias)


autodoc_default_options = {"show-inheritance": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "sphinx_rtd_theme"
html_title = "evo_mpi"
html_static_path: list[str] = []
