"""``mls-xmpp chat`` as people use it: subprocesses driven through stdin/stdout.

Each chat client is ``python -m mls_xmpp.cli chat JID --plaintext --server
HOST:PORT --store PATH`` against the session's Prosody, with the password in
``MLS_XMPP_PASSWORD``. :class:`ChatProcess` writes lines to its stdin and waits,
with a timeout, for lines on its stdout, so a failure never hangs the test.
Peers that are not chat processes are plugin clients from :mod:`.mls_clients`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mls_xmpp.chat import (
    ChatError,
    clean,
    default_store,
    parse_server,
    room_short,
    safe_file_name,
)
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.trust import fingerprint

from .mls_clients import befriend, close, mls_client

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  #: seconds to wait for one expected line
TEST_TIMEOUT = 240.0  #: seconds for a whole scenario
QUIET = 1.0  #: seconds during which a line must *not* appear

TIME = r"\[\d\d:\d\d:\d\d\]"
FINGERPRINT = r"[0-9a-f]{8} [0-9a-f]{8} [0-9a-f]{8} [0-9a-f]{8}"


class ChatProcess:
    """One ``mls-xmpp chat`` subprocess; its stdout lines are collected as they come."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self.stderr = b""
        self._cond = asyncio.Condition()
        self._eof = False
        self._reader = asyncio.ensure_future(self._read())
        self._err_reader = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def start(cls, server: ProsodyServer, account: Account, store: Path,
                    *extra: str, password: str | None = None) -> ChatProcess:
        env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1",
                   MLS_XMPP_PASSWORD=account.password if password is None else password)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mls_xmpp.cli", "chat", account.jid,
            "--server", f"{server.host}:{server.c2s_port}", "--plaintext",
            "--store", str(store), *extra,
            cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=16 << 20)
        return cls(account.jid.split("@")[0], proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line over the limit: the test fails on what it lacks
                raw = b""
            async with self._cond:
                if not raw:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    def report(self) -> str:
        """Everything the process printed, for assertion messages."""
        return (f"--- {self.name} stdout ---\n" + "\n".join(self.lines)
                + f"\n--- {self.name} stderr ---\n" + self.stderr.decode("utf-8", "replace"))

    def mark(self) -> int:
        """A position in the output: later waits look at lines from here on."""
        return len(self.lines)

    async def send(self, line: str) -> int:
        """Write one input line; the mark before it."""
        mark = self.mark()
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return mark

    def _find(self, pattern: re.Pattern[str], since: int) -> re.Match[str] | None:
        for line in self.lines[since:]:
            m = pattern.search(line)
            if m is not None:
                return m
        return None

    async def expect(self, pattern: str, since: int = 0, timeout: float = WAIT) -> re.Match[str]:
        """The first line from ``since`` on that matches ``pattern`` (waiting for it)."""
        regex = re.compile(pattern)
        try:
            async with self._cond:
                await asyncio.wait_for(self._cond.wait_for(
                    lambda: self._find(regex, since) is not None or self._eof), timeout)
        except TimeoutError:
            pass
        found = self._find(regex, since)
        if found is None:
            raise AssertionError(f"{self.name}: no line matching {pattern!r} within "
                                 f"{timeout:g} s\n{self.report()}")
        return found

    async def expect_all(self, pattern: str, since: int, count: int) -> list[re.Match[str]]:
        """``count`` consecutive-or-not lines matching ``pattern`` from ``since`` on."""
        regex = re.compile(pattern)

        def found() -> list[re.Match[str]]:
            return [m for m in (regex.search(x) for x in self.lines[since:]) if m]

        try:
            async with self._cond:
                await asyncio.wait_for(self._cond.wait_for(
                    lambda: len(found()) >= count or self._eof), WAIT)
        except TimeoutError:
            pass
        matches = found()
        assert len(matches) >= count, (f"{self.name}: {len(matches)} of {count} lines matching "
                                       f"{pattern!r}\n{self.report()}")
        return matches

    async def command(self, line: str, pattern: str) -> re.Match[str]:
        """Send ``line`` and wait for its answer."""
        return await self.expect(pattern, await self.send(line))

    async def quiet(self, pattern: str, since: int, seconds: float = QUIET) -> None:
        """No line from ``since`` on matches ``pattern`` for ``seconds``."""
        await asyncio.sleep(seconds)
        assert self._find(re.compile(pattern), since) is None, (
            f"{self.name}: unexpected {pattern!r}\n{self.report()}")

    async def wait_exit(self, timeout: float = WAIT) -> int:
        """The exit status (the process is killed if it does not end in time)."""
        try:
            status = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout:g} s\n"
                                 f"{self.report()}") from None
        await asyncio.wait_for(asyncio.gather(self._reader, self._err_reader), timeout)
        return status

    async def quit(self) -> None:
        """``/quit``: exit status 0, a last line, nothing on stderr."""
        await self.send("/quit")
        status = await self.wait_exit()
        assert status == 0, self.report()
        assert self.lines[-1] == "* logged out", self.report()
        assert b"Traceback" not in self.stderr, self.report()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    async def ready(self) -> str:
        """Wait until logged in; this device's fingerprint."""
        m = await self.expect(rf"^\* logged in as \S+, device ({FINGERPRINT})")
        await self.expect(r"^\* ready: /help lists the commands$")
        return m.group(1)


