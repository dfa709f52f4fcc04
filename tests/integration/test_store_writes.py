"""SQLite writes per message over a real Prosody (issue 17, per-message cost):
reserved generations, the sender's outbox entry written after its stanza left,
the receiver's writes once per burst, off the event loop.

The commits are counted with SQLite's statement trace of each device's store,
with the thread that made each one; the moment a stanza leaves is marked by
wrapping the plugin's ``send_prepared``. A failed write in the writer's thread
is a wrapper around SQLiteStore that raises StorageError, as a full disk does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mls_xmpp.errors import SentNotStoredError
from mls_xmpp.storage import OutboxRecord, SQLiteStore, StorageError
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.errors import GroupSuspendedError
from mls_xmpp.xmpp.writer import StoreWriter

from .mls_clients import TIMEOUT, befriend, close, mls_client, synced, until

WRITER = "mls-store-writer"


class Trace:
    """The COMMITs of one device's SQLiteStore, and marks, in order, with threads."""

    def __init__(self, client: Any) -> None:
        mls = client.plugin["mls"]
        store = mls.state_store
        assert isinstance(store, SQLiteStore)
        self.events: list[tuple[str, str]] = []
        store._conn().set_trace_callback(self._statement)
        delivery = mls.delivery
        send_prepared = delivery.send_prepared

        def marked(room: str, env: Any) -> None:
            self.mark("transmit")
            send_prepared(room, env)
        delivery.send_prepared = marked

    def _statement(self, sql: str) -> None:
        if sql.strip().upper() == "COMMIT":
            self.mark("commit")

    def mark(self, what: str) -> None:
        self.events.append((what, threading.current_thread().name))

    def clear(self) -> None:
        self.events.clear()

    def commits(self, thread: str | None = None) -> int:
        return sum(1 for what, t in self.events
                   if what == "commit" and (thread is None or t == thread))


def _writer(client: Any) -> StoreWriter:
    writer = client.plugin["mls"].writer
    assert isinstance(writer, StoreWriter) and writer.threaded
    return writer


async def _group_of_two(alice: Any, bob: Any, rb: Any) -> tuple[Any, Any]:
    """Alice's group with bob, both caught up, and its first message sent (it makes
    the first reservation of generations, written before its stanza leaves)."""
    await befriend(alice, bob)
    group = await alice.plugin["mls"].create_group(members=[bob.boundjid.bare])
    (gb,) = await rb.wait("mls_joined")
    await synced(group, gb)
    await group.send("the first: it reserves generations, written before it leaves")
    return group, gb


async def _counts(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    alice, ra = await mls_client(server, *accounts[0], config={"store": str(tmp / "a.db")})
    bob, rb = await mls_client(server, *accounts[1], config={"store": str(tmp / "b.db")})
    try:
        group, gb = await _group_of_two(alice, bob, rb)
        await rb.wait("mls_message", 1)
        await until(lambda: group.outbox == [] and _writer(alice).idle
                    and _writer(bob).idle)
        ta, tb = Trace(alice), Trace(bob)

        # the sender, within the reservation: nothing is committed before the stanza
        # leaves; its outbox entry ("sent") is committed in the writer's thread
        # before send() returns
        commits = 0
        for i in range(5):
            ta.clear()
            ta.mark("send")
            await group.send(f"reserved {i}")
            ta.mark("returned")
            whats = [what for what, _ in ta.events]
            assert whats.index("transmit") < whats.index("commit") < whats.index("returned")
            assert ta.commits("MainThread") == 0
            commits += ta.commits()
        await rb.wait("mls_message", 6)
        # the echoes' writes join the next message's (or one after a delay): with the
        # five sent marks, at most six commits for five messages
        ta.clear()
        await until(lambda: group.outbox == [] and not group.unsaved and _writer(alice).idle)
        commits += ta.commits()
        assert commits <= 6 and ta.commits("MainThread") == 0

        # the receiver: a burst of 10 messages is written once, off the event loop
        await until(lambda: group.outbox == [] and _writer(bob).idle)
        await gb.group_lock.acquire()  # the worker stops at the first message
        try:
            for i in range(10):
                await group.send(f"burst {i}")
            await until(lambda: gb._queue.qsize() == 9)  # the rest is queued behind it
            tb.clear()
        finally:
            gb.group_lock.release()
        await rb.wait("mls_message", 16)
        await until(lambda: _writer(bob).idle and not gb.unsaved)
        assert tb.commits() == 1 and tb.commits(WRITER) == 1
        await until(lambda: group.outbox == [] and _writer(alice).idle)
        assert ta.commits("MainThread") == 0  # the echoes too, off the loop

        # ten send() calls at once (a burst a bot posts): each returns once its entry
        # committed, but the entries submitted meanwhile are committed together (one
        # commit each before), and bob reads them in the order of the calls
        ta.clear()
        await asyncio.gather(*(group.send(f"at once {i}") for i in range(10)))
        assert [what for what, _ in ta.events].count("transmit") == 10
        assert 1 <= ta.commits() <= 4 and ta.commits("MainThread") == 0
        await rb.wait("mls_message", 26)
        await until(lambda: group.outbox == [] and _writer(alice).idle and _writer(bob).idle
                    and not gb.unsaved)
        assert rb.bodies() == ["the first: it reserves generations, written before it leaves",
                               *(f"reserved {i}" for i in range(5)),
                               *(f"burst {i}" for i in range(10)),
                               *(f"at once {i}" for i in range(10))]
        assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
        position = gb.stored_position
        await close(bob)
        stored = SQLiteStore(tmp / "b.db")  # what a restart reads: nothing to replay
        try:
            assert [r.last_stanza_id for r in stored.load_groups()] == [position]
        finally:
            stored.close()
    finally:
        await close(alice, bob)


def test_commits_per_message(prosody: ProsodyServer, tmp_path: Path,
                             new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_counts(prosody, accounts, tmp_path), 150))


