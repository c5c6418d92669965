"""P8: many viewers of running jobs on one gevent web process.

One ``gunicorn -k gevent --workers 1`` web process serves N concurrent event
streams, spread over ``JOBS`` running jobs. A writer process writes PROGRESS
to those jobs the way a worker's ``update_progress`` does (the same Redis
script, ``guards.guarded_progress``, which stores and publishes the meta) and
notes the wall-clock time just before each write. Viewer processes hold the
streams on raw non-blocking sockets and note when each document arrives:
a write's push latency at a viewer is the arrival of its first document at
least that far along, minus the write's time. Meanwhile another client asks
``GET /jobtastic/status/<id>`` in a loop over one keep-alive connection.

Both endpoints are measured at every N, each on a fresh web process: the
shared stream ``/jobtastic/events?ids=<job>`` and the one-job stream
``/jobtastic/events/<job>`` (the alternative). Reported: the Redis
connections the web process holds (raw, and what the streams add to the
warmed-up process), its RSS per viewer, push latency p50/p99 over every
(viewer, write) and the status requests' p99.

The child processes are this module: ``python -m benchmarks.p8_push
viewers|writer|status``, one JSON line in, JSON lines out.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import resource
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clients import KeepAliveClient
from .env import ROOT, BenchEnv, ManagedProcess
from .report import BenchResult, Row
from .stats import fmt_seconds, median

#: Running jobs the viewers are spread over (viewer i watches job i % JOBS).
JOBS = 100
#: Seconds between two progress writes of one job (the writes of all jobs are
#: spread evenly over it: JOBS / WRITE_PERIOD writes per second in all).
WRITE_PERIOD = 1.0
#: Viewers per run, and how many rounds of both endpoints each N gets (rounds
#: alternate the endpoints' order; a figure is the median over rounds, a ratio
#: the median of the rounds' ratios). 5,000 once: that run saturates the process.
ROUNDS = {100: 3, 1000: 3, 5000: 1}
#: Processes holding the viewers' sockets.
VIEWER_PROCESSES = 2
#: The web server: one gevent process with room for every stream.
GUNICORN_ARGS = ["-k", "gevent", "--workers", "1", "--worker-connections", "20000"]
#: The open-stream bounds of the bench app for P8 (per process and per owner).
STREAM_BOUNDS = 100_000
#: Bars on the page of the browser comparison.
BARS = 20
#: The endpoints: ours (one stream for a page's jobs) and the one-job stream.
VARIANTS = {
    "shared": "/jobtastic/events?ids={id}",
    "per-job": "/jobtastic/events/{id}",
}

_COMPLETED = re.compile(rb'"completed":([0-9.]+)')


# -- the parent: runs and figures ---------------------------------------------------


@dataclass
class RunFigures:
    """What one (endpoint, N) run measured."""

    variant: str
    viewers: int
    window: tuple[float, float]
    redis_before: int
    redis_during: int
    rss_before: int
    rss_during: int
    web_cpu: float  # share of one core used by the web process during the window
    web_waited: float  # share of the window it was runnable but waited for a core
    clients_cpu: float  # cores used by this benchmark's client processes meanwhile
    load: float  # the machine's 1-minute load average at the window's start
    open_seconds: float
    refused: int  # viewers whose stream did not open with a 200
    dropped: int  # viewers whose stream ended during the run
    receipts: list[tuple[int, list[float], list[float]]]  # (job, times, completed values)
    status_latencies: list[float]
    status_errors: int
    latencies: list[float] = field(default_factory=list)
    missed: int = 0

    @property
    def redis_added(self) -> int:
        return self.redis_during - self.redis_before

    @property
    def rss_per_viewer(self) -> float:
        return (self.rss_during - self.rss_before) / self.viewers

    @property
    def documents(self) -> int:
        """Documents the viewers received during the window."""
        started, ended = self.window
        return sum(1 for _, times, _ in self.receipts for at in times if started <= at <= ended)

    @property
    def cpu_per_document(self) -> float:
        """Web-process CPU seconds per pushed document (status requests included)."""
        return self.web_cpu * (self.window[1] - self.window[0]) / max(self.documents, 1)


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    rounds = {20: 1} if quick else ROUNDS
    window = 2.0 if quick else 6.0
    jobs = 10 if quick else JOBS
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    writer = _Child("writer", {"ids": ids, "period": WRITE_PERIOD}, env.workdir)
    runs: list[RunFigures] = []
    try:
        writer.receive(60)  # every job has its first PROGRESS
        for round_ in range(max(rounds.values())):
            for n, wanted in rounds.items():
                if round_ >= wanted:
                    continue
                order = list(VARIANTS) if (round_ + n) % 2 == 0 else list(reversed(VARIANTS))
                for variant in order:
                    print(
                        f"[P8]   round {round_ + 1}: {variant} stream, {n} viewers ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.append(_one_run(env, variant, n, ids, window))
        writer.send("stop")
        marks = writer.receive(60)["marks"]
    finally:
        writer.close()
    by_job: dict[int, list[tuple[float, float]]] = {}
    for job, completed, written_at in marks:
        by_job.setdefault(job, []).append((float(completed), float(written_at)))
    for figures in runs:
        _latencies(figures, by_job)
    _report(result, runs, tuple(rounds), jobs, window)


def _one_run(env: BenchEnv, variant: str, n: int, ids: list[str], window: float) -> RunFigures:
    import psutil

    web, base = _start_web(env, f"p8-{variant}-{n}")
    children: list[_Child] = []
    try:
        worker = psutil.Process(_web_worker_pid(web))
        redis_ports = {_port(env.broker.url), _port(env.backend.url)}
        client = KeepAliveClient(base)
        try:
            for task_id in ids[:20]:  # warm up: the view's backend, its Redis connection
                status, _ = client.get_json(f"/jobtastic/status/{task_id}")
                if status != 200:
                    raise RuntimeError(f"status of a running job answered {status}")
        finally:
            client.close()
        time.sleep(0.5)
        redis_before = _redis_connections(worker, redis_ports)
        rss_before = worker.memory_info().rss
        status_paths = [f"/jobtastic/status/{i}" for i in ids]
        status_client = _Child("status", {"base": base, "paths": status_paths}, env.workdir)
        children.append(status_client)
        host, port = base.removeprefix("http://").split(":")
        paths = [VARIANTS[variant].format(id=ids[i % len(ids)]) for i in range(n)]
        viewers = []
        for k in range(VIEWER_PROCESSES):
            share = paths[k::VIEWER_PROCESSES]
            config = {"host": host, "port": int(port), "paths": share}
            child = _Child("viewers", config, env.workdir)
            children.append(child)
            viewers.append(child)
        opened = [child.receive(180) for child in viewers]
        time.sleep(1.0)  # every stream had its first document; the writes go on
        clients = [psutil.Process(child.process.pid) for child in children]
        clients_before = sum(sum(c.cpu_times()[:2]) for c in clients)
        cpu_before, waited_before = sum(worker.cpu_times()[:2]), _run_queue_wait(worker.pid)
        load = os.getloadavg()[0]
        started = time.time()
        redis_samples, rss_samples = [], []
        while time.time() - started < window:
            redis_samples.append(_redis_connections(worker, redis_ports))
            rss_samples.append(worker.memory_info().rss)
            time.sleep(min(1.0, max(0.0, window - (time.time() - started))))
        ended = time.time()
        web_cpu = (sum(worker.cpu_times()[:2]) - cpu_before) / (ended - started)
        web_waited = (_run_queue_wait(worker.pid) - waited_before) / (ended - started)
        clients_cpu = (sum(sum(c.cpu_times()[:2]) for c in clients) - clients_before) / (
            ended - started
        )
        time.sleep(1.0)  # the window's last writes reach every viewer
        receipts: list[tuple[int, list[float], list[float]]] = []
        refused = dropped = 0
        for k, child in enumerate(viewers):
            child.send("stop")
            answer = child.receive(120)
            refused += answer["refused"]
            dropped += answer["dropped"]
            pairs = zip(answer["times"], answer["values"], strict=True)
            for offset, (times, values) in enumerate(pairs):
                viewer = k + offset * VIEWER_PROCESSES  # the index into ``paths``
                receipts.append((viewer % len(ids), times, values))
        status_client.send("stop")
        samples = status_client.receive(60)["samples"]
        env.check_processes()
        web.check_alive()
    finally:
        for child in children:
            child.close()
        web.stop()
    in_window = [(lat, code) for at, lat, code in samples if started <= at <= ended]
    return RunFigures(
        variant=variant,
        viewers=n,
        window=(started, ended),
        redis_before=redis_before,
        redis_during=max(redis_samples),
        rss_before=rss_before,
        rss_during=int(median(rss_samples)),
        web_cpu=web_cpu,
        web_waited=web_waited,
        clients_cpu=clients_cpu,
        load=load,
        open_seconds=max(answer["open_seconds"] for answer in opened),
        refused=refused,
        dropped=dropped,
        receipts=receipts,
        status_latencies=[lat for lat, code in in_window if code == 200],
        status_errors=sum(1 for _, code in in_window if code != 200),
    )


def _start_web(env: BenchEnv, name: str) -> tuple[ManagedProcess, str]:
    """A fresh gevent gunicorn with P8's stream bounds (a fresh one: RSS starts clean)."""
    import urllib.request

    from tests.servers import free_port

    port = free_port()
    web = ManagedProcess(
        f"gunicorn (gevent, {name})",
        [
            sys.executable,
            "-m",
            "gunicorn",
            *GUNICORN_ARGS,
            "--backlog",
            "4096",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--timeout",
            "120",
            "--graceful-timeout",
            "2",
            "benchmarks.wsgi:app",
        ],
        env.workdir / f"{name}.log",
    )
    os.environ["BENCH_EVENTS_MAX"] = str(STREAM_BOUNDS)
    try:
        web.start()
    finally:
        os.environ.pop("BENCH_EVENTS_MAX", None)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        web.check_alive()
        try:
            with urllib.request.urlopen(f"{base}/bench/ping", timeout=2) as response:
                if response.status == 200:
                    return web, base
        except OSError:
            if time.monotonic() > deadline:
                web.stop()
                message = f"gunicorn did not answer within 30 s:\n{web.log_tail()}"
                raise RuntimeError(message) from None
        time.sleep(0.1)


