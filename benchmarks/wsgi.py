"""The WSGI app gunicorn serves: ``gunicorn benchmarks.wsgi:app``."""

from __future__ import annotations

from benchmarks.app import create_app

app = create_app()
