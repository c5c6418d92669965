"""A Celery worker thread inside the web process, for the no-servers mode.

With the in-memory broker and result store nothing else could run the
jobs, so the extension starts this worker on the first job sent. It is for
demos, development and single-process tests; production runs
``celery worker`` as a separate process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger("flask_jobtastic")


class EmbeddedWorker:
    """One ``WorkController`` with a thread pool, run on a daemon thread."""

    def __init__(self, celery: Any, concurrency: int) -> None:
        self.celery = celery
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._controller: Any = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ensure_started(self, timeout: float = 10.0) -> None:
        """Start the worker once; later calls return at once."""
        if self.running:
            return
        with self._lock:
            if self.running:
                return
            ready = threading.Event()
            # The thread pool resolves tasks through Celery's default app, as
            # the ``celery worker`` command arranges for its own app.
            self.celery.set_default()
            self._controller = self.celery.WorkController(
                hostname=f"embedded-{id(self):x}@localhost",
                pool="threads",
                concurrency=self.concurrency,
                loglevel="WARNING",
                ready_callback=lambda *_: ready.set(),
                without_heartbeat=True,
                without_mingle=True,
                without_gossip=True,
            )
            self._thread = threading.Thread(
                target=self._controller.start, name="jobtastic-embedded-worker", daemon=True
            )
            self._thread.start()
            if not ready.wait(timeout):
                logger.warning("The embedded Celery worker did not report ready in %ss", timeout)

    def stop(self) -> None:
        """Stop the worker (used by tests and at interpreter exit)."""
        with self._lock:
            if self._controller is not None:
                self._controller.stop(in_sighandler=False)
            if self._thread is not None:
                self._thread.join(10)
            self._thread = None
            self._controller = None
