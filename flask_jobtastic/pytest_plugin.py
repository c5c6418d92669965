"""The pytest plugin of flask-jobtastic (entry point ``pytest11``), opt-in by name.

It adds fixtures and nothing else: no hook, no option, nothing run unless a
test asks for a fixture by name. The fixtures that need the application
take it from an ``app`` fixture the project defines (pytest-flask's
convention), returning the Flask app with the extension initialised.
See "Testing your jobs" in the README and ``flask_jobtastic.testing``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flask import Flask

    from .testing import JobClock, JobRecorder


@pytest.fixture
def jobtastic_app(app: Flask) -> Iterator[Flask]:
    """``app``, its jobs run synchronously (where sent, stored as a worker's run)."""
    from .testing import synchronous

    with synchronous(app):
        yield app


@pytest.fixture
def jobtastic_recorder(app: Flask) -> Iterator[JobRecorder]:
    """Every status document of every job of ``app``, in order: ``.documents(task_id)``."""
    from .testing import JobRecorder

    with JobRecorder(app) as recorder:
        yield recorder


@pytest.fixture
def jobtastic_clock() -> Iterator[JobClock]:
    """The time the progress meter reads: ``.advance(seconds)``, ``.tick`` per reading."""
    from .testing import controlled_clock

    with controlled_clock() as clock:
        yield clock


@pytest.fixture
def jobtastic_broker_down(app: Flask) -> Iterator[str]:
    """The broker of ``app`` refuses connections for the whole test; the dead URL."""
    from .testing import broker_down

    with broker_down(app) as url:
        yield url


@pytest.fixture
def jobtastic_worker(app: Flask) -> Iterator[Any]:
    """A Celery worker thread (threads pool, 2 threads) on the servers ``app`` is set to."""
    from .testing import in_process_worker

    with in_process_worker(app) as worker:
        yield worker
