"""Property-based tests: cache keys, dispatch arguments, every endpoint's inputs, owners,
and every endpoint over jobs returning every result type.

Sections 1 to 4 need no worker: the jobs sent there stay queued (PENDING) on a queue of
their own, so a session-wide test worker never picks them up. Section 5 runs real jobs
on the real worker, beside foreign records planted in the real Redis result backend.

Where a property found a library bug, a focused property below the broad ones asserts
the right behaviour (and fails until the bug is fixed); the broad property then leaves
out only that one input shape, saying which test covers it.
"""

# Generated cases: 12,100 in all (the sum of every max_examples below).
#   Passing properties, 11,500: cache keys 2,000 + key distinctness 2,000 + prefixes 1,500
#   + bytes vs their escape 100 + cache_key_for 500 + delay_or_fail 300
#   + single-job endpoints 1,500 (4 requests each) + batch GET 1,000 + batch POST JSON 1,000
#   + batch raw bodies 800 + job-list endpoints 300 + owner isolation 100
#   + every endpoint over every result type and foreign records 400.
#   Known-bug properties, 600: unencodable arguments 100 + trailing-newline id 200
#   + newline in a path id 200 + deeply nested JSON 50 + identical calls of two owners 50
#   (each stops at its first counterexample while its bug stands).
# About 90 s on 2 cores; HTTP goes through the Flask test client to real Redis/memcached.

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import string
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from kombu.exceptions import KombuError
from werkzeug.datastructures import MultiDict
from werkzeug.test import EnvironBuilder, TestResponse

from flask_jobtastic import JobtasticTask, defaults, keys
from flask_jobtastic.binding import registered_instance
from tests import strict
from tests.app_factory import close_app, create_app
from tests.tasks import RETURNED, ReturnsTask

# Hypothesis keeps caches (and writes patches of failing examples) in ./.hypothesis:
# keep them out of the repository unless HYPOTHESIS_STORAGE_DIRECTORY says where.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "flask-jobtastic-hypothesis"))

# Reporting a failure, Hypothesis imports libcst, which uses a deprecated mypy_extensions
# API; with filterwarnings = error that warning would crash pytest's report instead of
# showing the falsifying example. Import it now, with that one warning silenced.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.filterwarnings("ignore", "mypy_extensions", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401


def cases(count: int) -> settings:
    """``count`` examples, no deadline (real servers), no example database in the repo."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def bug_cases(count: int) -> settings:
    """``cases`` for a property that pins down a known bug: it fails until the fix.

    Without the explain phase, which would re-run the failure many times over.
    """
    return settings(
        cases(count), phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
    )


class PropertyPayloadTask(JobtasticTask):
    """The job whose arguments are generated. Nothing runs it."""

    significant_kwargs = ["payload"]
    herd_avoidance_timeout = 5

    def calculate_result(self, payload: Any, extra: Any = None) -> None:
        return None


def _route_aside(app: Flask) -> Flask:
    """Send this module's jobs to a queue no worker consumes.

    A session-wide test worker (started by other modules) would otherwise take
    them and mark them FAILURE as unregistered; here they must stay PENDING.
    """
    celery = app.extensions["jobtastic"].celery
    celery.conf.task_routes = {PropertyPayloadTask.name: {"queue": "jobtastic-property-tests"}}
    return app


@pytest.fixture
def app(app: Flask) -> Flask:
    """conftest's app (real Redis and memcached), with this module's jobs routed aside."""
    return _route_aside(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client without a cookie jar: Werkzeug's jar re-parses every (long) URL twice."""
    return app.test_client(use_cookies=False)


@pytest.fixture
def owned_app() -> Iterator[Flask]:
    """An app whose current user is the ``X-User`` request header."""
    app = _route_aside(create_app(owner_header="X-User"))
    yield app
    close_app(app)


# -- strategies ----------------------------------------------------------------------

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
#: Every code point, lone surrogates included (Hypothesis leaves them out by default).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
SURROGATE_TEXT = st.tuples(st.text(max_size=10), SURROGATE, st.text(max_size=10)).map("".join)
#: Any text: every code point, and often a lone surrogate, NUL or line break inside.
WILD_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=30),
    SURROGATE_TEXT,
    st.tuples(
        st.text(max_size=10), st.sampled_from(["\x00", "\n", "\r\n", " "]), st.text(max_size=10)
    ).map("".join),
)


def _repeat(chunk: str, count: int) -> str:
    return (chunk * count)[:100_000]


#: Up to 100,000 characters.
HUGE_TEXT = st.builds(_repeat, st.text(min_size=1, max_size=3), st.integers(1_000, 100_000))

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # nan and +-inf included
    st.text(max_size=30),
    WILD_TEXT,
    HUGE_TEXT,
    st.binary(max_size=64),
)
HASHABLES = st.one_of(st.integers(), st.text(max_size=10), st.binary(max_size=8))
PLAIN_SETS = st.one_of(st.sets(HASHABLES, max_size=5), st.frozensets(HASHABLES, max_size=5))