async def _kill_all(*chats: ChatProcess | None) -> None:
    for chat in chats:
        if chat is not None and chat.proc.returncode is None:
            chat.kill()
            await chat.proc.wait()


def _members(chat: ChatProcess, since: int) -> tuple[int, str, dict[str, list[str]]]:
    """Parse the last ``/members`` answer after ``since``: epoch, authenticator, devices."""
    head = None
    for i in range(len(chat.lines) - 1, since - 1, -1):
        head = re.search(r"^\* group \S+: epoch (\d+), epoch_authenticator ([0-9a-f]{16}), "
                         r"(\d+) member device\(s\):$", chat.lines[i])
        if head:
            break
    assert head is not None, chat.report()
    devices: dict[str, list[str]] = {}
    for line in chat.lines[i + 1:i + 1 + int(head.group(3))]:
        m = re.search(rf"^  leaf \d+\s+(\S+)\s+({FINGERPRINT})", line)
        assert m, chat.report()
        devices.setdefault(m.group(1), []).append(m.group(2))
    return int(head.group(1)), head.group(2), devices


async def _members_of(chat: ChatProcess, count: int) -> tuple[int, str, dict[str, list[str]]]:
    since = await chat.send("/members")
    await chat.expect(r"^\* group \S+: epoch \d+", since)
    await chat.expect_all(rf"^  leaf \d+ .*{FINGERPRINT}", since, count)
    return _members(chat, since)


# -- the conversation -----------------------------------------------------------------


