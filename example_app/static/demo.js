/* The demo's own script: shows job results and runs the double-click demo.
 *
 * Progress bars are jobtastic.js's job (it tracks every [data-jobtastic-task-id]
 * on load); this file only listens to the jobtastic:success events they fire.
 * Text from the server is only ever set with textContent.
 */
(function () {
  "use strict";

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = String(text);
    return node;
  }

  function short(id) {
    return String(id || "").slice(0, 8);
  }

  // ---- results ---------------------------------------------------------------------

  function showQuotients(box, result) {
    box.append(el("h3", "", result.length + " quotients"));
    const list = box.appendChild(el("ul", "quotients"));
    for (const q of result.slice(0, 120)) list.append(el("li", "", q));
    if (result.length > 120) box.append(el("p", "", "… and " + (result.length - 120) + " more."));
  }

  function parseCsv(text, maxRows) {
    // The report's CSV has no quoted commas, so a plain split is enough here.
    return text.split("\n").filter(Boolean).slice(0, maxRows + 1).map((line) => line.split(","));
  }

  function showReport(box, result) {
    box.append(el("h3", "", result.rows + " rows, revenue " + result.revenue));
    const blob = new Blob([result.csv], { type: "text/csv" });
    const link = el("a", "download", "Download " + result.filename);
    link.id = "report-download";
    link.href = URL.createObjectURL(blob);
    link.download = result.filename;
    box.append(link);
    const rows = parseCsv(result.csv, 5);
    const scroll = box.appendChild(el("div", "table-scroll"));
    const table = scroll.appendChild(el("table"));
    const head = table.appendChild(el("thead")).appendChild(el("tr"));
    for (const cell of rows[0] || []) head.append(el("th", "", cell));
    const body = table.appendChild(el("tbody"));
    for (const row of rows.slice(1)) {
      const tr = body.appendChild(el("tr"));
      for (const cell of row) tr.append(el("td", "", cell));
    }
    box.append(el("p", "", "The first five rows; the file has them all."));
  }

  function showSteps(box, result) {
    box.append(el("h3", "", result.passed + " of " + result.checked + " orders passed"));
    if (result.failed && result.failed.length) {
      box.append(el("p", "failed-items", "Failed: " + result.failed.join(", ")));
    }
  }

  function zipBlob(base64) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: "application/zip" });
  }

  function showBatch(box, result) {
    box.append(el("h3", "", result.files.length + " files, " + result.pages + " pages, zipped"));
    const link = el("a", "download", "Download " + result.filename + " (" + result.bytes + " bytes)");
    link.id = "batch-download";
    link.href = URL.createObjectURL(zipBlob(result.zip_base64));
    link.download = result.filename;
    box.append(link);
    const list = box.appendChild(el("ul", "batch-files"));
    for (const name of result.files) list.append(el("li", "", name));
  }

  function showResult(box, result) {
    box.textContent = "";
    if (Array.isArray(result)) showQuotients(box, result);
    else if (result && typeof result.csv === "string") showReport(box, result);
    else if (result && typeof result.zip_base64 === "string") showBatch(box, result);
    else if (result && typeof result.checked === "number") showSteps(box, result);
    else box.append(el("pre", "", JSON.stringify(result, null, 2)));
  }

  function boxFor(bar) {
    const selector = bar && bar.getAttribute("data-result");
    return selector ? document.querySelector(selector) : null;
  }

  document.addEventListener("jobtastic:success", (event) => {
    const box = boxFor(event.target);
    if (box) showResult(box, event.detail.data);
  });

  // A bar that finished before this listener was attached.
  function catchUp() {
    if (!window.Jobtastic) return;
    for (const bar of document.querySelectorAll("[data-result]")) {
      const tracker = window.Jobtastic.get(bar);
      const box = boxFor(bar);
      if (tracker && tracker.state === "SUCCESS" && box && !box.childElementCount) {
        showResult(box, tracker.document.result);
      }
    }
  }

  // ---- "my jobs": a finished job watched on this page counts as seen --------------

  document.addEventListener("jobtastic:finish", (event) => {
    const bar = event.target;
    const url = bar.getAttribute("data-seen-url");
    if (!url || bar.hasAttribute("data-seen")) return;
    bar.setAttribute("data-seen", "sending");
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", Accept: "application/json" },
    })
      .then((response) => bar.setAttribute("data-seen", response.ok ? "true" : "false"))
      .catch(() => bar.setAttribute("data-seen", "false"));
  });

  // ---- double click: two identical starts at once ---------------------------------

  function randomNumbers(count, low, high) {
    const out = [];
    for (let i = 0; i < count; i++) out.push(low + Math.floor(Math.random() * (high - low)));
    return out.join(",");
  }

  async function start(url, payload) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "X-Requested-With": "fetch",
        "Content-Type": "application/json",
        Accept: "application/json",
      },
      body: JSON.stringify(payload),
    });
    const body = await response.json().catch(() => null);
    if (!response.ok || !body) throw new Error((body && body.error) || "HTTP " + response.status);
    return body;
  }

  function describe(answer) {
    if (answer.from_cache) return "answered from cache";
    if (answer.joined) return "joined the running job";
    return "sent a new job";
  }

  function trackBar(bar, taskId) {
    const options = {
      taskId: taskId,
      cancelButton: true,
      onSuccess: (result) => {
        const box = bar.parentNode.querySelector(".result");
        if (box) showResult(box, result);
      },
    };
    const $ = window.jQuery;
    if ($ && $.fn && $.fn.jobtastic) return $(bar).jobtastic(options).data("jobtastic");
    return window.Jobtastic.track(bar, options);
  }

  async function doubleClick(button) {
    const note = document.getElementById("herd-note");
    const target = document.getElementById("double-click-result");
    const count = 40;
    const payload = {
      numerators: randomNumbers(count, 1, 1000),
      denominators: randomNumbers(count, 1, 10),
    };
    button.disabled = true;
    note.hidden = false;
    note.className = "note";
    note.textContent = "Sending two identical requests…";
    try {
      const answers = await Promise.all([start(button.dataset.url, payload),
        start(button.dataset.url, payload)]);
      const [a, b] = answers;
      const same = a.task_id === b.task_id;
      note.className = "note " + (same ? "same" : "different");
      note.dataset.same = String(same);
      note.dataset.taskIds = a.task_id + " " + b.task_id;
      note.dataset.outcomes = a.outcome + " " + b.outcome;
      note.textContent = same
        ? "Both requests got job " + short(a.task_id) + "…: one " + describe(a) +
          " (" + a.elapsed_ms + " ms), the other " + describe(b) + " (" + b.elapsed_ms + " ms)."
        : "The requests got different jobs: " + short(a.task_id) + "… and " +
          short(b.task_id) + "…";
      target.textContent = "";
      const bar = target.appendChild(el("div", "jobtastic"));
      bar.id = "double-click-bar";
      target.appendChild(el("div", "result"));
      trackBar(bar, a.task_id);
    } catch (error) {
      note.className = "note different";
      note.textContent = "Could not start the job: " + error.message;
    } finally {
      button.disabled = false;
    }
  }

  function init() {
    const button = document.getElementById("double-click");
    if (button) button.addEventListener("click", () => doubleClick(button));
    catchUp();
    setTimeout(catchUp, 0);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