class Opaque:
    """A value no JSON encoder knows."""


#: Leaves JSON cannot carry, not even kombu's JSON (except datetimes, decimals and UUIDs,
#: which the cache key converter refuses, so they never reach kombu).
UNENCODABLE = st.one_of(
    st.builds(object),
    st.builds(Opaque),
    st.complex_numbers(),
    st.datetimes(),
    st.decimals(),
    st.uuids(),
    st.frozensets(st.builds(Opaque), min_size=1, max_size=3),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=10), WILD_TEXT), children, max_size=5),
    )


def _containers_with_bad_keys(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    tuple_keyed = st.dictionaries(st.tuples(st.integers()), children, min_size=1, max_size=3)
    return st.one_of(_containers(children), tuple_keyed)


#: Any argument: JSON-like, sets, bytes, and values with no JSON form, nested.
ANY_VALUE = st.recursive(
    st.one_of(SCALARS, PLAIN_SETS, UNENCODABLE), _containers_with_bad_keys, max_leaves=8
)
#: What the broker is asked to carry: fewer leaves, each call sends a message.
DISPATCH_VALUE = st.recursive(
    st.one_of(SCALARS, PLAIN_SETS, UNENCODABLE), _containers_with_bad_keys, max_leaves=6
)
SMALL_JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=4,
)
ARG_NAMES = st.text(min_size=1, max_size=20)
PREFIXES = st.one_of(
    st.sampled_from(["app.tasks.Report", "naïve module.Klasse", "with spaces\tand\nnewlines"]),
    st.text(),
    WILD_TEXT,
    st.text(min_size=100, max_size=400),
    st.builds(_repeat, st.text(min_size=1, max_size=3), st.integers(1, 100_000)),
)
PAIR_TEXT = st.one_of(st.text(max_size=12), SURROGATE_TEXT)
PAIRS = st.lists(st.tuples(PAIR_TEXT, PAIR_TEXT), max_size=4)


@st.composite
def near_uuids(draw: st.DrawFn) -> str:
    """A UUID with one character replaced, inserted or removed, or wrapped."""
    text = str(draw(st.uuids()))
    if draw(st.booleans()):
        text = text.upper()
    index = draw(st.integers(0, len(text)))
    char = draw(st.one_of(ANY_CHAR, SURROGATE, st.sampled_from("\n\r\t\x00 /%.-,{}")))
    how = draw(st.sampled_from(["replace", "insert", "delete", "wrap"]))
    if how == "replace":
        return text[:index] + char + text[index + 1 :]
    if how == "insert":
        return text[:index] + char + text[index:]
    if how == "delete":
        return text[:index] + text[index + 1 :]
    return char + text + char


PATH_TRICKS = [
    "..",
    ".",
    "../..",
    "../../etc/passwd",
    "%",
    "%00",
    "%2F",
    "%252F",
    "/",
    "//",
    "\\",
    "\x00",
    " ",
    "null",
    "undefined",
    "[]",
    "{}",
    "?",
    "#",
    ";",
    "status",
    "seen",
]
TASK_IDS = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: f"{{{u}}}"),
    near_uuids(),
    st.text(max_size=40),
    WILD_TEXT,
    st.sampled_from(PATH_TRICKS),
    st.lists(
        st.sampled_from(["..", ".", "/", "%", "%2e", "%2F", "\\", "a"]), min_size=1, max_size=8
    ).map("".join),
    st.builds(_repeat, st.text(min_size=1, max_size=3), st.integers(100, 5_000)),
)
UUIDS = st.uuids().map(str)


def _many_uuids(first: int, count: int, distinct: int) -> list[str]:
    """``count`` ids cycling through ``distinct`` UUIDs (duplicates when fewer)."""
    return [str(uuid.UUID(int=(first + i % distinct) % 2**128, version=4)) for i in range(count)]


ID_LISTS = st.one_of(
    st.lists(TASK_IDS, max_size=8),
    st.lists(UUIDS, min_size=1, max_size=8),
    st.lists(st.one_of(UUIDS, TASK_IDS), min_size=1, max_size=4).flatmap(  # duplicates
        lambda ids: st.lists(st.sampled_from(ids), min_size=1, max_size=12)
    ),
    # around and past the batch limit, with and without duplicates
    st.builds(
        _many_uuids, st.integers(0, 2**128), st.integers(95, 130), st.sampled_from([1, 3, 130])
    ),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), WILD_TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
