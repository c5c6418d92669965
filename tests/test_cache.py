"""PyMemcacheCache, against real memcached servers (the herd operations: test_herd.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask_caching import Cache
from pymemcache.client.base import Client

from flask_jobtastic.cache import PyMemcacheCache
from flask_jobtastic.cache_serde import FLAG_JSON
from tests.caches import LOGGER, MakeCache, backend_of, wait_for, warnings_from
from tests.servers import MemcachedServer, free_port


class Point:
    """A user class: JSON cannot carry it."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class Planted:
    """What an attacker with access to memcached stores: unpickling it runs ``os.mkdir``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


# -- basic behaviour through flask-caching -------------------------------------


def test_values_round_trip_through_flask_cache(cache: Cache) -> None:
    values = {
        "dict": {"a": [1, 2], "b": None, "nested": {"c": [True, False, 0.25]}},
        "text": 'grüße \u2603 "quoted"',
        "empty": "",
        "int": 42,
        "negative": -7,
        "big": 2**70,
        "float": 3.5,
        "true": True,
        "list": [1, "two", None],
    }
    for key, value in values.items():
        assert cache.set(key, value) is True
    for key, value in values.items():
        got = cache.get(key)
        assert got == value and type(got) is type(value), key

    assert cache.add("int", 99) is False
    assert cache.get("int") == 42
    assert cache.add("fresh", "first") is True
    assert cache.get("fresh") == "first"

    assert cache.has("fresh") is True
    assert cache.has("never-set") is False
    assert cache.delete("fresh") is True
    assert cache.delete("fresh") is False
    assert cache.get("fresh") is None
    assert cache.has("fresh") is False

    assert cache.get_many("int", "missing", "text", "int") == [42, None, values["text"], 42]
    assert cache.get_dict("int", "missing") == {"int": 42, "missing": None}
    assert sorted(cache.set_many({"m1": 1, "m2": [2]})) == ["m1", "m2"]
    assert cache.get_many("m1", "m2") == [1, [2]]
    assert sorted(cache.delete_many("m1", "m2", "never-set")) == ["m1", "m2", "never-set"]
    assert cache.get_many("m1", "m2") == [None, None]


def test_inc_and_dec_count_atomically(cache: Cache) -> None:
    backend = backend_of(cache)
    assert backend.inc("hits") == 1  # a missing counter starts at delta
    assert backend.inc("hits", 5) == 6
    assert backend.dec("hits", 10) == -4  # below zero, unlike memcached's decr
    assert backend.inc("hits") == -3
    assert backend.dec("other") == -1
    assert cache.get("hits") == -3

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda _: backend.inc("shared"), range(200)))
    assert cache.get("shared") == 200


def test_memoize_uses_the_backend(cache: Cache) -> None:
    calls: list[int] = []

    @cache.memoize(timeout=60)
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    with cache.app.app_context():
        assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert calls == [3, 4]


def test_values_are_stored_as_json(cache: Cache, memcached: MemcachedServer) -> None:
    backend = backend_of(cache)
    cache.set("doc", {"ids": ["a", "b"], "n": 2})
    raw = Client((memcached.host, memcached.port))  # no serde: the bytes memcached holds
    try:
        stored = raw.get(backend.memcached_key("doc"))
    finally:
        raw.close()
    assert json.loads(stored) == {"ids": ["a", "b"], "n": 2}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (b"raw", "bytes"),
        ((1, "two"), "tuple"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "datetime"),
        (Point(1, 2), "Point"),
        ({1, 2}, "set"),
        (threading.Lock(), "lock"),
        ({"ok": [1, {"deep": Decimal("1.5")}]}, "Decimal"),
        ({1: "one"}, "int key 1"),
    ],
    ids=["bytes", "tuple", "datetime", "object", "set", "lock", "nested", "int-key"],
)
def test_value_json_cannot_carry_is_the_callers_error(
    cache: Cache, value: Any, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = backend_of(cache)
    for store in (
        lambda: cache.set("bad", value),
        lambda: cache.add("bad", value),
        lambda: backend.set_many({"fine": 1, "bad": value}),
    ):
        with pytest.raises(TypeError, match="JSON") as raised:
            store()
        assert named in str(raised.value)
        if named == "Decimal":  # where in the value it sits
            assert "['ok'][1]['deep']" in str(raised.value)
    assert cache.get("bad") is None and cache.get("fine") is None  # nothing half-stored
    assert warnings_from(caplog) == []  # a caller's bug, not memcached trouble
    assert cache.set("after", 1) is True
    assert cache.get("after") == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("-inf")]])
def test_nan_and_infinity_are_refused(cache: Cache, value: Any) -> None:
    with pytest.raises(ValueError, match="JSON"):
        cache.set("number", value)
    assert cache.get("number") is None


@pytest.mark.parametrize(
    "flags", [1, FLAG_JSON, 16], ids=["pickle-flag", "json-flag", "old-text-flag"]
)
def test_planted_pickle_is_never_unpickled(
    cache: Cache,
    memcached: MemcachedServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    flags: int,
) -> None:
    backend = backend_of(cache)
    marker = tmp_path / "code-ran"
    planted = pickle.dumps(Planted(marker))
    key = backend.memcached_key("result-id")
    attacker = Client((memcached.host, memcached.port))  # anyone on the network
    try:
        assert attacker.set(key, planted, flags=flags, noreply=False)
    finally:
        attacker.close()

    assert cache.get("result-id") is None  # a miss, as if nothing were cached
    assert cache.get_many("result-id") == [None]
    assert backend.inc("result-id") is None  # not a counter either
    assert not marker.exists()
    messages = warnings_from(caplog)
    assert len(messages) == 1 and "result-id" in messages[0] and "miss" in messages[0]
    assert cache.set("result-id", "mine") is True  # our next write replaces it
    assert cache.get("result-id") == "mine"


def test_value_too_large_is_refused_not_an_outage(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    assert cache.set("big", "x" * (2 * 1024 * 1024)) is False
    assert cache.get("big") is None
    messages = warnings_from(caplog)
    assert len(messages) == 1 and "refused set" in messages[0]
    assert cache.set("small", "fine") is True  # the server was not written off
    assert cache.get("small") == "fine"


def test_clear_empties_the_cache(cache: Cache) -> None:
    cache.set("a", 1)
    assert cache.clear() is True
    assert cache.get("a") is None


# -- add is atomic ---------------------------------------------------------------


def test_add_elects_one_winner_among_threads(cache: Cache) -> None:
    keys = [f"race-{i}" for i in range(25)]
    barrier = threading.Barrier(20)

    def contender(name: str) -> list[str]:
        barrier.wait()
        return [key for key in keys if cache.add(key, name, timeout=60)]

    with ThreadPoolExecutor(max_workers=20) as pool:
        won = dict(enumerate(pool.map(contender, [f"thread-{i}" for i in range(20)])))

    wins = Counter(key for keys_won in won.values() for key in keys_won)
    assert wins == dict.fromkeys(keys, 1)
    for i, keys_won in won.items():
        for key in keys_won:
            assert cache.get(key) == f"thread-{i}"


def _race_for_keys(
    address: str, prefix: str, keys: list[str], name: str, start: Any, results: Any
) -> None:
    """Child process: add every key, report which ones this process won."""
    backend = PyMemcacheCache([address], key_prefix=prefix)
    try:
        start.wait(timeout=30)
        results.put((name, [key for key in keys if backend.add(key, name, timeout=60)]))
    finally:
        backend.close()


def test_add_elects_one_winner_among_processes(memcached: MemcachedServer) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    prefix = f"p{uuid.uuid4().hex[:10]}:"
    keys = [f"race-{i}" for i in range(300)]
    processes = [
        context.Process(
            target=_race_for_keys, args=(memcached.address, prefix, keys, name, start, results)
        )
        for name in ("first", "second")
    ]
    for process in processes:
        process.start()
    won = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    assert not set(won["first"]) & set(won["second"])
    assert sorted(won["first"] + won["second"]) == sorted(keys)
    backend = PyMemcacheCache([memcached.address], key_prefix=prefix)
    try:
        for name, keys_won in won.items():
            assert backend.get_many(*keys_won) == [name] * len(keys_won)
    finally:
        backend.close()


# -- timeouts --------------------------------------------------------------------


def test_timeouts_follow_flask_caching_semantics(
    memcached: MemcachedServer, make_cache: MakeCache
) -> None:
    cache = make_cache([memcached.address], CACHE_DEFAULT_TIMEOUT=1)
    cache.set("one-second", "v", timeout=1)
    cache.set("default", "v")  # CACHE_DEFAULT_TIMEOUT applies
    cache.set("forever", "v", timeout=0)
    cache.set("forty-days", "v", timeout=40 * 24 * 3600)  # > 30 days: absolute for memcached
    cache.set("as-timedelta", "v", timeout=dt.timedelta(days=31))
    assert cache.add("lock", "v", timeout=1) is True
    assert cache.get_many("one-second", "default", "forty-days", "as-timedelta") == ["v"] * 4

    wait_for(lambda: cache.get("one-second") is None, timeout=4)
    wait_for(lambda: cache.get("default") is None, timeout=2)
    assert cache.get_many("forever", "forty-days", "as-timedelta") == ["v"] * 3
    assert cache.add("lock", "again", timeout=1) is True  # the expired lock can be taken


# -- keys ------------------------------------------------------------------------


AWKWARD_KEYS = [
    "with space",
    "with_space",
    "tab\tkey",
    "line\nbreak",
    "ctrl\x01char",
    "ünïcode ключ",
    "emoji 🎉",
    "x" * 300,
    "x" * 299 + "y",
    "",
    "sha256:" + "0" * 64,
    "plain",
]


def test_awkward_keys_work_and_do_not_collide(cache: Cache) -> None:
    for i, key in enumerate(AWKWARD_KEYS):
        assert cache.set(key, i) is True, repr(key)
    assert cache.get_many(*AWKWARD_KEYS) == list(range(len(AWKWARD_KEYS)))
    assert [cache.get(key) for key in AWKWARD_KEYS] == list(range(len(AWKWARD_KEYS)))
    assert cache.add("x" * 300, "other") is False
    assert cache.has("emoji 🎉") is True

    assert cache.delete("x" * 300) is True
    assert cache.get("x" * 300) is None
    assert cache.get("x" * 299 + "y") == AWKWARD_KEYS.index("x" * 299 + "y")

    backend = backend_of(cache)
    for key in AWKWARD_KEYS:
        stored = backend.memcached_key(key)
        assert len(stored) <= 250 and stored.isascii() and " " not in stored
    assert backend.memcached_key("plain") == backend.key_prefix + "plain"  # readable when valid


# -- several servers ---------------------------------------------------------------


def _keys_held_by(server: MemcachedServer, stored_keys: list[str]) -> set[str]:
    client = Client((server.host, server.port))
    try:
        return set(client.get_many(stored_keys))
    finally:
        client.close()


def test_keys_spread_over_two_servers(make_cache: MakeCache) -> None:
    with MemcachedServer() as first, MemcachedServer() as second:
        cache = make_cache([first.address, second.address])
        backend = backend_of(cache)
        keys = [f"key-{i}" for i in range(200)]
        assert sorted(cache.set_many({key: key.upper() for key in keys})) == sorted(keys)

        stored = [backend.memcached_key(key) for key in keys]
        on_first = _keys_held_by(first, stored)
        on_second = _keys_held_by(second, stored)
        assert len(on_first) > 40 and len(on_second) > 40
        assert on_first.isdisjoint(on_second) and len(on_first | on_second) == 200

        assert cache.get_many(*keys) == [key.upper() for key in keys]
        assert cache.add("key-1", "again") is False
        assert cache.delete_many(*keys[:10]) == keys[:10]
        assert cache.get_many(*keys[:10]) == [None] * 10

        # One server down: keys on the other keep working; the dead one's keys
        # miss instead of moving (moving would let two processes both win an add).
        first.kill()
        survivor_key = next(k for k in keys[10:] if backend.memcached_key(k) in on_second)
        lost_key = next(k for k in keys[10:] if backend.memcached_key(k) in on_first)
        assert cache.get(survivor_key) == survivor_key.upper()
        assert cache.get(lost_key) is None
        assert cache.set(lost_key, "moved?") is False
        assert backend.memcached_key(lost_key) not in _keys_held_by(second, stored)
        assert cache.set(survivor_key, "still works") is True
        assert cache.get(survivor_key) == "still works"


def test_single_string_and_unix_socket_servers(
    memcached: MemcachedServer, make_cache: MakeCache, tmp_path: Path
) -> None:
    as_string = make_cache(memcached.address)
    assert as_string.set("k", "v") is True and as_string.get("k") == "v"

    socket_path = tmp_path / "memcached.sock"
    binary = shutil.which("memcached")
    assert binary is not None
    as_root = ["-u", "root"] if os.geteuid() == 0 else []
    server = subprocess.Popen(
        [binary, "-s", str(socket_path), "-U", "0", "-m", "16", *as_root],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(socket_path.exists, timeout=10)
        over_unix = make_cache([f"unix:{socket_path}"])
        assert over_unix.set("k", "over unix") is True
        assert over_unix.get("k") == "over unix"
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- outages -----------------------------------------------------------------------


def test_outage_degrades_every_method_with_one_warning(
    lone_memcached: MemcachedServer, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    cache = make_cache([lone_memcached.address])
    backend = backend_of(cache)
    assert cache.set("k", "v") is True
    lone_memcached.kill()

    started = time.monotonic()
    for _ in range(3):
        assert cache.get("k") is None
        assert cache.get_many("k", "j") == [None, None]
        assert cache.get_dict("k") == {"k": None}
        assert cache.set("k", "v") is False
        assert cache.set_many({"k": 1}) == []
        assert cache.add("new", "v") is False
        assert cache.delete("k") is False
        assert cache.delete_many("k") == []
        assert cache.has("k") is False
        assert cache.clear() is False
        assert backend.inc("n") is None
        assert backend.dec("n") is None
    assert time.monotonic() - started < 2

    messages = warnings_from(caplog)
    assert len(messages) == 1
    assert lone_memcached.address in messages[0]
    assert "unreachable" in messages[0] and "degraded" in messages[0]


def test_never_reachable_server_degrades(
    make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{free_port()}"
    cache = make_cache([address])
    assert cache.get("k") is None
    assert cache.add("k", "v") is False
    assert len(warnings_from(caplog)) == 1
    assert address in warnings_from(caplog)[0]


def test_recovers_when_memcached_comes_back(
    lone_memcached: MemcachedServer, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    cache = make_cache([lone_memcached.address])
    assert cache.set("k", "before") is True
    lone_memcached.kill()
    assert cache.set("k", "during") is False

    lone_memcached.restart()
    took = wait_for(lambda: cache.set("k", "after") is True, timeout=5)
    assert took < 3
    assert cache.get("k") == "after"
    assert cache.add("k", "x") is False  # atomic add works again too
    assert any("reachable again" in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_restart_between_calls_goes_unnoticed(
    lone_memcached: MemcachedServer, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache([lone_memcached.address])
    barrier = threading.Barrier(8)

    def use() -> Any:
        barrier.wait()
        return cache.get("warm")

    with ThreadPoolExecutor(max_workers=8) as pool:  # leave several pooled connections
        list(pool.map(lambda _: use(), range(8)))

    lone_memcached.kill()
    lone_memcached.restart()
    # Every pooled connection is now stale; the first call still succeeds.
    assert cache.set("k", "fresh") is True
    assert cache.get("k") == "fresh"
    assert warnings_from(caplog) == []


_FORK_SCRIPT = """
import multiprocessing, sys
from flask_jobtastic.cache import PyMemcacheCache

def use(cache, results, prefix, sign):
    results.put(sum(1 for i in range(300)
                    if not (cache.set(f"{prefix}{i}", sign * i)
                            and cache.get(f"{prefix}{i}") == sign * i)))

if __name__ == "__main__":
    backend = PyMemcacheCache([sys.argv[1]], key_prefix="fork-test:")
    assert backend.set("warm", 1) is True  # the parent now holds a pooled connection
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=use, args=(backend, results, "c", 1))
    child.start()
    use(backend, results, "p", -1)
    first, second = results.get(timeout=30), results.get(timeout=30)
    child.join(timeout=30)
    print(first, second, child.exitcode)
"""


def test_forked_child_does_not_share_connections(memcached: MemcachedServer, tmp_path) -> None:
    """Prefork workers: a child must not reuse the parent's pooled sockets.

    Runs in a fresh interpreter, where no other thread can make fork unsafe.
    """
    script = tmp_path / "fork_check.py"
    script.write_text(_FORK_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), memcached.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "0", "0"]