async def _conversation(server: ProsodyServer, accounts: dict[str, Account],
                        tmp: Path) -> None:
    alice_acc, bob_acc, carol_acc = accounts["alice"], accounts["bob"], accounts["carol"]
    a = b = None
    carol = None
    try:
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db")
        b = await ChatProcess.start(server, bob_acc, tmp / "bob.db", "--device", "laptop")
        fp_a, fp_b = await a.ready(), await b.ready()
        carol, rc = await mls_client(server, *carol_acc)

        # mistakes: an error line each, and the client goes on
        await a.command("/bogus", r"^error: unknown command /bogus \(/help")
        await a.command("hello?", r"^error: no group selected")
        await a.command("/members", r"^error: no group selected")
        await a.command("/open 3", r"^error: you are in no group")
        await a.command("/create nobody-here", r"^error: nobody-here@localhost has no "
                        r"KeyPackages")
        await a.command("/create bad@@jid", r"^error: 'bad@@jid' is not a JID")
        await a.command("/groups", r"^\* no groups yet")
        await a.command("/help", r"^  /invite JID")

        # alice creates a group with bob; bob is welcomed and the group selected
        m = await a.command(f"/create {bob_acc.jid}",
                            r"^\* created group (\S+@\S+) \(epoch 1, 2 member device\(s\)\); "
                            r"selected$")
        room = m.group(1)
        tag = room_short(room)
        await a.expect(rf"^{TIME} {tag} \* you added {bob_acc.jid} \(epoch 1\)$")
        await b.expect(rf"^{TIME} {tag} \* you joined group {re.escape(room)} \(epoch 1, with "
                       rf"{alice_acc.jid}\); selected$")

        # a message each way
        since = await a.send("Hello bob!")
        await a.expect(rf"^{TIME} {tag} {alice_acc.jid}: Hello bob!$", since)
        await b.expect(rf"^{TIME} {tag} {alice_acc.jid}: Hello bob!$")
        since = a.mark()
        await b.send("Hi alice, bob here.")
        await a.expect(rf"^{TIME} {tag} {bob_acc.jid}: Hi alice, bob here\.$", since)

        # /members: both devices with fingerprints; both sides agree on the epoch
        epoch, auth, devices = await _members_of(a, 2)
        assert (epoch, devices) == (1, {alice_acc.jid: [fp_a], bob_acc.jid: [fp_b]}), a.report()
        assert await _members_of(b, 2) == (epoch, auth, devices), b.report()
        assert f"{fp_a}  (this device)" in "\n".join(a.lines)

        # /update: a new epoch, a new epoch_authenticator, the same on both sides
        since_b = b.mark()
        await a.command("/update", rf"^{TIME} {tag} \* you updated your keys \(epoch 2\)$")
        await b.expect(rf"^{TIME} {tag} \* {alice_acc.jid} updated their keys \(epoch 2\)$",
                       since_b)
        epoch2, auth2, devices2 = await _members_of(a, 2)
        assert (epoch2, devices2) == (2, devices) and auth2 != auth, a.report()
        assert await _members_of(b, 2) == (epoch2, auth2, devices2), b.report()

        # bob invites carol, a plugin client; everyone hears everyone
        since_a = a.mark()
        await b.command(f"/invite {carol_acc.jid.split('@')[0]}",
                        rf"^{TIME} {tag} \* you added {carol_acc.jid} \(epoch 3\)$")
        await a.expect(rf"^{TIME} {tag} \* {bob_acc.jid} added {carol_acc.jid} \(epoch 3\)$",
                       since_a)
        (gc,) = await rc.wait("mls_joined")
        await asyncio.wait_for(gc.ready.wait(), WAIT)
        await b.command(f"/invite {carol_acc.jid}", rf"^\* {carol_acc.jid} is already in the "
                        "group")
        since_a, since_b = a.mark(), b.mark()
        await gc.send("carol\x1b[2J here\nsecond line")  # an escape sequence, two lines
        for chat, since in ((a, since_a), (b, since_b)):
            m = await chat.expect(rf"^{TIME} {tag} {carol_acc.jid}: carol(.*) here$", since)
            assert m.group(1) == "\\x1b[2J", chat.report()  # shown escaped, not obeyed
            await chat.expect(r"^    second line$", since)
        await a.send("welcome carol")
        await rc.wait("mls_message", 1)
        assert rc.bodies() == ["welcome carol"]

        # /remove: bob is told, and reads nothing after it
        since_b = b.mark()
        await a.command(f"/remove {bob_acc.jid}",
                        rf"^{TIME} {tag} \* you removed {bob_acc.jid} \(epoch 4\)$")
        await b.expect(rf"^{TIME} {tag} \* {alice_acc.jid} removed {bob_acc.jid} \(epoch 4\)$",
                       since_b)
        await b.expect(rf"^{TIME} {tag} \* you are no longer a member of group ", since_b)
        since_b = b.mark()
        await a.send("just between us, carol")
        await rc.wait("mls_message", 2)
        assert rc.bodies()[-1] == "just between us, carol"
        await b.quiet("just between us", since_b)
        await b.command("still there?", r"^error: no group selected")
        await b.command("/groups", r"^\* no groups yet")
        await a.command(f"/remove {bob_acc.jid}", r"^error: bob\S* is not in this group")
        await a.command(f"/remove {alice_acc.jid}", r"^error: you cannot remove yourself")

        # /groups, /open, /history on alice's side
        since = await a.send("/groups")
        await a.expect(r"^\* 1 group\(s\):$", since)
        await a.expect(rf"^  1\. {re.escape(room)}  epoch 4, 2 members  \(current\)$", since)
        await a.command("/open 1", rf"^\* selected group {re.escape(room)} \(epoch 4, 2 members\)")
        await a.command(f"/open {tag}", rf"^\* selected group {re.escape(room)}")
        await a.command("/open 2", r"^error: no group 2: /groups lists 1\.\.1$")
        since = await a.send("/history 3")
        await a.expect(rf"^\* last 3 message\(s\) of {tag}:$", since)
        await a.expect_all(rf"^{TIME} {tag} \S+: ", since, 3)
        assert a.lines[-1].endswith(f"{alice_acc.jid}: just between us, carol"), a.report()
        await a.command("/history x", r"^error: usage: /history \[N\]$")

        await a.quit()
        await b.quit()

        # both start again from their stores: bob (removed) with no group, alice
        # with the group selected, and the conversation goes on
        b = await ChatProcess.start(server, bob_acc, tmp / "bob.db", "--device", "laptop")
        assert await b.ready() == fp_b
        await b.expect(r"^\* store .*; 0 group\(s\)$")
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db")
        assert await a.ready() == fp_a
        await a.expect(r"^\* store .*; 1 group\(s\)$")
        await a.expect(rf"^\* selected group {re.escape(room)}$")
        await a.send("alice is back")
        await rc.wait("mls_message", 3)
        assert rc.bodies()[-1] == "alice is back"
        since = a.mark()
        await gc.send("hi again")
        await a.expect(rf"^{TIME} {tag} {carol_acc.jid}: hi again$", since)
        await a.quit()
        await b.quit()
    finally:
        await _kill_all(a, b)
        if carol is not None:
            await close(carol)


