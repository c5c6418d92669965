"""Groups, chords and chains started as one job, on the README's deployment:
a prefork worker on one Redis (broker and backend) and memcached.

Each test starts a canvas as a view would and reads it as the browser does,
through the status endpoints.
"""

from __future__ import annotations

import time

import pytest
from celery import chain, chord, group

from flask_jobtastic import CanvasError, canvas_or_fail
from tests.canvas_tasks import CachedRowsPart, RowsPart, SleepPart, SumPart
from tests.polling import poll
from tests.tasks import DivisionTask, runs

pytestmark = pytest.mark.usefixtures("celery_worker")

ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}


def start(app, signature, headers=None, **options):
    with app.test_request_context(headers=headers or {}):
        return canvas_or_fail(signature, **options)


def ended(document):
    return document["ready"]


def counts(**given):
    base = {"pending": 0, "running": 0, "succeeded": 0, "failed": 0, "revoked": 0}
    return {**base, **given}


# -- the three kinds and their results ---------------------------------------------------


def test_a_group_reads_as_one_job_and_returns_every_result(app, client, token):
    canvas = start(app, group(RowsPart.s(token=token, rows=n, part=n) for n in (3, 5, 7)))
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "SUCCESS"
    assert document["result"] == [3, 5, 7]
    assert document["progress_percent"] == 100
    assert document["children"] == {"total": 3, **counts(succeeded=3)}
    assert runs(token) == 3
    assert canvas.get(timeout=5) == [3, 5, 7]  # Celery's own result handle agrees


def test_a_chord_hands_its_header_results_to_its_body(app, client, token):
    header = (RowsPart.s(token=token, rows=n, part=n) for n in (2, 4))
    canvas = start(app, chord(header, SumPart.s()))
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "SUCCESS", document
    assert document["result"] == 6
    assert document["children"] == {"total": 3, **counts(succeeded=3)}  # the body is a part


def test_a_chain_passes_each_result_on_and_an_immutable_stage_ignores_it(app, client, token):
    stages = chain(RowsPart.s(token=token, rows=4), SumPart.s(extra=1), SumPart.si(7, extra=10))
    canvas = start(app, stages)
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "SUCCESS", document
    assert document["result"] == 17
    assert document["children"]["succeeded"] == 3


# -- state rules ------------------------------------------------------------------------


def test_pending_until_a_part_starts_then_progress_then_success(app, client, token):
    # one part holds the worker's two children busy first, so the canvas waits queued
    blockers = [start(app, group(SleepPart.s(token=token, value=i, seconds=1.5))) for i in (1, 2)]
    canvas = start(app, group(RowsPart.s(token=token, rows=20, part=i, pause=0.05) for i in (1, 2)))
    first = client.get(f"/jobtastic/status/{canvas.id}").get_json()
    assert first["state"] == "PENDING" and first["ready"] is False
    assert first["children"] == {"total": 2, **counts(pending=2)}
    _, running = poll(client, canvas.id, lambda d: d["state"] == "PROGRESS", timeout=30)
    assert running["children"]["running"] + running["children"]["succeeded"] >= 1
    assert 0 <= running["progress_percent"] < 100
    seen = [running["progress_percent"]]
    while True:
        document = client.get(f"/jobtastic/status/{canvas.id}").get_json()
        if document["ready"]:
            break
        seen.append(document["progress_percent"])
        time.sleep(0.05)
    assert document["state"] == "SUCCESS"
    assert seen == sorted(seen), "the bar never goes back"
    assert any(0 < p < 100 for p in seen), seen
    for blocker in blockers:
        poll(client, blocker.id, ended, timeout=30)


