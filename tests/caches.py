"""Helpers for the tests of the caches: PyMemcacheCache and the herd operations."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from flask_caching import Cache

from flask_jobtastic.cache import PyMemcacheCache

#: ``CACHE_TYPE`` of our backend, as the README spells it.
BACKEND = "flask_jobtastic.cache.PyMemcacheCache"

#: The logger the README documents for cache trouble.
LOGGER = "flask_jobtastic.cache"

#: ``make_cache(servers, **config)``: see the fixture in conftest.py.
MakeCache = Callable[..., Cache]


def backend_of(cache: Cache) -> PyMemcacheCache:
    backend = cache.cache
    assert isinstance(backend, PyMemcacheCache)
    return backend


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING messages of the cache logger, in order."""
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


def wait_for(predicate: Callable[[], bool], timeout: float) -> float:
    """Poll until ``predicate`` holds; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start
