"""The Flask extension: ``Jobtastic(app=None, *, celery=None, cache=None)``.

It reads and checks the ``JOBTASTIC_*`` settings once, wires Celery and the
cache, registers the blueprint, and keeps everything per application in
``app.extensions["jobtastic"]`` (never on the extension object), so one
extension may serve several apps.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from celery import Celery
from flask import Flask, current_app, has_app_context
from flask_caching import Cache
from kombu.exceptions import OperationalError

from . import backend as result_backend
from . import defaults, redis_urls, results
from .assets import jobtastic_assets
from .binding import register_celery_app
from .cli import jobtastic_cli
from .embedded import EmbeddedWorker
from .errors import ConfigurationError
from .herd import describe_add_atomicity
from .registry import MemoryRegistryStore, RedisRegistryStore, Registry
from .settings import number, read_settings, setting_defaults
from .state import JobtasticState, attach
from .streams import StreamSlots
from .views import TaskIdConverter, create_blueprint

logger = logging.getLogger("flask_jobtastic")

EXTENSION_KEY = "jobtastic"

#: Serializer names that are safe to accept from a broker.
_JSON_NAMES = frozenset({"json", "application/json"})


def build_celery(app: Flask) -> Celery:
    """A Celery app from ``app.config["CELERY"]``, JSON-only by default."""
    settings = app.config.get("CELERY")
    if settings is None:
        settings = dict(defaults.CELERY_EMBEDDED)
    elif not isinstance(settings, dict):
        raise ConfigurationError(
            "app.config['CELERY'] must be a dict of Celery's lowercase settings, e.g. "
            "{'broker_url': 'redis://localhost:6379/0', 'result_backend': 'redis://localhost:6379/1'}"
        )
    conf = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        **settings,
    }
    celery = Celery(app.import_name, set_as_current=False)
    celery.config_from_object(conf)
    return celery


def check_celery(celery: Celery) -> None:
    """Refuse settings flask-jobtastic cannot work with, saying what to change."""
    conf = celery.conf
    backend = conf.result_backend
    if not backend or str(backend).startswith("disabled"):
        raise ConfigurationError(
            "flask-jobtastic needs a Celery result backend to report progress and results: "
            "set CELERY['result_backend'] (e.g. 'redis://localhost:6379/1')"
        )
    for key in ("task_serializer", "result_serializer"):
        if str(conf[key]).lower() not in _JSON_NAMES:
            raise ConfigurationError(
                f"Celery setting {key}={conf[key]!r} is not allowed: flask-jobtastic uses the JSON "
                "serializer only (pickle lets a forged message run code in your worker); "
                f"set {key}='json'"
            )
    for key in ("accept_content", "result_accept_content"):
        accepted = conf[key]
        if accepted is None:
            continue
        unsafe = [c for c in accepted if str(c).lower() not in _JSON_NAMES]
        if unsafe:
            raise ConfigurationError(
                f"Celery setting {key} accepts {unsafe!r}: flask-jobtastic accepts JSON only; "
                f"set {key}=['json']"
            )


def _broker_errors(celery: Celery) -> tuple[type[BaseException], ...]:
    """The transport's connection and channel errors plus kombu's OperationalError."""
    connection = celery.connection_for_write()
    try:
        errors = tuple(connection.connection_errors) + tuple(connection.channel_errors)
    finally:
        connection.release()
    return (OperationalError, *errors)


def build_registry(config: Any, celery: Celery) -> Registry | None:
    """The job registry ``JOBTASTIC_REGISTRY`` asks for."""
    setting = config["JOBTASTIC_REGISTRY"]
    seen_ttl = number(config, "JOBTASTIC_REGISTRY_SEEN_TTL", minimum=0)
    unseen_ttl = number(config, "JOBTASTIC_REGISTRY_UNSEEN_TTL", minimum=0, allow_equal=False)
    backend_url = str(celery.conf.result_backend or "")
    if setting == "auto":
        if redis_urls.is_redis_url(backend_url):
            setting = backend_url
        elif backend_url.startswith("cache+memory"):
            setting = "memory"
        else:
            setting = None
    if setting in (None, False):
        return None
    if setting == "memory":
        store: Any = MemoryRegistryStore()
    elif redis_urls.is_redis_url(setting):
        client = _registry_client(config, celery, setting)
        store = RedisRegistryStore(client, record_ttl=int(unseen_ttl) + 86400)
    else:
        raise ConfigurationError(
            "JOBTASTIC_REGISTRY must be 'auto', 'memory', a redis://, rediss:// or "
            f"sentinel:// URL, or None, got {setting!r}"
        )
    return Registry(store, seen_ttl=seen_ttl, unseen_ttl=unseen_ttl)


def _registry_client(config: Any, celery: Celery, url: str) -> Any:
    """A Redis client for the registry at ``url``.

    The result backend's own URL gets a client made from the backend's parsed
    settings, so TLS (``redis_backend_use_ssl``), credentials and Sentinel
    options are the backend's. Another URL is read on its own, with the
    backend's Sentinel transport options and TLS settings filling in what it
    leaves out.
    """
    conf = celery.conf
    if _is_the_backends(config, celery, url) and not url.startswith("unix://"):
        backend = celery.backend
        if results.is_redis_backend(backend):
            return redis_urls.client_like_backend(backend)
    try:
        return redis_urls.client_from_url(
            url,
            master_name=_registry_master_name(config, celery),
            transport_options=conf.get("result_backend_transport_options"),
            use_ssl=conf.get("redis_backend_use_ssl"),
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"JOBTASTIC_REGISTRY {_safe(url)}: {exc}") from exc


def _is_the_backends(config: Any, celery: Celery, url: str) -> bool:
    """Whether ``url`` is the result backend's own (with its master, for Sentinel)."""
    if url != str(celery.conf.result_backend or ""):
        return False
    return _registry_master_name(config, celery) == _backend_master_name(celery)