def test_progress_is_weighted_by_each_parts_reported_total(app, client, token):
    # a part of 10 rows done in half a second beside a part of 200 rows: the bar follows
    # the big one (equal weights would show 50 % as soon as the small part is done)
    big = RowsPart.s(token=token, rows=200, part=1, pause=0.02)
    small = RowsPart.s(token=token, rows=10, part=2, pause=0.05)
    canvas = start(app, group([big, small]))
    seen = []
    while True:
        document = client.get(f"/jobtastic/status/{canvas.id}").get_json()
        if document["ready"]:
            break
        if document["state"] == "PROGRESS":
            seen.append((document["progress_percent"], document["children"]["succeeded"]))
        time.sleep(0.05)
    assert document["state"] == "SUCCESS"
    percents = [percent for percent, _ in seen]
    assert percents == sorted(percents), "the bar never goes back"
    # by rows: once the big part reported its total, the small one is 10 of 210
    assert any(done == 1 and 5 < percent < 45 for percent, done in seen), seen


def test_a_part_that_fails_fails_the_canvas_with_its_error(app, client, token):
    parts = [
        RowsPart.s(token=token, rows=3, part=1, fail_at=1),
        RowsPart.s(token=token, rows=3, part=2),
    ]
    canvas = start(app, group(parts))
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "FAILURE"
    # JobFailed is the error a job means its user to read
    assert document["error"]["message"] == "part 1 could not read row 1"
    assert "result" not in document
    assert document["children"]["failed"] == 1


def test_an_unexpected_part_error_reads_as_the_generic_message(app, client, token):
    canvas = start(app, group([DivisionTask.s(numerators=[1], denominators=[0], token=token)]))
    _, document = poll(client, canvas.id, ended, timeout=30)
    with app.app_context():
        alone = DivisionTask.delay_or_fail(numerators=[2], denominators=[0], token=token)
    _, job = poll(client, alone.id, ended, timeout=30)
    assert document["state"] == job["state"] == "FAILURE"
    assert "division by zero" not in str(document)  # the raw text stays in the worker's log
    assert document["error"]["type"] == job["error"]["type"]
    canvas_id, job_id = document["error"]["error_id"], job["error"]["error_id"]
    assert document["error"]["message"] == job["error"]["message"].replace(job_id, canvas_id)


def test_a_canvas_tolerating_failures_succeeds_and_shows_the_failed_count(app, client, token):
    parts = [
        RowsPart.s(token=token, rows=2, part=i, fail_at=0 if i == 2 else -1) for i in (1, 2, 3)
    ]
    canvas = start(app, group(parts), tolerate_failures=True)
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "SUCCESS", document
    assert document["result"] == [2, None, 2]
    assert document["children"] == {"total": 3, **counts(succeeded=2, failed=1)}


def test_a_failing_chain_stage_stops_the_chain(app, client, token):
    stages = chain(RowsPart.s(token=token, rows=2, fail_at=0), SumPart.s(token=token))
    canvas = start(app, stages)
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "FAILURE"
    assert document["children"] == {"total": 2, **counts(failed=1, revoked=1)}
    assert runs(token) == 1  # the second stage never ran


def test_the_event_stream_pushes_the_canvas_as_its_parts_report(app, client, token):
    from tests.test_events import parse

    parts = [RowsPart.s(token=token, rows=20, part=i, pause=0.03) for i in (1, 2, 3)]
    canvas = start(app, group(parts))
    response = client.get(f"/jobtastic/events/{canvas.id}", buffered=False)
    assert response.status_code == 200
    events = list(parse(response.response))
    response.close()
    documents = [payload for name, payload in events if name == "status"]
    assert documents[-1]["state"] == "SUCCESS" and documents[-1]["result"] == [20, 20, 20]
    running = [d for d in documents if d["state"] == "PROGRESS"]
    assert len(running) >= 3  # pushed as the parts went, not one final answer
    percents = [d["progress_percent"] for d in running]
    assert percents == sorted(percents)
    assert all("children" in d for d in documents)