class FailingRatchets:
    """An SQLiteStore whose next ``fail`` calls of ``save_ratchets`` raise StorageError
    (a full disk); the threads they ran in are recorded."""

    def __init__(self, path: Path) -> None:
        self.inner = SQLiteStore(path)
        self.fail = 0
        self.failed_in: list[str] = []

    def save_ratchets(self, group_id: bytes, ratchets: bytes, last: str | None) -> None:
        if self.fail:
            self.fail -= 1
            self.failed_in.append(threading.current_thread().name)
            raise StorageError("database or disk is full")
        self.inner.save_ratchets(group_id, ratchets, last)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _failed_later(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    db = tmp / "bob.db"
    store = FailingRatchets(db)
    alice, ra = await mls_client(server, *accounts[0])
    bob, rb = await mls_client(server, *accounts[1],
                               config={"store": store, "room_retry": 1.0})
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        store.fail = 1  # the write after the next message fails, in the writer's thread
        await group.send("one")
        errors = await rb.wait("mls_error", 1)
        assert any(isinstance(e.error, GroupSuspendedError) for e in errors)
        assert store.failed_in == [WRITER]
        # rolled back to what is stored, and suspended; then the store takes writes
        # again, the group resumes and reads the message again from the archive (a
        # replay with the same stanza-id: the rule "events first, then the state")
        await until(lambda: gb.suspended is None, TIMEOUT)
        await rb.wait("mls_message", 2)
        replays = [e.stanza_id for e in rb.events["mls_message"]]
        assert rb.bodies() == ["one", "one"] and replays[0] == replays[1]
        await group.send("two")
        await rb.wait("mls_message", 3)
        await synced(group, gb)
        await close(bob)
        store.inner.close()

        # a restart reads what the last writes stored: nothing is read twice
        bob2, rb2 = await mls_client(server, *accounts[1], config={"store": str(db)})
        try:
            gb2 = bob2.plugin["mls"].group(group.room)
            await synced(group, gb2)
            await group.send("three")
            await rb2.wait("mls_message", 1)
            await asyncio.sleep(0.5)
            assert rb2.bodies() == ["three"]
        finally:
            await close(bob2)
    finally:
        await close(alice, bob)


def test_a_failed_write_off_the_loop_rolls_back_and_catches_up(
        prosody: ProsodyServer, tmp_path: Path,
        new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_failed_later(prosody, accounts, tmp_path), 150))


