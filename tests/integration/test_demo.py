"""``mls-xmpp demo`` as a user runs it: a subprocess, its output and exit status.

The embedded runs start their own Prosody (as ``bin/demo`` does); the
existing-server run points the demo at the session's Prosody with accounts
created here, twice, to show that a second run on the same accounts works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from mls_xmpp.demo import DemoError, DemoOptions, parse_account, parse_server
from mls_xmpp.testing import Account, ProsodyServer

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180

#: Lines a full, successful run prints (the markers are ✔/✘ or OK/FAILED).
KEY_LINES = [
    "[1/7] Delivery Service up; every device publishes KeyPackages",
    "6 items (5 + 1 last-resort)",
    "dave goes offline",
    "[2/7] alice creates a group with bob and charlie",
    "identical on alice, bob and charlie",
    "[3/7] messages every way, and what the server could see",
    "alice   → group: 'Hello bob and charlie!'",
    "what the server could see: the room archive (MAM, read by alice)",
    "plaintext not in it",
    "[4/7] bob updates his keys",
    "bob committed an empty Commit with a fresh path",
    "[5/7] alice removes charlie",
    "charlie got mls_removed",
    "charlie's received messages: still 3",
    "cannot read it",
    "[6/7] dave, offline when added, catches up and replies",
    "[7/7] bob's device loses its state and rejoins",
    "dave read alice   'Welcome, dave!'",
    "dave read bob     'Hi dave, charlie has left.'",
    "exactly the messages sent since he was added, in order",
    "identical on alice, bob and dave",
    "dave    → group: 'Thanks, glad to be here.'",
    "7/7 steps passed",
    "demo: OK",
]


def _command() -> list[str]:
    """``mls-xmpp`` as installed from the wheel (bin/test), else the checkout's module."""
    if os.environ.get("MLS_XMPP_TEST_INSTALLED") == "1":
        return [str(Path(sysconfig.get_path("scripts")) / "mls-xmpp")]
    return [sys.executable, "-m", "mls_xmpp.cli"]


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [*_command(), "demo", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def _prosody_pid(stdout: str) -> int:
    m = re.search(r"embedded Prosody \(pid (\d+)\)", stdout)
    assert m, stdout
    return int(m.group(1))


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_demo_embedded_passes() -> None:
    proc = _demo()
    assert proc.returncode == 0, _report(proc)
    for line in KEY_LINES:
        assert line in proc.stdout, f"missing {line!r}\n{_report(proc)}"
    assert "FAILED" not in proc.stdout
    assert "Prosody stopped" in proc.stdout
    assert not _running(_prosody_pid(proc.stdout)), "the demo left Prosody running"


def test_demo_failed_step_exits_1_and_cleans_up() -> None:
    proc = _demo("--fail-at", "3")
    assert proc.returncode == 1, _report(proc)
    out = proc.stdout
    assert "step 2 passed" in out
    assert "step 3 FAILED: forced failure (--fail-at 3)" in out
    assert "[4/7]" not in out, "steps after the failure must not run"
    assert "2/7 steps passed" in out
    assert re.search(r"^demo: FAILED .*step 3 \(messages every way", out, re.M), out
    assert "Prosody stopped" in out
    assert not _running(_prosody_pid(out)), "the demo left Prosody running"


def test_demo_quiet_prints_only_results() -> None:
    proc = _demo("--quiet", "--fail-at", "1")
    assert proc.returncode == 1, _report(proc)
    lines = proc.stdout.splitlines()
    assert any("step 1 FAILED: forced failure" in line for line in lines), proc.stdout
    assert not any(line.startswith("      ") for line in lines), "details in quiet mode"
    assert lines[-1].startswith("demo: FAILED"), proc.stdout


def test_demo_on_existing_server_twice(
    prosody: ProsodyServer, new_account: Callable[[str], Account]
) -> None:
    args = ["--server", f"{prosody.host}:{prosody.c2s_port}", "--plaintext"]
    for name in ("alice", "bob", "charlie", "dave"):
        account = new_account(name)
        args += ["--account", f"{name}={account.jid}:{account.password}"]
    for run in (1, 2):  # the second run finds no stale KeyPackages of the first
        proc = _demo(*args)
        assert proc.returncode == 0, f"run {run}\n{_report(proc)}"
        assert "existing server via" in proc.stdout
        assert "other device(s)" not in proc.stdout, proc.stdout
        assert "destroyed" in proc.stdout and "retracted from PEP" in proc.stdout
        assert "demo: OK" in proc.stdout


def test_demo_wrong_password_fails_cleanly(
    prosody: ProsodyServer, new_account: Callable[[str], Account]
) -> None:
    args = ["--server", f"{prosody.host}:{prosody.c2s_port}", "--plaintext", "--timeout", "10"]
    for name in ("alice", "bob", "charlie", "dave"):
        account = new_account(name)
        password = "wrong" if name == "bob" else account.password
        args += ["--account", f"{name}={account.jid}:{password}"]
    proc = _demo(*args)
    assert proc.returncode == 1, _report(proc)
    assert "authentication failed" in proc.stdout
    assert "stopped: 3 client(s) disconnected" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--server", "example.org:5222"], "missing --account alice=JID:PASSWORD"),
    (["--account", "alice=alice@x:pw"], "missing --account bob"),
    (["--account", "eve=eve@x:pw"], "must be one of"),
    (["--domain", "example.org"], "apply to an existing server"),
    (["--fail-at", "9"], "--fail-at must be 1..7"),
])
def test_demo_bad_options_exit_2(args: list[str], message: str) -> None:
    proc = _demo(*args)
    assert proc.returncode == 2, _report(proc)
    assert message in proc.stderr, proc.stderr


def test_option_parsing() -> None:
    assert parse_account("alice=alice@example.org:p:w") == (
        "alice", Account("alice@example.org", "p:w"))
    assert parse_account("Bob=bob:pw", "example.org") == ("bob", Account("bob@example.org", "pw"))
    assert parse_server("xmpp.example.org") == ("xmpp.example.org", 5222)
    assert parse_server("127.0.0.1:5333") == ("127.0.0.1", 5333)
    assert parse_server("[::1]:5223") == ("::1", 5223)
    for bad in ("alice", "alice=alice@example.org", "alice=:pw", "alice=a@b/res:pw"):
        with pytest.raises(DemoError):
            parse_account(bad)
    with pytest.raises(DemoError):
        parse_server("host:99999")
    options = DemoOptions.build(accounts=[f"{n}={n}:pw" for n in ("alice", "bob", "charlie",
                                                                     "dave")],
                                domain="example.org", server="h:1")
    assert not options.embedded and options.server == ("h", 1)
    assert options.accounts["dave"].jid == "dave@example.org"
    assert DemoOptions.build().embedded