def test_the_pages_one_stream_carries_a_canvas_beside_a_job(app, client, token):
    from tests.test_events import parse

    canvas = start(app, group(RowsPart.s(token=token, rows=10, part=i, pause=0.03) for i in (1, 2)))
    with app.app_context():
        job = RowsPart.delay_or_fail(token=token, rows=5, part=9)
    response = client.get(f"/jobtastic/events?ids={canvas.id},{job.id}", buffered=False)
    assert response.status_code == 200
    events = list(parse(response.response))
    response.close()
    assert events[-1][0] == "done"
    last = {}
    for name, payload in events:
        if name == "status":
            last[payload["task_id"]] = payload
    assert last[canvas.id]["state"] == "SUCCESS" and last[canvas.id]["result"] == [10, 10]
    assert last[canvas.id]["children"]["succeeded"] == 2
    assert last[job.id]["result"] == 5 and "children" not in last[job.id]


# -- the result cache and herd avoidance -------------------------------------------------


def test_cached_parts_count_as_done_and_are_not_recomputed(app, client, token):
    first = start(app, group(CachedRowsPart.s(token=token, rows=2, part=i) for i in (1, 2)))
    poll(client, first.id, ended, timeout=30)
    assert runs(token) == 2
    parts = [CachedRowsPart.s(token=token, rows=2, part=i) for i in (1, 2, 3)]
    second = start(app, group(parts))
    at_once = client.get(f"/jobtastic/status/{second.id}").get_json()
    if not at_once["ready"]:  # two of three parts are done already
        assert at_once["state"] == "PROGRESS" and at_once["progress_percent"] >= 66
        assert at_once["children"]["succeeded"] >= 2
    _, document = poll(client, second.id, ended, timeout=30)
    assert document["state"] == "SUCCESS"
    assert document["result"] == [2, 2, 2]
    assert runs(token) == 3  # only the new part ran


def test_an_identical_canvas_sent_while_one_runs_joins_it(app, client, token):
    signature = group(RowsPart.s(token=token, rows=10, part=i, pause=0.05) for i in (1, 2))
    first = start(app, signature)
    second = start(app, group(RowsPart.s(token=token, rows=10, part=i, pause=0.05) for i in (1, 2)))
    assert second.id == first.id
    poll(client, first.id, ended, timeout=30)
    assert runs(token) == 2
    third = start(app, signature, herd_avoidance=False)
    assert third.id != first.id


def test_a_large_canvas_claims_its_run_under_a_short_key(app, token):
    from flask_jobtastic import results

    canvas = start(app, group(RowsPart.s(token=token, rows=1, part=i) for i in range(300)))
    backend = app.extensions["jobtastic"].celery.backend
    herd_key = results.read_job(backend, canvas.id).job["herd_key"]
    assert len(herd_key.encode()) <= 250  # a valid memcached key, whatever the plan's size
    assert token not in herd_key


# -- ownership, the parts' documents, the registry --------------------------------------


def test_a_canvas_and_its_parts_are_their_owners_alone(make_app, token):
    app = make_app(owner_header="X-User")
    client = app.test_client()
    parts = [RowsPart.s(token=token, rows=2, part=i) for i in range(60)]
    canvas = start(app, group(parts), headers=ALICE)
    poll(client, canvas.id, ended, timeout=60, headers=ALICE)
    assert client.get(f"/jobtastic/status/{canvas.id}", headers=BOB).status_code == 404
    page = client.get(f"/jobtastic/status/{canvas.id}?children=1", headers=ALICE).get_json()
    assert page["parts_page"] == {"page": 1, "pages": 2, "per_page": 50, "total": 60}
    assert len(page["parts"]) == 50
    assert all(part["state"] == "SUCCESS" and part["result"] == 2 for part in page["parts"])
    second = client.get(f"/jobtastic/status/{canvas.id}?children=1&page=2", headers=ALICE)
    assert len(second.get_json()["parts"]) == 10
    assert (
        client.get(f"/jobtastic/status/{canvas.id}?children=1&page=3", headers=ALICE).status_code
        == 400
    )
    assert client.get(f"/jobtastic/status/{canvas.id}?children=1", headers=BOB).status_code == 404
    part_id = page["parts"][0]["task_id"]
    assert client.get(f"/jobtastic/status/{part_id}", headers=BOB).status_code == 404
    assert client.get(f"/jobtastic/status/{part_id}", headers=ALICE).status_code == 200
    batch = client.get(f"/jobtastic/status?ids={canvas.id}", headers=ALICE).get_json()
    assert batch["tasks"][canvas.id]["state"] == "SUCCESS"


