"""What the extension knows about one Flask app, and the one way to find it.

The web side finds it in ``app.extensions["jobtastic"]``; the task side,
which only has a Celery app, asks :func:`state_for`. Both are the same
object, kept in a weak mapping keyed by the Celery app (as Flask-SQLAlchemy
keeps per-app state) rather than in an attribute set on Celery's object.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, has_request_context

if TYPE_CHECKING:
    from celery import Celery
    from flask_caching import Cache

    from .embedded import EmbeddedWorker
    from .extension import Jobtastic
    from .registry import JobRecord, Registry
    from .streams import StreamSlots

logger = logging.getLogger("flask_jobtastic")

_T = TypeVar("_T")

#: The state of every Celery app an extension set up; gone with the app.
_by_celery: weakref.WeakKeyDictionary[Celery, JobtasticState] = weakref.WeakKeyDictionary()


@dataclass
class JobtasticState:
    """Everything the extension knows about one Flask application."""

    app: Flask
    celery: Celery
    cache: Cache
    cache_backend: Any
    broker_errors: tuple[type[BaseException], ...]
    publish_retry_policy: dict[str, float]
    progress_interval: float
    progress_smoothing: float
    started_delay: float
    expose_errors: bool
    batch_limit: int
    url_prefix: str
    events_heartbeat: float
    events_poll_interval: float
    events_max_seconds: float
    stream_slots: StreamSlots
    embedded_worker: EmbeddedWorker | None = None
    registry: Registry | None = None
    allow_unowned: bool | None = None
    #: The registry is on the result backend's Redis server, so the event hub
    #: hears its announcements on the pub/sub connection it already holds.
    registry_on_backend_redis: bool = False
    extension: Jobtastic | None = None

    @property
    def owner_loader(self) -> Callable[[], Any] | None:
        """The extension's ``owner_loader``, which may be registered after ``init_app``."""
        return self.extension._owner_loader if self.extension is not None else None

    # -- ownership -------------------------------------------------------------

    def current_owner(self) -> str | None:
        """The owner of jobs sent now: the app's ``owner_loader`` in a request."""
        loader = self.owner_loader
        if loader is None or not has_request_context():
            return None
        owner = loader()
        if owner is None:
            return None
        # stored in Redis keys and JSON: text a lone surrogate cannot break
        return str(owner).encode("utf-8", "backslashreplace").decode("utf-8")

    @property
    def owners_enforced(self) -> bool:
        return self.owner_loader is not None

    def may_read(self, job: dict[str, Any] | None, *, has_side_records: bool = False) -> bool:
        """Whether the current request may see a job, given its ``job`` side record.

        Where owners are checked, every job is sent with that record; a job
        whose record is gone (expired, evicted) is nobody's to read.
        """
        if job is None and has_side_records and self.owners_enforced:
            return False
        owner = job.get("owner") if job else None
        if job and job.get("shared"):
            return True  # a result meant for everyone who holds the id
        if owner is None:
            if self.allow_unowned is not None:
                return self.allow_unowned
            return not self.owners_enforced
        return bool(owner == self.current_owner())

    # -- registry writes: its store being down is logged, never fatal to a job --

    def record_sent(
        self, task_id: str, task_name: str, *, owner: str | None, description: str | None
    ) -> None:
        registry = self.registry
        if registry is not None:
            _fail_soft(
                "record_sent",
                lambda: registry.record_sent(
                    task_id, task_name, owner=owner, description=description
                ),
            )

    def record_state(
        self, task_id: str, job_state: str, *, progress: float | None = None
    ) -> JobRecord | None:
        registry = self.registry
        if registry is None:
            return None
        return _fail_soft(
            "record_state", lambda: registry.record_state(task_id, job_state, progress=progress)
        )

    def record_progress(self, task_id: str, percent: float) -> None:
        registry = self.registry
        if registry is not None:
            _fail_soft("record_progress", lambda: registry.record_progress(task_id, percent))

    def forget(self, task_id: str) -> None:
        registry = self.registry
        if registry is not None:
            _fail_soft("forget", lambda: registry.forget(task_id))


def _fail_soft(operation: str, call: Callable[[], _T]) -> _T | None:
    try:
        return call()
    except Exception:
        logger.warning("Job registry %s failed", operation, exc_info=True)
        return None


def attach(celery: Celery, state: JobtasticState) -> None:
    """Make ``state`` the one its Celery app's tasks find."""
    _by_celery[celery] = state


def state_for(celery: Celery) -> JobtasticState | None:
    """The state of the extension that set up ``celery``, if one did."""
    return _by_celery.get(celery)


def require_state(celery: Celery, task_name: str) -> JobtasticState:
    """:func:`state_for`, or an error that says how to set the app up."""
    state = _by_celery.get(celery)
    if state is None:
        raise RuntimeError(
            f"{task_name} runs on a Celery app that flask-jobtastic did not set up: "
            "create it with Jobtastic(app) and use jobtastic.celery"
        )
    return state
