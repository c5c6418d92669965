"""Entry point of the real Celery worker the suite starts: ``celery -A tests.worker_app``."""

from __future__ import annotations

from tests.app_factory import create_app

flask_app = create_app()
celery = flask_app.extensions["jobtastic"].celery