BATCH_BODIES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"task_ids": JSON_VALUES}, optional={"other": JSON_VALUES}),
    st.fixed_dictionaries({"task_ids": ID_LISTS}, optional={"other": JSON_VALUES}),
    st.fixed_dictionaries({"task_ids": st.lists(st.one_of(UUIDS, JSON_VALUES), max_size=6)}),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=bogus",
            "application/vnd.api+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "multipart/form-data",
            "application/octet-stream",
            "",
        ]
    ),
    st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=40),
)


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bytes that are, or nearly are, a batch request: random, encoded, cut short."""
    how = draw(st.sampled_from(["binary", "text", "encoded", "truncated"]))
    if how == "binary":
        return draw(st.binary(max_size=500))
    if how == "text":
        return draw(WILD_TEXT).encode("utf-8", "surrogatepass")
    document = json.dumps(draw(BATCH_BODIES))
    if how == "encoded":
        return document.encode(draw(st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-8-sig"])))
    return document[: draw(st.integers(0, len(document)))].encode()


HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "Accept",
            "Accept-Language",
            "Authorization",
            "Content-Type",
            "Cookie",
            "If-None-Match",
            "Origin",
            "Range",
            "Referer",
            "User-Agent",
            "X-Forwarded-For",
        ]
    ),
    st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=20),
).filter(lambda name: name.lower() not in ("x-requested-with", "x-user"))
#: Header values as HTTP carries them: latin-1, no line breaks.
HEADER_VALUES = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=40)
HEADERS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4)
REQUESTED_WITH = st.one_of(st.none(), st.just("XMLHttpRequest"), HEADER_VALUES)
QUERIES = st.one_of(
    st.just(""),
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3).map(
        lambda params: "?" + urlencode(params, errors="surrogatepass")
    ),
    WILD_TEXT.map(lambda text: "?" + quote(text, safe="=&", errors="surrogatepass")),
)
OWNERS = st.text(
    st.characters(codec=None, exclude_categories=(), exclude_characters="\r\n"), max_size=30
)
JOB_STATES = ("queued", "running", "succeeded", "failed", "revoked", "retrying")


# -- helpers ---------------------------------------------------------------------------

TASK_NAME = "app.tasks.Report"
#: A memcached key: printable ASCII without space or control characters, <= 250 bytes.
MEMCACHED_KEY = re.compile(r"[\x21-\x7e]{1,250}")
UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
BATCH_LIMIT = defaults.BATCH_LIMIT


def _is_uuid(text: str) -> bool:
    return UUID_TEXT.fullmatch(text) is not None


def _uuid_then_newline(text: str) -> bool:
    """The shape test_a_uuid_followed_by_a_newline_is_malformed_in_batches covers."""
    return text.endswith("\n") and _is_uuid(text[:-1])


def _json_form(value: Any) -> bool | None:
    """Whether JSON (as kombu sends it) carries ``value``, for the values the strategies build.

    True: it does, so a key must be built and the job sent. False: it does not, so a
    ``TypeError`` naming the argument is due. None: it depends on the encoding (bytes,
    sets), so either is right, as long as what gets a key can also be sent.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, bytes):
        return None
    if isinstance(value, set | frozenset):
        return False if any(_json_form(item) is False for item in value) else None
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            return False
        return _all_forms(value.values())
    if isinstance(value, list | tuple):
        return _all_forms(value)
    return False


def _all_forms(items: Iterable[Any]) -> bool | None:
    forms = [_json_form(item) for item in items]
    if False in forms:
        return False
    return None if None in forms else True


def _has_sets(value: Any) -> bool:
    if isinstance(value, set | frozenset):
        return True
    if isinstance(value, list | tuple):
        return any(_has_sets(item) for item in value)
    if isinstance(value, dict):
        return any(_has_sets(item) for item in value.values())
    return False


def _reshuffle(value: Any) -> Any:
    """An equal argument built differently: dicts reversed, lists <-> tuples, set kinds."""
    if isinstance(value, dict):
        return {key: _reshuffle(item) for key, item in reversed(list(value.items()))}
    if isinstance(value, list):
        return tuple(_reshuffle(item) for item in value)
    if isinstance(value, tuple):
        return [_reshuffle(item) for item in value]
    if isinstance(value, set):
        return frozenset(value)
    if isinstance(value, frozenset):
        return set(value)
    return value


def _key(prefix: str, spec: keys.SignificantKwargs, arguments: dict[str, Any]) -> str:
    values = keys.significant_values(TASK_NAME, keys.normalize_significant(spec), arguments)
    return keys.build_cache_key(prefix, values)


def _assert_valid_key(key: str) -> None:
    assert key.startswith("jobtastic:")
    for full in (key, keys.result_key(key), keys.herd_key(key)):
        assert MEMCACHED_KEY.fullmatch(full), f"not a valid memcached key: {full!r}"
        assert len(full.encode("ascii")) <= keys.MAX_KEY_LENGTH


def _query_args(query: str) -> MultiDict[str, str]:
    """The query string as a view reads it (decoded by Werkzeug, as the app's requests are)."""
    return EnvironBuilder(query_string=query).get_request().args


def _path_id(task_id: str) -> str:
    return quote(task_id, safe="", errors="surrogatepass")


def _routed(task_id: str) -> bool:
    """Whether the blueprint's id converter hands ``task_id`` to the view at all.

    An empty id or one starting with "/" makes another URL (a 404, or a redirect that
    merges the slashes); anything else, newlines included, reaches the view.
    """
    return task_id != "" and not task_id.startswith("/")


