"""Where the widget's static files and templates are, and the tags to load them.

They live at the top of the repository (``static/``, ``templates/``) and are
installed into the wheel as ``flask_jobtastic/static`` and
``flask_jobtastic/templates``; both layouts are found.
"""

from __future__ import annotations

from pathlib import Path

from flask import url_for
from markupsafe import Markup

_PACKAGE = Path(__file__).resolve().parent


def asset_dir(name: str) -> str:
    """``static`` or ``templates``: inside the installed package, else the checkout."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return str(candidate)
    raise RuntimeError(f"flask-jobtastic's {name}/ folder is missing from the installation")


def jobtastic_assets() -> Markup:
    """The ``<link>`` and ``<script>`` tags of the widget, for a page's ``<head>``."""
    css = url_for("jobtastic.static", filename="jobtastic.css")
    js = url_for("jobtastic.static", filename="jobtastic.js")
    return Markup(
        f'<link rel="stylesheet" href="{Markup.escape(css)}">\n'
        f'<script src="{Markup.escape(js)}" defer></script>'
    )
