// Unit tests of static/jobtastic.js's parts that need no DOM: `node --test tests/js/`.
// The browser behaviour as a whole is tested by tests/test_browser.py.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const J = require(path.join(__dirname, "..", "..", "static", "jobtastic.js"));

const options = (extra) => J.trackerOptions(J.settings, {}, Object.assign({ taskId: "t1" }, extra));
const model = (state, document, extra) => Object.assign({ state, document }, extra);
const text = (m, o) => J.describe(m, o || options()).text;

// ---- formatting --------------------------------------------------------------------------

test("formatDuration: seconds, minutes and hours, whole minutes from 10 minutes on", () => {
  assert.equal(J.formatDuration(0), "0 s");
  assert.equal(J.formatDuration(42.4), "42 s");
  assert.equal(J.formatDuration(65), "1 min 5 s");
  assert.equal(J.formatDuration(120), "2 min");
  assert.equal(J.formatDuration(605), "10 min");
  assert.equal(J.formatDuration(7500), "2 h 5 min");
  assert.equal(J.formatDuration(3599.6), "1 h");
  assert.equal(J.formatDuration(-5), "0 s");
  assert.equal(J.formatDuration("nonsense"), "0 s");
});

test("formatDuration uses the messages it is given", () => {
  const m = { hours: "{n} Std.", minutes: "{n} Min.", seconds: "{n} Sek." };
  assert.equal(J.formatDuration(65, m), "1 Min. 5 Sek.");
  assert.equal(J.formatDuration(3725, m), "1 Std. 2 Min.");
});

test("fmt fills known placeholders once and leaves unknown ones", () => {
  assert.equal(J.fmt("{a} and {b}", { a: "{b}" }), "{b} and {b}");
});

test("progress text: estimating, time left, almost done", () => {
  const progress = (doc) => text(model("PROGRESS", doc));
  assert.equal(progress({ progress_percent: 42.7, time_remaining: 65 }), "42% · about 1 min 5 s left");
  assert.equal(progress({ progress_percent: 42.7 }), "Starting… estimating time remaining");
  assert.equal(progress({ progress_percent: 0, time_remaining: 30 }), "Starting… estimating time remaining");
  assert.equal(progress({ progress_percent: 99.9, time_remaining: 0.4 }), "99% · almost done");
});

test("progress text: declared top-level steps still to run are never 'almost done'", () => {
  const steps = [
    { key: "a", state: "done" }, { key: "b", state: "running" },
    { key: "b1", state: "pending", depth: 1 }, { key: "c", state: "pending" },
  ];
  const doc = { progress_percent: 100, time_remaining: 0, steps };
  assert.equal(text(model("PROGRESS", doc)), "100% · 2 steps to go");
  doc.steps = steps.slice(0, 3);
  assert.equal(text(model("PROGRESS", doc)), "100% · 1 step to go");
  assert.equal(J.stepsLeft("not a list"), 0);
});

test("the bar's percent is clamped to 0..100 and floored", () => {
  const o = options();
  const shown = (pct) => J.describe(model("PROGRESS", { progress_percent: pct, time_remaining: 5 }), o);
  assert.deepEqual([shown(150).pct, shown(150).percent], [100, 100]);
  assert.deepEqual([shown(-3).pct, shown(-3).percent], [0, 0]);
  assert.deepEqual([shown(33.9).pct, shown(33.9).percent], [33.9, 33]);
  assert.equal(shown(33.9).look, "value");
});

test("describe: each state's look and text", () => {
  const o = options();
  const both = (m) => { const d = J.describe(m, o); return [d.look, d.text]; };
  assert.deepEqual(both(model("PENDING", null)), ["busy", "Waiting for a worker…"]);
  assert.deepEqual(both(model("RETRY", {})), ["busy", "Retrying…"]);
  assert.deepEqual(both(model("SUCCESS", {})), ["success", "Done"]);
  assert.deepEqual(both(model("FAILURE", { error: { message: "Division by zero" } })),
    ["danger", "Division by zero"]);
  assert.deepEqual(both(model("FAILURE", {})), ["danger", "The job failed"]);
  assert.deepEqual(both(model("ERROR", { error: "HTTP 400" })), ["danger", "HTTP 400"]);
  assert.deepEqual(both(model("REVOKED", {})), ["muted", "Cancelled"]);
  assert.deepEqual(both(model("UNKNOWN", {})), ["muted", "This job could not be found"]);
});

