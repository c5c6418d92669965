"""flask-jobtastic: user-facing, long-running Celery jobs for Flask."""

from __future__ import annotations

from .canvas import CanvasError, canvas_or_eager, canvas_or_fail
from .errors import BrokerUnavailable, ConfigurationError, JobFailed, JobtasticError
from .extension import Jobtastic
from .state import JobtasticState
from .states import (
    FAILURE,
    PENDING,
    PROGRESS,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    UNKNOWN,
)
from .task import JobtasticTask

__all__ = [
    "FAILURE",
    "PENDING",
    "PROGRESS",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNKNOWN",
    "BrokerUnavailable",
    "CanvasError",
    "ConfigurationError",
    "JobFailed",
    "Jobtastic",
    "JobtasticError",
    "JobtasticState",
    "JobtasticTask",
    "canvas_or_eager",
    "canvas_or_fail",
]
