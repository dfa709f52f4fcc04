"""Smoke test of ``benchmarks/bench_fleet.py``: a small fleet on a real Prosody.

Checks that a run completes (every device joins, gets every message and the
Commit) and that the JSON has the keys the issue names. No timed assertion:
the figures themselves are for the benchmark, not for a test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"devices", "create_all_joined_s", "fanout_p50_ms", "fanout_p99_ms",
        "commit_converge_s", "client_mib_per_device", "server_mib_per_device"}


@pytest.mark.integration
def test_fleet_of_four_devices_writes_the_figures(tmp_path: Path) -> None:
    if shutil.which("prosody") is None:
        pytest.fail("prosody is not installed: run bin/setup (Debian package 'prosody')")
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fleet.py"), "--devices", "4",
         "--procs", "2", "--messages", "2", "--pool-size", "2", "--storage", "memory",
         "--settle", "0", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    results = doc["results"]
    assert KEYS <= set(results)
    assert results["devices"] == 4
    assert results["device_processes"] == 2
    assert results["fanout_samples"] == 4 * 2 == len(results["latency_samples_ms"])
    assert results["mls_errors"] == 0
    assert results["fanout_p50_ms"] <= results["fanout_p99_ms"]
