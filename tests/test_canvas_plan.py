"""A celery signature becomes a plan JSON can carry, or a clear refusal."""

from __future__ import annotations

import pytest
from celery import Celery, chain, chord, group

from flask_jobtastic.canvas_plan import CanvasError, Part, Plan, plan_of

celery = Celery("plans", set_as_current=False)


@celery.task(name="plans.add")
def add(x: int, y: int = 0) -> int:
    return x + y


def test_a_group_is_its_tasks_side_by_side() -> None:
    plan = plan_of(group(add.s(i, y=1) for i in range(3)))
    assert plan.kind == "group" and plan.size == 3 and plan.body is None
    assert plan.parts[2] == Part("plans.add", (2,), {"y": 1})
    assert plan.weighting == "units"


def test_a_chord_is_its_header_and_one_more_part() -> None:
    plan = plan_of(chord([add.s(1), add.s(2)], add.s(y=3)))
    assert plan.kind == "chord" and plan.size == 3
    assert plan.body == Part("plans.add", (), {"y": 3})


def test_a_chain_weighs_its_stages_alike_and_keeps_immutable_ones() -> None:
    plan = plan_of(add.s(1) | add.s(2) | add.si(5))
    assert plan.kind == "chain" and plan.weighting == "stages"
    assert [part.immutable for part in plan.parts] == [False, False, True]


def test_a_plan_survives_its_json_record() -> None:
    plan = plan_of(group([add.s(1, y=2)]), tolerate_failures=True)
    assert Plan.from_record(plan.record()) == plan


@pytest.mark.parametrize(
    ("signature", "says"),
    [
        (add.s(1), "group, chord or chain"),
        (group([group([add.s(1)])]), "flatten"),
        (chain(add.s(1), group([add.s(2), add.s(3)]), add.s()), "flatten"),
        (group([]), "no tasks"),
        (group([add.s(1).set(countdown=5)]), "countdown"),
    ],
)
def test_what_is_not_one_flat_canvas_is_refused_with_what_to_change(signature, says) -> None:
    with pytest.raises(CanvasError, match=says):
        plan_of(signature)


def test_only_a_group_tolerates_failures() -> None:
    with pytest.raises(CanvasError, match="tolerate_failures is for groups"):
        plan_of(chord([add.s(1)], add.s()), tolerate_failures=True)
