"""Real-browser tests of a canvas's bar: "N of M parts done" and "1 failed" beside it.

Like the widget tests of ``tests/test_browser.py``: Debian's Chromium driven
by Playwright, gunicorn serving ``tests.widget_app``, and the session's real
Celery worker running groups of ``tests.canvas_tasks.RowsPart`` parts, started
with ``POST /start/group``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    JOB_TIMEOUT_MS,
    has_class,
    screenshot,
    wait_for_state,
)
from tests.web_server import GunicornServer

#: Installed in every page: each parts text a bar shows, with the bar's state class.
PARTS_LOG = """
(() => {
  window.__parts = [];
  const last = new Map();
  new MutationObserver(() => {
    for (const root of document.querySelectorAll(".jobtastic")) {
      const done = root.querySelector(".jobtastic-parts-done");
      const failed = root.querySelector(".jobtastic-parts-failed");
      if (!done) continue;
      const key = root.id || root.getAttribute("data-jobtastic-task-id");
      const state = Array.from(root.classList).find((c) => c.startsWith("jobtastic-state-"));
      const entry = {
        key, done: done.hidden ? null : done.textContent,
        failed: failed.hidden ? null : failed.textContent, state: state || null,
      };
      const value = JSON.stringify(entry);
      if (last.get(key) !== value) {
        last.set(key, value);
        window.__parts.push(entry);
      }
    }
  }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
})();
"""

PageAs = Callable[[str], Page]


@pytest.fixture(scope="module")
def widget_server(celery_worker: Any) -> Iterator[GunicornServer]:
    server = GunicornServer("widget-canvas").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_as(chromium: Browser, widget_server: GunicornServer) -> Iterator[PageAs]:
    """A page of the widget app in a fresh context, as the user ``X-User`` names."""
    contexts: list[BrowserContext] = []

    def open_page(user: str) -> Page:
        context = chromium.new_context(
            base_url=widget_server.url,
            viewport={"width": 1000, "height": 720},
            extra_http_headers={"X-User": user},
        )
        context.set_default_timeout(JOB_TIMEOUT_MS)
        context.add_init_script(PARTS_LOG)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def start_group(page: Page, parts: list[dict[str, Any]], **options: Any) -> str:
    """``POST /start/group``: a group of ``RowsPart`` parts, as the page's user."""
    response = page.request.post("/start/group", data={"parts": parts, **options})
    assert response.ok, f"start group: HTTP {response.status} {response.text()}"
    return str(response.json()["task_id"])


def parts_shown(page: Page, key: str) -> list[dict[str, Any]]:
    """Every parts text the bar ``key`` (its id or task id) showed, in order."""
    return [e for e in page.evaluate("window.__parts") if e["key"] == key]


def done_counts(shown: list[dict[str, Any]], total: int) -> list[int]:
    """The N of each "N of <total> parts done" shown."""
    pattern = re.compile(rf"^(\d+) of {total} parts done$")
    counts = []
    for entry in shown:
        if entry["done"] is None:
            continue
        match = pattern.match(entry["done"])
        assert match, entry
        counts.append(int(match.group(1)))
    return counts


def test_a_group_counts_its_parts_done_until_all_are(page_as: PageAs, token: str) -> None:
    page = page_as(f"petra-{token[:8]}")
    # Six parts of 2 s on the worker's two processes: about 6 s, in three rounds.
    parts = [{"token": token, "rows": 4, "part": n, "pause": 0.5} for n in range(6)]
    canvas = start_group(page, parts, track_state=True, description="Six parts")
    page.goto(f"/page/{canvas}")
    bar = page.locator("#job-bar")
    done, failed = bar.locator(".jobtastic-parts-done"), bar.locator(".jobtastic-parts-failed")
    expect(done).to_have_text(re.compile(r"^[0-5] of 6 parts done$"))
    expect(bar).to_have_class(has_class("jobtastic-state-progress"))
    screenshot(page, "canvas-progress")

    expect(bar).to_have_class(has_class("jobtastic-state-success"), timeout=JOB_TIMEOUT_MS)
    expect(done).to_have_text("6 of 6 parts done")
    expect(failed).to_be_hidden()
    expect(bar.locator(".jobtastic-text")).to_have_text("Done")
    expect(bar.locator(".jobtastic-bar")).to_have_attribute("aria-valuenow", "100")
    expect(bar.locator(".jobtastic-fill")).to_have_attribute("style", re.compile(r"width:\s*100%"))
    document = wait_for_state(page, canvas, "SUCCESS")
    assert document["children"]["succeeded"] == 6, document

    shown = parts_shown(page, "job-bar")
    counts = done_counts(shown, 6)
    assert counts == sorted(counts), shown  # never back
    assert counts[-1] == 6 and any(n < 6 for n in counts), shown
    running = [e["done"] for e in shown if e["state"] == "jobtastic-state-progress"]
    assert any(text != "6 of 6 parts done" for text in running if text), shown
    assert all(e["failed"] is None for e in shown), shown

    # The canvas in "my jobs": its bar says the same.
    item = page.locator(f'li.jobtastic-job[data-job-id="{canvas}"]')
    expect(item.locator(".jobtastic-job-title")).to_have_text("Six parts · Done")
    expect(item.locator(".jobtastic-parts-done")).to_have_text("6 of 6 parts done")
    expect(item.locator(".jobtastic-parts-failed")).to_be_hidden()
    screenshot(page, "canvas-done")


def test_a_group_whose_part_fails_shows_the_failure_and_one_failed(
    page_as: PageAs, token: str
) -> None:
    page = page_as(f"falk-{token[:8]}")
    parts = [{"token": token, "rows": 4, "part": n, "pause": 0.5} for n in range(4)]
    parts[1]["fail_at"] = 0
    canvas = start_group(page, parts, track_state=True, description="A failing group")
    page.goto(f"/page/{canvas}")
    bar = page.locator("#job-bar")
    expect(bar).to_have_class(has_class("jobtastic-state-failure"), timeout=JOB_TIMEOUT_MS)
    expect(bar.locator(".jobtastic-text")).to_have_text("part 1 could not read row 0")
    expect(bar.locator(".jobtastic-parts-failed")).to_have_text("1 failed")
    # The failed part is done; the parts the failure stopped are not
    done = bar.locator(".jobtastic-parts-done")
    expect(done).to_have_text(re.compile(r"^[1-3] of 4 parts done$"))
    document = wait_for_state(page, canvas, "FAILURE")
    assert document["children"]["failed"] == 1, document
    assert document["children"]["pending"] == document["children"]["running"] == 0, document
    assert document["error"]["message"] == "part 1 could not read row 0", document
    shown = parts_shown(page, "job-bar")
    assert done_counts(shown, 4) == sorted(done_counts(shown, 4)), shown
    screenshot(page, "canvas-failed")

    item = page.locator(f'li.jobtastic-job[data-job-id="{canvas}"]')
    expect(item.locator(".jobtastic-job-title")).to_have_text("A failing group · Failed")
    expect(item.locator(".jobtastic-parts-failed")).to_have_text("1 failed")


def test_a_group_that_tolerates_a_failed_part_ends_done_with_one_failed(
    page_as: PageAs, token: str
) -> None:
    page = page_as(f"tilo-{token[:8]}")
    parts = [{"token": token, "rows": 4, "part": n, "pause": 0.5} for n in range(4)]
    parts[0]["fail_at"] = 0
    canvas = start_group(page, parts, tolerate_failures=True)
    page.goto(f"/page/{canvas}?list=0")
    bar = page.locator("#job-bar")
    failed = bar.locator(".jobtastic-parts-failed")
    expect(failed).to_have_text("1 failed")  # while the other parts still run
    expect(bar).to_have_class(has_class("jobtastic-state-success"), timeout=JOB_TIMEOUT_MS)
    expect(bar.locator(".jobtastic-parts-done")).to_have_text("4 of 4 parts done")
    expect(failed).to_have_text("1 failed")
    expect(bar.locator(".jobtastic-bar")).to_have_attribute("aria-valuenow", "100")
    assert wait_for_state(page, canvas, "SUCCESS")["children"]["failed"] == 1
    shown = parts_shown(page, "job-bar")
    assert any(e["failed"] == "1 failed" and e["state"] != "jobtastic-state-success" for e in shown)
