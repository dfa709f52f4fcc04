"""Smoke test of ``benchmarks/bench_message.py``: it runs and writes its figures.

No timed assertion: the figures are for the benchmark, not for a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"suite", "n", "encrypt_us", "process_us", "sign_us", "verify_us", "rounds"}


def test_bench_message_writes_every_suite_and_size(tmp_path: Path) -> None:
    out = tmp_path / "message.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_message.py"), "--sizes", "2,3",
         "--suites", "1,2", "--messages", "20", "--rounds", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "bench_message"
    results = doc["results"]
    assert [(r["suite"], r["n"]) for r in results] == [(1, 2), (1, 3), (2, 2), (2, 3)]
    for r in results:
        assert KEYS <= set(r)
        assert len(r["rounds"]) == 2
        assert all(r[k] > 0 for k in ("encrypt_us", "process_us", "sign_us", "verify_us"))