def _web_worker_pid(web: ManagedProcess) -> int:
    import psutil

    assert web.process is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = psutil.Process(web.process.pid).children()
        if len(children) == 1:
            return int(children[0].pid)
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not fork its one web worker")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _run_queue_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable, waiting for a core (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def _redis_connections(process: Any, ports: set[int]) -> int:
    """ESTABLISHED TCP connections of ``process`` to the Redis servers (broker, backend)."""
    return sum(
        1
        for conn in process.net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port in ports and conn.status == "ESTABLISHED"
    )


def _latencies(figures: RunFigures, by_job: dict[int, list[tuple[float, float]]]) -> None:
    """Every (viewer, write in the window): the first document at least that far along."""
    started, ended = figures.window
    writes = {
        job: sorted((c, t) for c, t in marks if started <= t <= ended)
        for job, marks in by_job.items()
    }
    for job, times, values in figures.receipts:
        position = 0
        for completed, written_at in writes.get(job, ()):
            while position < len(values) and values[position] < completed:
                position += 1
            if position == len(values):
                figures.missed += 1
            else:
                figures.latencies.append(times[position] - written_at)


def _fmt_latency(values: list[float], missed: int, pct: float) -> str:
    if not values:
        return "none seen"
    total = len(values) + missed
    # a write a viewer never saw counts as the slowest
    ordered = sorted(values) + [math.inf] * missed
    rank = max(1, math.ceil(pct / 100.0 * total))
    value = ordered[rank - 1]
    return "never" if math.isinf(value) else fmt_seconds(value)


