"""Polling the status endpoint until a job's document matches, for tests."""

from __future__ import annotations

import time


def poll(client, task_id, predicate, timeout=15.0, headers=None):
    """``(response, document)`` of the first status answer that satisfies ``predicate``.

    ``headers`` go with every request (an owner's, where owners are checked).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/jobtastic/status/{task_id}", headers=headers)
        document = response.get_json()
        if predicate(document):
            return response, document
        time.sleep(0.05)
    raise AssertionError(f"status of {task_id} never matched; last {document}")
