"""``JobtasticTask``: the base class users subclass for user-facing jobs.

A subclass sets a few class attributes and writes ``calculate_result``;
calling it on the class (``MyTask.delay_or_fail(...)``) goes through result
caching, thundering-herd avoidance and broker fallbacks before anything
reaches the broker. On the worker, the job runs inside the Flask app
context, reports throttled progress and checks its memory growth.

This class is a facade, as Celery's own ``Task`` is over sending and
tracing: sending lives in ``sending``, the run in ``running``, what the job
calls on ``self`` in ``reporting``, how a job ends in ``lifecycle``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, ClassVar

from billiard.exceptions import WorkerLostError
from celery import Signature, Task
from celery.result import AsyncResult, EagerResult
from celery.signals import task_failure, task_revoked
from flask import current_app, has_app_context

from . import keys, lifecycle, running, sending
from .binding import (
    ClassOrInstanceMethod,
    PerInstanceApp,
    PerInstanceAppGetter,
    register_task_class,
)
from .heartbeat import MIN_TIMEOUT
from .reporting import ReportingMixin
from .state import JobtasticState, state_for

logger = logging.getLogger("flask_jobtastic")

#: The shortest ``herd_avoidance_timeout`` whose claim renewals always come in time.
MIN_HERD_TIMEOUT = int(MIN_TIMEOUT)

_Args = tuple[Any, ...] | list[Any] | None


class JobtasticTask(ReportingMixin, Task):  # type: ignore[type-arg]  # any arguments, any result
    """Base class of user-facing jobs. Subclass it and write ``calculate_result``."""

    abstract = True
    #: The arguments that decide whether two calls are the same job, as names
    #: or ``(name, to_str)`` pairs.
    significant_kwargs: ClassVar[list[Any]] = []
    #: Required: seconds an identical call waits on a job in flight before
    #: starting its own; also how soon a crashed worker's claim expires.
    herd_avoidance_timeout: ClassVar[int | None] = None
    #: -1 no result caching (default), 0 forever, N seconds.
    cache_duration: ClassVar[int] = -1
    #: Namespace of the keys; defaults to ``module.ClassName``.
    cache_prefix: ClassVar[str | None] = None
    #: MB of RSS growth per run that triggers ``warn_of_memory_leak``; -1
    #: (default) off, 0 any growth.
    memleak_threshold: ClassVar[float] = -1
    #: Steps shown from the first poll, as ``(key, name)`` pairs or names.
    steps: ClassVar[list[Any]] = []
    #: Keep a registry record of every job of this class: it then shows in "my jobs".
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
    app = PerInstanceApp()
    _get_app = PerInstanceAppGetter()

    _significant: ClassVar[list[tuple[str, keys.Converter]]] = []
    _signature: ClassVar[inspect.Signature | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        cls.abstract = False
        _check_class(cls)
        if "name" not in cls.__dict__ or cls.__dict__["name"] is None:
            cls.name = f"{cls.__module__}.{cls.__name__}"
        if not cls.__dict__.get("cache_prefix"):
            cls.cache_prefix = f"{cls.__module__}.{cls.__name__}"
        register_task_class(cls)

    # -- the user's side -------------------------------------------------

    def calculate_result(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work and return a JSON-serializable result. Override this."""
        raise NotImplementedError(f"{type(self).__qualname__} must define calculate_result")

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

    def on_cancel(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called in the worker when a running job stops because it was cancelled.

        Override it to clean up what the job leaves half done (temporary
        files, partial uploads). It runs before the job reads ``REVOKED`` (a
        moment after, when another worker stored ``REVOKED`` for a job that
        had not shown progress yet), and an exception here is logged, not raised.
        """

    def cache_key_for(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> str:
        """The key shared by every call with the same significant arguments."""
        arguments = self._bind_arguments(args, kwargs or {})
        values = keys.significant_values(self.name, self._significant, arguments)
        return keys.build_cache_key(self.cache_prefix or self.name, values)

    # -- sending -----------------------------------------------------------

    @ClassOrInstanceMethod
    def apply_async(  # type: ignore[override]  # callable on the class too
        self, /, args: _Args = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send the job, unless a cached result or an identical run in flight exists.

        ``herd_avoidance=False`` skips joining a run in flight for this call.
        A broker error is raised; see ``async_or_fail`` / ``async_or_eager``.
        """
        if "retries" in options:  # self.retry(): the same job, sent again as is
            return Task.apply_async(self, _tuple(args), kwargs, **options)
        return sending.dispatch(self, args, kwargs, options, "raise")

    @ClassOrInstanceMethod
    def delay(self, /, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """``apply_async`` with the call's own arguments."""
        return sending.dispatch(self, args, kwargs, {}, "raise")

    @ClassOrInstanceMethod
    def delay_or_eager(self, /, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Like ``delay``; with the broker down, run the job in this process."""
        return sending.dispatch(self, args, kwargs, {}, "eager")

    @ClassOrInstanceMethod
    def delay_or_fail(self, /, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Like ``delay``; with the broker down, return a result in FAILURE."""
        return sending.dispatch(self, args, kwargs, {}, "fail")

    @ClassOrInstanceMethod
    def async_or_eager(
        self, /, args: _Args = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """``apply_async`` that runs the job in this process when the broker is down."""
        return sending.dispatch(self, args, kwargs, options, "eager")

    @ClassOrInstanceMethod
    def async_or_fail(
        self, /, args: _Args = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """``apply_async`` that returns a FAILURE result when the broker is down."""
        return sending.dispatch(self, args, kwargs, options, "fail")

    @ClassOrInstanceMethod
    def apply(  # type: ignore[override]  # callable on the class too
        self, /, args: _Args = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> EagerResult[Any]:
        """Run the job in this process now (Celery's ``apply``), result stored."""
        return Task.apply(self, _tuple(args), kwargs, **options)

    @ClassOrInstanceMethod
    def s(self, /, *args: Any, **kwargs: Any) -> Signature[Any]:
        """A signature of this job for a group, chord or chain (``canvas_or_fail``)."""
        return Task.s(self, *args, **kwargs)

    @ClassOrInstanceMethod
    def si(self, /, *args: Any, **kwargs: Any) -> Signature[Any]:
        """An immutable signature: a chain or chord passes it no previous result."""
        return Task.si(self, *args, **kwargs)

    @ClassOrInstanceMethod
    def AsyncResult(self, /, task_id: str, **kwargs: Any) -> AsyncResult[Any]:  # noqa: N802
        """The result handle of a job id, on this app's result backend."""
        return Task.AsyncResult(self, task_id, **kwargs)

    # -- running -----------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's entry point: the job runs inside the Flask app context.

        Pushed here rather than in ``__call__``, which Celery's worker skips
        (a faster path) for tasks that do not override it.
        """
        state = self._state_or_none()
        if state is None or (has_app_context() and _current_flask_app() is state.app):
            return running.execute(self, state, args, kwargs)
        with state.app.app_context():
            return running.execute(self, state, args, kwargs)

    # -- Celery's hooks ----------------------------------------------------

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Cache the id of a successful run for ``cache_duration``."""
        lifecycle.succeeded(self, task_id, args, kwargs, retval)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Log the traceback with the error id the user sees."""
        lifecycle.failed(self, exc, task_id, einfo)

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """A retry is still the same job: the registry says ``retrying``."""
        lifecycle.retrying(self, task_id)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``retry``; the herd claim is kept while the job waits to run again."""
        lifecycle.keep_claim_for_retry(self, kwargs)
        return super().retry(*args, **kwargs)

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Release the herd key once the job is over, whatever the outcome."""
        lifecycle.returned(self, status, task_id, args, kwargs)

    # -- shared with the modules behind the facade ---------------------------

    def _state_or_none(self) -> JobtasticState | None:
        return state_for(self.app)

    def _header(self, name: str) -> Any:
        """A header the sender put on the message (worker) or on ``apply`` (eager)."""
        request = self.request
        value = getattr(request, name, None)
        if value is None:
            value = (getattr(request, "headers", None) or {}).get(name)
        return value

    def _bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """``calculate_result``'s arguments by name; a TypeError names a bad call."""
        assert self._signature is not None
        return keys.bind_arguments(self.name, self._signature, args, kwargs)


def _current_flask_app() -> Any:
    return current_app._get_current_object()  # type: ignore[attr-defined]  # a werkzeug proxy


def _tuple(args: _Args) -> tuple[Any, ...] | None:
    return None if args is None else tuple(args)


@task_revoked.connect
def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A job revoked before or while running gives up its herd key."""
    if isinstance(sender, JobtasticTask) and request is not None:
        lifecycle.revoked_unrun(sender, request)


@task_failure.connect
def _on_task_failure(
    sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
) -> None:
    """A pool process killed mid-job, as Celery's main process reports it."""
    if isinstance(sender, JobtasticTask) and isinstance(exception, WorkerLostError) and task_id:
        lifecycle.worker_lost(sender, task_id, exception)


# -- class checks: fail at class definition, naming the attribute to fix --------


def _check_class(cls: type[JobtasticTask]) -> None:
    name = cls.__qualname__
    if cls.calculate_result is JobtasticTask.calculate_result:
        raise TypeError(f"{name} must define calculate_result(self, ...)")
    _check_herd_timeout(name, cls.herd_avoidance_timeout)
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
            f"{name}.memleak_threshold must be -1 (off), 0 (any growth) or MB, got {threshold!r}"
        )
    _check_significant(cls)


def _check_herd_timeout(name: str, timeout: object) -> None:
    if timeout is None:
        raise TypeError(
            f"{name} must set herd_avoidance_timeout: the most seconds an identical call "
            "should wait for a run in flight (e.g. herd_avoidance_timeout = 60)"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise TypeError(f"{name}.herd_avoidance_timeout must be a positive int, got {timeout!r}")
    if timeout < MIN_HERD_TIMEOUT:
        raise TypeError(
            f"{name}.herd_avoidance_timeout must be at least {MIN_HERD_TIMEOUT} seconds, got "
            f"{timeout!r}: the claim is renewed every third of it, and memcached counts "
            "expiry in whole seconds, so a shorter claim can lapse while the job runs"
        )


def _check_significant(cls: type[JobtasticTask]) -> None:
    """``significant_kwargs`` must name arguments ``calculate_result`` takes."""
    cls._significant = keys.normalize_significant(cls.significant_kwargs)
    signature = inspect.signature(cls.calculate_result)
    parameters = list(signature.parameters.values())[1:]  # drop self
    cls._signature = signature.replace(parameters=parameters)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    known = {p.name for p in parameters}
    for arg_name, _ in cls._significant:
        if not takes_any and arg_name not in known:
            raise TypeError(
                f"{cls.__qualname__}.significant_kwargs names {arg_name!r}, which "
                f"calculate_result{cls._signature} does not take"
            )
