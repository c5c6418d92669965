"""Celery's Redis result backend, made safe to call from a web request.

Celery subscribes every job it sends to its result channel (so that
``AsyncResult.get()`` cannot miss a fast result), before it publishes the
message. With the result Redis down, that subscription retries for about 20 s
and then raises ``RuntimeError``: a request that only wanted to queue a job
hangs, then fails. The subscription is an optimisation (``get()`` subscribes
again itself), so here it is one attempt that never fails the send, and the
unsubscribe a collected result does on its way out is the same. A waiter in
``get()`` keeps Celery's patient reconnects.

:func:`single_attempt` gives the web side's own backend writes (the failure of
a job that could not be queued, an eager run's result) the same bound: one
attempt instead of Celery's 20 retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from celery import states as celery_states

# Celery internals this backend extends; celery-types does not describe them.
from celery._state import task_join_will_block  # type: ignore[attr-defined]
from celery.backends.redis import RedisBackend, ResultConsumer  # type: ignore[attr-defined]

from . import results, side_records

logger = logging.getLogger("flask_jobtastic")

#: Result backend URL schemes served by :class:`JobtasticRedisBackend`.
REDIS_SCHEMES = ("redis://", "rediss://")

#: Minimum seconds between two warnings about a failed subscription.
_WARN_INTERVAL = 10.0


class _Flag(threading.local):
    on = False


@contextlib.contextmanager
def _raised(flag: _Flag) -> Iterator[None]:
    previous = flag.on
    flag.on = True
    try:
        yield
    finally:
        flag.on = previous


class SendSafeResultConsumer(ResultConsumer):  # type: ignore[misc]  # untyped in the stubs
    """Celery's Redis result consumer whose send-time calls cannot block or raise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set while a subscription is made for a sender (or dropped by a
        #: collected result): one reconnect attempt, not Celery's retry loop.
        self._hurried = _Flag()
        self._warned_at = 0.0

    def _reconnect(self) -> None:
        if self._hurried.on:
            self._reconnect_pubsub()
        else:
            super()._reconnect()

    def start(self, initial_task_id: str, **kwargs: Any) -> None:
        """Open the subscription; after a lost one, subscribe every key still wanted."""
        with self._locked():
            if not self.subscribed_to:
                super().start(initial_task_id, **kwargs)
                return
            key = self._get_key_for_task(initial_task_id)
            self._pending_unsubscribe.discard(key)
            self.subscribed_to.add(key)
            with self.reconnect_on_error():
                self._reconnect_pubsub()

    def subscribe_for_sender(self, task_id: str) -> None:
        """Subscribe to a job about to be sent; an outage is logged, not raised."""
        with _raised(self._hurried):
            try:
                self.consume_from(task_id)
            except Exception as exc:
                self._drop_subscription(exc, self._get_key_for_task(task_id))

    def cancel_for(self, task_id: str) -> None:
        """Unsubscribe (a result was collected); an outage is logged, not raised."""
        with _raised(self._hurried):
            try:
                super().cancel_for(task_id)
            except Exception as exc:
                self._drop_subscription(exc, None)

    def _drop_subscription(self, exc: BaseException, key: Any) -> None:
        """Forget a connection that failed; the next subscription opens a new one.

        A key that could not be subscribed is forgotten too, so a later
        ``get()`` subscribes it for real instead of believing it is.
        """
        if key is not None:
            self.subscribed_to.discard(key)
        pubsub: Any = self._pubsub  # type: ignore[has-type]  # Celery's, untyped
        self._pubsub = None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
        now = time.monotonic()
        if now - self._warned_at >= _WARN_INTERVAL:
            self._warned_at = now
            cause = exc.__cause__ or exc
            logger.warning(
                "Result backend unreachable for the result subscription (%s: %s); "
                "jobs are still sent, their status is read when it is back",
                type(cause).__name__,
                cause,
            )


#: Connection pools by Celery app (see ``JobtasticRedisBackend._get_pool``).
_pools: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


