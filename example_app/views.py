"""Pages and the small JSON API of the demo.

Every start goes through ``Task.delay_or_fail(...)``, except the batch's: a
chord started as one job with ``canvas_or_fail(...)``. The library's blinker
signals tell whether a ``delay_or_fail`` call sent a job, joined one in
flight or was answered from the result cache.
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import chord
from celery.backends.redis import RedisBackend
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from flask_jobtastic import JobtasticTask, canvas_or_fail, signals

from . import USER_KEY
from .tasks import (
    BATCH_FILES,
    REGIONS,
    YEARS,
    CsvReportTask,
    FlakyImportTask,
    LotsOfDivisionTask,
    MultiStepTask,
    RenderFileTask,
    ZipFilesTask,
)

bp = Blueprint("demo", __name__)

#: The uuid4 ids Celery gives jobs.
_TASK_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

#: How many of the visitor's recent jobs the session remembers.
_RECENT = 12

#: Where a local jQuery may be found for ``?jquery=1`` (first hit wins).
_JQUERY_CANDIDATES = (
    Path(__file__).parent / "static" / "vendor" / "jquery.min.js",
    Path("/usr/share/javascript/jquery/jquery.min.js"),
)

DEFAULT_NUMERATORS = ", ".join(str(n * 37) for n in range(1, 61))
DEFAULT_DENOMINATORS = ", ".join(str(n % 7 + 1) for n in range(1, 61))

#: How many files the batch card offers to render (the first ones of ``BATCH_FILES``).
BATCH_SIZES = (4, 6, 8)


class BadInput(ValueError):
    """A start request with arguments the job cannot take; shown to the user."""


@dataclass(frozen=True)
class Kind:
    """One kind of demo job: its task class and how to read its arguments.

    ``start``: how to start it, when not with ``task.delay_or_fail``.
    """

    task: type[JobtasticTask]
    label: str
    parse: Callable[[dict[str, Any]], dict[str, Any]]
    start: Callable[..., Any] | None = None


def _numbers(value: Any, what: str) -> list[int]:
    if isinstance(value, list):
        parts = value
    else:
        parts = [p for p in re.split(r"[\s,;]+", str(value or "")) if p]
    try:
        numbers = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise BadInput(f"The {what} must be whole numbers separated by commas.") from None
    if not numbers:
        raise BadInput(f"Give at least one {what[:-1]}.")
    limit = current_app.config["DEMO_MAX_NUMBERS"]
    if len(numbers) > limit:
        raise BadInput(f"At most {limit} {what}, please.")
    return numbers


def _division_args(data: dict[str, Any]) -> dict[str, Any]:
    numerators = _numbers(data.get("numerators", DEFAULT_NUMERATORS), "numerators")
    denominators = _numbers(data.get("denominators", DEFAULT_DENOMINATORS), "denominators")
    if len(numerators) != len(denominators):
        raise BadInput(
            f"Give as many denominators as numerators ({len(denominators)} for {len(numerators)})."
        )
    return {"numerators": numerators, "denominators": denominators}


def _report_args(data: dict[str, Any]) -> dict[str, Any]:
    region = str(data.get("region") or REGIONS[0])
    if region not in REGIONS:
        raise BadInput(f"Pick a region among {', '.join(REGIONS)}.")
    try:
        year = int(data.get("year") or YEARS[-1])
    except (TypeError, ValueError):
        raise BadInput("The year must be a number.") from None
    if year not in YEARS:
        raise BadInput(f"Pick a year from {YEARS[0]} to {YEARS[-1]}.")
    return {"region": region, "year": year}


def _failing_args(data: dict[str, Any]) -> dict[str, Any]:
    return {"filename": str(data.get("filename") or "customers.csv")[:100]}


def _steps_args(data: dict[str, Any]) -> dict[str, Any]:
    batch = re.sub(r"[^A-Za-z0-9_-]", "", str(data.get("batch") or "today"))[:40]
    return {"batch": batch or "today"}


def canvases_available() -> bool:
    """Whether this app can start a chord: its parts keep their sums in a Redis result
    backend, which the no-servers mode has not."""
    return isinstance(current_app.extensions["jobtastic"].celery.backend, RedisBackend)


def _batch_args(data: dict[str, Any]) -> dict[str, Any]:
    if not canvases_available():
        raise BadInput(
            "The batch is a chord of jobs, and chords need a Redis result backend: start "
            "the demo with CELERY_BROKER_URL and CELERY_RESULT_BACKEND set to redis://… "
            "and run celery -A example_app.worker worker."
        )
    try:
        files = int(data.get("files") or BATCH_SIZES[0])
    except (TypeError, ValueError):
        raise BadInput("The number of files must be a number.") from None
    if files not in BATCH_SIZES:
        raise BadInput(f"Pick {', '.join(map(str, BATCH_SIZES))} files.")
    return {"files": files}


def start_batch(files: int) -> Any:
    """Render the first ``files`` files, each a job of its own, then zip them.

    A chord started as one job: one id, one status document with the parts
    counted in its ``children``, one bar.
    """
    renders = (RenderFileTask.s(filename=name, pages=pages) for name, pages in BATCH_FILES[:files])
    return canvas_or_fail(chord(renders, ZipFilesTask.s(archive=f"rendered-{files}-files.zip")))


KINDS: dict[str, Kind] = {
    "division": Kind(LotsOfDivisionTask, "Lots of division", _division_args),
    "report": Kind(CsvReportTask, "CSV sales report", _report_args),
    "failing": Kind(FlakyImportTask, "Customer import (fails)", _failing_args),
    "steps": Kind(MultiStepTask, "Order check in steps", _steps_args),
    "batch": Kind(RenderFileTask, "Batch of files", _batch_args, start=start_batch),
}


# -- starting jobs ------------------------------------------------------------------


@contextmanager
def _watch_dispatch(outcome: dict[str, str]) -> Iterator[None]:
    """Note which library signal this thread's call fired (sent, cached, joined).

    Receivers are global, and the threaded server runs requests side by side,
    so each receiver only listens to its own thread.
    """
    me = threading.get_ident()

    def receiver(name: str) -> Callable[..., None]:
        def receive(sender: Any, **kwargs: Any) -> None:
            if threading.get_ident() == me:
                outcome.setdefault("outcome", name)

        return receive

    watched = {
        "cache": signals.cache_hit,
        "joined": signals.herd_joined,
        "sent": signals.job_sent,
        "not-queued": signals.broker_unavailable,
    }
    with ExitStack() as stack:
        for name, signal in watched.items():
            stack.enter_context(signal.connected_to(receiver(name)))
        yield


def start_job(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """Start (or find) a job of ``kind``; say how the library answered."""
    spec = KINDS[kind]
    arguments = spec.parse(data)
    outcome: dict[str, str] = {}
    started = time.perf_counter()
    start = spec.start or spec.task.delay_or_fail
    with _watch_dispatch(outcome):
        result = start(**arguments)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    how = outcome.get("outcome", "sent")
    info = {
        "task_id": result.id,
        "kind": kind,
        "outcome": how,
        "from_cache": how == "cache",
        "joined": how == "joined",
        "elapsed_ms": elapsed_ms,
    }
    _remember(info)
    return info


def _remember(info: dict[str, Any]) -> None:
    """Keep the visitor's recent jobs (id, kind, outcome) in the session."""
    entry = [info["task_id"], info["kind"], info["outcome"], info["elapsed_ms"]]
    recent = [e for e in session.get("jobs", []) if e and e[0] != info["task_id"]]
    session["jobs"] = [entry, *recent][:_RECENT]