def _pct(values: list[float], missed: int, pct: float) -> float:
    ordered = sorted(values) + [math.inf] * missed
    if not ordered:
        return math.inf
    return ordered[max(1, math.ceil(pct / 100.0 * len(ordered))) - 1]


def _report(
    result: BenchResult, runs: list[RunFigures], counts: tuple[int, ...], jobs: int, window: float
) -> None:
    target_n = 1000 if 1000 in counts else counts[-1]
    for n in counts:
        ours = [r for r in runs if r.viewers == n and r.variant == "shared"]
        alt = [r for r in runs if r.viewers == n and r.variant == "per-job"]
        label = f"N = {n:,}" + (f", {len(ours)} rounds" if len(ours) > 1 else "")
        added = max(r.redis_added for r in ours), max(r.redis_added for r in alt)
        held = max(r.redis_during for r in ours), max(r.redis_during for r in alt)
        result.rows.append(
            Row(
                "P8",
                f"Redis connections the streams add to the web process (most), {label}",
                f"{added[0]} (held {held[0]})",
                f"/events/<id>: {added[1]} (held {held[1]})",
                _ratio(*added),
                "<= 2",
                added[0] <= 2,
                note=(
                    f"N = {n:,}: held before the streams (after warm-up status requests): "
                    f"{max(r.redis_before for r in ours)} / {max(r.redis_before for r in alt)}"
                ),
            )
        )
        p50 = _median_of(ours, alt, lambda r: _pct(r.latencies, r.missed, 50))
        p99 = _median_of(ours, alt, lambda r: _pct(r.latencies, r.missed, 99))
        result.rows.append(
            Row(
                "P8",
                f"push latency, progress write -> every viewer, p50 / p99, {label}",
                f"{_fmt(p50[0])} / {_fmt(p99[0])}",
                f"/events/<id>: {_fmt(p50[1])} / {_fmt(p99[1])}",
                p99[2],
                "p99 <= 100 ms" if n == target_n else "—",
                p99[0] <= 0.100 if n == target_n else None,
                note=(
                    f"N = {n:,}: p99 per round {_each(ours, 99)} / {_each(alt, 99)}; "
                    f"{sum(len(r.latencies) for r in ours)} / "
                    f"{sum(len(r.latencies) for r in alt)} (viewer, write) pairs in "
                    f"{window:.0f} s windows, {sum(r.missed for r in ours)} / "
                    f"{sum(r.missed for r in alt)} never seen; web process CPU "
                    f"{_share(ours, 'web_cpu')} / {_share(alt, 'web_cpu')} of a core, "
                    f"{fmt_seconds(median([r.cpu_per_document for r in ours]))} / "
                    f"{fmt_seconds(median([r.cpu_per_document for r in alt]))} per pushed "
                    f"document, runnable but waiting for a core {_share(ours, 'web_waited')} / "
                    f"{_share(alt, 'web_waited')} of the time (load average "
                    f"{median([r.load for r in ours]):.1f} / {median([r.load for r in alt]):.1f}"
                    f"); all streams open after {median([r.open_seconds for r in ours]):.1f} s / "
                    f"{median([r.open_seconds for r in alt]):.1f} s"
                ),
            )
        )
        rss = _median_of(ours, alt, lambda r: r.rss_per_viewer)
        result.rows.append(
            Row(
                "P8",
                f"web-process RSS per viewer, {label}",
                _fmt_bytes(rss[0]),
                f"/events/<id>: {_fmt_bytes(rss[1])}",
                rss[2],
            )
        )
        status = _median_of(ours, alt, lambda r: _pct(r.status_latencies, r.status_errors, 99))
        result.rows.append(
            Row(
                "P8",
                f"status requests of another client meanwhile, p99, {label}",
                _fmt(status[0]),
                f"/events/<id>: {_fmt(status[1])}",
                status[2],
                "< 50 ms",
                status[0] < 0.050,
                note=(
                    f"N = {n:,}: {sum(len(r.status_latencies) for r in ours)} / "
                    f"{sum(len(r.status_latencies) for r in alt)} requests in the windows, "
                    f"{sum(r.status_errors for r in ours)} / "
                    f"{sum(r.status_errors for r in alt)} failed"
                ),
            )
        )
    result.rows.append(
        Row(
            "P8",
            f"connections from the browser for a page of {BARS} bars",
            f"1 (/events?ids= of {BARS} jobs)",
            f"{BARS} (one EventSource per bar)",
            1 / BARS,
            "1",
            True,
            note=(
                "counted from the design, not measured in a browser: one stream carries up to "
                "JOBTASTIC_BATCH_LIMIT (100) ids; the one-job endpoint needs one per bar, and "
                "a browser opens at most 6 per host over HTTP/1.1 (which is why today's widget "
                "stops at maxStreams = 4 and polls the other bars)"
            ),
        )
    )
    result.details.append(
        f"{jobs} running jobs, each written every {WRITE_PERIOD:g} s ({jobs / WRITE_PERIOD:g} "
        f"writes/s in all) by a separate process through guards.guarded_progress (the "
        f"worker's script: store and publish); viewers on {VIEWER_PROCESSES} client "
        f"processes; web: gunicorn {' '.join(GUNICORN_ARGS)}, a fresh process per run; "
        f"measuring window {window:g} s after every stream had its first document"
    )
    for r in runs:
        result.details.append(
            f"{r.variant} N={r.viewers}: redis {r.redis_before} -> {r.redis_during}; RSS "
            f"{r.rss_before / 2**20:.1f} -> {r.rss_during / 2**20:.1f} MiB; push p50 "
            f"{_fmt_latency(r.latencies, r.missed, 50)} p90 "
            f"{_fmt_latency(r.latencies, r.missed, 90)} p99 "
            f"{_fmt_latency(r.latencies, r.missed, 99)} max "
            f"{_fmt_latency(r.latencies, r.missed, 100)} over {len(r.latencies)} "
            f"({r.missed} missed); status p50 "
            f"{_fmt_latency(r.status_latencies, r.status_errors, 50)} p99 "
            f"{_fmt_latency(r.status_latencies, r.status_errors, 99)} over "
            f"{len(r.status_latencies)}; web CPU {r.web_cpu:.0%} "
            f"({fmt_seconds(r.cpu_per_document)} per document over {r.documents}), waiting "
            f"for a core {r.web_waited:.0%}; client processes {r.clients_cpu:.2f} cores; load "
            f"{r.load:.1f}; open in {r.open_seconds:.1f} s; refused {r.refused}, "
            f"dropped {r.dropped}"
        )


