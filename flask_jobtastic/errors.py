"""Exceptions of flask-jobtastic."""

from __future__ import annotations


class JobtasticError(Exception):
    """Base class of the library's own exceptions."""


class ConfigurationError(JobtasticError, ValueError):
    """The application's settings cannot work; raised at ``init_app``."""


class JobFailed(JobtasticError):
    """Raise from ``calculate_result`` when the message is meant for the user.

    Its message is shown in the status document as is, while any other
    exception is replaced by a generic message and an error id.
    """


class BrokerUnavailable(JobFailed):
    """The job could not be queued because the broker did not answer."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "The job could not be queued: the task queue is unavailable. "
            "Please try again in a moment."
        )


class ResultNotSerializable(JobtasticError, TypeError):
    """``calculate_result`` returned something the JSON serializer cannot store."""


class JobStopped(BaseException):
    """Ends a running job from inside ``update_progress`` (or a step write).

    Raised when the job was cancelled or its state became final elsewhere. A
    ``BaseException``, so a job's own ``except Exception`` does not swallow it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
