"""Reading and writing task meta in Celery's result backend.

The status document is built from what these return; they hide the
difference between key-value backends (Redis, memcached, in-memory), which
allow one round trip for many ids, and the others.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from celery import states as celery_states
from celery.backends.base import KeyValueStoreBackend

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_valid_task_id(task_id: str) -> bool:
    """Task ids are UUIDs; anything else is a malformed request."""
    return bool(_UUID.match(task_id))


def record_queued(backend: Any, task_id: str, info: dict[str, Any]) -> None:
    """Store a PENDING meta before the message is sent.

    It lets the status endpoint tell a queued job (PENDING) from an id no one
    has heard of (UNKNOWN). Written before publishing, so it can never
    overwrite the worker's first PROGRESS.
    """
    info = {"queued_at": time.time(), **info}
    if isinstance(backend, KeyValueStoreBackend):
        meta = {
            "status": celery_states.PENDING,
            "result": info,
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": task_id,
        }
        backend.set(backend.get_key_for_task(task_id), backend.encode(meta))
    else:
        backend.store_result(task_id, info, celery_states.PENDING)


def read_meta(backend: Any, task_id: str) -> dict[str, Any]:
    """The task meta for one id (Celery's placeholder when nothing is stored)."""
    return backend.get_task_meta(task_id)


def read_metas(backend: Any, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Metas for many ids, in one round trip where the backend allows it."""
    ids = list(dict.fromkeys(task_ids))
    if not ids:
        return {}
    if isinstance(backend, KeyValueStoreBackend):
        keys = [backend.get_key_for_task(task_id) for task_id in ids]
        try:
            values = backend.mget(keys)
        except NotImplementedError:
            values = None
        if values is not None:
            if isinstance(values, dict):
                by_key = {_text(k): v for k, v in values.items()}
                raw = [by_key.get(_text(key)) for key in keys]
            else:
                raw = list(values)
            metas: dict[str, dict[str, Any]] = {}
            for task_id, value in zip(ids, raw, strict=True):
                metas[task_id] = (
                    backend.decode_result(value)
                    if value
                    else {"status": celery_states.PENDING, "result": None}
                )
            return metas
    return {task_id: backend.get_task_meta(task_id) for task_id in ids}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
