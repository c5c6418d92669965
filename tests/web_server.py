"""A real gunicorn (gthread, the README's web server, or gevent) serving ``tests.widget_app``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import ARTIFACTS, ROOT
from tests.servers import free_port


class GunicornServer:
    """``gunicorn -k gthread --threads N tests.widget_app:app`` on a free port (or ``-k gevent``).

    ``config`` is added to the app's settings; ``env`` overrides environment
    variables (the servers the app talks to, for instance).
    """

    def __init__(
        self,
        name: str,
        *,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
        threads: int = 32,
        worker_class: str = "gthread",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / f"gunicorn-{name}.log"
        self.config = dict(config or {})
        self.env = dict(env or {})
        self.workers = workers
        self.threads = threads
        self.worker_class = worker_class
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> GunicornServer:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["JOBTASTIC_TEST_APP_CONFIG"] = json.dumps(self.config)
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            f"--worker-class={self.worker_class}",
            f"--workers={self.workers}",
            f"--threads={self.threads}",
            "--worker-connections=10000",
            "--graceful-timeout=2",
            f"--bind=127.0.0.1:{self.port}",
            "tests.widget_app:app",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.log_text()}")
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout} s:\n{self.log_text()}")

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/jobtastic/status/{uuid.uuid4()}", timeout=1)
        except urllib.error.HTTPError as error:
            return error.code == 404
        except OSError:
            return False
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def worker_pids(self) -> list[int]:
        """The web worker processes (gunicorn's master forks them)."""
        import psutil

        assert self.process is not None
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"
