"""The one JSON rule: what is stored, converted or refused, and what users then see."""

from __future__ import annotations

import enum
import math
import numbers
import uuid
from collections import OrderedDict, namedtuple
from datetime import UTC, date, datetime, time
from decimal import Decimal
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_jobtastic import jsonsafe
from flask_jobtastic.jsonsafe import MAX_DEPTH, NotJSONError, dumps, to_json
from tests import strict
from tests.app_factory import close_app, create_app
from tests.tasks import ReturnsTask

strict_loads = strict.strict_loads


def read_back(value: Any) -> Any:
    """What a reader of the stored value gets: the rule, strict text, parsed."""
    return strict_loads(dumps(to_json(value, "result")))


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Mood(enum.StrEnum):
    CALM = "calm"


Point = namedtuple("Point", "x y")


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC), "2024-05-01T12:30:05+00:00"),
        (datetime(2024, 5, 1, 12, 30), "2024-05-01T12:30:00"),  # naive stays naive
        (date(2024, 5, 1), "2024-05-01"),
        (time(7, 8, 9), "07:08:09"),
        (uuid.UUID("0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11"), "0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11"),
        (Decimal("12.50"), "12.50"),
        (Decimal("NaN"), "NaN"),  # a string, so strict JSON carries it
        (PurePosixPath("/srv/report.csv"), "/srv/report.csv"),
        ((1, "a", None), [1, "a", None]),
        (Point(1, 2), [1, 2]),
        (Level.HIGH, 3),
        (Mood.CALM, "calm"),
        (Fraction(1, 4), 0.25),
        (True, True),
        ({1: "int key", 2.5: "float", None: "none", False: "bool"}, None),
    ],
)
def test_conversions_are_the_documented_ones(value: Any, stored: Any) -> None:
    if stored is None:  # dict keys: as json.dumps writes them
        stored = {"1": "int key", "2.5": "float", "null": "none", "false": "bool"}
    assert read_back(value) == stored and type(read_back(value)) is type(stored)