def test_chat_conversation(prosody: ProsodyServer, tmp_path: Path,
                           new_account: Callable[[str], Account]) -> None:
    accounts = {n: new_account(n) for n in ("alice", "bob", "carol")}
    asyncio.run(asyncio.wait_for(_conversation(prosody, accounts, tmp_path), TEST_TIMEOUT))


# -- leaving ------------------------------------------------------------------------


async def _leave(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                 tmp: Path) -> None:
    a = None
    bob, rb = await mls_client(server, *bob_acc)
    try:
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db")
        await a.ready()
        await a.command("/leave", r"^error: no group selected")
        since = await a.send(f"/create {alice_acc.jid}")  # no other device of hers
        await a.expect(r"^\* you have no other device to add$", since)
        await a.expect(r"^error: nobody to add \(nothing was created\)$", since)
        m = await a.command("/create", r"^\* created group (\S+) \(epoch 0, 1 member "
                            r"device\(s\)\); selected$")
        room = m.group(1)
        tag = room_short(room)
        await a.command("/leave", r"^error: you are the only member")
        await a.command(f"/invite {bob_acc.jid}",
                        rf"^{TIME} {tag} \* you added {bob_acc.jid} \(epoch 1\)$")
        (gb,) = await rb.wait("mls_joined")
        await asyncio.wait_for(gb.ready.wait(), WAIT)
        since = a.mark()
        await gb.update()  # a peer's Commit, shown as a notice
        await a.expect(rf"^{TIME} {tag} \* {bob_acc.jid} updated their keys \(epoch 2\)$",
                       since)
        # alice leaves: bob's device commits her removal
        since = await a.send("/leave")
        await a.expect(r"^\* leave requested: another member's device will remove you$", since)
        await a.expect(rf"^{TIME} {tag} \* {bob_acc.jid} removed {alice_acc.jid} \(epoch 3\)$",
                       since)
        await a.expect(rf"^{TIME} {tag} \* you are no longer a member of group ", since)
        await a.expect(r"^\* no group selected now", since)
        # bob's device merges its Commit when the room reflects it (maybe after alice saw it)
        await rb.wait("mls_membership", 2)  # his update, then alice's removal
        assert gb.jids() == {bob_acc.jid}
        await a.command("/groups", r"^\* no groups yet")
        await a.command("/history", r"^error: no group selected")
        # end of input ends the client like /quit
        assert a.proc.stdin is not None
        a.proc.stdin.close()
        assert await a.wait_exit() == 0, a.report()
        assert a.lines[-1] == "* logged out", a.report()
        assert b"Traceback" not in a.stderr, a.report()
    finally:
        await _kill_all(a)
        await close(bob)


def test_chat_leave_and_end_of_input(prosody: ProsodyServer, tmp_path: Path,
                                     new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _leave(prosody, new_account("alice"), new_account("bob"), tmp_path), TEST_TIMEOUT))


# -- a member who was offline -------------------------------------------------------------


async def _offline_member(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                          tmp: Path) -> None:
    a = b = None
    try:
        b = await ChatProcess.start(server, bob_acc, tmp / "bob.db")
        await b.ready()  # bob's device publishes its KeyPackages, then goes offline
        await b.quit()
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db")
        await a.ready()
        m = await a.command(f"/create {bob_acc.jid}", r"^\* created group (\S+) ")
        room, tag = m.group(1), room_short(m.group(1))
        for body in ("first, while you were away", "second"):
            await a.command(body, rf"^{TIME} {tag} {alice_acc.jid}: {body}$")
        # bob comes online: the Welcome from offline storage, then the room archive
        b = await ChatProcess.start(server, bob_acc, tmp / "bob.db")
        await b.ready()
        # (selected either at start-up, as the one group, or when the Welcome is processed)
        await b.expect(rf"^{TIME} {tag} \* you joined group {re.escape(room)} ")
        await b.command("/open", rf"^\* current group: {re.escape(room)}$")
        got = await b.expect_all(rf"^{TIME} {tag} {alice_acc.jid}: (.*)$", 0, 2)
        assert [g.group(1) for g in got] == ["first, while you were away", "second"], b.report()
        since = a.mark()
        await b.send("back now")
        await a.expect(rf"^{TIME} {tag} {bob_acc.jid}: back now$", since)
        await b.quit()
        await a.quit()
    finally:
        await _kill_all(a, b)


