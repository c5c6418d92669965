"""A web process of its own, for outage tests: ``python -m tests.outage_web``.

A test starts it (its servers in the ``JOBTASTIC_TEST_*`` environment, as for
``tests.worker_app``), kills and restarts servers under it, and drives it one
JSON command per line on stdin; each answer is one JSON line on stdout. Every
request goes through the Flask test client in this process, so the process is
exactly as fresh (nothing sent yet) or warm (jobs sent) as the test made it.

Commands (``{"cmd": ..., ...}``):

* ``fail`` / ``eager`` with ``n``: ``POST /start`` that many times, through
  ``delay_or_fail`` / ``delay_or_eager``; answers ``{"calls": [...]}``, each
  with the HTTP status, the seconds the request took and the job's
  ``id``/``state``/``result``/``error``.
* ``get`` with ``url``: ``{"status", "json", "content_type", "retry_after"}``.
* ``seen`` with ``id``: ``POST /jobtastic/jobs/<id>/seen``, answered like ``get``.
* ``wait`` with ``id``, ``state`` and ``timeout``: polls the status endpoint
  until the job reaches ``state`` (or times out); answers the last document.
* ``quit``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from typing import Any

from flask import jsonify, request

from tests.app_factory import create_app
from tests.tasks import TrackedTask

USER = {"X-User": "olivia"}

app = create_app(owner_header="X-User")
# what a user's browser gets: an error the app did not handle is a 500, not a traceback here
app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)


@app.post("/start")
def start() -> Any:
    """A page's form: start a tracked job and answer what the page would show."""
    body = request.get_json(force=True)
    send = TrackedTask.delay_or_eager if body["mode"] == "eager" else TrackedTask.delay_or_fail
    result = send(token=str(body["token"]), seconds=float(body.get("seconds", 0.05)))
    document: dict[str, Any] = {"id": result.id, "state": result.state}
    if result.state == "SUCCESS":
        document["result"] = result.result
    elif result.state == "FAILURE":
        document["error"] = type(result.result).__name__
    return jsonify(document)


def _call(mode: str) -> dict[str, Any]:
    client = app.test_client()
    started = time.monotonic()
    response = client.post("/start", json={"mode": mode, "token": uuid.uuid4().hex}, headers=USER)
    seconds = time.monotonic() - started
    answer: dict[str, Any] = {"status": response.status_code, "seconds": seconds}
    if response.is_json:
        answer.update(response.get_json())
    return answer


def _answer(response: Any) -> dict[str, Any]:
    return {
        "status": response.status_code,
        "json": response.get_json(silent=True),
        "content_type": response.content_type,
        "retry_after": response.headers.get("Retry-After"),
    }


def _wait(task_id: str, state: str, timeout: float) -> dict[str, Any]:
    client = app.test_client()
    deadline = time.monotonic() + timeout
    document: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/jobtastic/status/{task_id}", headers=USER)
        document = {"status": response.status_code, **(response.get_json(silent=True) or {})}
        if document.get("state") == state:
            break
        time.sleep(0.1)
    return document


def handle(command: dict[str, Any]) -> dict[str, Any]:
    name = command["cmd"]
    client = app.test_client()
    if name in ("fail", "eager"):
        return {"calls": [_call(name) for _ in range(int(command.get("n", 1)))]}
    if name == "get":
        return _answer(client.get(command["url"], headers=USER))
    if name == "seen":
        headers = {**USER, "X-Requested-With": "XMLHttpRequest"}
        return _answer(client.post(f"/jobtastic/jobs/{command['id']}/seen", headers=headers))
    if name == "wait":
        return _wait(command["id"], command["state"], float(command.get("timeout", 30)))
    raise ValueError(f"unknown command {name!r}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        try:
            answer = handle(command)
        except Exception as exc:  # reported to the test, which fails with it
            answer = {"exception": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
