"""The Celery app of the benchmark worker: ``celery -A benchmarks.worker worker``."""

from __future__ import annotations

from benchmarks.app import create_app

flask_app = create_app()
celery = flask_app.extensions["jobtastic"].celery
