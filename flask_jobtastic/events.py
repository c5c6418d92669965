"""Event streams (Server-Sent Events): one job, several jobs, or an owner's jobs.

Streams do no I/O of their own: the process's :mod:`hub` listens and reads
for all of them and drops each job's records into the stream's inbox. A
stream turns them into documents for its viewer (owner checks included),
sends what changed and keeps the connection alive with heartbeats.

Streams of several jobs set an event id (at most once a second) that sums
up what the viewer has: a browser that reconnects sends it back as
``Last-Event-ID`` and receives only the jobs that changed while it was away.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Generator, Iterator
from typing import Any

from . import jsonsafe
from .hub import Hub, hub_for
from .inbox import Delivery, Inbox
from .reading import viewer_document
from .results import JobView
from .status import build_status

logger = logging.getLogger("flask_jobtastic")

#: The shortest interval between two cursor updates (``id:`` lines).
CURSOR_EVERY = 1.0
_CURSOR_VERSION = "1"


def format_event(document: dict[str, Any], event: str = "status") -> str:
    """One SSE message: an event name and the strict JSON document on one data line.

    Documents come from ``status.build_status``, strict JSON by construction.
    """
    return _event_text(jsonsafe.dumps(document), event)


def _event_text(data: str, event: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"


def digest(document: dict[str, Any]) -> str:
    """Six hex digits that change when the document does (for cursors)."""
    return _digest_of(jsonsafe.dumps(document))


def _digest_of(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=3).hexdigest()


def format_cursor(sent: dict[str, str]) -> str:
    """``1.<id8><digest>.<id8><digest>...``: what a viewer holds, compactly."""
    return ".".join([_CURSOR_VERSION, *(task_id[:8] + d for task_id, d in sorted(sent.items()))])


def parse_cursor(raw: str | None) -> dict[str, str]:
    """``{id8: digest}`` from a cursor; anything malformed means "holds nothing"."""
    if not raw or len(raw) > 20_000:
        return {}
    version, _, rest = raw.partition(".")
    if version != _CURSOR_VERSION:
        return {}
    held = {}
    for part in rest.split(".") if rest else ():
        if len(part) != 14:
            return {}
        held[part[:8]] = part[8:]
    return held


def event_stream(state: Any, task_id: str) -> Iterator[str]:
    """One job's stream (``/events/<id>``): ends once the job is final."""
    yield "retry: 2000\n\n"
    yield from _Stream(state, hub_for(state), single=True).run([task_id])


def jobs_stream(state: Any, task_ids: list[str], cursor: str | None) -> Iterator[str]:
    """Several jobs on one stream (``/events?ids=``); ends with ``done`` once all are final."""
    yield "retry: 2000\n\n"
    stream = _Stream(state, hub_for(state), single=False, held=parse_cursor(cursor))
    yield from stream.run(task_ids)


def owner_stream(
    state: Any, owner: str, cursor: str | None, task_ids: list[str] | None = None
) -> Iterator[str]:
    """The current owner's jobs (``/events/jobs``): what "my jobs" shows, as it changes,
    and any more jobs the page shows bars of."""
    yield "retry: 2000\n\n"
    stream = _Stream(state, hub_for(state), single=False, held=parse_cursor(cursor))
    yield from stream.run(list(task_ids or ()), owner=owner)


