"""Groups, chords and chains started as one job, on the README's deployment:
a prefork worker on one Redis (broker and backend) and memcached."""

from __future__ import annotations

import pytest
from celery import chain, chord, group

from flask_jobtastic import canvas_or_fail
from tests.canvas_tasks import RowsPart, SumPart
from tests.polling import poll
from tests.tasks import runs

pytestmark = pytest.mark.usefixtures("celery_worker")


def start(app, signature, **options):
    with app.test_request_context():
        return canvas_or_fail(signature, **options)


def ended(document):
    return document["ready"]


def test_a_group_reads_as_one_job_and_returns_every_result(app, client, token):
    canvas = start(app, group(RowsPart.s(token=token, rows=n, part=n) for n in (3, 5, 7)))
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "SUCCESS"
    assert document["result"] == [3, 5, 7]
    assert document["children"] == {
        "total": 3,
        "pending": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 0,
        "revoked": 0,
    }
    assert runs(token) == 3


def test_a_chord_hands_its_header_results_to_its_body(app, client, token):
    canvas = start(
        app, chord((RowsPart.s(token=token, rows=n, part=n) for n in (2, 4)), SumPart.s())
    )
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "SUCCESS", document
    assert document["result"] == 6
    assert document["children"]["total"] == 3


def test_a_chain_passes_each_result_on(app, client, token):
    canvas = start(
        app, chain(RowsPart.s(token=token, rows=4), SumPart.s(extra=1), SumPart.s(extra=10))
    )
    _, document = poll(client, canvas.id, ended, timeout=30)
    assert document["state"] == "SUCCESS", document
    assert document["result"] == 15