test("describe: cancelling and connection trouble override the state's text", () => {
  const running = { progress_percent: 50, time_remaining: 10 };
  assert.equal(text(model("PROGRESS", running, { cancelPending: true })), "Cancelling…");
  const trouble = { connectionError: { type: "network" } };
  assert.equal(text(model("PROGRESS", running, trouble)), "Can't reach the server, retrying…");
  assert.equal(text(model("SUCCESS", {}, Object.assign({ finished: true }, trouble))), "Done");
});

test("describe uses the tracker's messages and formatDuration", () => {
  const o = options({
    messages: { progress: "{percent} % – noch {remaining}" },
    formatDuration: (s) => s + " Sekunden",
  });
  assert.equal(text(model("PROGRESS", { progress_percent: 10, time_remaining: 7 }), o),
    "10 % – noch 7 Sekunden");
});

test("the error reference is shown once: not when the text already quotes it", () => {
  const m = J.settings.messages;
  const doc = { error: { error_id: "abc123" } };
  assert.equal(J.errorIdText("FAILURE", doc, "Something broke", m), "Error reference: abc123");
  assert.equal(J.errorIdText("FAILURE", doc, "Failed (reference abc123)", m), "");
  assert.equal(J.errorIdText("SUCCESS", doc, "Done", m), "");
  assert.equal(J.errorIdText("FAILURE", null, "", m), "");
});

test("step durations and counts", () => {
  const o = options();
  assert.equal(J.stepDuration(3.14159, o), "3.1 s");
  assert.equal(J.stepDuration(65, o), "1 min 5 s");
  assert.equal(J.stepDuration(null, o), "");
  assert.equal(J.stepDuration("soon", o), "");
  assert.equal(J.countsText({ success: 3, failure: 1, pending: 6 }, o.messages),
    "3 done, 1 failed, 6 to go");
  assert.equal(J.countsText({}, o.messages), "0 done, 0 failed, 0 to go");
  assert.equal(J.countsText(null, o.messages), "");
});

// ---- URLs and options --------------------------------------------------------------------

test("URLs from the prefix: trailing slashes dropped, the id encoded", () => {
  assert.deepEqual(J.endpoints({ urlPrefix: "/api/jobs//", taskId: "a b/c" }), {
    statusUrl: "/api/jobs/status/a%20b%2Fc",
    eventsUrl: "/api/jobs/events/a%20b%2Fc",
    cancelUrl: "/api/jobs/cancel/a%20b%2Fc",
  });
});

test("URLs derived from a given statusUrl keep its path and query", () => {
  const o = { urlPrefix: "/jobtastic", taskId: "t1", statusUrl: "https://x.test/p/status/t1?k=v" };
  assert.deepEqual(J.endpoints(o), {
    statusUrl: "https://x.test/p/status/t1?k=v",
    eventsUrl: "https://x.test/p/events/t1?k=v",
    cancelUrl: "https://x.test/p/cancel/t1?k=v",
  });
});

test("a statusUrl without /status/<id> leaves events and cancel on the prefix", () => {
  const o = { urlPrefix: "/jt", taskId: "t1", statusUrl: "/custom?id=t1", cancelUrl: "/stop/t1" };
  assert.deepEqual(J.endpoints(o), {
    statusUrl: "/custom?id=t1", eventsUrl: "/jt/events/t1", cancelUrl: "/stop/t1",
  });
  assert.equal(J.deriveUrl("/a/status/", "events"), null);
});

test("tracker options: defaults, then data attributes, then options; intervals sane", () => {
  const data = J.readData({ dataset: {
    jobtasticTaskId: "from-data", jobtasticUrl: "/x/status/from-data",
    jobtasticPollInterval: "250", jobtasticCancelButton: "true", jobtasticTheme: "bootstrap",
  } });
  const o = J.trackerOptions(J.settings, data, { theme: "plain", maxPollInterval: 100 });
  assert.equal(o.taskId, "from-data");
  assert.equal(o.cancelUrl, "/x/cancel/from-data");
  assert.equal(o.theme, "plain");
  assert.equal(o.cancelButton, true);
  assert.equal(o.pollInterval, 250);
  assert.equal(o.maxPollInterval, 250);
  assert.equal(o.messages.success, "Done");
  assert.equal(J.trackerOptions(J.settings, {}, { taskId: 1, pollInterval: 5 }).pollInterval, 50);
  assert.throws(() => J.trackerOptions(J.settings, {}, {}), /no taskId/);
  assert.throws(() => J.trackerOptions(J.settings, {}, { taskId: "" }), /no taskId/);
});

