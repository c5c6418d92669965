"""Cache keys built from a task's significant arguments (pure, no I/O).

A key must be identical for calls that should share a result and different
for every other call, and it must be a valid memcached key: ASCII, no
whitespace, at most 250 bytes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

#: memcached's own key length limit.
MAX_KEY_LENGTH = 250

#: Room kept for the suffixes (":result", ":herd") and a backend key prefix.
_PREFIX_BUDGET = 120

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")

Converter = Callable[[Any], str]
SignificantKwargs = Sequence[str | tuple[str, Converter]]


def canonical_json(value: Any) -> str:
    """Default converter: a stable, unambiguous text form of a JSON-like value.

    Every value is tagged with its kind, so no value can spell another (a
    dict cannot pose as bytes, ``"1"`` is not ``1``); dict order does not
    matter and tuples equal lists, as they do once sent as JSON. A value
    with no such form raises ``TypeError`` naming its type.
    """
    return json.dumps(_tagged(value), separators=(",", ":"), ensure_ascii=True)


def _tagged(value: Any) -> Any:
    if value is None:
        return "n"
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, int):
        return ["i", str(value)]
    if isinstance(value, float):
        return ["f", repr(value)]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, bytes | bytearray):
        return ["y", bytes(value).hex()]
    if isinstance(value, list | tuple):
        return ["l", [_tagged(item) for item in value]]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                # JSON turns keys into strings: the worker would see another value
                raise TypeError(
                    f"a dict key of type {type(key).__name__} does not survive JSON; "
                    "use string keys"
                )
        items = [[k, _tagged(v)] for k, v in value.items()]
        return ["d", sorted(items, key=_sort_key)]
    raise TypeError(
        f"a value of type {type(value).__name__} cannot be sent as JSON; pass strings, "
        "numbers, booleans, None, bytes, or lists and string-keyed dicts of them"
    )


def _sort_key(tagged: Any) -> str:
    return json.dumps(tagged, separators=(",", ":"), ensure_ascii=True)


def _utf8(text: str) -> bytes:
    """UTF-8 that also carries lone surrogates, which Python strings may hold."""
    return text.encode("utf-8", "surrogatepass")


def normalize_significant(spec: SignificantKwargs) -> list[tuple[str, Converter]]:
    """Accept ``[("name", str), "other"]`` and return ``(name, converter)`` pairs."""
    pairs: list[tuple[str, Converter]] = []
    for item in spec:
        if isinstance(item, str):
            pairs.append((item, canonical_json))
        elif (
            isinstance(item, tuple | list)
            and len(item) == 2
            and isinstance(item[0], str)
            and callable(item[1])
        ):
            pairs.append((item[0], item[1]))
        else:
            raise TypeError(
                f"significant_kwargs entries must be a name or a (name, to_str) pair, got {item!r}"
            )
    return pairs


def safe_prefix(prefix: str) -> str:
    """Make a cache prefix ASCII, space-free and short, keeping it readable."""
    cleaned = _UNSAFE.sub("_", prefix)
    if cleaned == prefix and len(cleaned) <= _PREFIX_BUDGET:
        return cleaned
    digest = hashlib.sha256(_utf8(prefix)).hexdigest()[:16]
    return f"{cleaned[: _PREFIX_BUDGET - 17]}-{digest}"


def bind_arguments(
    name: str, signature: inspect.Signature, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Map positional and keyword arguments to parameter names, defaults applied.

    Extra keywords caught by ``**kwargs`` are flattened in, so a significant
    argument may arrive either way. A call that does not fit the signature is
    a ``TypeError`` naming the task and its parameters.
    """
    if not args:
        plain = _plain_parameters(signature)
        if plain is not None:
            names, defaults, required = plain
            if names.issuperset(kwargs) and required.issubset(kwargs):
                return {**defaults, **kwargs}  # what the binding below gives, faster
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{name}{signature}: {exc}") from None
    bound.apply_defaults()
    named: dict[str, Any] = {}
    for arg_name, value in bound.arguments.items():
        kind = signature.parameters[arg_name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            named[arg_name] = value
    return named


_PLAIN_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@functools.lru_cache(maxsize=1024)
def _plain_parameters(
    signature: inspect.Signature,
) -> tuple[frozenset[str], dict[str, Any], frozenset[str]] | None:
    """Names, defaults and required names of a signature without ``*args``,
    ``**kwargs`` or positional-only parameters (None otherwise): a call made
    with keywords only then binds by a dict merge, every call of a job
    class needing its cache key."""
    parameters = signature.parameters.values()
    if any(parameter.kind not in _PLAIN_KINDS for parameter in parameters):
        return None
    empty = inspect.Parameter.empty
    defaults = {p.name: p.default for p in parameters if p.default is not empty}
    required = frozenset(p.name for p in parameters if p.default is empty)
    return frozenset(signature.parameters), defaults, required


def significant_values(
    task_name: str, spec: Iterable[tuple[str, Converter]], arguments: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Convert each significant argument to text, with errors that say what to fix."""
    values: list[tuple[str, str]] = []
    for name, convert in spec:
        if name not in arguments:
            raise TypeError(
                f"{task_name} was called without its significant argument {name!r}; "
                f"pass {name}=... (significant_kwargs lists it)"
            )
        try:
            text = convert(arguments[name])
        except Exception as exc:
            raise TypeError(
                f"{task_name}: significant argument {name!r} could not be turned into a "
                f"cache key: {exc}"
            ) from exc
        if not isinstance(text, str):
            text = str(text)
        values.append((name, text))
    return values


def build_cache_key(prefix: str, values: Sequence[tuple[str, str]]) -> str:
    """``jobtastic:<prefix>:<sha256>`` over an unambiguous encoding of the values.

    JSON-encoding the (name, text) pairs keeps ``a="ab", b="c"`` apart from
    ``a="a", b="bc"``, which plain concatenation would merge.
    """
    material = json.dumps([list(pair) for pair in values], ensure_ascii=False)
    digest = hashlib.sha256(_utf8(material)).hexdigest()
    return f"jobtastic:{safe_prefix(prefix)}:{digest}"


def owner_scoped(cache_key: str, owner: str) -> str:
    """The key of the same call made by one owner (hashed: owners stay private)."""
    digest = hashlib.sha256(_utf8(f"owner:{owner}")).hexdigest()[:32]
    return f"{cache_key}:o{digest}"


def result_key(cache_key: str) -> str:
    """Where the id of the cached successful run is kept."""
    return f"{cache_key}:result"


def herd_key(cache_key: str) -> str:
    """Where the id of the run in flight is kept."""
    return f"{cache_key}:herd"