def _send(client: FlaskClient, method: str, url: str, **kwargs: Any) -> TestResponse:
    """A request that must not fail on the server (TESTING re-raises what would be a 500)."""
    try:
        response = client.open(url, method=method, **kwargs)
    except Exception as exc:
        raise AssertionError(
            f"{method} {url[:300]!r} raised {type(exc).__name__} (a 500 in production): {exc}"
        ) from exc
    assert response.status_code < 500, f"{method} {url[:300]!r} -> {response.status_code}"
    return response


def _json_of(response: TestResponse) -> Any:
    assert response.is_json, (
        f"{response.status_code} {response.content_type}: {response.get_data()[:200]!r}"
    )
    return json.loads(response.get_data(as_text=True))


def _expect_bad_request(response: TestResponse) -> dict[str, Any]:
    document = _json_of(response)
    assert response.status_code == 400, (response.status_code, document)
    assert document["error"]["type"] == "BadRequest"
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]
    return document


def _unknown_document(task_id: str) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "state": "UNKNOWN",
        "ready": False,
        "progress_percent": 0,
        "time_remaining": -1,
    }


def _expect_unknown(response: TestResponse, task_id: str) -> None:
    assert response.status_code == 404, (response.status_code, response.get_data()[:200])
    assert _json_of(response) == _unknown_document(task_id)
    assert response.headers.get("Cache-Control") == "no-store"


def _check_batch(response: TestResponse, ids: list[str]) -> None:
    """The batch contract for the ids as the view reads them."""
    if not ids or len(ids) > BATCH_LIMIT:
        _expect_bad_request(response)
        return
    invalid = [task_id for task_id in ids if not _is_uuid(task_id)]
    if invalid:
        assert _expect_bad_request(response)["invalid"] == invalid[:10]
        return
    assert response.status_code == 200, response.get_data()[:300]
    assert _json_of(response) == {"tasks": {task_id: _unknown_document(task_id) for task_id in ids}}


def _check_batch_shape(response: TestResponse) -> None:
    """What any batch answer looks like: a JSON 400, or 200 with every job UNKNOWN."""
    if response.status_code == 400:
        _expect_bad_request(response)
        return
    assert response.status_code == 200, response.status_code
    tasks = _json_of(response)["tasks"]
    assert all(document["state"] == "UNKNOWN" for document in tasks.values())


def _send_as(app: Flask, owner: str, payload: Any) -> str:
    """The id of the job ``owner`` sends (only the id: a kept result object would try to
    unsubscribe from Redis when collected, after the test servers stopped)."""
    with app.test_request_context(headers={"X-User": owner}):
        return PropertyPayloadTask.delay_or_fail(payload=payload).id


# -- 1. cache keys ----------------------------------------------------------------------


@cases(2000)
@given(name=ARG_NAMES, value=ANY_VALUE, prefix=PREFIXES, as_str=st.booleans())
def test_cache_key_of_any_argument_is_valid_or_a_type_error_naming_it(
    name: str, value: Any, prefix: str, as_str: bool
) -> None:
    # (name, str) as in the README's example task: the text may hold lone surrogates
    # (valid in a request's JSON: "\ud800")
    spec: keys.SignificantKwargs = [(name, str)] if as_str else [name]
    form = _json_form(value)
    try:
        key = _key(prefix, spec, {name: value})
    except TypeError as exc:
        assert not as_str and form is not True, f"refused a valid argument: {exc}"
        assert repr(name) in str(exc) and TASK_NAME in str(exc), str(exc)
        return
    assert as_str or form is not False, "a value JSON cannot carry got a key"
    _assert_valid_key(key)
    if form is not False and not (as_str and _has_sets(value)):
        assert _key(prefix, spec, {name: copy.deepcopy(value)}) == key
    if not as_str:
        assert _key(prefix, spec, {name: _reshuffle(value)}) == key