class _Stream:
    """One open stream: what its viewer holds, and when anything was sent."""

    def __init__(
        self, state: Any, hub: Hub, *, single: bool, held: dict[str, str] | None = None
    ) -> None:
        self.state = state
        self.hub = hub
        self.single = single
        self.inbox = Inbox()
        self.watcher = hub.open(self.inbox)
        #: what the viewer holds: job id -> digest of the last document sent
        self.sent: dict[str, str] = {}
        self.held = held or {}
        self.open_ids: set[str] = set()
        #: the jobs the page asked for by id: kept when they leave the owner's list
        self.asked: set[str] = set()
        self.records: dict[str, dict[str, Any]] = {}
        self.owner: str | None = None
        self.last_sent_at = time.monotonic()
        self.cursor_sent = format_cursor({})
        self.cursor_at = 0.0

    def run(self, task_ids: list[str], owner: str | None = None) -> Iterator[str]:
        deadline = time.monotonic() + self.state.events_max_seconds
        try:
            self._watch(task_ids, asked=True)
            if owner is not None:
                self.owner = owner
                self._watch_owner(owner)
            while time.monotonic() < deadline:
                delivery = self.inbox.take(timeout=self._wait_for())
                if delivery is not None:
                    done = yield from self._handle(delivery)
                    if done:
                        return
                yield from self._keep_alive()
        finally:
            self.hub.close(self.watcher)

    def _watch(self, task_ids: list[str], *, asked: bool = False) -> None:
        self.open_ids.update(task_ids)
        if asked:
            self.asked.update(task_ids)
        self.hub.watch(self.watcher, task_ids)

    def _watch_owner(self, owner: str) -> None:
        registry = self.state.registry
        seen_ttl = registry.seen_ttl

        def lister() -> list[Any]:
            return list(registry.for_display(owner, recent_seconds=seen_ttl))

        channel = registry.owner_channel(owner) if self.state.registry_on_backend_redis else None
        self.hub.watch_owner(self.watcher, lister, channel)

    def _wait_for(self) -> float:
        since = time.monotonic() - self.last_sent_at
        heartbeat: float = self.state.events_heartbeat
        return max(min(heartbeat - since, 1.0), 0.01)

    def _handle(self, delivery: Delivery) -> Generator[str, None, bool]:
        """Notices, the owner's list, then each job's document; True when the stream ends."""
        for notice in delivery.notices:
            if self.single and notice == "reconnecting":
                yield _unavailable_event(next(iter(self.open_ids), ""))
                return True
            yield format_event({"state": notice}, event=notice)
            self.last_sent_at = time.monotonic()
        if delivery.owner_records is not None:
            yield from self._owner_list(delivery.owner_records)
        for task_id, view in delivery.views.items():
            if view is None:
                if self.single:
                    yield _unavailable_event(task_id)
                    return True
                continue  # kept as the viewer has it; the hub reads again
            yield from self._job(task_id, view)
        if self.single:
            return not self.open_ids
        if self.owner is None and not self.open_ids:
            yield from self._cursor(force=True)
            yield format_event({"state": "done"}, event="done")
            return True
        yield from self._cursor()
        return False

    def _job(self, task_id: str, view: JobView) -> Iterator[str]:
        """Send one job's document if it changed for this viewer."""
        if task_id not in self.open_ids:
            return  # dropped since the hub read it
        state = self.state
        if state.may_read(view.job, has_side_records=view.has_side_records):
            document = viewer_document(state, task_id, view)
        else:
            document = build_status(task_id, None)  # not this viewer's: unknown
        text = jsonsafe.dumps(document)  # once, for the digest and the event
        key = _digest_of(text)
        if self.sent.get(task_id) != key and self.held.pop(task_id[:8], None) != key:
            yield _event_text(text, "status")
            self.last_sent_at = time.monotonic()
        self.sent[task_id] = key
        if document.get("ready") or document.get("state") == "UNKNOWN":
            self.open_ids.discard(task_id)
            self.hub.unwatch(self.watcher, [task_id])

    def _owner_list(self, records: list[Any]) -> Iterator[str]:
        """Jobs added to or changed in the owner's list, and jobs gone from it."""
        current = {record.id: record.to_dict() for record in records}
        for task_id, record in current.items():
            if self.records.get(task_id) != record:
                yield format_event(record, event="job")
                self.last_sent_at = time.monotonic()
            if task_id not in self.records and not record.get("finished"):
                self._watch([task_id])
        for task_id in set(self.records) - set(current):
            yield format_event({"task_id": task_id}, event="removed")
            if task_id in self.asked:
                continue
            self.sent.pop(task_id, None)
            if task_id in self.open_ids:
                self.open_ids.discard(task_id)
                self.hub.unwatch(self.watcher, [task_id])
        self.records = current

    def _cursor(self, *, force: bool = False) -> Iterator[str]:
        """An ``id:`` line (no event) once the viewer's holdings changed, at most once a second."""
        if self.single:
            return
        now = time.monotonic()
        if not force and now - self.cursor_at < CURSOR_EVERY:
            return
        cursor = format_cursor(self.sent)
        if cursor != self.cursor_sent:
            yield f"id: {cursor}\n\n"
            self.cursor_sent, self.cursor_at = cursor, now

    def _keep_alive(self) -> Iterator[str]:
        """A comment when nothing was sent for a heartbeat: proxies keep the stream,
        and a client that left is noticed at this write."""
        if time.monotonic() - self.last_sent_at >= self.state.events_heartbeat:
            yield from self._cursor(force=True)
            yield ": heartbeat\n\n"
            self.last_sent_at = time.monotonic()


def _unavailable_event(task_id: str) -> str:
    logger.warning("Result backend unavailable in the event stream of %s", task_id)
    return format_event(
        {
            "task_id": task_id,
            "error": {
                "type": "ResultBackendUnavailable",
                "message": "Job status is temporarily unavailable.",
            },
        },
        event="unavailable",
    )
