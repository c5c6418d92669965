"""Documented defaults for every ``JOBTASTIC_*`` config key.

Each constant is the value ``init_app`` puts into ``app.config`` with
``setdefault`` when the application left the key unset.
"""

from __future__ import annotations

from typing import Any

#: Where the blueprint is mounted (status, batch status, event stream).
URL_PREFIX = "/jobtastic"

#: flask-caching settings for the cache built when no ``Cache`` is passed to
#: ``Jobtastic(cache=...)``. The in-process default only deduplicates inside
#: one process; production uses memcached or Redis.
CACHE: dict[str, Any] = {"CACHE_TYPE": "SimpleCache"}

#: Minimum seconds between two PROGRESS writes to the result backend.
PROGRESS_INTERVAL = 0.5

#: Seconds a job runs before it shows PROGRESS 0 on its own. A job that ends
#: sooner goes from PENDING to its result without that write, which no poll
#: could have seen; a job that reports progress or steps earlier shows 0 first
#: all the same. 0 writes PROGRESS 0 the moment every job starts.
STARTED_DELAY = 0.1

#: Weight of the newest rate sample in the smoothed ETA (0 < alpha <= 1).
PROGRESS_SMOOTHING = 0.3

#: How hard a publish retries before the broker counts as down. Kept short so
#: ``delay_or_fail`` / ``delay_or_eager`` answer within a second of a refused
#: connection instead of Celery's default retry loop.
PUBLISH_RETRY_POLICY: dict[str, float] = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.1,
    "interval_max": 0.1,
}

#: Put the exception's own message in FAILURE documents. Off by default: users
#: see a generic message and an error id unless the task raised ``JobFailed``.
EXPOSE_ERRORS = False

#: Most ids one batch status request may ask for.
BATCH_LIMIT = 100

#: Seconds between event-stream heartbeats (an SSE comment line).
EVENTS_HEARTBEAT = 15.0

#: Server-side poll interval of the event stream for result backends that
#: cannot publish changes (anything but Redis).
EVENTS_POLL_INTERVAL = 0.25

#: Longest life of one event stream; the browser reconnects afterwards.
EVENTS_MAX_SECONDS = 600.0

#: Most event streams one owner (or, for requests without an owner, one
#: client address) may hold open in one web process; beyond it the stream
#: answers 429 and the widget polls. 4 also keeps one browser under its six
#: connections per host, which more open streams would use up.
EVENTS_MAX_PER_OWNER = 4

#: Most event streams one web process holds open, whoever asks. Each holds
#: a thread: keep it well below the server's threads per process (16 leaves
#: half of ``gunicorn -k gthread --threads 32`` to every other request).
EVENTS_MAX_PER_PROCESS = 16

#: Start a Celery worker thread inside the web process. ``None`` means "only
#: when the broker is the in-memory one", the no-servers embedded mode.
EMBEDDED_WORKER: bool | None = None

#: Threads of the embedded worker.
EMBEDDED_WORKER_CONCURRENCY = 4

#: Run every job in the process that sends it, at once, its progress and
#: result stored as a worker would (Celery's ``task_always_eager``, with the
#: results kept). ``None`` means "when ``app.testing`` is on", as flask-rq does.
RUN_SYNCHRONOUSLY: bool | None = None

#: Celery settings used when ``app.config["CELERY"]`` is missing: an in-memory
#: broker and result store, good for a demo or tests in one process.
CELERY_EMBEDDED: dict[str, Any] = {
    "broker_url": "memory://localhost/",
    "result_backend": "cache+memory://",
}

#: The per-user job registry: ``"auto"`` (Redis when the result backend is
#: Redis, in-memory with the embedded in-memory backend, else off), ``"memory"``,
#: a ``redis://``, ``rediss://`` or ``sentinel://`` URL, or ``None`` to turn it off.
REGISTRY: str | None = "auto"

#: The Sentinel master of a ``sentinel://`` ``REGISTRY``; ``None``: the result
#: backend's ``result_backend_transport_options["master_name"]``.
REGISTRY_MASTER_NAME: str | None = None

#: Seconds a finished job stays listed after its owner saw it.
REGISTRY_SEEN_TTL = 120.0

#: Seconds a finished job nobody saw stays listed (and the longest any record lives).
REGISTRY_UNSEEN_TTL = 7 * 86400.0

#: Whether a job sent with no owner can be read by its id alone. ``None``
#: means yes while no ``owner_loader`` is registered, no once one is.
ALLOW_UNOWNED: bool | None = None
