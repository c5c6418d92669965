"""The published contract: an OpenAPI 3.1 description of the blueprint.

``openapi.json``, shipped beside this module, describes every endpoint of
the ``jobtastic`` blueprint and holds the JSON Schemas of its documents
(status, batch, events, jobs, errors). ``documents`` has the same documents
as ``TypedDict``s for Python clients; the tests keep the three in step with
what the views answer.

The contract has a version of its own, :data:`CONTRACT_VERSION` (its
``info.version``), apart from the package's: a change that breaks a client
bumps its major and is called out in the changelog.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any, cast

#: The contract's version (semantic versioning), ``info.version`` of ``openapi.json``.
CONTRACT_VERSION = "1.1.0"

#: The file, inside the package.
FILENAME = "openapi.json"

#: Where ``JOBTASTIC_BATCH_LIMIT`` bounds a list of ids in the description.
_BATCH_LISTS = (
    ("paths", "/status", "get", "parameters", 0, "schema"),
    ("paths", "/events", "get", "parameters", 0, "schema"),
    ("paths", "/events/jobs", "get", "parameters", 0, "schema"),
    ("components", "schemas", "BatchRequest", "properties", "task_ids"),
)


@functools.cache
def _shipped() -> dict[str, Any]:
    text = resources.files("flask_jobtastic").joinpath(FILENAME).read_text(encoding="utf-8")
    return cast(dict[str, Any], json.loads(text))


def load_contract() -> dict[str, Any]:
    """The contract as shipped (``servers`` names the default prefix); a fresh copy."""
    return copy.deepcopy(_shipped())


def contract_for(
    url_prefix: str, *, script_root: str = "", batch_limit: int = 100
) -> dict[str, Any]:
    """The contract of one app: its ``servers`` where the app mounts the blueprint.

    ``url_prefix`` is ``JOBTASTIC_URL_PREFIX``, ``script_root`` where the app
    itself is mounted (a WSGI ``SCRIPT_NAME``), and ``batch_limit`` its
    ``JOBTASTIC_BATCH_LIMIT``, the most ids one batch request takes.
    """
    contract = load_contract()
    base = (script_root.rstrip("/") + url_prefix.rstrip("/")) or "/"
    contract["servers"] = [{"url": base, "description": "Where this app serves the blueprint."}]
    for path in _BATCH_LISTS:
        node: Any = contract
        for key in path:
            node = node[key]
        node["maxItems"] = batch_limit
    return contract


@functools.lru_cache(maxsize=16)
def served_text(url_prefix: str, script_root: str = "", batch_limit: int = 100) -> str:
    """:func:`contract_for` as the JSON text the blueprint serves (kept, it never changes)."""
    contract = contract_for(url_prefix, script_root=script_root, batch_limit=batch_limit)
    return json.dumps(contract, indent=1, ensure_ascii=False)


def document_schema(name: str) -> dict[str, Any]:
    """A standalone JSON Schema (2020-12) of one document, e.g. ``"StatusDocument"``.

    It references the contract's other schemas where it does, so it can be
    given as is to any JSON Schema validator.
    """
    schemas = _shipped()["components"]["schemas"]
    if name not in schemas:
        raise KeyError(f"the contract has no schema {name!r}; it has {', '.join(sorted(schemas))}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"#/components/schemas/{name}",
        "components": {"schemas": copy.deepcopy(schemas)},
    }
