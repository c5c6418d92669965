"""The app gunicorn serves in the load test: ``gunicorn tests.web_app:app``.

``POST /start`` with ``{"token": ..., "value": ...}`` (and optionally ``seconds``,
2 by default) starts or joins one ``CountedTask`` and answers ``{"task_id": ...}``,
as a real page's form would.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from tests.app_factory import create_app
from tests.tasks import CountedTask

app = create_app()


@app.post("/start")
def start() -> Any:
    body = request.get_json(force=True)
    result = CountedTask.delay_or_fail(
        token=str(body["token"]), value=body.get("value"), seconds=float(body.get("seconds", 2))
    )
    return jsonify(task_id=result.id)
