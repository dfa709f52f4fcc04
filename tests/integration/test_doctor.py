"""``mls-xmpp doctor`` against real servers started here.

* On a complete server every check passes and the exit status is 0, run both
  in-process (``mls_xmpp.cli.main``) and as the installed ``mls-xmpp`` entry
  point in a subprocess; what the doctor created (room, PEP node) is gone after.
* On a Prosody without MAM on rooms (``muc_mam`` left out) the doctor names
  that check, gives the setting to change, and exits 1.
* Wrong password and bad options fail as documented.

The servers come from :data:`COMPLETE_SERVERS` / :data:`SERVERS_WITHOUT_ROOM_ARCHIVE`
(id -> factory); test ids carry the id, so another server (``"ejabberd"``: an
``EjabberdServer`` with the same interface as :class:`ProsodyServer`) is one
more entry there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slixmpp.exceptions import IqError

import mls_xmpp
from mls_xmpp import doctor
from mls_xmpp.cli import main
from mls_xmpp.doctor import CHECKS
from mls_xmpp.testing import (
    Account,
    EjabberdServer,
    ProsodyServer,
    connect_client,
    disconnect_client,
)

#: where the package under test was imported from (a checkout, or an installed wheel)
PACKAGE_HOME = Path(mls_xmpp.__file__).parents[1]
TIMEOUT = 120

#: Servers with every feature the doctor checks (stream management included).
COMPLETE_SERVERS: dict[str, Callable[[], Any]] = {
    "prosody": lambda: ProsodyServer(smacks=True),
    "ejabberd": lambda: EjabberdServer(),
}
#: Servers whose rooms have no archive (MAM); everything else is there.
SERVERS_WITHOUT_ROOM_ARCHIVE: dict[str, Callable[[], Any]] = {
    "prosody": lambda: ProsodyServer(smacks=True, without_modules=("muc_mam",)),
}


@contextlib.contextmanager
def _running(factory: Callable[[], Any]) -> Iterator[Any]:
    server = factory()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=sorted(COMPLETE_SERVERS))
def complete_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    with _running(COMPLETE_SERVERS[request.param]) as server:
        yield server


@pytest.fixture(params=sorted(SERVERS_WITHOUT_ROOM_ARCHIVE))
def server_without_room_archive(request: pytest.FixtureRequest) -> Iterator[Any]:
    with _running(SERVERS_WITHOUT_ROOM_ARCHIVE[request.param]) as server:
        yield server


def _args(server: Any, account: Account, *extra: str, timeout: float = 15) -> list[str]:
    return ["doctor", "--server", f"{server.host}:{server.c2s_port}", "--account", account.jid,
            "--password", account.password, "--plaintext", "--timeout", str(timeout), *extra]


def _doctor_json(server: Any, account: Account,
                 capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    status = main(_args(server, account, "--json"))
    out = capsys.readouterr().out
    return status, json.loads(out)


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


async def _leftovers(server: Any, account: Account, room: str, node: str) -> list[str]:
    """What of the doctor's room and PEP node still exists on the server."""
    client = await connect_client(server, account.jid, account.password,
                                  plugins=("xep_0030", "xep_0060"))
    found = []
    try:
        try:
            await client.plugin["xep_0030"].get_info(jid=room, timeout=10)
            found.append(f"room {room}")
        except IqError as e:  # Prosody remembers a destroyed room as "gone"
            assert e.iq["error"]["condition"] in ("item-not-found", "gone"), e
        try:
            await client.plugin["xep_0060"].get_items(account.jid, node, timeout=10)
            found.append(f"node {node}")
        except IqError as e:
            assert e.iq["error"]["condition"] == "item-not-found", e
    finally:
        await disconnect_client(client)
    return found


