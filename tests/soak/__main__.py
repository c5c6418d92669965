"""Soak: push many jobs with progress through a real broker and worker.

    python -m tests.soak [--jobs 10000] [--concurrency 8]

Starts its own Redis (broker and results), memcached and a ``celery worker``
process, sends ``--jobs`` distinct jobs that report progress, waits for all
of them, and reports results lost (must be 0), wrong results, and the
worker's RSS growth over the run. Exits non-zero when anything was lost.
Not part of the default test run: 10,000 jobs take a few minutes here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

import psutil

from tests.servers import MemcachedServer, RedisServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1800.0)
    options = parser.parse_args()

    with RedisServer() as broker, RedisServer() as results, MemcachedServer() as memcached:
        os.environ.update(
            JOBTASTIC_TEST_BROKER_URL=broker.url,
            JOBTASTIC_TEST_BACKEND_URL=results.url,
            JOBTASTIC_TEST_COUNTER_URL=results.url.rsplit("/", 1)[0] + "/1",
            JOBTASTIC_TEST_MEMCACHED=memcached.address,
        )
        from tests.app_factory import close_app, create_app
        from tests.rig import ARTIFACTS, WorkerProcess
        from tests.tasks import SoakTask

        # the pool the README's soak figures were measured on
        worker = WorkerProcess(
            ARTIFACTS / "soak-worker.log", concurrency=options.concurrency, pool="threads"
        )
        worker.start()
        app = create_app()
        try:
            assert worker.process is not None
            process = psutil.Process(worker.process.pid)
            # warm up, then take the baseline RSS
            with app.app_context():
                SoakTask.delay_or_fail(n=0, salt="warm-up").get(timeout=30)
            rss_start = process.memory_info().rss
            salt = uuid.uuid4().hex
            started = time.monotonic()
            with app.app_context():
                sent = [(n, SoakTask.delay_or_fail(n=n, salt=salt)) for n in range(options.jobs)]
            send_seconds = time.monotonic() - started
            backend = app.extensions["jobtastic"].celery.backend
            pending = {result.id: n for n, result in sent}
            wrong = 0
            deadline = time.monotonic() + options.timeout
            while pending and time.monotonic() < deadline:
                for task_id, n in list(pending.items())[:500]:
                    meta = backend.get_task_meta(task_id, cache=False)
                    if meta["status"] == "SUCCESS":
                        if meta["result"] != n * n:
                            wrong += 1
                        del pending[task_id]
                    elif meta["status"] == "FAILURE":
                        wrong += 1
                        del pending[task_id]
                time.sleep(0.05)
            seconds = time.monotonic() - started
            rss_end = process.memory_info().rss
            del sent
        finally:
            close_app(app)
            worker.stop()

    lost = len(pending)
    growth = (rss_end - rss_start) / 1_000_000
    print(f"jobs sent:            {options.jobs} in {send_seconds:.1f} s")
    print(f"all done in:          {seconds:.1f} s ({options.jobs / seconds:.0f} jobs/s)")
    print(f"results lost:         {lost}")
    print(f"wrong or failed:      {wrong}")
    print(
        f"worker RSS:           {rss_start / 1e6:.1f} MB -> {rss_end / 1e6:.1f} MB "
        f"({growth:+.1f} MB)"
    )
    return 0 if lost == 0 and wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
