"""HTTP clients for the benchmarks: a load generator, a keep-alive client, an SSE reader."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Load generator settings used for both sides of P2.
LOAD_CONNECTIONS = 8


@dataclass
class LoadResult:
    requests_per_second: float
    requests: int
    errors: int
    tool: str


def load_test(url: str, seconds: float) -> LoadResult:
    """Hammer ``url`` from another process; wrk when installed, else a Python generator."""
    wrk = shutil.which("wrk")
    if wrk:
        return _wrk(wrk, url, seconds)
    return _python_load(url, seconds)


def _wrk(wrk: str, url: str, seconds: float) -> LoadResult:
    duration = max(1, round(seconds))
    completed = subprocess.run(
        [wrk, "-t1", f"-c{LOAD_CONNECTIONS}", f"-d{duration}s", "--timeout", "5s", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    )
    out = completed.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise RuntimeError(f"could not read wrk's output:\n{out}\n{completed.stderr}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(group) for group in socket_errors.groups())
    return LoadResult(float(rps.group(1)), int(total.group(1)), errors, "wrk")


_PYTHON_LOAD = r"""
import http.client, sys, threading, time, json
from urllib.parse import urlsplit
url, seconds, connections = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
parts = urlsplit(url)
counts = [0] * connections
errors = [0] * connections
deadline = time.monotonic() + seconds
def run(index):
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    while time.monotonic() < deadline:
        try:
            conn.request("GET", parts.path)
            response = conn.getresponse()
            response.read()
            if response.status >= 300:
                errors[index] += 1
            counts[index] += 1
        except Exception:
            errors[index] += 1
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
started = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"requests": sum(counts), "errors": sum(errors),
                  "seconds": time.monotonic() - started}))
"""


def _python_load(url: str, seconds: float) -> LoadResult:
    completed = subprocess.run(
        [sys.executable, "-c", _PYTHON_LOAD, url, str(seconds), str(LOAD_CONNECTIONS)],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    data = json.loads(completed.stdout)
    return LoadResult(
        data["requests"] / data["seconds"], data["requests"], data["errors"], "python"
    )


class KeepAliveClient:
    """Sequential requests over one connection, reconnecting when the server closed it."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn.connect()
        return self._conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> tuple[int, Any]:
        status, data = self.request("GET", path)
        return status, json.loads(data)

    def timed(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[float, int, bytes]:
        """One request's latency in seconds, its status and body."""
        self._connection()  # connecting is not part of the latency
        started = time.perf_counter()
        status, data = self.request(method, path, body, headers)
        return time.perf_counter() - started, status, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def sse_events(
    base_url: str, path: str, timeout: float = 30.0, on_open: Callable[[], None] | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(event, data)`` of a Server-Sent Events stream as soon as each arrives."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {response.read()[:300]!r}")
        if on_open is not None:
            on_open()
        event, data = "message", []
        while True:
            line = response.readline()
            if not line:
                return
            text = line.decode("utf-8").rstrip("\r\n")
            if not text:
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif text.startswith(":"):
                continue
            elif text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith("data:"):
                data.append(text[5:].lstrip())
    finally:
        conn.close()
