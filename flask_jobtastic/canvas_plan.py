"""What a canvas is made of: its kind, its parts and how their results flow.

Pure: a Celery signature (a group, a chord or a chain of ``JobtasticTask``
signatures) becomes a :class:`Plan` that JSON can carry, so the worker that
ends one part knows what to send next without the sender's objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from celery.canvas import Signature, _chain, chord, group

Kind = Literal["group", "chord", "chain"]


class CanvasError(TypeError):
    """A signature this library cannot run as one job; the message says what to change."""


@dataclass(frozen=True)
class Part:
    """One task of the canvas, as its message will carry it."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: A chain stage or chord body that does not receive the previous result.
    immutable: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "immutable": self.immutable,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Part:
        return cls(
            task=str(record["task"]),
            args=tuple(record.get("args") or ()),
            kwargs=dict(record.get("kwargs") or {}),
            immutable=bool(record.get("immutable")),
        )


@dataclass(frozen=True)
class Plan:
    """A canvas: a group (parts run side by side), a chord (a group, then ``body``
    with the list of their results) or a chain (each stage after the last one,
    given its result)."""

    kind: Kind
    parts: tuple[Part, ...]
    body: Part | None = None
    tolerate_failures: bool = False

    @property
    def size(self) -> int:
        """How many parts the canvas counts: a chord's body is one more."""
        return len(self.parts) + (1 if self.body is not None else 0)

    @property
    def weighting(self) -> Literal["units", "stages"]:
        """A chain advances by stage; a group or chord by the units its parts report."""
        return "stages" if self.kind == "chain" else "units"

    def all_parts(self) -> tuple[Part, ...]:
        return self.parts + ((self.body,) if self.body is not None else ())

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "parts": [part.record() for part in self.parts],
            "body": self.body.record() if self.body is not None else None,
            "tolerate_failures": self.tolerate_failures,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Plan:
        body = record.get("body")
        return cls(
            kind=record["kind"],
            parts=tuple(Part.from_record(part) for part in record["parts"]),
            body=Part.from_record(body) if body else None,
            tolerate_failures=bool(record.get("tolerate_failures")),
        )


def plan_of(signature: Any, *, tolerate_failures: bool = False) -> Plan:
    """The plan of a ``group``, ``chord`` or ``chain``; a clear error for anything else."""
    if isinstance(signature, chord):
        header = signature.tasks
        body = signature.body
        if body is None:
            raise CanvasError("a chord needs a body: chord(header)(body) or chord(header, body)")
        plan = Plan("chord", _simple_parts(header, "a chord's header"), _part(body, "its body"))
    elif isinstance(signature, group):
        plan = Plan("group", _simple_parts(signature.tasks, "a group"))
    elif isinstance(signature, _chain):
        stages = _simple_parts(signature.tasks, "a chain")
        plan = Plan("chain", stages)
    else:
        raise CanvasError(
            f"expected a celery group, chord or chain, got {type(signature).__name__}; "
            "start a single job with delay_or_fail"
        )
    if not plan.parts:
        raise CanvasError(f"this {plan.kind} has no tasks in it")
    if tolerate_failures and plan.kind != "group":
        raise CanvasError(
            "tolerate_failures is for groups: a chord's body and a chain's next stage "
            "need every result before them"
        )
    return Plan(plan.kind, plan.parts, plan.body, tolerate_failures)


def _simple_parts(tasks: Any, where: str) -> tuple[Part, ...]:
    return tuple(_part(task, f"{where}'s task {index}") for index, task in enumerate(tasks))


def _part(signature: Any, where: str) -> Part:
    if isinstance(signature, group | _chain | chord):
        raise CanvasError(
            f"{where} is a {type(signature).__name__.strip('_')}: canvases inside canvases "
            "are not run as one job; flatten it into one group, chord or chain"
        )
    if not isinstance(signature, Signature):
        raise CanvasError(f"{where} is a {type(signature).__name__}, not a task signature")
    options = {k: v for k, v in (signature.options or {}).items() if k not in _HARMLESS_OPTIONS}
    if options:
        raise CanvasError(
            f"{where} ({signature.task}) sets {sorted(options)}; a part of a canvas takes "
            "only arguments (its task's class attributes decide the rest)"
        )
    return Part(
        task=str(signature.task),
        args=tuple(signature.args or ()),
        kwargs=dict(signature.kwargs or {}),
        immutable=bool(signature.immutable),
    )


#: Options Celery itself puts on signatures (``.si()``, chain links), ignored here.
_HARMLESS_OPTIONS = frozenset({"immutable", "subtask_type", "chord_size", "task_id", "group_id"})