def _backend_master_name(celery: Celery) -> str | None:
    options = celery.conf.get("result_backend_transport_options") or {}
    name = options.get("master_name")
    return str(name) if name else None


def _registry_master_name(config: Any, celery: Celery) -> str | None:
    """``JOBTASTIC_REGISTRY_MASTER_NAME``, else the result backend's ``master_name``."""
    name = config.get("JOBTASTIC_REGISTRY_MASTER_NAME")
    return str(name) if name else _backend_master_name(celery)


def _safe(url: str) -> str:
    """``url`` without its passwords, for an error message."""
    from kombu.utils.url import maybe_sanitize_url

    chunks = url.split(redis_urls.SENTINEL_SEPARATOR)
    return redis_urls.SENTINEL_SEPARATOR.join(str(maybe_sanitize_url(c)) for c in chunks)


def _registry_on_backend_redis(config: Any, celery: Celery) -> bool:
    """Whether ``JOBTASTIC_REGISTRY`` lives on the result backend's Redis server.

    For Sentinel URLs: the same master name behind a Sentinel they share.
    """
    backend_url = str(celery.conf.result_backend or "")
    setting = config["JOBTASTIC_REGISTRY"]
    if setting == "auto":
        setting = backend_url
    if not redis_urls.is_redis_url(setting) or not redis_urls.is_redis_url(backend_url):
        return False
    if _is_the_backends(config, celery, setting):
        return True
    registry = _server_of(setting, _registry_master_name(config, celery))
    return redis_urls.same_server(registry, _server_of(backend_url, _backend_master_name(celery)))


def _server_of(url: str, master_name: str | None = None) -> tuple[Any, ...]:
    """Where a Redis URL points, whatever its database (see ``redis_urls.server_of``)."""
    return redis_urls.server_of(url, master_name)


def _is_in_memory(celery: Celery) -> bool:
    return str(celery.conf.broker_url or "").startswith("memory://")


def _run_synchronously(app: Flask, celery: Celery, setting: bool | None) -> bool:
    """``JOBTASTIC_RUN_SYNCHRONOUSLY``, ``app.testing`` when unset: jobs run where sent.

    Celery's ``task_always_eager`` runs a sent job through ``apply`` at once;
    ``JobtasticTask.store_eager_result`` keeps its progress and result in the
    result backend, so status documents read as after a worker's run.
    """
    synchronous = app.testing if setting is None else setting
    if synchronous:
        celery.conf.task_always_eager = True
    return synchronous


def _embedded(setting: bool | None, celery: Celery, synchronous: bool) -> bool:
    """``JOBTASTIC_EMBEDDED_WORKER``; unset, on with the in-memory broker, unless jobs
    run synchronously: then nothing is left for a worker to run."""
    if setting is None:
        return _is_in_memory(celery) and not synchronous
    return setting


def _init_cache(app: Flask, given: Cache | None) -> Cache:
    """The flask-caching ``Cache`` passed in, or one built from ``JOBTASTIC_CACHE``."""
    if given is not None:
        if given not in app.extensions.get("cache", {}):
            given.init_app(app)
        return given
    cache_config = app.config["JOBTASTIC_CACHE"]
    if not isinstance(cache_config, dict) or "CACHE_TYPE" not in cache_config:
        raise ConfigurationError(
            "JOBTASTIC_CACHE must be a dict of flask-caching settings with a CACHE_TYPE, "
            "e.g. {'CACHE_TYPE': 'flask_jobtastic.cache.PyMemcacheCache', "
            "'CACHE_MEMCACHED_SERVERS': ['127.0.0.1:11211']}"
        )
    cache = Cache()
    try:
        with warnings.catch_warnings():
            # NullCache is refused below with a clearer message than this warning.
            warnings.filterwarnings("ignore", message=".*caching is effectively disabled")
            cache.init_app(app, config=dict(cache_config))
    except Exception as exc:
        raise ConfigurationError(f"JOBTASTIC_CACHE could not be used: {exc}") from exc
    return cache