class Tally:
    """An integer type of a library's own, registered as ``numbers.Integral`` (as numpy's are)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value


numbers.Integral.register(Tally)


def test_registered_integer_types_are_stored_as_ints() -> None:
    assert read_back({"n": Tally(7)}) == {"n": 7}


def test_nested_values_are_converted_all_the_way_down() -> None:
    value = OrderedDict(
        rows=[(1, Decimal("2.5")), {"at": date(2024, 1, 2), "id": uuid.UUID(int=1)}],
        total=Decimal("3"),
    )
    assert read_back(value) == {
        "rows": [[1, "2.5"], {"at": "2024-01-02", "id": "00000000-0000-0000-0000-000000000001"}],
        "total": "3",
    }


def test_plain_json_comes_back_as_it_is() -> None:
    value = {"a": [1, 2.5, "x", None, True, {"b": []}]}
    assert to_json(value) is value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"rows": [0, 1, 2, b"\x00raw"]}, 'result["rows"][3]: bytes'),
        ([bytearray(b"x")], "result[0]: bytearray"),
        ({"mean": float("nan")}, 'result["mean"]: float NaN'),
        ([float("inf")], "result[0]: float Infinity"),
        (-math.inf, "result: float -Infinity"),
        ({"tags": {"a"}}, 'result["tags"]: set'),
        ({"tags": frozenset()}, 'result["tags"]: frozenset'),
        (object(), "result: object"),
        (Color.RED, "result: Color"),
        (1j, "result: complex"),
        ({(1, 2): "tuple key"}, "result: a dict key of type tuple"),
        ({float("nan"): 1}, "result: a dict key that is float NaN"),
        ({"__type__": "bytes", "__value__": "x"}, "result: a dict of only '__type__' and"),
        ({"k" * 50: b""}, 'result["' + "k" * 40 + '..."]: bytes'),
    ],
)
def test_what_strict_json_cannot_carry_is_refused_naming_place_and_type(
    value: Any, message: str
) -> None:
    with pytest.raises(NotJSONError) as caught:
        to_json(value, "result")
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, TypeError)


def test_a_value_that_contains_itself_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append({"again": loop})
    with pytest.raises(NotJSONError, match=r'result\[1\]\["again"\]: a list that contains itself'):
        to_json(loop, "result")


def test_the_same_value_twice_is_not_a_loop() -> None:
    shared = (1, 2)
    assert read_back([shared, shared]) == [[1, 2], [1, 2]]


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    deep: Any = date(2024, 1, 1)  # a leaf that needs the slow path
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(NotJSONError, match=f"nested deeper than {MAX_DEPTH} levels"):
        to_json(deep, "result")


def test_strict_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        dumps([float("nan")])


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included
    st.text(max_size=8),
    st.binary(max_size=4),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.dates(),
    st.times(),
    st.decimals(),
    st.uuids(),
    st.fractions(),
    st.sets(st.integers(), max_size=2),
    st.builds(object),
)
KEYS = st.one_of(st.text(max_size=5), st.integers(), st.floats(), st.booleans(), st.none())
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(KEYS, children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None, database=None)
@given(VALUES)
def test_any_value_is_converted_to_strict_json_or_refused_by_name(value: Any) -> None:
    try:
        converted = to_json(value, "result")
    except NotJSONError as exc:
        assert str(exc).startswith("result") and exc.kind
        return
    text = dumps(converted)
    loaded = strict_loads(text)  # strict JSON
    assert to_json(loaded, "result") == loaded  # the rule is a fixed point
    assert dumps(to_json(value, "result")) == text  # deterministic
    # the fast path (json.dumps as is) reads back as the walk's conversion does
    assert strict_loads(dumps(jsonsafe._convert(value, "result", 0, set()))) == loaded


# -- in the worker, as users see it -----------------------------------------------

#: What users see as ``result`` for each kind the rule converts.
CONVERTED = {
    "datetime": "2024-05-01T12:30:05+00:00",
    "date": "2024-05-01",
    "time": "07:08:09",
    "decimal": "12.50",
    "uuid": "0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11",
    "tuple": [1, "a", None],
    "nested": {
        "when": ["2024-05-01", ["1.5", "00000000-0000-0000-0000-000000000001"]],
        "at": {"t": "2024-05-01T12:00:00"},
    },
    "plain": {"rows": [1, 2.5, "x", None, True]},
}
#: The place and type the failure names for each kind the rule refuses.
REFUSED = {
    "bytes": 'result["rows"][3]: bytes',
    "nan": 'result["mean"]: float NaN',
    "infinity": "result[1]: float Infinity",
    "set": 'result["tags"]: set',
}


def _everywhere(client, task_id):
    """The final document from the event stream, the status and the batch endpoint."""
    events = strict.stream(client, task_id)
    names = {name for name, _ in events}
    assert names == {"status"}, events
    documents = [document for _, document in events]
    final = documents[-1]
    assert final["ready"] is True
    assert strict.status(client, task_id) == final
    assert strict.batch(client, task_id)[task_id] == final
    return documents


@pytest.mark.usefixtures("celery_worker")
@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_a_result_the_rule_converts_reads_the_same_on_every_endpoint(app, client, token, kind):
    with app.app_context():
        result = ReturnsTask.delay_or_fail(token=token, kind=kind)
    documents = _everywhere(client, result.id)
    final = documents[-1]
    assert final["state"] == "SUCCESS" and final["result"] == CONVERTED[kind]
    # the counted items went through the same rule
    assert final["counts"]["succeeded"] == ["2024-05-01", "/srv/a.csv"]
    assert any(d["state"] == "PROGRESS" for d in documents)  # the stream saw it run


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_a_result_the_rule_refuses_fails_the_job_naming_field_and_type(
    app, client, token, kind, celery_worker
):
    with app.app_context():
        result = ReturnsTask.delay_or_fail(token=token, kind=kind)
    final = _everywhere(client, result.id)[-1]
    assert final["state"] == "FAILURE" and "result" not in final
    error = final["error"]
    assert error["type"] == "ResultNotSerializable"
    assert error["error_id"] in error["message"]  # generic: a developer's mistake
    exposing = create_app(JOBTASTIC_EXPOSE_ERRORS=True)
    try:
        shown = strict.status(exposing.test_client(), result.id)["error"]["message"]
    finally:
        close_app(exposing)
    assert f"returned a value that cannot be stored as JSON: {REFUSED[kind]};" in shown
    logged = f"failed, error id {error['error_id']}: ResultNotSerializable: "
    strict.wait_logged(celery_worker, logged)