def test_doctor_in_process_all_checks_pass_and_cleans_up(
        complete_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    account = complete_server.create_account("doctor")
    status, report = _doctor_json(complete_server, account, capsys)
    checks = _by_name(report)
    assert list(checks) == [spec.name for spec in CHECKS]
    failed = {name: c["detail"] for name, c in checks.items() if c["result"] != "pass"}
    assert failed == {}, report
    assert status == 0 and report["ok"] is True
    # the details say what was exercised, not just that disco listed it
    assert "stanza-id = MAM id" in checks["muc-mam"]["detail"]
    assert "204800-byte stanza went through" in checks["stanza-size"]["detail"]
    assert "delivered to the next session" in checks["offline-storage"]["detail"]
    assert "round trip OK" in checks["http-upload"]["detail"]

    room = checks["muc-room"]["detail"].split(":")[0]
    assert room.startswith("mls-doctor-") and "@" in room
    node = "urn:mls-xmpp:0:doctor:" + room.split("@")[0].removeprefix("mls-doctor-")
    assert asyncio.run(_leftovers(complete_server, account, room, node)) == []


def test_doctor_entry_point_subprocess_exits_0(complete_server: Any) -> None:
    """The installed ``mls-xmpp`` script, as a user runs it: table, verdict, exit 0."""
    account = complete_server.create_account("doctor")
    script = Path(sysconfig.get_path("scripts")) / "mls-xmpp"
    assert script.exists(), f"no installed entry point at {script}"
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    if os.environ.get("MLS_XMPP_TEST_INSTALLED") != "1":  # test this checkout's package
        env["PYTHONPATH"] = str(PACKAGE_HOME)
    proc = subprocess.run([str(script), *_args(complete_server, account)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    report = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    for spec in CHECKS:
        (row,) = [line for line in lines if line.split()[:1] == [spec.name]]
        assert row.split()[2] == "PASS", report
    assert f"{sum(s.required for s in CHECKS)}/{sum(s.required for s in CHECKS)} required " \
        "checks passed" in proc.stdout, report
    assert lines[-1] == "doctor: OK", report
    assert "To fix:" not in proc.stdout


def test_doctor_without_room_archive_names_it_and_exits_1(
        server_without_room_archive: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = server_without_room_archive
    account = server.create_account("doctor")
    status, report = _doctor_json(server, account, capsys)
    checks = _by_name(report)
    assert status == 1 and report["ok"] is False
    not_passed = {name for name, c in checks.items() if c["result"] != "pass"}
    assert not_passed == {"muc-mam"}, report
    mam = checks["muc-mam"]
    assert mam["required"] is True and mam["label"] == "FAIL"
    assert "muc_mam" in mam["fix"]["prosody"] and "mam: true" in mam["fix"]["ejabberd"]

    # the table says the same, with the setting to change
    status = main(_args(server, server.create_account("doctor")))
    out = capsys.readouterr().out
    assert status == 1
    (row,) = [line for line in out.splitlines() if line.startswith("muc-mam ")]
    assert "FAIL" in row.split() and "required" in row.split()
    assert 'Prosody:  under the MUC Component: modules_enabled = { "muc_mam" }' in out
    assert out.splitlines()[-1] == "doctor: FAILED (required: muc-mam)"


def test_doctor_stanza_over_the_limit_fails_that_check_only(
        complete_server: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe larger than the server's limit (Prosody and ejabberd: 256 KiB and 1 MiB
    here) closes only the probe's own session: every other check still passes."""
    monkeypatch.setattr(doctor, "STANZA_BUDGET", 1100 * 1024)
    account = complete_server.create_account("doctor")
    status, report = _doctor_json(complete_server, account, capsys)
    checks = _by_name(report)
    assert status == 1
    assert {name for name, c in checks.items() if c["result"] != "pass"} == {"stanza-size"}
    detail = checks["stanza-size"]["detail"]
    assert f"a {1100 * 1024}-byte stanza was refused" in detail, detail
    assert "policy-violation" in detail, detail


def test_doctor_without_offline_storage_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    with _running(lambda: ProsodyServer(without_modules=("offline",))) as server:
        account = server.create_account("doctor")
        status = main(_args(server, account, "--json", timeout=5))
        report = json.loads(capsys.readouterr().out)
    checks = _by_name(report)
    assert status == 1
    assert checks["offline-storage"]["result"] == "fail"
    assert "was not delivered to its next session" in checks["offline-storage"]["detail"]
    assert '"offline"' in checks["offline-storage"]["fix"]["prosody"]
    required_failed = {n for n, c in checks.items() if c["required"] and c["result"] != "pass"}
    assert required_failed == {"offline-storage"}


def test_doctor_wrong_password_fails_login_and_skips_the_rest(
        complete_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    account = complete_server.create_account("doctor")
    status, report = _doctor_json(complete_server, account._replace(password="wrong"), capsys)
    checks = _by_name(report)
    assert status == 1
    assert checks["login"]["result"] == "fail"
    assert "authentication failed" in checks["login"]["detail"]
    assert {c["result"] for name, c in checks.items() if name != "login"} == {"skip"}


@pytest.mark.parametrize("args, message", [
    (["--account", "not-a-jid", "--password", "x"], "bare JID"),
    (["--account", "a@b.org/res", "--password", "x"], "bare JID"),
    (["--account", "a@b.org", "--password", "x", "--server", "h:99999"], "out of range"),
    (["--account", "a@b.org", "--password", "x", "--timeout", "0"], "positive"),
])
def test_doctor_bad_options_exit_2(args: list[str], message: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_HOME))
    env.pop("MLS_XMPP_PASSWORD", None)
    proc = subprocess.run([sys.executable, "-m", "mls_xmpp.cli", "doctor", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