def test_chat_offline_member_catches_up(prosody: ProsodyServer, tmp_path: Path,
                                        new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _offline_member(prosody, new_account("alice"), new_account("bob"), tmp_path),
        TEST_TIMEOUT))


# -- files ------------------------------------------------------------------------------------


async def _files(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                 tmp: Path) -> None:
    a = b = None
    try:
        b = await ChatProcess.start(server, bob_acc, tmp / "bob.db")
        await b.ready()
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db")
        await a.ready()
        m = await a.command(f"/create {bob_acc.jid}", r"^\* created group (\S+) ")
        tag = room_short(m.group(1))
        await b.expect(rf"^{TIME} {tag} \* you joined group ")
        data = os.urandom(5000)
        (tmp / "notes.txt").write_bytes(data)
        await a.command("/send-file", r"^error: usage: /send-file PATH")
        await a.command(f"/send-file {tmp / 'missing.txt'}", r"^error: cannot read ")
        await a.command(f"/send-file {tmp / 'notes.txt'} my notes",
                        r"^    \[sent file\] notes.txt, 4.9 KiB$")
        await b.expect(rf"^{TIME} {tag} {alice_acc.jid}: my notes$")
        await b.expect(r"^    \[file 1\] notes.txt, 4.9 KiB, text/plain \(/save 1\)$")
        await b.command("/save 2", r"^error: no file 2: 1..1 were received")
        out = tmp / "downloads"
        out.mkdir()
        await b.command(f"/save 1 {out}", r"^\* saved file 1 \(4.9 KiB\) as .*notes.txt$")
        await b.command(f"/save 1 {out}", r"^\* saved file 1 \(4.9 KiB\) as .*notes-1.txt$")
        assert (out / "notes.txt").read_bytes() == data == (out / "notes-1.txt").read_bytes()
        await a.quit()
        await b.quit()
    finally:
        await _kill_all(a, b)


def test_chat_shares_files(prosody: ProsodyServer, tmp_path: Path,
                           new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _files(prosody, new_account("alice"), new_account("bob"), tmp_path), TEST_TIMEOUT))


# -- a member's new device ---------------------------------------------------------------------


async def _new_device(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                      tmp: Path) -> None:
    b = None
    laptop = tablet = None
    try:
        b = await ChatProcess.start(server, bob_acc, tmp / "bob.db")
        await b.ready()
        laptop, _ = await mls_client(server, *alice_acc, config={"device": "laptop"})
        await befriend(laptop, bob_acc.jid)  # the chat approves (slixmpp's defaults)
        group = await laptop.plugin["mls"].create_group(members=[bob_acc.jid])
        tag = room_short(group.room)
        await b.expect(rf"^{TIME} {tag} \* you joined group ")
        laptop_fp = fingerprint(laptop.plugin["mls"].identity.signature_public_key)
        # alice's tablet (no state yet) joins her groups by external Commit
        tablet, _ = await mls_client(server, *alice_acc, config={"device": "tablet"})
        tablet_fp = fingerprint(tablet.plugin["mls"].identity.signature_public_key)
        await b.expect(rf"^{TIME} {tag} ! {re.escape(alice_acc.jid)} has a new device "
                       rf"{tablet_fp} \(their other device: {laptop_fp}\) \[trusted\]$")
        await b.quit()
    finally:
        await _kill_all(b)
        await close(*(c for c in (laptop, tablet) if c is not None))


def test_chat_warns_of_a_new_device(prosody: ProsodyServer, tmp_path: Path,
                                    new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _new_device(prosody, new_account("alice"), new_account("bob"), tmp_path),
        TEST_TIMEOUT))


