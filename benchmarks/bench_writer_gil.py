"""The store writer's commits against a busy event loop (the GIL): a thread commits
``SQLiteStore`` transactions shaped like the writer's jobs (an outbox entry and the
ratchets) while the main thread either sleeps (an idle event loop) or runs Python
without pause (a busy one), with the writes' savepoints (``parts``, as before round
6) or without (``whole``: ``transaction(parts=False)``, the writer now).

Usage::

    python benchmarks/bench_writer_gil.py [--seconds 3] [--dir DIR] [--json PATH]

Each SQLite call of the thread releases the GIL and must take it back; while the
main thread runs Python, that waits up to the switch interval (5 ms). The figures:
commits per second, the commit's median and p90, and how much Python the main
thread got done (iterations of a fixed loop per second).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mls_xmpp.storage import GroupRecord, OutboxRecord, SQLiteStore  # noqa: E402


def one(parts: bool, busy: bool, seconds: float, where: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=where) as d:
        store = SQLiteStore(os.path.join(d, "s.sqlite"))
        store.save_group(GroupRecord(b"g1", "r@x", b"base" * 100, "s0", b"r" * 800))
        stop = threading.Event()
        durations: list[float] = []

        def writer() -> None:
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                with store.transaction(parts=parts):
                    store.save_outbox(OutboxRecord(b"g1", i, "m", b"x" * 300, b"d" * 32))
                    store.save_ratchets(b"g1", os.urandom(900), f"s{i}")
                durations.append(time.perf_counter() - t0)
                i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        end = time.perf_counter() + seconds
        loops = 0
        while time.perf_counter() < end:
            if busy:
                x = 0
                for j in range(2000):
                    x += j
                loops += 1
            else:
                time.sleep(0.001)
        stop.set()
        thread.join()
        store.close()
    durations.sort()
    return {"savepoints": parts, "main_thread": "busy" if busy else "idle",
            "commits_per_s": round(len(durations) / seconds, 1),
            "commit_median_ms": round(statistics.median(durations) * 1000, 3),
            "commit_p90_ms": round(durations[int(len(durations) * 0.9)] * 1000, 3),
            "main_loops_per_s": round(loops / seconds, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--dir", default=None, help="where the databases go (default: tmp)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    load = os.getloadavg()
    rows = [one(parts, busy, args.seconds, args.dir or tempfile.gettempdir())
            for busy in (False, True) for parts in (True, False)]
    for r in rows:
        print(f"main {r['main_thread']}, {'savepoints' if r['savepoints'] else 'whole':10s}"
              f" {r['commits_per_s']:7.1f} commits/s, median {r['commit_median_ms']:.2f} ms,"
              f" p90 {r['commit_p90_ms']:.2f} ms; main loops/s {r['main_loops_per_s']:.0f}")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "writer_gil", "args": vars(args) | {"json": str(args.json)},
            "environment": {"loadavg_at_start": load, "loadavg_at_end": os.getloadavg(),
                            "switch_interval_s": sys.getswitchinterval()},
            "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
