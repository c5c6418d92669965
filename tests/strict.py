"""Reading the endpoints as a browser does: strict JSON only (no NaN, no Infinity)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from werkzeug.test import TestResponse


def strict_loads(text: str | bytes) -> Any:
    """``json.loads`` that raises on NaN and Infinity, like the browser's JSON.parse."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def body_of(response: TestResponse) -> Any:
    """The strict JSON body of a response (never a 5xx)."""
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    return strict_loads(response.get_data())


def sse_events(chunks: Iterable[bytes | str]) -> Iterator[tuple[str, Any]]:
    """``(event name, strict JSON payload)`` per SSE event; comments and hints skipped."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if block.startswith((":", "retry:", "id:")):
                continue  # comments, hints and cursor updates dispatch no event
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            yield lines.get("event", "message"), strict_loads(lines["data"])


def stream(client: Any, task_id: str, **headers: str) -> list[tuple[str, Any]]:
    """Every event of ``/events/<task_id>`` until the server ends the stream."""
    response = client.get(f"/jobtastic/events/{task_id}", buffered=False, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    try:
        return list(sse_events(response.response))
    finally:
        response.close()


def status(client: Any, task_id: str, headers: dict[str, str] | None = None) -> Any:
    return body_of(client.get(f"/jobtastic/status/{task_id}", headers=headers))


def batch(client: Any, *task_ids: str) -> dict[str, Any]:
    """The batch documents, asked both ways (GET and POST), which must agree."""
    by_get = body_of(client.get(f"/jobtastic/status?ids={','.join(task_ids)}"))["tasks"]
    by_post = body_of(
        client.post(
            "/jobtastic/status",
            json={"task_ids": list(task_ids)},
            headers={"X-Requested-With": "test"},
        )
    )["tasks"]
    assert by_get == by_post
    return by_get


def wait_ready(
    client: Any, task_id: str, timeout: float = 20.0, headers: dict[str, str] | None = None
) -> Any:
    """The first ready status document, read strictly at every poll."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = status(client, task_id, headers)
        if document["ready"]:
            return document
        time.sleep(0.05)
    raise AssertionError(f"{task_id} never became ready; last {document}")


#: Stored metas another program (or an older version) could have left, and the
#: state users must see for each (``%s`` stands for the task id).
FOREIGN = {
    "not json": (b"\x80\x04\x95 pickled bytes", "FAILURE"),
    "json array": (b"[1, 2, 3]", "FAILURE"),
    "json text": (b'"SUCCESS"', "FAILURE"),
    "bad utf-8": (b'{"status": "SUCCESS", "result": "\xff\xfe", "task_id": "%s"}', "FAILURE"),
    "unknown kombu type": (
        b'{"status": "SUCCESS", "result": {"__type__": "pickle", "__value__": "x"},'
        b' "task_id": "%s"}',
        "FAILURE",
    ),
    "kombu bytes": (
        b'{"status": "SUCCESS", "result": {"__type__": "bytes", "__value__": "abc"},'
        b' "task_id": "%s"}',
        "FAILURE",
    ),
    "kombu datetime": (
        b'{"status": "SUCCESS", "result": {"__type__": "datetime",'
        b' "__value__": "2024-05-01T12:00:00"}, "task_id": "%s"}',
        "SUCCESS",
    ),
    "nan result": (b'{"status": "SUCCESS", "result": [NaN], "task_id": "%s"}', "FAILURE"),
    "nan progress": (
        b'{"status": "PROGRESS", "result": {"progress_percent": NaN, "rate": Infinity,'
        b' "time_remaining": -Infinity}, "task_id": "%s"}',
        "PROGRESS",
    ),
    "numeric state": (b'{"status": 7, "result": null, "task_id": "%s"}', "FAILURE"),
    "list state": (b'{"status": ["x"], "result": null, "task_id": "%s"}', "FAILURE"),
    "failure of a string": (b'{"status": "FAILURE", "result": "boom", "task_id": "%s"}', None),
    "failure of a non-exception": (
        b'{"status": "FAILURE", "result": {"exc_type": "system", "exc_module": "os",'
        b' "exc_message": ["rm -rf /"]}, "task_id": "%s"}',
        "FAILURE",
    ),
    "old step error": (
        b'{"status": "PROGRESS", "result": {"progress_percent": 5, "steps": [{"key": "a",'
        b' "state": "failed", "error": {"type": "E", "message": "pw=hunter2"}}]},'
        b' "task_id": "%s"}',
        "PROGRESS",
    ),
}


def plant(client: Any, raw: bytes) -> tuple[str, list[str]]:
    """Store a foreign meta under a new id, with a worker's alive marker (so a running
    job is not taken for lost); returns the id and the keys to delete afterwards."""
    task_id = str(uuid.uuid4())
    meta_key, run_key = f"celery-task-meta-{task_id}", f"jobtastic-run-{task_id}"
    client.set(meta_key, raw.replace(b"%s", task_id.encode()), ex=300)
    client.set(run_key, json.dumps({"alive_at": time.time()}), ex=300)
    return task_id, [meta_key, run_key]


def wait_logged(worker: Any, text: str, timeout: float = 10.0) -> None:
    """Wait until the worker's log holds ``text`` (its handler may lag the stored state)."""
    deadline = time.monotonic() + timeout
    while text not in worker.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"not in the worker log: {text!r}"
        time.sleep(0.1)
