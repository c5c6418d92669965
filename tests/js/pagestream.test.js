// Unit tests of the page stream (static/jobtastic.js's PageStream, BatchPoller, SharedFeed):
// one EventSource for all bars and the jobs list, reopened with a cursor, and one batched
// poll when streaming is unavailable. A fake clock, EventSource and fetch: `node --test tests/js/`.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const J = require(path.join(__dirname, "..", "..", "static", "jobtastic.js"));

const A = "aaaaaaaa-0000-4000-8000-000000000001";
const B = "bbbbbbbb-0000-4000-8000-000000000002";
const C = "cccccccc-0000-4000-8000-000000000003";
const D = "dddddddd-0000-4000-8000-000000000004";

const settle = () => new Promise((resolve) => setImmediate(resolve));

/** A fake clock, EventSource and fetch for one PageStream. */
function fakeEnv() {
  const env = { t: 0, timers: [], seq: 0, sources: [], fetches: [], answers: [] };
  env.setTimeout = (fn, ms) => {
    const id = ++env.seq;
    env.timers.push({ id, at: env.t + (ms || 0), fn });
    return id;
  };
  env.clearTimeout = (id) => { env.timers = env.timers.filter((timer) => timer.id !== id); };
  env.now = () => env.t;
  /** Run every timer due within `ms`, letting promises settle in between. */
  env.tick = async (ms) => {
    const end = env.t + (ms || 0);
    for (;;) {
      for (let i = 0; i < 5; i++) await settle();
      env.timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = env.timers[0];
      if (!next || next.at > end) break;
      env.timers.shift();
      env.t = Math.max(env.t, next.at);
      next.fn();
    }
    env.t = end;
    for (let i = 0; i < 5; i++) await settle();
  };
  class FakeEventSource {
    constructor(url) {
      Object.assign(this, { url, readyState: 0, handlers: {}, closed: false });
      env.sources.push(this);
    }
    addEventListener(type, fn) { (this.handlers[type] = this.handlers[type] || []).push(fn); }
    dispatch(type, event) { for (const fn of this.handlers[type] || []) fn(event); }
    open() { this.readyState = 1; this.dispatch("open", {}); }
    send(type, data, lastEventId) {
      this.dispatch(type, { data: JSON.stringify(data), lastEventId: lastEventId || "" });
    }
    /** readyState 2: an HTTP error (429, 404); 0: the browser reconnects. */
    fail(readyState) { this.readyState = readyState; this.dispatch("error", {}); }
    close() { this.closed = true; this.readyState = 2; }
  }
  env.EventSource = FakeEventSource;
  env.fetch = async (url) => {
    env.fetches.push(url);
    const [status, body, retryAfter] = env.answers.length ? env.answers.shift() : [503, null];
    if (status === "offline") throw new TypeError("Failed to fetch");
    return {
      status, ok: status < 300, statusText: "S" + status, json: async () => body,
      headers: { get: (name) => (name === "Retry-After" && retryAfter ? String(retryAfter) : null) },
    };
  };
  env.open = () => env.sources.filter((es) => !es.closed);
  env.last = () => env.sources[env.sources.length - 1];
  return env;
}

/** A bar as the page stream sees it (the StateMachine's feed methods), logging calls. */
function bar(log, name) {
  const say = (...what) => log.push([name, ...what]);
  return {
    onDocument: (doc) => say("doc", doc.state),
    onTransport: (mode) => say("transport", mode),
    onFeedTrouble: (info) => say("trouble", info.type, info.status),
    onFeedOutage: () => say("outage"),
    onFeedRecovered: () => say("recovered"),
    onFatal: (status) => say("fatal", status),
  };
}

function list(log) {
  const say = (...what) => log.push(["list", ...what]);
  return {
    onJob: (record) => say("job", record.id, record.state),
    onRemoved: (id) => say("removed", id),
    onListTrouble: () => say("trouble"),
    onListRecovered: () => say("recovered"),
    onFeed: (live) => say("feed", live),
  };
}

