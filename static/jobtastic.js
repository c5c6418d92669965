/*! jobtastic.js: live progress bars for flask-jobtastic jobs. MIT licence.
 *
 * No build step, no dependency, one global: `Jobtastic`.
 *
 * Markup (what the `progress_bar` Jinja macro renders) is tracked on DOMContentLoaded:
 *   <div class="jobtastic" data-jobtastic-task-id="ID"
 *        data-jobtastic-url="/jobtastic/status/ID" data-jobtastic-cancel-button="true"></div>
 * From a script:
 *   Jobtastic.configure({pollInterval: 2000, messages: {success: "Finished"}});
 *   const t = Jobtastic.track("#report", {taskId: id, onSuccess: (result) => show(result)});
 *   t.taskId; t.state; t.document;   // the last status document the server sent
 *   t.cancel(); t.stop();
 *   Jobtastic.scan(container);       // track [data-jobtastic-task-id] in HTML added later
 *   Jobtastic.get(element);          // the element's tracker, or null
 *   $("#report").jobtastic({taskId: id}).data("jobtastic");   // when jQuery is there
 *
 * Transports: "events" (EventSource on eventsUrl), "polling" (fetch on statusUrl, one
 * request at a time, backoff on trouble) and "auto" (events when the browser has
 * EventSource, polling once the stream fails or is refused, and beyond maxStreams open
 * streams on the page). Each callback also fires as a bubbling DOM event on the element
 * (jobtastic:update, :progress, :success, :failure, :error, :finish) with
 * `event.detail = {tracker, document, data}`, data being the callback's first argument
 * (the result for :success). Client-side final errors (an HTTP 400, say) get the state
 * "ERROR". Strings from the server are only ever set as textContent.
 *
 * Cancel: "Cancelling…" (button disabled) from the click, or while a document carries
 * `cancel_pending: true`, until a final document; a failed POST says so and re-enables it.
 */
