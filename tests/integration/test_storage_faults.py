"""Failed writes, unreadable rows and an endless archive over a real Prosody
(issue 13, faults 7 and 8).

A write fails for real: a StateStore wrapper around SQLiteStore raises
StorageError on chosen ``save_group`` calls. A row is made unreadable by editing
the SQLite file. The endless archive is a hostile server as the client sees
it: an interposer on the member's own connection takes its MAM queries to the
room and answers each page itself, with a fresh ``last`` id every time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from mls_xmpp.storage import GroupRecord, SQLiteStore, StorageError
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.errors import ArchiveBudgetError, GroupSuspendedError

from .mls_clients import TIMEOUT, befriend, close, mls_client, synced, until


class FailingStore:
    """An SQLiteStore whose next ``fail`` calls of ``save_group`` raise StorageError
    (a full disk), after which writes succeed again."""

    def __init__(self, path: Path) -> None:
        self.inner = SQLiteStore(path)
        self.fail = 0
        self.failed = 0

    def save_group(self, record: GroupRecord) -> None:
        if self.fail:
            self.fail -= 1
            self.failed += 1
            raise StorageError("database or disk is full")
        self.inner.save_group(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _failed_write(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    db = tmp / "bob.db"
    store = FailingStore(db)
    alice, ra = await mls_client(server, *accounts[0])
    bob, rb = await mls_client(server, *accounts[1],
                               config={"store": store, "room_retry": 1.0})
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        stored_epoch = gb.epoch
        store.fail = 1  # the write of the next Commit's state fails
        await group.update()
        await until(lambda: store.failed == 1)
        errors = await rb.wait("mls_error", 1)
        suspended = [e for e in errors if isinstance(e.error, GroupSuspendedError)]
        assert suspended and gb.suspended is not None
        # a message right after: a small write must not mix it with the old epoch
        await group.send("during the failure")
        # the store takes writes again: the group resumes from the stored epoch and
        # reads the Commit (and the message) again from the archive
        await until(lambda: gb.suspended is None, TIMEOUT)
        await synced(group, gb)
        assert gb.epoch == stored_epoch + 1
        await rb.wait("mls_message", 1)
        assert rb.bodies()[-1] == "during the failure"
        await group.send("after the failure")
        await rb.wait("mls_message", 2)
        await close(bob)
        store.inner.close()

        # what is stored loads: the device comes back in the group's epoch
        bob2, rb2 = await mls_client(server, *accounts[1], config={"store": str(db)})
        try:
            gb2 = bob2.plugin["mls"].group(group.room)
            await synced(group, gb2)
            assert gb2.group.epoch_authenticator == group.group.epoch_authenticator
            await group.send("after the restart")
            await rb2.wait("mls_message", 1)
            assert rb2.bodies() == ["after the restart"]
        finally:
            await close(bob2)
    finally:
        await close(alice, bob)


def test_failed_write_rolls_the_group_back_and_it_catches_up(
        prosody: ProsodyServer, tmp_path: Path,
        new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_failed_write(prosody, accounts, tmp_path), 150))


async def _unreadable_row(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    db = tmp / "bob.db"
    alice, ra = await mls_client(server, *accounts[0])
    bob, rb = await mls_client(server, *accounts[1], config={"store": str(db)})
    try:
        await befriend(alice, bob)
        g1 = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        g2 = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        await rb.wait("mls_joined", 2)
        await synced(g1, bob.plugin["mls"].group(g1.room))
        await synced(g2, bob.plugin["mls"].group(g2.room))
        await close(bob)
        with sqlite3.connect(db) as conn:  # the row of g1 is damaged on disk
            conn.execute("UPDATE groups SET state = X'00ff' WHERE group_id = ?",
                         (g1.group_id,))

        bob2, rb2 = await mls_client(server, *accounts[1], config={"store": str(db)})
        try:  # mls_client waited for mls_ready
            errors = await rb2.wait("mls_error", 1)
            assert any(g1.room in e.reason and "unreadable" in e.reason for e in errors)
            assert [s.room for s in bob2.plugin["mls"].groups] == [g2.room]
            gb2 = bob2.plugin["mls"].group(g2.room)
            await synced(g2, gb2)
            await g2.send("the other group works")
            await rb2.wait("mls_message", 1)
        finally:
            await close(bob2)
    finally:
        await close(alice, bob)


def test_unreadable_row_makes_only_its_group_unavailable(
        prosody: ProsodyServer, tmp_path: Path,
        new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_unreadable_row(prosody, accounts, tmp_path), 120))


# -- 7: an archive that pages for ever ------------------------------------------------------


class EndlessArchive:
    """Answers this client's MAM queries to ``room`` itself: one message per page
    and a fresh ``last`` id each time, never ``complete``."""

    def __init__(self, client: Any, room: str) -> None:
        self.client = client
        self.room = room
        self.pages = 0
        client.add_filter("out", self._out)

    def _out(self, stanza: Any) -> Any:
        if (stanza.name == "iq" and stanza["type"] == "set"
                and str(stanza["to"].bare) == self.room
                and stanza.xml.find("{urn:xmpp:mam:2}query") is not None):
            asyncio.get_running_loop().call_soon(self._answer, stanza["id"])
            return None  # the real server never sees it
        return stanza

    def _answer(self, query_id: str) -> None:
        self.pages += 1
        me = escape(str(self.client.boundjid))
        room = escape(self.room)
        item = f"page-{self.pages}"
        self.client.data_received(
            f"<message xmlns='jabber:client' to='{me}' from='{room}'>"
            f"<result xmlns='urn:xmpp:mam:2' queryid='{query_id}' id='{item}'>"
            "<forwarded xmlns='urn:xmpp:forward:0'>"
            f"<message xmlns='jabber:client' type='groupchat' from='{room}/someone'>"
            "<body>filler</body></message></forwarded></result></message>")
        self.client.data_received(
            f"<iq xmlns='jabber:client' type='result' id='{query_id}' to='{me}' "
            f"from='{room}'><fin xmlns='urn:xmpp:mam:2'>"
            "<set xmlns='http://jabber.org/protocol/rsm'>"
            f"<first>{item}</first><last>{item}</last></set></fin></iq>")


async def _endless(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    db = tmp / "bob.db"
    alice, ra = await mls_client(server, *accounts[0])
    bob, rb = await mls_client(server, *accounts[1], config={"store": str(db)})
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        await close(bob)

        import slixmpp

        bob2 = slixmpp.ClientXMPP(*accounts[1])
        bob2.enable_direct_tls = False
        bob2.enable_starttls = False
        bob2.enable_plaintext = True
        bob2.plugin["feature_mechanisms"].unencrypted_scram = True
        bob2.register_plugin("mls", {"store": str(db), "archive_max_pages": 30,
                                     "archive_timeout": 15.0})
        errors: list[Any] = []
        bob2.add_event_handler("mls_error", errors.append)
        endless = EndlessArchive(bob2, group.room)
        loop = asyncio.get_running_loop()
        start = loop.time()
        bob2.connect(server.host, server.c2s_port)
        try:
            await until(lambda: group.room in bob2.plugin["mls"].sessions, TIMEOUT)
            gb2 = bob2.plugin["mls"].group(group.room)
            await asyncio.wait_for(gb2.ready.wait(), 30)  # within the budget, reported
            assert loop.time() - start < 30
            assert 30 <= endless.pages <= 31
            assert any(isinstance(e.error, ArchiveBudgetError) for e in errors)
        finally:
            await close(bob2)
    finally:
        await close(alice, bob)


def test_archive_paging_for_ever_stops_within_its_budget(
        prosody: ProsodyServer, tmp_path: Path,
        new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_endless(prosody, accounts, tmp_path), 120))
