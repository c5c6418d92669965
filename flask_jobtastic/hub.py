"""One listener per web process for every open event stream.

A page's stream, or a thousand of them, does not each hold a Redis
connection and a blocked thread. The hub holds one pub/sub connection (on
the result backend's Redis) and one reader, on a single thread of its own:
streams tell it which jobs they watch, it subscribes to a job's channel
while anyone watches it, reads the jobs that changed in one round trip, and
drops what it read into each watcher's :class:`Inbox`, which never blocks
the hub. Streams then turn those records into documents for their viewer.

After a Redis restart the hub says so to every stream, reconnects with a
backoff, subscribes again to everything and re-reads every watched job. On
a result backend without pub/sub it re-reads every watched job at the poll
interval instead: one batched read for the whole process, not one per stream.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import results
from .inbox import Inbox
from .results import JobView

logger = logging.getLogger("flask_jobtastic")

#: How often the hub thread looks for new watches and due re-reads while no
#: message arrives: the delay before a new stream's first document.
TICK = 0.05
#: Seconds between reconnect attempts after Redis went away, growing to the last.
BACKOFF = (0.25, 0.5, 1.0, 2.0, 5.0)
#: Seconds between two looks for jobs and lists due to be read again.
REREAD_CHECK = 0.25
#: Seconds between two reads of an owner's list when no channel announces changes.
OWNER_POLL = 1.0
#: Seconds without any watcher after which the hub's thread ends.
IDLE_EXIT = 5.0

#: A function that lists what an owner stream shows (the registry's records).
Lister = Callable[[], list[Any]]


@dataclass(eq=False)
class Watcher:
    """One stream as the hub sees it: the jobs it watches, where their records go."""

    inbox: Inbox
    task_ids: set[str] = field(default_factory=set)
    lister: Lister | None = None
    owner_channel: str | None = None
    listed_at: float = 0.0


class Hub:
    """The process's listener for one result backend; see the module docstring."""

    def __init__(self, celery: Any, *, poll_interval: float, reread_every: float) -> None:
        self.celery = celery
        self.poll_interval = poll_interval
        self.reread_every = reread_every
        self.pid = os.getpid()
        #: Celery keeps a result backend per thread (and per greenlet under
        #: gevent): the hub's thread has its own, so streams hold no connection.
        self.backend: Any = None
        self.polls = False  # decided by the backend the hub's thread gets
        self._lock = threading.Lock()
        self._watchers: set[Watcher] = set()
        #: job id -> watchers, and when the hub last read it
        self._by_job: dict[str, set[Watcher]] = {}
        self._read_at: dict[str, float] = {}
        self._by_owner_channel: dict[str, set[Watcher]] = {}
        #: jobs and owner lists to read on the next turn (new watches, messages)
        self._due: set[str] = set()
        self._due_owners: set[Watcher] = set()
        self._subscribed: set[str] = set()
        #: channel -> job id, for the jobs watched now
        self._job_of: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._idle_since: float | None = None
        self._rereads_at = 0.0
        #: Redis went away and the hub has not got it back yet
        self._lost = False
        self.connected = False

    # -- what streams call ----------------------------------------------------------

    def open(self, inbox: Inbox) -> Watcher:
        watcher = Watcher(inbox)
        with self._lock:
            self._watchers.add(watcher)
            self._ensure_thread()
            lost = self._lost
        if lost:  # opened during an outage: told at once, like the streams before it
            inbox.put_notice("reconnecting")
        return watcher

    def watch(self, watcher: Watcher, task_ids: Iterable[str]) -> None:
        """Start delivering these jobs' records to ``watcher``, beginning with a read now."""
        with self._lock:
            for task_id in task_ids:
                watcher.task_ids.add(task_id)
                self._by_job.setdefault(task_id, set()).add(watcher)
                self._due.add(task_id)
            self._ensure_thread()

    def unwatch(self, watcher: Watcher, task_ids: Iterable[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                watcher.task_ids.discard(task_id)
                self._drop_job_watcher(task_id, watcher)

    def watch_owner(self, watcher: Watcher, lister: Lister, channel: str | None) -> None:
        """Deliver the owner's list now and whenever ``channel`` says it changed
        (without a channel, at every re-read)."""
        with self._lock:
            watcher.lister, watcher.owner_channel = lister, channel
            if channel is not None:
                self._by_owner_channel.setdefault(channel, set()).add(watcher)
            self._due_owners.add(watcher)

    def close(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)
            for task_id in list(watcher.task_ids):
                self._drop_job_watcher(task_id, watcher)
            watcher.task_ids.clear()
            channel = watcher.owner_channel
            if channel is not None:
                owners = self._by_owner_channel.get(channel, set())
                owners.discard(watcher)
                if not owners:
                    self._by_owner_channel.pop(channel, None)
            self._due_owners.discard(watcher)

    def channels(self) -> set[str]:
        """The channels the hub should be subscribed to now (on the hub's thread)."""
        with self._lock:
            job_ids = set(self._by_job)
            owner_channels = set(self._by_owner_channel)
        if job_ids != set(self._job_of.values()):  # keys are made only for new jobs
            known = {tid: channel for channel, tid in self._job_of.items() if tid in job_ids}
            for task_id in job_ids - set(known):
                known[task_id] = _text(self.backend.get_key_for_task(task_id))
            self._job_of = {channel: tid for tid, channel in known.items()}
        return set(self._job_of) | owner_channels

    def _drop_job_watcher(self, task_id: str, watcher: Watcher) -> None:
        watchers = self._by_job.get(task_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._by_job[task_id]
            self._read_at.pop(task_id, None)
            self._due.discard(task_id)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="jobtastic-hub", daemon=True)
            self._thread.start()

    # -- the hub's thread ------------------------------------------------------------

    def _run(self) -> None:
        self.backend = self.celery.backend  # this thread's own
        self.polls = not results.is_redis_backend(self.backend)
        if self.polls:
            self._poll_until_idle()
        else:
            self._listen_until_idle()

    def _idle(self) -> bool:
        """Whether nobody has watched anything for a while: the thread may end."""
        with self._lock:
            if self._watchers:
                self._idle_since = None
                return False
            now = time.monotonic()
            if self._idle_since is None:
                self._idle_since = now
            if now - self._idle_since < IDLE_EXIT:
                return False
            self._thread = None  # the next watch starts a new one
            return True

    def _poll_until_idle(self) -> None:
        """No pub/sub: every watched job is read at the poll interval, in one round trip."""
        self.connected = True
        while not self._idle():
            started = time.monotonic()
            with self._lock:
                self._due.update(self._by_job)
                self._due_owners.update(w for w in self._watchers if w.lister is not None)
            self._serve_due()
            time.sleep(max(self.poll_interval - (time.monotonic() - started), TICK))

    def _listen_until_idle(self) -> None:
        attempt = 0
        while not self._idle():
            pubsub = None
            try:
                pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)
                self._subscribed = set()
                self._sync_subscriptions(pubsub)
                if attempt or self._lost:  # back after an outage (maybe a thread ago)
                    self._resumed()
                attempt = 0
                self.connected = True
                while not self._idle():
                    self._turn(pubsub)
                return
            except Exception as exc:
                self.connected = False
                with self._lock:
                    self._lost = True
                if attempt == 0:
                    logger.warning(
                        "Event hub lost Redis (%s: %s); reconnecting", type(exc).__name__, exc
                    )
                    self._notify_all("reconnecting")
                time.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                attempt += 1
            finally:
                _close_quietly(pubsub)

    def _turn(self, pubsub: Any) -> None:
        """One wait for messages, then whatever became due."""
        message = pubsub.get_message(timeout=TICK)
        while message is not None:
            self._on_message(message)
            message = pubsub.get_message(timeout=0)
        self._sync_subscriptions(pubsub)
        self._mark_rereads_due()
        self._serve_due()

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel = _text(message.get("channel"))
        with self._lock:
            owners = self._by_owner_channel.get(channel)
            if owners:
                self._due_owners.update(owners)
                return
            task_id = self._job_of.get(channel)
            if task_id in self._by_job:
                self._due.add(task_id)

    def _sync_subscriptions(self, pubsub: Any) -> None:
        wanted = self.channels()
        new, gone = wanted - self._subscribed, self._subscribed - wanted
        if new:
            pubsub.subscribe(*new)
        if gone:
            pubsub.unsubscribe(*gone)
        self._subscribed = wanted

    def _mark_rereads_due(self) -> None:
        """A job nobody wrote for a heartbeat is read again: its worker may be gone.

        An owner's list is read again as often, or every second when no channel
        announces its changes. Looked at a few times a second, not every turn.
        """
        now = time.monotonic()
        if now - self._rereads_at < REREAD_CHECK:
            return
        self._rereads_at = now
        with self._lock:
            for task_id in self._by_job:
                if now - self._read_at.get(task_id, 0.0) >= self.reread_every:
                    self._due.add(task_id)
            for watcher in self._watchers:
                if watcher.lister is None:
                    continue
                every = self.reread_every if watcher.owner_channel else OWNER_POLL
                if now - watcher.listed_at >= every:
                    self._due_owners.add(watcher)

    def _resumed(self) -> None:
        with self._lock:
            self._lost = False
            self._due.update(self._by_job)
            self._due_owners.update(w for w in self._watchers if w.lister is not None)
        self._notify_all("resumed")

    def _serve_due(self) -> None:
        """Read what became due in one round trip and hand it to its watchers."""
        with self._lock:
            due, self._due = list(self._due), set()
            owners, self._due_owners = list(self._due_owners), set()
        if due:
            self._deliver_jobs(due)
        for watcher in owners:
            self._deliver_owner(watcher)

    def _deliver_jobs(self, task_ids: list[str]) -> None:
        try:
            views: dict[str, JobView | None] = dict(results.read_jobs(self.backend, task_ids))
        except Exception:
            logger.warning("Event hub could not read %d job(s)", len(task_ids), exc_info=True)
            views = dict.fromkeys(task_ids)
        now = time.monotonic()
        with self._lock:
            targets = [(tid, list(self._by_job.get(tid, ()))) for tid in task_ids]
            for task_id, _ in targets:
                if task_id in self._by_job:
                    self._read_at[task_id] = now
        for task_id, watchers in targets:
            for watcher in watchers:
                watcher.inbox.put_view(task_id, views.get(task_id))

    def _deliver_owner(self, watcher: Watcher) -> None:
        lister = watcher.lister
        if lister is None:
            return
        watcher.listed_at = time.monotonic()
        try:
            records = lister()
        except Exception:
            logger.warning("Event hub could not list an owner's jobs", exc_info=True)
            return
        watcher.inbox.put_owner_records(records)

    def _notify_all(self, notice: str) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.inbox.put_notice(notice)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _close_quietly(pubsub: Any | None) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:
            logger.debug("Closing the event hub's pub/sub failed", exc_info=True)


_hubs: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def hub_for(state: Any) -> Hub:
    """The hub of this app's Celery in this process (made on first use)."""
    celery = state.celery
    with _hubs_lock:
        hub = _hubs.get(celery)
        if hub is None or hub.pid != os.getpid():  # a forked web worker starts its own
            hub = Hub(
                celery,
                poll_interval=state.events_poll_interval,
                reread_every=state.events_heartbeat,
            )
            _hubs[celery] = hub
        return hub
