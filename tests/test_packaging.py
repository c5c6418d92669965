"""The sdist and the wheel, built with ``python -m build`` as a release would be.

The sdist is the whole project (tests, demo, benchmarks, project files), so a
packager can run the tests from it; the wheel is the package only, with its
widget files and license metadata. A small part of the suite runs from the
unpacked sdist, importing the package from there, not from this checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

from tests.rig import ROOT

NAME = "flask_jobtastic-0.1.0"

#: Fail fast when the registry is out of reach, so the fallback comes quickly.
OFFLINE_FRIENDLY = {"PIP_RETRIES": "0", "PIP_TIMEOUT": "10", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@dataclass
class Dists:
    sdist: Path
    wheel: Path
    #: Where the sdist was unpacked: ``<unpacked>/flask_jobtastic-0.1.0``.
    unpacked: Path
    #: ``isolated`` or ``no-isolation`` (the registry was out of reach).
    how: str


def build(outdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), *extra, str(ROOT)],
        env={**os.environ, **OFFLINE_FRIENDLY},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """Built in an isolated environment if it can reach setuptools, else in the venv."""
    outdir = tmp_path_factory.mktemp("dist")
    how = "isolated"
    done = build(outdir)
    if done.returncode != 0:
        how = "no-isolation"
        fallback = build(outdir, "--no-isolation")
        assert fallback.returncode == 0, (
            f"isolated build:\n{done.stdout[-3000:]}{done.stderr[-3000:]}\n"
            f"--no-isolation build:\n{fallback.stdout[-3000:]}{fallback.stderr[-3000:]}"
        )
    print(f"built {how}")
    sdist = outdir / f"{NAME}.tar.gz"
    wheel = outdir / f"{NAME}-py3-none-any.whl"
    assert sdist.is_file() and wheel.is_file(), sorted(p.name for p in outdir.iterdir())
    unpacked = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    return Dists(sdist, wheel, unpacked / NAME, how)


def sdist_names(dists: Dists) -> set[str]:
    with tarfile.open(dists.sdist) as archive:
        return {name.removeprefix(f"{NAME}/") for name in archive.getnames()}


def wheel_names(dists: Dists) -> set[str]:
    with zipfile.ZipFile(dists.wheel) as archive:
        return set(archive.namelist())


def test_the_sdist_holds_the_project_files_tests_demo_and_benchmarks(dists: Dists) -> None:
    names = sdist_names(dists)
    expected = {
        "LICENSE",
        "README.md",
        "CHANGES.md",
        "SECURITY.md",
        "CONTRIBUTING.md",
        "MANIFEST.in",
        "Makefile",
        "setup.cfg",
        "pyproject.toml",
        "scripts/system-deps.sh",
        "tests/conftest.py",
        "tests/test_keys.py",
        "tests/tasks.py",
        "tests/typing/quickstart.py",
        "example_app/__init__.py",
        "example_app/templates/index.html",
        "example_app/static/demo.js",
        "benchmarks/__main__.py",
        "benchmarks/results.md",
        "static/jobtastic.js",
        "static/jobtastic.css",
        "templates/jobtastic/bar.html",
        "flask_jobtastic/py.typed",
    }
    assert expected <= names, sorted(expected - names)
    tracked_modules = {f"flask_jobtastic/{p.name}" for p in (ROOT / "flask_jobtastic").glob("*.py")}
    assert tracked_modules <= names, sorted(tracked_modules - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("test-artifacts", ".venv", "build/"))]
    license_text = (dists.unpacked / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 the flask-jobtastic authors" in license_text
    assert "0.1.0 (unreleased)" in (dists.unpacked / "CHANGES.md").read_text()
    assert "Status document contract: version 1" in (dists.unpacked / "CHANGES.md").read_text()


def test_the_wheel_holds_the_package_its_assets_and_the_license_only(dists: Dists) -> None:
    names = wheel_names(dists)
    info = f"{NAME}.dist-info/"
    assert all(n.startswith(("flask_jobtastic/", info)) for n in names), sorted(names)
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    modules = {f"flask_jobtastic/{p.name}" for p in (ROOT / "flask_jobtastic").glob("*.py")}
    assets = {
        "flask_jobtastic/py.typed",
        "flask_jobtastic/static/jobtastic.js",
        "flask_jobtastic/static/jobtastic.css",
        "flask_jobtastic/templates/jobtastic/bar.html",
        "flask_jobtastic/templates/jobtastic/jobs.html",
        "flask_jobtastic/templates/jobtastic/macros.html",
    }
    assert modules | assets <= names, sorted((modules | assets) - names)
    # setuptools >= 69 puts license files under licenses/, older ones beside METADATA
    licenses = [n for n in names if n in (f"{info}licenses/LICENSE", f"{info}LICENSE")]
    assert len(licenses) == 1, sorted(n for n in names if n.startswith(info))
    with zipfile.ZipFile(dists.wheel) as archive:
        assert archive.read(licenses[0]) == (ROOT / "LICENSE").read_bytes()
        metadata = Parser().parsestr(archive.read(f"{info}METADATA").decode())
    assert metadata["License"] == "MIT" or metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier") or []
    for classifier in (
        "Framework :: Flask",
        "Framework :: Celery",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3.11",
        "Typing :: Typed",
    ):
        assert classifier in classifiers
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    repo = "https://github.com/flask-jobtastic/flask-jobtastic"
    assert urls == {
        "Documentation": "https://flask-jobtastic.readthedocs.io",
        "Changes": f"{repo}/blob/main/CHANGES.md",
        "Source": repo,
        "Issue tracker": f"{repo}/issues",
    }


def test_part_of_the_suite_passes_from_the_unpacked_sdist(dists: Dists) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(dists.unpacked)
    where = subprocess.run(
        [sys.executable, "-c", "import flask_jobtastic, tests; print(flask_jobtastic.__file__)"],
        cwd=dists.unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip() == str(dists.unpacked / "flask_jobtastic" / "__init__.py"), where
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_keys.py", "tests/test_progress.py"]
        + ["-q", "-p", "no:cacheprovider"],
        cwd=dists.unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
