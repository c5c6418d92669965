"""The README's quick start as a type checker sees it (``mypy --strict``).

Not collected by pytest: ``make test`` runs mypy on this file, and each
``assert_type`` fails the check when a public signature loses its types.
"""

from __future__ import annotations

import time
from typing import Any, assert_type

from celery import Celery, Signature, chain, group
from celery.result import AsyncResult, EagerResult
from flask import Flask, render_template, request
from flask_caching import Cache

from flask_jobtastic import (
    Jobtastic,
    JobtasticState,
    JobtasticTask,
    canvas_or_eager,
    canvas_or_fail,
)
from flask_jobtastic.cache import PyMemcacheCache


class LotsOfDivisionTask(JobtasticTask):
    """Division is hard. Let a worker do a lot of it."""

    significant_kwargs = [("numerators", str), ("denominators", str)]
    herd_avoidance_timeout = 60
    cache_duration = 0

    def calculate_result(self, numerators: list[int], denominators: list[int]) -> list[float]:
        results = []
        total = len(numerators)
        for count, (numerator, denominator) in enumerate(
            zip(numerators, denominators, strict=True)
        ):
            results.append(numerator / denominator)
            assert_type(self.update_progress(count + 1, total, update_frequency=10), None)
            time.sleep(0.1)
        with self.step("Check the results"):
            self.notify("all divided")
            self.add_one_success(total)
        return results


jobtastic = Jobtastic()
assert_type(Jobtastic(None, celery=None, cache=None), Jobtastic)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["CELERY"] = {
        "broker_url": "redis://localhost:6379/0",
        "result_backend": "redis://localhost:6379/1",
    }
    app.config["JOBTASTIC_CACHE"] = {
        "CACHE_TYPE": "flask_jobtastic.cache.PyMemcacheCache",
        "CACHE_MEMCACHED_SERVERS": ["127.0.0.1:11211"],
    }
    jobtastic.init_app(app)
    assert_type(app.extensions["jobtastic"], Any)

    @app.get("/divide")
    def divide() -> str:
        iterations = request.args.get("iterations", 100, type=int)
        result = LotsOfDivisionTask.delay_or_fail(
            numerators=list(range(0, iterations * 20, 20)),
            denominators=list(range(1, iterations * 10, 10)),
        )
        assert_type(result, AsyncResult[Any])
        assert_type(result.id, str)
        return render_template("divide.html", task_id=result.id)

    return app


def every_call_method(state: JobtasticState) -> None:
    """The eight call methods on the class, and what they return."""
    assert_type(LotsOfDivisionTask.delay(numerators=[1], denominators=[1]), AsyncResult[Any])
    assert_type(LotsOfDivisionTask.delay_or_eager([1], [1]), AsyncResult[Any])
    assert_type(LotsOfDivisionTask.delay_or_fail([1], [1]), AsyncResult[Any])
    assert_type(LotsOfDivisionTask.apply_async(([1], [1])), AsyncResult[Any])
    assert_type(LotsOfDivisionTask.async_or_eager(kwargs={}, countdown=1), AsyncResult[Any])
    assert_type(LotsOfDivisionTask.async_or_fail(args=([1], [1])), AsyncResult[Any])
    assert_type(LotsOfDivisionTask.apply(([1], [1])), EagerResult[Any])
    assert_type(LotsOfDivisionTask.AsyncResult("an-id"), AsyncResult[Any])
    assert_type(state.current_owner(), str | None)


def a_canvas() -> None:
    """A group of signatures made on the class, started as one job."""
    signature = LotsOfDivisionTask.s(numerators=[1], denominators=[1])
    assert_type(signature, Signature[Any])
    assert_type(canvas_or_fail(group([signature])), AsyncResult[Any])
    assert_type(
        canvas_or_eager(chain(signature, LotsOfDivisionTask.si([2], [2]))), AsyncResult[Any]
    )


flask_app = create_app()
celery = jobtastic.celery
assert_type(celery, Celery)
assert_type(jobtastic.cache, Cache)
assert_type(PyMemcacheCache(servers=["127.0.0.1:11211"]), PyMemcacheCache)
