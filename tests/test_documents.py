"""The contract's pieces agree: openapi.json, the TypedDicts, the Python constants, the routes.

No worker needed: these read the shipped file and the blueprint's url map.
"""

from __future__ import annotations

import typing

import jsonschema_rs
import pytest
from flask import Flask
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from flask_jobtastic import Jobtastic, contract, documents, states
from flask_jobtastic.registry_store import JOB_STATES
from flask_jobtastic.steps import StepState

CONTRACT = contract.load_contract()
SCHEMAS = CONTRACT["components"]["schemas"]

#: Every TypedDict of ``documents`` and the schema it stands for (the same name).
TYPED = {
    name: getattr(documents, name)
    for name in (
        "JobError",
        "Step",
        "Message",
        "Counts",
        "Children",
        "PartsPage",
        "StatusDocument",
        "BatchRequest",
        "BatchDocument",
        "JobRecord",
        "JobsDocument",
        "ErrorDetail",
        "ErrorDocument",
        "UnavailableEventData",
        "NoticeEventData",
        "RemovedEventData",
    )
}
#: Schemas that are views of another document, not documents of their own.
NOT_TYPED = {
    "TaskId",
    "State",
    "JobState",
    "UnknownDocument",
    "StatusEvent",
    "UnavailableEvent",
    "ReconnectingEvent",
    "ResumedEvent",
    "DoneEvent",
    "JobEvent",
    "RemovedEvent",
}


def test_the_contract_is_valid_openapi_3_1_with_its_version():
    assert not list(OPENAPI_31_VALIDATOR.iter_errors(CONTRACT))
    assert CONTRACT["openapi"].startswith("3.1.")
    assert CONTRACT["info"]["version"] == contract.CONTRACT_VERSION == documents.CONTRACT_VERSION
    major, minor, patch = contract.CONTRACT_VERSION.split(".")
    assert all(part.isdigit() for part in (major, minor, patch))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_schema_is_valid_json_schema_2020_12(name):
    schema = contract.document_schema(name)
    jsonschema_rs.meta.validate(SCHEMAS[name])
    jsonschema_rs.Draft202012Validator(schema)  # every reference resolves


def test_every_document_schema_has_a_typed_dict():
    assert set(TYPED) | NOT_TYPED == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(TYPED))
def test_typed_dict_keys_are_the_schema_properties(name):
    typed = TYPED[name]
    schema = SCHEMAS[name]
    assert set(typing.get_type_hints(typed)) == set(schema["properties"]), name
    assert set(typed.__required_keys__) == set(schema.get("required", ())), name


def _literal(alias: object) -> set[str]:
    return set(typing.get_args(alias))


def test_enums_are_the_libraries_constants_and_the_literals():
    assert set(SCHEMAS["State"]["enum"]) == set(states.ALL_STATES) == _literal(documents.State)
    assert set(SCHEMAS["JobState"]["enum"]) == set(JOB_STATES) == _literal(documents.JobState)
    step_states = SCHEMAS["Step"]["properties"]["state"]["enum"]
    assert set(step_states) == _literal(StepState) == _literal(documents.StepState)
    error_types = SCHEMAS["ErrorDetail"]["properties"]["type"]["enum"]
    assert set(error_types) == _literal(documents.ErrorType)


def _events_of(path: str) -> dict[str, str]:
    events = CONTRACT["paths"][path]["get"]["responses"]["200"]
    one_of = events["content"]["text/event-stream"]["schema"]["oneOf"]
    described = {}
    for option in one_of:
        event = SCHEMAS[option["$ref"].rsplit("/", 1)[1]]["properties"]
        data = event["data"]["contentSchema"]["$ref"].rsplit("/", 1)[1]
        described[event["event"]["const"]] = data
    return described


def test_each_event_name_has_its_data_schema():
    assert _events_of("/events/{task_id}") == {
        name: typed.__name__ for name, typed in documents.EVENT_DATA.items()
    }
    shared = {name: typed.__name__ for name, typed in documents.SHARED_EVENT_DATA.items()}
    assert _events_of("/events") == {k: v for k, v in shared.items() if k not in ("job", "removed")}
    assert _events_of("/events/jobs") == {k: v for k, v in shared.items() if k != "done"}


def _app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(JOBTASTIC_EMBEDDED_WORKER=False, **config)
    Jobtastic(app)
    return app


def test_every_route_of_the_blueprint_is_described_and_nothing_else():
    app = _app()
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("jobtastic."):
            path = rule.rule.removeprefix("/jobtastic")
            path = path.replace("<jobtastic_id:task_id>", "{task_id}").replace(
                "<path:filename>", "{filename}"
            )
            routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    described = {(path, method) for path, item in CONTRACT["paths"].items() for method in item}
    assert routes == described


def test_every_operation_answers_json_errors_and_documents_its_codes():
    for path, item in CONTRACT["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert "200" in codes, (method, path)
            if "{task_id}" in path:
                assert {"400", "404", "503"} <= codes, (method, path)
            if method == "post" and path != "/status":
                names = {p["$ref"].rsplit("/", 1)[1] for p in operation["parameters"]}
                assert "XRequestedWith" in names, path


def test_served_contract_names_the_apps_prefix_and_batch_limit():
    app = _app(JOBTASTIC_URL_PREFIX="/api/jobs/", JOBTASTIC_BATCH_LIMIT=7)
    client = app.test_client()
    response = client.get("/api/jobs/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    served = response.get_json()
    assert served["servers"][0]["url"] == "/api/jobs"
    batches = ("/status", "/events", "/events/jobs")
    assert served["paths"] == CONTRACT["paths"] | {p: served["paths"][p] for p in batches}
    for path in batches:
        ids = served["paths"][path]["get"]["parameters"][0]["schema"]
        assert ids["maxItems"] == 7, path
    assert (
        served["components"]["schemas"]["BatchRequest"]["properties"]["task_ids"]["maxItems"] == 7
    )
    assert client.get("/jobtastic/openapi.json").status_code == 404
    mounted = client.get("/api/jobs/openapi.json", base_url="http://localhost/shop")
    assert mounted.get_json()["servers"][0]["url"] == "/shop/api/jobs"


def test_served_at_the_root_prefix():
    served = _app(JOBTASTIC_URL_PREFIX="/").test_client().get("/openapi.json").get_json()
    assert served["servers"][0]["url"] == "/"
    assert served["info"]["version"] == contract.CONTRACT_VERSION


def test_the_shipped_copy_is_not_changed_by_serving():
    contract.contract_for("/elsewhere", batch_limit=3)
    assert contract.load_contract() == CONTRACT
    assert CONTRACT["servers"][0]["url"] == "/jobtastic"


def test_document_schema_validates_a_document_and_names_the_missing():
    validator = jsonschema_rs.validator_for(contract.document_schema("StatusDocument"))
    good = {
        "task_id": "0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11",
        "state": "PROGRESS",
        "ready": False,
        "progress_percent": 42.0,
        "time_remaining": 65.3,
        "rate": 3.2,
        "completed": 42,
        "total": 100,
    }
    assert validator.is_valid(good)
    for broken in (
        {**good, "state": "RUNNING"},
        {**good, "ready": True},
        {**good, "progress_percent": 101},
        {**good, "time_remaining": -0.5},
        {**good, "result": 1},
        {**good, "state": "SUCCESS", "ready": True},  # no result
        {**good, "state": "FAILURE", "ready": True},  # no error
    ):
        assert not validator.is_valid(broken), broken
    with pytest.raises(KeyError, match="no schema 'Nope'"):
        contract.document_schema("Nope")