test("data attributes: a cancel button can be switched off, a bad poll interval is ignored", () => {
  assert.deepEqual(J.readData({ dataset: { jobtasticCancelButton: "off" } }), { cancelButton: false });
  assert.deepEqual(J.readData({ dataset: { jobtasticCancelButton: "" } }), { cancelButton: true });
  assert.deepEqual(J.readData({ dataset: { jobtasticPollInterval: "soon" } }), {});
});

test("the job list's URLs", () => {
  assert.equal(J.jobsUrl("/mounted/jobs", "/jobtastic"), "/mounted/jobs");
  assert.equal(J.jobsUrl(null, "/jobtastic"), "/jobtastic/jobs");
  assert.equal(J.jobsUrl("", "/jt/"), "/jt/jobs");
  assert.equal(J.seenUrl("/jt/jobs/00000000-0000-0000-0000-000000000000/seen", "abc"), "/jt/jobs/abc/seen");
});

test("a poll's answer: document, trouble or fatal", () => {
  const doc = { state: "PROGRESS" };
  assert.equal(J.classifyAnswer(200, true, doc), "document");
  assert.equal(J.classifyAnswer(404, false, { state: "UNKNOWN" }), "document");
  assert.equal(J.classifyAnswer(404, false, { error: "nope" }), "fatal");
  assert.equal(J.classifyAnswer(200, true, null), "trouble"); // a proxy's HTML page, say
  for (const status of [500, 502, 503, 408, 429]) {
    assert.equal(J.classifyAnswer(status, false, null), "trouble", status);
  }
  for (const status of [400, 403, 410]) assert.equal(J.classifyAnswer(status, false, doc), "fatal");
});

// ---- the job list's text -----------------------------------------------------------------

test("job titles come from messages", () => {
  const m = J.settings.messages;
  assert.equal(J.jobTitle("Report", "running", m), "Report · Running");
  assert.equal(J.jobTitle("Report", "succeeded", m), "Report · Done");
  assert.equal(J.jobTitle("Report", "cancelling", m), "Report · Cancelling…");
  assert.equal(J.jobTitle("Report", "sideways", m), "Report · sideways");
  const de = Object.assign({}, m, { jobTitle: "{state}: {name}", jobFailed: "Fehlgeschlagen" });
  assert.equal(J.jobTitle("Bericht {state}", "failed", de), "Fehlgeschlagen: Bericht {state}");
  for (const key of ["dismiss", "jobQueued", "jobRunning", "jobSucceeded", "jobFailed",
    "jobRevoked", "jobRetrying", "jobCancelling"]) {
    assert.equal(typeof m[key], "string", key);
  }
});

test("a list item's state: the live bar's, unless the record knows it finished", () => {
  const bar = (state, cancelPending) => ({ cancelPending: !!cancelPending, document: { state } });
  assert.equal(J.jobState({ state: "queued" }, bar("PROGRESS")), "running");
  assert.equal(J.jobState({ state: "failed" }, bar("PENDING")), "failed");
  assert.equal(J.jobState({ state: "failed" }, bar("SUCCESS")), "succeeded");
  assert.equal(J.jobState({ state: "running" }, bar("PROGRESS", true)), "cancelling");
  assert.equal(J.jobState(null, { cancelPending: false, document: null }), "queued");
  assert.equal(J.jobState({ state: "retrying" }, null), "retrying");
});

// ---- the state machine, with a fake view and fake transports -----------------------------

/**
 * A machine whose view, transports, emit and sendCancel record each call in `calls`:
 * ["render", state, text], ["poller.start", delay], ["stream.start"], ["emit", type, data].
 */
function machine(extra, fakes) {
  fakes = Object.assign({ streamOpens: true, cancelAnswer: { ok: true, body: null } }, fakes);
  const o = options(extra), calls = [], t = {};
  // A transport: start/stop/poke logged; a stream also has `mode` and `live` (open now).
  const fake = (name, started) => (listener) => ({
    listener, mode: "events", live: false,
    start(delay) {
      calls.push(delay === undefined ? [name + ".start"] : [name + ".start", delay]);
      this.live = !!started;
      return started;
    },
    stop() { calls.push([name + ".stop"]); this.live = false; },
    poke() { calls.push([name + ".poke"]); },
  });
  t.machine = new J.StateMachine(o, {
    view: { render: (m) => calls.push(["render", m.state, J.describe(m, o).text]) },
    emit: (type, args) => calls.push(["emit", type, args[0]]),
    sendCancel: async (url) => { calls.push(["sendCancel", url]); return fakes.cancelAnswer; },
    poller: fake("poller", undefined),
    stream: fake("stream", fakes.streamOpens),
  });
  t.calls = calls;
  t.take = () => calls.splice(0); // the calls since the last take
  return t;
}

