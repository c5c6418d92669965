"""Sphinx configuration of the flask-jobtastic docs: ``make docs``.

Built with warnings as errors (``python -m sphinx -W --keep-going -n``) by
``make test``. Pages are Markdown (MyST); the API pages come from the
docstrings (autodoc), the status document and the endpoints from the shipped
``flask_jobtastic/openapi.json`` (``_ext/jobtastic_contract.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

project = "flask-jobtastic"
author = "flask-jobtastic contributors"
copyright = "flask-jobtastic contributors, MIT licensed"  # noqa: A001  (Sphinx's name)
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "jobtastic_contract",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []

# Markdown: ``(label)=`` targets and heading anchors for links within the site.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Docstrings are plain prose with ``code``, no Google/NumPy sections.
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
add_module_names = False

# Nitpicky (-n): every reference must resolve. The build is offline (no
# intersphinx inventories), so references to third-party types in signatures
# (Celery, Flask, flask-caching, pymemcache, kombu, and the standard library's
# datetime and collections.abc) are ignored, for those modules only: ours must
# all resolve.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(celery|kombu|flask|flask_caching|pymemcache)(\..+)?"),
    (r"py:.*", r"(datetime|collections\.abc)\..+"),
    # the same classes, where a signature shows them by their bare names
    (r"py:class", r"Flask|Celery|Cache"),
]

html_theme = "furo"
html_title = "flask-jobtastic"
html_static_path: list[str] = []
html_theme_options = {
    "source_repository": "https://github.com/flask-jobtastic/flask-jobtastic/",
    "source_branch": "main",
    "source_directory": "docs/",
}