async def _trust(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                 tmp: Path) -> None:
    a = None
    phone = rogue = None
    try:
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db")
        await a.ready()
        phone, rp = await mls_client(server, *bob_acc, config={"device": "phone"})
        phone_fp = fingerprint(phone.plugin["mls"].identity.signature_public_key)
        bob = re.escape(bob_acc.jid)
        since = await a.send(f"/create {bob_acc.jid}")
        await a.expect(r"^\* created group (\S+) \(epoch 1, 2 member", since)
        await rp.wait("mls_joined")
        # the first device of an account is recorded quietly, trusted blindly
        m = await a.command(f"/fingerprints {bob_acc.jid}",
                            rf"^  {bob}  ({FINGERPRINT})  trusted +phone$")
        assert m.group(1) == phone_fp
        await a.command("/members", rf"^  leaf 1 +{bob} +{phone_fp}  \[trusted\]$")
        # compare the safety number, then verify
        m = await a.command(f"/safety {bob_acc.jid} {phone_fp[:8]}",
                            r"^\* safety number with .*: ((?:\d{5} ){11}\d{5})$")
        alice_fp = (await a.command("/fingerprints", rf"^\* this device: ({FINGERPRINT})$")
                    ).group(1)
        assert m.group(1) == phone.plugin["mls"].safety_number(alice_acc.jid, alice_fp)
        await a.command(f"/verify {bob_acc.jid} {phone_fp[:8]}",
                        rf"^\* {bob} \[{phone_fp}\] is now verified$")
        await a.command("/verify nobody@example.org 12345678", r"^error: no device of ")
        await a.command(f"/verify {bob_acc.jid} 12", r"^error: usage: /verify JID")
        # a new device of bob's after a verification: a warning, and not trusted
        rogue, _ = await mls_client(server, *bob_acc, config={"device": "rogue"})
        rogue_fp = fingerprint(rogue.plugin["mls"].identity.signature_public_key)
        since = await a.send(f"/invite {bob_acc.jid}")
        await a.expect(rf" ! {bob} has a new device {rogue_fp} \(their other device: "
                       rf"{phone_fp}\) \[new\]$", since)
        await a.command(f"/distrust {bob_acc.jid} {rogue_fp[:8]}",
                        rf"^\* {bob} \[{rogue_fp}\] is now distrusted$")
        await a.command("/members", rf"^  leaf \d+ +{bob} +{rogue_fp}  \[distrusted\]$")
        since = await a.send(f"/remove-device {rogue_fp[:8]}")
        await a.expect(rf"^\* removed the device {rogue_fp} of {bob}$", since)
        await a.quit()
        # remembered across a restart
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db")
        await a.ready()
        await a.command(f"/fingerprints {bob_acc.jid}", rf"^  {bob}  {phone_fp}  verified")
        await a.quit()
    finally:
        await _kill_all(a)
        await close(*(c for c in (phone, rogue) if c is not None))


def test_chat_trust_commands(prosody: ProsodyServer, tmp_path: Path,
                             new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _trust(prosody, new_account("alice"), new_account("bob"), tmp_path), TEST_TIMEOUT))


# -- a group of many: progress ------------------------------------------------------------


async def _many(server: ProsodyServer, alice_acc: Account, others: list[Account],
                tmp: Path) -> None:
    # the invitees' devices publish KeyPackages and go away (Welcomes wait offline)
    clients = await asyncio.gather(*(mls_client(server, *acc) for acc in others))
    await close(*(c for c, _ in clients))
    a = None
    try:
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db")
        await a.ready()
        n = len(others)
        since = await a.send("/create " + " ".join(acc.jid for acc in others))
        await a.expect(r"^\* created group (\S+) \(epoch 1, " + str(n + 1) + " member", since)
        lines = [x for x in a.lines[since:] if x.startswith("... ")]
        # every stage of adding many, each from its start to its end, in order
        for stage in ("key packages", "commit", "affiliations", "welcomes"):
            assert f"... {stage} 0/{n}" in lines, a.report()
            assert f"... {stage} {n}/{n} done" in lines, a.report()
        ends = [lines.index(f"... {stage} {n}/{n} done")
                for stage in ("key packages", "commit", "affiliations", "welcomes")]
        assert ends == sorted(ends), a.report()
        # small operations stay quiet
        since = await a.send("/update")
        await a.expect(r" \* you updated your keys \(epoch 2\)$", since)
        assert not [x for x in a.lines[since:] if x.startswith("... ")], a.report()

        # one device removed by its fingerprint (as /members shows it)
        first = others[0].jid
        m = await a.command("/members",
                            rf"^  leaf \d+ +{re.escape(first)} +({FINGERPRINT})  \[trusted\]$")
        fp = m.group(1)
        await a.command("/remove-device 12", r"^error: usage: /remove-device")
        await a.command("/remove-device 0000000000", r"^error: no device in this group")
        own = await a.command("/members", rf"^  leaf 0 .* ({FINGERPRINT})  \(this device\)$")
        await a.command(f"/remove-device {own.group(1)[:8]}", r"^error: that is this device")
        since = await a.send(f"/remove-device {fp[:17]}")
        await a.expect(rf"^\* removed the device {fp} of {re.escape(first)}$", since)
        await a.expect(rf" \* you removed {re.escape(first)} \(epoch 3\)$", since)
        await a.command("/members", rf"^\* group .*: epoch 3, .*, {n} member device\(s\):$")
        await a.quit()
    finally:
        await _kill_all(a)