const doc = (state, extra) => Object.assign({ task_id: "t1", state }, extra);
const running = (pct) => doc("PROGRESS", { progress_percent: pct, time_remaining: 30 });

test("machine: the stream first, then progress and success", () => {
  const { machine: m, take } = machine();
  m.start();
  assert.deepEqual(take(), [["render", "PENDING", "Waiting for a worker…"], ["stream.start"]]);
  assert.equal(m.transport, "events");

  const progress = running(40);
  m.stream.listener.onDocument(progress);
  assert.deepEqual(take(), [
    ["render", "PROGRESS", "40% · about 30 s left"],
    ["emit", "update", progress], ["emit", "progress", progress],
  ]);

  const done = doc("SUCCESS", { ready: true, result: 42 });
  m.stream.listener.onDocument(done);
  assert.deepEqual(take(), [
    ["stream.stop"], ["poller.stop"], ["render", "SUCCESS", "Done"],
    ["emit", "update", done], ["emit", "success", 42], ["emit", "finish", done],
  ]);
  assert.equal(m.finished, true);
  assert.equal(m.transport, null);
  assert.equal(m.document, done);

  m.stream.listener.onDocument(running(99)); // late: ignored
  assert.deepEqual(take(), []);
});

test("machine: transport 'polling' never opens a stream", () => {
  const { machine: m, take } = machine({ transport: "polling" });
  m.start();
  assert.deepEqual(take(), [
    ["render", "PENDING", "Waiting for a worker…"], ["stream.stop"], ["poller.start", 0],
  ]);
  assert.equal(m.transport, "polling");
});

test("machine: a stream the page may not open means polling from the start", () => {
  const { machine: m, take } = machine({}, { streamOpens: false });
  m.start();
  assert.deepEqual(take().slice(1), [["stream.start"], ["stream.stop"], ["poller.start", 0]]);
  assert.equal(m.transport, "polling");
});

test("machine: a stream refused with 429 falls back to polling, which carries on", () => {
  const { machine: m, take } = machine();
  m.start();
  take();
  m.stream.listener.onGiveUp("refused");
  assert.deepEqual(take(), [["stream.stop"], ["poller.start", 0]]);
  assert.equal(m.transport, "polling");
  m.poller.listener.onDocument(running(10));
  assert.equal(m.state, "PROGRESS");
  assert.deepEqual(take()[0], ["render", "PROGRESS", "10% · about 30 s left"]);
});

test("machine: progress, cancel, cancel_pending, then revoked", async () => {
  const { machine: m, take } = machine({ transport: "polling" });
  m.start();
  m.poller.listener.onDocument(running(20));
  take();

  const sent = m.cancel();
  assert.deepEqual(take(), [["render", "PROGRESS", "Cancelling…"], ["sendCancel", "/jobtastic/cancel/t1"]]);
  assert.equal(m.cancelPending, true);
  assert.equal(await m.cancel(), false); // one cancel at a time
  assert.equal(await sent, true);
  assert.deepEqual(take(), [["poller.poke"], ["render", "PROGRESS", "Cancelling…"]]);

  const pending = Object.assign(running(30), { cancel_pending: true });
  m.poller.listener.onDocument(pending);
  assert.deepEqual(take()[0], ["render", "PROGRESS", "Cancelling…"]);

  const revoked = doc("REVOKED", { ready: true });
  m.poller.listener.onDocument(revoked);
  assert.deepEqual(take(), [
    ["stream.stop"], ["poller.stop"], ["render", "REVOKED", "Cancelled"],
    ["emit", "update", revoked], ["emit", "finish", revoked],
  ]);
  assert.equal(m.cancelPending, false);
});

test("machine: cancel_pending from the server shows cancelling without a click", () => {
  const { machine: m, take } = machine();
  m.start();
  take();
  m.stream.listener.onDocument(Object.assign(running(50), { cancel_pending: true }));
  assert.deepEqual(take()[0], ["render", "PROGRESS", "Cancelling…"]);
  assert.equal(m.cancelPending, true);
});

