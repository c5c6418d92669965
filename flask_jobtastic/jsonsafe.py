"""The one rule for what a job may store and a page may be sent (pure, no I/O).

Results, progress meta, step details, messages and counted item names all go
through ``to_json`` in the worker before anything is stored, and everything
read back from the result backend goes through it again before it reaches a
browser. What strict JSON (no NaN, no Infinity) carries passes unchanged; a
few common types are converted by fixed rules; anything else is refused
with a ``NotJSONError`` naming the value's place and type, such as
``result["rows"][3]: bytes``.

Conversions (the same in every place):

* ``datetime``, ``date``, ``time``: ISO 8601 text (``isoformat()``);
* ``UUID``, ``Decimal`` and file-system paths: their ``str()``;
* tuples (named ones too): lists;
* subclasses of ``str``, ``int`` and ``float`` (enums built on them), and other
  real numbers (``numbers.Integral`` / ``numbers.Real``, e.g. numpy's): the plain
  ``str``, ``int`` or ``float``;
* dict keys as ``json.dumps`` writes them: strings kept, ints and floats as
  their digits, ``True``/``False``/``None`` as ``"true"``/``"false"``/``"null"``.

Refused: ``bytes`` and ``bytearray`` (no encoding is implied), NaN and
infinities, sets, other objects, dicts whose only keys are ``__type__`` and
``__value__`` (kombu's JSON would read them back as a typed value), values
that contain themselves and nesting deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import json
import math
import numbers
import uuid
from collections.abc import Iterable
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any

#: Deepest nesting converted; deeper values are refused.
MAX_DEPTH = 200

#: Scalars that are strict JSON whatever their value (floats are checked).
_PLAIN = frozenset({str, int, bool, type(None)})
#: kombu's JSON turns a dict with exactly these keys back into a Python object.
_KOMBU_TYPED = frozenset({"__type__", "__value__"})
#: How much of a dict key a path shows.
_KEY_SHOWN = 40

HINT = (
    "strict JSON carries dicts, lists, strings, finite numbers, booleans and None "
    "(datetimes, dates, times, UUIDs, Decimals and paths are converted to strings, "
    "tuples to lists)"
)


class NotJSONError(TypeError):
    """A value strict JSON cannot carry, with where it sits and what it is."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path}: {kind}")
        #: Where the value sits, e.g. ``result["rows"][3]``.
        self.path = path
        #: What it is, e.g. ``bytes`` or ``float NaN``.
        self.kind = kind


def to_json(value: Any, path: str = "value") -> Any:
    """``value`` in strict JSON form, converted by the module's rules.

    Raises ``NotJSONError`` for what the rules cannot carry. A value that is
    strict JSON already (exact dicts with string keys, lists, strings, ints,
    finite floats, booleans, None) comes back as it is, after one quick walk.
    """
    if _is_plain(value, 0):
        return value
    return _convert(value, path, 0, set())


def _is_plain(value: Any, depth: int) -> bool:
    """Whether ``value`` is strict JSON as it is; False sends it to the slow path.

    Cheaper than a trial ``json.dumps`` (no float formatting); a value nested
    too deep, or containing itself, is not plain and gets a precise refusal.
    """
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is float:
        return bool(value - value == 0.0)  # False for NaN and infinities
    if depth >= MAX_DEPTH:
        return False
    if kind is list:
        return _items_plain(value, depth)
    if kind is dict:
        return _dict_plain(value, depth)
    return False


def _dict_plain(value: dict[Any, Any], depth: int) -> bool:
    """An exact dict with string keys, not kombu's typed form, and plain values."""
    if len(value) == 2 and "__type__" in value and "__value__" in value:
        return False
    for key in value:
        if type(key) is not str:
            return False
    return _items_plain(value.values(), depth)


def _items_plain(items: Iterable[Any], depth: int) -> bool:
    """Whether every item is plain; scalars are checked inline, the hot path."""
    for item in items:
        kind = type(item)
        if kind in _PLAIN:
            continue
        if kind is float:
            if item - item != 0.0:
                return False
        elif not _is_plain(item, depth + 1):
            return False
    return True


def dumps(value: Any) -> str:
    """Compact strict JSON text of a value already in strict form (``ValueError`` on NaN)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _float_kind(value: float) -> str:
    return "float NaN" if math.isnan(value) else f"float {'-' if value < 0 else ''}Infinity"


def _type_name(value: Any) -> str:
    return type(value).__qualname__


def _convert(value: Any, path: str, depth: int, active: set[int]) -> Any:
    """The slow path: walk ``value``, converting or refusing each part."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, float):
        number = float(value)
        if math.isfinite(number):
            return number
        raise NotJSONError(path, _float_kind(number))
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):  # bool is exact (above); IntEnum and other subclasses
        return int(value)
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            raise NotJSONError(path, f"nested deeper than {MAX_DEPTH} levels")
        if id(value) in active:
            raise NotJSONError(path, f"a {_type_name(value)} that contains itself")
        active.add(id(value))
        try:
            if isinstance(value, dict):
                return _convert_dict(value, path, depth, active)
            return [
                _convert(item, f"{path}[{index}]", depth + 1, active)
                for index, item in enumerate(value)
            ]
        finally:
            active.discard(id(value))
    return _convert_leaf(value, path)


def _convert_dict(value: dict[Any, Any], path: str, depth: int, active: set[int]) -> dict[str, Any]:
    if len(value) == 2 and set(value) == _KOMBU_TYPED:
        raise NotJSONError(path, "a dict of only '__type__' and '__value__' (kombu's typed form)")
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _key(key, path)
        shown = name if len(name) <= _KEY_SHOWN else name[:_KEY_SHOWN] + "..."
        out[name] = _convert(item, f"{path}[{json.dumps(shown)}]", depth + 1, active)
    return out


def _key(key: Any, path: str) -> str:
    """A dict key as ``json.dumps`` writes it, or refused."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is True or key is False or key is None:
        return json.dumps(key)
    if isinstance(key, int):
        return str(int(key))
    if isinstance(key, float):
        if not math.isfinite(key):
            raise NotJSONError(path, f"a dict key that is {_float_kind(float(key))}")
        return float.__repr__(float(key))
    raise NotJSONError(path, f"a dict key of type {_type_name(key)}")


def _convert_leaf(value: Any, path: str) -> Any:
    """Leaves other than the plain ones: the fixed conversions, else refused."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal | PurePath):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number):
            return number
        raise NotJSONError(path, f"{_type_name(value)} {_float_kind(number)[6:]}")
    raise NotJSONError(path, _type_name(value))
