"""Pages generated from the shipped contract, ``flask_jobtastic/openapi.json``.

Two directives, for MyST Markdown pages:

``{jobtastic-schema} NAME``
    One of ``components.schemas``: its description, a table of its properties
    (name, type, required, what), its conditions (``allOf`` if/then), and a
    target that ``{schema}`NAME``` links to.

``{jobtastic-endpoints}``
    Every path and method: a summary table, then each operation's
    description, parameters and responses.

Every schema of the contract must be rendered somewhere (a warning names
those that are not), and every ``$ref`` becomes a ``{schema}`` link, which
nitpicky mode resolves: the pages cannot fall behind the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id

logger = logging.getLogger(__name__)

CONTRACT = Path(__file__).resolve().parents[2] / "flask_jobtastic" / "openapi.json"
OBJTYPE = "schema"
METHODS = ("get", "post", "put", "patch", "delete")


def load(env: BuildEnvironment | None = None) -> dict[str, Any]:
    """The contract as shipped; with ``env``, the page being read depends on it."""
    if env is not None:
        env.note_dependency(str(CONTRACT))
    with CONTRACT.open(encoding="utf-8") as handle:
        contract: dict[str, Any] = json.load(handle)
    return contract


def ref_name(ref: str) -> str:
    """``#/components/<kind>/<Name>`` -> ``Name``."""
    return ref.rsplit("/", 1)[-1]