def test_chat_shows_progress_for_many(prosody: ProsodyServer, tmp_path: Path,
                                      new_account: Callable[[str], Account]) -> None:
    others = [new_account(f"m{i}") for i in range(10)]
    asyncio.run(asyncio.wait_for(_many(prosody, new_account("alice"), others, tmp_path),
                                 TEST_TIMEOUT))


# -- a lost connection ----------------------------------------------------------------------


class DroppingProxy:
    """A TCP proxy to the server whose connections the test can cut."""

    def __init__(self, server: ProsodyServer) -> None:
        self.server = server
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        self._listener = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.server.host,
                                                             self.server.c2s_port)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def drop(self) -> None:
        """Cut every connection at once (no stream end: like a network failure)."""
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    def close(self) -> None:
        self.drop()
        if self._listener is not None:
            self._listener.close()


async def _reconnect(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                     tmp: Path) -> None:
    proxy = DroppingProxy(server)
    await proxy.start()
    a = None
    bob, rb = await mls_client(server, *bob_acc)
    try:
        a = await ChatProcess.start(server, alice_acc, tmp / "alice.db", "--server",
                                    f"127.0.0.1:{proxy.port}")  # the last --server wins
        await a.ready()
        m = await a.command(f"/create {bob_acc.jid}", r"^\* created group (\S+) ")
        tag = room_short(m.group(1))
        (gb,) = await rb.wait("mls_joined")
        await asyncio.wait_for(gb.ready.wait(), WAIT)

        since = a.mark()
        proxy.drop()
        await a.expect(rf"^{TIME} ! disconnected from the server.*; reconnecting$", since)
        await a.command("while away", r"^error: not connected to the server \(reconnecting\); "
                        "message not sent$")
        await a.command("/members", r"^error: not connected to the server")
        await gb.send("sent while alice was away")
        await a.expect(rf"^{TIME} \* reconnected; 1 group\(s\)$", since)
        await a.expect(rf"^{TIME} {tag} {bob_acc.jid}: sent while alice was away$", since)
        await a.send("alice is back")
        await rb.wait("mls_message", 1)
        assert rb.bodies() == ["alice is back"]
        await a.quit()
    finally:
        await _kill_all(a)
        proxy.close()
        await close(bob)


def test_chat_reconnects(prosody: ProsodyServer, tmp_path: Path,
                         new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _reconnect(prosody, new_account("alice"), new_account("bob"), tmp_path), TEST_TIMEOUT))


# -- failures at start-up ---------------------------------------------------------------


async def _start_failures(server: ProsodyServer, account: Account, tmp: Path) -> None:
    wrong = await ChatProcess.start(server, account, tmp / "a.db", "--timeout", "20",
                                    password="wrong")
    try:
        assert await wrong.wait_exit() == 1, wrong.report()
        await wrong.expect(rf"^error: authentication as {account.jid} failed")
        assert b"Traceback" not in wrong.stderr, wrong.report()
    finally:
        await _kill_all(wrong)
    # the new store keyed by the wrong password is not kept for the next run
    assert not (tmp / "a.db").exists() and not (tmp / "a.db.salt").exists()

    # no server behind the address: the reason at once, not after --timeout
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.monotonic()
    nowhere = await ChatProcess.start(server, account, tmp / "n.db", "--timeout", "60",
                                      "--server", f"127.0.0.1:{port}")  # the last one wins
    try:
        assert await nowhere.wait_exit() == 1, nowhere.report()
        assert time.monotonic() - began < 20, nowhere.report()
        await nowhere.expect(r"^error: cannot reach the XMPP server of localhost: "
                             r".*(refused|failed)")
        assert b"Traceback" not in nowhere.stderr, nowhere.report()
    finally:
        await _kill_all(nowhere)

    first = await ChatProcess.start(server, account, tmp / "a.db")
    second = None
    try:
        await first.ready()
        # encrypted by default (retention, RFC 9750 §8.4): no secret in the file in the clear
        await first.expect(r"^\* store .*a\.db \(encrypted\); 0 group\(s\)$")
        assert (tmp / "a.db.salt").exists()
        second = await ChatProcess.start(server, account, tmp / "a.db")
        assert await second.wait_exit() == 1, second.report()
        await second.expect(r"^error: the store .*a\.db is in use by another mls-xmpp process$")
        await first.quit()
    finally:
        await _kill_all(first, second)