(function (window, document) {
  "use strict";

  const FINAL = ["SUCCESS", "FAILURE", "REVOKED", "UNKNOWN", "ERROR"];
  const STEP_STATES = ["pending", "running", "done", "failed"];
  const trackers = new WeakMap();
  const streams = { open: 0, refusedAt: -Infinity }; // event streams of this page
  const STREAM_PAUSE = 5000; // ms of polling for new bars after a stream was refused

  const settings = {
    urlPrefix: "/jobtastic",
    taskId: null,
    statusUrl: null, // default: urlPrefix + "/status/" + taskId
    eventsUrl: null, // default: statusUrl with "/status/" changed to "/events/"
    cancelUrl: null, // default: statusUrl with "/status/" changed to "/cancel/"
    transport: "auto", // "auto" | "events" | "polling"
    pollInterval: 1000, // ms between two polls
    maxPollInterval: 10000, // ms, the ceiling of the backoff
    maxConsecutiveErrors: 3, // failed polls before the error state and onError
    unknownRetries: 3, // a job just sent may not be recorded yet
    maxStreams: 4, // open event streams per page; more bars poll (a browser has 6 connections)
    cancelButton: false,
    theme: "plain", // "plain" | "bootstrap" (Bootstrap 5 classes)
    autoInit: true, // scan the page on DOMContentLoaded
    formatDuration: formatDuration, // (seconds, messages) -> "1 min 5 s"
    // Callbacks; `this` and the last argument are the tracker.
    onUpdate: null, // (doc)
    onProgress: null, // (doc)
    onSuccess: null, // (result, doc)
    onFailure: null, // (error, doc)
    onError: null, // (errorInfo): {type: "network"|"http", status?, message, attempts?, final?}
    onFinish: null, // (doc)
    messages: {
      label: "Job progress", // the bar's aria-label
      pending: "Waiting for a worker…", started: "Waiting for a worker…",
      estimating: "Starting… estimating time remaining",
      progress: "{percent}% · about {remaining} left", almostDone: "{percent}% · almost done",
      oneStepLeft: "{percent}% · 1 step to go", stepsLeft: "{percent}% · {n} steps to go",
      success: "Done", failure: "The job failed", errorId: "Error reference: {id}",
      retry: "Retrying…", revoked: "Cancelled", unknown: "This job could not be found",
      networkError: "Can't reach the server, retrying…",
      requestError: "The job's status could not be loaded",
      cancel: "Cancel", cancelling: "Cancelling…", cancelFailed: "Could not cancel the job",
      jobsUnavailable: "Your jobs could not be loaded, retrying…",
      counts: "{success} done, {failure} failed, {pending} to go",
      stepPending: "Pending", stepRunning: "Running", stepDone: "Done", stepFailed: "Failed",
      hours: "{n} h", minutes: "{n} min", seconds: "{n} s",
    },
  };

  // ---- helpers -------------------------------------------------------------------------

  function fmt(template, vars) {
    return String(template).replace(/\{(\w+)\}/g, (all, k) => (k in vars ? vars[k] : all));
  }

  /** "2 h 5 min", "1 min 5 s", "42 s"; whole minutes from 10 minutes on. */
  function formatDuration(seconds, m) {
    m = m || settings.messages;
    let s = Math.max(0, Math.round(Number(seconds) || 0));
    if (s >= 600) s = Math.round(s / 60) * 60;
    const hours = Math.floor(s / 3600), min = Math.floor((s % 3600) / 60), sec = s % 60;
    const parts = [];
    if (hours) parts.push(fmt(m.hours, { n: hours }));
    if (min) parts.push(fmt(m.minutes, { n: min }));
    if (sec || !parts.length) parts.push(fmt(m.seconds, { n: sec }));
    return parts.join(" ");
  }

  /** Declared top-level steps still pending or running. */
  function stepsLeft(steps) {
    if (!Array.isArray(steps)) return 0;
    const waiting = (step) => !!step && typeof step === "object" &&
      !(parseInt(step.depth, 10) > 0) && (step.state === "pending" || step.state === "running");
    return steps.filter(waiting).length;
  }

  function h(tag, cls, attrs) {
    const el = document.createElement(tag);
    el.className = cls;
    for (const k in attrs || {}) el.setAttribute(k, attrs[k]);
    return el;
  }

  function setText(el, text) {
    text = text == null ? "" : String(text);
    if (el.textContent !== text) el.textContent = text; // no needless aria-live chatter
  }

  const show = (el, visible) => { el.hidden = !visible; };

  function errorText(err) {
    if (!err) return "";
    return typeof err === "string" ? err : String(err.message || err.type || "");
  }

  function merge(base, extra) {
    const out = Object.assign({}, base, extra);
    out.messages = Object.assign({}, base.messages, extra && extra.messages);
    return out;
  }

  /** ".../status/<id>[?query]" -> ".../<kind>/<id>[?query]", or null. */
  function deriveUrl(statusUrl, kind) {
    const m = /\/status\/([^/?#]+)([?#].*)?$/.exec(statusUrl);
    return m ? statusUrl.slice(0, m.index) + "/" + kind + "/" + m[1] + (m[2] || "") : null;
  }

  const DATA_OPTIONS = {
    jobtasticTaskId: "taskId", jobtasticUrl: "statusUrl", jobtasticEventsUrl: "eventsUrl",
    jobtasticCancelUrl: "cancelUrl", jobtasticTransport: "transport", jobtasticTheme: "theme",
  };

  function readData(el) {
    const d = el.dataset, o = {};
    for (const k in DATA_OPTIONS) if (d[k]) o[DATA_OPTIONS[k]] = d[k];
    const poll = d.jobtasticPollInterval;
    if (poll && !isNaN(+poll)) o.pollInterval = +poll;
    const cancel = d.jobtasticCancelButton;
    if (cancel != null) o.cancelButton = !/^(false|0|no|off)$/i.test(cancel);
    return o;
  }

  // ---- the tracker -----------------------------------------------------------------------

  class Tracker {
    constructor(element, options) {
      const o = merge(merge(settings, readData(element)), options);
      if (o.taskId == null || o.taskId === "") throw new Error("Jobtastic: no taskId given");
      const prefix = String(o.urlPrefix).replace(/\/+$/, ""), id = encodeURIComponent(o.taskId);
      o.statusUrl = o.statusUrl || prefix + "/status/" + id;
      o.eventsUrl = o.eventsUrl || deriveUrl(o.statusUrl, "events") || prefix + "/events/" + id;
      o.cancelUrl = o.cancelUrl || deriveUrl(o.statusUrl, "cancel") || prefix + "/cancel/" + id;
      o.pollInterval = Math.max(50, Number(o.pollInterval) || settings.pollInterval);
      o.maxPollInterval = Math.max(o.pollInterval, Number(o.maxPollInterval) || 0);
      Object.assign(this, { element, options: o, taskId: String(o.taskId), state: "PENDING" });
      this.document = null; // the last status document
      this.transport = null; // "events" | "polling" while listening
      this.connectionError = null; // errorInfo while the server can't be reached
      this.finished = false; // a final state was shown
      this._errors = 0;
      this._delay = o.pollInterval;
      this._unknownSeen = 0;
      this._cancelState = null; // null | "sending" | "sent"
      this._notice = "";
      this._timer = this._es = this._abort = null;
      this._stepEls = new Map();
      this._logKey = "";
      this._build();
      this._render();
      if (o.transport !== "polling" && typeof window.EventSource === "function") this._listen();
      else this._startPolling(0);
    }

    /** Stop listening; the element keeps showing the last state. */
    stop() {
      this._close();
      if (this._abort) this._abort.abort();
      this.transport = null;
    }

    /** Whether a cancel waits for the worker: asked here, or said so by the server. */
    get cancelPending() {
      if (this.finished) return false;
      return !!this._cancelState || !!(this.document && this.document.cancel_pending === true);
    }

    /**
     * POST to cancelUrl. Resolves true once the server took the cancel: the bar says
     * "Cancelling…" until a document confirms it (REVOKED) or shows how the job ended.
     */
    async cancel() {
      if (this.finished || this.cancelPending) return false;
      this._cancelState = "sending";
      this._notice = "";
      this._render();
      let res = null, body = null;
      try {
        res = await fetch(this.options.cancelUrl, {
          method: "POST", credentials: "same-origin",
          headers: { "X-Requested-With": "jobtastic", Accept: "application/json" },
        });
        body = await res.json().catch(() => null);
      } catch (e) { /* network error: res stays null */ }
      const ok = !!res && res.ok;
      this._cancelState = ok ? "sent" : null;
      this._notice = ok ? "" : this.options.messages.cancelFailed;
      if (ok && body && typeof body.state === "string" && body.task_id === this.taskId) {
        this._handle(body); // the server answered with the job's status document
      } else if (ok && this._timer) this._schedule(0); // ask for the new state right away
      if (!this.finished) this._render();
      return ok;
    }

    // -- transports --

    _listen() {
      let es, delivered = false, errors = 0;
      const refusedLately = performance.now() - streams.refusedAt < STREAM_PAUSE;
      if (streams.open >= this.options.maxStreams || refusedLately) return this._startPolling(0);
      try {
        es = new window.EventSource(this.options.eventsUrl);
      } catch (e) {
        return this._startPolling(0);
      }
      this._es = es;
      streams.open += 1;
      this.transport = "events";
      const onMessage = (ev) => {
        if (this._es !== es) return;
        delivered = true;
        errors = 0;
        let doc = null;
        try { doc = JSON.parse(ev.data); } catch (e) { return; }
        this._recovered();
        this._handle(doc);
      };
      es.addEventListener("status", onMessage);
      es.addEventListener("message", onMessage);
      // The server lost its result backend: polling shows the outage and recovers.
      es.addEventListener("unavailable", () => {
        if (this._es === es) this._startPolling(0);
      });
      es.addEventListener("error", () => {
        if (this._es !== es) return;
        // A stream refused (429: too many open) or broken before its first document
        // is not retried: this bar polls, and so do bars added in the next seconds.
        // After a stream that worked the browser may reconnect once.
        errors += 1;
        if (!delivered) streams.refusedAt = performance.now();
        if (!delivered || errors >= 2 || es.readyState === 2) this._startPolling(0);
      });
    }

    _startPolling(delay) {
      this._closeStream();
      this.transport = "polling";
      this._schedule(delay);
    }

    _schedule(delay) {
      clearTimeout(this._timer);
      this._timer = setTimeout(() => this._poll(), delay);
    }

    async _poll() {
      this._timer = null;
      if (this.finished || this.transport !== "polling") return;
      const ctl = typeof AbortController === "function" ? new AbortController() : null;
      this._abort = ctl;
      let res, body = null;
      try {
        res = await fetch(this.options.statusUrl, {
          credentials: "same-origin", cache: "no-store",
          headers: { Accept: "application/json" }, signal: ctl ? ctl.signal : undefined,
        });
        body = await res.json().catch(() => null);
      } catch (e) {
        res = null;
      }
      if (this._abort === ctl) this._abort = null;
      if (this.transport !== "polling") return; // stopped meanwhile
      if (!res) return this._trouble({ type: "network", message: "no response" });
      const status = res.status;
      const isDoc = !!body && typeof body === "object" && typeof body.state === "string";
      if (isDoc && (res.ok || (status === 404 && body.state === "UNKNOWN"))) {
        this._recovered();
        this._handle(body);
      } else if (res.ok || status >= 500 || status === 408 || status === 429) {
        return this._trouble({ type: "http", status, message: res.statusText || "" });
      } else {
        return this._fatal(status, body);
      }
      if (this.transport === "polling" && !this._timer) this._schedule(this.options.pollInterval);
    }

    /** Network error or 5xx: back off; after N in a row show it, but never give up. */
    _trouble(info) {
      const o = this.options;
      this._errors += 1;
      this._delay = Math.min(this._delay * 2, o.maxPollInterval);
      if (this._errors >= o.maxConsecutiveErrors) {
        this._delay = o.maxPollInterval;
        if (!this.connectionError) {
          this.connectionError = Object.assign({ attempts: this._errors }, info);
          this._render();
          this._emit("error", [this.connectionError]);
        }
      }
      this._schedule(this._delay);
    }

    _recovered() {
      this._errors = 0;
      this._delay = this.options.pollInterval;
      if (this.connectionError) {
        this.connectionError = null;
        this._render();
      }
    }

    /** A 4xx other than "job unknown": retrying would not help. */
    _fatal(status, body) {
      const message = errorText(body && body.error) || this.options.messages.requestError;
      this._emit("error", [{ type: "http", status, message, final: true }]);
      this._handle({
        task_id: this.taskId, state: "ERROR", ready: true,
        error: { type: "HTTP " + status, message },
      });
    }

    _closeStream() {
      if (!this._es) return;
      this._es.close();
      this._es = null;
      streams.open -= 1;
    }

    _close() {
      clearTimeout(this._timer);
      this._closeStream();
      this._timer = null;
    }

    // -- status documents --

    _handle(doc) {
      if (this.finished || !doc || typeof doc !== "object" || typeof doc.state !== "string") return;
      if (doc.state === "UNKNOWN" && this._unknownSeen < this.options.unknownRetries) {
        this._unknownSeen += 1; // maybe not recorded yet: ask again before saying so
        if (this.transport === "events") this._startPolling(this.options.pollInterval);
        return;
      }
      this.document = doc;
      this.state = doc.state;
      const final = doc.ready === true || FINAL.indexOf(doc.state) >= 0;
      if (final) {
        this.finished = true;
        this.stop();
      }
      this._render();
      this._emit("update", [doc]);
      if (doc.state === "PROGRESS") this._emit("progress", [doc]);
      if (!final) return;
      if (doc.state === "SUCCESS") this._emit("success", [doc.result, doc]);
      if (doc.state === "FAILURE") this._emit("failure", [doc.error || null, doc]);
      this._emit("finish", [doc]);
    }

    _emit(type, args) {
      const cb = this.options["on" + type.charAt(0).toUpperCase() + type.slice(1)];
      if (typeof cb === "function") {
        try { cb.apply(this, args.concat([this])); } catch (e) { console.error(e); }
      }
      const detail = { tracker: this, document: this.document, data: args[0] };
      this.element.dispatchEvent(new CustomEvent("jobtastic:" + type, { bubbles: true, detail }));
    }

    // -- rendering: build the children once, then only update them --

    _build() {
      const root = this.element, o = this.options, bs = o.theme === "bootstrap";
      const parts = ["placeholder", "bar", "footer", "error-id", "details"];
      for (const child of Array.from(root.children)) {
        if (parts.some((p) => child.classList.contains("jobtastic-" + p))) child.remove();
      }
      root.classList.remove("jobtastic-theme-plain", "jobtastic-theme-bootstrap");
      root.classList.add("jobtastic", "jobtastic-theme-" + (bs ? "bootstrap" : "plain"));
      const ui = (this.ui = {});
      ui.bar = h("div", "jobtastic-bar" + (bs ? " progress" : ""), {
        role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
        "aria-label": o.messages.label,
      });
      ui.fill = ui.bar.appendChild(h("div", "jobtastic-fill" + (bs ? " progress-bar" : "")));
      ui.footer = h("div", "jobtastic-footer");
      ui.text = h("div", "jobtastic-text", { "aria-live": "polite", "aria-atomic": "true" });
      ui.notice = h("span", "jobtastic-notice", { role: "alert" });
      const btn = bs ? " btn btn-sm btn-outline-secondary" : "";
      ui.cancel = h("button", "jobtastic-cancel" + btn, { type: "button" });
      ui.cancel.addEventListener("click", () => this.cancel());
      ui.footer.append(ui.text, ui.notice, ui.cancel);
      ui.errorId = h("div", "jobtastic-error-id");
      ui.details = h("div", "jobtastic-details");
      ui.summary = h("div", "jobtastic-steps-summary");
      ui.counts = h("div", "jobtastic-counts");
      ui.steps = h("ol", "jobtastic-steps");
      ui.log = h("ol", "jobtastic-log");
      ui.details.append(ui.summary, ui.counts, ui.steps, ui.log);
      root.append(ui.bar, ui.footer, ui.errorId, ui.details);
    }

    _render() {
      const o = this.options, m = o.messages, ui = this.ui, root = this.element;
      const doc = this.document || {}, state = this.state;
      const pct = Math.min(100, Math.max(0, Number(doc.progress_percent) || 0));
      const percent = Math.floor(pct);
      let look = "busy", text = m.pending; // look: busy | value | success | danger | muted
      if (state === "PROGRESS") {
        const eta = doc.time_remaining == null ? -1 : Number(doc.time_remaining);
        look = "value";
        const left = stepsLeft(doc.steps); // progress counts items, not the steps after them
        if (eta < 0 || pct <= 0) text = m.estimating;
        else if (eta < 1 && left) {
          text = fmt(left === 1 ? m.oneStepLeft : m.stepsLeft, { percent, n: left });
        }
        else if (eta < 1) text = fmt(m.almostDone, { percent });
        else text = fmt(m.progress, { percent, remaining: o.formatDuration(eta, m) });
      } else if (state === "SUCCESS") [look, text] = ["success", m.success];
      else if (state === "FAILURE" || state === "ERROR") {
        [look, text] = ["danger", errorText(doc.error) || m.failure];
      } else if (state === "REVOKED") [look, text] = ["muted", m.revoked];
      else if (state === "UNKNOWN") [look, text] = ["muted", m.unknown];
      else if (state === "RETRY") text = m.retry;
      else if (state === "STARTED") text = m.started;
      const cancelling = this.cancelPending;
      if (cancelling) text = m.cancelling;
      if (this.connectionError && !this.finished) text = m.networkError;

      for (const c of Array.from(root.classList)) {
        if (c.indexOf("jobtastic-state-") === 0) root.classList.remove(c);
      }
      root.classList.add("jobtastic-state-" + state.toLowerCase().replace(/[^a-z0-9_-]/g, ""));
      root.classList.toggle("jobtastic-indeterminate", look === "busy");
      root.classList.toggle("jobtastic-finished", this.finished);
      root.classList.toggle("jobtastic-connection-error", !!this.connectionError);
      root.classList.toggle("jobtastic-cancelling", cancelling);

      const bar = ui.bar, bs = o.theme === "bootstrap";
      if (look === "busy") {
        bar.removeAttribute("aria-valuenow");
        bar.setAttribute("aria-busy", "true");
        ui.fill.style.width = bs ? "100%" : ""; // the plain theme's CSS animates it
      } else {
        bar.removeAttribute("aria-busy");
        if (look === "value" || look === "success") {
          bar.setAttribute("aria-valuenow", String(look === "success" ? 100 : percent));
        } else bar.removeAttribute("aria-valuenow");
        ui.fill.style.width = (look === "value" ? pct : 100) + "%";
      }
      bar.setAttribute("aria-valuetext", text);
      if (bs) {
        const color = { success: " bg-success", danger: " bg-danger", muted: " bg-secondary" };
        ui.fill.className = "jobtastic-fill progress-bar" + (color[look] || "") +
          (look === "busy" ? " progress-bar-striped progress-bar-animated" : "");
      }

      setText(ui.text, text);
      setText(ui.notice, this._notice);
      show(ui.notice, !!this._notice && !this.finished);
      // The error id once: the generic message already quotes it.
      const errId = state === "FAILURE" && doc.error && doc.error.error_id;
      const quoted = !!errId && text.indexOf(String(errId)) >= 0;
      setText(ui.errorId, errId && !quoted ? fmt(m.errorId, { id: errId }) : "");
      show(ui.errorId, !!errId && !quoted);
      show(ui.cancel, !!o.cancelButton && !this.finished);
      ui.cancel.disabled = cancelling;
      setText(ui.cancel, m.cancel);

      // Optional richer fields: steps, their summary, counts and a message log.
      const steps = Array.isArray(doc.steps) ? doc.steps : [];
      const log = Array.isArray(doc.messages) ? doc.messages : [];
      const c = doc.counts && typeof doc.counts === "object" ? doc.counts : null;
      setText(ui.summary, typeof doc.steps_summary === "string" ? doc.steps_summary : "");
      setText(ui.counts, c && fmt(m.counts, {
        amount: c.amount || 0, success: c.success || 0,
        failure: c.failure || 0, pending: c.pending || 0,
      }));
      show(ui.summary, !!ui.summary.textContent);
      show(ui.counts, !!c);
      this._renderSteps(steps);
      this._renderLog(log);
      show(ui.details, !!(steps.length || log.length || c || ui.summary.textContent));
    }

    _renderSteps(steps) {
      const list = this.ui.steps, m = this.options.messages, next = new Map();
      steps.forEach((step, i) => {
        if (!step || typeof step !== "object") return;
        let key = String(step.key != null ? step.key : "#" + i);
        while (next.has(key)) key += "~"; // duplicate keys still get a row each
        let li = this._stepEls.get(key);
        if (!li) {
          li = h("li", "jobtastic-step");
          li.append(h("span", "jobtastic-step-marker", { "aria-hidden": "true" }),
            h("span", "jobtastic-step-state jobtastic-sr-only"), h("span", "jobtastic-step-name"),
            h("span", "jobtastic-step-duration"), h("span", "jobtastic-step-detail"),
            h("span", "jobtastic-step-error"));
        }
        const state = STEP_STATES.indexOf(step.state) >= 0 ? step.state : "pending";
        li.className = "jobtastic-step jobtastic-step-" + state;
        li.setAttribute("data-step-key", key);
        const depth = Math.max(0, Math.min(8, parseInt(step.depth, 10) || 0));
        li.style.setProperty("--jobtastic-depth", String(depth));
        const [, stateEl, name, duration, detail, error] = li.children;
        setText(stateEl, m["step" + state.charAt(0).toUpperCase() + state.slice(1)] + ": ");
        setText(name, step.name != null ? step.name : key);
        const d = step.duration == null ? NaN : Number(step.duration);
        setText(duration, isNaN(d) ? "" : d < 10
          ? fmt(m.seconds, { n: d.toFixed(1) }) : this.options.formatDuration(d, m));
        setText(detail, step.detail || "");
        const err = step.error ? [step.error.type, errorText(step.error)] : [];
        setText(error, err.filter(Boolean).join(": "));
        for (const el of [duration, detail, error]) show(el, !!el.textContent);
        const here = list.children[next.size] || null;
        if (here !== li) list.insertBefore(li, here);
        next.set(key, li);
      });
      const kept = new Set(next.values());
      this._stepEls.forEach((li) => kept.has(li) || li.remove());
      this._stepEls = next;
      show(list, next.size > 0);
    }

    _renderLog(entries) {
      const list = this.ui.log, last = entries[entries.length - 1] || {};
      const key = entries.length + "|" + last.time + "|" + last.message;
      if (key === this._logKey) return;
      this._logKey = key;
      const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
      list.textContent = "";
      for (const entry of entries) {
        if (!entry) continue;
        const li = list.appendChild(h("li", "jobtastic-log-entry"));
        const when = new Date(entry.time);
        if (entry.time && !isNaN(when)) {
          const t = li.appendChild(h("time", "jobtastic-log-time", { datetime: entry.time }));
          t.textContent = when.toLocaleTimeString();
        }
        const message = typeof entry === "string" ? entry : entry.message;
        li.appendChild(h("span", "jobtastic-log-message")).textContent = message || "";
      }
      show(list, entries.length > 0);
      if (atBottom) list.scrollTop = list.scrollHeight;
    }
  }

  // ---- public API ------------------------------------------------------------------------

  function resolve(target) {
    const el = typeof target === "string" ? document.querySelector(target) : target;
    if (!el || el.nodeType !== 1) throw new Error("Jobtastic: no element for " + target);
    return el;
  }

  /** Track one element; tracking it again stops and replaces the previous tracker. */
  function track(target, options) {
    registerJQuery();
    const el = resolve(target), previous = trackers.get(el);
    if (previous) previous.stop();
    const tracker = new Tracker(el, options);
    trackers.set(el, tracker);
    if (window.jQuery && window.jQuery.data) window.jQuery.data(el, "jobtastic", tracker);
    return tracker;
  }

  /** Track every untracked [data-jobtastic-task-id] in root (element or selector). */
  function scan(root) {
    registerJQuery();
    root = (typeof root === "string" ? document.querySelector(root) : root) || document;
    const found = Array.from(root.querySelectorAll("[data-jobtastic-task-id]"));
    if (root.nodeType === 1 && root.hasAttribute("data-jobtastic-task-id")) found.unshift(root);
    const started = [];
    for (const el of found) {
      if (trackers.has(el)) continue;
      try { started.push(track(el)); } catch (e) { console.error(e); }
    }
    return started;
  }

  /** Change the defaults of later trackers; `messages` is merged, not replaced. */
  function configure(options) {
    const messages = settings.messages;
    Object.assign(settings, options);
    settings.messages = Object.assign(messages, options && options.messages);
    return Jobtastic;
  }

  function registerJQuery($) {
    $ = $ || window.jQuery;
    if (!$ || !$.fn || $.fn.jobtastic) return;
    $.fn.jobtastic = function (options) {
      return this.each(function () { track(this, options); }); // sets .data("jobtastic")
    };
  }

  // ---- the "my jobs" list (templates/jobtastic/jobs.html) ------------------------------

  const JOB_LABELS = {
    queued: "Queued", running: "Running", succeeded: "Done", failed: "Failed",
    revoked: "Cancelled", retrying: "Retrying", cancelling: "Cancelling…",
  };
  const JOB_FINISHED = ["succeeded", "failed", "revoked"];
  /** A bar's document state as a job-list state. */
  const DOC_JOB_STATES = {
    PENDING: "queued", STARTED: "running", PROGRESS: "running", RETRY: "retrying",
    SUCCESS: "succeeded", FAILURE: "failed", REVOKED: "revoked",
  };

  /** The state a list item shows: its bar's, which is live, unless the record knows more. */
  function jobState(record, tracker) {
    const live = tracker && (tracker.cancelPending ? "cancelling"
      : tracker.document && DOC_JOB_STATES[tracker.document.state]);
    const known = record && record.state;
    if (live && (JOB_FINISHED.indexOf(live) >= 0 || JOB_FINISHED.indexOf(known) < 0)) return live;
    return known || live || "queued";
  }

  /**
   * Keep a `.jobtastic-jobs` list in step with GET <prefix>/jobs; one bar per job. Each
   * title follows its bar live. While the list cannot be loaded (a 503 while Redis is
   * down, the network) it says so and retries with backoff, honouring Retry-After.
   * Watching a section again replaces the previous watcher (options: interval, maxInterval).
   */
  function watchJobs(section, options) {
    section = resolve(section);
    if (section.__jobtasticJobs) {
      if (!options) return section.__jobtasticJobs;
      section.__jobtasticJobs.stop();
    }
    const opts = Object.assign({ interval: 3000, maxInterval: 30000 }, options);
    const url = section.getAttribute("data-jobtastic-jobs-url") || settings.urlPrefix + "/jobs";
    const seenTemplate = section.getAttribute("data-jobtastic-seen-url") || "";
    const list = section.querySelector(".jobtastic-jobs-list");
    const empty = section.querySelector(".jobtastic-jobs-empty");
    let note = section.querySelector(".jobtastic-jobs-status");
    if (!note) {
      note = h("p", "jobtastic-jobs-status", { role: "status" });
      note.hidden = true;
      list.after(note);
    }
    const records = new Map(); // id -> the last record the server sent
    const dismissed = new Set(); // seen jobs stay listed a while (seen_ttl), not on this page
    let timer = null, stopped = false, delay = opts.interval, failures = 0;

    function itemFor(job) {
      let item = list.querySelector('[data-job-id="' + CSS.escape(job.id) + '"]');
      if (!item) {
        item = h("li", "jobtastic-job", { "data-job-id": job.id });
        const bar = h("div", "jobtastic", { "data-jobtastic-task-id": job.id });
        item.append(h("div", "jobtastic-job-title"), bar);
        list.prepend(item);
        track(bar, { taskId: job.id });
      }
      return item;
    }

    function update(item) {
      const id = item.getAttribute("data-job-id"), record = records.get(id);
      const bar = item.querySelector(".jobtastic");
      const title = item.querySelector(".jobtastic-job-title");
      if (!title) return;
      if (item.dataset.jobTitle == null) item.dataset.jobTitle = title.textContent.trim();
      const name = record ? record.description || record.task_name : item.dataset.jobTitle;
      const state = jobState(record, bar && trackers.get(bar));
      item.className = "jobtastic-job jobtastic-job-" + state;
      setText(title, name + " · " + (JOB_LABELS[state] || state));
      const finished = JOB_FINISHED.indexOf(state) >= 0 && !(record && record.seen);
      let dismiss = item.querySelector(".jobtastic-job-dismiss");
      if (finished && seenTemplate && !dismiss) {
        dismiss = h("button", "jobtastic-job-dismiss", { type: "button" });
        dismiss.textContent = "Dismiss";
        dismiss.addEventListener("click", () => markSeen(item, dismiss));
        item.append(dismiss);
      }
    }

    async function markSeen(item, button) {
      const id = item.getAttribute("data-job-id");
      button.disabled = true;
      let res = null;
      try {
        res = await fetch(seenTemplate.replace("00000000-0000-0000-0000-000000000000", id), {
          method: "POST", credentials: "same-origin",
          headers: { "X-Requested-With": "jobtastic", Accept: "application/json" },
        });
      } catch (e) { /* res stays null: keep the job, let the user try again */ }
      if (res && (res.ok || res.status === 404)) {
        dismissed.add(id);
        records.delete(id);
        item.remove();
        if (empty) empty.hidden = list.children.length > 0;
        refresh();
      } else button.disabled = false;
    }

    function render(jobs) {
      jobs = jobs.filter((job) => job && !dismissed.has(job.id));
      records.clear();
      for (const job of jobs) records.set(job.id, job);
      for (const item of Array.from(list.children)) {
        if (!records.has(item.getAttribute("data-job-id"))) item.remove();
      }
      for (const job of jobs.slice().reverse()) update(itemFor(job));
      if (empty) empty.hidden = jobs.length > 0;
    }

    const onUpdate = (event) => {
      const item = event.target.closest && event.target.closest("li.jobtastic-job");
      if (item && item.parentNode === list) update(item);
    };
    section.addEventListener("jobtastic:update", onUpdate);

    async function refresh() {
      clearTimeout(timer);
      let wait = opts.interval;
      try {
        const res = await fetch(url, {
          credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
        });
        const body = res.ok ? await res.json() : null;
        if (!body || !Array.isArray(body.jobs)) {
          const retryAfter = Number(res.headers.get("Retry-After")) * 1000 || 0;
          throw Object.assign(new Error("HTTP " + res.status), { retryAfter });
        }
        render(body.jobs);
        failures = 0;
        delay = opts.interval;
        setText(note, "");
      } catch (e) {
        failures += 1;
        delay = Math.min(opts.maxInterval, Math.max(delay * 2, (e && e.retryAfter) || 0));
        wait = delay;
        setText(note, settings.messages.jobsUnavailable);
      }
      note.hidden = !note.textContent;
      if (!stopped) timer = setTimeout(refresh, wait);
    }

    section.__jobtasticJobs = {
      refresh,
      stop() {
        stopped = true;
        clearTimeout(timer);
        section.removeEventListener("jobtastic:update", onUpdate);
        delete section.__jobtasticJobs;
      },
      get failures() { return failures; },
      get delay() { return delay; },
    };
    list.querySelectorAll("li.jobtastic-job").forEach(update); // rendered by the server
    refresh();
    return section.__jobtasticJobs;
  }

  const Jobtastic = {
    version: "0.1.0", settings, configure, track, scan, formatDuration, registerJQuery, Tracker,
    watchJobs,
    get: (target) => trackers.get(resolve(target)) || null,
  };
  window.Jobtastic = Jobtastic;
  registerJQuery();

  function autoInit() {
    registerJQuery();
    if (!settings.autoInit) return;
    scan(document);
    document.querySelectorAll(".jobtastic-jobs").forEach((section) => watchJobs(section));
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", autoInit);
  else setTimeout(autoInit, 0);
})(window, document);
