"""Real-browser tests of the progress widget, driving Debian's Chromium with Playwright.

The demo app (``python -m example_app``) runs as a real subprocess in its embedded mode
(in-memory broker and results, a worker thread in the web process), and each test
checks what a person would see: the bar, its text, its state classes and ARIA values.
Its batch card (a chord) runs on the demo with Redis and its own ``celery worker``.
``pytest -s`` prints the latency figures of the event stream and of polling, which are
also written to ``test-artifacts/browser-latency.txt``.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import ARTIFACTS, ROOT
from tests.rig import Servers, WorkerProcess
from tests.servers import MemcachedServer, RedisServer, free_port
from tests.tasks import _redis as tasks_redis
from tests.web_server import GunicornServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Longest wait for anything a job does (the longest demo job takes about 15 s).
JOB_TIMEOUT_MS = 30_000

#: Environment variables that would take the demo out of its embedded mode.
_SERVER_ENV = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "MEMCACHED_SERVERS", "PORT")

#: Installed in every page before its own scripts: a log of the widget's DOM events.
RECORDER = """
(() => {
  window.__jt = [];
  const types = ["update", "progress", "success", "failure", "error", "finish"];
  for (const type of types) {
    document.addEventListener("jobtastic:" + type, (event) => {
      const el = event.target, tracker = event.detail.tracker, doc = event.detail.document || {};
      const bar = el.querySelector(".jobtastic-bar"), text = el.querySelector(".jobtastic-text");
      const data = event.detail.data;
      window.__jt.push({
        type, t: performance.now(), id: el.id || null, state: doc.state || null,
        pct: doc.progress_percent == null ? null : doc.progress_percent,
        now: bar ? bar.getAttribute("aria-valuenow") : null,
        text: text ? text.textContent : null, transport: tracker.transport,
        steps: Array.isArray(doc.steps) ? doc.steps.map((s) => [s.key, s.state]) : [],
        errorType: type === "error" && data ? data.type : null,
        data: type === "success" || type === "failure" ? data : null,
        same: event.detail.document === tracker.document,
      });
    });
  }
})();
"""

#: Installed in every page too: each text a bar shows, with its Cancel button's state.
TEXT_LOG = """
(() => {
  window.__texts = [];
  const last = new Map();
  new MutationObserver(() => {
    for (const root of document.querySelectorAll(".jobtastic")) {
      const text = root.querySelector(".jobtastic-footer > .jobtastic-text");
      if (!text) continue;
      const key = root.id || root.getAttribute("data-jobtastic-task-id");
      const button = root.querySelector(".jobtastic-cancel");
      const entry = {
        key, text: text.textContent, disabled: !!(button && button.disabled),
        shown: !!(button && !button.hidden), t: performance.now(),
      };
      const value = JSON.stringify([entry.text, entry.disabled, entry.shown]);
      if (last.get(key) !== value) {
        last.set(key, value);
        window.__texts.push(entry);
      }
    }
  }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
})();
"""

#: The least of jQuery the widget needs: $(el), $.fn, .each, .data and $.data.
JQUERY_STUB = """
(() => {
  const store = new WeakMap();
  function jQuery(selector) {
    const els = typeof selector === "string"
      ? Array.from(document.querySelectorAll(selector)) : [selector];
    const set = Object.create(jQuery.fn);
    els.forEach((el, i) => { set[i] = el; });
    set.length = els.length;
    return set;
  }
  jQuery.fn = {
    each(fn) {
      for (let i = 0; i < this.length; i++) fn.call(this[i], i, this[i]);
      return this;
    },
    data(key) {
      const values = this.length ? store.get(this[0]) : null;
      return values ? values[key] : undefined;
    },
  };
  jQuery.data = (el, key, value) => {
    let values = store.get(el);
    if (!values) store.set(el, (values = {}));
    if (value !== undefined) values[key] = value;
    return values[key];
  };
  window.__jqueryStub = true;
  window.jQuery = window.$ = jQuery;
})();
"""


# -- the demo app as a real server ---------------------------------------------------


class DemoServer:
    """``python -m example_app --port N`` in embedded mode, logging to test-artifacts.

    ``env``: the servers to use instead (``CELERY_BROKER_URL`` and the like).
    """

    def __init__(self, name: str, env: dict[str, str] | None = None) -> None:
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / f"browser-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _SERVER_ENV}
        env.update(self.extra_env, PYTHONUNBUFFERED="1")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "example_app", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the demo app exited early:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the demo app did not answer within {timeout} s:\n{self.log_text()}")

    def kill(self) -> None:
        """SIGKILL: the server goes away as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="module")
def demo_server() -> Iterator[DemoServer]:
    server = DemoServer("demo")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_server() -> Iterator[DemoServer]:
    """A demo server of this test's own, which it may kill."""
    server = DemoServer("server-goes-away")
    server.start()
    yield server
    server.kill()


# -- the browser ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium. "
            "Install it with scripts/system-deps.sh (as root) or `sudo apt-get install chromium`."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


NewPage = Callable[..., Page]


@pytest.fixture
def new_page(chromium: Browser, demo_server: DemoServer) -> Iterator[NewPage]:
    """Open a page in a fresh context (own cookies, so own demo visitor id)."""
    contexts: list[BrowserContext] = []

    def open_page(
        *, base_url: str | None = None, init_script: str | None = None, user: str | None = None
    ) -> Page:
        """``user``: the X-User header of every request, the gunicorn test app's user."""
        context = chromium.new_context(
            base_url=base_url or demo_server.url,
            viewport={"width": 1000, "height": 720},
            extra_http_headers={"X-User": user} if user else None,
        )
        context.set_default_timeout(JOB_TIMEOUT_MS)
        context.add_init_script(RECORDER)
        context.add_init_script(TEXT_LOG)
        if init_script:
            context.add_init_script(init_script)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


# -- helpers -------------------------------------------------------------------------


