"""``python -m benchmarks [--quick] [--only P1,P4] [--output PATH]``.

Exit status 0 when every selected benchmark ran (whether or not it met its
target), 1 when one crashed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from . import (
    p1_progress,
    p2_status_rps,
    p3_batch,
    p4_cached,
    p5_end_to_end,
    p6_herd,
    p7_events,
    p8_push,
    p9_canvas,
)
from .env import BenchEnv
from .report import BenchResult, console_table, markdown

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
QUICK_RESULTS = HERE / "results-quick.md"

Runner = Callable[[BenchEnv, bool, BenchResult], None]

BENCHMARKS: dict[str, tuple[str, Runner]] = {
    "P1": ("update_progress cost and writes", p1_progress.run),
    "P2": ("status endpoint throughput", p2_status_rps.run),
    "P3": ("batch status latency", p3_batch.run),
    "P4": ("delay_or_fail on a cached result", p4_cached.run),
    "P5": ("end-to-end time per small job", p5_end_to_end.run),
    "P6": ("200 concurrent identical calls", p6_herd.run),
    "P7": ("event stream vs polling latency", p7_events.run),
    "P8": ("many viewers on one gevent web process", p8_push.run),
    "P9": ("status of a group of 1,000 children vs one job's", p9_canvas.run),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark flask-jobtastic against what a user would write instead.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke version of each benchmark"
    )
    parser.add_argument("--only", default="", help="comma-separated ids to run, e.g. P1,P4")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown file to write (default {RESULTS.name}, {QUICK_RESULTS.name} with --quick)",
    )
    args = parser.parse_args(argv)
    selected = [part.strip().upper() for part in args.only.split(",") if part.strip()]
    unknown = [name for name in selected if name not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    args.selected = selected or list(BENCHMARKS)
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through ``finally``: servers get stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    # The Redis result backend calls redis-py's deprecated setex; not our business here.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    mode = "quick" if args.quick else "full"
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {','.join(args.selected)}"
    started_at = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    results: list[BenchResult] = []
    crashed = False
    env = BenchEnv()
    try:
        try:
            env.start()
        except Exception:
            traceback.print_exc()
            print("benchmarks: could not start the servers", file=sys.stderr)
            return 1
        for name in args.selected:
            title, runner = BENCHMARKS[name]
            result = BenchResult(name, title)
            print(f"[{name}] {title} ...", file=sys.stderr, flush=True)
            bench_started = time.perf_counter()
            try:
                runner(env, args.quick, result)
            except Exception:
                result.error = traceback.format_exc()
                crashed = True
                print(result.error, file=sys.stderr)
            result.seconds = time.perf_counter() - bench_started
            status = "CRASHED" if result.error else "done"
            print(f"[{name}] {status} in {result.seconds:.1f} s", file=sys.stderr, flush=True)
            results.append(result)
    except KeyboardInterrupt:
        print("benchmarks: interrupted", file=sys.stderr)
        crashed = True
    finally:
        env.close()
    total = time.perf_counter() - started
    load = f"{load_start:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    print()
    print(console_table(results))
    print(f"\n{mode} run of {len(results)} benchmark(s) in {total:.0f} s; load average {load}")
    output = args.output or (QUICK_RESULTS if args.quick else RESULTS)
    output.write_text(
        markdown(
            results,
            command=command,
            mode=mode,
            started=started_at,
            total_seconds=total,
            load=load,
        )
    )
    print(f"written to {output}")
    return 1 if crashed else 0
