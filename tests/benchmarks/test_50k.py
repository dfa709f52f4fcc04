"""Smoke test of ``benchmarks/bench_50k.py``: a small group of online devices, offline
accounts' KeyPackages and one late device, on a real Prosody.

Checks that a run completes (the online devices join and get the message and the
update; the late device joins from offline storage and catches up from the archive)
and that the JSON has the keys the brief names. No timed assertion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"devices", "accounts_s", "keypackages_s", "create_group_returned_s",
        "create_all_joined_s", "create_stage_totals_s", "fanout_p50_ms", "fanout_max_ms",
        "commit_converge_s", "late_welcome_joined_s", "late_message_s", "late_epoch_s",
        "late_rss_mib", "creator_mib", "server_mib"}


@pytest.mark.integration
def test_offline_members_and_a_late_device_write_the_figures(tmp_path: Path) -> None:
    if shutil.which("prosody") is None:
        pytest.fail("prosody is not installed: run bin/setup (Debian package 'prosody')")
    out = tmp_path / "50k.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_50k.py"), "--offline", "12",
         "--online", "3", "--procs", "1", "--no-update-after-join", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert KEYS <= set(results)
    assert results["devices"] == 12 + 3 + 1 == results["members"]
    assert results["late_members"] == results["members"]
    # the late device caught up to the update's epoch (no joiner updated on its own),
    # after the message
    assert results["late_epoch"] == results["epoch_after_update"]
    assert results["late_message_s"] <= results["late_epoch_s"]
    assert set(results["create_stage_totals_s"]) >= {"commit", "affiliations", "welcomes"}
    assert results["mls_errors"] == 0