def test_a_tracked_canvas_is_one_entry_in_my_jobs(make_app, token):
    app = make_app(owner_header="X-User")
    client = app.test_client()
    parts = [RowsPart.s(token=token, rows=2, part=i) for i in (1, 2, 3)]
    canvas = start(app, group(parts), headers=ALICE, track_state=True, description="Three files")
    poll(client, canvas.id, ended, timeout=30, headers=ALICE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        jobs = client.get("/jobtastic/jobs", headers=ALICE).get_json()["jobs"]
        mine = [job for job in jobs if job["id"] == canvas.id]
        if mine and mine[0]["state"] == "succeeded":
            break
        time.sleep(0.1)
    assert mine and mine[0]["state"] == "succeeded", jobs
    assert mine[0]["description"] == "Three files"
    assert [job["id"] for job in jobs] == [canvas.id]  # its parts are not listed
    assert client.get("/jobtastic/jobs", headers=BOB).get_json()["jobs"] == []


def test_reading_a_canvas_costs_one_round_trip_however_many_parts(app, client, token):
    backend = app.extensions["jobtastic"].celery.backend
    small = start(app, group(RowsPart.s(token=token, rows=1, part=i) for i in range(2)))
    large = start(app, group(RowsPart.s(token=token, rows=1, part=i) for i in range(200)))
    for canvas in (small, large):
        poll(client, canvas.id, ended, timeout=60)
    sent: list[str] = []
    execute = backend.client.execute_command

    def counting(*args, **options):  # instrumentation only: every command still runs
        sent.append(str(args[0]))
        return execute(*args, **options)

    backend.client.execute_command = counting
    try:
        for canvas in (small, large):
            sent.clear()
            assert client.get(f"/jobtastic/status/{canvas.id}").get_json()["state"] == "SUCCESS"
            assert sent == ["MGET"], sent
            sent.clear()
            batch = client.get(f"/jobtastic/status?ids={small.id},{large.id}").get_json()
            assert len(batch["tasks"]) == 2
            assert sent == ["MGET"], sent
    finally:
        del backend.client.execute_command


# -- what cannot be run, said clearly ----------------------------------------------------


def test_signatures_that_are_not_one_flat_canvas_are_refused(app, token):
    nested = group([group([RowsPart.s(token=token, rows=1)])])
    with pytest.raises(CanvasError, match="flatten"):
        start(app, nested)
    with pytest.raises(CanvasError, match="group, chord or chain"):
        start(app, RowsPart.s(token=token, rows=1))
    with pytest.raises(CanvasError, match="tolerate_failures is for groups"):
        start(app, chain(RowsPart.s(token=token, rows=1), SumPart.s()), tolerate_failures=True)
    with pytest.raises(TypeError):
        start(app, group([RowsPart.s(token=token, rows=1, nonsense=2)]))
    with pytest.raises(TypeError, match="argument 'part' .* cannot be sent as JSON"):
        start(app, group([RowsPart.s(token=token, rows=1, part=object())]))
    assert runs(token) == 0


def test_with_jobs_run_synchronously_a_canvas_runs_in_the_calling_process(make_app, token):
    app = make_app(JOBTASTIC_RUN_SYNCHRONOUSLY=True)
    header = [RowsPart.s(token=token, rows=3, part=i) for i in (1, 2)]
    canvas = start(app, chord(header, SumPart.s(extra=1)))
    document = app.test_client().get(f"/jobtastic/status/{canvas.id}").get_json()
    assert document["state"] == "SUCCESS", document  # done when the call returned
    assert document["result"] == 7
    assert document["children"] == {"total": 3, **counts(succeeded=3)}