test("machine: a refused cancel says so and can be tried again", async () => {
  const { machine: m, take } = machine({}, { cancelAnswer: { ok: false, body: null } });
  m.start();
  m.stream.listener.onDocument(running(20));
  take();
  assert.equal(await m.cancel(), false);
  assert.deepEqual(take().slice(1), [["sendCancel", "/jobtastic/cancel/t1"],
    ["render", "PROGRESS", "20% · about 30 s left"]]);
  assert.equal(m.notice, "Could not cancel the job");
  assert.equal(m.cancelPending, false);
});

test("machine: a cancel answered with the job's document shows it at once", async () => {
  const revoked = doc("REVOKED", { ready: true });
  const { machine: m, take } = machine({}, { cancelAnswer: { ok: true, body: revoked } });
  m.start();
  take();
  await m.cancel();
  const calls = take();
  assert.ok(calls.some((c) => c[0] === "render" && c[1] === "REVOKED" && c[2] === "Cancelled"));
  assert.deepEqual(calls.filter((c) => c[0] === "emit").map((c) => c[1]), ["update", "finish"]);
  assert.equal(m.finished, true);
  assert.ok(!calls.some((c) => c[0] === "poller.poke"));
});

test("machine: a failure shows its message and fires failure then finish", () => {
  const { machine: m, take } = machine();
  m.start();
  take();
  const error = { type: "ZeroDivisionError", message: "division by zero", error_id: "e1" };
  const failed = doc("FAILURE", { ready: true, error });
  m.stream.listener.onDocument(failed);
  assert.deepEqual(take().slice(2), [
    ["render", "FAILURE", "division by zero"],
    ["emit", "update", failed], ["emit", "failure", error], ["emit", "finish", failed],
  ]);
});

test("machine: network errors back off, show after three, and recover", () => {
  const { machine: m, take } = machine({ transport: "polling", pollInterval: 1000, maxPollInterval: 10000 });
  m.start();
  take();
  const trouble = { type: "network", message: "no response" };
  m.poller.listener.onTrouble(trouble);
  m.poller.listener.onTrouble(trouble);
  assert.deepEqual(take(), [["poller.start", 2000], ["poller.start", 4000]]);
  m.poller.listener.onTrouble(trouble);
  const shown = take();
  assert.deepEqual(shown[0], ["render", "PENDING", "Can't reach the server, retrying…"]);
  assert.deepEqual(shown[1], ["emit", "error", { attempts: 3, type: "network", message: "no response" }]);
  assert.deepEqual(shown[2], ["poller.start", 10000]);
  m.poller.listener.onTrouble(trouble);
  assert.deepEqual(take(), [["poller.start", 10000]]); // said once
  assert.equal(m.connectionError.attempts, 3);

  m.poller.listener.onDocument(running(5));
  assert.deepEqual(take()[0], ["render", "PENDING", "Waiting for a worker…"]); // the error gone
  assert.equal(m.connectionError, null);
  m.poller.listener.onTrouble(trouble);
  assert.deepEqual(take(), [["poller.start", 2000]]); // the backoff starts over
});

test("machine: a 4xx is final: an ERROR state and a final error event", () => {
  const { machine: m, take } = machine({ transport: "polling" });
  m.start();
  take();
  m.poller.listener.onFatal(403, { error: "Not your job" });
  const calls = take();
  assert.deepEqual(calls[0], ["emit", "error", { type: "http", status: 403, message: "Not your job", final: true }]);
  assert.ok(calls.some((c) => c[0] === "render" && c[1] === "ERROR" && c[2] === "Not your job"));
  assert.equal(m.finished, true);
  assert.equal(m.state, "ERROR");
  m.poller.listener.onFatal(400, null);
  assert.deepEqual(take().map((c) => c[1]), ["error"]); // finished: no new state
  assert.equal(m.state, "ERROR");
});

test("machine: an UNKNOWN job is asked again before it is shown as not found", () => {
  const { machine: m, take } = machine({ unknownRetries: 2, pollInterval: 500 });
  m.start();
  take();
  m.stream.listener.onDocument(doc("UNKNOWN"));
  assert.deepEqual(take(), [["stream.stop"], ["poller.start", 500]]); // not rendered
  m.poller.listener.onDocument(doc("UNKNOWN"));
  assert.deepEqual(take(), []);
  m.poller.listener.onDocument(doc("UNKNOWN"));
  const calls = take();
  assert.ok(calls.some((c) => c[0] === "render" && c[2] === "This job could not be found"));
  assert.equal(m.finished, true);
});