@st.composite
def _near_pairs(draw: st.DrawFn, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs that merge to similar text: boundaries moved, fields swapped, pairs added..."""
    fields = [field for pair in pairs for field in pair]
    how = draw(st.sampled_from(["other", "same", "shift", "swap", "empty", "drop", "flip", "edit"]))
    if how == "other":
        return draw(PAIRS)
    if how == "shift" and len(fields) >= 2:
        i = draw(st.integers(0, len(fields) - 2))
        left, right = fields[i], fields[i + 1]
        if left and (not right or draw(st.booleans())):
            cut = draw(st.integers(1, len(left)))
            fields[i], fields[i + 1] = left[:-cut], left[-cut:] + right
        elif right:
            cut = draw(st.integers(1, len(right)))
            fields[i], fields[i + 1] = left + right[:cut], right[cut:]
    elif how == "swap" and pairs:
        i = draw(st.integers(0, len(pairs) - 1))
        fields[2 * i], fields[2 * i + 1] = fields[2 * i + 1], fields[2 * i]
    elif how == "empty":
        i = draw(st.integers(0, len(pairs)))
        fields[2 * i : 2 * i] = ["", ""]
    elif how == "drop" and pairs:
        i = draw(st.integers(0, len(pairs) - 1))
        del fields[2 * i : 2 * i + 2]
    elif how == "flip":
        fields = [field for pair in reversed(pairs) for field in pair]
    elif how == "edit" and fields:
        i = draw(st.integers(0, len(fields) - 1))
        at = draw(st.integers(0, len(fields[i])))
        char = draw(ANY_CHAR)
        fields[i] = fields[i][:at] + char + fields[i][at + 1 :]
    return [(fields[j], fields[j + 1]) for j in range(0, len(fields), 2)]


@cases(2000)
@given(pairs=PAIRS, data=st.data(), value=SMALL_JSONISH)
def test_keys_are_equal_exactly_when_the_name_text_pairs_are(
    pairs: list[tuple[str, str]], data: st.DataObject, value: Any
) -> None:
    other = data.draw(_near_pairs(pairs), label="other")
    same_key = keys.build_cache_key(TASK_NAME, pairs) == keys.build_cache_key(TASK_NAME, other)
    assert same_key == (list(other) == list(pairs))
    # through the default converter: equal canonical text <=> equal key
    key = _key(TASK_NAME, ["x"], {"x": value})
    for variant in ([value], {"": value}, repr(value), _reshuffle(value)):
        same_text = keys.canonical_json(variant) == keys.canonical_json(value)
        assert (_key(TASK_NAME, ["x"], {"x": variant}) == key) == same_text


@st.composite
def _near_prefix(draw: st.DrawFn, prefix: str) -> str:
    how = draw(st.sampled_from(["other", "same", "cleaned", "longer", "shorter", "case"]))
    if how == "other":
        return draw(PREFIXES)
    if how == "cleaned":  # what safe_prefix would turn it into
        return re.sub(r"[^A-Za-z0-9_.:\-]", "_", prefix)
    if how == "longer":
        return prefix + draw(ANY_CHAR)
    if how == "shorter":
        return prefix[:-1]
    if how == "case":
        return prefix.swapcase()
    return prefix


@cases(1500)
@given(prefix=PREFIXES, data=st.data())
def test_any_prefix_gives_a_valid_key_of_its_own(prefix: str, data: st.DataObject) -> None:
    values = [("payload", "1")]
    key = keys.build_cache_key(prefix, values)
    _assert_valid_key(key)
    assert keys.build_cache_key(prefix, values) == key
    other = data.draw(_near_prefix(prefix), label="other")
    assert (keys.build_cache_key(other, values) == key) == (other == prefix)


@cases(100)
@given(data=st.binary(max_size=16))
def test_bytes_and_a_dict_spelling_their_escape_get_different_keys(data: bytes) -> None:
    as_bytes = _key(TASK_NAME, ["payload"], {"payload": data})
    as_dict = _key(TASK_NAME, ["payload"], {"payload": {"__bytes__": data.hex()}})
    assert as_bytes != as_dict


# -- 2. dispatch with any argument ------------------------------------------------------


@cases(500)
@given(value=ANY_VALUE)
def test_cache_key_for_any_payload_is_valid_or_a_type_error_naming_it(
    app: Flask, value: Any
) -> None:
    with app.app_context():
        task = registered_instance(PropertyPayloadTask)
        try:
            key = task.cache_key_for((), {"payload": value})
        except TypeError as exc:
            assert _json_form(value) is not True, f"refused a valid payload: {exc}"
            assert "'payload'" in str(exc) and PropertyPayloadTask.name in str(exc)
            return
    assert _json_form(value) is not False, "a payload JSON cannot carry got a key"
    _assert_valid_key(key)


@cases(300)
@given(value=DISPATCH_VALUE)
def test_delay_or_fail_sends_a_job_or_raises_a_type_error_naming_the_argument(
    app: Flask, client: FlaskClient, value: Any
) -> None:
    with app.app_context():
        try:
            task_id = PropertyPayloadTask.delay_or_fail(payload=value).id
        except TypeError as exc:  # anything else (kombu's EncodeError...) fails the test
            assert not isinstance(exc, KombuError)
            assert _json_form(value) is not True, f"refused a valid payload: {exc}"
            assert "'payload'" in str(exc), str(exc)
            return
    assert _json_form(value) is not False, "sent a payload JSON cannot carry"
    assert str(uuid.UUID(task_id)) == task_id
    status = _send(client, "GET", f"/jobtastic/status/{task_id}")
    assert status.status_code == 200 and _json_of(status)["state"] == "PENDING"


@bug_cases(100)
@given(
    where_bad=st.one_of(
        # the key converter accepts sets, so they reach the broker
        st.tuples(st.just("payload"), PLAIN_SETS),
        # a non-significant argument is not in the key at all
        st.tuples(
            st.just("extra"),
            st.one_of(PLAIN_SETS, st.builds(Opaque), st.builds(object), st.complex_numbers()),
        ),
    )
)
def test_unencodable_arguments_raise_a_type_error_naming_them(
    app: Flask, where_bad: tuple[str, Any]
) -> None:
    where, bad = where_bad
    token = uuid.uuid4().hex  # a fresh job each time: no herd to join
    if where == "payload":
        kwargs: dict[str, Any] = {"payload": [token, bad]}
    else:
        kwargs = {"payload": token, "extra": bad}
    with app.app_context(), pytest.raises(TypeError) as caught:
        PropertyPayloadTask.delay_or_fail(**kwargs)
    assert not isinstance(caught.value, KombuError)
    assert repr(where) in str(caught.value), str(caught.value)


# -- 3. every endpoint's inputs --------------------------------------------------------


@cases(1500)
@given(task_id=TASK_IDS, query=QUERIES, headers=HEADERS, requested_with=REQUESTED_WITH)
def test_single_job_endpoints_answer_json_400_or_404_for_any_id(
    client: FlaskClient,
    task_id: str,
    query: str,
    headers: dict[str, str],
    requested_with: str | None,
) -> None:
    path_id = _path_id(task_id)
    post_headers = dict(headers)
    if requested_with is not None:
        post_headers["X-Requested-With"] = requested_with
    requests = [
        ("GET", f"/jobtastic/status/{path_id}{query}", headers, False),
        # unknown ids only, so never a stream that stays open
        ("GET", f"/jobtastic/events/{path_id}{query}", headers, False),
        ("POST", f"/jobtastic/cancel/{path_id}{query}", post_headers, True),
        ("POST", f"/jobtastic/jobs/{path_id}/seen{query}", post_headers, True),
    ]
    for method, url, request_headers, guarded in requests:
        response = _send(client, method, url, headers=request_headers, buffered=False)
        try:
            if not _routed(task_id):
                assert response.status_code in (308, 404), response.status_code
            elif guarded and not requested_with:
                _expect_bad_request(response)
            elif _is_uuid(task_id):
                _expect_unknown(response, task_id)
            else:
                _expect_bad_request(response)
        finally:
            response.close()


@cases(1000)
@given(
    parts=ID_LISTS,
    extra=st.dictionaries(st.text(max_size=8).filter(lambda n: n != "ids"), st.text(), max_size=3),
    raw=st.one_of(st.none(), WILD_TEXT, st.text(max_size=200)),
)
def test_batch_get_answers_any_query(
    client: FlaskClient, parts: list[str], extra: dict[str, str], raw: str | None
) -> None:
    if raw is not None:  # a query of any shape
        url = "/jobtastic/status?" + quote(raw, safe="=&,", errors="surrogatepass")
        _check_batch_shape(_send(client, "GET", url))
        return
    query = urlencode({"ids": ",".join(parts), **extra}, errors="surrogatepass")
    ids = [part for part in _query_args(query).get("ids", "").split(",") if part]
    assume(not any(_uuid_then_newline(task_id) for task_id in ids))
    _check_batch(_send(client, "GET", f"/jobtastic/status?{query}"), ids)


@cases(1000)
@given(body=BATCH_BODIES)
def test_batch_post_answers_any_json_body(client: FlaskClient, body: Any) -> None:
    ids = body.get("task_ids") if isinstance(body, dict) else None
    well_typed = isinstance(ids, list) and all(isinstance(task_id, str) for task_id in ids)
    if well_typed:
        assume(not any(_uuid_then_newline(task_id) for task_id in ids))
    response = _send(client, "POST", "/jobtastic/status", json=body)
    if well_typed:
        _check_batch(response, ids)
    else:
        _expect_bad_request(response)


@cases(800)
@given(body=raw_bodies(), content_type=CONTENT_TYPES, headers=HEADERS)
def test_batch_post_answers_any_raw_body(
    client: FlaskClient, body: bytes, content_type: str, headers: dict[str, str]
) -> None:
    headers = {name: value for name, value in headers.items() if name.lower() != "content-type"}
    response = _send(
        client, "POST", "/jobtastic/status", data=body, content_type=content_type, headers=headers
    )
    _check_batch_shape(response)


@cases(300)
@given(
    owner=st.one_of(st.none(), OWNERS),
    params=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["state", "all"]), st.text(max_size=8)),
            st.one_of(st.sampled_from(JOB_STATES), st.text(max_size=10)),
        ),
        max_size=4,
    ),
    headers=HEADERS,
    task_id=UUIDS,
)
def test_job_list_endpoints_answer_any_query(
    owned_app: Flask,
    owner: str | None,
    params: list[tuple[str, str]],
    headers: dict[str, str],
    task_id: str,
) -> None:
    client = owned_app.test_client(use_cookies=False)
    if owner is not None:
        headers = {**headers, "X-User": owner}
    query = urlencode(params, errors="surrogatepass")
    wanted = _query_args(query).getlist("state")
    response = _send(client, "GET", f"/jobtastic/jobs?{query}", headers=headers)
    if owner is None:
        assert response.status_code == 200 and _json_of(response) == {"jobs": []}
    elif wanted and not set(wanted) <= set(JOB_STATES):
        _expect_bad_request(response)
    else:
        assert response.status_code == 200
        assert isinstance(_json_of(response)["jobs"], list)
    page = _send(client, "GET", f"/jobtastic/jobs.html?{query}", headers=headers)
    assert page.status_code == 200 and page.mimetype == "text/html"
    seen = _send(
        client,
        "POST",
        f"/jobtastic/jobs/{task_id}/seen",
        headers={**headers, "X-Requested-With": "XMLHttpRequest"},
    )
    _expect_unknown(seen, task_id)


@bug_cases(200)
@given(task_id=UUIDS, via_json=st.booleans())
def test_a_uuid_followed_by_a_newline_is_malformed_in_batches(
    client: FlaskClient, task_id: str, via_json: bool
) -> None:
    malformed = task_id + "\n"
    if via_json:
        response = _send(client, "POST", "/jobtastic/status", json={"task_ids": [malformed]})
    else:
        response = _send(client, "GET", f"/jobtastic/status?ids={quote(malformed, safe='')}")
    _expect_bad_request(response)


@bug_cases(200)
@given(
    head=st.text(min_size=1, max_size=10).filter(lambda text: not text.startswith("/")),
    tail=st.text(max_size=10),
    endpoint=st.sampled_from(["status", "events", "cancel", "seen"]),
)
def test_ids_with_a_newline_get_a_json_400(
    client: FlaskClient, head: str, tail: str, endpoint: str
) -> None:
    path_id = _path_id(head + "\n" + tail)
    post = {"X-Requested-With": "XMLHttpRequest"}
    if endpoint == "seen":
        response = _send(client, "POST", f"/jobtastic/jobs/{path_id}/seen", headers=post)
    elif endpoint == "cancel":
        response = _send(client, "POST", f"/jobtastic/cancel/{path_id}", headers=post)
    else:
        response = _send(client, "GET", f"/jobtastic/{endpoint}/{path_id}", buffered=False)
    try:
        _expect_bad_request(response)
    finally:
        response.close()


@bug_cases(50)
@given(depth=st.integers(5_000, 20_000), opener=st.sampled_from(["[", '{"a":']), wrap=st.booleans())
def test_deeply_nested_json_body_is_a_400_not_a_500(
    client: FlaskClient, depth: int, opener: str, wrap: bool
) -> None:
    closer = "]" if opener == "[" else "}"
    body = opener * depth + "1" + closer * depth
    if wrap:
        body = '{"task_ids": ' + body + "}"
    response = _send(
        client, "POST", "/jobtastic/status", data=body, content_type="application/json"
    )
    _expect_bad_request(response)


# -- 4. owner isolation ------------------------------------------------------------------


@cases(100)
@given(owner=OWNERS, other=OWNERS)
def test_a_job_is_readable_only_with_its_owners_header(
    owned_app: Flask, owner: str, other: str
) -> None:
    assume(owner != other)
    task_id = _send_as(owned_app, owner, uuid.uuid4().hex)  # a fresh job: no herd to join
    client = owned_app.test_client(use_cookies=False)
    status_url = f"/jobtastic/status/{task_id}"
    mine = _send(client, "GET", status_url, headers={"X-User": owner})
    assert mine.status_code == 200 and _json_of(mine)["state"] == "PENDING"
    batch = _send(
        client,
        "POST",
        "/jobtastic/status",
        json={"task_ids": [task_id]},
        headers={"X-User": owner},
    )
    assert _json_of(batch)["tasks"][task_id]["state"] == "PENDING"
    for headers in ({"X-User": other}, {}):
        _expect_unknown(_send(client, "GET", status_url, headers=headers), task_id)
        batch = _send(
            client, "POST", "/jobtastic/status", json={"task_ids": [task_id]}, headers=headers
        )
        assert _json_of(batch) == {"tasks": {task_id: _unknown_document(task_id)}}
        events = _send(
            client, "GET", f"/jobtastic/events/{task_id}", headers=headers, buffered=False
        )
        try:
            _expect_unknown(events, task_id)
        finally:
            events.close()
        cancel = _send(
            client,
            "POST",
            f"/jobtastic/cancel/{task_id}",
            headers={**headers, "X-Requested-With": "XMLHttpRequest"},
        )
        _expect_unknown(cancel, task_id)
    still = _send(client, "GET", status_url, headers={"X-User": owner})
    assert _json_of(still)["state"] == "PENDING"


@bug_cases(50)
@given(owner=OWNERS, other=OWNERS)
def test_identical_calls_from_two_owners_each_get_a_job_they_can_read(
    owned_app: Flask, owner: str, other: str
) -> None:
    assume(owner != other)
    token = uuid.uuid4().hex  # the same significant arguments for both owners
    sent = {who: _send_as(owned_app, who, token) for who in (owner, other)}
    client = owned_app.test_client(use_cookies=False)
    for who, task_id in sent.items():
        response = _send(client, "GET", f"/jobtastic/status/{task_id}", headers={"X-User": who})
        assert response.status_code == 200, f"{who!r} was handed job {task_id}, unreadable"


# -- 5. every endpoint over jobs returning every result type, and foreign records ------

RESULT_OWNER = "result-owner"
ENDPOINTS = ("status", "batch GET", "batch POST", "events", "cancel", "jobs", "jobs.html", "seen")


@pytest.fixture(scope="module")
def result_jobs(celery_worker: Any, redis_server: Any) -> Iterator[tuple[Flask, list[str]]]:
    """An app and the ids of: one finished job per result type of ``tests.tasks.RETURNED``
    (tracked, so the job list shows them), one still running, and every foreign record
    of ``tests.strict.FOREIGN`` planted in the real Redis result backend."""
    app = create_app(
        owner_header="X-User", JOBTASTIC_ALLOW_UNOWNED=True, JOBTASTIC_EVENTS_MAX_SECONDS=1.0
    )
    token = uuid.uuid4().hex
    with app.test_request_context(headers={"X-User": RESULT_OWNER}):
        finished = [
            ReturnsTask.apply_async(
                kwargs={"token": token, "kind": kind, "seconds": 0.05}, track_state=True
            ).id
            for kind in RETURNED
        ]
        running = ReturnsTask.apply_async(
            kwargs={"token": token, "kind": "plain", "seconds": 6.0}, track_state=True
        ).id
    meta_of = app.extensions["jobtastic"].celery.backend.get_task_meta
    deadline = time.monotonic() + 30
    while not all(meta_of(task_id)["status"] in ("SUCCESS", "FAILURE") for task_id in finished):
        assert time.monotonic() < deadline, "the result-type jobs did not finish"
        time.sleep(0.1)
    backend = redis.Redis.from_url(os.environ["JOBTASTIC_TEST_BACKEND_URL"])
    planted, keys = [], []
    for raw, _ in strict.FOREIGN.values():
        task_id, written = strict.plant(backend, raw)
        planted.append(task_id)
        keys += written
    yield app, [*finished, running, *planted, str(uuid.uuid4())]
    backend.delete(*keys)
    backend.close()
    close_app(app)


def _call(client: FlaskClient, endpoint: str, ids: list[str], headers: dict[str, str]) -> Any:
    """One request to ``endpoint``; ``(status code, bodies to parse as strict JSON)``."""
    if endpoint == "status":
        response = client.get(f"/jobtastic/status/{ids[0]}", headers=headers)
    elif endpoint == "batch GET":
        response = client.get(f"/jobtastic/status?ids={','.join(ids)}", headers=headers)
    elif endpoint == "batch POST":
        response = client.post("/jobtastic/status", json={"task_ids": ids}, headers=headers)
    elif endpoint == "cancel":
        response = client.post(f"/jobtastic/cancel/{ids[0]}", headers=headers)
    elif endpoint == "seen":
        response = client.post(f"/jobtastic/jobs/{ids[0]}/seen", headers=headers)
    elif endpoint == "jobs":
        response = client.get("/jobtastic/jobs?all=1", headers=headers)
    elif endpoint == "jobs.html":
        response = client.get("/jobtastic/jobs.html", headers=headers)
    else:
        response = client.get(f"/jobtastic/events/{ids[0]}", headers=headers, buffered=False)
        try:
            if response.mimetype == "text/event-stream":
                return response.status_code, [
                    json.dumps(payload) for _, payload in strict.sse_events(response.response)
                ]
        finally:
            response.close()
    if response.mimetype != "application/json":
        assert endpoint == "jobs.html" and response.mimetype == "text/html", response.mimetype
        return response.status_code, []
    return response.status_code, [response.get_data()]


def test_no_result_type_or_foreign_record_makes_any_endpoint_fail(
    result_jobs: tuple[Flask, list[str]],
) -> None:
    """Every endpoint, jobs returning each result type and foreign records: no 5xx, and
    every JSON body (every event too) strict JSON. The tally is printed (``-s``)."""
    app, ids = result_jobs
    client = app.test_client(use_cookies=False)
    tally: dict[str, dict[str, int]] = {name: {} for name in ENDPOINTS}

    @cases(400)
    @given(
        endpoint=st.sampled_from(ENDPOINTS),
        picks=st.lists(st.sampled_from(ids), min_size=1, max_size=6),
        owner=st.sampled_from([RESULT_OWNER, "someone-else", None]),
        requested_with=st.booleans(),
    )
    def one_request(endpoint: str, picks: list[str], owner: str | None, requested_with: bool):
        headers = {"X-User": owner} if owner else {}
        if requested_with:
            headers["X-Requested-With"] = "XMLHttpRequest"
        try:
            code, bodies = _call(client, endpoint, picks, headers)
        except Exception:  # TESTING re-raises what production answers with a 500
            code, bodies = 500, []
        kinds = [f"{code // 100}xx"]
        for body in bodies:
            try:
                strict.strict_loads(body)
            except ValueError:
                kinds.append("invalid JSON")
        for kind in kinds:
            tally[endpoint][kind] = tally[endpoint].get(kind, 0) + 1

    one_request()
    print("\nresponses by endpoint:", json.dumps(tally, sort_keys=True))
    bad = sum(counts.get("5xx", 0) + counts.get("invalid JSON", 0) for counts in tally.values())
    assert bad == 0, tally
