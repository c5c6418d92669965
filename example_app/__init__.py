"""A demo Flask app for flask-jobtastic: ``python -m example_app``.

With no environment variables it runs in the library's no-servers mode: an
in-memory broker, result store and cache, and a Celery worker thread inside
the web process. Set ``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND`` and
``MEMCACHED_SERVERS`` (comma-separated ``host:port``) to use real servers,
with ``celery -A example_app.worker worker`` running the jobs. The batch card's
chord needs a Redis result backend, so it only runs with real servers.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from flask import Flask, session

from flask_jobtastic import Jobtastic

from . import tasks  # noqa: F401  (the task classes register themselves on import)

jobtastic = Jobtastic()

#: The session key holding the visitor's id, the owner of the jobs they start.
USER_KEY = "user_id"


@jobtastic.owner_loader
def current_user_id() -> str | None:
    """The visitor's id from the signed session cookie (set on the first request)."""
    return session.get(USER_KEY)


def ensure_user() -> None:
    """Give a new browser a random id, so "my jobs" and ownership mean something."""
    if USER_KEY not in session:
        session[USER_KEY] = secrets.token_hex(8)
        session.permanent = True


def config_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Flask settings read from the environment; empty when nothing is set."""
    env = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    if env.get("SECRET_KEY"):
        config["SECRET_KEY"] = env["SECRET_KEY"]
    celery: dict[str, Any] = {}
    if env.get("CELERY_BROKER_URL"):
        celery["broker_url"] = env["CELERY_BROKER_URL"]
    if env.get("CELERY_RESULT_BACKEND"):
        celery["result_backend"] = env["CELERY_RESULT_BACKEND"]
    if celery:
        config["CELERY"] = celery
    servers = [s.strip() for s in env.get("MEMCACHED_SERVERS", "").split(",") if s.strip()]
    if servers:
        config["JOBTASTIC_CACHE"] = {
            "CACHE_TYPE": "flask_jobtastic.cache.PyMemcacheCache",
            "CACHE_MEMCACHED_SERVERS": servers,
        }
    elif str(celery.get("result_backend", "")).startswith(("redis://", "rediss://")):
        # No memcached given: Redis can elect herd winners across processes too.
        config["JOBTASTIC_CACHE"] = {
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": celery["result_backend"],
        }
    return config


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The demo app; ``config`` wins over the environment, which wins over defaults."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_hex(32),  # per process unless SECRET_KEY is set
        SESSION_COOKIE_SAMESITE="Lax",
        DEMO_MAX_NUMBERS=500,
    )
    app.config.update(config_from_env())
    if config:
        app.config.update(config)
    jobtastic.init_app(app)
    app.before_request(ensure_user)

    from .views import bp

    app.register_blueprint(bp)
    return app


def embedded_mode(app: Flask) -> bool:
    """Whether this app runs its jobs on the in-process worker thread."""
    return app.extensions["jobtastic"].embedded_worker is not None
