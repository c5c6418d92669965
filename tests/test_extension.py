from __future__ import annotations

import logging
import os

import pytest
from flask import Flask
from flask_caching import Cache

from flask_jobtastic import ConfigurationError, Jobtastic


def make_app(**config) -> Flask:
    app = Flask("cfg")
    app.config.update(config)
    return app


def redis_celery(**extra):
    return {
        "broker_url": os.environ["JOBTASTIC_TEST_BROKER_URL"],
        "result_backend": os.environ["JOBTASTIC_TEST_BACKEND_URL"],
        **extra,
    }


def test_state_lives_in_app_extensions_and_defaults_are_set():
    app = make_app()
    ext = Jobtastic(app)
    state = app.extensions["jobtastic"]
    assert state.celery is ext.celery
    assert app.config["JOBTASTIC_URL_PREFIX"] == "/jobtastic"
    assert app.config["JOBTASTIC_PROGRESS_INTERVAL"] == 0.5
    assert not hasattr(ext, "app")
    assert "jobtastic.status" in app.view_functions


def test_init_app_twice_is_a_runtime_error():
    app = make_app()
    ext = Jobtastic(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        ext.init_app(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        Jobtastic(app)


def test_factory_pattern_and_celery_built_from_config():
    ext = Jobtastic()
    app = make_app(CELERY=redis_celery())
    ext.init_app(app)
    with app.app_context():
        assert ext.celery.conf.broker_url == os.environ["JOBTASTIC_TEST_BROKER_URL"]
        assert ext.celery.conf.task_serializer == "json"
        assert ext.celery.conf.accept_content == ["json"]


def test_missing_result_backend_fails_with_what_to_fix():
    app = make_app(CELERY={"broker_url": os.environ["JOBTASTIC_TEST_BROKER_URL"]})
    with pytest.raises(ConfigurationError, match="result_backend"):
        Jobtastic(app)


@pytest.mark.parametrize(
    "extra",
    [
        {"task_serializer": "pickle"},
        {"result_serializer": "pickle"},
        {"accept_content": ["json", "pickle"]},
    ],
)
def test_pickle_is_refused(extra):
    app = make_app(CELERY=redis_celery(**extra))
    with pytest.raises(ConfigurationError, match="JSON"):
        Jobtastic(app)


@pytest.mark.parametrize("cache_type", ["NullCache", "FileSystemCache"])
def test_cache_without_atomic_add_is_refused(cache_type, tmp_path):
    app = make_app(
        CELERY=redis_celery(),
        JOBTASTIC_CACHE={"CACHE_TYPE": cache_type, "CACHE_DIR": str(tmp_path)},
    )
    with pytest.raises(ConfigurationError, match="atomically"):
        Jobtastic(app)


def test_in_process_cache_with_real_broker_warns(caplog):
    app = make_app(CELERY=redis_celery())
    with caplog.at_level(logging.WARNING, logger="flask_jobtastic"):
        Jobtastic(app)
    assert "in-process cache" in caplog.text


def test_in_process_cache_with_memory_broker_is_quiet(caplog):
    with caplog.at_level(logging.WARNING, logger="flask_jobtastic"):
        Jobtastic(make_app())
    assert "in-process cache" not in caplog.text


def test_given_cache_is_used():
    app = make_app(
        CELERY=redis_celery(),
        CACHE_TYPE="RedisCache",
        CACHE_REDIS_URL=os.environ["JOBTASTIC_TEST_BACKEND_URL"],
    )
    cache = Cache(app)
    ext = Jobtastic(app, cache=cache)
    with app.app_context():
        assert ext.cache is cache


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("JOBTASTIC_PROGRESS_INTERVAL", -1, "JOBTASTIC_PROGRESS_INTERVAL"),
        ("JOBTASTIC_PROGRESS_INTERVAL", "fast", "must be a number"),
        ("JOBTASTIC_STARTED_DELAY", -0.5, "JOBTASTIC_STARTED_DELAY must be >= 0"),
        ("JOBTASTIC_STARTED_DELAY", float("nan"), "must be a number"),
        ("JOBTASTIC_STARTED_DELAY", float("inf"), "must be a number"),
        ("JOBTASTIC_URL_PREFIX", "jobs", "starting with '/'"),
        ("JOBTASTIC_BATCH_LIMIT", 0, "positive int"),
        ("JOBTASTIC_CACHE", {"CACHE_DIR": "/tmp"}, "CACHE_TYPE"),
        ("CELERY", "redis://", "dict"),
    ],
)
def test_bad_settings_fail_at_init_app(key, value, message):
    app = make_app(**{key: value})
    with pytest.raises(ConfigurationError, match=message):
        Jobtastic(app)


def test_url_prefix_is_configurable():
    app = make_app(JOBTASTIC_URL_PREFIX="/api/jobs")
    Jobtastic(app)
    response = app.test_client().get("/api/jobs/status/not-a-uuid")
    assert response.status_code == 400
    assert response.get_json()["error"]["type"] == "BadRequest"


def test_task_class_errors_name_the_attribute():
    from flask_jobtastic import JobtasticTask

    with pytest.raises(TypeError, match="herd_avoidance_timeout"):

        class NoHerd(JobtasticTask):
            def calculate_result(self):
                return 1

    with pytest.raises(TypeError, match="does not take"):

        class WrongName(JobtasticTask):
            herd_avoidance_timeout = 5
            significant_kwargs = ["nope"]

            def calculate_result(self, a):
                return a

    with pytest.raises(TypeError, match="cache_duration"):

        class BadDuration(JobtasticTask):
            herd_avoidance_timeout = 5
            cache_duration = -5

            def calculate_result(self):
                return 1