const doc = (id, state, extra) => Object.assign({ task_id: id, state }, extra);
const done = (id) => doc(id, "SUCCESS", { ready: true, result: id });
const query = (url) => new URL(url, "http://x").searchParams;
const idsOf = (url) => (query(url).get("ids") || "").split(",").filter(Boolean).sort();
const only = (log, kind) => log.filter((entry) => entry[1] === kind);

function setup() {
  J.streams.open = 0;
  const env = fakeEnv();
  return { env, hub: new J.PageStream("/jt", env), log: [] };
}

test("sharedPrefix: bars on the default URLs ride the page stream, others keep their own", () => {
  const o = (extra) => J.trackerOptions(J.settings, {}, Object.assign({ taskId: A }, extra));
  assert.equal(J.sharedPrefix(o()), "/jobtastic");
  assert.equal(J.sharedPrefix(o({ urlPrefix: "/api/jobs/" })), "/api/jobs");
  assert.equal(J.sharedPrefix(o({ statusUrl: "/mounted/status/" + A })), "/mounted");
  assert.equal(J.sharedPrefix(o({ statusUrl: "/jobtastic/status/" + A + "?via=x" })), null);
  assert.equal(J.sharedPrefix(o({ eventsUrl: "/elsewhere/" + A })), null);
  assert.equal(J.sharedPrefix(o({ transport: "polling" })), null);
  assert.equal(J.sharedPrefix(o({ pageStream: false })), null);
  assert.equal(J.sharedPrefix(o({ taskId: "not-a-uuid" })), null, "a batch with it is a 400");
  assert.equal(J.sharedPrefix(o({ transport: "events" })), "/jobtastic");
});

test("page stream: bars added together share one EventSource", async () => {
  const { env, hub, log } = setup();
  hub.subscribe(A, bar(log, "a"));
  hub.subscribe(B, bar(log, "b"));
  hub.subscribe(C, bar(log, "c"));
  assert.equal(env.sources.length, 0, "debounced");
  await env.tick(J.SYNC_DELAY);
  assert.equal(env.sources.length, 1);
  const es = env.last();
  assert.equal(new URL(es.url, "http://x").pathname, "/jt/events");
  assert.deepEqual(idsOf(es.url), [A, B, C].sort());
  assert.equal(J.streams.open, 1);
  assert.equal(hub.mode, "events");
  es.open();
  es.send("status", doc(B, "PROGRESS", { progress_percent: 50 }));
  assert.deepEqual(log.filter((e) => e[1] === "doc"), [["b", "doc", "PROGRESS"]]);
});

test("page stream: a bar added later reopens it once, with the cursor", async () => {
  const { env, hub, log } = setup();
  hub.subscribe(A, bar(log, "a"));
  await env.tick(J.SYNC_DELAY);
  const first = env.last();
  first.open();
  first.send("status", doc(A, "PROGRESS"), "1.aaaaaaaa0f0f0f");
  hub.subscribe(B, bar(log, "b"));
  hub.subscribe(C, bar(log, "c"));
  await env.tick(J.SYNC_DELAY);
  assert.equal(env.sources.length, 2, "one reopen for both");
  assert.equal(first.closed, true);
  assert.deepEqual(idsOf(env.last().url), [A, B, C].sort());
  assert.equal(query(env.last().url).get("cursor"), "1.aaaaaaaa0f0f0f");
  assert.equal(J.streams.open, 1);
});

