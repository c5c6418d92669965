"""Build the Flask app the tests and the test worker share."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from flask_jobtastic import Jobtastic


def create_app(**config: Any) -> Flask:
    app = Flask("tests")
    app.config.update(
        TESTING=True,
        CELERY={
            "broker_url": os.environ["JOBTASTIC_TEST_BROKER_URL"],
            "result_backend": os.environ["JOBTASTIC_TEST_BACKEND_URL"],
            "broker_connection_retry_on_startup": True,
        },
        JOBTASTIC_CACHE={
            "CACHE_TYPE": "flask_jobtastic.cache.PyMemcacheCache",
            "CACHE_MEMCACHED_SERVERS": [os.environ["JOBTASTIC_TEST_MEMCACHED"]],
        },
        JOBTASTIC_PROGRESS_INTERVAL=float(os.environ.get("JOBTASTIC_TEST_INTERVAL", "0.1")),
    )
    app.config.update(config)
    Jobtastic(app)
    import tests.tasks  # noqa: F401  registers the test jobs

    return app