def check_cache(backend: Any, celery: Celery) -> None:
    """Refuse a cache herd avoidance cannot rely on; warn of one only this process sees."""
    atomicity = describe_add_atomicity(backend)
    if atomicity == "not-atomic":
        raise ConfigurationError(
            f"The cache {type(backend).__name__} cannot add a key atomically across "
            "processes, which herd avoidance needs: use "
            "'flask_jobtastic.cache.PyMemcacheCache' (memcached) or 'RedisCache'"
        )
    if atomicity == "process-local" and not _is_in_memory(celery):
        logger.warning(
            "flask-jobtastic uses an in-process cache (%s) while the broker is %s: "
            "result caching and herd avoidance only work within one process. Set "
            "JOBTASTIC_CACHE to memcached or Redis for production.",
            type(backend).__name__,
            celery.conf.broker_url,
        )


def _register_web_parts(app: Flask, url_prefix: str) -> None:
    """The blueprint, its id converter, the ``jobtastic_assets`` global and the CLI."""
    app.url_map.converters.setdefault("jobtastic_id", TaskIdConverter)
    app.register_blueprint(create_blueprint(), url_prefix=url_prefix)
    app.jinja_env.globals.setdefault("jobtastic_assets", jobtastic_assets)
    app.cli.add_command(jobtastic_cli)


class Jobtastic:
    """Flask extension for user-facing Celery jobs.

    ``celery``: an existing Celery app to use instead of one built from
    ``app.config["CELERY"]``. ``cache``: a flask-caching ``Cache`` for result
    caching and herd avoidance instead of one built from ``JOBTASTIC_CACHE``.
    """

    def __init__(
        self, app: Flask | None = None, *, celery: Celery | None = None, cache: Cache | None = None
    ) -> None:
        self._celery = celery
        self._cache = cache
        #: Celery apps this extension built, for ``.celery`` outside a request.
        self._built: list[Celery] = []
        self._owner_loader: Callable[[], Any] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read, check and wire everything for ``app``; errors say what to fix."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'Jobtastic' instance has already been registered on this Flask app. "
                "Import and use that instance instead."
            )
        for key, value in setting_defaults().items():
            app.config.setdefault(key, value)
        settings = read_settings(app.config)
        celery = self._celery if self._celery is not None else build_celery(app)
        check_celery(celery)
        result_backend.install(celery)
        cache = _init_cache(app, self._cache)
        backend = app.extensions["cache"][cache]
        check_cache(backend, celery)
        synchronous = _run_synchronously(app, celery, settings.run_synchronously)
        embedded = _embedded(settings.embedded_worker, celery, synchronous)
        state = JobtasticState(
            app=app,
            celery=celery,
            cache=cache,
            cache_backend=backend,
            broker_errors=_broker_errors(celery),
            publish_retry_policy=settings.publish_retry_policy,
            progress_interval=settings.progress_interval,
            progress_smoothing=settings.progress_smoothing,
            started_delay=settings.started_delay,
            expose_errors=settings.expose_errors,
            batch_limit=settings.batch_limit,
            url_prefix=settings.url_prefix,
            events_heartbeat=settings.events_heartbeat,
            events_poll_interval=settings.events_poll_interval,
            events_max_seconds=settings.events_max_seconds,
            stream_slots=StreamSlots(settings.events_per_owner, settings.events_per_process),
            embedded_worker=(
                EmbeddedWorker(celery, settings.embedded_concurrency) if embedded else None
            ),
            registry=build_registry(app.config, celery),
            registry_on_backend_redis=_registry_on_backend_redis(app.config, celery),
            allow_unowned=settings.allow_unowned,
            extension=self,
        )
        app.extensions[EXTENSION_KEY] = state
        if self._celery is None:
            self._built.append(celery)
        attach(celery, state)
        register_celery_app(celery)
        _register_web_parts(app, state.url_prefix)

    def owner_loader(self, loader: Callable[[], Any]) -> Callable[[], Any]:
        """Register the function that names the current user (a decorator).

        It is called in the request that sends a job; its value (``str()``-ed)
        becomes the job's owner, and only that owner can then read, cancel or
        mark the job seen. Return ``None`` for an anonymous request.
        """
        self._owner_loader = loader
        return loader

    @staticmethod
    def _state() -> JobtasticState:
        if not has_app_context():
            raise RuntimeError(
                "Working outside of the application context: use 'with app.app_context():' or "
                "app.extensions['jobtastic']"
            )
        try:
            state: JobtasticState = current_app.extensions[EXTENSION_KEY]
            return state
        except KeyError:
            raise RuntimeError(
                "The current Flask app is not registered with this 'Jobtastic' instance. "
                "Did you forget to call 'init_app'?"
            ) from None

    @property
    def celery(self) -> Celery:
        """The Celery app: the one passed in, else the current Flask app's.

        Outside an app context it answers too when the extension serves one
        app, so a worker module can say ``celery = jobtastic.celery``.
        """
        if self._celery is not None:
            return self._celery
        if not has_app_context() and len(self._built) == 1:
            return self._built[0]
        return self._state().celery

    @property
    def cache(self) -> Cache:
        """The flask-caching ``Cache`` used for results and herd keys."""
        if self._cache is not None:
            return self._cache
        return self._state().cache