test("page stream: a removed running bar reopens it without its job; final jobs are dropped", async () => {
  const { env, hub, log } = setup();
  const a = bar(log, "a"), b = bar(log, "b"), c = bar(log, "c");
  hub.subscribe(A, a);
  hub.subscribe(B, b);
  hub.subscribe(C, c);
  await env.tick(J.SYNC_DELAY);
  env.last().open();
  // A finishes: its bar stops; the server dropped it, so no reopen.
  env.last().send("status", done(A));
  hub.unsubscribe(A, a);
  await env.tick(J.SYNC_DELAY);
  assert.equal(env.sources.length, 1);
  // B's bar is stopped while its job runs: reopened with C alone.
  hub.unsubscribe(B, b);
  await env.tick(J.SYNC_DELAY);
  assert.equal(env.sources.length, 2);
  assert.deepEqual(idsOf(env.last().url), [C]);
  // The same bar tracked again in one go (stop, then subscribe): no reopen.
  hub.unsubscribe(C, c);
  hub.subscribe(C, c);
  await env.tick(J.SYNC_DELAY);
  assert.equal(env.sources.length, 2);
});

test("page stream: `done` closes it, and the browser does not reconnect", async () => {
  const { env, hub, log } = setup();
  const a = bar(log, "a");
  hub.subscribe(A, a);
  await env.tick(J.SYNC_DELAY);
  const es = env.last();
  es.open();
  es.send("status", done(A));
  hub.unsubscribe(A, a);
  es.send("done", { state: "done" });
  assert.equal(es.closed, true);
  assert.equal(J.streams.open, 0);
  await env.tick(1000);
  assert.equal(env.sources.length, 1, "nothing left to follow");
  // A bar of a job the page already has gets its document without a stream.
  hub.subscribe(A, bar(log, "again"));
  await env.tick(J.SYNC_DELAY);
  assert.deepEqual(log.filter((e) => e[0] === "again"), [["again", "doc", "SUCCESS"]]);
  assert.equal(env.sources.length, 1);
});

test("page stream: the jobs list and the bars on one /events/jobs connection", async () => {
  const { env, hub, log } = setup();
  hub.subscribe(A, bar(log, "a"));
  const watch = hub.watchList(list(log));
  await env.tick(J.SYNC_DELAY);
  assert.equal(env.sources.length, 1);
  const es = env.last();
  assert.equal(new URL(es.url, "http://x").pathname, "/jt/events/jobs");
  assert.deepEqual(idsOf(es.url), [A]);
  es.open();
  assert.deepEqual(only(log, "feed"), [["list", "feed", true]]);
  // The list names a running job B and a finished job C; the list makes bars for them.
  es.send("job", { id: B, state: "running", finished: false, created_at: 2 });
  es.send("job", { id: C, state: "succeeded", finished: true, created_at: 1 });
  hub.subscribe(B, bar(log, "b"));
  env.answers.push([200, { tasks: { [C]: done(C) } }]);
  hub.subscribe(C, bar(log, "c"));
  await env.tick(J.SYNC_DELAY);
  assert.equal(env.sources.length, 1, "B is watched by the list stream, C is read once");
  assert.deepEqual(env.fetches.map((url) => [new URL(url, "http://x").pathname, idsOf(url)]),
    [["/jt/status", [C]]]);
  assert.deepEqual(log.filter((e) => e[0] === "c"), [["c", "doc", "SUCCESS"]]);
  es.send("status", doc(B, "PROGRESS"));
  es.send("removed", { task_id: C });
  assert.deepEqual(log.filter((e) => e[0] === "list" && e[1] !== "feed"), [
    ["list", "job", B, "running"], ["list", "job", C, "succeeded"], ["list", "removed", C],
  ]);
  // A second watcher of the list gets what the page has, in the server's order.
  const later = [];
  hub.watchList(list(later));
  await env.tick(0);
  assert.deepEqual(later, [["list", "job", B, "running"]]);
  // Without lists, the bars alone: /events?ids= (reopened once).
  watch.stop();
  hub.lists.clear();
  await env.tick(J.SYNC_DELAY);
  assert.equal(env.sources.length, 2);
  assert.equal(new URL(env.last().url, "http://x").pathname, "/jt/events");
});