class JobtasticRedisBackend(RedisBackend):
    """The Redis result backend flask-jobtastic installs (``Celery.backend_cls``)."""

    ResultConsumer = SendSafeResultConsumer

    def __init__(self, *args: Any, url: str | None = None, **kwargs: Any) -> None:
        # Installed as a class, so Celery passes no URL: take the configured one.
        app = kwargs.get("app")
        if url is None and app is not None:
            url = str(app.conf.result_backend or "") or None
        super().__init__(*args, url=url, **kwargs)  # type: ignore[misc]  # url is not in args
        self._once = _Flag()

    def _get_pool(self, **params: Any) -> Any:
        """One connection pool per Celery app and process, whatever the thread.

        Celery makes a result backend per thread, and gevent makes every
        greenlet a thread: without this, each open request (a keep-alive
        client, a stream) would hold a Redis connection of its own.
        """
        key = (os.getpid(), tuple(sorted((name, repr(value)) for name, value in params.items())))
        with _pools_lock:
            pools = _pools.setdefault(self.app, {})  # type: ignore[attr-defined]  # Celery sets it
            pool = pools.get(key)
            if pool is None:
                pool = pools[key] = super()._get_pool(**params)  # type: ignore[misc]
            return pool

    def on_task_call(self, producer: Any, task_id: str) -> None:
        if not task_join_will_block():
            self.result_consumer.subscribe_for_sender(task_id)  # type: ignore[attr-defined]

    def ensure(self, fun: Any, args: Any, **policy: Any) -> Any:
        if self._once.on:
            policy = {**policy, "max_retries": 0}
        return super().ensure(fun, args, **policy)

    #: Set by a job's final write when its owner record must be renewed with it.
    extends_job_record = True

    def _set_with_state(self, key: Any, value: Any, state: str) -> Any:
        """A job's final state renews its owner record in the same round trip.

        Celery restarts the meta's expiry with this write; the record that
        says who may read the meta must not be the first to go.
        """
        if state not in celery_states.READY_STATES:
            return super()._set_with_state(key, value, state)  # type: ignore[misc]
        failed = state == celery_states.FAILURE
        expires = self.failure_expires if failed else None  # type: ignore[attr-defined]
        return self.ensure(self._set_final, (key, value, expires))

    def _set_final(self, key: Any, value: Any, expires: Any = None) -> None:
        if expires is None:
            expires = self.expires  # type: ignore[attr-defined]
        prefix = self.task_keyprefix
        raw_key = key.decode() if isinstance(key, bytes) else str(key)
        raw_prefix = prefix.decode() if isinstance(prefix, bytes) else str(prefix)
        with self.client.pipeline() as pipe:
            if expires:
                pipe.setex(key, expires, value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            job_ttl = results.job_record_ttl(self)
            if raw_key.startswith(raw_prefix) and job_ttl:
                pipe.expire(side_records.side_key("job", raw_key[len(raw_prefix) :]), job_ttl)
            pipe.execute()

    @contextlib.contextmanager
    def attempt_once(self) -> Iterator[None]:
        """Writes in this block try once: a request must not wait out an outage."""
        with _raised(self._once):
            yield


@contextlib.contextmanager
def single_attempt(backend: Any) -> Iterator[None]:
    """``backend.attempt_once()`` where the backend has it; otherwise nothing changes."""
    attempt_once = getattr(backend, "attempt_once", None)
    if attempt_once is None:
        yield
        return
    with attempt_once():
        yield


def install(celery: Any) -> None:
    """Use :class:`JobtasticRedisBackend` for a Redis result backend.

    Left alone: other backends, and a Celery app given its own ``backend_cls``.
    """
    url = str(celery.conf.result_backend or "")
    if not url.startswith(REDIS_SCHEMES) or celery.backend_cls is not None:
        return
    celery.backend_cls = JobtasticRedisBackend
    existing = celery._backend  # made before the extension saw this app: replace it
    if existing is not None and not isinstance(existing, JobtasticRedisBackend):
        celery._backend_cache = None
        celery._local.__dict__.pop("backend", None)