def recent_jobs() -> list[dict[str, Any]]:
    """The session's recent jobs, newest first."""
    jobs = []
    for entry in session.get("jobs", []):
        task_id, kind, outcome, elapsed_ms = entry
        label = KINDS[kind].label if kind in KINDS else kind
        jobs.append(
            {
                "task_id": task_id,
                "kind": kind,
                "label": label,
                "outcome": outcome,
                "elapsed_ms": elapsed_ms,
            }
        )
    return jobs


def _csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {
        "csrf_token": _csrf_token,
        "user_id": session.get(USER_KEY, ""),
        "kinds": KINDS,
        "embedded": current_app.extensions["jobtastic"].embedded_worker is not None,
        "canvases": canvases_available(),
    }


def _job_url(info: dict[str, Any]) -> str:
    if info["kind"] == "steps":
        return url_for("demo.steps", job=info["task_id"])
    return url_for("demo.job", task_id=info["task_id"])


@bp.post("/api/start/<kind>")
def api_start(kind: str) -> Any:
    """``POST /api/start/<kind>`` with ``X-Requested-With: fetch``: start, answer JSON."""
    if request.headers.get("X-Requested-With") != "fetch":
        return jsonify(error="Send the header 'X-Requested-With: fetch'."), 400
    if kind not in KINDS:
        return jsonify(error=f"Unknown job kind {kind!r}.", kinds=list(KINDS)), 404
    body = request.get_json(silent=True)
    data = body if isinstance(body, dict) else request.form.to_dict()
    try:
        info = start_job(kind, data)
    except BadInput as exc:
        return jsonify(error=str(exc)), 400
    info["url"] = _job_url(info)
    return jsonify(info)