test("page stream: reconnecting and resumed show and clear trouble on every bar and the list", async () => {
  const { env, hub, log } = setup();
  hub.subscribe(A, bar(log, "a"));
  hub.subscribe(B, bar(log, "b"));
  hub.watchList(list(log));
  await env.tick(J.SYNC_DELAY);
  const es = env.last();
  es.open();
  log.length = 0;
  es.send("reconnecting", { state: "reconnecting" });
  assert.deepEqual(log, [["a", "outage"], ["b", "outage"], ["list", "trouble"]]);
  hub.subscribe(C, bar(log, "c")); // a bar added during the outage shows it too
  await env.tick(0);
  assert.deepEqual(log.slice(3), [["c", "outage"]]);
  log.length = 0;
  es.send("resumed", { state: "resumed" });
  assert.deepEqual(log, [["a", "recovered"], ["b", "recovered"], ["c", "recovered"],
    ["list", "recovered"]]);
  es.send("status", doc(A, "PROGRESS"));
  assert.deepEqual(log.slice(4), [["a", "doc", "PROGRESS"]]);
  assert.equal(env.open().length, 1, "the same connection throughout");
});

test("page stream: a 429 means ONE batched poll for all bars, then the stream again", async () => {
  const { env, hub, log } = setup();
  hub.subscribe(A, bar(log, "a"));
  hub.subscribe(B, bar(log, "b"));
  hub.subscribe(C, bar(log, "c"));
  await env.tick(J.SYNC_DELAY);
  env.answers.push([200, { tasks: { [A]: doc(A, "PROGRESS"), [B]: doc(B, "PENDING"),
    [C]: done(C) } }]);
  env.last().fail(2); // refused: closed before it opened
  assert.equal(hub.mode, "polling");
  assert.equal(J.streams.open, 0);
  assert.deepEqual(only(log, "transport").filter((e) => e[2] === "polling").map((e) => e[0]),
    ["a", "b", "c"]);
  await env.tick(0);
  assert.equal(env.fetches.length, 1, "one request for the three bars");
  assert.deepEqual(idsOf(env.fetches[0]), [A, B, C].sort());
  assert.deepEqual(only(log, "doc"), [["a", "doc", "PROGRESS"], ["b", "doc", "PENDING"],
    ["c", "doc", "SUCCESS"]]);
  // The next poll after the interval: C is final and left out; unchanged documents are not
  // delivered again.
  log.length = 0;
  env.answers.push([200, { tasks: { [A]: doc(A, "PROGRESS"), [B]: doc(B, "PROGRESS") } }]);
  await env.tick(J.settings.pollInterval);
  assert.equal(env.fetches.length, 2);
  assert.deepEqual(idsOf(env.fetches[1]), [A, B].sort());
  assert.deepEqual(only(log, "doc"), [["b", "doc", "PROGRESS"]]);
  // Trouble goes to every bar, and the poll backs off, honouring Retry-After.
  env.answers.push([503, null, 4]);
  await env.tick(J.settings.pollInterval);
  assert.deepEqual(only(log, "trouble"), [["a", "trouble", "http", 503],
    ["b", "trouble", "http", 503]]);
  const before = env.fetches.length;
  await env.tick(3900);
  assert.equal(env.fetches.length, before, "not before Retry-After");
  // After STREAM_RETRY[0] the stream is tried again: polling stops once it is asked for.
  await env.tick(J.STREAM_RETRY[0]);
  assert.equal(env.sources.length, 2);
  assert.deepEqual(idsOf(env.last().url), [A, B].sort());
  assert.equal(hub.mode, "events");
  env.last().open();
  const polls = env.fetches.length;
  await env.tick(10000);
  assert.equal(env.fetches.length, polls, "no polling while the stream is open");
});

