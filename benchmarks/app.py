"""The Flask app every benchmark process shares: ours, and what a user writes by hand.

Configured from ``BENCH_*`` environment variables, which ``benchmarks.env``
sets to its throwaway servers before starting the worker and gunicorn.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from flask import Flask, jsonify
from tqdm import tqdm

from flask_jobtastic import Jobtastic

#: ``app.extensions`` key holding the plain Celery tasks.
PLAIN = "benchmarks_plain"


def create_app() -> Flask:
    """Redis broker and result backend, memcached cache, library defaults otherwise."""
    app = Flask("benchmarks")
    app.config.update(
        CELERY={
            "broker_url": os.environ["BENCH_BROKER_URL"],
            "result_backend": os.environ["BENCH_BACKEND_URL"],
            "broker_connection_retry_on_startup": True,
        },
        JOBTASTIC_CACHE={
            "CACHE_TYPE": "flask_jobtastic.cache.PyMemcacheCache",
            "CACHE_MEMCACHED_SERVERS": [os.environ["BENCH_MEMCACHED"]],
        },
    )
    if os.environ.get("BENCH_EVENTS_MAX"):  # P8's thousands of streams on one process
        bound = int(os.environ["BENCH_EVENTS_MAX"])
        app.config.update(
            JOBTASTIC_EVENTS_MAX_PER_PROCESS=bound, JOBTASTIC_EVENTS_MAX_PER_OWNER=bound
        )
    Jobtastic(app)
    import benchmarks.tasks  # noqa: F401  registers the jobtastic jobs

    celery = app.extensions["jobtastic"].celery
    app.extensions[PLAIN] = _plain_tasks(celery)
    _hand_written_views(app, celery)
    return app


def _plain_tasks(celery: Celery) -> dict[str, Any]:
    """What a user writes without the library: ``@celery.task`` on the same app."""

    @celery.task(name="benchmarks.plain.double")
    def plain_double(x: int) -> int:
        return x * 2

    @celery.task(name="benchmarks.plain.loop", bind=True)
    def plain_loop(self: Any, mode: str, n: int) -> float:
        """A loop of ``n`` items: bare, with tqdm, or ``update_state`` per item (Flask docs)."""
        if mode == "bare":
            started = time.perf_counter()
            for _ in range(n):
                pass
            return time.perf_counter() - started
        if mode == "tqdm":
            with open(os.devnull, "w") as null:
                bar = tqdm(total=n, file=null, disable=False)
                update = bar.update
                started = time.perf_counter()
                for _ in range(n):
                    update(1)
                elapsed = time.perf_counter() - started
                bar.close()
            return elapsed
        if mode == "update_state":
            started = time.perf_counter()
            for i in range(n):
                self.update_state(state="PROGRESS", meta={"current": i + 1, "total": n})
            return time.perf_counter() - started
        raise ValueError(f"unknown mode {mode!r}")

    return {"double": plain_double, "loop": plain_loop}


def _hand_written_views(app: Flask, celery: Celery) -> None:
    @app.get("/raw/status/<task_id>")
    def raw_status(task_id: str) -> Any:
        """The status view a user writes by hand, the Flask docs' way."""
        result = celery.AsyncResult(task_id)
        return jsonify({"task_id": task_id, "state": result.state, "info": result.info})

    @app.get("/bench/ping")
    def ping() -> Any:
        return "ok"
