"""Job states as they appear in the status document."""

from __future__ import annotations

from celery import states as celery_states

PENDING = celery_states.PENDING
STARTED = celery_states.STARTED
PROGRESS = "PROGRESS"
SUCCESS = celery_states.SUCCESS
FAILURE = celery_states.FAILURE
RETRY = celery_states.RETRY
REVOKED = celery_states.REVOKED
#: No store has heard of this id: never sent, expired, or not yours.
UNKNOWN = "UNKNOWN"

#: States after which nothing changes any more.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, STARTED, PROGRESS, SUCCESS, FAILURE, RETRY, REVOKED, UNKNOWN})
