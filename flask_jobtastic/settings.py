"""The ``JOBTASTIC_*`` settings, read and checked once at ``init_app``.

Pure: a Flask config in, a frozen :class:`Settings` out, or a
``ConfigurationError`` that names the key and says what to write instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import defaults
from .errors import ConfigurationError
from .streams import read_limits


@dataclass(frozen=True)
class Settings:
    """The checked values of one app's ``JOBTASTIC_*`` keys."""

    progress_interval: float
    started_delay: float
    progress_smoothing: float
    batch_limit: int
    url_prefix: str
    publish_retry_policy: dict[str, float]
    expose_errors: bool
    events_heartbeat: float
    events_poll_interval: float
    events_max_seconds: float
    events_per_owner: int
    events_per_process: int
    #: None: decided by the broker (on for ``memory://``).
    embedded_worker: bool | None
    embedded_concurrency: int
    allow_unowned: bool | None


def setting_defaults() -> dict[str, Any]:
    """``JOBTASTIC_<NAME>`` for every public constant in ``defaults``."""
    return {
        f"JOBTASTIC_{name}": getattr(defaults, name)
        for name in dir(defaults)
        if name.isupper() and name != "CELERY_EMBEDDED"
    }


def number(
    config: Mapping[str, Any], key: str, *, minimum: float, allow_equal: bool = True
) -> float:
    """A finite number at or above ``minimum`` (above it, without ``allow_equal``)."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{key} must be a number, got {value!r}")
    if value < minimum or (value == minimum and not allow_equal):
        bound = ">=" if allow_equal else ">"
        raise ConfigurationError(f"{key} must be {bound} {minimum}, got {value!r}")
    return float(value)


def positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{key} must be a positive int, got {value!r}")
    return value


def read_settings(config: Mapping[str, Any]) -> Settings:
    """Every ``JOBTASTIC_*`` key but the cache and the registry, checked."""
    smoothing = number(config, "JOBTASTIC_PROGRESS_SMOOTHING", minimum=0, allow_equal=False)
    if smoothing > 1:
        raise ConfigurationError(
            f"JOBTASTIC_PROGRESS_SMOOTHING must be in (0, 1], got {smoothing!r}"
        )
    per_owner, per_process = read_limits(config)
    return Settings(
        progress_interval=number(config, "JOBTASTIC_PROGRESS_INTERVAL", minimum=0),
        started_delay=number(config, "JOBTASTIC_STARTED_DELAY", minimum=0),
        progress_smoothing=smoothing,
        batch_limit=positive_int(config, "JOBTASTIC_BATCH_LIMIT"),
        url_prefix=_url_prefix(config["JOBTASTIC_URL_PREFIX"]),
        publish_retry_policy=_retry_policy(config["JOBTASTIC_PUBLISH_RETRY_POLICY"]),
        expose_errors=bool(config["JOBTASTIC_EXPOSE_ERRORS"]),
        events_heartbeat=number(config, "JOBTASTIC_EVENTS_HEARTBEAT", minimum=0, allow_equal=False),
        events_poll_interval=number(
            config, "JOBTASTIC_EVENTS_POLL_INTERVAL", minimum=0, allow_equal=False
        ),
        events_max_seconds=number(
            config, "JOBTASTIC_EVENTS_MAX_SECONDS", minimum=0, allow_equal=False
        ),
        events_per_owner=per_owner,
        events_per_process=per_process,
        embedded_worker=config["JOBTASTIC_EMBEDDED_WORKER"],
        embedded_concurrency=positive_int(config, "JOBTASTIC_EMBEDDED_WORKER_CONCURRENCY"),
        allow_unowned=config["JOBTASTIC_ALLOW_UNOWNED"],
    )


def _url_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigurationError(
            f"JOBTASTIC_URL_PREFIX must be a path starting with '/', got {prefix!r}"
        )
    return prefix.rstrip("/") or "/"


def _retry_policy(policy: Any) -> dict[str, float]:
    if not isinstance(policy, dict):
        raise ConfigurationError(
            "JOBTASTIC_PUBLISH_RETRY_POLICY must be a dict like "
            "{'max_retries': 1, 'interval_start': 0, 'interval_step': 0.1, 'interval_max': 0.1}"
        )
    return dict(policy)
