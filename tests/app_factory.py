"""Build the Flask app the tests and the test worker share."""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, request

from flask_jobtastic import Jobtastic


def create_app(servers: Mapping[str, str] | None = None, **config: Any) -> Flask:
    """The test app on the servers named by ``JOBTASTIC_TEST_*`` in ``servers``
    (the environment by default, which is how the worker gets them); the
    queue is ``JOBTASTIC_TEST_QUEUE``, Celery's default when unset."""
    env = os.environ if servers is None else servers
    app = Flask("tests")
    app.config.update(
        TESTING=True,
        # the suite runs jobs on real workers, not in the test process
        JOBTASTIC_RUN_SYNCHRONOUSLY=False,
        CELERY={
            "broker_url": env["JOBTASTIC_TEST_BROKER_URL"],
            "result_backend": env["JOBTASTIC_TEST_BACKEND_URL"],
            "broker_connection_retry_on_startup": True,
            "task_default_queue": env.get("JOBTASTIC_TEST_QUEUE") or "celery",
        },
        JOBTASTIC_CACHE={
            "CACHE_TYPE": "flask_jobtastic.cache.PyMemcacheCache",
            "CACHE_MEMCACHED_SERVERS": [env["JOBTASTIC_TEST_MEMCACHED"]],
        },
        JOBTASTIC_PROGRESS_INTERVAL=float(os.environ.get("JOBTASTIC_TEST_INTERVAL", "0.1")),
    )
    if "JOBTASTIC_TEST_STARTED_DELAY" in env:  # a worker of a test's own may set it
        app.config["JOBTASTIC_STARTED_DELAY"] = float(env["JOBTASTIC_TEST_STARTED_DELAY"])
    owner_header = config.pop("owner_header", None)
    app.config.update(config)
    extension = Jobtastic(app)
    if owner_header:
        # the "current user" is whoever the test request says it is
        extension.owner_loader(lambda: request.headers.get(owner_header))
    import tests.canvas_tasks  # noqa: F401  registers the parts of canvases
    import tests.tasks  # noqa: F401  registers the test jobs

    return app


def close_app(app: Flask) -> None:
    """Close the sockets a test app's Celery opened, so none leak into other tests."""
    state = app.extensions.get("jobtastic")
    if state is None:
        return
    gc.collect()  # results unsubscribe when collected: let them, before closing
    celery = state.celery
    celery.close()
    backend = celery.backend
    client = getattr(backend, "client", None)
    if client is not None and hasattr(client, "connection_pool"):
        client.connection_pool.disconnect()
    consumer = getattr(backend, "result_consumer", None)
    pubsub = getattr(consumer, "_pubsub", None)
    if pubsub is not None:
        pubsub.close()
