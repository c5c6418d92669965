"""The widget's files ship: from the source checkout and from an installed wheel."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
from flask import Flask, render_template_string

from flask_jobtastic import Jobtastic

ROOT = Path(__file__).resolve().parent.parent
TASK_ID = "0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11"

RENDER = """
{%- from "jobtastic/macros.html" import progress_bar -%}
{{ jobtastic_assets() }}
{{ progress_bar(task_id, cancel_button=True) }}
"""


def check_app(app: Flask) -> tuple[str, str]:
    client = app.test_client()
    with client.get("/jobtastic/static/jobtastic.js") as js:
        assert js.status_code == 200 and b"Jobtastic" in js.data
        script = js.get_data(as_text=True)
    with client.get("/jobtastic/static/jobtastic.css") as css:
        assert css.status_code == 200 and b".jobtastic" in css.data
    with app.test_request_context():
        html = render_template_string(RENDER, task_id=TASK_ID)
    return script, html


def test_assets_and_macro_from_the_checkout():
    app = Flask("assets")
    Jobtastic(app)
    _, html = check_app(app)
    assert '<script src="/jobtastic/static/jobtastic.js" defer></script>' in html
    assert 'href="/jobtastic/static/jobtastic.css"' in html
    assert f'data-jobtastic-task-id="{TASK_ID}"' in html
    assert f'data-jobtastic-url="/jobtastic/status/{TASK_ID}"' in html
    assert 'data-jobtastic-cancel-button="true"' in html


def test_macro_escapes_what_it_is_given():
    app = Flask("assets")
    Jobtastic(app)
    with app.test_request_context():
        html = render_template_string(
            '{% from "jobtastic/macros.html" import progress_bar %}'
            "{{ progress_bar(task_id, attrs={'title': title}) }}",
            task_id=TASK_ID,
            title='"><script>alert(1)</script>',
        )
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html or "&#34;&gt;&lt;script" in html


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("flask_jobtastic-*.whl")
    return path


def test_wheel_contains_the_assets(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    for name in (
        "flask_jobtastic/static/jobtastic.js",
        "flask_jobtastic/static/jobtastic.css",
        "flask_jobtastic/templates/jobtastic/macros.html",
        "flask_jobtastic/templates/jobtastic/jobs.html",
        "flask_jobtastic/py.typed",
    ):
        assert name in names, name


def test_installed_wheel_serves_the_js_and_renders_the_macro(wheel: Path, tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
    )
    script = textwrap.dedent(
        f"""
        import flask_jobtastic, pathlib
        from flask import Flask, render_template_string
        assert "site-packages" in flask_jobtastic.__file__, flask_jobtastic.__file__
        app = Flask("wheel")
        flask_jobtastic.Jobtastic(app)
        client = app.test_client()
        js = client.get("/jobtastic/static/jobtastic.js")
        assert js.status_code == 200 and b"Jobtastic" in js.data, js.status_code
        with app.test_request_context():
            html = render_template_string({RENDER!r}, task_id={TASK_ID!r})
        assert 'data-jobtastic-task-id="{TASK_ID}"' in html, html
        assert "/jobtastic/static/jobtastic.js" in html, html
        print("ok")
        """
    )
    run = subprocess.run([str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