def _median_of(
    ours: list[RunFigures], alt: list[RunFigures], figure: Callable[[RunFigures], float]
) -> tuple[float, float, float | None]:
    """Median over rounds of a figure on each side, and the median of the rounds' ratios."""
    ratios = [_ratio(figure(a), figure(b)) for a, b in zip(ours, alt, strict=True)]
    known = [ratio for ratio in ratios if ratio is not None]
    return (
        median([figure(r) for r in ours]),
        median([figure(r) for r in alt]),
        median(known) if len(known) == len(ratios) else None,
    )


def _fmt(seconds: float) -> str:
    return "never" if math.isinf(seconds) else fmt_seconds(seconds)


def _each(runs: list[RunFigures], pct: float) -> str:
    return ", ".join(_fmt(_pct(r.latencies, r.missed, pct)) for r in runs)


def _share(runs: list[RunFigures], name: str) -> str:
    return f"{median([getattr(r, name) for r in runs]):.0%}"


def _ratio(ours: float, alternative: float) -> float | None:
    if not alternative or math.isinf(alternative) or math.isinf(ours):
        return None
    return ours / alternative


def _fmt_bytes(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


# -- talking to the child processes ------------------------------------------------------


class _Child:
    """``python -m benchmarks.p8_push ROLE``: a config line in, JSON lines out."""

    def __init__(self, role: str, config: dict[str, Any], workdir: Path) -> None:
        self.role = role
        self.log_path = workdir / f"p8-{role}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.p8_push", role],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(config)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, message: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> Any:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the {self.role} process said nothing for {timeout:g} s") from None
        if line is None:
            self._log.flush()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the {self.role} process exited:\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log.close()


