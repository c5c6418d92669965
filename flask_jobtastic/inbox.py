"""What the event hub has for one stream, taken at the stream's own pace.

The hub thread puts; a stream's generator takes. Putting never blocks and
keeps only the newest record per job, so a slow or silent client costs the
hub nothing and holds no more than one entry per job it watches.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .results import JobView


class Inbox:
    """What the hub has for one stream: the newest records per job, and notices.

    Putting never blocks and never grows past one entry per watched job, so a
    slow or silent client costs the hub nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._views: dict[str, JobView | None] = {}
        self._notices: list[str] = []
        self._owner_records: list[Any] | None = None

    def put_view(self, task_id: str, view: JobView | None) -> None:
        """``None``: the job could not be read (the result backend failed)."""
        with self._lock:
            self._views[task_id] = view
        self._ready.set()

    def put_notice(self, notice: str) -> None:
        """``"reconnecting"`` (Redis went away) or ``"resumed"`` (back, re-read)."""
        with self._lock:
            if not self._notices or self._notices[-1] != notice:
                self._notices.append(notice)
        self._ready.set()

    def put_owner_records(self, records: list[Any]) -> None:
        with self._lock:
            self._owner_records = records
        self._ready.set()

    def take(self, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` for anything; None when nothing came."""
        if not self._ready.wait(timeout):
            return None
        with self._lock:
            self._ready.clear()
            delivery = Delivery(self._views, self._notices, self._owner_records)
            self._views, self._notices, self._owner_records = {}, [], None
        return delivery


@dataclass
class Delivery:
    """Everything an inbox held at one ``take``."""

    views: dict[str, JobView | None]
    notices: list[str]
    owner_records: list[Any] | None
