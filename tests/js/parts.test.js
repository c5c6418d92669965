// Unit tests of a canvas's parts text (static/jobtastic.js's partCounts, partsText and
// partsShown): "37 of 500 parts done" and "1 failed" beside a bar whose documents carry
// `children`, in the jobs list too. The bar itself is tested by tests/test_browser_canvas.py.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const J = require(path.join(__dirname, "..", "..", "static", "jobtastic.js"));

const m = J.settings.messages;
const children = (extra) => Object.assign(
  { total: 500, pending: 3, running: 2, succeeded: 37, failed: 0, revoked: 0 }, extra);

test("the parts text: done counts succeeded and failed parts, not cancelled ones, of the total", () => {
  assert.deepEqual(J.partsText(children(), m), { done: "37 of 500 parts done", failed: "" });
  assert.deepEqual(J.partsText(children({ failed: 1 }), m),
    { done: "38 of 500 parts done", failed: "1 failed" });
  assert.equal(J.partsText(children({ revoked: 4 }), m).done, "37 of 500 parts done");
  const finished = { total: 3, pending: 0, running: 0, succeeded: 3, failed: 0, revoked: 0 };
  assert.deepEqual(J.partsText(finished, m), { done: "3 of 3 parts done", failed: "" });
  assert.equal(J.partsText({ total: 4 }, m).done, "0 of 4 parts done"); // counts default to 0
});

test("the failed count shows only once a part failed", () => {
  assert.equal(J.partsText(children({ failed: 0 }), m).failed, "");
  assert.equal(J.partsText(children({ failed: 1 }), m).failed, "1 failed");
  assert.equal(J.partsText(children({ failed: 12 }), m).failed, "12 failed");
  assert.equal(J.partsText(children({ failed: -2 }), m).failed, ""); // nonsense counts as none
});

test("no parts text without children, or with something else under that name", () => {
  for (const value of [undefined, null, "", 7, [], ["a-task-id"], {}, { total: null },
    { total: "many" }, { total: -1 }]) {
    assert.equal(J.partsText(value, m), null, JSON.stringify(value));
  }
  assert.equal(J.partsShown({ state: "PROGRESS", progress_percent: 40 }, null, m), null);
  assert.equal(J.partsShown(null, { id: "t1", state: "running" }, m), null);
  assert.equal(J.partsShown(null, null, m), null);
});

test("part counts are whole numbers; strings from JSON are read as numbers", () => {
  assert.deepEqual(J.partCounts({ total: "10", succeeded: "4.7", failed: "x", running: 2 }),
    { total: 10, pending: 0, running: 2, succeeded: 4, failed: 0, revoked: 0 });
});

test("the parts text comes from messages; every count is a placeholder", () => {
  const de = Object.assign({}, m, {
    partsDone: "{done}/{total} Teile fertig ({running} laufen, {pending} warten)",
    partsFailed: "{failed} fehlgeschlagen, {revoked} abgebrochen",
  });
  assert.deepEqual(J.partsText(children({ failed: 1, revoked: 2 }), de), {
    done: "38/500 Teile fertig (2 laufen, 3 warten)",
    failed: "1 fehlgeschlagen, 2 abgebrochen",
  });
  assert.equal(J.partsText(children(), Object.assign({}, m, { partsDone: "{nope}" })).done, "{nope}");
  for (const key of ["partsDone", "partsFailed"]) assert.equal(typeof m[key], "string", key);
});

test("a bar's parts: its document's children, else its jobs list record's", () => {
  const doc = { state: "PROGRESS", children: children({ succeeded: 10 }) };
  const record = { id: "t1", state: "running", children: children({ succeeded: 5 }) };
  assert.equal(J.partsShown(doc, record, m).done, "10 of 500 parts done");
  assert.equal(J.partsShown({ state: "PENDING" }, record, m).done, "5 of 500 parts done");
  assert.equal(J.partsShown(null, record, m).done, "5 of 500 parts done");
  assert.equal(J.partsShown(doc, null, m).done, "10 of 500 parts done");
});

test("describe is unchanged for a canvas: the usual text, the parts beside it", () => {
  const o = J.trackerOptions(J.settings, {}, { taskId: "t1" });
  const doc = { progress_percent: 42.7, time_remaining: 65, children: children() };
  assert.equal(J.describe({ state: "PROGRESS", document: doc }, o).text,
    "42% · about 1 min 5 s left");
});