@bp.post("/start/<kind>")
def form_start(kind: str) -> Response:
    """The HTML forms' start: check the form token, start, go to the job's page."""
    sent = request.form.get("csrf", "")
    if not hmac.compare_digest(sent, session.get("csrf", "")):
        abort(400, "The form expired; reload the page and try again.")
    if kind not in KINDS:
        abort(404)
    try:
        info = start_job(kind, request.form.to_dict())
    except BadInput as exc:
        flash(str(exc), "error")
        return redirect(url_for("demo.index"))
    return redirect(_job_url(info))


# -- pages --------------------------------------------------------------------------


def jquery_path() -> Path | None:
    """A jQuery file on this machine, if there is one."""
    return next((p for p in _JQUERY_CANDIDATES if p.is_file()), None)


@bp.get("/")
def index() -> str:
    """Buttons to start each job, the double-click demo and the recent jobs."""
    want_jquery = request.args.get("jquery") == "1"
    return render_template(
        "index.html",
        regions=REGIONS,
        years=YEARS,
        default_numerators=DEFAULT_NUMERATORS,
        default_denominators=DEFAULT_DENOMINATORS,
        batch_sizes=BATCH_SIZES,
        batch_files=BATCH_FILES,
        recent=recent_jobs(),
        want_jquery=want_jquery,
        load_jquery=want_jquery and jquery_path() is not None,
    )


def _start_info(task_id: str) -> dict[str, Any] | None:
    return next((j for j in recent_jobs() if j["task_id"] == task_id), None)


@bp.get("/jobs/<task_id>")
def job(task_id: str) -> str:
    """One job's live progress bar, with its result once it is there."""
    if not _TASK_ID.match(task_id):
        abort(404)
    return render_template("job.html", task_id=task_id, start=_start_info(task_id))


def my_jobs() -> list[Any]:
    """The visitor's jobs as the library's registry lists them for display."""
    state = current_app.extensions["jobtastic"]
    owner = state.current_owner()
    if state.registry is None or owner is None:
        return []
    return state.registry.for_display(owner, recent_seconds=state.registry.seen_ttl)


@bp.get("/steps")
def steps() -> str:
    """The multi-step job: its steps, messages and counts, and the visitor's jobs."""
    task_id = request.args.get("job", "")
    if not _TASK_ID.match(task_id):
        latest = next((j for j in recent_jobs() if j["kind"] == "steps"), None)
        task_id = latest["task_id"] if latest else ""
    return render_template(
        "steps.html",
        task_id=task_id,
        start=_start_info(task_id) if task_id else None,
        declared_steps=MultiStepTask.steps,
        jobtastic_jobs=my_jobs(),
    )


@bp.get("/vendor/jquery.js")
def jquery() -> Response:
    """The machine's own jQuery, for ``/?jquery=1``; 404 when there is none."""
    path = jquery_path()
    if path is None:
        abort(404)
    return send_file(path, mimetype="text/javascript", max_age=3600)