def has_class(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")


def unique_division() -> dict[str, Any]:
    """Numbers nobody divided yet, so the job is not answered from the cache."""
    rng = random.Random(uuid.uuid4().int)
    count = 60
    return {
        "numerators": [rng.randint(1, 10**9) for _ in range(count)],
        "denominators": [rng.randint(1, 97) for _ in range(count)],
    }


def api_start(page: Page, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /api/start/<kind>`` with the page's cookies (so the page may see the job)."""
    response = page.request.post(
        f"/api/start/{kind}", data=body, headers={"X-Requested-With": "fetch"}
    )
    assert response.ok, f"start {kind}: HTTP {response.status} {response.text()}"
    info: dict[str, Any] = response.json()
    return info


def wait_for_state(page: Page, task_id: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the status endpoint (with the page's cookies) until the job is final."""
    deadline = time.monotonic() + timeout
    document: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = page.request.get(f"/jobtastic/status/{task_id}")
        document = response.json()
        if document.get("ready"):
            break
        time.sleep(0.2)
    assert document.get("state") == state, f"job {task_id} ended as {document}"
    return document


def add_bar(page: Page, element_id: str) -> None:
    """A fresh, empty element on the page to track a job with."""
    page.evaluate(
        """(id) => {
            const el = document.createElement("div");
            el.id = id;
            el.className = "jobtastic";
            (document.querySelector("main") || document.body).prepend(el);
        }""",
        element_id,
    )


def recorded(page: Page, element_id: str | None = None) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = page.evaluate("window.__jt")
    return [r for r in records if element_id is None or r["id"] == element_id]


def expect_success(page: Page, selector: str) -> None:
    bar = page.locator(selector)
    expect(bar).to_have_class(has_class("jobtastic-state-success"), timeout=JOB_TIMEOUT_MS)
    expect(bar.locator(".jobtastic-bar")).to_have_attribute("aria-valuenow", "100")
    expect(bar.locator(".jobtastic-text")).to_have_text("Done")
    expect(bar.locator(".jobtastic-fill")).to_have_attribute("style", re.compile(r"width:\s*100%"))


# -- the tests -----------------------------------------------------------------------


def test_division_bar_moves_and_shows_the_result(new_page: NewPage) -> None:
    page = new_page()
    page.goto("/")
    page.click("#start-division")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    task_id = page.locator("#job-id").inner_text()
    expect(page.locator("#cache-note")).to_have_attribute("data-outcome", "sent")

    bar = page.locator("#job-bar")
    progressbar = bar.locator(".jobtastic-bar[role=progressbar]")
    expect(progressbar).to_have_attribute("aria-valuemin", "0")
    expect(progressbar).to_have_attribute("aria-valuemax", "100")
    expect(bar.locator(".jobtastic-text")).to_have_attribute("aria-live", "polite")

    # A running bar, caught once its fill has finished sliding to the value it shows
    # (the plain theme animates the width for 0.4 s): 20..90 %, "NN% · about … left".
    page.wait_for_function(
        """() => {
            const root = document.querySelector("#job-bar");
            const bar = root.querySelector(".jobtastic-bar");
            const fill = root.querySelector(".jobtastic-fill");
            const text = root.querySelector(".jobtastic-text");
            const value = Number(bar && bar.getAttribute("aria-valuenow"));
            if (!root.classList.contains("jobtastic-state-progress")) return false;
            if (!(value >= 20 && value <= 90) || !/^\\d+% · about /.test(text.textContent)) {
                return false;
            }
            const shown = 100 * fill.getBoundingClientRect().width
                / bar.getBoundingClientRect().width;
            return Math.abs(shown - value) < 1.5;
        }""",
        timeout=JOB_TIMEOUT_MS,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "running-bar.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot))
    assert shot.is_file() and shot.stat().st_size > 0

    expect_success(page, "#job-bar")
    assert page.evaluate("Jobtastic.get('#job-bar').taskId") == task_id
    # The default numbers are n * 37 over n % 7 + 1, for n = 1..60.
    result = page.locator("#job-result")
    expect(result).to_contain_text("60 quotients")
    expect(result.locator("ul.quotients li")).to_have_count(60)
    expect(result.locator("ul.quotients li").first).to_have_text("18.5")  # 37 / 2

    seen = {int(r["now"]) for r in recorded(page, "job-bar") if r["now"] is not None}
    running = sorted(v for v in seen if 1 <= v <= 99)
    assert len(running) >= 2, f"the bar should move through several values, saw {sorted(seen)}"
    texts = [r["text"] for r in recorded(page, "job-bar") if r["type"] == "update"]
    assert any(re.match(r"^\d{1,2}% · about .+ left$", t or "") for t in texts), texts


def test_double_click_starts_one_job_and_a_repeat_comes_from_cache(new_page: NewPage) -> None:
    page = new_page()
    page.goto("/")
    page.click("#double-click")
    note = page.locator("#herd-note")
    expect(note).to_have_attribute("data-same", "true", timeout=15_000)
    expect(note).to_be_visible()
    expect(note).to_contain_text("Both requests got job")
    first_id, second_id = (note.get_attribute("data-task-ids") or "").split()
    assert first_id == second_id
    assert sorted((note.get_attribute("data-outcomes") or "").split()) == ["joined", "sent"]

    # Meanwhile, the same division started twice in a row: the second time from cache.
    body = unique_division()
    first = api_start(page, "division", body)
    assert first["outcome"] == "sent" and not first["from_cache"]

    # The double-clicked job's bar (made by the demo's script) finishes too.
    assert page.evaluate("Jobtastic.get('#double-click-bar').taskId") == first_id
    expect_success(page, "#double-click-bar")
    expect(page.locator("#double-click-result .result")).to_contain_text("40 quotients")

    wait_for_state(page, first["task_id"], "SUCCESS")
    again = api_start(page, "division", body)
    assert again["task_id"] == first["task_id"]
    assert again["outcome"] == "cache" and again["from_cache"] is True

    # The job page of the cached answer says so and shows Done at once.
    page.goto(again["url"])
    expect(page.locator("#cache-note")).to_have_attribute("data-from-cache", "true")
    expect(page.locator("#cache-note")).to_contain_text("Answered from cache")
    expect_success(page, "#job-bar")
    expect(page.locator("#job-result")).to_contain_text("60 quotients")


def test_failing_job_shows_its_message_and_no_traceback(new_page: NewPage) -> None:
    page = new_page()
    page.goto("/")
    page.click("#start-failing")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    bar = page.locator("#job-bar")
    expect(bar).to_have_class(has_class("jobtastic-state-failure"), timeout=JOB_TIMEOUT_MS)
    expect(bar).to_have_class(has_class("jobtastic-finished"))
    expect(bar.locator(".jobtastic-text")).to_have_text("Row 42: the 'email' column is empty")
    expect(bar.locator(".jobtastic-bar")).not_to_have_attribute("aria-valuenow", re.compile("."))
    expect(bar.locator(".jobtastic-cancel")).to_be_hidden()
    expect(page.locator("#job-result")).to_be_empty()
    text = page.locator("body").inner_text()
    html = page.content()
    for leak in ("Traceback", 'File "', "JobFailed", "calculate_result"):
        assert leak not in text and leak not in html, f"{leak!r} leaked onto the page"
    assert [r["type"] for r in recorded(page, "job-bar")][-2:] == ["failure", "finish"]


def test_server_going_away_shows_the_connection_error(
    new_page: NewPage, own_server: DemoServer
) -> None:
    page = new_page(base_url=own_server.url)
    page.goto("/")
    info = api_start(page, "report", {"region": "east", "year": 2021})
    assert info["outcome"] == "sent"
    page.goto(info["url"])
    page.wait_for_function("() => window.Jobtastic && Jobtastic.get('#job-bar') !== null")
    page.evaluate(
        """(taskId) => {
            Jobtastic.track("#job-bar", {taskId, transport: "polling", pollInterval: 300,
                                         maxConsecutiveErrors: 2, maxPollInterval: 1000});
        }""",
        info["task_id"],
    )
    assert page.evaluate("Jobtastic.get('#job-bar').transport") == "polling"
    bar = page.locator("#job-bar")
    expect(bar).to_have_class(has_class("jobtastic-state-progress"), timeout=JOB_TIMEOUT_MS)

    own_server.kill()
    killed = time.monotonic()
    expect(bar).to_have_class(has_class("jobtastic-connection-error"), timeout=10_000)
    expect(bar.locator(".jobtastic-text")).to_have_text("Can't reach the server, retrying…")
    noticed = time.monotonic() - killed
    print(f"\n[browser] server killed: connection error shown after {noticed:.2f} s")
    errors = [r for r in recorded(page, "job-bar") if r["type"] == "error"]
    assert errors and errors[0]["errorType"] == "network"
    # It keeps trying: not finished, still polling.
    page.wait_for_timeout(1500)
    expect(bar).not_to_have_class(has_class("jobtastic-finished"))
    expect(bar).to_have_class(has_class("jobtastic-state-progress"))
    assert page.evaluate("Jobtastic.get('#job-bar').transport") == "polling"


def test_bars_work_without_jquery_and_as_a_jquery_plugin(
    new_page: NewPage, demo_server: DemoServer
) -> None:
    # Without jQuery: the demo's pages load none, and its bars work.
    plain = new_page()
    plain.goto("/")
    assert plain.evaluate("typeof window.jQuery") == "undefined"
    plain_job = api_start(plain, "division", unique_division())
    plain.goto(plain_job["url"])
    assert plain.evaluate("typeof window.jQuery") == "undefined"

    # With a minimal jQuery defined before jobtastic.js runs: $.fn.jobtastic is there.
    stubbed = new_page(init_script=JQUERY_STUB)
    stubbed.goto("/")
    assert stubbed.evaluate("window.__jqueryStub === true")
    assert stubbed.evaluate("typeof jQuery.fn.jobtastic") == "function"
    stub_job = api_start(stubbed, "division", unique_division())
    add_bar(stubbed, "jq-bar")
    same = stubbed.evaluate(
        """(taskId) => {
            const set = $("#jq-bar").jobtastic({taskId});
            return set.data("jobtastic") === Jobtastic.get("#jq-bar");
        }""",
        stub_job["task_id"],
    )
    assert same, "$(el).jobtastic(...).data('jobtastic') should be the element's tracker"

    # The real jQuery, when this machine has one (the demo serves it for /?jquery=1).
    real = None
    vendor = new_page()
    probe = vendor.request.get("/vendor/jquery.js")
    if probe.ok:
        real = vendor
        real.goto("/?jquery=1")
        expect(real.locator("#jquery-note")).to_have_attribute("data-jquery", "loaded")
        real.wait_for_function("() => window.jQuery && jQuery.fn.jobtastic")
        real_job = api_start(real, "division", unique_division())
        add_bar(real, "jq-bar")
        real.evaluate("(taskId) => { $('#jq-bar').jobtastic({taskId}); }", real_job["task_id"])
        assert real.evaluate("$('#jq-bar').data('jobtastic') === Jobtastic.get('#jq-bar')")
    else:
        print("\n[browser] no local jQuery: the real-jQuery check was not run")

    expect_success(plain, "#job-bar")
    expect(plain.locator("#job-result")).to_contain_text("60 quotients")
    expect_success(stubbed, "#jq-bar")
    if real is not None:
        expect_success(real, "#jq-bar")


def test_event_stream_and_polling_both_reach_success(new_page: NewPage) -> None:
    page = new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto("/")
    info = api_start(page, "division", unique_division())
    task_id = info["task_id"]
    add_bar(page, "polling-bar")
    add_bar(page, "events-bar")
    transports = page.evaluate(
        """(taskId) => {
            // The events bar gets a status URL of its own, so a fallback to polling shows.
            const events = Jobtastic.track("#events-bar", {
                taskId, transport: "events",
                statusUrl: "/jobtastic/status/" + taskId + "?via=events"});
            const polling = Jobtastic.track("#polling-bar", {taskId, transport: "polling"});
            return [events.transport, polling.transport];
        }""",
        task_id,
    )
    assert transports == ["events", "polling"]
    page.wait_for_function(
        "() => Jobtastic.get('#events-bar').state === 'PROGRESS'", timeout=JOB_TIMEOUT_MS
    )
    assert page.evaluate("Jobtastic.get('#events-bar').transport") == "events"
    assert page.evaluate("Jobtastic.get('#polling-bar').transport") == "polling"

    expect_success(page, "#events-bar")
    expect_success(page, "#polling-bar")
    for element_id in ("events-bar", "polling-bar"):
        records = recorded(page, element_id)
        assert records[-1]["type"] == "finish" and records[-1]["state"] == "SUCCESS"
        running = {r["transport"] for r in records if r["type"] == "update"}
        running.discard(None)  # a finished tracker has stopped listening
        assert running == {element_id.split("-")[0]}, (element_id, running)

    assert any(f"/jobtastic/events/{task_id}?via=events" in url for url in requests), requests
    assert not any(f"/jobtastic/status/{task_id}?via=events" in url for url in requests)
    assert any(url.endswith(f"/jobtastic/status/{task_id}") for url in requests)


def test_steps_page_shows_steps_counts_and_my_jobs(new_page: NewPage) -> None:
    page = new_page()
    page.goto("/steps")
    expect(page.locator("#my-jobs .jobtastic-jobs-empty")).to_be_visible()
    page.click("#start-steps")
    page.wait_for_url(re.compile(r"/steps\?job=[0-9a-f-]{36}$"))
    task_id = page.locator("#job-id").inner_text()
    bar = page.locator("#steps-bar")
    steps = bar.locator("li.jobtastic-step")

    # Declared steps are listed from the start; the last one is still pending.
    write = bar.locator('li.jobtastic-step[data-step-key="write"]')
    expect(write).to_have_class(has_class("jobtastic-step-pending"))
    expect(write).to_contain_text("Write the summary")
    expect(bar.locator('li[data-step-key="fetch"]')).to_contain_text("Fetch the orders")
    expect(bar.locator('li[data-step-key="check"]')).to_contain_text("Check each order")
    first = next(r for r in recorded(page, "steps-bar") if r["steps"])
    declared = dict(first["steps"])
    assert {"fetch", "check", "write"} <= set(declared), first["steps"]
    assert declared["write"] == "pending", first["steps"]
    assert declared["check"] in ("pending", "running"), first["steps"]

    # The visitor's job list shows this job while it runs.
    job_item = page.locator(f'#my-jobs li.jobtastic-job[data-job-id="{task_id}"]')
    expect(job_item).to_be_visible()
    expect(job_item).to_contain_text("Check today's orders")

    # Counts appear while the orders are checked.
    counts = bar.locator(".jobtastic-counts")
    expect(counts).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(counts).to_have_text(re.compile(r"^\d+ done, \d+ failed, \d+ to go$"))

    expect_success(page, "#steps-bar")
    expect(steps).to_have_count(4)
    for key in ("fetch", "check", "write"):
        expect(bar.locator(f'li[data-step-key="{key}"]')).to_have_class(
            has_class("jobtastic-step-done")
        )
    retry = bar.locator('li[data-step-key="retry"]')
    expect(retry).to_have_class(has_class("jobtastic-step-failed"))
    expect(retry).to_contain_text("Retry the failed ones")
    # an ordinary exception: the generic message and error id, not its raw text
    expect(retry.locator(".jobtastic-step-error")).to_have_text(
        re.compile(r"^ConnectionError: This step failed\. .* error id [0-9a-f]{10}\.$")
    )
    expect(counts).to_have_text("21 done, 3 failed, 0 to go")
    expect(bar.locator(".jobtastic-log li").last).to_contain_text("Summary written")
    expect(page.locator("#job-result")).to_contain_text("21 of 24 orders passed")
    expect(bar).to_have_attribute("data-seen", "true")
    expect(job_item).to_be_visible()
    expect(job_item.locator(".jobtastic")).to_have_class(has_class("jobtastic-state-success"))


def _intervals(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def _ms(values: list[float], how: Callable[[list[float]], float]) -> str:
    return f"{how(values):.0f} ms" if values else "n/a"


def test_measure_event_stream_and_polling_latency(new_page: NewPage) -> None:
    """Not a timing assertion: figures for the lead, printed and saved to a file."""
    page = new_page()
    page.goto("/")
    info = api_start(page, "report", {"region": "west", "year": 2019})
    assert info["outcome"] == "sent"
    add_bar(page, "polling-bar")
    add_bar(page, "events-bar")
    page.evaluate(
        """(taskId) => {
            Jobtastic.track("#events-bar", {taskId, transport: "events"});
            Jobtastic.track("#polling-bar", {taskId, transport: "polling"});
        }""",
        info["task_id"],
    )
    expect_success(page, "#events-bar")
    expect_success(page, "#polling-bar")

    arrivals: dict[str, dict[float, float]] = {}
    lines = [
        "Progress updates reaching the page: event stream vs polling (default 1000 ms),",
        "one CSV report job (~15 s, a progress write every 0.5 s at most), both bars on",
        "one page of the embedded demo app (the stream polls the in-memory backend",
        "every 0.25 s server-side).",
    ]
    for transport in ("events", "polling"):
        first_seen: dict[float, float] = {}
        for r in recorded(page, f"{transport}-bar"):
            if r["type"] == "progress" and r["pct"] is not None:
                first_seen.setdefault(float(r["pct"]), r["t"])
        arrivals[transport] = first_seen
        times = sorted(first_seen.values())
        gaps = _intervals(times)
        lines.append(
            f"{transport:>8}: {len(first_seen)} distinct progress values; interval between "
            f"updates median {_ms(gaps, statistics.median)}, max {_ms(gaps, max)}"
        )
    common = sorted(set(arrivals["events"]) & set(arrivals["polling"]))
    lags = [arrivals["polling"][p] - arrivals["events"][p] for p in common]
    missed = len(set(arrivals["events"]) - set(arrivals["polling"]))
    lines.append(
        f"polling behind the stream, per value both saw ({len(common)}): median "
        f"{_ms(lags, statistics.median)}, max {_ms(lags, max)}, min {_ms(lags, min)}; "
        f"values polling never saw: {missed}"
    )
    done = {
        t: next(r["t"] for r in recorded(page, f"{t}-bar") if r["type"] == "success")
        for t in ("events", "polling")
    }
    lines.append(
        f"SUCCESS shown by polling {done['polling'] - done['events']:.0f} ms after the stream"
    )
    report = "\n".join(lines)
    print("\n" + report)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "browser-latency.txt").write_text(report + "\n")
    (ARTIFACTS / "browser-latency.json").write_text(json.dumps(arrivals, indent=1) + "\n")
    assert arrivals["events"] and arrivals["polling"]


# -- the deployment: gunicorn serving tests.widget_app, a real Celery worker ----------


@pytest.fixture(scope="module")
def widget_server(celery_worker: Any) -> Iterator[GunicornServer]:
    server = GunicornServer("widget").start()
    yield server
    server.stop()


def start_job(page: Page, kind: str, body: dict[str, Any]) -> str:
    """``POST /start/<kind>`` of the widget test app, as the page's user."""
    response = page.request.post(f"/start/{kind}", data=body)
    assert response.ok, f"start {kind}: HTTP {response.status} {response.text()}"
    return str(response.json()["task_id"])


def texts(page: Page, key: str) -> list[dict[str, Any]]:
    """Every text the bar ``key`` (its id or task id) showed, in order."""
    return [e for e in page.evaluate("window.__texts") if e["key"] == key]


def screenshot(page: Page, name: str) -> None:
    """test-artifacts/<name>.png, once the bar's fill has slid to its value (0.4 s)."""
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 0


def test_cancel_shows_cancelling_until_the_worker_stops_the_job(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    page = new_page(base_url=widget_server.url, user="carla")
    # A progress write every 10 s: the worker sees the cancel at the next one, the first
    # coming about 8 s after the click, time enough for a second tab to see it pending.
    task_id = start_job(page, "slow", {"token": token, "seconds": 40, "steps": 4})
    page.goto(f"/page/{task_id}")
    bar, text = page.locator("#job-bar"), page.locator("#job-bar .jobtastic-text")
    button = bar.locator(".jobtastic-cancel")
    expect(bar).to_have_class(has_class("jobtastic-state-progress"))
    expect(button).to_be_enabled()
    clicked = page.evaluate("performance.now()")
    button.click()
    expect(text).to_have_text("Cancelling…")
    expect(button).to_be_disabled()
    expect(bar).to_have_class(has_class("jobtastic-cancelling"))
    screenshot(page, "cancel-pending")

    # Another tab (or a reload) learns it from the document: Cancelling…, button disabled.
    other = new_page(base_url=widget_server.url, user="carla")
    other.goto(f"/page/{task_id}?transport=polling")
    other_text = other.locator("#job-bar .jobtastic-text")
    expect(other_text).to_have_text("Cancelling…")
    expect(other.locator("#job-bar .jobtastic-cancel")).to_be_disabled()

    expect(text).to_have_text("Cancelled", timeout=15_000)
    expect(button).to_be_hidden()
    expect(other_text).to_have_text("Cancelled", timeout=15_000)
    confirmed = page.evaluate("performance.now()")
    screenshot(page, "cancel-confirmed")
    page.wait_for_timeout(6_000)  # the stopped job writes nothing more: it stays cancelled
    expect(text).to_have_text("Cancelled")
    assert wait_for_state(page, task_id, "REVOKED")["ready"] is True

    shown = [e for e in texts(page, "job-bar") if e["t"] >= clicked]
    assert shown[0]["text"] == "Cancelling…" and shown[0]["disabled"], shown
    final = next(i for i, e in enumerate(shown) if e["text"] == "Cancelled")
    assert {e["text"] for e in shown[:final]} == {"Cancelling…"}, shown  # never back to "…left"
    assert all(e["disabled"] for e in shown[:final]), shown
    assert [e["text"] for e in shown[final:]] == ["Cancelled"] * len(shown[final:]), shown
    seconds = (confirmed - clicked) / 1000
    print(f"\n[browser] cancel: click to 'Cancelled' {seconds:.2f} s (a write every 10 s)")


def test_a_job_that_never_writes_stays_cancelling_until_it_ended(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    """It cannot be stopped mid-run: "Cancelling…" until it ended, then how it ended."""
    page = new_page(base_url=widget_server.url, user="sam")
    task_id = start_job(page, "silent", {"token": token, "seconds": 3})  # never writes progress
    page.goto(f"/page/{task_id}")
    bar, text = page.locator("#job-bar"), page.locator("#job-bar .jobtastic-text")
    expect(bar).to_have_class(has_class("jobtastic-state-progress"))
    clicked = page.evaluate("performance.now()")
    bar.locator(".jobtastic-cancel").click()
    expect(text).to_have_text("Cancelling…")
    expect(bar).to_have_class(has_class("jobtastic-finished"), timeout=JOB_TIMEOUT_MS)
    assert tasks_redis().exists(f"finished:{token}"), "the bar said it ended while the job ran"
    document = page.request.get(f"/jobtastic/status/{task_id}").json()
    final = {"SUCCESS": "Done", "REVOKED": "Cancelled"}[document["state"]]
    expect(text).to_have_text(final)
    shown = [e["text"] for e in texts(page, "job-bar") if e["t"] >= clicked]
    assert shown == ["Cancelling…"] * (len(shown) - 1) + [final], shown


def test_a_tab_on_the_event_stream_shows_a_pending_cancel(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    page = new_page(base_url=widget_server.url, user="cleo")
    task_id = start_job(page, "slow", {"token": token, "seconds": 30, "steps": 3})
    page.goto(f"/page/{task_id}?transport=events")
    expect(page.locator("#job-bar")).to_have_class(has_class("jobtastic-state-progress"))
    cancelled = page.request.post(
        f"/jobtastic/cancel/{task_id}", headers={"X-Requested-With": "test"}
    )
    assert cancelled.json().get("cancel_pending") is True, cancelled.json()
    expect(page.locator("#job-bar .jobtastic-text")).to_have_text("Cancelling…", timeout=5_000)
    expect(page.locator("#job-bar .jobtastic-cancel")).to_be_disabled()
    assert page.evaluate("Jobtastic.get('#job-bar').transport") == "events"
    expect(page.locator("#job-bar .jobtastic-text")).to_have_text("Cancelled", timeout=15_000)


def test_a_cancel_that_does_not_reach_the_server_says_so(
    new_page: NewPage, demo_server: DemoServer
) -> None:
    page = new_page()
    page.goto("/")
    info = api_start(page, "report", {"region": "north", "year": 2022})
    page.goto(info["url"])
    page.wait_for_function("() => window.Jobtastic && Jobtastic.get('#job-bar') !== null")
    # Nothing listens on this port: the POST fails as it would with the network down.
    page.evaluate(
        """([taskId, url]) => {
            Jobtastic.track("#job-bar", {taskId, cancelButton: true, cancelUrl: url});
        }""",
        [info["task_id"], f"http://127.0.0.1:{free_port()}/jobtastic/cancel/{info['task_id']}"],
    )
    bar = page.locator("#job-bar")
    expect(bar).to_have_class(has_class("jobtastic-state-progress"), timeout=JOB_TIMEOUT_MS)
    bar.locator(".jobtastic-cancel").click()
    expect(bar.locator(".jobtastic-notice")).to_have_text("Could not cancel the job")
    expect(bar.locator(".jobtastic-cancel")).to_be_enabled()
    expect(bar.locator(".jobtastic-text")).not_to_have_text("Cancelling…")
    expect(bar).not_to_have_class(has_class("jobtastic-cancelling"))
    screenshot(page, "cancel-failed")
    expect_success(page, "#job-bar")  # the job was never cancelled


def test_failures_show_their_error_id_once(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    page = new_page(base_url=widget_server.url, user="gina")
    generic = start_job(page, "failing", {"token": token + "g"})
    page.goto(f"/page/{generic}")
    bar = page.locator("#job-bar")
    expect(bar).to_have_class(has_class("jobtastic-state-failure"))
    error_id = wait_for_state(page, generic, "FAILURE")["error"]["error_id"]
    expect(bar.locator(".jobtastic-text")).to_contain_text(f"quote error id {error_id}")
    expect(bar.locator(".jobtastic-error-id")).to_be_hidden()
    assert bar.inner_text().count(error_id) == 1, bar.inner_text()
    screenshot(page, "failure-generic")
    # The failure event's detail.data is the document's error.
    failure = next(r for r in recorded(page, "job-bar") if r["type"] == "failure")
    assert failure["data"]["error_id"] == error_id and failure["same"], failure

    told = start_job(page, "failing", {"token": token + "u", "user_facing": True})
    page.goto(f"/page/{told}")
    expect(bar).to_have_class(has_class("jobtastic-state-failure"))
    error_id = wait_for_state(page, told, "FAILURE")["error"]["error_id"]
    expect(bar.locator(".jobtastic-text")).to_have_text("The CSV header is missing 'email'")
    expect(bar.locator(".jobtastic-error-id")).to_have_text(f"Error reference: {error_id}")
    assert bar.inner_text().count(error_id) == 1, bar.inner_text()


def test_steps_still_to_run_are_never_almost_done(new_page: NewPage) -> None:
    page = new_page()
    page.goto("/steps")
    page.click("#start-steps")
    page.wait_for_url(re.compile(r"/steps\?job=[0-9a-f-]{36}$"))
    bar = page.locator("#steps-bar")
    # All orders checked (100 % of the counted items) while two steps remain.
    expect(bar.locator(".jobtastic-text")).to_have_text(
        re.compile(r"^\d+% · (\d+ steps|1 step) to go$"), timeout=JOB_TIMEOUT_MS
    )
    screenshot(page, "steps-to-go")
    expect_success(page, "#steps-bar")
    updates = [r for r in recorded(page, "steps-bar") if r["type"] == "update"]
    waiting = [r for r in updates if any(s in ("pending", "running") for _, s in r["steps"])]
    assert waiting, updates
    assert not [r["text"] for r in waiting if "almost done" in (r["text"] or "")], waiting
    assert any(r["pct"] == 100 and "to go" in r["text"] for r in waiting), waiting


def test_bars_with_streams_of_their_own_open_at_most_four(new_page: NewPage) -> None:
    """``pageStream: false``: each bar its own EventSource, within ``maxStreams``."""
    page = new_page()
    page.goto("/")
    ids = [api_start(page, "division", unique_division())["task_id"] for _ in range(6)]
    for number in range(6):
        add_bar(page, f"bar-{number}")
    transports = page.evaluate(
        """(ids) => ids.map((taskId, n) =>
            Jobtastic.track("#bar-" + n, {taskId, pageStream: false}).transport)""",
        ids,
    )
    assert transports == ["events"] * 4 + ["polling"] * 2
    for number in range(6):
        expect_success(page, f"#bar-{number}")


def test_streams_of_their_own_refused_with_429_fall_back_to_polling(
    new_page: NewPage, celery_worker: Any, token: str
) -> None:
    server = GunicornServer("widget-429", config={"JOBTASTIC_EVENTS_MAX_PER_OWNER": 1}).start()
    try:
        page = new_page(base_url=server.url, user="pia")
        refused: list[str] = []
        page.on("response", lambda r: r.status == 429 and refused.append(r.url))
        ids = [
            start_job(page, "slow", {"token": f"{token}{n}", "seconds": 3, "steps": 15})
            for n in range(3)
        ]
        page.goto("/page?list=0")
        page.evaluate("Jobtastic.configure({pageStream: false})")  # bars of their own
        for number in range(3):
            add_bar(page, f"bar-{number}")
        page.evaluate(
            """(ids) => ids.forEach((taskId, n) => Jobtastic.track("#bar-" + n, {taskId}))""", ids
        )
        page.wait_for_function(  # the two refusals arrived
            "() => [0, 1, 2].filter((n) => Jobtastic.get('#bar-' + n).transport === 'polling')"
            ".length === 2"
        )
        # A bar started soon after a refusal polls from the start: no stream asked for.
        late = start_job(page, "slow", {"token": f"{token}late", "seconds": 1, "steps": 5})
        add_bar(page, "late-bar")
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        late_transport = page.evaluate(
            "(taskId) => Jobtastic.track('#late-bar', {taskId}).transport", late
        )
        assert late_transport == "polling"
        for selector in ("#bar-0", "#bar-1", "#bar-2", "#late-bar"):
            expect_success(page, selector)
        assert not [url for url in asked if "/jobtastic/events/" in url], asked
        used = []
        for number in range(3):
            updates = [r for r in recorded(page, f"bar-{number}") if r["type"] == "update"]
            used.append({r["transport"] for r in updates if r["transport"]})
        assert sorted(map(sorted, used)) == [["events"], ["polling"], ["polling"]], used
        assert refused and all("/jobtastic/events/" in url for url in refused), refused
        # detail.data of a success event is the job's result (SlowProgressTask returns its token).
        results = [
            next(r for r in recorded(page, f"bar-{n}") if r["type"] == "success")["data"]
            for n in range(3)
        ]
        assert results == [f"{token}{n}" for n in range(3)]
        screenshot(page, "streams-429-polling")
    finally:
        server.stop()


def test_job_list_titles_follow_their_bars_and_finished_jobs_can_be_dismissed(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    page = new_page(base_url=widget_server.url, user=f"lena-{token[:8]}")
    failed = start_job(page, "tracked", {"token": token + "f", "seconds": 0.3, "fail": True})
    running = start_job(page, "tracked", {"token": token + "r", "seconds": 4})
    page.goto("/page")
    # Only the first load of the list: every later title change comes from the bars.
    page.evaluate("Jobtastic.watchJobs('.jobtastic-jobs', {interval: 600000})")
    item = page.locator(f'li.jobtastic-job[data-job-id="{running}"]')
    title = item.locator(".jobtastic-job-title")
    expect(title).to_have_text("A tracked test job · Running")
    expect(item.locator(".jobtastic-job-dismiss")).to_have_count(0)
    expect(title).to_have_text("A tracked test job · Done", timeout=JOB_TIMEOUT_MS)
    expect(item.locator(".jobtastic-job-dismiss")).to_be_visible()

    failed_item = page.locator(f'li.jobtastic-job[data-job-id="{failed}"]')
    expect(failed_item.locator(".jobtastic-job-title")).to_have_text("A tracked test job · Failed")
    screenshot(page, "jobs-list-live")
    failed_item.locator(".jobtastic-job-dismiss").click()
    expect(failed_item).to_have_count(0)
    page.evaluate("document.querySelector('.jobtastic-jobs').__jobtasticJobs.refresh()")
    expect(item).to_be_visible()
    expect(failed_item).to_have_count(0)  # dismissed: not back with the next load
    listed = {job["id"]: job for job in page.request.get("/jobtastic/jobs").json()["jobs"]}
    assert listed[failed]["seen"] is True


def test_a_job_dismissed_after_the_list_is_watched_again_stays_dismissed(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    page = new_page(base_url=widget_server.url, user=f"ines-{token[:8]}")
    failed = start_job(page, "tracked", {"token": token + "f", "seconds": 0.1, "fail": True})
    page.goto("/page")
    item = page.locator(f'li.jobtastic-job[data-job-id="{failed}"]')
    # The Dismiss button of the watcher started on page load ...
    expect(item.locator(".jobtastic-job-dismiss")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    page.evaluate("Jobtastic.watchJobs('.jobtastic-jobs', {interval: 600000})")
    item.locator(".jobtastic-job-dismiss").click()  # ... works for the watcher after it
    expect(item).to_have_count(0)
    page.evaluate("document.querySelector('.jobtastic-jobs').__jobtasticJobs.refresh()")
    page.wait_for_timeout(1000)
    expect(item).to_have_count(0)


def test_job_list_strings_come_from_messages(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    page = new_page(base_url=widget_server.url, user=f"jonas-{token[:8]}")
    failed = start_job(page, "tracked", {"token": token + "f", "seconds": 0.3, "fail": True})
    page.goto("/page")
    page.evaluate(
        """() => {
          Jobtastic.configure({messages: {
            jobTitle: "{state}: {name}", jobFailed: "Fehlgeschlagen", dismiss: "Ausblenden",
          }});
          Jobtastic.watchJobs('.jobtastic-jobs', {interval: 600000});
        }"""
    )
    item = page.locator(f'li.jobtastic-job[data-job-id="{failed}"]')
    expect(item.locator(".jobtastic-job-title")).to_have_text(
        "Fehlgeschlagen: A tracked test job", timeout=JOB_TIMEOUT_MS
    )
    expect(item.locator(".jobtastic-job-dismiss")).to_have_text("Ausblenden")


def test_job_list_retries_while_redis_is_down_and_recovers(new_page: NewPage, token: str) -> None:
    """The quick start's one Redis (broker and results) goes down under a live page
    whose list polls GET /jobs (on the page stream, see test_page_stream_*)."""
    with RedisServer() as redis_server:
        env = {"JOBTASTIC_TEST_BROKER_URL": redis_server.url}
        env["JOBTASTIC_TEST_BACKEND_URL"] = redis_server.url
        server = GunicornServer("widget-outage", env=env).start()
        try:
            page = new_page(base_url=server.url, user="omar")
            asked: list[float] = []
            page.on(
                "request",
                lambda r: r.url.endswith("/jobtastic/jobs") and asked.append(time.monotonic()),
            )
            queued = start_job(page, "tracked", {"token": token})  # no worker: stays queued
            page.goto(f"/page/{queued}")
            faster = "{transport: 'polling', interval: 500, maxInterval: 8000}"
            page.evaluate(f"Jobtastic.watchJobs('.jobtastic-jobs', {faster})")
            item = page.locator(f'li.jobtastic-job[data-job-id="{queued}"]')
            expect(item.locator(".jobtastic-job-title")).to_have_text("A tracked test job · Queued")
            note = page.locator(".jobtastic-jobs-status")
            expect(note).to_be_hidden()

            redis_server.kill()
            down = time.monotonic()
            expect(note).to_have_text("Your jobs could not be loaded, retrying…")
            expect(item).to_be_visible()  # the last known list stays
            # A cancel answered 503 says so, and the button works again.
            bar = page.locator("#job-bar")
            bar.locator(".jobtastic-cancel").click()
            expect(bar.locator(".jobtastic-notice")).to_have_text("Could not cancel the job")
            expect(bar.locator(".jobtastic-cancel")).to_be_enabled()
            page.wait_for_timeout(max(0.0, 15.0 - (time.monotonic() - down)) * 1000)
            screenshot(page, "jobs-list-redis-down")
            during = [t for t in asked if t > down]
            gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
            assert len(gaps) >= 2, during
            assert all(gap >= 1.8 for gap in gaps), gaps  # Retry-After: 2 is honoured
            assert gaps == sorted(gaps) and gaps[-1] >= 2 * gaps[0] * 0.9, gaps  # backing off

            redis_server.start()  # back, empty: the old job is gone with it
            expect(note).to_be_hidden(timeout=15_000)
            expect(page.locator(".jobtastic-jobs-empty")).to_be_visible()
            fresh = start_job(page, "tracked", {"token": token + "2"})
            expect(page.locator(f'li.jobtastic-job[data-job-id="{fresh}"]')).to_be_visible()
            screenshot(page, "jobs-list-recovered")
        finally:
            server.stop()


def test_a_job_that_could_not_be_queued_can_be_dismissed(new_page: NewPage, token: str) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # a broker that is down
    server = GunicornServer("widget-no-broker", env={"JOBTASTIC_TEST_BROKER_URL": nobody}).start()
    try:
        page = new_page(base_url=server.url, user=f"dora-{token[:8]}")
        task_id = start_job(page, "tracked", {"token": token})
        page.goto("/page")
        item = page.locator(f'li.jobtastic-job[data-job-id="{task_id}"]')
        expect(item.locator(".jobtastic-job-title")).to_have_text("A tracked test job · Failed")
        expect(item.locator(".jobtastic-text")).to_contain_text("could not be queued")
        screenshot(page, "jobs-list-not-queued")
        item.locator(".jobtastic-job-dismiss").click()
        expect(item).to_have_count(0)
        listed = {job["id"]: job for job in page.request.get("/jobtastic/jobs").json()["jobs"]}
        assert listed[task_id]["state"] == "failed" and listed[task_id]["seen"] is True
    finally:
        server.stop()


# -- the page stream: one connection for every bar and the job list -----------------


def _watch_requests(page: Page) -> dict[str, list[tuple[float, str]]]:
    """The page's event-stream and status requests, as (time, url), in order."""
    seen: dict[str, list[tuple[float, str]]] = {"streams": [], "status": [], "jobs": []}

    def note(request: Any) -> None:
        path = request.url.split("?")[0]
        if "/jobtastic/events" in path:
            seen["streams"].append((time.monotonic(), request.url))
        elif "/jobtastic/status" in path:
            seen["status"].append((time.monotonic(), request.url))
        elif path.endswith("/jobtastic/jobs"):
            seen["jobs"].append((time.monotonic(), request.url))

    page.on("request", note)
    return seen


def _ids_of(url: str) -> set[str]:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return {part for value in query.get("ids", []) for part in value.split(",") if part}


def test_page_stream_carries_several_bars_and_the_job_list_on_one_connection(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    page = new_page(base_url=widget_server.url, user=f"una-{token[:8]}")
    finished = start_job(page, "tracked", {"token": token + "f", "seconds": 0.1})
    wait_for_state(page, finished, "SUCCESS")
    ids = [
        start_job(page, "slow", {"token": f"{token}{n}", "seconds": 4, "steps": 8})
        for n in range(2)
    ]
    ids.append(start_job(page, "tracked", {"token": token + "t", "seconds": 4}))
    seen = _watch_requests(page)
    page.goto(f"/page?ids={','.join(ids)}")
    for number in range(2):  # the worker runs two at a time
        expect(page.locator(f"#bar-{number}")).to_have_class(has_class("jobtastic-state-progress"))
    # A job started while the page is open appears in the list, and its bar goes live.
    later = start_job(page, "tracked", {"token": token + "l", "seconds": 1})
    later_item = page.locator(f'li.jobtastic-job[data-job-id="{later}"]')
    expect(later_item.locator(".jobtastic-job-title")).to_have_text(
        re.compile(r"^A tracked test job · (Queued|Running)$")
    )
    for number in range(3):
        expect_success(page, f"#bar-{number}")
    expect(later_item.locator(".jobtastic")).to_have_class(has_class("jobtastic-state-success"))
    expect(later_item.locator(".jobtastic-job-title")).to_have_text("A tracked test job · Done")
    finished_item = page.locator(f'li.jobtastic-job[data-job-id="{finished}"]')
    expect(finished_item.locator(".jobtastic")).to_have_class(has_class("jobtastic-state-success"))
    tracked_item = page.locator(f'li.jobtastic-job[data-job-id="{ids[2]}"]')
    expect(tracked_item.locator(".jobtastic")).to_have_class(has_class("jobtastic-state-success"))
    screenshot(page, "page-stream-bars-and-list")

    streams = [url for _, url in seen["streams"]]
    print(f"\n[browser] page stream: {len(streams)} event-stream request(s): {streams}")
    assert len(streams) == 1, streams  # four bars and the list: one connection
    assert "/jobtastic/events/jobs?" in streams[0] and _ids_of(streams[0]) == set(ids), streams
    # No bar polled on its own; the finished listed job was read once, in a batch.
    status = [url for _, url in seen["status"]]
    assert not [url for url in status if "/jobtastic/status/" in url], status
    assert [_ids_of(url) for url in status] == [{finished}], status
    assert not seen["jobs"], seen["jobs"]  # the list came on the stream
    updates = [r for r in recorded(page) if r["type"] == "update" and r["transport"]]
    assert updates and {r["transport"] for r in updates} == {"events"}, updates

    # A bar added by a script for a job the list does not show reopens the stream once.
    extra = start_job(page, "slow", {"token": token + "x", "seconds": 1, "steps": 4})
    add_bar(page, "extra-bar")
    page.evaluate("(taskId) => { Jobtastic.track('#extra-bar', {taskId}); }", extra)
    expect_success(page, "#extra-bar")
    streams = [url for _, url in seen["streams"]]
    assert len(streams) == 2 and _ids_of(streams[1]) == {extra}, streams
    assert page.evaluate("Jobtastic.pageStream().es.url") in streams[1]


def test_page_stream_reopens_once_with_its_cursor_and_closes_when_done(
    new_page: NewPage, widget_server: GunicornServer, token: str
) -> None:
    """Bars alone (no list): ``/events?ids=``; bars added together reopen it once with
    ``?cursor=``; ``done`` closes it and the browser does not reconnect."""
    page = new_page(base_url=widget_server.url, user=f"xia-{token[:8]}")
    first = start_job(page, "slow", {"token": token + "a", "seconds": 3, "steps": 12})
    seen = _watch_requests(page)
    page.goto(f"/page?list=0&ids={first}")
    expect(page.locator("#bar-0")).to_have_class(has_class("jobtastic-state-progress"))
    page.wait_for_timeout(1500)  # the server sets a cursor (at most once a second)
    more = [
        start_job(page, "slow", {"token": f"{token}{n}", "seconds": 1, "steps": 4})
        for n in range(2)
    ]
    for number in range(2):
        add_bar(page, f"more-{number}")
    page.evaluate(
        """(ids) => ids.forEach((taskId, n) => Jobtastic.track("#more-" + n, {taskId}))""", more
    )
    for selector in ("#bar-0", "#more-0", "#more-1"):
        expect_success(page, selector)
    streams = [url for _, url in seen["streams"]]
    assert len(streams) == 2, streams
    assert "/jobtastic/events?" in streams[0] and _ids_of(streams[0]) == {first}, streams
    assert _ids_of(streams[1]) == {first, *more}, streams
    assert "cursor=1." in streams[1], streams  # what the page has is not sent again
    page.wait_for_function("() => Jobtastic.pageStream().es === null")  # done: closed
    page.wait_for_timeout(3000)
    assert len(seen["streams"]) == 2, seen["streams"]  # and not reconnected
    assert not seen["status"], seen["status"]


class PersistentRedis(RedisServer):
    """A Redis that keeps its data across kill and restart (an fsynced append-only file),
    as a production Redis with persistence does."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir

    def command(self, executable: str) -> list[str]:
        return [
            executable,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.data_dir),
        ]


def test_page_stream_stays_live_through_a_redis_restart(
    new_page: NewPage, token: str, tmp_path: Path
) -> None:
    """The quick start's one Redis (broker, results, registry) restarts under a page of
    three bars and the job list: the same connection carries on."""
    with PersistentRedis(tmp_path) as redis_server, MemcachedServer() as memcached:
        counter = os.environ["JOBTASTIC_TEST_COUNTER_URL"]  # on a Redis nobody kills
        servers = Servers(redis_server, memcached, counter_url=counter)
        env = servers.env(f"pagestream-{token[:8]}")
        log = ARTIFACTS / "worker-page-stream-restart.log"
        worker = WorkerProcess(log, concurrency=4, env=env)
        worker.start()
        server = GunicornServer("widget-page-stream-restart", env=env).start()
        try:
            page = new_page(base_url=server.url, user=f"vera-{token[:8]}")
            ids = [
                start_job(page, "slow", {"token": f"{token}{n}", "seconds": 12, "steps": 24})
                for n in range(2)
            ]
            ids.append(start_job(page, "tracked", {"token": token + "t", "seconds": 12}))
            seen = _watch_requests(page)
            page.goto(f"/page?ids={','.join(ids)}")
            bars = [page.locator(f"#bar-{n}") for n in range(3)]
            for bar in bars:
                expect(bar).to_have_class(has_class("jobtastic-state-progress"))
            note = page.locator(".jobtastic-jobs-status")
            expect(note).to_be_hidden()

            redis_server.kill()
            down = time.monotonic()
            # the server says it lost Redis: every bar and the list show it
            for bar in bars:
                expect(bar).to_have_class(has_class("jobtastic-connection-error"), timeout=10_000)
            expect(bar.locator(".jobtastic-text")).to_have_text("Can't reach the server, retrying…")
            expect(note).to_have_text("Your jobs could not be loaded, retrying…")
            screenshot(page, "page-stream-redis-down")
            page.wait_for_timeout(max(0.0, 2.0 - (time.monotonic() - down)) * 1000)
            redis_server.start()

            for bar in bars:
                expect(bar).not_to_have_class(has_class("jobtastic-connection-error"))
            expect(note).to_be_hidden(timeout=15_000)
            for number in range(3):  # started before the restart, finished after it
                expect_success(page, f"#bar-{number}")
            fresh = start_job(page, "tracked", {"token": token + "n", "seconds": 1})
            item = page.locator(f'li.jobtastic-job[data-job-id="{fresh}"]')
            expect(item).to_be_visible()
            expect(item.locator(".jobtastic")).to_have_class(has_class("jobtastic-state-success"))
            expect(item.locator(".jobtastic-job-title")).to_have_text("A tracked test job · Done")
            screenshot(page, "page-stream-redis-back")
            streams = [url for _, url in seen["streams"]]
            print(f"\n[browser] Redis restart: {len(streams)} event-stream request(s)")
            assert len(streams) == 1, streams  # the one connection lived through it
            assert not [url for _, url in seen["status"] if "/jobtastic/status/" in url]
        finally:
            server.stop()
            worker.kill()


def test_page_stream_refused_means_one_batched_poll_for_all_bars(
    new_page: NewPage, celery_worker: Any, token: str
) -> None:
    config = {"JOBTASTIC_EVENTS_MAX_PER_PROCESS": 0}  # every event stream: 429
    server = GunicornServer("widget-no-streams", config=config).start()
    try:
        page = new_page(base_url=server.url, user=f"wim-{token[:8]}")
        ids = [
            start_job(page, "slow", {"token": f"{token}{n}", "seconds": 5, "steps": 10})
            for n in range(3)
        ]
        ids.append(start_job(page, "tracked", {"token": token + "t", "seconds": 5}))
        seen = _watch_requests(page)
        page.goto(f"/page?ids={','.join(ids)}")
        page.wait_for_function("() => Jobtastic.pageStream().mode === 'polling'")
        started = time.monotonic()
        for number in range(2):  # the worker runs two at a time
            expect(page.locator(f"#bar-{number}")).to_have_class(
                has_class("jobtastic-state-progress")
            )
        page.wait_for_timeout(max(0.0, 3.0 - (time.monotonic() - started)) * 1000)
        window = [(t, url) for t, url in seen["status"] if started <= t <= started + 3]
        # One request per second (pollInterval) for all the bars, not one per bar.
        assert 2 <= len(window) <= 4, window
        assert _ids_of(seen["status"][0][1]) == set(ids), seen["status"]
        assert all(len(_ids_of(url)) >= 2 for _, url in window), window
        assert all(_ids_of(url) <= set(ids) for _, url in window), window
        for number in range(4):
            expect_success(page, f"#bar-{number}")
        item = page.locator(f'li.jobtastic-job[data-job-id="{ids[3]}"]')
        expect(item.locator(".jobtastic-job-title")).to_have_text("A tracked test job · Done")
        screenshot(page, "page-stream-refused-polling")

        status = [url for _, url in seen["status"]]
        assert not [url for url in status if "/jobtastic/status/" in url], status
        streams = [t for t, _ in seen["streams"]]
        # the stream is asked for again after 5 s, 10 s, ...: not at every poll
        assert 1 <= len(streams) <= 4, seen["streams"]
        assert seen["jobs"], "the list polls GET /jobs meanwhile"
        updates = [r for r in recorded(page) if r["type"] == "update" and r["transport"]]
        assert {r["transport"] for r in updates} == {"polling"}, updates
    finally:
        server.stop()


# -- the batch card: a chord, on the demo's own worker and Redis --------------------


class DemoWorker(WorkerProcess):
    """``celery -A example_app.worker worker``, the demo's worker for real servers."""

    def command(self) -> list[str]:
        argv = super().command()
        argv[argv.index("tests.worker_app")] = "example_app.worker"
        return argv


@pytest.fixture(scope="module")
def demo_on_servers() -> Iterator[DemoServer]:
    """The demo on one Redis (broker and result backend) with its prefork worker."""
    with RedisServer() as redis_server:
        env = {"CELERY_BROKER_URL": redis_server.url, "CELERY_RESULT_BACKEND": redis_server.url}
        log = ARTIFACTS / "browser-demo-worker.log"
        log.unlink(missing_ok=True)  # start() waits for " ready." in it
        worker = DemoWorker(log, env=env)
        worker.start()
        server = DemoServer("demo-servers", env=env)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            worker.stop()


#: What the batch card renders for "4 files": the first four files, as HTML.
BATCH_OF_FOUR = [
    "welcome-letter.html",
    "invoice-0141.html",
    "price-list.html",
    "shipping-notes.html",
]


def parts_of(page: Page, task_id: str) -> list[dict[str, Any]]:
    """The documents of a canvas's parts (its first page of them), in order."""
    response = page.request.get(f"/jobtastic/status/{task_id}?children=1")
    assert response.ok, response.text()
    parts: list[dict[str, Any]] = response.json()["parts"]
    return parts


def test_batch_card_renders_the_files_as_one_job_on_the_worker(
    new_page: NewPage, demo_on_servers: DemoServer, tmp_path: Path
) -> None:
    page = new_page(base_url=demo_on_servers.url)
    page.goto("/")
    expect(page.locator("#batch-needs-redis")).to_have_count(0)
    page.select_option("#batch-form select[name=files]", "4")
    page.click("#start-batch")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    task_id = page.locator("#job-id").inner_text()
    expect(page.locator("#cache-note")).to_contain_text("Batch started as one job")
    expect(page.locator(".jobtastic")).to_have_count(1)  # one bar for the whole batch
    expect_success(page, "#job-bar")
    document = wait_for_state(page, task_id, "SUCCESS")
    assert document["children"] == {
        "total": 5,  # four renders and the zip
        "pending": 0,
        "running": 0,
        "succeeded": 5,
        "failed": 0,
        "revoked": 0,
    }
    assert document["result"]["files"] == BATCH_OF_FOUR
    assert "PROGRESS" in [r["state"] for r in recorded(page, "job-bar")]
    link = page.locator("#batch-download")
    expect(link).to_contain_text("rendered-4-files.zip")
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "batch.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert archive.namelist() == BATCH_OF_FOUR
        assert "<h2>Page 3</h2>" in archive.read("welcome-letter.html").decode()

    # The same batch again: the rendered files come from the cache (the parts are the
    # first run's), only the zip runs.
    again = api_start(page, "batch", {"files": 4})
    assert again["task_id"] != task_id
    document = wait_for_state(page, again["task_id"], "SUCCESS", timeout=15)
    assert document["result"]["files"] == BATCH_OF_FOUR
    assert document["children"]["succeeded"] == 5
    first, second = parts_of(page, task_id), parts_of(page, again["task_id"])
    assert [p["task_id"] for p in second[:4]] == [p["task_id"] for p in first[:4]]
    assert second[4]["task_id"] != first[4]["task_id"]


def test_batch_card_says_chords_need_redis_in_the_no_servers_mode(new_page: NewPage) -> None:
    page = new_page()
    page.goto("/")
    expect(page.locator("#start-batch")).to_be_disabled()
    expect(page.locator("#batch-needs-redis")).to_contain_text("Redis result backend")
    response = page.request.post(
        "/api/start/batch", data={"files": 4}, headers={"X-Requested-With": "fetch"}
    )
    assert response.status == 400
    assert "Redis result backend" in response.json()["error"]