def _stdin_has_line(timeout: float) -> bool:
    readable, _, _ = select.select([sys.stdin], [], [], max(timeout, 0.0))
    return bool(readable)


def _say(message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# -- the writer: progress writes the way a worker does them ----------------------------


def _writer_main(config: dict[str, Any]) -> None:
    from flask_jobtastic import guards
    from flask_jobtastic.progress import ProgressMeter

    from .app import create_app

    backend = create_app().extensions["jobtastic"].celery.backend
    ids: list[str] = config["ids"]
    period: float = config["period"]
    total = 10**9  # never 100 %: every write is a PROGRESS write
    meters = [ProgressMeter(started_at=time.time()) for _ in ids]
    written = [0] * len(ids)
    marks: list[tuple[int, int, float]] = []

    def write(job: int) -> None:
        written[job] += 1
        meta = meters[job].record(written[job], total, time.time())
        at = time.time()
        verdict = guards.guarded_progress(backend, ids[job], meta, alive_for=120)
        if verdict != guards.GO_ON:
            raise RuntimeError(f"progress write of job {job} answered {verdict}")
        marks.append((job, written[job], at))

    for job in range(len(ids)):
        write(job)
    _say({"ready": True})
    step = period / len(ids)
    started = time.monotonic()
    sequence = 0
    while True:
        sequence += 1
        due = started + sequence * step
        if _stdin_has_line(due - time.monotonic()):
            break  # "stop"
        write(sequence % len(ids))
    _say({"marks": marks})


# -- the status client: plain requests meanwhile ---------------------------------------


def _status_main(config: dict[str, Any]) -> None:
    client = KeepAliveClient(config["base"])
    paths: list[str] = config["paths"]
    samples: list[tuple[float, float, int]] = []
    index = 0
    while not _stdin_has_line(0):
        path = paths[index % len(paths)]
        index += 1
        try:
            latency, status, _ = client.timed("GET", path)
        except OSError:
            latency, status = math.inf, 0
            client.close()
        samples.append((time.time(), latency, status))
    client.close()
    _say({"samples": samples})


# -- the viewers: many streams on non-blocking sockets --------------------------------


class _Viewers:
    """Event streams on raw sockets; what each received and when."""

    def __init__(self, host: str, port: int, paths: list[str]) -> None:
        self.host, self.port, self.paths = host, port, paths
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket | None] = [None] * len(paths)
        self.buffers = [b""] * len(paths)
        self.status: list[int | None] = [None] * len(paths)
        self.times: list[list[float]] = [[] for _ in paths]
        self.values: list[list[float]] = [[] for _ in paths]
        self.ended = [False] * len(paths)
        self.stop = False
        self.selector.register(sys.stdin, selectors.EVENT_READ, -1)

    def open_all(self, batch: int = 100) -> float:
        """Open every stream, a batch at a time; seconds until each had a document."""
        started = time.monotonic()
        for first in range(0, len(self.paths), batch):
            for index in range(first, min(first + batch, len(self.paths))):
                self._open(index)
            self.serve(0.005)
        deadline = time.monotonic() + 150
        while not self.stop and time.monotonic() < deadline:
            if all(v or s not in (None, 200) or e for v, s, e in self._state()):
                break
            self.serve(0.05)
        return time.monotonic() - started

    def _state(self) -> Iterator[tuple[list[float], int | None, bool]]:
        return zip(self.values, self.status, self.ended, strict=True)

    def _open(self, index: int) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=30)
        request = f"GET {self.paths[index]} HTTP/1.1\r\nHost: {self.host}\r\n"
        sock.sendall((request + "Accept: text/event-stream\r\n\r\n").encode())
        sock.setblocking(False)
        self.sockets[index] = sock
        self.selector.register(sock, selectors.EVENT_READ, index)

    def serve(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            index = key.data
            if index == -1:
                self.stop = True  # a line on stdin: "stop"
                continue
            try:
                chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            self._received(index, chunk, time.time())

    def _received(self, index: int, chunk: bytes, now: float) -> None:
        if not chunk:
            self._close(index)
            return
        if self.status[index] is None:
            self.status[index] = int(chunk[9:12]) if chunk.startswith(b"HTTP/1.") else 0
            if self.status[index] != 200:
                self._close(index)
                return
        data = self.buffers[index] + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self.buffers[index] = data
            return
        self.buffers[index] = data[end + 2 :]
        for match in _COMPLETED.finditer(data, 0, end):
            self.times[index].append(now)
            self.values[index].append(float(match.group(1)))

    def _close(self, index: int) -> None:
        sock = self.sockets[index]
        if sock is not None:
            self.selector.unregister(sock)
            sock.close()
            self.sockets[index] = None
        self.ended[index] = True

    def close(self) -> None:
        for index, sock in enumerate(self.sockets):
            if sock is not None:
                with contextlib.suppress(Exception):
                    self.selector.unregister(sock)
                sock.close()
                self.sockets[index] = None


def _viewers_main(config: dict[str, Any]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(config["paths"]) + 100
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    viewers = _Viewers(config["host"], config["port"], config["paths"])
    open_seconds = viewers.open_all()
    _say({"open_seconds": open_seconds})
    while not viewers.stop:
        viewers.serve(0.5)
    refused = sum(1 for s in viewers.status if s != 200)
    dropped = sum(1 for s, e in zip(viewers.status, viewers.ended, strict=True) if s == 200 and e)
    viewers.close()
    _say({"refused": refused, "dropped": dropped, "times": viewers.times, "values": viewers.values})


def _child_main(role: str) -> None:
    config = json.loads(sys.stdin.readline())
    {"writer": _writer_main, "status": _status_main, "viewers": _viewers_main}[role](config)


if __name__ == "__main__":
    _child_main(sys.argv[1])
