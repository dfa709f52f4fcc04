"""``mls-xmpp server``: a throw-away Prosody whose printed accounts work, stopped cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import mls_xmpp

from .mls_clients import befriend, close, mls_client

#: where the package under test was imported from (a checkout, or an installed wheel)
PACKAGE_HOME = Path(mls_xmpp.__file__).parents[1]


def _start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_HOME)}
    return subprocess.Popen([sys.executable, "-m", "mls_xmpp.cli", "server", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _settings(proc: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, Any]:
    """Read the printed settings block (Python assignments) up to "Ctrl-C stops"."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("server exited early: " + (proc.stderr.read()
                                                             if proc.stderr else ""))
        if line.startswith("Ctrl-C stops"):
            break
        lines.append(line)
    settings: dict[str, Any] = {}
    exec("".join(s for s in lines if "=" in s and not s.startswith("#")), settings)
    return settings


async def _talk(settings: dict[str, Any]) -> None:
    server = SimpleNamespace(host=settings["HOST"], c2s_port=settings["PORT"])
    alice, _ = await mls_client(server, settings["ALICE"], settings["ALICE_PASSWORD"])  # type: ignore[arg-type]
    carol, rc = await mls_client(server, settings["CAROL"], settings["CAROL_PASSWORD"])  # type: ignore[arg-type]
    try:
        await befriend(alice, carol)
        group = await alice.plugin["mls"].create_group(members=[settings["CAROL"]])
        await group.send("over the printed accounts")
        (event,) = await rc.wait("mls_message", 1)
        assert event.body == "over the printed accounts"
    finally:
        await close(alice, carol)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_server_prints_working_accounts_and_stops(stop: signal.Signals) -> None:
    proc = _start("--accounts", "alice,carol")
    try:
        settings = _settings(proc)
        assert settings["ALICE"] == "alice@localhost"
        assert settings["CAROL"] == "carol@localhost"
        assert settings["HOST"] == "127.0.0.1" and settings["LOCAL_TEST_SERVER"] is True
        asyncio.run(asyncio.wait_for(_talk(settings), 60))
        proc.send_signal(stop)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the server went with it: its port no longer accepts connections
    with pytest.raises(OSError):
        socket.create_connection((settings["HOST"], settings["PORT"]), timeout=2).close()


def test_server_refuses_bad_account_names() -> None:
    proc = _start("--accounts", "Not A Name")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "lowercase local part" in err
