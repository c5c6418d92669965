"""How a ``JobtasticTask`` subclass meets the Celery apps of the extension.

Celery keeps a task's app on the class, so with two Flask apps in one
process (an app factory, a test suite) the last one bound would send and
store every job. Here each Celery app gets its own instance of each class,
the instance answers ``task.app`` with its own app, and calls made on the
class (``MyTask.delay(...)``) go to the instance of the current Flask app.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, cast, overload

from celery import Task
from celery.app.autoretry import add_autoretry_behaviour
from flask import current_app, has_app_context

if TYPE_CHECKING:
    from celery import Celery

    from .task import JobtasticTask

_Self = TypeVar("_Self", bound="JobtasticTask")
_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Every concrete subclass, in definition order; bound to each Celery app
#: the extension creates.
_task_classes: list[type[JobtasticTask]] = []
#: Celery apps owned by live extensions, so late subclasses bind to them too.
_celery_apps: weakref.WeakSet[Celery] = weakref.WeakSet()


def bind_task_class(cls: type[_Self], celery_app: Celery) -> _Self:
    """Register ``cls`` with ``celery_app`` (once) and return its instance.

    Done by hand rather than with ``Celery.register_task`` so that a test
    suite creating many apps does not trip its duplicate-name warning.
    """
    existing = celery_app.tasks.get(cls.name)
    if type(existing) is cls:
        return existing  # of type cls, checked above
    cls.bind(celery_app)
    task = cls()
    task.__dict__["_app"] = celery_app
    add_autoretry_behaviour(task)
    celery_app.tasks[cls.name] = task
    return task


def register_celery_app(celery_app: Celery) -> None:
    """Bind every known task class to a new extension's Celery app."""
    _celery_apps.add(celery_app)
    for cls in _task_classes:
        bind_task_class(cls, celery_app)


def register_task_class(cls: type[JobtasticTask]) -> None:
    """Bind a newly defined class to every live extension's Celery app.

    A class defined again under the same name (a reloaded module) replaces
    the old one.
    """
    _task_classes[:] = [c for c in _task_classes if c.name != cls.name]
    _task_classes.append(cls)
    for celery_app in list(_celery_apps):
        bind_task_class(cls, celery_app)


def registered_instance(cls: type[_Self]) -> _Self:
    """The instance of ``cls`` bound to the current app's Celery (Flask app first)."""
    celery_app = None
    if has_app_context():
        state = current_app.extensions.get("jobtastic")
        if state is not None:
            celery_app = state.celery
    if celery_app is None:
        celery_app = getattr(cls, "_app", None)  # the last app bound, as Celery keeps it
    if celery_app is None:
        raise RuntimeError(
            f"{cls.__qualname__} is not bound to a Celery app yet: create the extension "
            "with Jobtastic(app) or jobtastic.init_app(app) first"
        )
    return bind_task_class(cls, celery_app)


class ClassOrInstanceMethod(Generic[_Self, _P, _R]):
    """A method callable on the class as well as on an instance.

    ``MyTask.delay(...)`` resolves to the instance registered with the
    current Celery app; Celery's own code keeps calling it on instances.
    Type checkers see the method's own signature either way.
    """

    def __init__(self, func: Callable[Concatenate[_Self, _P], _R]) -> None:
        self.func = func
        functools.update_wrapper(cast(Any, self), func)

    @overload
    def __get__(self, instance: None, owner: type[_Self]) -> Callable[_P, _R]: ...

    @overload
    def __get__(self, instance: _Self, owner: type[_Self] | None = None) -> Callable[_P, _R]: ...

    def __get__(self, instance: _Self | None, owner: type[_Self] | None = None) -> Callable[_P, _R]:
        if instance is None:
            assert owner is not None  # looked up on a class
            instance = registered_instance(owner)
        return cast("Callable[_P, _R]", types.MethodType(self.func, instance))


_class_get_app = Task.__dict__["_get_app"].__func__


class PerInstanceApp:
    """``task.app``: the Celery app this instance was bound to.

    The class still answers with the last app bound, as Celery expects.
    """

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Celery:
        if instance is not None:
            own = instance.__dict__.get("_app")
            if own is not None:
                return own  # type: ignore[no-any-return]  # set by bind_task_class
        return _class_get_app(owner if owner is not None else type(instance))  # type: ignore[no-any-return]

    def __set__(self, instance: Any, value: Celery) -> None:
        instance.__dict__["_app"] = value


class PerInstanceAppGetter:
    """``task._get_app()``, which Celery's send and apply paths call, per instance."""

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Callable[[], Celery]:
        if instance is not None and instance.__dict__.get("_app") is not None:
            own: Celery = instance.__dict__["_app"]
            return lambda: own
        return functools.partial(_class_get_app, owner if owner is not None else type(instance))
