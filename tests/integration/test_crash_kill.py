"""Crash safety: a member's process is killed with SIGKILL at random moments while
the group commits and talks; after each restart from its SQLite store it catches up.

In the end the killed member agrees on epoch_authenticator with the others and has
read every application message exactly once (events are delivered before the state
is saved, so a message can be replayed after a crash but never lost; the room's
stanza-id identifies the replay).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mls_xmpp.testing import Account, ProsodyServer

from .mls_clients import befriend, close, mls_client, until

CHILD = Path(__file__).with_name("crash_child.py")
KILLS = int(os.environ.get("MLS_XMPP_CRASH_KILLS", "50"))


class Child:
    """The member that gets killed."""

    def __init__(self, server: ProsodyServer, account: Account, tmp: Path,
                 *more: str) -> None:
        self.args = [sys.executable, str(CHILD), server.host, str(server.c2s_port),
                     account.jid, account.password, str(tmp / "child.db"),
                     str(tmp / "child.log"), *more]
        self.log = tmp / "child.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    async def wait_for(self, predicate: Callable[[list[str]], bool],
                       timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.lines()):
                return
            assert self.proc is not None and self.proc.poll() is None, "child died"
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out; child log ends with {self.lines()[-5:]}")

    def messages(self) -> list[str]:
        """Bodies read, each stanza-id once, in order."""
        seen: set[str] = set()
        out = []
        for line in self.lines():
            if line.startswith("msg "):
                _, sid, body = line.split(" ", 2)
                if sid not in seen:
                    seen.add(sid)
                    out.append(body)
        return out


async def _crash(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                 tmp: Path) -> None:
    rng = random.Random(int(os.environ.get("MLS_XMPP_CRASH_SEED", "9420")))
    child = Child(server, bob_acc, tmp)
    alice, _ = await mls_client(server, *alice_acc)
    try:
        child.start()
        await child.wait_for(lambda ls: "ready" in ls)
        await befriend(alice, bob_acc.jid)  # the child approves (slixmpp's defaults)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        await child.wait_for(lambda ls: any(x.startswith("epoch 1 ") for x in ls))
        sent: list[str] = []
        for kill in range(KILLS):
            for _ in range(rng.randint(1, 3)):
                body = f"m{len(sent)}"
                await group.send(body)
                sent.append(body)
            if rng.random() < 0.35:
                await group.update()
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            child.kill()
            child.start()
            if kill % 10 == 9:  # now and then let it settle, then kill it mid-stream again
                await child.wait_for(lambda ls: ls[-1:] == ["ready"] or False, 60)
            else:
                await asyncio.sleep(rng.uniform(0.05, 0.8))
        # the last life: it must catch up completely
        child.kill()
        child.start()
        want = group.group.epoch_authenticator.hex()
        await child.wait_for(lambda ls: len({x.split(" ", 2)[1] for x in ls
                                             if x.startswith("msg ")}) >= len(sent), 90)
        assert child.messages() == sent, (child.messages()[-5:], sent[-5:])
        await child.wait_for(lambda ls: "ready" in ls)
        epochs = [x for x in child.lines() if x.startswith("epoch ")]
        assert epochs[-1] == f"epoch {group.epoch} {want}", (epochs[-1], group.epoch)
    finally:
        if child.proc is not None and child.proc.poll() is None:
            child.kill()
        await close(alice)


def test_sigkill_at_random_moments(prosody: ProsodyServer, tmp_path: Path,
                                   new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _crash(prosody, new_account("alice"), new_account("bob"), tmp_path), 900))


async def _sender_crash(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                        tmp: Path, mode: str = "send") -> None:
    """The killed device sends without pause (reserved generations, its outbox entry
    written after the stanza left, the writes in a thread): after each restart it
    resumes ahead of every generation it used, so the others never refuse a
    message as a reused key, and each message whose send() returned arrives once
    (``mode="send-lazy"``: with ``send(durable=False)``, each message sent before a
    ``wait_stored()`` that returned; none arrives twice either way)."""
    rng = random.Random(int(os.environ.get("MLS_XMPP_CRASH_SEED", "9420")))
    child = Child(server, bob_acc, tmp, mode)
    alice, ra = await mls_client(server, *alice_acc)
    try:
        child.start()
        await child.wait_for(lambda ls: "ready" in ls)
        await befriend(alice, bob_acc.jid)
        await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        await child.wait_for(lambda ls: any(x.startswith("sent ") for x in ls))
        for _ in range(max(3, KILLS // 4)):
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            child.kill()
            mark = len(child.lines())
            child.start()  # killed again once this life has sent something
            await child.wait_for(
                lambda ls, m=mark: any(x.startswith("sent ") for x in ls[m:]), 60)
        child.kill()
        mark = len(child.lines())
        child.start()  # the last life: what it had queued goes out
        await child.wait_for(lambda ls, m=mark: "ready" in ls[m:], 60)
        sent = [x.split(" ", 1)[1] for x in child.lines() if x.startswith("sent ")]
        await until(lambda: set(sent) <= set(ra.bodies()), 90)
        child.kill()
        await asyncio.sleep(1.0)
        bodies = ra.bodies()
        assert len(bodies) == len(set(bodies)), "a message arrived twice"
        sending = {x.split(" ", 1)[1] for x in child.lines() if x.startswith("sending ")}
        assert set(bodies) <= sending
        assert ra.events["mls_error"] == [], [e.reason for e in ra.events["mls_error"]]
        assert len(sent) > KILLS // 4
    finally:
        if child.proc is not None and child.proc.poll() is None:
            child.kill()
        await close(alice)


def test_sigkill_of_a_sender_at_random_moments(prosody: ProsodyServer, tmp_path: Path,
                                               new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _sender_crash(prosody, new_account("alice"), new_account("bob"), tmp_path), 900))


def test_sigkill_of_a_lazy_sender_at_random_moments(prosody: ProsodyServer, tmp_path: Path,
                                                    new_account: Callable[[str], Account]
                                                    ) -> None:
    asyncio.run(asyncio.wait_for(
        _sender_crash(prosody, new_account("alice"), new_account("bob"), tmp_path,
                      "send-lazy"), 900))
