"""The docs site (``docs/``) builds with warnings as errors and covers what it must.

Built once per session into a temporary folder, as ``make docs`` builds it,
in a subprocess (Sphinx's own deprecation warnings are not this suite's to
fail on). Then: every page is there, the generated pages name every schema,
field and operation of the shipped contract, and the configuration page
names every ``JOBTASTIC_*`` key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flask_jobtastic.settings import setting_defaults

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONTRACT = ROOT / "flask_jobtastic" / "openapi.json"

PAGES = (
    "index",
    "quickstart",
    "tutorial",
    "tasks",
    "canvas",
    "widget",
    "testing",
    "status",
    "endpoints",
    "configuration",
    "api",
    "deployment",
    "changelog",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-E"]
        + ["-b", "html", "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    return out / "html"


def page(site: Path, name: str) -> str:
    return (site / f"{name}.html").read_text(encoding="utf-8")


def test_every_page_is_built_and_in_the_navigation(site: Path) -> None:
    index = page(site, "index")
    for name in PAGES:
        assert (site / f"{name}.html").is_file(), name
        assert f'href="{name}.html"' in index or name == "index", name


def test_the_status_page_lists_every_schema_and_field_of_the_contract(site: Path) -> None:
    status = page(site, "status")
    assert "progress_percent" in status
    schemas = json.loads(CONTRACT.read_text(encoding="utf-8"))["components"]["schemas"]
    for name, schema in schemas.items():
        assert f'id="schema-{name}"' in status, name
        for field in schema.get("properties", {}):
            assert f'<span class="pre">{field}</span>' in status, (name, field)


def test_the_endpoints_page_lists_every_operation_of_the_contract(site: Path) -> None:
    endpoints = page(site, "endpoints")
    contract = json.loads(CONTRACT.read_text(encoding="utf-8"))
    for path, item in contract["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                assert f"jobtastic.{operation['operationId']}" in endpoints, (method, path)
                assert f'id="operation-{operation["operationId"].replace("_", "-")}"' in endpoints


def test_the_configuration_page_names_every_setting(site: Path) -> None:
    configuration = page(site, "configuration")
    for key in setting_defaults():
        assert key in configuration, key


def test_the_reference_comes_from_the_docstrings(site: Path) -> None:
    tasks = page(site, "tasks")
    for name in ("delay_or_fail", "update_progress", "significant_kwargs", "on_cancel"):
        assert f'id="flask_jobtastic.JobtasticTask.{name}"' in tasks, name
    api = page(site, "api")
    for name in (
        "Jobtastic.init_app",
        "cache.PyMemcacheCache",
        "signals.task_changed",
        "testing.assert_progress",
        "documents.StatusDocument",
    ):
        assert f'id="flask_jobtastic.{name}"' in api, name


def test_the_changelog_is_the_projects(site: Path) -> None:
    first = (ROOT / "CHANGES.md").read_text(encoding="utf-8").split("\n## ", 1)[1].split("\n")[0]
    assert first.strip() in page(site, "changelog")
