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
 * Transports: every bar on the default URLs (and the jobs list) rides the page's ONE
 * stream (PageStream: <prefix>/events?ids=..., or /events/jobs?ids=... with a jobs list),
 * which falls back to ONE batched poll (GET <prefix>/status?ids=...) for all bars when
 * streaming is unavailable. A bar with transport "polling", a statusUrl or eventsUrl of
 * its own, or pageStream: false keeps a transport of its own: "events" (EventSource on
 * eventsUrl, at most maxStreams of them) or "polling" (fetch on statusUrl, one request at
 * a time, backoff on trouble), "auto" being events, then polling once the stream fails
 * or is refused. Each callback also fires as a bubbling DOM event on the element
 * (jobtastic:update, :progress, :success, :failure, :error, :finish) with
 * `event.detail = {tracker, document, data}`, data being the callback's first argument
 * (the result for :success). Client-side final errors (an HTTP 400, say) get the state
 * "ERROR". Strings from the server are only ever set as textContent.
 *
 * Cancel: "Cancelling…" (button disabled) from the click, or while a document carries
 * `cancel_pending: true`, until a final document; a failed POST says so and re-enables it.
 *
 * A canvas (a group, chord or chain started as one job) is a job whose documents carry
 * `children` (part counts): its bar says "37 of 500 parts done" and "1 failed" beside the
 * text, in the jobs list too (a list record's `children` stand in for a document's).
 *
 * Inside, a Tracker puts together: two transports (Poller, and SharedFeed on the
 * PageStream or a Stream of its own) that report to a listener, the StateMachine (the listener: it decides what happens after each
 * document or failure), and a BarView that renders the machine's state into the element.
 * JobsList keeps the "my jobs" list. Node can require this file (see the end) to test
 * the parts that need no DOM: `node --test tests/js/`.
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
    pageStream: true, // ride the page's one stream (false: an EventSource of the bar's own)
    maxStreams: 4, // streams of bars' own per page; more poll (a browser has 6 connections)
    batchLimit: 100, // ids per shared stream or batched poll: the server's JOBTASTIC_BATCH_LIMIT
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
      // the job list: an item's title and its job's state, and its Dismiss button
      jobTitle: "{name} · {state}", dismiss: "Dismiss",
      jobQueued: "Queued", jobRunning: "Running", jobSucceeded: "Done", jobFailed: "Failed",
      jobRevoked: "Cancelled", jobRetrying: "Retrying", jobCancelling: "Cancelling…",
      // a canvas beside its bar: done = succeeded + failed (a cancelled part was not done)
      partsDone: "{done} of {total} parts done", partsFailed: "{failed} failed",
    },
  };

  // ---- formatting: status documents as text --------------------------------------------

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

  function errorText(err) {
    if (!err) return "";
    return typeof err === "string" ? err : String(err.message || err.type || "");
  }

  /** The text under a PROGRESS bar: estimating, steps to go, almost done or time left. */
  function progressText(doc, pct, o) {
    const m = o.messages, percent = Math.floor(pct);
    const eta = doc.time_remaining == null ? -1 : Number(doc.time_remaining);
    const left = stepsLeft(doc.steps); // progress counts items, not the steps after them
    if (eta < 0 || pct <= 0) return m.estimating;
    if (eta < 1 && left) return fmt(left === 1 ? m.oneStepLeft : m.stepsLeft, { percent, n: left });
    if (eta < 1) return fmt(m.almostDone, { percent });
    return fmt(m.progress, { percent, remaining: o.formatDuration(eta, m) });
  }

  /**
   * How a bar looks and what it says for a tracker's state (`model`: state, document,
   * finished, connectionError, cancelPending). look: busy | value | success | danger | muted.
   */
  function describe(model, o) {
    const m = o.messages, doc = model.document || {}, state = model.state;
    const pct = Math.min(100, Math.max(0, Number(doc.progress_percent) || 0));
    let look = "busy", text = m.pending;
    if (state === "PROGRESS") [look, text] = ["value", progressText(doc, pct, o)];
    else if (state === "SUCCESS") [look, text] = ["success", m.success];
    else if (state === "FAILURE" || state === "ERROR") {
      [look, text] = ["danger", errorText(doc.error) || m.failure];
    } else if (state === "REVOKED") [look, text] = ["muted", m.revoked];
    else if (state === "UNKNOWN") [look, text] = ["muted", m.unknown];
    else if (state === "RETRY") text = m.retry;
    else if (state === "STARTED") text = m.started;
    if (model.cancelPending) text = m.cancelling;
    if (model.connectionError && !model.finished) text = m.networkError;
    return { look, text, pct, percent: Math.floor(pct) };
  }

  /** "Error reference: ID" of a failure, or "" when there is none or `text` quotes it. */
  function errorIdText(state, doc, text, m) {
    const errId = state === "FAILURE" && doc && doc.error && doc.error.error_id;
    if (!errId || String(text).indexOf(String(errId)) >= 0) return "";
    return fmt(m.errorId, { id: errId });
  }

  /** A step's duration: tenths of a second under 10 s, then formatDuration. */
  function stepDuration(duration, o) {
    const d = duration == null ? NaN : Number(duration);
    if (isNaN(d)) return "";
    return d < 10 ? fmt(o.messages.seconds, { n: d.toFixed(1) }) : o.formatDuration(d, o.messages);
  }

  function countsText(c, m) {
    if (!c) return "";
    return fmt(m.counts, {
      amount: c.amount || 0, success: c.success || 0,
      failure: c.failure || 0, pending: c.pending || 0,
    });
  }

  const PART_COUNTS = ["pending", "running", "succeeded", "failed", "revoked"];

  /** A canvas document's `children` as whole counts, or null when it is not one. */
  function partCounts(children) {
    if (!children || typeof children !== "object" || Array.isArray(children)) return null;
    const total = children.total == null ? NaN : Number(children.total);
    if (!isFinite(total) || total < 0) return null;
    const c = { total: Math.floor(total) };
    for (const k of PART_COUNTS) c[k] = Math.max(0, Math.floor(Number(children[k]) || 0));
    return c;
  }

  /**
   * A canvas's parts: {done: "37 of 500 parts done", failed: "1 failed"} (failed "" while
   * none failed), or null without `children`. Every count is a placeholder, and {done}.
   */
  function partsText(children, m) {
    const c = partCounts(children);
    if (!c) return null;
    const vars = Object.assign({ done: c.succeeded + c.failed }, c);
    return { done: fmt(m.partsDone, vars), failed: c.failed > 0 ? fmt(m.partsFailed, vars) : "" };
  }

  /** A bar's parts text: its document's `children`, else those of its job list record. */
  function partsShown(doc, record, m) {
    return partsText(doc && doc.children, m) || partsText(record && record.children, m);
  }

  // ---- options and URLs ------------------------------------------------------------------

  function merge(base, extra) {
    const out = Object.assign({}, base, extra);
    out.messages = Object.assign({}, base.messages, extra && extra.messages);
    return out;
  }

  const prefixOf = (urlPrefix) => String(urlPrefix).replace(/\/+$/, "");

  /** ".../status/<id>[?query]" -> ".../<kind>/<id>[?query]", or null. */
  function deriveUrl(statusUrl, kind) {
    const m = /\/status\/([^/?#]+)([?#].*)?$/.exec(statusUrl);
    return m ? statusUrl.slice(0, m.index) + "/" + kind + "/" + m[1] + (m[2] || "") : null;
  }

  /** statusUrl, eventsUrl and cancelUrl: as given, else from statusUrl, else from urlPrefix. */
  function endpoints(o) {
    const prefix = prefixOf(o.urlPrefix), id = encodeURIComponent(o.taskId);
    const statusUrl = o.statusUrl || prefix + "/status/" + id;
    return {
      statusUrl,
      eventsUrl: o.eventsUrl || deriveUrl(statusUrl, "events") || prefix + "/events/" + id,
      cancelUrl: o.cancelUrl || deriveUrl(statusUrl, "cancel") || prefix + "/cancel/" + id,
    };
  }

  /** A tracker's options: defaults, then the element's data-* attributes, then `options`. */
  function trackerOptions(defaults, data, options) {
    const o = merge(merge(defaults, data), options);
    if (o.taskId == null || o.taskId === "") throw new Error("Jobtastic: no taskId given");
    Object.assign(o, endpoints(o));
    o.pollInterval = Math.max(50, Number(o.pollInterval) || defaults.pollInterval);
    o.maxPollInterval = Math.max(o.pollInterval, Number(o.maxPollInterval) || 0);
    return o;
  }

  const DATA_OPTIONS = {
    jobtasticTaskId: "taskId", jobtasticUrl: "statusUrl", jobtasticEventsUrl: "eventsUrl",
    jobtasticCancelUrl: "cancelUrl", jobtasticTransport: "transport", jobtasticTheme: "theme",
  };

  /** Options from an element's data-jobtastic-* attributes. */
  function readData(el) {
    const d = el.dataset, o = {};
    for (const k in DATA_OPTIONS) if (d[k]) o[DATA_OPTIONS[k]] = d[k];
    const poll = d.jobtasticPollInterval;
    if (poll && !isNaN(+poll)) o.pollInterval = +poll;
    const cancel = d.jobtasticCancelButton;
    if (cancel != null) o.cancelButton = !/^(false|0|no|off)$/i.test(cancel);
    return o;
  }

  /** The job list's URL: the section's data-jobtastic-jobs-url, else urlPrefix + "/jobs". */
  function jobsUrl(attribute, urlPrefix) {
    return attribute || prefixOf(urlPrefix) + "/jobs";
  }

  /** data-jobtastic-seen-url names a placeholder job id; this is the URL for `id`. */
  function seenUrl(template, id) {
    return template.replace("00000000-0000-0000-0000-000000000000", id);
  }

  // ---- transports: they fetch, and tell a listener what came ---------------------------

  const isDocument = (body) => !!body && typeof body === "object" && typeof body.state === "string";

  /** What a poll's answer is: "document", "trouble" (retry later) or "fatal" (a 4xx). */
  function classifyAnswer(status, ok, body) {
    if (isDocument(body) && (ok || (status === 404 && body.state === "UNKNOWN"))) return "document";
    if (ok || status >= 500 || status === 408 || status === 429) return "trouble";
    return "fatal";
  }

  /**
   * GETs statusUrl, one request at a time. start(delay) (re)schedules the next poll and
   * stop() ends polling. The listener gets onDocument(doc), onTrouble(info) (it
   * reschedules) or onFatal(status, body); after a document the next poll is in `interval`.
   */
  class Poller {
    constructor(url, interval, listener) {
      Object.assign(this, { url, interval, listener, active: false, timer: null, abort: null });
    }

    start(delay) {
      this.active = true;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.poll(), delay);
    }

    /** Poll now if a poll is waiting (not while one is on its way). */
    poke() {
      if (this.active && this.timer) this.start(0);
    }

    stop() {
      this.active = false;
      clearTimeout(this.timer);
      this.timer = null;
      if (this.abort) this.abort.abort();
    }

    async poll() {
      this.timer = null;
      if (!this.active) return;
      const { res, body } = await this.request();
      if (!this.active) return; // stopped meanwhile
      if (!res) return this.listener.onTrouble({ type: "network", message: "no response" });
      const answer = classifyAnswer(res.status, res.ok, body);
      if (answer === "trouble") {
        const info = { type: "http", status: res.status, message: res.statusText || "" };
        return this.listener.onTrouble(info);
      }
      if (answer === "fatal") return this.listener.onFatal(res.status, body);
      this.listener.onDocument(body);
      if (this.active && !this.timer) this.start(this.interval);
    }

    /** {res, body}: res null on a network error, body null when it is not JSON. */
    async request() {
      const ctl = typeof AbortController === "function" ? new AbortController() : null;
      this.abort = ctl;
      let res = null, body = null;
      try {
        res = await fetch(this.url, {
          credentials: "same-origin", cache: "no-store",
          headers: { Accept: "application/json" }, signal: ctl ? ctl.signal : undefined,
        });
        body = await res.json().catch(() => null);
      } catch (e) {
        res = null;
      }
      if (this.abort === ctl) this.abort = null;
      return { res, body };
    }
  }

  /**
   * An EventSource on eventsUrl, within the page's budget of open streams. start() is
   * false when the page may not open one (no EventSource, maxStreams open, one refused in
   * the last STREAM_PAUSE ms). The listener gets onDocument(doc) and onGiveUp(reason):
   * "unavailable" (the server lost its result backend), "refused" (a 429, or broken
   * before its first document: new bars poll for a while) or "broken" (again after a
   * reconnect, or closed).
   */
  class Stream {
    constructor(url, maxStreams, listener, EventSourceClass) {
      const ES = EventSourceClass || (window && window.EventSource);
      Object.assign(this, { url, maxStreams, listener, EventSource: ES, es: null });
      Object.assign(this, { mode: "events", rejoins: false });
    }

    get live() { return !!this.es; }

    start() {
      const refusedLately = performance.now() - streams.refusedAt < STREAM_PAUSE;
      if (typeof this.EventSource !== "function") return false;
      if (streams.open >= this.maxStreams || refusedLately) return false;
      try {
        this.es = new this.EventSource(this.url);
      } catch (e) {
        return false;
      }
      streams.open += 1;
      this.listen(this.es);
      return true;
    }

    stop() {
      if (!this.es) return;
      this.es.close();
      this.es = null;
      streams.open -= 1;
    }

    listen(es) {
      let delivered = false, errors = 0;
      const onMessage = (ev) => {
        if (this.es !== es) return;
        delivered = true;
        errors = 0;
        let doc = null;
        try { doc = JSON.parse(ev.data); } catch (e) { return; }
        this.listener.onDocument(doc);
      };
      es.addEventListener("status", onMessage);
      es.addEventListener("message", onMessage);
      es.addEventListener("unavailable", () => {
        if (this.es === es) this.listener.onGiveUp("unavailable");
      });
      es.addEventListener("error", () => {
        if (this.es !== es) return;
        // After a stream that worked the browser may reconnect once.
        errors += 1;
        if (!delivered) streams.refusedAt = performance.now();
        if (!delivered) this.listener.onGiveUp("refused");
        else if (errors >= 2 || es.readyState === 2) this.listener.onGiveUp("broken");
      });
    }
  }

  // ---- the page's stream: one connection for every bar and the jobs list ---------------

  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  /** Ids per request: the server's JOBTASTIC_BATCH_LIMIT, as `batchLimit` says. */
  const batchLimit = () => Math.max(1, Math.floor(Number(settings.batchLimit)) || 100);
  const SYNC_DELAY = 75; // ms: bars added or removed together reopen the stream once
  const STREAM_RETRY = [5000, 10000, 20000, 40000, 60000]; // ms of polling before a retry
  const OWNER_RETRY_MAX = 300000; // ms: the longest wait before asking for the list again
  const STREAM_ERRORS = 3; // errors of a stream without it opening again: poll instead
  const OUTAGE = { type: "http", status: 503, message: "Job status is temporarily unavailable" };

  const isFinal = (doc) => doc.ready === true || FINAL.indexOf(doc.state) >= 0;

  /** What the page stream and the batched poller use; node tests pass fakes. */
  function defaultEnv() {
    return {
      EventSource: window ? window.EventSource : undefined,
      fetch: (url, init) => fetch(url, init),
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (timer) => clearTimeout(timer),
      now: () => Date.now(),
    };
  }

  /**
   * The page stream a tracker may ride: its prefix, or null when the bar keeps a
   * transport of its own (transport "polling", a statusUrl or eventsUrl of its own, a
   * task id that is not a UUID: the server refuses a batch holding one).
   */
  function sharedPrefix(o) {
    if (o.pageStream === false || o.transport === "polling") return null;
    const id = String(o.taskId);
    if (!UUID.test(id)) return null;
    const m = /^(.*)\/status\/([^/?#]+)$/.exec(o.statusUrl);
    if (!m || m[2] !== id || o.eventsUrl !== m[1] + "/events/" + id) return null;
    return m[1];
  }

  /**
   * GET <prefix>/status?ids=... for every id the page polls, one request at a time:
   * `interval` after an answer, doubling up to `maxInterval` on trouble (never sooner
   * than Retry-After). The listener gets onBatch({id: doc}), onBatchTrouble(info) and
   * onBatchFatal(status, body) (a 4xx: retrying would not help).
   */
  class BatchPoller {
    constructor(prefix, ids, listener, env) {
      Object.assign(this, { prefix, ids, listener, env, active: false, timer: null, delay: 0 });
    }

    get interval() { return Math.max(50, Number(settings.pollInterval) || 1000); }

    start(delay) {
      this.active = true;
      this.env.clearTimeout(this.timer);
      this.timer = this.env.setTimeout(() => this.poll(), delay);
    }

    poke() {
      if (this.active && this.timer) this.start(0);
    }

    stop() {
      this.active = false;
      this.env.clearTimeout(this.timer);
      this.timer = null;
    }

    async poll() {
      this.timer = null;
      const ids = this.active ? this.ids().slice(0, batchLimit()) : [];
      if (!ids.length) return (this.active = false); // start() again once there are bars
      const url = this.prefix + "/status?ids=" + ids.map(encodeURIComponent).join(",");
      let res = null, body = null;
      try {
        res = await this.env.fetch(url, {
          credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
        });
        body = await res.json().catch(() => null);
      } catch (e) { res = null; }
      if (!this.active) return;
      const tasks = body && body.tasks && typeof body.tasks === "object" ? body.tasks : null;
      if (res && res.ok && tasks) {
        this.delay = 0;
        this.listener.onBatch(tasks);
        if (this.active && !this.timer) this.start(this.interval);
        return;
      }
      if (res && !res.ok && res.status < 500 && res.status !== 408 && res.status !== 429) {
        this.active = false; // start() again for the next bars
        return this.listener.onBatchFatal(res.status, body);
      }
      const retryAfter = (res && Number(res.headers.get("Retry-After")) * 1000) || 0;
      const ceiling = Math.max(this.interval, Number(settings.maxPollInterval) || 0);
      this.delay = Math.min(ceiling, Math.max((this.delay || this.interval) * 2, retryAfter));
      this.listener.onBatchTrouble(res ? { type: "http", status: res.status,
        message: res.statusText || "" } : { type: "network", message: "no response" });
      if (this.active) this.start(this.delay);
    }
  }

  /**
   * One page's stream of every bar (subscribe) and the jobs list (watchList) under one
   * URL prefix: a single EventSource on <prefix>/events?ids=... or, with a jobs list, on
   * <prefix>/events/jobs?ids=... (the owner's list and the bars on one connection).
   *
   * Bars added or removed reopen it once (SYNC_DELAY), with ?cursor= (the last event id)
   * so the server sends only what changed; final jobs are dropped (the server drops
   * them too) and need no reopen; `done` closes it. Jobs the open list stream already
   * watches (listed, unfinished) need no reopen either; a bar added for a listed,
   * finished job gets its document from one batched GET /status?ids= read.
   *
   * Refused (a 429, or a 404 of the list: no current user, no registry) or failing
   * (STREAM_ERRORS errors without opening again): the jobs list polls GET /jobs on its
   * own, the bars get ONE batched poll (BatchPoller), and the stream is tried again after
   * STREAM_RETRY. `reconnecting` / `resumed` (the server lost Redis, got it back) show
   * and clear the connection trouble of every bar and the list.
   *
   * Bars are listeners with onDocument(doc), onTransport(mode), onFeedTrouble(info),
   * onFeedOutage(info), onFeedRecovered() and onFatal(status, body); lists have
   * onJob(record), onRemoved(id), onListTrouble(), onListRecovered() and onFeed(live).
   */
  class PageStream {
    constructor(prefix, env) {
      this.prefix = prefix;
      this.env = Object.assign(defaultEnv(), env);
      this.subs = new Map(); // job id -> its bars
      this.docs = new Map(); // job id -> the last document (UNKNOWN ones are not kept)
      this.lists = new Set();
      this.records = new Map(); // job id -> the owner's list's last record of it
      this.mode = null; // "events" | "polling" | null (nothing to follow)
      this.es = null;
      this.cursor = ""; // the last event id: what the page holds
      this.outage = null; // OUTAGE while the server says it lost Redis
      this.poller = null;
      this.ownerOff = false; // the list stream is not there (404): lists poll for good
      this.ownerRetryAt = 0;
      this.ownerRefusals = 0;
      this.refusals = 0;
      this.probing = false; // the bars' stream right after the list's was refused
      this.catchUp = new Set(); // listed, finished jobs to read once
      this.reading = new Set();
      this.timers = { sync: null, retry: null, catchUp: null };
      this.forget();
    }

    /** What belongs to one connection. */
    forget() {
      Object.assign(this, { es: null, esIds: new Set(), esList: false, opened: false, errors: 0 });
      this.gone = new Set(); // ids the server dropped on this connection (final, unknown)
      this.covered = new Set(); // listed unfinished jobs: the list stream watches them
      this.needStream = new Set(); // listed as finished, yet not final when read
    }

    /** Whether one more bar may ride it (the server takes batchLimit() ids). */
    accepts(id) {
      return this.subs.has(id) || this.subs.size < batchLimit();
    }

    subscribe(id, listener) {
      let bars = this.subs.get(id);
      if (!bars) this.subs.set(id, (bars = new Set()));
      bars.add(listener);
      // Asynchronously: the tracker is still starting. What the page already has.
      Promise.resolve().then(() => {
        if (!bars.has(listener)) return;
        if (this.outage) listener.onFeedOutage(this.outage);
        const doc = this.docs.get(id);
        if (doc) listener.onDocument(doc);
      });
      if (this.mode === "polling" && this.poller) {
        if (!this.poller.active) this.poller.start(0);
        else this.poller.poke();
      }
      this.schedule();
    }

    unsubscribe(id, listener) {
      const bars = this.subs.get(id);
      if (!bars || !bars.delete(listener)) return;
      if (!bars.size) this.subs.delete(id);
      this.schedule();
    }

    watchList(listener) {
      this.lists.add(listener);
      Promise.resolve().then(() => {
        if (!this.lists.has(listener)) return;
        if (this.mode === "polling" || !this.ownerWanted()) listener.onFeed(false);
        for (const record of this.sortedRecords()) listener.onJob(record);
        if (this.outage) listener.onListTrouble();
      });
      this.schedule();
      return { stop: () => { this.lists.delete(listener); this.schedule(); } };
    }

    /** Poll now if the page polls. */
    poke() {
      if (this.mode === "polling" && this.poller) this.poller.poke();
    }

    /** Whether the lists ride the stream now (else they poll GET /jobs). */
    listLive() {
      return this.mode === "events" && this.esList;
    }

    /** The owner's list as the server orders it: newest first. */
    sortedRecords() {
      const key = (r) => Number(r.created_at) || 0;
      return Array.from(this.records.values())
        .sort((a, b) => key(b) - key(a) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    }

    // -- which stream the page needs --

    /** Ids of the bars whose job is not final (as the page knows it). */
    wanted() {
      const ids = [];
      for (const id of this.subs.keys()) {
        const doc = this.docs.get(id);
        if (!doc || !isFinal(doc)) ids.push(id);
      }
      return ids;
    }

    ownerWanted() {
      return this.lists.size > 0 && !this.ownerOff && this.env.now() >= this.ownerRetryAt;
    }

    schedule() {
      if (this.timers.sync === null) {
        this.timers.sync = this.env.setTimeout(() => this.sync(), SYNC_DELAY);
      }
    }

    sync() {
      this.timers.sync = null;
      const wanted = this.wanted(), list = this.ownerWanted();
      if (this.mode === "polling") {
        if (wanted.length && !this.poller.active) this.poller.start(0);
        return;
      }
      if (!wanted.length && !list) return this.close();
      if (!this.satisfies(wanted, list)) this.open(wanted, list);
    }

    /** Whether the open stream delivers every wanted job and no bar's job that left. */
    satisfies(wanted, list) {
      if (!this.es || list !== this.esList) return false;
      for (const id of wanted) {
        if (this.delivers(id)) continue;
        const record = this.records.get(id);
        if (!this.esList || !record || !record.finished || this.needStream.has(id)) return false;
        this.readOnce(id); // listed as finished: one batched read, no reopen
      }
      for (const id of this.esIds) if (!this.gone.has(id) && !this.subs.has(id)) return false;
      return true;
    }

    delivers(id) {
      if (this.esIds.has(id) && !this.gone.has(id)) return true;
      if (this.esList && this.covered.has(id)) return true;
      return this.catchUp.has(id) || this.reading.has(id);
    }

    // -- the EventSource --

    open(wanted, list) {
      this.closeStream();
      const ES = this.env.EventSource;
      if (typeof ES !== "function") return this.startPolling(Infinity);
      const params = [];
      if (wanted.length) params.push("ids=" + wanted.map(encodeURIComponent).join(","));
      if (this.cursor) params.push("cursor=" + encodeURIComponent(this.cursor));
      const url = this.prefix + (list ? "/events/jobs" : "/events") +
        (params.length ? "?" + params.join("&") : "");
      let es;
      try { es = new ES(url); } catch (e) { return this.startPolling(Infinity); }
      this.esIds = new Set(wanted);
      Object.assign(this, { es, esList: list });
      streams.open += 1;
      this.listen(es);
      this.setMode("events");
    }

    closeStream() {
      if (this.es) {
        this.es.close();
        streams.open -= 1;
      }
      this.forget();
    }

    close() {
      this.closeStream();
      if (this.poller) this.poller.stop();
      this.setMode(null);
    }

    listen(es) {
      const on = (type, handler) => es.addEventListener(type, (event) => {
        if (this.es !== es) return;
        if (event.lastEventId) this.cursor = event.lastEventId;
        let data = null;
        try { data = JSON.parse(event.data); } catch (e) { return; }
        if (data && typeof data === "object") handler(data);
      });
      es.addEventListener("open", () => { if (this.es === es) this.onOpen(); });
      es.addEventListener("error", () => { if (this.es === es) this.onError(es); });
      on("status", (doc) => this.onStatus(doc));
      on("job", (record) => this.onJob(record));
      on("removed", (data) => this.onRemoved(String(data.task_id)));
      on("reconnecting", () => this.onOutage(OUTAGE));
      on("resumed", () => this.onOutage(null));
      on("done", () => {
        this.closeStream();
        this.schedule(); // bars added since the stream opened
      });
    }

    onOpen() {
      const probe = this.probing;
      this.probing = false;
      Object.assign(this, { opened: true, errors: 0, refusals: 0 });
      if (this.esList) {
        this.ownerRefusals = 0;
        for (const list of this.lists) list.onFeed(true);
      } else if (probe) this.ownerOff = true; // the bars' stream opens, the list's did not
    }

    onError(es) {
      this.errors += 1;
      if (es.readyState === 2) this.refused(); // an HTTP error: 429, 404, 503
      else if (this.errors >= STREAM_ERRORS) this.startPolling(); // keeps failing
      // else the browser reconnects on its own, sending Last-Event-ID
    }

    refused() {
      if (!this.esList) return this.startPolling();
      // The list's stream: the bars may still have theirs (a 404 means no current user).
      this.ownerRefusals += 1;
      this.ownerRetryAt = this.env.now() +
        Math.min(STREAM_RETRY[0] * Math.pow(2, this.ownerRefusals - 1), OWNER_RETRY_MAX);
      this.probing = !this.opened;
      this.closeStream();
      for (const list of this.lists) list.onFeed(false);
      this.later("retry", () => this.schedule(), this.ownerRetryAt - this.env.now());
      this.sync();
    }

    onStatus(doc) {
      if (!isDocument(doc) || typeof doc.task_id !== "string") return;
      const id = doc.task_id;
      if (isFinal(doc)) this.gone.add(id);
      this.deliver(id, doc);
    }

    deliver(id, doc) {
      if (doc.state === "UNKNOWN") this.docs.delete(id); // asked again, not kept
      else this.docs.set(id, doc);
      for (const bar of Array.from(this.subs.get(id) || [])) bar.onDocument(doc);
    }

    onJob(record) {
      if (typeof record.id !== "string") return;
      this.records.set(record.id, record);
      if (!record.finished) this.covered.add(record.id);
      for (const list of Array.from(this.lists)) list.onJob(record);
      if (record.finished && this.subs.has(record.id)) this.schedule();
    }

    onRemoved(id) {
      this.records.delete(id);
      this.covered.delete(id);
      this.gone.add(id); // the server stops watching it, its bar's too
      for (const list of Array.from(this.lists)) list.onRemoved(id);
      if (this.subs.has(id)) this.schedule();
    }

    /** Call fn(bar) for each bar whose job is not final. */
    eachBar(fn) {
      for (const id of this.wanted()) {
        for (const bar of Array.from(this.subs.get(id) || [])) fn(bar);
      }
    }

    onOutage(outage) {
      this.outage = outage;
      this.eachBar((bar) => (outage ? bar.onFeedOutage(outage) : bar.onFeedRecovered()));
      for (const list of Array.from(this.lists)) {
        if (outage) list.onListTrouble();
        else list.onListRecovered();
      }
    }

    setMode(mode) {
      if (this.mode === mode) return;
      this.mode = mode;
      for (const bars of Array.from(this.subs.values())) {
        for (const bar of Array.from(bars)) bar.onTransport(mode || "events");
      }
    }

    later(name, fn, ms) {
      this.env.clearTimeout(this.timers[name]);
      this.timers[name] = this.env.setTimeout(() => {
        this.timers[name] = null;
        fn();
      }, Math.max(0, ms));
    }

    // -- the batched poll, when the stream is refused or keeps failing --

    startPolling(wait) {
      this.closeStream();
      this.refusals += 1;
      this.outage = null;
      this.setMode("polling");
      for (const list of this.lists) list.onFeed(false);
      if (!this.poller) this.poller = new BatchPoller(this.prefix, () => this.wanted(), this, this.env);
      this.poller.start(0);
      if (wait === Infinity) return; // no EventSource in this browser: poll for good
      wait = wait || STREAM_RETRY[Math.min(this.refusals, STREAM_RETRY.length) - 1];
      this.later("retry", () => this.retryStream(), wait);
    }

    retryStream() {
      if (this.mode !== "polling") return;
      this.poller.stop();
      this.setMode(null);
      this.sync();
    }

    onBatch(tasks) {
      this.eachBar((bar) => bar.onFeedRecovered());
      for (const id of Object.keys(tasks)) {
        const doc = tasks[id], known = this.docs.get(id);
        if (!isDocument(doc)) continue;
        if (known && JSON.stringify(known) === JSON.stringify(doc)) continue; // unchanged
        this.deliver(id, doc);
      }
    }

    onBatchTrouble(info) {
      this.eachBar((bar) => bar.onFeedTrouble(info));
    }

    onBatchFatal(status, body) {
      this.eachBar((bar) => bar.onFatal(status, body));
    }

    // -- one read of listed, finished jobs a bar was added for --

    readOnce(id) {
      if (this.catchUp.has(id) || this.reading.has(id)) return;
      this.catchUp.add(id);
      if (this.timers.catchUp === null) this.later("catchUp", () => this.readListed(), 0);
    }

    async readListed() {
      const ids = Array.from(this.catchUp).slice(0, batchLimit());
      ids.forEach((id) => { this.catchUp.delete(id); this.reading.add(id); });
      if (this.catchUp.size) this.later("catchUp", () => this.readListed(), 0);
      let tasks = null;
      try {
        const res = await this.env.fetch(this.prefix + "/status?ids=" + ids.join(","), {
          credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
        });
        const body = res.ok ? await res.json() : null;
        tasks = body && body.tasks;
      } catch (e) { tasks = null; }
      for (const id of ids) {
        this.reading.delete(id);
        const doc = tasks && tasks[id];
        if (isDocument(doc)) this.deliver(id, doc);
        if (!isDocument(doc) || !isFinal(doc)) this.needStream.add(id); // the stream, then
      }
      this.schedule();
    }
  }

  /** PageStream per URL prefix: the page's one stream. */
  const pageStreams = new Map();

  function pageStreamFor(prefix) {
    prefix = prefixOf(prefix);
    if (!pageStreams.has(prefix)) pageStreams.set(prefix, new PageStream(prefix));
    return pageStreams.get(prefix);
  }

  /** A tracker's transport on the page stream: start() subscribes, stop() leaves. */
  class SharedFeed {
    constructor(hub, taskId, listener) {
      Object.assign(this, { hub, taskId, listener, live: false, rejoins: true });
    }

    get mode() { return this.hub.mode || "events"; }

    start() {
      if (!this.live) this.hub.subscribe(this.taskId, this.listener);
      this.live = true;
      return true;
    }

    stop() {
      if (this.live) this.hub.unsubscribe(this.taskId, this.listener);
      this.live = false;
    }

    poke() { this.hub.poke(); }
  }

  /** POST cancelUrl: {ok, body}, ok false when the server can't be reached or refuses. */
  async function postCancel(url) {
    let res = null, body = null;
    try {
      res = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "X-Requested-With": "jobtastic", Accept: "application/json" },
      });
      body = await res.json().catch(() => null);
    } catch (e) { /* network error: res stays null */ }
    return { ok: !!res && res.ok, body };
  }

  // ---- the state machine -----------------------------------------------------------------

  /**
   * What a tracker does next. It does no I/O and touches no DOM: `parts` gives it
   * poller(listener) and stream(listener) (transports with start/stop, the machine being
   * their listener), a view (render(machine)), emit(type, args) for the callbacks and
   * DOM events, and sendCancel(url) -> Promise<{ok, body}>.
   */
  class StateMachine {
    constructor(options, parts) {
      this.options = options;
      this.taskId = String(options.taskId);
      this.view = parts.view;
      this.emit = parts.emit;
      this.sendCancel = parts.sendCancel;
      this.poller = parts.poller(this);
      this.stream = parts.stream(this);
      this.state = "PENDING";
      this.document = null; // the last status document
      this.transport = null; // "events" | "polling" while listening
      this.connectionError = null; // errorInfo while the server can't be reached
      this.finished = false; // a final state was shown
      this.errors = 0; // failed polls in a row
      this.delay = options.pollInterval; // the next poll after a failure
      this.unknownSeen = 0;
      this.cancelState = null; // null | "sending" | "sent"
      this.notice = ""; // "Could not cancel the job"
      this.rejoin = false; // back to the page stream once an UNKNOWN job is found
    }

    /** Show the initial state, then listen: the stream if allowed and possible, else poll. */
    start() {
      this.render();
      if (this.options.transport !== "polling" && this.stream.start()) {
        this.transport = this.stream.mode;
      } else this.poll(0);
    }

    stop() {
      this.stream.stop();
      this.poller.stop();
      this.transport = null;
    }

    poll(delay) {
      this.stream.stop();
      this.transport = "polling";
      this.poller.start(delay);
    }

    /** Whether a cancel waits for the worker: asked here, or said so by the server. */
    get cancelPending() {
      if (this.finished) return false;
      return !!this.cancelState || !!(this.document && this.document.cancel_pending === true);
    }

    render() {
      this.view.render(this);
    }

    // -- the transports' listener --

    onDocument(doc) {
      this.recovered();
      this.handle(doc);
    }

    /** Network error or 5xx: back off; after N in a row show it, but never give up. */
    onTrouble(info) {
      this.noteTrouble(info);
      this.poller.start(this.delay);
    }

    /** One more failure in a row; the error state and onError from the Nth. */
    noteTrouble(info, now) {
      const o = this.options;
      this.errors += 1;
      this.delay = Math.min(this.delay * 2, o.maxPollInterval);
      if (now) this.errors = Math.max(this.errors, o.maxConsecutiveErrors);
      if (this.errors >= o.maxConsecutiveErrors) {
        this.delay = o.maxPollInterval;
        if (!this.connectionError) {
          this.connectionError = Object.assign({ attempts: this.errors }, info);
          this.render();
          this.emit("error", [this.connectionError]);
        }
      }
    }

    // -- the page stream's listener (SharedFeed): it polls, reconnects and backs off --

    /** "events" or "polling": how the page stream follows the jobs now. */
    onTransport(mode) {
      if (this.transport && this.stream.live) this.transport = mode;
    }

    /** A batched poll failed. */
    onFeedTrouble(info) {
      this.noteTrouble(info);
    }

    /** The server lost Redis (`reconnecting`): shown at once, until it is back. */
    onFeedOutage(info) {
      this.noteTrouble(info, true);
    }

    onFeedRecovered() {
      this.recovered();
    }

    /** A 4xx other than "job unknown": retrying would not help. */
    onFatal(status, body) {
      const message = errorText(body && body.error) || this.options.messages.requestError;
      this.emit("error", [{ type: "http", status, message, final: true }]);
      this.handle({
        task_id: this.taskId, state: "ERROR", ready: true,
        error: { type: "HTTP " + status, message },
      });
    }

    /** The stream failed or was refused: poll (polling shows an outage and recovers). */
    onGiveUp() {
      this.poll(0);
    }

    // -- documents --

    recovered() {
      this.errors = 0;
      this.delay = this.options.pollInterval;
      if (this.connectionError) {
        this.connectionError = null;
        this.render();
      }
    }

    handle(doc) {
      if (this.finished || !isDocument(doc)) return;
      if (doc.state === "UNKNOWN" && this.unknownSeen < this.options.unknownRetries) {
        this.unknownSeen += 1; // maybe not recorded yet: ask again before saying so
        if (this.stream.live) {
          this.rejoin = this.stream.rejoins; // the page stream, once the job is found
          this.poll(this.options.pollInterval);
        }
        return;
      }
      this.document = doc;
      this.state = doc.state;
      const final = isFinal(doc);
      if (final) {
        this.finished = true;
        this.stop();
      } else if (this.rejoin) {
        this.rejoin = false;
        this.poller.stop();
        if (this.stream.start()) this.transport = this.stream.mode;
        else this.poll(this.options.pollInterval);
      }
      this.render();
      this.announce(doc, final);
    }

    announce(doc, final) {
      this.emit("update", [doc]);
      if (doc.state === "PROGRESS") this.emit("progress", [doc]);
      if (!final) return;
      if (doc.state === "SUCCESS") this.emit("success", [doc.result, doc]);
      if (doc.state === "FAILURE") this.emit("failure", [doc.error || null, doc]);
      this.emit("finish", [doc]);
    }

    // -- cancel --

    /**
     * POST to cancelUrl. Resolves true once the server took the cancel: the bar says
     * "Cancelling…" until a document confirms it (REVOKED) or shows how the job ended.
     */
    async cancel() {
      if (this.finished || this.cancelPending) return false;
      this.cancelState = "sending";
      this.notice = "";
      this.render();
      const { ok, body } = await this.sendCancel(this.options.cancelUrl);
      this.cancelState = ok ? "sent" : null;
      this.notice = ok ? "" : this.options.messages.cancelFailed;
      if (ok && isDocument(body) && body.task_id === this.taskId) {
        this.handle(body); // the server answered with the job's status document
      } else if (ok && this.stream.live && this.stream.poke) this.stream.poke(); // ask now
      else if (ok && this.transport === "polling") this.poller.poke();
      if (!this.finished) this.render();
      return ok;
    }
  }

  // ---- the view: a bar, its text and details, built once and then only updated ---------

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

  const BAR_PARTS = ["placeholder", "bar", "footer", "error-id", "details"];
  const BOOTSTRAP_COLORS = { success: " bg-success", danger: " bg-danger", muted: " bg-secondary" };

  /** Renders a tracker's state (describe's model) into its element; onCancel on a click. */
  class BarView {
    constructor(element, options, onCancel) {
      this.root = element;
      this.options = options;
      this.bootstrap = options.theme === "bootstrap";
      this.stepEls = new Map();
      this.logKey = "";
      this.doc = {}; // the document rendered last
      this.record = null; // the job list's record of the job, when the bar is in the list
      this.build(onCancel);
    }

    build(onCancel) {
      const root = this.root, o = this.options, bs = this.bootstrap;
      for (const child of Array.from(root.children)) {
        if (BAR_PARTS.some((p) => child.classList.contains("jobtastic-" + p))) child.remove();
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
      ui.cancel.addEventListener("click", onCancel);
      // a canvas's parts (document.children), beside the text
      ui.partsDone = h("span", "jobtastic-parts-done");
      ui.partsFailed = h("span", "jobtastic-parts-failed");
      ui.footer.append(ui.text, ui.partsDone, ui.partsFailed, ui.notice, ui.cancel);
      ui.errorId = h("div", "jobtastic-error-id");
      ui.details = h("div", "jobtastic-details");
      ui.summary = h("div", "jobtastic-steps-summary");
      ui.counts = h("div", "jobtastic-counts");
      ui.steps = h("ol", "jobtastic-steps");
      ui.log = h("ol", "jobtastic-log");
      ui.details.append(ui.summary, ui.counts, ui.steps, ui.log);
      root.append(ui.bar, ui.footer, ui.errorId, ui.details);
    }

    render(model) {
      const shown = describe(model, this.options), doc = model.document || {};
      this.doc = doc;
      this.renderClasses(model, shown.look);
      this.renderBar(shown);
      this.renderFooter(model, shown.text);
      this.renderParts();
      this.renderDetails(doc);
    }

    /** The job list's record of the bar's job: its `children` stand in for the document's. */
    setRecord(record) {
      this.record = record || null;
      this.renderParts();
    }

    /** "37 of 500 parts done" and "1 failed" of a canvas; hidden for other jobs. */
    renderParts() {
      const ui = this.ui, parts = partsShown(this.doc, this.record, this.options.messages);
      setText(ui.partsDone, parts ? parts.done : "");
      setText(ui.partsFailed, parts ? parts.failed : "");
      show(ui.partsDone, !!ui.partsDone.textContent);
      show(ui.partsFailed, !!ui.partsFailed.textContent);
    }

    renderClasses(model, look) {
      const root = this.root, state = model.state;
      for (const c of Array.from(root.classList)) {
        if (c.indexOf("jobtastic-state-") === 0) root.classList.remove(c);
      }
      root.classList.add("jobtastic-state-" + state.toLowerCase().replace(/[^a-z0-9_-]/g, ""));
      root.classList.toggle("jobtastic-indeterminate", look === "busy");
      root.classList.toggle("jobtastic-finished", model.finished);
      root.classList.toggle("jobtastic-connection-error", !!model.connectionError);
      root.classList.toggle("jobtastic-cancelling", model.cancelPending);
    }

    renderBar({ look, text, pct, percent }) {
      const bar = this.ui.bar, fill = this.ui.fill, bs = this.bootstrap;
      if (look === "busy") {
        bar.removeAttribute("aria-valuenow");
        bar.setAttribute("aria-busy", "true");
        fill.style.width = bs ? "100%" : ""; // the plain theme's CSS animates it
      } else {
        bar.removeAttribute("aria-busy");
        if (look === "value" || look === "success") {
          bar.setAttribute("aria-valuenow", String(look === "success" ? 100 : percent));
        } else bar.removeAttribute("aria-valuenow");
        fill.style.width = (look === "value" ? pct : 100) + "%";
      }
      bar.setAttribute("aria-valuetext", text);
      if (bs) {
        fill.className = "jobtastic-fill progress-bar" + (BOOTSTRAP_COLORS[look] || "") +
          (look === "busy" ? " progress-bar-striped progress-bar-animated" : "");
      }
    }

    renderFooter(model, text) {
      const ui = this.ui, m = this.options.messages;
      setText(ui.text, text);
      setText(ui.notice, model.notice);
      show(ui.notice, !!model.notice && !model.finished);
      // The error id once: the generic message already quotes it.
      const errId = errorIdText(model.state, model.document, text, m);
      setText(ui.errorId, errId);
      show(ui.errorId, !!errId);
      show(ui.cancel, !!this.options.cancelButton && !model.finished);
      ui.cancel.disabled = model.cancelPending;
      setText(ui.cancel, m.cancel);
    }

    /** Optional richer fields: steps, their summary, counts and a message log. */
    renderDetails(doc) {
      const ui = this.ui, m = this.options.messages;
      const steps = Array.isArray(doc.steps) ? doc.steps : [];
      const log = Array.isArray(doc.messages) ? doc.messages : [];
      const c = doc.counts && typeof doc.counts === "object" ? doc.counts : null;
      setText(ui.summary, typeof doc.steps_summary === "string" ? doc.steps_summary : "");
      setText(ui.counts, countsText(c, m));
      show(ui.summary, !!ui.summary.textContent);
      show(ui.counts, !!c);
      this.renderSteps(steps);
      this.renderLog(log);
      show(ui.details, !!(steps.length || log.length || c || ui.summary.textContent));
    }

    renderSteps(steps) {
      const list = this.ui.steps, next = new Map();
      steps.forEach((step, i) => {
        if (!step || typeof step !== "object") return;
        let key = String(step.key != null ? step.key : "#" + i);
        while (next.has(key)) key += "~"; // duplicate keys still get a row each
        const li = this.stepEls.get(key) || this.stepRow();
        this.renderStep(li, key, step);
        const here = list.children[next.size] || null;
        if (here !== li) list.insertBefore(li, here);
        next.set(key, li);
      });
      const kept = new Set(next.values());
      this.stepEls.forEach((li) => kept.has(li) || li.remove());
      this.stepEls = next;
      show(list, next.size > 0);
    }

    stepRow() {
      const li = h("li", "jobtastic-step");
      li.append(h("span", "jobtastic-step-marker", { "aria-hidden": "true" }),
        h("span", "jobtastic-step-state jobtastic-sr-only"), h("span", "jobtastic-step-name"),
        h("span", "jobtastic-step-duration"), h("span", "jobtastic-step-detail"),
        h("span", "jobtastic-step-error"));
      return li;
    }

    renderStep(li, key, step) {
      const m = this.options.messages;
      const state = STEP_STATES.indexOf(step.state) >= 0 ? step.state : "pending";
      li.className = "jobtastic-step jobtastic-step-" + state;
      li.setAttribute("data-step-key", key);
      const depth = Math.max(0, Math.min(8, parseInt(step.depth, 10) || 0));
      li.style.setProperty("--jobtastic-depth", String(depth));
      const [, stateEl, name, duration, detail, error] = li.children;
      setText(stateEl, m["step" + state.charAt(0).toUpperCase() + state.slice(1)] + ": ");
      setText(name, step.name != null ? step.name : key);
      setText(duration, stepDuration(step.duration, this.options));
      setText(detail, step.detail || "");
      const err = step.error ? [step.error.type, errorText(step.error)] : [];
      setText(error, err.filter(Boolean).join(": "));
      for (const el of [duration, detail, error]) show(el, !!el.textContent);
    }

    renderLog(entries) {
      const list = this.ui.log, last = entries[entries.length - 1] || {};
      const key = entries.length + "|" + last.time + "|" + last.message;
      if (key === this.logKey) return;
      this.logKey = key;
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

  // ---- the tracker: one element, its view, its state machine and their transports -------

  class Tracker {
    constructor(element, options) {
      const o = trackerOptions(settings, readData(element), options);
      Object.assign(this, { element, options: o, taskId: String(o.taskId) });
      this.view = new BarView(element, o, () => this.cancel());
      this.machine = new StateMachine(o, {
        view: this.view,
        emit: (type, args) => this._emit(type, args),
        sendCancel: postCancel,
        poller: (listener) => new Poller(o.statusUrl, o.pollInterval, listener),
        stream: (listener) => {
          const prefix = sharedPrefix(o), hub = prefix != null && pageStreamFor(prefix);
          if (hub && hub.accepts(this.taskId)) return new SharedFeed(hub, this.taskId, listener);
          return new Stream(o.eventsUrl, o.maxStreams, listener);
        },
      });
      this.machine.start();
    }

    get state() { return this.machine.state; }
    get document() { return this.machine.document; } // the last status document
    get transport() { return this.machine.transport; } // "events" | "polling" | null
    get connectionError() { return this.machine.connectionError; }
    get finished() { return this.machine.finished; }
    get ui() { return this.view.ui; }

    /** Whether a cancel waits for the worker: asked here, or said so by the server. */
    get cancelPending() { return this.machine.cancelPending; }

    /** Stop listening; the element keeps showing the last state. */
    stop() {
      this.machine.stop();
    }

    /** POST to cancelUrl; resolves true once the server took the cancel. */
    cancel() {
      return this.machine.cancel();
    }

    _emit(type, args) {
      const cb = this.options["on" + type.charAt(0).toUpperCase() + type.slice(1)];
      if (typeof cb === "function") {
        try { cb.apply(this, args.concat([this])); } catch (e) { console.error(e); }
      }
      const detail = { tracker: this, document: this.document, data: args[0] };
      this.element.dispatchEvent(new CustomEvent("jobtastic:" + type, { bubbles: true, detail }));
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

  const JOB_FINISHED = ["succeeded", "failed", "revoked"];
  /** section -> ids dismissed on this page: seen jobs stay listed a while (seen_ttl). */
  const dismissedJobs = new WeakMap();
  /** A bar's document state as a job-list state. */
  const DOC_JOB_STATES = {
    PENDING: "queued", STARTED: "running", PROGRESS: "running", RETRY: "retrying",
    SUCCESS: "succeeded", FAILURE: "failed", REVOKED: "revoked",
  };
  /** A job-list state's label in `messages`. */
  const JOB_LABELS = {
    queued: "jobQueued", running: "jobRunning", succeeded: "jobSucceeded", failed: "jobFailed",
    revoked: "jobRevoked", retrying: "jobRetrying", cancelling: "jobCancelling",
  };

  /** The state a list item shows: its bar's, which is live, unless the record knows more. */
  function jobState(record, tracker) {
    const live = tracker && (tracker.cancelPending ? "cancelling"
      : tracker.document && DOC_JOB_STATES[tracker.document.state]);
    const known = record && record.state;
    if (live && (JOB_FINISHED.indexOf(live) >= 0 || JOB_FINISHED.indexOf(known) < 0)) return live;
    return known || live || "queued";
  }

  /** "Report · Running": a list item's title; a state without a label shows as it is. */
  function jobTitle(name, state, m) {
    const label = JOB_LABELS.hasOwnProperty(state) ? m[JOB_LABELS[state]] : state;
    return fmt(m.jobTitle, { name, state: label });
  }

  /**
   * Keeps a `.jobtastic-jobs` list in step with the owner's jobs; one bar per job. Each
   * title follows its bar live. The list rides the page stream (`job` and `removed`
   * events of <prefix>/events/jobs); without it (transport "polling", the stream refused
   * or failing) it polls GET <prefix>/jobs. While the list cannot be loaded (a 503 while
   * Redis is down, the network) it says so and retries with backoff, honouring
   * Retry-After; on the stream it says so between `reconnecting` and `resumed`.
   */
  class JobsList {
    constructor(section, opts) {
      this.section = section;
      this.opts = opts;
      this.url = jobsUrl(section.getAttribute("data-jobtastic-jobs-url"), settings.urlPrefix);
      const prefix = /^(.*)\/jobs$/.exec(this.url);
      this.prefix = prefix ? prefix[1] : prefixOf(settings.urlPrefix);
      this.hub = prefix && opts.transport !== "polling" ? pageStreamFor(this.prefix) : null;
      this.feed = null; // the page stream's watch, while the list rides it
      this.polling = !this.hub; // GET /jobs at opts.interval
      this.known = new Map(); // id -> record, as the stream sent them
      this.seenTemplate = section.getAttribute("data-jobtastic-seen-url") || "";
      this.list = section.querySelector(".jobtastic-jobs-list");
      this.empty = section.querySelector(".jobtastic-jobs-empty");
      this.note = section.querySelector(".jobtastic-jobs-status") || this.addNote();
      this.records = new Map(); // id -> the last record the server sent
      if (!dismissedJobs.has(section)) dismissedJobs.set(section, new Set());
      this.dismissed = dismissedJobs.get(section); // shared by a section's watchers
      Object.assign(this, { timer: null, stopped: false, delay: opts.interval, failures: 0 });
      this.refresh = this.refresh.bind(this);
      this.onUpdate = (event) => {
        const item = event.target.closest && event.target.closest("li.jobtastic-job");
        if (item && item.parentNode === this.list) this.update(item);
      };
    }

    start() {
      this.section.addEventListener("jobtastic:update", this.onUpdate);
      this.list.querySelectorAll("li.jobtastic-job").forEach((item) => this.update(item));
      if (this.hub) this.feed = this.hub.watchList(this);
      else this.refresh();
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.feed) this.feed.stop();
      this.section.removeEventListener("jobtastic:update", this.onUpdate);
      delete this.section.__jobtasticJobs;
    }

    // -- the page stream's listener --

    /** true: the list rides the stream (polling stops); false: it polls GET /jobs. */
    onFeed(live) {
      if (this.stopped || live === !this.polling) return;
      this.polling = !live;
      clearTimeout(this.timer);
      if (this.polling) this.refresh();
      else {
        this.known = new Map(this.records); // the stream goes on from the last list
        this.showNote("");
      }
    }

    onJob(record) {
      if (this.stopped || this.polling) return;
      this.known.set(record.id, record);
      this.renderKnown();
    }

    onRemoved(id) {
      if (this.stopped || this.polling) return;
      if (this.known.delete(id)) this.renderKnown();
    }

    onListTrouble() {
      if (!this.polling) this.showNote(settings.messages.jobsUnavailable);
    }

    onListRecovered() {
      if (!this.polling) this.showNote("");
    }

    renderKnown() {
      const key = (r) => Number(r.created_at) || 0;
      this.render(Array.from(this.known.values())
        .sort((a, b) => key(b) - key(a) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0)));
    }

    showNote(text) {
      setText(this.note, text);
      this.note.hidden = !this.note.textContent;
    }

    addNote() {
      const note = h("p", "jobtastic-jobs-status", { role: "status" });
      note.hidden = true;
      this.list.after(note);
      return note;
    }

    itemFor(job) {
      let item = this.list.querySelector('[data-job-id="' + CSS.escape(job.id) + '"]');
      if (!item) {
        item = h("li", "jobtastic-job", { "data-job-id": job.id });
        const bar = h("div", "jobtastic", { "data-jobtastic-task-id": job.id });
        item.append(h("div", "jobtastic-job-title"), bar);
        this.list.prepend(item);
        track(bar, { taskId: job.id, urlPrefix: this.prefix });
      }
      return item;
    }

    update(item) {
      const m = settings.messages;
      const id = item.getAttribute("data-job-id"), record = this.records.get(id);
      const bar = item.querySelector(".jobtastic");
      const title = item.querySelector(".jobtastic-job-title");
      if (!title) return;
      if (item.dataset.jobTitle == null) item.dataset.jobTitle = title.textContent.trim();
      const name = record ? record.description || record.task_name : item.dataset.jobTitle;
      const tracker = bar && trackers.get(bar), state = jobState(record, tracker);
      if (tracker) tracker.view.setRecord(record); // a canvas's parts, from its record too
      item.className = "jobtastic-job jobtastic-job-" + state;
      setText(title, jobTitle(name, state, m));
      const finished = JOB_FINISHED.indexOf(state) >= 0 && !(record && record.seen);
      let dismiss = item.querySelector(".jobtastic-job-dismiss");
      if (finished && this.seenTemplate && !dismiss) {
        dismiss = h("button", "jobtastic-job-dismiss", { type: "button" });
        // through the section's watcher then: watchJobs may have replaced this one
        const watcher = () => this.section.__jobtasticJobs || this;
        dismiss.addEventListener("click", () => watcher().markSeen(item, dismiss));
        item.append(dismiss);
      }
      if (dismiss) setText(dismiss, m.dismiss);
    }

    async markSeen(item, button) {
      const id = item.getAttribute("data-job-id");
      button.disabled = true;
      let res = null;
      try {
        res = await fetch(seenUrl(this.seenTemplate, id), {
          method: "POST", credentials: "same-origin",
          headers: { "X-Requested-With": "jobtastic", Accept: "application/json" },
        });
      } catch (e) { /* res stays null: keep the job, let the user try again */ }
      if (res && (res.ok || res.status === 404)) {
        this.dismissed.add(id);
        this.records.delete(id);
        item.remove();
        if (this.empty) this.empty.hidden = this.list.children.length > 0;
        if (this.polling) this.refresh(); // on the stream, its record comes as seen
      } else button.disabled = false;
    }

    render(jobs) {
      jobs = jobs.filter((job) => job && !this.dismissed.has(job.id));
      this.records.clear();
      for (const job of jobs) this.records.set(job.id, job);
      for (const item of Array.from(this.list.children)) {
        if (this.records.has(item.getAttribute("data-job-id"))) continue;
        const bar = item.querySelector(".jobtastic"), tracker = bar && trackers.get(bar);
        if (tracker) tracker.stop(); // its job left the list: stop following it
        item.remove();
      }
      for (const job of jobs.slice().reverse()) this.update(this.itemFor(job));
      if (this.empty) this.empty.hidden = jobs.length > 0;
    }

    /** Load GET /jobs now; while polling, the next load follows (backoff on trouble). */
    async refresh() {
      clearTimeout(this.timer);
      let wait = this.opts.interval;
      try {
        const jobs = await this.load();
        if (!this.polling) { // on the stream: a one-off load, what it sends goes on from it
          this.known = new Map(jobs.filter((job) => job && job.id).map((job) => [job.id, job]));
        }
        this.render(jobs);
        this.failures = 0;
        this.delay = this.opts.interval;
        if (this.polling) setText(this.note, "");
      } catch (e) {
        this.failures += 1;
        const retryAfter = (e && e.retryAfter) || 0;
        this.delay = Math.min(this.opts.maxInterval, Math.max(this.delay * 2, retryAfter));
        wait = this.delay;
        if (this.polling) setText(this.note, settings.messages.jobsUnavailable);
      }
      this.note.hidden = !this.note.textContent;
      if (!this.stopped && this.polling) this.timer = setTimeout(this.refresh, wait);
    }

    /** The jobs the server lists; throws (with retryAfter, ms) when it can't. */
    async load() {
      const res = await fetch(this.url, {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
      });
      const body = res.ok ? await res.json() : null;
      if (!body || !Array.isArray(body.jobs)) {
        const retryAfter = Number(res.headers.get("Retry-After")) * 1000 || 0;
        throw Object.assign(new Error("HTTP " + res.status), { retryAfter });
      }
      return body.jobs;
    }
  }

  /**
   * Watch a jobs list (options: transport "auto" | "polling", interval, maxInterval: the
   * timings of GET /jobs when it polls). Watching a section again returns its watcher, or
   * with options replaces it. The watcher has refresh(), stop(), polling, failures, delay.
   */
  function watchJobs(section, options) {
    section = resolve(section);
    const current = section.__jobtasticJobs;
    if (current) {
      if (!options) return current;
      current.stop();
    }
    const opts = Object.assign({ transport: "auto", interval: 3000, maxInterval: 30000 }, options);
    const jobs = new JobsList(section, opts);
    section.__jobtasticJobs = jobs;
    jobs.start();
    return jobs;
  }

  const Jobtastic = {
    version: "0.1.0", settings, configure, track, scan, formatDuration, registerJQuery, Tracker,
    watchJobs,
    /** The page stream of a URL prefix (settings.urlPrefix by default): mode, cursor, ... */
    pageStream: (prefix) => pageStreamFor(prefix == null ? settings.urlPrefix : prefix),
    get: (target) => trackers.get(resolve(target)) || null,
  };

  function autoInit() {
    registerJQuery();
    if (!settings.autoInit) return;
    scan(document);
    document.querySelectorAll(".jobtastic-jobs").forEach((section) => watchJobs(section));
  }

  if (window && document) {
    window.Jobtastic = Jobtastic;
    registerJQuery();
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", autoInit);
    else setTimeout(autoInit, 0);
  }

  // Node (`require("static/jobtastic.js")`, for tests/js/): the parts that need no DOM.
  if (typeof module === "object" && module.exports) {
    module.exports = {
      settings, fmt, formatDuration, stepsLeft, errorText, progressText, describe, errorIdText,
      stepDuration, countsText, partCounts, partsText, partsShown, deriveUrl, endpoints,
      trackerOptions, readData, jobsUrl, seenUrl, classifyAnswer, Poller, Stream, streams, StateMachine, jobState, jobTitle,
      sharedPrefix, BatchPoller, PageStream, SharedFeed, pageStreamFor, SYNC_DELAY, STREAM_RETRY,
    };
  }
})(typeof window === "object" ? window : null, typeof document === "object" ? document : null);
