"""The app gunicorn serves in the widget and stream tests: ``gunicorn tests.widget_app:app``.

The current user is the ``X-User`` header (a browser context sends it on
every request, the event stream's too). ``JOBTASTIC_TEST_APP_CONFIG`` (a JSON
object) adds settings, e.g. ``{"JOBTASTIC_EVENTS_HEARTBEAT": 1.0}``.

* ``POST /start/<kind>`` with the job's keyword arguments as JSON answers
  ``{"task_id": ...}``; kinds: ``slow`` (``SlowProgressTask``), ``tracked``
  (``TrackedTask``, listed in "my jobs"), ``failing`` (``FailingTask``),
  ``silent`` (``SilentTask``, reports nothing).
* ``POST /start/group`` with ``{"parts": [kwargs, ...]}`` starts a group of
  ``tests.canvas_tasks.RowsPart`` parts, one per item, as one job (a canvas)
  and answers ``{"task_id": ...}``; ``tolerate_failures``, ``track_state``
  (listed in "my jobs") and ``description`` go to ``canvas_or_fail``.
* ``GET /page`` and ``GET /page/<task_id>``: the user's job list, and the
  job's bar with a Cancel button (``?transport=polling`` to poll). ``?ids=a,b``
  adds a bar per job (``#bar-0``, ``#bar-1``, ...), ``?list=0`` leaves the list out.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import group
from flask import jsonify, render_template_string, request

from flask_jobtastic import canvas_or_fail
from tests.app_factory import create_app
from tests.canvas_tasks import RowsPart
from tests.tasks import FailingTask, SilentTask, SlowProgressTask, TrackedTask

app = create_app(
    owner_header="X-User", **json.loads(os.environ.get("JOBTASTIC_TEST_APP_CONFIG") or "{}")
)

KINDS = {
    "slow": SlowProgressTask,
    "tracked": TrackedTask,
    "failing": FailingTask,
    "silent": SilentTask,
}

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Widget test</title>
{{ jobtastic_assets() }}</head>
<body><main style="max-width: 40rem; margin: 2rem auto; font-family: sans-serif">
{% from "jobtastic/macros.html" import progress_bar %}
{% if task_id %}<h1>Job</h1>
{{ progress_bar(task_id, cancel_button=True, transport=transport, attrs={"id": "job-bar"}) }}
{% endif %}
{% for id in ids %}{{ progress_bar(id, attrs={"id": "bar-" ~ loop.index0}) }}{% endfor %}
{% if with_list %}<h2>My jobs</h2>
{% include "jobtastic/jobs.html" %}{% endif %}
</main></body></html>
"""


@app.post("/start/<kind>")
def start(kind: str) -> Any:
    task = KINDS[kind]
    result = task.delay_or_fail(**(request.get_json(force=True) or {}))
    return jsonify(task_id=result.id)


@app.post("/start/group")
def start_group() -> Any:
    body = request.get_json(force=True) or {}
    options = {k: body[k] for k in ("tolerate_failures", "track_state", "description") if k in body}
    canvas = canvas_or_fail(group(RowsPart.s(**kwargs) for kwargs in body["parts"]), **options)
    return jsonify(task_id=canvas.id)


@app.get("/page")
@app.get("/page/<task_id>")
def page(task_id: str | None = None) -> Any:
    transport = request.args.get("transport", "auto")
    ids = [part for part in request.args.get("ids", "").split(",") if part]
    with_list = request.args.get("list", "1") != "0"
    return render_template_string(
        PAGE, task_id=task_id, transport=transport, ids=ids, with_list=with_list
    )
