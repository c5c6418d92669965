"""Polling the status endpoint until a job's document matches, for tests."""

from __future__ import annotations

import time


def poll(client, task_id, predicate, timeout=15.0):
    """``(response, document)`` of the first status answer that satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/jobtastic/status/{task_id}")
        document = response.get_json()
        if predicate(document):
            return response, document
        time.sleep(0.05)
    raise AssertionError(f"status of {task_id} never matched; last {document}")
