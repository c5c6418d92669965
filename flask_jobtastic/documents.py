"""The blueprint's documents as typed dictionaries (``TypedDict``), for Python clients.

Each matches the schema of the same name in ``openapi.json`` (see
``contract``): the same keys, the same required ones; a test keeps them in
step. Decode a response and annotate it::

    document: StatusDocument = response.json()
    if document["state"] == "FAILURE":
        show(document["error"]["message"])

The status document is open: a task that writes its own PROGRESS meta, or
a worker that records STARTED, adds keys beside these, which a client should
ignore. Every other document is closed.
"""

# No ``from __future__ import annotations``: Python 3.11 would then count
# every ``NotRequired`` key as required (``__required_keys__``).
from typing import Any, Literal, NotRequired, TypedDict

from .contract import CONTRACT_VERSION

#: A status document's ``state``.
State = Literal[
    "PENDING", "STARTED", "PROGRESS", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "UNKNOWN"
]

#: A step's ``state``.
StepState = Literal["pending", "running", "done", "failed"]

#: A job record's ``state`` in the job registry.
JobState = Literal["queued", "running", "succeeded", "failed", "revoked", "retrying"]

#: An error document's ``error.type``.
ErrorType = Literal[
    "BadRequest", "NotFound", "Conflict", "TooManyStreams", "ResultBackendUnavailable"
]


class JobError(TypedDict):
    """A failed job's (or step's) error: never a traceback."""

    type: str
    message: str
    error_id: str


class Step(TypedDict):
    """One step of a job that declares or opens steps."""

    key: str
    name: str
    state: StepState
    depth: int
    started_at: float | None
    ended_at: float | None
    duration: float | None
    detail: str | None
    error: JobError | None


class Message(TypedDict):
    """One line of a job's message log; ``time`` is ISO 8601 (UTC)."""

    time: str
    message: str


class Counts(TypedDict):
    """A counting job's successes and failures."""

    amount: int | None
    success: int
    failure: int
    pending: int | None
    succeeded: list[Any]
    failed: list[Any]


class Children(TypedDict):
    """A canvas's parts counted by state."""

    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    revoked: int


class PartsPage(TypedDict):
    """Which page of a canvas's parts a ``?children=1`` answer holds."""

    page: int
    pages: int
    per_page: int
    total: int


class StatusDocument(TypedDict):
    """``GET <prefix>/status/<task_id>``, each batch entry, each ``status`` event."""

    task_id: str
    state: State
    ready: bool
    progress_percent: float
    time_remaining: float
    rate: NotRequired[float | None]
    completed: NotRequired[float]
    total: NotRequired[float]
    queued_at: NotRequired[float]
    result: NotRequired[Any]
    error: NotRequired[JobError]
    cancel_pending: NotRequired[Literal[True]]
    steps: NotRequired[list[Step]]
    steps_summary: NotRequired[str]
    messages: NotRequired[list[Message]]
    counts: NotRequired[Counts]
    children: NotRequired[Children]
    parts: NotRequired[list["StatusDocument"]]
    parts_page: NotRequired[PartsPage]


class BatchRequest(TypedDict):
    """The body of ``POST <prefix>/status``."""

    task_ids: list[str]


class BatchDocument(TypedDict):
    """``GET <prefix>/status?ids=...`` and ``POST <prefix>/status``."""

    tasks: dict[str, StatusDocument]


class JobRecord(TypedDict):
    """One job of ``GET <prefix>/jobs``; also what ``POST .../seen`` answers."""

    id: str
    task_name: str
    owner: str | None
    description: str | None
    state: JobState
    created_at: float
    updated_at: float
    progress: float
    seen: bool
    seen_at: float | None
    finished_at: float | None
    finished: bool


class JobsDocument(TypedDict):
    """``GET <prefix>/jobs``."""

    jobs: list[JobRecord]


class ErrorDetail(TypedDict):
    """What went wrong; ``bound`` only on ``TooManyStreams``."""

    type: ErrorType
    message: str
    bound: NotRequired[Literal["owner", "process"]]


class ErrorDocument(TypedDict):
    """Every 400, 409, 429 and 503 (and a 404 when the job registry is off)."""

    error: ErrorDetail
    task_id: NotRequired[str]
    invalid: NotRequired[list[str]]


class UnavailableEventData(TypedDict):
    """The ``data`` of the ``unavailable`` event: the result backend failed mid-stream."""

    task_id: str
    error: ErrorDetail


class NoticeEventData(TypedDict):
    """``reconnecting``, ``resumed`` and ``done`` on the shared streams."""

    state: Literal["reconnecting", "resumed", "done"]


class RemovedEventData(TypedDict):
    """A job that left the owner's list (``/events/jobs``)."""

    task_id: str


#: The data of each event name of ``GET <prefix>/events?ids=`` and ``/events/jobs``.
SHARED_EVENT_DATA: dict[str, type[Any]] = {
    "status": StatusDocument,
    "reconnecting": NoticeEventData,
    "resumed": NoticeEventData,
    "done": NoticeEventData,
    "job": JobRecord,
    "removed": RemovedEventData,
}

#: The data of each event name of ``GET <prefix>/events/<task_id>``.
EVENT_DATA: dict[str, type[Any]] = {
    "status": StatusDocument,
    "unavailable": UnavailableEventData,
}

__all__ = [
    "CONTRACT_VERSION",
    "EVENT_DATA",
    "SHARED_EVENT_DATA",
    "NoticeEventData",
    "RemovedEventData",
    "BatchDocument",
    "BatchRequest",
    "Children",
    "Counts",
    "ErrorDetail",
    "ErrorDocument",
    "PartsPage",
    "ErrorType",
    "JobError",
    "JobRecord",
    "JobState",
    "JobsDocument",
    "Message",
    "State",
    "StatusDocument",
    "Step",
    "StepState",
    "UnavailableEventData",
]
