"""The Celery app for a separate worker process: ``celery -A example_app.worker worker``.

Only useful with real servers (``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``
and ideally ``MEMCACHED_SERVERS`` set the same as for the web process): in
the no-servers mode the web process runs its jobs itself.
"""

from __future__ import annotations

from . import create_app, jobtastic

flask_app = create_app()

with flask_app.app_context():
    celery = jobtastic.celery