def resolve(contract: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """A response, parameter or header, with one ``$ref`` followed."""
    ref = value.get("$ref")
    if not ref:
        return value
    kind, name = ref.split("/")[-2:]
    resolved: dict[str, Any] = contract["components"][kind][name]
    return resolved


def cell(text: str) -> str:
    """Text fit for one cell of a Markdown pipe table."""
    return " ".join(text.split()).replace("|", "\\|")


def literal(value: Any) -> str:
    """A JSON value as inline code."""
    return f"`{json.dumps(value)}`"


def describe_type(schema: dict[str, Any]) -> str:
    """A short Markdown phrase for a property's type."""
    if "$ref" in schema:
        return f"{{schema}}`{ref_name(schema['$ref'])}`"
    if "const" in schema:
        return f"always {literal(schema['const'])}"
    if "enum" in schema:
        return "one of " + ", ".join(literal(v) for v in schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema and "type" not in schema:
            return " or ".join(describe_type(part) for part in schema[key])
    kind = schema.get("type")
    if kind is None:
        bounds = constraints(schema)
        return ", ".join(bounds) if bounds else "any JSON value"
    kinds = kind if isinstance(kind, list) else [kind]
    words = []
    for one in kinds:
        if one == "array" and "items" in schema:
            words.append(f"array of {describe_type(schema['items'])}")
        elif one == "object" and isinstance(schema.get("additionalProperties"), dict):
            words.append(f"object of {describe_type(schema['additionalProperties'])}")
        elif one == "string" and "contentSchema" in schema:
            words.append(f"JSON text of {describe_type(schema['contentSchema'])}")
        else:
            words.append(one)
    return " or ".join(words)


def constraints(schema: dict[str, Any]) -> list[str]:
    """Bounds, patterns and examples, as short Markdown phrases."""
    said = []
    if "minimum" in schema and "maximum" in schema:
        said.append(f"{schema['minimum']} to {schema['maximum']}")
    elif "minimum" in schema:
        said.append(f"at least {schema['minimum']}")
    elif "maximum" in schema:
        said.append(f"at most {schema['maximum']}")
    if "minItems" in schema or "maxItems" in schema:
        most = schema.get("maxItems", "any number of")
        said.append(f"{schema.get('minItems', 0)} to {most} items")
    if "maxLength" in schema:
        said.append(f"at most {schema['maxLength']} characters")
    if "format" in schema:
        said.append(f"format `{schema['format']}`")
    if "pattern" in schema:
        said.append(f"matches `{schema['pattern']}`")
    for key in ("anyOf", "oneOf"):
        if key in schema and "type" in schema:
            said.append("one of: " + ", ".join(describe_type(part) for part in schema[key]))
    if "examples" in schema:
        said.append("e.g. " + ", ".join(literal(v) for v in schema["examples"]))
    return said


def condition(rule: dict[str, Any]) -> str:
    """An ``if``/``then``/``else`` rule, in words."""

    def when(part: dict[str, Any]) -> str:
        words = [f"`{key}` is present" for key in part.get("required", [])]
        for key, value in part.get("properties", {}).items():
            if "const" in value:
                words.append(f"`{key}` is {literal(value['const'])}")
            elif "enum" in value:
                words.append(f"`{key}` is one of " + ", ".join(literal(v) for v in value["enum"]))
        return " and ".join(words)

    def then(part: dict[str, Any]) -> str:
        if "not" in part:
            return " and ".join(f"`{key}` is absent" for key in part["not"].get("required", []))
        return when(part)

    text = f"when {when(rule['if'])}: {then(rule['then'])}"
    if "else" in rule:
        text += f"; otherwise {then(rule['else'])}"
    return text + "."


def schema_lines(name: str, schema: dict[str, Any]) -> list[str]:
    """Markdown for one component schema."""
    lines: list[str] = []
    if schema.get("description"):
        lines += [schema["description"], ""]
    bases = [part["$ref"] for part in schema.get("allOf", []) if "$ref" in part]
    for base in bases:
        lines += [f"Extends {{schema}}`{ref_name(base)}`.", ""]
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        facts = [f"Type: {describe_type(schema)}."]
        facts += [phrase[0].upper() + phrase[1:] + "." for phrase in constraints(schema)]
        lines += [" ".join(facts), ""]
    else:
        required = set(schema.get("required", []))
        lines += ["| field | type | required | meaning |", "|---|---|---|---|"]
        for key, value in properties.items():
            what = [value.get("description", "")] + constraints(value)
            meaning = "; ".join(part.rstrip(".") for part in what if part)
            lines.append(
                f"| `{key}` | {cell(describe_type(value))} | "
                f"{'yes' if key in required else 'no'} | {cell(meaning)} |"
            )
        lines.append("")
        extra = schema.get("additionalProperties")
        if extra is True:
            lines += ["Open: other keys may appear beside these; ignore those you do not know.", ""]
        elif extra is False:
            lines += ["Closed: no other keys.", ""]
    rules = [part for part in schema.get("allOf", []) if "if" in part]
    if rules:
        lines += ["Conditions:", ""]
        lines += [f"* {condition(rule)}" for rule in rules]
        lines.append("")
    return lines


class SchemaDirective(SphinxDirective):
    """``{jobtastic-schema} NAME``: one component schema of the contract."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        schemas = load(self.env)["components"]["schemas"]
        if name not in schemas:
            raise self.error(f"openapi.json has no schema {name!r}")
        node_id = make_id(self.env, self.state.document, "schema", name)
        target = nodes.target("", "", ids=[node_id])
        self.state.document.note_explicit_target(target)
        self.env.get_domain("std").note_object(OBJTYPE, name, node_id, location=target)  # type: ignore[attr-defined]
        title = nodes.rubric("", "", nodes.literal(name, name), ids=[f"{node_id}-title"])
        body = nodes.container(classes=["jobtastic-schema"])
        self.state.nested_parse(StringList(schema_lines(name, schemas[name])), 0, body)
        return [target, title, body]


def parameter_line(contract: dict[str, Any], parameter: dict[str, Any]) -> str:
    """One parameter as a Markdown list item."""
    parameter = resolve(contract, parameter)
    where = parameter["in"]
    need = "required" if parameter.get("required") else "optional"
    what = [parameter.get("description", "")] + constraints(parameter.get("schema", {}))
    kind = describe_type(parameter.get("schema", {}))
    text = "; ".join(part.rstrip(".") for part in what if part)
    return f"* `{parameter['name']}` ({where}, {need}, {kind}): {text}."


def response_lines(contract: dict[str, Any], code: str, response: dict[str, Any]) -> list[str]:
    """One response as a Markdown list item."""
    response = resolve(contract, response)
    bodies = []
    for media, content in response.get("content", {}).items():
        schema = content.get("schema")
        bodies.append(f"`{media}`" + (f" {describe_type(schema)}" if schema else ""))
    description = " ".join(response.get("description", "").split())
    line = f"* **{code}**: {description}"
    if bodies:
        line += " Body: " + "; ".join(bodies) + "."
    headers = list(response.get("headers", {}))
    if headers:
        line += " Headers: " + ", ".join(f"`{h}`" for h in headers) + "."
    return [line]


def endpoints_lines(contract: dict[str, Any]) -> list[str]:
    """Markdown for every operation: the table, then the details."""
    operations = [
        (path, method, operation)
        for path, item in contract["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]
    lines = ["| method and path | Flask endpoint | what |", "|---|---|---|"]
    for path, method, operation in operations:
        anchor = f"operation-{operation['operationId']}"
        lines.append(
            f"| [`{method.upper()} {path}`](#{anchor}) | `jobtastic.{operation['operationId']}` "
            f"| {cell(operation.get('summary', ''))} |"
        )
    lines.append("")
    for path, method, operation in operations:
        lines += [
            f"({'operation-' + operation['operationId']})=",
            f"```{{rubric}} {method.upper()} {path}",
            "```",
            "",
            f"*{operation.get('summary', '')}* (`jobtastic.{operation['operationId']}`)",
            "",
        ]
        if operation.get("description"):
            lines += [operation["description"], ""]
        parameters = operation.get("parameters", [])
        if parameters:
            lines += ["Parameters:", ""]
            lines += [parameter_line(contract, p) for p in parameters]
            lines.append("")
        body = operation.get("requestBody")
        if body:
            for media, content in body.get("content", {}).items():
                lines += [
                    f"Request body (`{media}`): {describe_type(content.get('schema', {}))}.",
                    "",
                ]
        lines += ["Responses:", ""]
        for code, response in operation.get("responses", {}).items():
            lines += response_lines(contract, code, response)
        lines.append("")
    return lines


class EndpointsDirective(SphinxDirective):
    """``{jobtastic-endpoints}``: every operation of the contract."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        body = nodes.container(classes=["jobtastic-endpoints"])
        self.state.nested_parse(StringList(endpoints_lines(load(self.env))), 0, body)
        return list(body.children)


class ContractInfoDirective(SphinxDirective):
    """``{jobtastic-contract-info}``: the contract's version and description."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        info = load(self.env)["info"]
        lines = [
            f"Contract version **{info['version']}** (`info.version`): {info.get('summary', '')}",
            "",
            info.get("description", ""),
        ]
        body = nodes.container(classes=["jobtastic-contract-info"])
        self.state.nested_parse(StringList(lines), 0, body)
        return list(body.children)


def check_every_schema(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn about contract schemas that no page renders."""
    rendered = {name for (kind, name) in env.get_domain("std").objects if kind == OBJTYPE}  # type: ignore[attr-defined]
    missing = sorted(set(load()["components"]["schemas"]) - rendered)
    if missing:
        logger.warning(
            "openapi.json schemas not rendered by any {jobtastic-schema} directive: %s",
            ", ".join(missing),
            type="jobtastic",
        )


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives, the ``{schema}`` role and the completeness check."""
    app.add_crossref_type(OBJTYPE, OBJTYPE, objname="contract schema")
    app.add_directive("jobtastic-schema", SchemaDirective)
    app.add_directive("jobtastic-endpoints", EndpointsDirective)
    app.add_directive("jobtastic-contract-info", ContractInfoDirective)
    app.connect("env-check-consistency", check_every_schema)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
