"""The small records a job keeps beside Celery's meta, and their keys.

``job``: written at send time (owner, herd key, name, a cancel request).
``run``: the alive marker while the job runs, then the steps, messages and
counts it left. A canvas keeps ``canvas``, ``sums`` and ``parts`` too. All
are compact JSON, with the meta's expiry unless told otherwise.
"""

from __future__ import annotations

import json
import time
from typing import Any

from celery.backends.base import BaseKeyValueStoreBackend as KeyValueStoreBackend


def alive_marker() -> str:
    """The run record while the job runs: renewed by the heartbeat, it expires when it dies."""
    return dumps_record({ALIVE_FIELD: time.time()})


#: The field that marks a run record as "still running" rather than the details it left.
ALIVE_FIELD = "alive_at"
#: When the job ended, in the details record: the job counts as alive for
#: ``alive_for`` seconds more, while Celery stores its final state.
ENDED_FIELD = "ended_at"


def details_record(details: dict[str, Any], alive_for: int) -> dict[str, Any]:
    """The run record a job leaves: its details, and when it ended.

    Written just before Celery stores the final state; until then the job
    still reads as alive (see ``JobView.is_alive``).
    """
    return {ENDED_FIELD: time.time(), "alive_for": alive_for, **details}


def dumps_record(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def side_key(kind: str, task_id: str) -> str:
    """Key of a record kept beside Celery's meta.

    ``job``: written at send time (owner, herd key, name). ``run``: the alive
    marker while the job runs, then the steps, messages and counts it left.
    """
    return f"jobtastic-{kind}-{task_id}"


def write_side(
    backend: Any, kind: str, task_id: str, value: dict[str, Any] | str, expires: int | None = None
) -> bool:
    """Store a small JSON record beside the task meta (by default with the same expiry).

    Only key-value backends (Redis, memcached, in-memory) can hold it; on
    others this returns False and the features that need it stay off.
    """
    if not isinstance(backend, KeyValueStoreBackend):
        return False
    encoded = value if isinstance(value, str) else dumps_record(value)
    if expires is not None and _accepts_expires(backend):
        backend.set(side_key(kind, task_id), encoded, expires=expires)  # type: ignore[call-arg]
    else:
        backend.set(side_key(kind, task_id), encoded)
    return True


def _accepts_expires(backend: Any) -> bool:
    from celery.backends.redis import RedisBackend

    return isinstance(backend, RedisBackend)


def loads_record(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