def test_chat_start_failures(prosody: ProsodyServer, tmp_path: Path,
                             new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _start_failures(prosody, new_account("alice"), tmp_path), TEST_TIMEOUT))


def _chat_cli(*args: str, password: str | None = None) -> tuple[int, str, str]:
    import subprocess

    env = dict(os.environ)
    env.pop("MLS_XMPP_PASSWORD", None)
    if password is not None:
        env["MLS_XMPP_PASSWORD"] = password
    proc = subprocess.run([sys.executable, "-m", "mls_xmpp.cli", "chat", *args], cwd=ROOT,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("args, password, message", [
    (["alice@localhost"], None, "no password: give --password or set $MLS_XMPP_PASSWORD"),
    (["localhost"], "pw", "is not an account JID user@domain"),
    (["alice@localhost", "--server", "h:99999"], "pw", "--server port 99999 is out of range"),
    (["alice@localhost", "--plaintext", "--no-tls-verify"], "pw", "exclude each other"),
    (["alice@localhost", "--timeout", "0"], "pw", "--timeout must be positive"),
])
def test_chat_bad_options_exit_2(args: list[str], password: str | None, message: str) -> None:
    status, _, stderr = _chat_cli(*args, password=password)
    assert status == 2, stderr
    assert message in stderr, stderr
    assert "Traceback" not in stderr


def test_chat_help_and_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status, stdout, _ = _chat_cli("--help")
    assert status == 0 and "usage: mls-xmpp chat" in stdout and "--device NAME" in stdout
    status, stdout, _ = _chat_cli()
    assert status == 2
    assert parse_server("xmpp.example.org") == ("xmpp.example.org", 5222)
    assert parse_server("127.0.0.1:5333") == ("127.0.0.1", 5333)
    assert parse_server("[::1]:5223") == ("::1", 5223)
    for bad in ("host:99999", "a b", "host:port"):
        with pytest.raises(ChatError):
            parse_server(bad)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store("a@b.org") == tmp_path / "mls-xmpp" / "a@b.org.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store("a@b.org") == tmp_path / ".local/share/mls-xmpp/a@b.org.db"
    assert clean("a\x1b[31mb\u202ec\x07\td\ne") == "a\\x1b[31mb\\u202ec\\x07    d\ne"
    assert room_short("0123456789abcdef@conference.example.org") == "01234567"


@pytest.mark.parametrize(("name", "safe"), [
    ("notes.txt", "notes.txt"), ("../../etc/passwd", "passwd"), ("..", "file"),
    ("a\\b\\c.exe", "c.exe"), ("", "file"), (".bashrc", "bashrc"),
    ("x\x1b[31m.txt", "x__31m.txt"), ("/abs/path/ok.pdf", "ok.pdf"),
])
def test_safe_file_name(name: str, safe: str) -> None:
    assert safe_file_name(name) == safe


def test_open_by_index_or_room_prefix() -> None:
    """``/open`` takes an index, else a room (its first characters may be all digits)."""
    from types import SimpleNamespace

    from mls_xmpp.chat import Chat, ChatOptions

    rooms = ["86182488aa@conference.example.org", "8618ff00bb@conference.example.org",
             "2abc@conference.example.org"]
    sessions = [SimpleNamespace(room=r, group=SimpleNamespace(active=True)) for r in rooms]
    sessions.append(SimpleNamespace(room="dead@conference.example.org",
                                    group=SimpleNamespace(active=False)))
    chat = Chat(ChatOptions(jid="a@example.org", password="pw", store=Path("unused.db")))
    chat.xmpp = SimpleNamespace(plugin={"mls": SimpleNamespace(groups=sessions)})
    assert chat._find_group("1").room == rooms[0]
    assert chat._find_group("3").room == rooms[2]
    assert chat._find_group("86182488").room == rooms[0]
    assert chat._find_group("2ABC").room == rooms[2]
    assert chat._find_group(rooms[1]).room == rooms[1]
    assert chat._find_group("8618f").room == rooms[1]
    for arg, message in (("8618", "matches 2 groups"), ("4", "no group 4: /groups lists 1..3"),
                         ("5", "no group 5"), ("2ab", "no group matches '2ab'"),
                         ("dead", "no group matches 'dead'"), ("zz", "no group matches")):
        with pytest.raises(ChatError, match=message):
            chat._find_group(arg)
