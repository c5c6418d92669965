"""The ``jobtastic`` blueprint: what the browser may ask about jobs.

Every endpoint answers JSON. A job the current user may not see answers
exactly like a job that does not exist (404, state ``UNKNOWN``), so ids
leak nothing. State-changing endpoints are POST and need an
``X-Requested-With`` header, which a cross-site form cannot send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    stream_with_context,
)
from werkzeug.routing import PathConverter

from . import canvas, jsonsafe, lifecycle, results, states, streams
from .assets import asset_dir
from .contract import served_text
from .events import event_stream, jobs_stream, owner_stream
from .reading import viewer_document
from .registry import JobNotFinished
from .responses import (
    bad_id,
    current_state,
    error,
    needs_header,
    no_store,
    readable_job,
    unavailable,
    unknown,
)
from .status import build_status

logger = logging.getLogger("flask_jobtastic")


def status(task_id: str) -> Any:
    """``GET <prefix>/status/<task_id>``: the status document of one job."""
    state, view = readable_job(task_id)
    document = viewer_document(state, task_id, view)
    if view.is_canvas and request.args.get("children") not in (None, "", "0"):
        try:
            document.update(canvas.parts_page(state, task_id, request.args.get("page", "1")))
        except ValueError as exc:
            return error(400, "BadRequest", str(exc))
        except Exception:
            return unavailable(task_id)
    response = no_store(jsonify(document))
    if document["state"] == states.UNKNOWN:
        return response, 404
    return response


def batch_status() -> Any:
    """``GET <prefix>/status?ids=a,b`` or ``POST <prefix>/status`` with ``{"task_ids": [...]}``.

    Answers ``{"tasks": {id: document}}`` from one result-backend round trip;
    jobs the caller may not see are ``UNKNOWN``.
    """
    state = current_state()
    if request.method == "POST":
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # a body nested deeper than the JSON parser goes
            body = None
        ids = body.get("task_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return error(400, "BadRequest", 'Send a JSON body {"task_ids": ["<uuid>", ...]}.')
    else:
        ids = _ids_from_query()
    refused = _check_ids(state, ids)
    if refused:
        return refused
    try:
        views = results.read_jobs(state.celery.backend, ids)
    except Exception:
        return unavailable()
    documents = {}
    for task_id in ids:
        view = views[task_id]
        if state.may_read(view.job, has_side_records=view.has_side_records):
            documents[task_id] = viewer_document(state, task_id, view)
        else:
            documents[task_id] = build_status(task_id, None)
    # one compact dump: at 100 documents Flask's sorted, pretty-capable jsonify shows;
    # strict (no NaN), as every document is (``status.build_status``)
    body = jsonsafe.dumps({"tasks": documents})
    return no_store(current_app.response_class(body, mimetype="application/json"))


def _ids_from_query() -> list[str]:
    return [part for part in request.args.get("ids", "").split(",") if part]


def _check_ids(state: Any, ids: list[str]) -> tuple[Response, int] | None:
    """A batch of ids is one to the batch limit, each a UUID; else a 400 saying so."""
    if not ids:
        return error(400, "BadRequest", "Give at least one task id.")
    if len(ids) > state.batch_limit:
        return error(
            400, "BadRequest", f"At most {state.batch_limit} task ids per request, got {len(ids)}."
        )
    bad = [task_id for task_id in ids if not results.is_valid_task_id(task_id)]
    if bad:
        return error(400, "BadRequest", "Malformed task id: expected UUIDs.", invalid=bad[:10])
    return None


def events(task_id: str) -> Any:
    """``GET <prefix>/events/<task_id>``: Server-Sent Events, one per status change.

    Each ``status`` event carries the full status document; the stream ends
    after a final state. Heartbeat comments keep proxies from closing it.
    Beyond the open-stream bounds it answers 429: the widget polls instead.
    """
    state, _ = readable_job(task_id, must_exist=True)
    return _stream(state, task_id, lambda: event_stream(state, task_id))


def events_many() -> Any:
    """``GET <prefix>/events?ids=a,b``: several jobs on one stream, owner-checked per id.

    Each ``status`` event is one job's document (it names its ``task_id``);
    jobs the caller may not see read ``UNKNOWN``. The stream ends with a
    ``done`` event once every job is final. Its event ids sum up what the
    browser holds, so a reconnect (``Last-Event-ID``, or ``?cursor=``) sends
    only what changed meanwhile.
    """
    state = current_state()
    ids = list(dict.fromkeys(_ids_from_query()))
    refused = _check_ids(state, ids)
    if refused:
        return refused
    cursor = request.headers.get("Last-Event-ID") or request.args.get("cursor")
    return _stream(state, ids[0], lambda: jobs_stream(state, ids, cursor))


def events_of_owner() -> Any:
    """``GET <prefix>/events/jobs``: the current user's "my jobs" list as it changes.

    ``job`` events carry a registry record (added or changed), ``removed``
    events a job that left the list, ``status`` events the documents of the
    jobs still running. ``?ids=`` adds more jobs (a page's bars), checked as
    on ``/events?ids=``, so one stream serves the whole page.
    """
    state, refused = _registry_or_404()
    if refused:
        return refused
    owner = state.current_owner()
    if owner is None:
        return error(404, "NotFound", "There is no current user, so there are no jobs to watch.")
    ids = list(dict.fromkeys(_ids_from_query()))
    refused = _check_ids(state, ids) if ids else None
    if refused:
        return refused
    cursor = request.headers.get("Last-Event-ID") or request.args.get("cursor")
    return _stream(state, None, lambda: owner_stream(state, owner, cursor, ids))


def _stream(state: Any, label: str | None, make: Callable[[], Iterator[str]]) -> Any:
    """An event-stream response within the open-stream bounds (else 429: poll instead)."""
    key = streams.owner_key(state.current_owner(), request.remote_addr)
    release, bound = state.stream_slots.acquire(key)
    if release is None:
        response = jsonify(streams.refusal(label, bound or "process"))
        response.headers["Retry-After"] = str(streams.RETRY_AFTER)
        return no_store(response), 429
    try:
        chunks = streams.watch_client(
            stream_with_context(make()), request.environ.get("gunicorn.socket")
        )
        response = Response(chunks, mimetype="text/event-stream")
    except BaseException:
        release()
        raise
    response.call_on_close(release)  # the server closes the response when the client left
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


def cancel(task_id: str) -> Any:
    """``POST <prefix>/cancel/<task_id>``: ask the job to stop.

    Only the worker says a job stopped: until it confirms, the document
    carries ``cancel_pending``; then it reads ``REVOKED``. A queued job never
    starts; a running one stops at its next progress or step write. On a run
    shared by several owners, the caller is detached (it reads ``REVOKED``
    for them) and the run stops when the last owner waiting on it cancels.
    """
    refused = needs_header()
    if refused:
        return refused
    state, view = readable_job(task_id, must_exist=True)
    document = viewer_document(state, task_id, view)
    if document["ready"]:
        return no_store(jsonify(document))
    try:
        lifecycle.request_cancel(state, task_id, (view.job or {}).get("owner"))
        if view.is_canvas:
            canvas.cancel(state, task_id)
        view = results.read_job(state.celery.backend, task_id)
    except Exception:
        return unavailable(task_id)
    return no_store(jsonify(viewer_document(state, task_id, view)))


def _registry_or_404() -> Any:
    state = current_state()
    if state.registry is None:
        return None, error(404, "NotFound", "The job registry is not enabled.")
    return state, None


def my_jobs() -> Any:
    """``GET <prefix>/jobs``: the current user's jobs for display (unseen + recently seen).

    ``?all=1`` lists every kept job of the user; ``?state=failed`` filters.
    """
    state, refused = _registry_or_404()
    if refused:
        return refused
    owner = state.current_owner()
    if owner is None:
        return no_store(jsonify({"jobs": []}))
    wanted = request.args.getlist("state") or None
    if wanted and not set(wanted) <= set(_JOB_STATES):
        return error(400, "BadRequest", f"state must be one of {', '.join(_JOB_STATES)}.")
    try:
        if request.args.get("all") or wanted:
            records = state.registry.jobs_of(owner, states=wanted)
        else:
            records = state.registry.for_display(owner, recent_seconds=state.registry.seen_ttl)
        records = _settle_lost(state, records)
    except Exception:
        return unavailable()
    return no_store(jsonify({"jobs": [record.to_dict() for record in records]}))


def _settle_lost(state: Any, records: list[Any]) -> list[Any]:
    """Running records whose worker died are failed, not running forever."""
    running = [record.id for record in records if record.state == "running"]
    if not running:
        return records
    views = results.read_jobs(state.celery.backend, running)
    settled = []
    for record in records:
        view = views.get(record.id)
        if (
            view is not None
            and viewer_document(state, record.id, view).get("error", {}).get("type") == "WorkerLost"
        ):
            record = state.record_state(record.id, "failed") or record
        settled.append(record)
    return settled


def mark_seen(task_id: str) -> Any:
    """``POST <prefix>/jobs/<task_id>/seen``: the owner saw this finished job."""
    refused = needs_header()
    if refused:
        return refused
    if not results.is_valid_task_id(task_id):
        return bad_id()
    state, refused = _registry_or_404()
    if refused:
        return refused
    owner = state.current_owner()
    if owner is None:
        return unknown(task_id)
    try:
        record = state.registry.mark_seen(task_id, owner)
    except LookupError:
        return unknown(task_id)
    except JobNotFinished:
        return error(409, "Conflict", "Only a finished job can be marked as seen.")
    except Exception:
        return unavailable(task_id)
    return no_store(jsonify(record.to_dict()))


def jobs_partial() -> Any:
    """``GET <prefix>/jobs.html``: the "my jobs" list as HTML, for pages to refresh."""
    state, refused = _registry_or_404()
    if refused:
        return refused
    owner = state.current_owner()
    records = []
    if owner is not None:
        try:
            records = state.registry.for_display(owner, recent_seconds=state.registry.seen_ttl)
        except Exception:  # its store is down: the same retryable 503 as the JSON list
            return unavailable()
    return render_template("jobtastic/jobs.html", jobtastic_jobs=records)


_JOB_STATES = ("queued", "running", "succeeded", "failed", "revoked", "retrying")


class TaskIdConverter(PathConverter):
    """Like ``path``, but any character (newlines too) reaches the view, which
    answers a JSON 400 for a malformed id instead of the router's HTML 404."""

    regex = r"[^/][\s\S]*?"


def openapi() -> Any:
    """``GET <prefix>/openapi.json``: the contract, its ``servers`` where this app serves it."""
    state = current_state()
    text = served_text(state.url_prefix, request.script_root, state.batch_limit)
    return current_app.response_class(text, mimetype="application/json")


def create_blueprint() -> Blueprint:
    """A fresh blueprint per app, so each app may mount it at its own prefix."""
    blueprint = Blueprint(
        "jobtastic",
        __name__,
        static_folder=asset_dir("static"),
        static_url_path="/static",
        template_folder=asset_dir("templates"),
    )
    blueprint.add_url_rule("/status/<jobtastic_id:task_id>", "status", status, methods=["GET"])
    blueprint.add_url_rule("/status", "batch_status", batch_status, methods=["GET", "POST"])
    blueprint.add_url_rule("/events", "events_many", events_many, methods=["GET"])
    blueprint.add_url_rule("/events/jobs", "events_of_owner", events_of_owner, methods=["GET"])
    blueprint.add_url_rule("/events/<jobtastic_id:task_id>", "events", events, methods=["GET"])
    blueprint.add_url_rule("/cancel/<jobtastic_id:task_id>", "cancel", cancel, methods=["POST"])
    blueprint.add_url_rule("/jobs", "jobs", my_jobs, methods=["GET"])
    blueprint.add_url_rule("/jobs.html", "jobs_partial", jobs_partial, methods=["GET"])
    blueprint.add_url_rule(
        "/jobs/<jobtastic_id:task_id>/seen", "mark_seen", mark_seen, methods=["POST"]
    )
    blueprint.add_url_rule("/openapi.json", "openapi", openapi, methods=["GET"])
    return blueprint
