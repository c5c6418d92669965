"""``JobtasticTask``: the base class users subclass for user-facing jobs.

A subclass sets a few class attributes and writes ``calculate_result``;
calling it on the class (``MyTask.delay_or_fail(...)``) goes through result
caching, thundering-herd avoidance and broker fallbacks before anything
reaches the broker. On the worker, the job runs inside the Flask app
context, reports throttled progress and checks its memory growth.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar

import psutil
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.app.autoretry import add_autoretry_behaviour
from celery.exceptions import Ignore
from celery.result import AsyncResult, EagerResult
from celery.signals import task_failure, task_revoked
from celery.worker import state as worker_state
from flask import current_app, has_app_context
from kombu.exceptions import EncodeError
from kombu.utils.json import dumps as json_dumps

from . import cache as cache_ops
from . import guards, keys, results, signals, states
from .backend import single_attempt
from .counts import ItemCounter
from .errors import BrokerUnavailable, JobStopped, ResultNotSerializable
from .heartbeat import MIN_TIMEOUT, heartbeat
from .jsonsafe import HINT, NotJSONError, to_json
from .progress import ProgressMeter
from .status import error_id_for
from .steps import StepRecorder

if TYPE_CHECKING:
    from celery import Celery

    from .extension import JobtasticState

logger = logging.getLogger("flask_jobtastic")

#: Every concrete subclass, in definition order; bound to each Celery app
#: the extension creates.
_task_classes: list[type[JobtasticTask]] = []
#: Celery apps owned by live extensions, so late subclasses bind to them too.
_celery_apps: weakref.WeakSet[Celery] = weakref.WeakSet()

_MB = 1_000_000  # SI megabytes, as memleak_threshold is documented

#: The shortest ``herd_avoidance_timeout`` whose claim renewals always come in time.
MIN_HERD_TIMEOUT = int(MIN_TIMEOUT)

#: A message older than this when its run starts may have missed the cancel
#: broadcast (no worker was listening): the run asks the result backend first.
_CHECK_CANCEL_AFTER = 1.0


class _ClassOrInstanceMethod:
    """A method callable on the class as well as on an instance.

    ``MyTask.delay(...)`` resolves to the instance registered with the
    current Celery app; Celery's own code keeps calling it on instances.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, instance: Any, owner: type[JobtasticTask]) -> Callable[..., Any]:
        target = instance if instance is not None else owner._registered_instance()
        return self.func.__get__(target, type(target))


_class_get_app = Task.__dict__["_get_app"].__func__


class _PerInstanceApp:
    """``task.app``: the Celery app this instance was bound to.

    Celery keeps a task's app on the class, so with two Flask apps in one
    process (an app factory, a test suite) the last one bound would send and
    store every job. Here each app has its own instance of the class, and
    each instance answers with its own app; the class still answers with the
    last one bound, as Celery expects.
    """

    def __get__(self, instance: Any, owner: type[Task] | None = None) -> Any:
        if instance is not None:
            own = instance.__dict__.get("_app")
            if own is not None:
                return own
        return _class_get_app(owner if owner is not None else type(instance))

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__["_app"] = value


class _PerInstanceAppGetter:
    """``task._get_app()``, which Celery's send and apply paths call, per instance."""

    def __get__(self, instance: Any, owner: type[Task] | None = None) -> Callable[[], Any]:
        if instance is not None and instance.__dict__.get("_app") is not None:
            own = instance.__dict__["_app"]
            return lambda: own
        return functools.partial(_class_get_app, owner if owner is not None else type(instance))


def bind_task_class(cls: type[JobtasticTask], celery_app: Celery) -> JobtasticTask:
    """Register ``cls`` with ``celery_app`` (once) and return its instance.

    Done by hand rather than with ``Celery.register_task`` so that a test
    suite creating many apps does not trip its duplicate-name warning.
    """
    existing = celery_app.tasks.get(cls.name)
    if type(existing) is cls:
        return existing
    cls.bind(celery_app)
    task = cls()
    task.__dict__["_app"] = celery_app
    add_autoretry_behaviour(task)
    celery_app.tasks[cls.name] = task
    return task


def register_celery_app(celery_app: Celery) -> None:
    """Bind every known task class to a new extension's Celery app."""
    _celery_apps.add(celery_app)
    for cls in _task_classes:
        bind_task_class(cls, celery_app)


