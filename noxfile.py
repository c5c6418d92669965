"""The version matrix: the core tests on the lowest and on the newest supported set.

``make matrix`` runs both sessions (``nox -s lowest newest``); ``make test`` runs
the whole suite on the newest set and then the ``lowest`` session.

- ``lowest`` pins each dependency ``==`` the floor of ``install_requires`` in
  setup.cfg (read from there, so the floors and the proof cannot drift apart),
  installs the package with ``--no-deps``, then the pins and the few test tools
  the core tests use, in one resolve; dependencies of the dependencies (Werkzeug,
  kombu, ...) resolve to their newest allowed versions.
- ``newest`` installs the package and the same tools with their newest releases
  (``--upgrade``) and runs the same core tests: the full suite on the newest set
  is what ``make test`` runs before the matrix.

The core tests are the ones that use Flask, Celery (a prefork worker on a Redis
broker and result backend, RabbitMQ for the broker tests, cancel on the prefork,
threads and solo pools), flask-caching, redis-py (results, pub/sub streams, the
registry) and pymemcache for real: about 4 minutes on two cores. Left to the full
suite: faults and outages, browser, packaging, contract, property and soak tests.
Virtual environments are kept in .nox/ and reused (``reuse_venv``).
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import nox

ROOT = Path(__file__).parent

nox.options.reuse_venv = "yes"
nox.options.sessions = ["lowest", "newest"]

CORE_TESTS = [
    "tests/test_keys.py",
    "tests/test_progress.py",
    "tests/test_sending.py",
    "tests/test_running.py",
    "tests/test_task.py",
    "tests/test_cache.py",
    "tests/test_herd.py",
    "tests/test_events.py",
    "tests/test_views.py",
    "tests/test_extension.py",
    "tests/test_results.py",
    "tests/test_status.py",
    "tests/test_steps.py",
    "tests/test_counts.py",
    "tests/test_signals.py",
    "tests/test_heartbeat.py",
    "tests/test_cancel.py",
    "tests/test_registry_redis.py",
    "tests/test_hub.py",
    "tests/test_streams.py",
    "tests/test_cli.py",
]

# Test tools the core tests need, from the test extra (gunicorn and gevent: the
# gevent web process of tests/test_events.py).
TOOLS = ("pytest", "hypothesis", "gunicorn", "gevent")

# What the matrix reports it ran on.
SHOWN = [
    "flask",
    "werkzeug",
    "celery",
    "kombu",
    "flask-caching",
    "cachelib",
    "redis",
    "pymemcache",
    "psutil",
]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _requirements(section: str, key: str) -> list[str]:
    lines = _setup_cfg()[section][key].splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def lowest_pins() -> list[str]:
    """``name==floor`` for each ``name>=floor`` of install_requires."""
    pins = []
    for requirement in _requirements("options", "install_requires"):
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement)
        if not match:
            raise ValueError(f"install_requires entry without a >= floor: {requirement!r}")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


def tools() -> list[str]:
    extra = _requirements("options.extras_require", "test")
    return [r for r in extra if _name(r) in TOOLS]


def _show_versions(session: nox.Session) -> None:
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m, sys; "
        "print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))",
        *SHOWN,
    )


def _core(session: nox.Session) -> None:
    _show_versions(session)
    session.run("python", "-m", "pytest", *(session.posargs or CORE_TESTS))


@nox.session(reuse_venv=True)
def lowest(session: nox.Session) -> None:
    """The core tests on the floors of install_requires."""
    session.install("--no-deps", "-e", ".")
    session.install(*lowest_pins(), *tools())
    _core(session)


@nox.session(reuse_venv=True)
def newest(session: nox.Session) -> None:
    """The core tests on the newest releases."""
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".", *tools())
    _core(session)