test("page stream: no EventSource in the browser: the batched poll from the start", async () => {
  const { env, log } = setup();
  env.EventSource = undefined;
  const hub = new J.PageStream("/jt", env);
  hub.subscribe(A, bar(log, "a"));
  hub.subscribe(B, bar(log, "b"));
  env.answers.push([200, { tasks: { [A]: doc(A, "PROGRESS"), [B]: doc(B, "PROGRESS") } }]);
  await env.tick(J.SYNC_DELAY);
  assert.equal(hub.mode, "polling");
  assert.equal(env.fetches.length, 1);
  assert.deepEqual(idsOf(env.fetches[0]), [A, B].sort());
  await env.tick(60000);
  assert.equal(env.sources.length, 0);
});

test("page stream: a stream that keeps failing falls back to the batched poll", async () => {
  const { env, hub, log } = setup();
  hub.subscribe(A, bar(log, "a"));
  await env.tick(J.SYNC_DELAY);
  const es = env.last();
  es.open();
  es.fail(0); // the browser reconnects...
  es.fail(0);
  assert.equal(hub.mode, "events");
  es.fail(0); // ... and fails again: polling
  assert.equal(hub.mode, "polling");
  assert.equal(es.closed, true);
  await env.tick(0);
  assert.deepEqual(env.fetches.map(idsOf), [[A]]);
});

test("page stream: the list's stream refused while the bars' opens: the list polls", async () => {
  const { env, hub, log } = setup();
  hub.subscribe(A, bar(log, "a"));
  hub.watchList(list(log));
  await env.tick(J.SYNC_DELAY);
  env.last().fail(2); // /events/jobs: a 404 (no current user) or a 429
  assert.deepEqual(only(log, "feed"), [["list", "feed", false]]);
  assert.equal(env.sources.length, 2, "the bars go on at once");
  assert.equal(new URL(env.last().url, "http://x").pathname, "/jt/events");
  env.last().open(); // it opens: the list's refusal was no bound, so no list stream
  await env.tick(J.STREAM_RETRY[0] * 100);
  assert.equal(env.sources.length, 2);
  assert.equal(hub.ownerOff, true);
});

test("page stream: a list alone, refused, is asked for again later", async () => {
  const { env, hub, log } = setup();
  hub.watchList(list(log));
  await env.tick(J.SYNC_DELAY);
  env.last().fail(2);
  await env.tick(J.STREAM_RETRY[0] - 100);
  assert.equal(env.sources.length, 1);
  await env.tick(200 + J.SYNC_DELAY);
  assert.equal(env.sources.length, 2);
  env.last().open();
  assert.deepEqual(only(log, "feed"), [["list", "feed", false], ["list", "feed", true]]);
});

test("shared feed: a tracker on the page stream, UNKNOWN asked again on its own", async () => {
  const env = fakeEnv();
  const hub = new J.PageStream("/jt", env);
  const calls = [];
  const o = J.trackerOptions(J.settings, {}, { taskId: D, pollInterval: 500 });
  const m = new J.StateMachine(o, {
    view: { render: () => {} },
    emit: (type) => calls.push(type),
    sendCancel: async () => ({ ok: true, body: null }),
    poller: (listener) => ({
      listener, start: (delay) => calls.push("poll " + delay), stop: () => {}, poke: () => {},
    }),
    stream: (listener) => new J.SharedFeed(hub, D, listener),
  });
  m.start();
  assert.equal(m.transport, "events");
  await env.tick(J.SYNC_DELAY);
  env.last().open();
  env.last().send("status", doc(D, "UNKNOWN"));
  assert.deepEqual(calls, ["poll 500"]);
  assert.equal(hub.subs.has(D), false, "it left the page stream to ask again");
  m.poller.listener.onDocument(doc(D, "PROGRESS"));
  assert.equal(hub.subs.has(D), true, "found: back on the page stream");
  assert.equal(m.transport, "events");
  env.last().fail(2);
  assert.equal(m.transport, "polling", "the page polls: so does the tracker, in the batch");
});
