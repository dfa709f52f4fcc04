"""A device restarts from its SQLite store and catches up from the room archive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from mls_xmpp.testing import Account, ProsodyServer

from .mls_clients import TIMEOUT, befriend, close, mls_client, until


async def _restart(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                   db: Path) -> None:
    alice, ra = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc, config={"store": str(db)})
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        (gb,) = await rb.wait("mls_joined")
        await asyncio.wait_for(gb.ready.wait(), TIMEOUT)
        await group.send("one")
        await rb.wait("mls_message", 1)
        bob_key = bob.plugin["mls"].identity.signature_public_key
        await close(bob)  # bob goes away; his state is on disk

        await group.send("two")
        await group.update()
        await group.send("three")

        bob2, rb2 = await mls_client(server, *bob_acc, config={"store": str(db)})
        try:
            assert bob2.plugin["mls"].identity.signature_public_key == bob_key
            await rb2.wait("mls_message", 2)
            assert rb2.bodies() == ["two", "three"]  # nothing twice, nothing skipped
            (gb2,) = bob2.plugin["mls"].groups
            assert gb2.group.epoch_authenticator == group.group.epoch_authenticator
            await gb2.send("bob is back")
            await ra.wait("mls_message", 1)
            assert ra.bodies() == ["bob is back"]
        finally:
            await close(bob2)
    finally:
        await close(alice)


def test_restart_from_sqlite_catches_up(prosody: ProsodyServer, tmp_path: Path,
                                        new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _restart(prosody, new_account("alice"), new_account("bob"), tmp_path / "bob.db"), 120))


async def _removed_while_away(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                              db: Path) -> None:
    from mls_xmpp.errors import GroupSuspendedError
    from mls_xmpp.storage import SQLiteStore

    alice, _ = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc, config={"store": str(db)})
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        (gb,) = await rb.wait("mls_joined")
        await asyncio.wait_for(gb.ready.wait(), TIMEOUT)
        await close(bob)
        await group.update()  # while bob is away: he misses this Commit ...
        await group.remove(bob_acc.jid)  # ... so the removal notice comes an epoch late
        bob2, rb2 = await mls_client(server, *bob_acc, config={"store": str(db)})
        try:  # bob starts at once (mls_client waited for mls_ready) ...
            # ... the room refuses him, and the Commit that removed him (sent to him
            # directly) is not of his epoch: only a Commit he can read ends his group,
            # so it is suspended (reported, retried), not deleted, until the
            # application forgets it
            await until(lambda: any("removal notice refused" in e.reason
                                    for e in rb2.events["mls_error"]))
            (suspended,) = bob2.plugin["mls"].groups
            assert suspended.suspended is not None
            assert any(isinstance(e.error, GroupSuspendedError)
                       for e in rb2.events["mls_error"])
            assert rb2.events["mls_removed"] == []
            assert len(bob2.plugin["mls"].state_store.load_groups()) == 1
            await bob2.plugin["mls"].forget(suspended.room)
            assert bob2.plugin["mls"].groups == []
        finally:
            await close(bob2)
        with SQLiteStore(db) as store:  # and nothing of the group is left on disk
            assert store.load_groups() == []
        bob3, _ = await mls_client(server, *bob_acc, config={"store": str(db)})
        await close(bob3)  # a later start is just as quick
    finally:
        await close(alice)


def test_member_removed_while_away_starts_cleanly(prosody: ProsodyServer, tmp_path: Path,
                                                   new_account: Callable[[str], Account]
                                                   ) -> None:
    asyncio.run(asyncio.wait_for(
        _removed_while_away(prosody, new_account("alice"), new_account("bob"),
                            tmp_path / "bob.db"), 60))