// ---- the transports, with a fake fetch and a fake EventSource ----------------------------

test("poller: documents, trouble and fatal answers go to the listener", async (t) => {
  const answers = [];
  const realFetch = global.fetch;
  t.after(() => { global.fetch = realFetch; });
  global.fetch = async (url) => {
    const next = answers.shift();
    if (next === "offline") throw new TypeError("Failed to fetch");
    return { status: next[0], ok: next[0] < 300, statusText: "S" + next[0], json: async () => next[1] };
  };
  const heard = [];
  const listener = {
    onDocument: (d) => heard.push(["document", d.state]),
    onTrouble: (info) => heard.push(["trouble", info.type, info.status]),
    onFatal: (status) => heard.push(["fatal", status]),
  };
  const poller = new J.Poller("/s", 60000, listener);
  answers.push([200, { state: "PROGRESS" }], [503, null], "offline", [404, { state: "UNKNOWN" }], [400, {}]);
  const scheduled = [];
  for (let i = 0; i < 5; i++) {
    poller.active = true;
    await poller.poll();
    scheduled.push(!!poller.timer); // the next poll, after a document only
    poller.stop();
  }
  assert.deepEqual(heard, [["document", "PROGRESS"], ["trouble", "http", 503],
    ["trouble", "network", undefined], ["document", "UNKNOWN"], ["fatal", 400]]);
  assert.deepEqual(scheduled, [true, false, false, true, false]);
  assert.equal(poller.timer, null);
  answers.push([200, { state: "SUCCESS" }]);
  await poller.poll(); // stopped: no request, nothing heard
  assert.equal(heard.length, 5);
  assert.equal(answers.length, 1);
});

class FakeEventSource {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.handlers = {};
    this.closed = false;
    FakeEventSource.last = this;
  }
  addEventListener(type, fn) { (this.handlers[type] = this.handlers[type] || []).push(fn); }
  fire(type, data) { for (const fn of this.handlers[type] || []) fn({ data }); }
  close() { this.closed = true; this.readyState = 2; }
}

function resetStreams() {
  J.streams.open = 0;
  J.streams.refusedAt = -Infinity;
}

test("stream: documents to the listener; refused before the first, new streams wait", () => {
  resetStreams();
  const heard = [];
  const listener = { onDocument: (d) => heard.push(d.state), onGiveUp: (why) => heard.push(why) };
  const first = new J.Stream("/e/1", 4, listener, FakeEventSource);
  assert.equal(first.start(), true);
  assert.equal(J.streams.open, 1);
  FakeEventSource.last.fire("error");
  assert.deepEqual(heard, ["refused"]);
  first.stop();
  assert.equal(J.streams.open, 0);
  const second = new J.Stream("/e/2", 4, listener, FakeEventSource);
  assert.equal(second.start(), false, "bars started just after a refusal poll");
  J.streams.refusedAt = performance.now() - 6000;
  assert.equal(second.start(), true);
  FakeEventSource.last.fire("status", JSON.stringify({ state: "PROGRESS" }));
  FakeEventSource.last.fire("message", "not json");
  assert.deepEqual(heard, ["refused", "PROGRESS"]);
  second.stop();
  FakeEventSource.last.fire("status", JSON.stringify({ state: "SUCCESS" })); // closed: ignored
  assert.deepEqual(heard, ["refused", "PROGRESS"]);
});

test("stream: one reconnect after a stream that worked, then give up; a page budget", () => {
  resetStreams();
  const heard = [];
  const listener = { onDocument: (d) => heard.push(d.state), onGiveUp: (why) => heard.push(why) };
  const stream = new J.Stream("/e/1", 1, listener, FakeEventSource);
  assert.equal(stream.start(), true);
  const es = FakeEventSource.last;
  es.fire("status", JSON.stringify({ state: "STARTED" }));
  es.fire("error");
  assert.deepEqual(heard, ["STARTED"]); // the browser reconnects
  es.fire("error");
  assert.deepEqual(heard, ["STARTED", "broken"]);
  assert.equal(new J.Stream("/e/2", 1, listener, FakeEventSource).start(), false, "maxStreams");
  es.fire("unavailable");
  assert.deepEqual(heard, ["STARTED", "broken", "unavailable"]);
  stream.stop();
  assert.equal(new J.Stream("/e/3", 1, listener, FakeEventSource).start(), true);
  assert.equal(new J.Stream("/e/4", 1, listener, undefined).start(), false, "no EventSource");
  resetStreams();
});
