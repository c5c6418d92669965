"""flask-jobtastic: user-facing, long-running Celery jobs for Flask."""

from __future__ import annotations

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
    "ConfigurationError",
    "JobFailed",
    "Jobtastic",
    "JobtasticError",
    "JobtasticState",
    "JobtasticTask",
]