class FailingOutbox:
    """An SQLiteStore whose next ``fail`` ``sent`` outbox writes in the writer's thread
    (those made after the stanza left) raise StorageError, as a full disk does."""

    def __init__(self, path: Path) -> None:
        self.inner = SQLiteStore(path)
        self.fail = 0

    def save_outbox(self, record: OutboxRecord) -> None:
        if (self.fail and record.sent_digest is not None
                and threading.current_thread().name == WRITER):
            self.fail -= 1
            raise StorageError("database or disk is full")
        self.inner.save_outbox(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _sent_not_stored(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    store = FailingOutbox(tmp / "alice.db")
    alice, ra = await mls_client(server, *accounts[0],
                                 config={"store": store, "room_retry": 1.0})
    bob, rb = await mls_client(server, *accounts[1])
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        # the first message reserves generations: its entry goes with those ratchets,
        # before the stanza leaves; the next ones are written after it left
        await group.send("zero")
        delivery = alice.plugin["mls"].delivery
        send_prepared, transmitted = delivery.send_prepared, []

        def marked(room: str, env: Any) -> None:
            transmitted.append(env)
            send_prepared(room, env)
        delivery.send_prepared = marked
        store.fail = 1  # the write after the stanza left fails
        with pytest.raises(SentNotStoredError) as info:
            await group.send("one")
        error = info.value
        assert isinstance(error, StorageError) and error.transmitted
        (mid,) = error.message_ids
        assert "do not send it again" in str(error)
        assert len(transmitted) == 1  # it did leave
        # what the error says holds: bob reads it (once), and alice's device, once
        # its store takes writes again, resumes and sees its reflection
        await rb.wait("mls_message", 2)
        assert rb.bodies() == ["zero", "one"]
        await until(lambda: group.suspended is None, TIMEOUT)
        await until(lambda: group.message_state(mid) == "reflected", TIMEOUT)
        await group.send("two")
        await rb.wait("mls_message", 3)
        await synced(group, gb)
        assert rb.bodies() == ["zero", "one", "two"]  # nothing twice
        await until(lambda: group.outbox == [], TIMEOUT)  # "two" reflected too
    finally:
        await close(alice, bob)


def test_send_says_a_message_was_transmitted_when_its_write_failed_after(
        prosody: ProsodyServer, tmp_path: Path,
        new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_sent_not_stored(prosody, accounts, tmp_path), 150))


async def _renewal(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    """The reservation is renewed when half of it is used, in the writer's thread,
    while the stanzas go on under the stored one; a message past the stored
    reservation waits for the renewal's commit before its stanza leaves."""
    from mls_xmpp.xmpp.session import RESERVED_GENERATIONS as N

    alice, ra = await mls_client(server, *accounts[0], config={"store": str(tmp / "a.db")})
    bob, rb = await mls_client(server, *accounts[1], config={"store": str(tmp / "b.db")})
    try:
        group, _ = await _group_of_two(alice, bob, rb)
        await until(lambda: group.outbox == [] and _writer(alice).idle)
        ta = Trace(alice)
        # 2N messages one by one: each reservation after the first is renewed off the
        # loop while the stored one still holds (none waits, nothing on the loop)
        for i in range(2 * N):
            await group.send(f"one by one {i}")
        assert ta.commits("MainThread") == 0, ta.events
        await rb.wait("mls_message", 2 * N + 1)

        # the writer held (a job that waits): the stanzas under the stored reservation
        # leave, the first one past it waits for the renewal's commit
        await until(lambda: group.outbox == [] and _writer(alice).idle)
        first = group.group.sending_generation()
        stored_end = group.group.reserved_generations()
        assert stored_end is not None and first < stored_end
        release = threading.Event()
        held = _writer(alice).submit(group.group_id, lambda store: release.wait(60))
        ta.clear()
        for i in range(stored_end - first):
            await group.send(f"held {i}", durable=False)
        transmits = [what for what, _ in ta.events].count("transmit")
        assert transmits == stored_end - first
        past = asyncio.ensure_future(group.send("past the stored reservation",
                                                durable=False))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not past.done()
        assert [what for what, _ in ta.events].count("transmit") == transmits
        release.set()
        await held
        await past
        assert [what for what, _ in ta.events].count("transmit") == transmits + 1
        assert ta.commits("MainThread") == 0
        await group.wait_stored()
        await rb.wait("mls_message", 2 * N + transmits + 2)
        assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
    finally:
        await close(alice, bob)


def test_reservation_renewed_off_the_loop(prosody: ProsodyServer, tmp_path: Path,
                                         new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_renewal(prosody, accounts, tmp_path), 150))