class JobtasticTask(Task):
    """Base class of user-facing jobs. Subclass it and write ``calculate_result``.

    Class attributes:

    * ``significant_kwargs``: the arguments that decide whether two calls
      are the same job, as names or ``(name, to_str)`` pairs.
    * ``herd_avoidance_timeout`` (required): seconds an identical call waits
      on a job in flight before starting its own; also how soon a crashed
      worker's claim expires.
    * ``cache_duration``: -1 no result caching (default), 0 forever, N seconds.
    * ``cache_prefix``: namespace of the keys; defaults to ``module.ClassName``.
    * ``memleak_threshold``: MB of RSS growth per run that triggers
      ``warn_of_memory_leak``; -1 (default) off, 0 any growth.
    """

    abstract: ClassVar[bool] = True
    significant_kwargs: ClassVar[list[Any]] = []
    herd_avoidance_timeout: ClassVar[int | None] = None
    cache_duration: ClassVar[int] = -1
    cache_prefix: ClassVar[str | None] = None
    memleak_threshold: ClassVar[float] = -1
    #: Steps shown from the first poll, as ``(key, name)`` pairs or names.
    steps: ClassVar[list[Any]] = []
    #: Keep a registry record of every job of this class (see ``registry.py``).
    track_state: ClassVar[bool] = False
    #: What the registry and "my jobs" list call a job of this class.
    description: ClassVar[str | None] = None
    #: Share cached results and runs in flight between owners. Off: once an
    #: ``owner_loader`` is registered, identical calls of different users are
    #: different jobs. On (for results that are the same for everyone): any
    #: user holding the id may read the job.
    share_across_owners: ClassVar[bool] = False
    #: How many ``notify`` messages and counted items a status keeps.
    max_messages: ClassVar[int] = 50
    #: Eager runs (``delay_or_eager`` with the broker down) store their result,
    #: so the status endpoint and the result cache see them like any other.
    store_eager_result = True
    serializer = "json"
    app = _PerInstanceApp()  # type: ignore[assignment]
    _get_app = _PerInstanceAppGetter()  # type: ignore[assignment]

    _significant: ClassVar[list[tuple[str, keys.Converter]]] = []
    _signature: ClassVar[inspect.Signature | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        cls.abstract = False
        cls._validate_class()
        if "name" not in cls.__dict__ or cls.__dict__["name"] is None:
            cls.name = f"{cls.__module__}.{cls.__name__}"
        if not cls.__dict__.get("cache_prefix"):
            cls.cache_prefix = f"{cls.__module__}.{cls.__name__}"
        _task_classes[:] = [c for c in _task_classes if c.name != cls.name]
        _task_classes.append(cls)
        for celery_app in list(_celery_apps):
            bind_task_class(cls, celery_app)

    @classmethod
    def _validate_class(cls) -> None:
        """Fail at class definition, naming the attribute to fix."""
        name = cls.__qualname__
        if cls.calculate_result is JobtasticTask.calculate_result:
            raise TypeError(f"{name} must define calculate_result(self, ...)")
        timeout = cls.herd_avoidance_timeout
        if timeout is None:
            raise TypeError(
                f"{name} must set herd_avoidance_timeout: the most seconds an identical call "
                "should wait for a run in flight (e.g. herd_avoidance_timeout = 60)"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise TypeError(
                f"{name}.herd_avoidance_timeout must be a positive int, got {timeout!r}"
            )
        if timeout < MIN_HERD_TIMEOUT:
            raise TypeError(
                f"{name}.herd_avoidance_timeout must be at least {MIN_HERD_TIMEOUT} seconds, got "
                f"{timeout!r}: the claim is renewed every third of it, and memcached counts "
                "expiry in whole seconds, so a shorter claim can lapse while the job runs"
            )
        duration = cls.cache_duration
        if isinstance(duration, bool) or not isinstance(duration, int) or duration < -1:
            raise TypeError(
                f"{name}.cache_duration must be -1 (no caching), 0 (forever) or seconds, "
                f"got {duration!r}"
            )
        threshold = cls.memleak_threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or (threshold < 0 and threshold != -1)
        ):
            raise TypeError(
                f"{name}.memleak_threshold must be -1 (off), 0 (any growth) or MB, "
                f"got {threshold!r}"
            )
        cls._significant = keys.normalize_significant(cls.significant_kwargs)
        signature = inspect.signature(cls.calculate_result)
        parameters = list(signature.parameters.values())[1:]  # drop self
        cls._signature = signature.replace(parameters=parameters)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        known = {p.name for p in parameters}
        for arg_name, _ in cls._significant:
            if not takes_any and arg_name not in known:
                raise TypeError(
                    f"{name}.significant_kwargs names {arg_name!r}, which "
                    f"calculate_result{cls._signature} does not take"
                )

    @classmethod
    def _registered_instance(cls) -> JobtasticTask:
        """The instance bound to the current app's Celery (Flask app first)."""
        celery_app = None
        if has_app_context():
            state = current_app.extensions.get("jobtastic")
            if state is not None:
                celery_app = state.celery
        if celery_app is None:
            celery_app = cls._app
        if celery_app is None:
            raise RuntimeError(
                f"{cls.__qualname__} is not bound to a Celery app yet: create the extension "
                "with Jobtastic(app) or jobtastic.init_app(app) first"
            )
        return bind_task_class(cls, celery_app)

    # -- the user's side -------------------------------------------------

    def calculate_result(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work and return a JSON-serializable result. Override this."""
        raise NotImplementedError(f"{type(self).__qualname__} must define calculate_result")

    def update_progress(self, completed: float, total: float, update_frequency: int = 1) -> None:
        """Report that ``completed`` of ``total`` items are done.

        Cheap enough to call for every item: the result backend is written
        only when ``update_frequency`` items and ``JOBTASTIC_PROGRESS_INTERVAL``
        seconds have passed since the last write, and when ``total`` is reached.
        """
        meter = getattr(self._local, "meter", None)
        if meter is None:
            return
        meter.touched = True
        meter.reported_completed = completed  # a detail flush writes what was reported
        meter.reported_total = total
        if completed < total and completed - meter.last_completed < update_frequency:
            return
        now = monotonic()
        if not meter.due(completed, total, update_frequency, now):
            return
        self._write_progress(meter.record(completed, total, now))

    def warn_of_memory_leak(
        self,
        growth_mb: float,
        start_mb: float,
        end_mb: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Called when one run grew RSS past ``memleak_threshold``. Override to alert."""
        logger.warning(
            "Memory leak? %s grew its RSS by %.2f MB in one run (%.2f MB -> %.2f MB, "
            "threshold %s MB); args=%r kwargs=%r",
            self.name,
            growth_mb,
            start_mb,
            end_mb,
            self.memleak_threshold,
            args,
            kwargs,
        )

    # -- sending -----------------------------------------------------------

    @property
    def _local(self) -> threading.local:
        """Per-thread run state: one task instance serves every pool thread."""
        try:
            return self.__dict__["_run_local"]
        except KeyError:
            local = self.__dict__.setdefault("_run_local", threading.local())
            return local

    def _state(self) -> JobtasticState:
        state = getattr(self.app, "_flask_jobtastic_state", None)
        if state is None:
            raise RuntimeError(
                f"{self.name} runs on a Celery app that flask-jobtastic did not set up: "
                "create it with Jobtastic(app) and use jobtastic.celery"
            )
        return state

    def cache_key_for(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> str:
        """The key shared by every call with the same significant arguments."""
        arguments = self._bind_arguments(args, kwargs or {})
        values = keys.significant_values(self.name, self._significant, arguments)
        return keys.build_cache_key(self.cache_prefix or self.name, values)

    def _bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """``calculate_result``'s arguments by name; a TypeError names a bad call."""
        assert self._signature is not None
        return keys.bind_arguments(self.name, self._signature, args, kwargs)

    def _dispatch(
        self,
        args: tuple[Any, ...] | list[Any] | None,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        on_broker_error: str,
    ) -> AsyncResult:
        """Cache hit, herd join, or a new message; then the broker fallback."""
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        state = self._state()
        if state.embedded_worker is not None:
            state.embedded_worker.ensure_started()
        herd_avoidance = options.pop("herd_avoidance", True)
        track_state = options.pop("track_state", None)
        description = options.pop("description", None)
        tracked = self.track_state if track_state is None else bool(track_state)
        owner = state.current_owner()
        if herd_avoidance or self.cache_duration >= 0:
            cache_key = self.cache_key_for(args, kwargs)
            if owner is not None and not self.share_across_owners:
                # one user's cached result or run in flight is not another's
                cache_key = keys.owner_scoped(cache_key, owner)
        else:  # nothing to look up or claim: only check the arguments fit
            self._bind_arguments(args, kwargs)
            cache_key = None
        cache = state.cache_backend
        if self.cache_duration >= 0:
            cached_id = cache_ops.cache_get(cache, keys.result_key(cache_key))
            if cached_id:
                signals.cache_hit.send(self, task_id=cached_id)
                return self.AsyncResult(cached_id)
        task_id = options.pop("task_id", None) or str(uuid.uuid4())
        herd_key = keys.herd_key(cache_key) if herd_avoidance else None
        if herd_avoidance:
            winner, won = cache_ops.claim_herd_key(
                cache, herd_key, task_id, int(self.herd_avoidance_timeout or 0)
            )
            if not won and self._has_failed(winner):
                # failed, revoked or lost before it released its key: claim afresh
                cache_ops.cache_delete_if_equal(cache, herd_key, winner)
                winner, won = cache_ops.claim_herd_key(
                    cache, herd_key, task_id, int(self.herd_avoidance_timeout or 0)
                )
            if not won:  # a run in flight, or one that just succeeded: share it
                if self.share_across_owners and owner is not None:
                    self._join_owner(winner, owner)
                signals.herd_joined.send(self, task_id=winner)
                return self.AsyncResult(winner)
            if self.cache_duration >= 0:
                # The previous run may have cached its result and released its
                # key between our cache read and our claim: use that result.
                cached_id = cache_ops.cache_get(cache, keys.result_key(cache_key))
                if cached_id:
                    self._mirror_result(cached_id, task_id)
                    cache_ops.cache_delete_if_equal(cache, herd_key, task_id)
                    signals.cache_hit.send(self, task_id=cached_id)
                    return self.AsyncResult(cached_id)
        job = None
        if owner is not None or self.share_across_owners or herd_key or state.owners_enforced:
            # who may read it (where owners are checked, a job without this
            # record is nobody's to read), and the key a cancel frees; a job
            # with none of these needs no record beside its meta
            job = {
                "owner": owner,
                "shared": bool(self.share_across_owners),
                "herd_key": herd_key,
                "name": self.name,
            }
        unrecorded: Exception | None = None
        try:
            results.record_queued(self.backend, task_id, {}, job=job)
        except Exception as exc:  # sent now, its owner could never read it: not queued
            unrecorded = exc
        if tracked:
            if state.registry is None:
                raise RuntimeError(
                    f"{self.name} asks for track_state but the job registry is off: "
                    "set JOBTASTIC_REGISTRY"
                )
            if track_state and not self.track_state:
                options.setdefault("headers", {})["jobtastic_track"] = True
            state.registry_call(
                "record_sent",
                task_id,
                self.name,
                owner=owner,
                description=description or self.description,
            )
        headers = options.setdefault("headers", {})
        headers["jobtastic_sent_at"] = time.time()  # see _CHECK_CANCEL_AFTER
        if job is not None:
            headers["jobtastic_record"] = True  # the worker extends it as the job ends
        if cache_key is not None:
            headers["jobtastic_key"] = cache_key  # the worker caches and releases under it
        if not herd_avoidance:  # the worker then has no herd key to release
            headers["jobtastic_herd"] = False
        options.setdefault("retry_policy", state.publish_retry_policy)
        try:
            if unrecorded is not None:
                raise unrecorded
            result = Task.apply_async(self, args, kwargs, task_id=task_id, **options)
        except EncodeError as exc:
            if herd_key:
                cache_ops.cache_delete_if_equal(cache, herd_key, task_id)
            error = TypeError(
                f"{self.name} was called with {_unsendable(args, kwargs)} that cannot be sent "
                f"as JSON ({exc}); pass strings, numbers, booleans, None, or lists and dicts "
                "of them"
            )
            with contextlib.suppress(Exception), single_attempt(self.backend):
                self.backend.mark_as_failure(task_id, error)  # anyone who joined sees why
            raise error from None
        except Exception as exc:
            if herd_key:
                cache_ops.cache_delete_if_equal(cache, herd_key, task_id)
            if exc is not unrecorded and not _is_outage(exc, state.broker_errors, self.backend):
                raise
            where = "result backend" if exc is unrecorded else "broker"
            logger.error(
                "%s unavailable, %s not queued (%s): %s",
                where.capitalize(),
                self.name,
                on_broker_error,
                exc,
            )
            signals.broker_unavailable.send(self, task_id=task_id, error=exc)
            if on_broker_error == "eager":
                return self._run_here(args, kwargs, task_id, headers, cache_key, unrecorded)
            if tracked:  # not "queued" in the job list for days: it never will run
                state.registry_call("record_state", task_id, "failed")
            if on_broker_error == "fail":
                return self._failed_to_queue(task_id)
            raise
        signals.job_sent.send(self, task_id=task_id)
        return result

    def _join_owner(self, task_id: str, owner: str) -> None:
        """Count ``owner`` among those waiting on a shared run (see ``cancel``)."""

        def join(job: dict[str, Any]) -> None:
            owners = job.get("owners") or ([job["owner"]] if job.get("owner") else [])
            if owner not in owners:
                owners.append(owner)
            job["owners"] = owners
            detached = job.get("detached") or []
            if owner in detached:  # asked again after cancelling: waiting again
                detached.remove(owner)
                job["detached"] = detached

        try:
            guards.update_job(self.backend, task_id, join)
        except Exception:
            logger.warning("Could not record %s joining job %s", owner, task_id, exc_info=True)

    def _has_failed(self, task_id: str) -> bool:
        """Whether a herd winner ended without a result (asked on the join path only)."""
        try:
            meta = self.backend.get_task_meta(task_id)
        except Exception:
            return False
        return meta.get("status") in (states.FAILURE, states.REVOKED)

    def _mirror_result(self, cached_id: str, claimed_id: str) -> None:
        """Give a claimed-but-unsent id the cached result, for callers who joined it.

        Rare: only when a claim races the previous run's release.
        """
        try:
            meta = self.backend.get_task_meta(cached_id)
            if meta.get("status") == states.SUCCESS:
                self.backend.store_result(claimed_id, meta.get("result"), states.SUCCESS)
        except Exception:
            logger.warning("Could not mirror job %s onto %s", cached_id, claimed_id, exc_info=True)

    def _run_here(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str,
        headers: dict[str, Any],
        cache_key: str | None,
        unrecorded: Exception | None,
    ) -> EagerResult:
        """The broker fallback of ``delay_or_eager``: run the job in this process now.

        With the result store down (``unrecorded``) the result is not stored,
        and not cached either: a cached id must lead to a readable result.
        """
        if unrecorded is None:
            with single_attempt(self.backend):
                return self.apply(args, kwargs, task_id=task_id, headers=headers)
        result = self.apply(args, kwargs, task_id=task_id, headers=headers, ignore_result=True)
        if cache_key is not None and self.cache_duration >= 0:
            cache = self._state().cache_backend
            cache_ops.cache_delete_if_equal(cache, keys.result_key(cache_key), task_id)
        return result

    def _failed_to_queue(self, task_id: str) -> AsyncResult:
        """A result in FAILURE whose status says the job could not be queued.

        Stored in one attempt: when the result store is down too, waiting out
        Celery's retries would hang the request; the failure is then kept in
        memory only.
        """
        error = BrokerUnavailable()
        try:
            with single_attempt(self.backend):
                self.backend.mark_as_failure(task_id, error)
        except Exception:
            logger.warning(
                "Result backend unavailable too; job %s failure kept in memory",
                task_id,
                exc_info=True,
            )
            return EagerResult(task_id, error, states.FAILURE, name=self.name)
        return self.AsyncResult(task_id)

    @_ClassOrInstanceMethod
    def apply_async(  # type: ignore[override]
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the job, unless a cached result or an identical run in flight exists.

        ``herd_avoidance=False`` skips joining a run in flight for this call.
        A broker error is raised; see ``async_or_fail`` / ``async_or_eager``.
        """
        if "retries" in options:  # self.retry(): the same job, sent again as is
            return Task.apply_async(self, args, kwargs, **options)
        return self._dispatch(args, kwargs, options, "raise")

    @_ClassOrInstanceMethod
    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """``apply_async`` with the call's own arguments."""
        return self._dispatch(args, kwargs, {}, "raise")

    @_ClassOrInstanceMethod
    def delay_or_eager(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Like ``delay``; with the broker down, run the job in this process."""
        return self._dispatch(args, kwargs, {}, "eager")

    @_ClassOrInstanceMethod
    def delay_or_fail(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Like ``delay``; with the broker down, return a result in FAILURE."""
        return self._dispatch(args, kwargs, {}, "fail")

    @_ClassOrInstanceMethod
    def async_or_eager(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``apply_async`` that runs the job in this process when the broker is down."""
        return self._dispatch(args, kwargs, options, "eager")

    @_ClassOrInstanceMethod
    def async_or_fail(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``apply_async`` that returns a FAILURE result when the broker is down."""
        return self._dispatch(args, kwargs, options, "fail")

    @_ClassOrInstanceMethod
    def apply(  # type: ignore[override]
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult:
        """Run the job in this process now (Celery's ``apply``), result stored."""
        return Task.apply(self, args, kwargs, **options)

    @_ClassOrInstanceMethod
    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult:  # noqa: N802 (Celery's name)
        """The result handle of a job id, on this app's result backend."""
        return Task.AsyncResult(self, task_id, **kwargs)

    # -- running -----------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's entry point: the job runs inside the Flask app context.

        Pushed here rather than in ``__call__``, which Celery's worker skips
        (a faster path) for tasks that do not override it.
        """
        state = getattr(self.app, "_flask_jobtastic_state", None)
        if state is None or (has_app_context() and current_app._get_current_object() is state.app):
            return self._run(state, args, kwargs)
        with state.app.app_context():
            return self._run(state, args, kwargs)

    def _run(
        self, state: JobtasticState | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Progress set-up, memory check, result check around ``calculate_result``."""
        task_id = self.request.id
        local = self._local
        interval = state.progress_interval if state else 0.5
        smoothing = state.progress_smoothing if state else 0.3
        meter = ProgressMeter(started_at=monotonic(), interval=interval, smoothing=smoothing)
        local.meter = meter if task_id else None
        local.task_id = task_id
        local.recorder = local.counter = None  # made on first use (``_recorder``)
        local.details_used = bool(self.steps)
        if self.steps:
            self._recorder()
        local.herd_key = None
        local.tracked = bool(
            task_id
            and state is not None
            and state.registry is not None
            and (self.track_state or self._header("jobtastic_track"))
        )
        local.cache_key = None
        local.herd_claimed = self._header("jobtastic_herd") is not False
        local.args, local.kwargs = tuple(args), dict(kwargs)
        # a redelivered message (acks_late) may replace what a reader said of
        # its lost first run
        local.redelivered = bool(
            (getattr(self.request, "delivery_info", None) or {}).get("redelivered")
        )
        sent_key = self._header("jobtastic_key")
        if sent_key:
            local.cache_key = sent_key
            local.herd_key = keys.herd_key(sent_key)
        elif task_id and (local.herd_claimed or self.cache_duration >= 0):
            try:
                local.cache_key = self.cache_key_for(tuple(args), dict(kwargs))
                local.herd_key = keys.herd_key(local.cache_key)
            except TypeError:
                local.herd_key = None
        if local.tracked:
            state.registry_call("record_state", task_id, "running", progress=0.0)
        run = local.run = _Run(meter.record(0, 1, monotonic()))
        failure: BaseException | None = None
        try:
            if task_id and state is not None and self._sent_long_ago():
                self._check_stop(local)  # a cancel this worker's broadcast missed
            if task_id and state is not None:
                # Declared steps and tracked jobs show their state at once; any
                # other job shows PROGRESS 0 once it has run STARTED_DELAY seconds
                # (or before its first progress write, whichever comes first).
                at_once = state.started_delay <= 0 or local.details_used or local.tracked
                self._start_heartbeat(
                    state,
                    task_id,
                    run,
                    local.herd_key if local.herd_claimed else None,
                    None if at_once else state.started_delay,
                )
                if at_once:
                    self._write_progress(run.start_meta)
            elif task_id:
                self._write_progress(run.start_meta)
            start = _rss() if self.memleak_threshold >= 0 else 0
            result = self.calculate_result(*args, **kwargs)
            checked = False
            if self.memleak_threshold >= 0:
                end = _rss()
                growth = (end - start) / _MB
                if growth > self.memleak_threshold:
                    self.warn_of_memory_leak(growth, start / _MB, end / _MB, tuple(args), kwargs)
            try:  # the rule of jsonsafe: convert (datetimes, UUIDs, ...) or refuse
                result = to_json(result, "result")
            except NotJSONError as exc:
                raise ResultNotSerializable(
                    f"{self.name}.calculate_result returned a value that cannot be stored "
                    f"as JSON: {exc}; {HINT}"
                ) from None
            if task_id and (meter.touched or local.details_used):
                # the last PROGRESS reads 100 (a job that never reported progress
                # goes from its first PROGRESS straight to SUCCESS)
                closing = meter.finished(monotonic())
                if closing is not None:
                    self._write_progress(closing)  # also where a cancel is seen
                    checked = True
            if task_id and run.started and not checked:
                # a job that ran long enough to be seen running, and could be
                # cancelled or declared lost since its last write
                self._check_stop(local)
            return result
        except JobStopped as stopped:
            failure = stopped
            raise Ignore() from None  # its final state is written: Celery adds none
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with run.lock:  # no heartbeat write may land after this point
                run.finished = True
            if task_id:
                heartbeat.remove(task_id)
            if task_id and local.details_used:
                self._save_details(local, failure)
            local.meter = None

    def _start_heartbeat(
        self,
        state: JobtasticState,
        task_id: str,
        run: _Run,
        herd: str | None,
        started_in: float | None,
    ) -> None:
        """Keep the job's alive marker and herd key fresh while it runs.

        With ``started_in``, the first beat comes after that many seconds and
        writes PROGRESS 0 with the marker, unless the job wrote progress first;
        the herd key was placed with a full timeout at send time.
        """
        timeout = self._alive_for()
        backend = self.backend
        cache = state.cache_backend
        request = self.request  # the job thread's: the heartbeat thread has none
        redelivered = bool(getattr(self._local, "redelivered", False))

        def renew() -> None:
            # Under the run's lock, so nothing lands after the run ended (or
            # after a later progress write), and no herd key is put back after
            # the run released it.
            with run.lock:
                if run.finished or run.verdict == guards.FINAL:
                    return
                if not run.started:  # the first beat: PROGRESS 0 and the marker
                    if task_id in worker_state.revoked:
                        return  # stopping: REVOKED must not be overwritten
                    verdict = guards.guarded_progress(
                        backend, task_id, run.start_meta, alive_for=timeout, force=redelivered
                    )
                    if verdict is None:
                        backend.store_result(
                            task_id, run.start_meta, states.PROGRESS, request=request
                        )
                    run.started = True
                else:
                    verdict = guards.check_run(backend, task_id, alive_for=timeout)
                if verdict is not None and verdict != guards.GO_ON:
                    run.verdict = verdict  # the job stops at its next write, or as it ends
                if herd and run.verdict != guards.FINAL:
                    cache_ops.refresh_herd_key(cache, herd, task_id, timeout)

        heartbeat.add(task_id, timeout, renew, first_in=started_in)

    def _alive_for(self) -> int:
        """Seconds the alive marker and a renewed herd key live without renewal."""
        return int(max(float(self.herd_avoidance_timeout or 0), MIN_TIMEOUT)) + 1

    def _save_details(self, local: threading.local, failure: BaseException | None) -> None:
        """Keep steps, messages and counts readable after the job ended."""
        recorder: StepRecorder = local.recorder
        recorder.finish(failed_with=None if isinstance(failure, Ignore | JobStopped) else failure)
        try:
            record = results.details_record(self._details(local), self._alive_for())
            results.write_side(self.backend, "run", local.task_id, record)
        except Exception:
            logger.warning("Could not save the details of job %s", local.task_id, exc_info=True)

    @staticmethod
    def _details(local: threading.local) -> dict[str, Any]:
        details = dict(local.recorder.snapshot())
        if local.counter.used:
            details.update(local.counter.snapshot())
        return details

    def _write_progress(self, meta: dict[str, Any]) -> None:
        """Write PROGRESS meta; a result-backend blip must not kill the job.

        The job's first write also sets its alive marker, and is preceded by
        PROGRESS 0 if the job had not shown it yet. Also the job's moment to
        notice a cancel: a revoked job stops at its next progress write.
        """
        local = self._local
        task_id = getattr(local, "task_id", None)
        if not task_id:
            return
        run: _Run = local.run
        if task_id in worker_state.revoked:  # threads and solo pools see the broadcast
            self._stop(local, guards.CANCELLED)
        if run.verdict != guards.GO_ON:  # the heartbeat learned it first
            self._stop(local, run.verdict)
        if local.details_used:
            meta = {**meta, **self._details(local)}
        if run.started:
            verdict = self._store_progress(task_id, (meta,), None)
        else:
            with run.lock:  # the heartbeat may be writing PROGRESS 0 right now
                if run.started:
                    metas: tuple[dict[str, Any], ...] = (meta,)
                elif meta.get("progress_percent") == 0:
                    metas = (meta,)
                else:
                    metas = (run.start_meta, meta)
                alive_for = None if run.started else self._alive_for()
                verdict = self._store_progress(
                    task_id, metas, alive_for, force=local.redelivered and not run.started
                )
                run.started = True
        if verdict != guards.GO_ON:
            self._stop(local, verdict)
        if local.tracked:
            state = getattr(self.app, "_flask_jobtastic_state", None)
            if state is not None:
                state.registry_call("record_progress", task_id, meta["progress_percent"])

    def _store_progress(
        self,
        task_id: str,
        metas: tuple[dict[str, Any], ...],
        alive_for: int | None,
        *,
        force: bool = False,
    ) -> str:
        """Write PROGRESS unless the job was cancelled or its state is final.

        Returns what the write found (``guards.GO_ON``, ``CANCELLED``,
        ``FINAL``); a backend that does not answer is logged and means go on.
        """
        try:
            verdict = guards.guarded_progress(
                self.backend, task_id, *metas, alive_for=alive_for, force=force
            )
            if verdict is None:
                for meta in metas:
                    self.update_state(task_id=task_id, state=states.PROGRESS, meta=meta)
                return guards.GO_ON
            return verdict
        except Exception:
            logger.warning("Could not write progress of job %s", task_id, exc_info=True)
            return guards.GO_ON

    def on_cancel(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called in the worker when a running job stops because it was cancelled.

        Override it to clean up what the job leaves half done (temporary
        files, partial uploads). It runs before the job reads ``REVOKED``, and
        an exception here is logged, not raised.
        """

    def _sent_long_ago(self) -> bool:
        sent_at = self._header("jobtastic_sent_at")
        return isinstance(sent_at, int | float) and time.time() - sent_at > _CHECK_CANCEL_AFTER

    def _check_stop(self, local: threading.local) -> None:
        """Ask the result backend whether this run must stop; stop it if so."""
        run: _Run = local.run
        verdict = run.verdict
        if verdict == guards.GO_ON:
            try:
                verdict = guards.check_run(self.backend, local.task_id, force=local.redelivered)
            except Exception:
                logger.warning("Could not check job %s for a cancel", local.task_id, exc_info=True)
                return
        if verdict != guards.GO_ON:
            self._stop(local, verdict)

    def _stop(self, local: threading.local, verdict: str) -> None:
        """End a run that was cancelled (REVOKED) or declared lost (left FAILURE).

        The clean-up hook runs first and the herd key goes last, once the run
        has really stopped, so no identical call starts a second run beside it.
        """
        task_id = local.task_id
        run: _Run = local.run
        with run.lock:  # the heartbeat must not write anything after this
            run.finished = True
        if verdict == guards.FINAL:
            logger.warning(
                "Job %s stops: its state became final while it ran (a reader found its "
                "heartbeat missing and reported the worker lost)",
                task_id,
            )
            raise JobStopped(verdict)
        logger.info("Job %s was cancelled; stopping it", task_id)
        try:
            self.on_cancel(task_id, local.args, local.kwargs)
        except Exception:
            logger.exception("on_cancel of job %s failed", task_id)
        try:
            self.backend.mark_as_revoked(task_id, reason="cancelled")
        except Exception:
            logger.warning("Could not mark job %s revoked", task_id, exc_info=True)
        if local.herd_claimed:
            release_herd_key_by_key(self, local.herd_key, task_id)
        if local.tracked:
            self._jobtastic_state_call("record_state", task_id, "revoked")
        raise JobStopped(verdict)

    def _jobtastic_state_call(self, method: str, *args: Any) -> None:
        state = getattr(self.app, "_flask_jobtastic_state", None)
        if state is not None:
            state.registry_call(method, *args)

    def _flush_details(self, urgent: bool) -> None:
        """Write after a step, message or count changed: at once or throttled."""
        local = self._local
        local.details_used = True
        meter: ProgressMeter | None = getattr(local, "meter", None)
        if meter is None:
            return
        now = monotonic()
        if not urgent and now - meter.last_write_at < meter.interval:
            return
        counted = local.counter.progress()
        if counted is not None:
            completed, total = counted
        else:
            # what the job last reported, not what was last written: a flush
            # (which resets the throttle) must carry the progress it delays
            completed, total = meter.reported_completed, meter.reported_total or 1
        self._write_progress(meter.record(completed, total, now))

    # -- steps, messages and counts (rich progress) ------------------------------

    def _recorder(self) -> StepRecorder:
        recorder = getattr(self._local, "recorder", None)
        if recorder is None:  # called outside a run (a unit test calling calculate_result)
            recorder = self._local.recorder = StepRecorder(
                self.steps, max_messages=self.max_messages, on_failure=self._log_step_failure
            )
            self._local.counter = ItemCounter(max_items=self.max_messages)
        return recorder

    def _log_step_failure(self, step_key: str, exc: BaseException) -> None:
        """Log a failed step with the error id its generic message quotes."""
        task_id = getattr(self._local, "task_id", None)
        if task_id:
            logger.warning(
                "Job %s (%s) step %r failed, error id %s: %s: %s",
                task_id,
                self.name,
                step_key,
                error_id_for(task_id),
                type(exc).__name__,
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _counter(self) -> ItemCounter:
        self._recorder()
        return self._local.counter

    @contextlib.contextmanager
    def step(
        self, name: str, *, key: Any = None, continue_on_error: bool = False
    ) -> Iterator[None]:
        """``with self.step("Fly to the moon"):`` records a (nestable) step.

        On an exception the step is marked failed with the error; it then
        propagates, unless ``continue_on_error=True`` records it and goes on
        (see ``raise_latest_exception``).
        """
        recorder = self._recorder()
        block = recorder.step(name, key=key, continue_on_error=continue_on_error)
        block.__enter__()
        self._flush_details(urgent=True)
        try:
            yield
        except JobStopped:
            raise  # a cancel is not the step's error, and no step may swallow it
        except BaseException as exc:
            suppressed = block.__exit__(type(exc), exc, exc.__traceback__)
            self._flush_details(urgent=True)
            if not suppressed:
                raise
        else:
            block.__exit__(None, None, None)
            self._flush_details(urgent=True)

    def start_step(self, key: Any, name: str | None = None) -> None:
        """Start step ``key`` (ending the one running at the same level)."""
        self._recorder().start_step(key, name)
        self._flush_details(urgent=True)

    def update_step(self, detail: str, key: Any = None) -> None:
        """Say what the current (or ``key``) step is doing; throttled like progress."""
        self._recorder().update_step(detail, key)
        self._flush_details(urgent=False)

    def end_step(self, key: Any = None, error: BaseException | None = None) -> None:
        """End the current (or ``key``) step: done, or failed with ``error``."""
        self._recorder().end_step(key, error=error)
        self._flush_details(urgent=True)

    def notify(self, message: str) -> None:
        """Add a line to the job's message log (the newest ``max_messages`` are kept)."""
        self._recorder().notify(message)
        self._flush_details(urgent=False)

    def raise_latest_exception(self) -> None:
        """Re-raise the last error a ``continue_on_error`` step recorded, if any."""
        self._recorder().raise_latest_exception()

    def set_amount(self, amount: int) -> None:
        """How many items this job will count; progress then follows the counts."""
        self._counter().set_amount(amount)
        self._flush_details(urgent=True)

    def add_one_success(self, item: Any = None) -> None:
        """Count one item done (``item`` is listed, bounded)."""
        self._counter().add_one_success(item)
        self._flush_details(urgent=False)

    def add_one_failure(self, item: Any = None) -> None:
        """Count one item failed (``item`` is listed, bounded)."""
        self._counter().add_one_failure(item)
        self._flush_details(urgent=False)

    def track(self, is_success: bool, item: Any = None) -> None:
        """Count one item as done or failed."""
        self._counter().track(is_success, item)
        self._flush_details(urgent=False)

    # -- Celery's hooks --------------------------------------------------------

    def _record_registry_state(self, task_id: str, job_state: str) -> None:
        local = self._local
        if getattr(local, "task_id", None) == task_id and getattr(local, "tracked", False):
            state = getattr(self.app, "_flask_jobtastic_state", None)
            if state is not None:
                state.registry_call("record_state", task_id, job_state)

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """A retry is still the same job: the registry says ``retrying``."""
        self._record_registry_state(task_id, "retrying")

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Cache the id of a successful run for ``cache_duration``."""
        self._record_registry_state(task_id, "succeeded")
        if self.cache_duration < 0:
            return
        state = getattr(self.app, "_flask_jobtastic_state", None)
        if state is None:
            return
        cache_key = self._run_cache_key(task_id, args, kwargs)
        if cache_key is not None:
            cache_ops.cache_set(
                state.cache_backend, keys.result_key(cache_key), task_id, self._cache_ttl()
            )

    def _cache_ttl(self) -> int:
        """``cache_duration``, but never longer than the result backend keeps the result:
        a cached id whose result expired would read as unknown."""
        expires = self.backend.expires
        keep = int(expires) if isinstance(expires, int | float) and expires > 0 else 0
        if not keep:
            return self.cache_duration
        return keep if self.cache_duration == 0 else min(self.cache_duration, keep)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``retry``; the herd claim is kept while the job waits to run again.

        Without it an identical call made during the countdown would start a
        second run beside the one waiting to retry.
        """
        local = self._local
        herd_key = getattr(local, "herd_key", None)
        if herd_key and getattr(local, "herd_claimed", False) and self.request.id:
            wait = _retry_wait(self, kwargs)
            state = getattr(self.app, "_flask_jobtastic_state", None)
            if state is not None:
                cache_ops.refresh_herd_key(
                    state.cache_backend, herd_key, self.request.id, int(wait) + self._alive_for()
                )
        return super().retry(*args, **kwargs)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Log the traceback with the error id the user sees."""
        self._record_registry_state(task_id, "failed")
        logger.error(
            "Job %s (%s) failed, error id %s: %s: %s\n%s",
            task_id,
            self.name,
            error_id_for(task_id),
            type(exc).__name__,
            exc,
            getattr(einfo, "traceback", ""),
        )

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Release the herd key once the job is over, whatever the outcome."""
        local = self._local
        if getattr(local, "task_id", None) == task_id and not local.herd_claimed:
            return
        if self._header("jobtastic_record") and not getattr(
            self.backend, "extends_job_record", False
        ):
            with contextlib.suppress(Exception):  # logged by the next read, if it matters
                guards.extend_job_record(self.backend, task_id)
        if status in states.READY_STATES:
            cache_key = self._run_cache_key(task_id, args, kwargs)
            if cache_key is not None:
                ran_here = getattr(local, "task_id", None) == task_id
                release_herd_key_by_key(self, keys.herd_key(cache_key), task_id, held=ran_here)

    def _header(self, name: str) -> Any:
        """A header the sender put on the message (worker) or on ``apply`` (eager)."""
        request = self.request
        value = getattr(request, name, None)
        if value is None:
            value = (getattr(request, "headers", None) or {}).get(name)
        return value

    def _run_cache_key(self, task_id: str, args: Any, kwargs: Any) -> str | None:
        """The cache key of this run: computed once in ``run``, else from the arguments."""
        local = self._local
        if getattr(local, "task_id", None) == task_id and getattr(local, "cache_key", None):
            return local.cache_key
        try:
            return self.cache_key_for(tuple(args or ()), dict(kwargs or {}))
        except TypeError:
            return None


def release_herd_key_by_key(
    task: JobtasticTask, herd_key: str | None, task_id: str, *, held: bool = False
) -> None:
    """Delete a herd key if it still holds this run's id.

    ``held``: the run kept the key alive through the heartbeat until now, so it
    is still this run's; a plain delete saves the read.
    """
    state = getattr(task.app, "_flask_jobtastic_state", None)
    if state is None or not herd_key:
        return
    if held:
        cache_ops.cache_delete(state.cache_backend, herd_key)
    else:
        cache_ops.cache_delete_if_equal(state.cache_backend, herd_key, task_id)


def _retry_wait(task: JobtasticTask, options: dict[str, Any]) -> float:
    """Seconds until a ``retry(countdown=..., eta=...)`` runs again (Celery's default delay)."""
    countdown = options.get("countdown")
    eta = options.get("eta")
    if isinstance(countdown, int | float):
        return max(float(countdown), 0.0)
    if eta is not None:
        with contextlib.suppress(Exception):
            return max(eta.timestamp() - time.time(), 0.0)
    delay = task.default_retry_delay
    return float(delay) if isinstance(delay, int | float) else 0.0


def _is_outage(
    exc: BaseException, broker_errors: tuple[type[BaseException], ...], backend: Any
) -> bool:
    """Whether a send failed because the broker, or the result store jobs need, is down.

    Celery's own Redis result consumer gives up reconnecting with a RuntimeError
    caused by a connection error (the extension's backend does not, but a
    Celery app configured with its own backend class may).
    """
    outages = broker_errors + tuple(getattr(backend, "connection_errors", ()) or ())
    if isinstance(exc, outages):
        return True
    return isinstance(exc, RuntimeError) and isinstance(exc.__cause__, outages)


def _unsendable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Name the first argument JSON cannot carry, for the error message."""
    for index, value in enumerate(args):
        try:
            json_dumps(value)
        except (TypeError, ValueError):
            return f"positional argument {index} ({type(value).__name__})"
    for name, value in kwargs.items():
        try:
            json_dumps(value)
        except (TypeError, ValueError):
            return f"argument {name!r} ({type(value).__name__})"
    return "arguments"


@task_revoked.connect
def _release_on_revoke(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A job revoked before or while running gives up its herd key."""
    if isinstance(sender, JobtasticTask) and request is not None:
        # the key the sender put on the message (owner-scoped where it applies)
        cache_key = getattr(request, "jobtastic_key", None)
        claimed = getattr(request, "jobtastic_herd", None) is not False
        if cache_key is None and claimed:
            with contextlib.suppress(TypeError):
                cache_key = sender.cache_key_for(
                    tuple(request.args or ()), dict(request.kwargs or {})
                )
        if cache_key is not None and claimed:
            release_herd_key_by_key(sender, keys.herd_key(cache_key), request.id)
        state = getattr(sender.app, "_flask_jobtastic_state", None)
        if state is not None and state.registry is not None:
            state.registry_call("record_state", request.id, "revoked")


@task_failure.connect
def _settle_worker_lost(
    sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
) -> None:
    """A pool process killed mid-job (the OOM killer, say): Celery's main process
    reports it here. The registry says failed and the herd key is freed."""
    if not isinstance(sender, JobtasticTask) or not isinstance(exception, WorkerLostError):
        return
    request = sender.request  # Celery pushes the lost job's request for this signal
    cache_key = (getattr(request, "headers", None) or {}).get("jobtastic_key") or getattr(
        request, "jobtastic_key", None
    )
    claimed = getattr(request, "jobtastic_herd", None) is not False
    if cache_key and claimed and task_id:
        release_herd_key_by_key(sender, keys.herd_key(cache_key), task_id)
    state = getattr(sender.app, "_flask_jobtastic_state", None)
    if state is not None and state.registry is not None and task_id:
        state.registry_call("record_state", task_id, "failed")


class _Run:
    """What the job's thread and the heartbeat thread share about one run."""

    __slots__ = ("start_meta", "started", "finished", "verdict", "lock")

    def __init__(self, start_meta: dict[str, Any]) -> None:
        #: PROGRESS 0, recorded when the job started.
        self.start_meta = start_meta
        #: Whether PROGRESS (and the alive marker) has been written.
        self.started = False
        #: Set as the run ends: the heartbeat writes nothing after it.
        self.finished = False
        #: What the heartbeat's last renewal found (``guards.GO_ON``,
        #: ``CANCELLED``, ``FINAL``): the job stops at its next write.
        self.verdict = guards.GO_ON
        self.lock = threading.Lock()


_process: psutil.Process | None = None
_process_pid = 0


def _rss() -> int:
    """Resident memory of this process in bytes (the Process handle per pid)."""
    global _process, _process_pid
    if _process is None or _process_pid != os.getpid():
        _process, _process_pid = psutil.Process(), os.getpid()
    return _process.memory_info().rss
