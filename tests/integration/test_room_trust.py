"""The room is not the group (issue 12, attacks 7 and 8), over a real Prosody.

* A member with room rights takes another member's room affiliation, while the
  victim is online and while it is away: the victim's device keeps its MLS
  state, reports the suspension, retries the room, and is back in the group
  once an honest member restores the affiliation from MLS membership.
* A member posts a GroupInfo of another group into the room archive: a device
  recovering from state loss rejoins only the group its registry names.
* A device without a device name does not recover automatically, and says why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mls_xmpp.errors import GroupSuspendedError, LocalUsageError, TransportError
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Envelope, Kind

from .mls_clients import Recorder, befriend, close, mls_client, synced, until

FAST_RETRY = {"room_retry": 1.0, "room_retry_max": 2.0}


def _suspensions(recorder: Recorder) -> list[Any]:
    return [e for e in recorder.events["mls_error"] if isinstance(e.error, GroupSuspendedError)]


async def _affiliation(client: Any, room: str, jid: str) -> str:
    current = await client.plugin["mls"].delivery.affiliations(room)
    return str(current.get(jid, "none"))


def _hostile(session: Any) -> None:
    """The attacker's device never puts an affiliation back."""
    async def nothing(*_: Any, **__: Any) -> None:
        return None

    session.repair_affiliation = nothing
    session.reconcile_room = nothing


async def _lost_affiliation(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    mallory_acc, alice_acc, bob_acc, carol_acc = accounts
    bob_cfg = {"store": str(tmp / "bob.db"), "device": "phone", **FAST_RETRY}
    mallory, rm = await mls_client(server, *mallory_acc)
    alice, ra = await mls_client(server, *alice_acc)
    carol, rc = await mls_client(server, *carol_acc)
    bob, rb = await mls_client(server, *bob_acc, config=bob_cfg)
    live = [mallory, alice, carol, bob]
    try:
        await befriend(*live)
        # mallory creates the group: she owns the room, the others are admins
        gm = await mallory.plugin["mls"].create_group(
            members=[alice_acc.jid, bob_acc.jid, carol_acc.jid])
        (ga,), (gb,), (gc,) = [await r.wait("mls_joined") for r in (ra, rb, rc)]
        await synced(gm, ga, gb, gc)
        room = gm.room
        current = await alice.plugin["mls"].delivery.affiliations(room)
        assert current == {mallory_acc.jid: "owner", alice_acc.jid: "admin",
                           bob_acc.jid: "admin", carol_acc.jid: "admin"}
        # least rights: a member (here alice) cannot take another member's affiliation
        with pytest.raises(TransportError):
            await alice.plugin["mls"].delivery.set_affiliation(room, bob_acc.jid, "none")
        assert await _affiliation(alice, room, bob_acc.jid) == "admin"
        _hostile(gm)

        # -- the owner takes bob's affiliation while bob is online ---------------------
        await mallory.plugin["mls"].delivery.set_affiliation(room, bob_acc.jid, "none")
        await until(lambda: bool(_suspensions(rb)))
        assert rb.events["mls_removed"] == []
        assert gb.suspended is not None
        with pytest.raises(GroupSuspendedError):
            await gb.send("while suspended")
        assert [r.group_id for r in bob.plugin["mls"].state_store.load_groups()] == [
            gb.group_id]
        # an honest member (alice or carol) lets bob back in; his retry takes the room
        await until(lambda: gb.suspended is None and gb.ready.is_set())
        assert await _affiliation(alice, room, bob_acc.jid) == "member"
        await ga.send("bob, are you back?")
        await rb.wait("mls_message", 1)
        await gb.send("I am")
        await rc.wait("mls_message", 2)
        await synced(gm, ga, gb, gc)

        # -- again while bob is away: he restarts into a room that refuses him ---------
        live.remove(bob)
        await close(bob)
        await mallory.plugin["mls"].delivery.set_affiliation(room, bob_acc.jid, "outcast")
        bob2, rb2 = await mls_client(server, *bob_acc, config=bob_cfg)
        live.append(bob2)
        gb2 = bob2.plugin["mls"].group(room)  # kept, suspended, reported
        await until(lambda: bool(_suspensions(rb2)))
        assert gb2.suspended is not None and rb2.events["mls_removed"] == []
        assert [r.group_id for r in bob2.plugin["mls"].state_store.load_groups()] == [
            gb.group_id]
        # alice's next Commit puts the room back in line with MLS membership
        await ga.update()
        await until(lambda: gb2.suspended is None and gb2.ready.is_set())
        await synced(gm, ga, gb2, gc)
        assert gb2.epoch == ga.epoch == gm.epoch
        await gb2.send("still here")
        for r in (ra, rc, rm):
            await until(lambda r=r: "still here" in r.bodies())
        assert rb2.events["mls_removed"] == []
    finally:
        await close(*live)


def test_lost_room_affiliation_suspends_and_is_restored(
        prosody: ProsodyServer, tmp_path: Path, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("mallory", "alice", "bob", "carol")]
    asyncio.run(asyncio.wait_for(_lost_affiliation(prosody, accounts, tmp_path), 150))


async def _hostile_archive(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    alice_acc, bob_acc, mallory_acc = accounts
    db = tmp / "bob.db"
    alice, ra = await mls_client(server, *alice_acc)
    mallory, rm = await mls_client(server, *mallory_acc)
    bob, rb = await mls_client(server, *bob_acc, config={"store": str(db), "device": "phone"})
    live = [alice, mallory, bob]
    try:
        await befriend(*live)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid, mallory_acc.jid])
        (gb,), (gm,) = [await r.wait("mls_joined") for r in (rb, rm)]
        await synced(group, gb, gm)
        live.remove(bob)
        await close(bob)
        db.unlink()  # bob's phone is wiped
        # mallory, a member, posts GroupInfos of a group of her own into the room: the
        # newest GroupInfos in its archive (one under the real group's envelope)
        own = await mallory.plugin["mls"].create_group()
        info = own.group.group_info(with_tree=True)
        for envelope_group in (own.group_id, group.group_id):
            await mallory.plugin["mls"].delivery.send_room(group.room, Envelope(
                kind=Kind.GROUP_INFO, group_id=envelope_group, epoch=own.epoch,
                mls_message=info))
        await asyncio.sleep(0.5)  # archived
        bob2, rb2 = await mls_client(server, *bob_acc,
                                     config={"store": str(db), "device": "phone"})
        live.append(bob2)
        (gb2,) = await rb2.wait("mls_joined", timeout=60)
        # the group its registry names, not mallory's
        assert gb2.group_id == group.group_id != own.group_id
        assert any("another group" in e.reason for e in rb2.events["mls_error"])
        await synced(group, gb2, gm)
        await group.send("hello again, bob")
        await rb2.wait("mls_message", 1)
        assert rb2.bodies() == ["hello again, bob"]
    finally:
        await close(*live)


def test_recovery_rejoins_only_the_registered_group(
        prosody: ProsodyServer, tmp_path: Path, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "mallory")]
    asyncio.run(asyncio.wait_for(_hostile_archive(prosody, accounts, tmp_path), 150))


async def _no_device(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    alice_acc, bob_acc = accounts
    db = tmp / "bob.db"
    alice, ra = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc, config={"store": str(db)})
    live = [alice, bob]
    try:
        await befriend(*live)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        epoch, members = group.epoch, group.members
        live.remove(bob)
        await close(bob)
        db.unlink()
        bob2, rb2 = await mls_client(server, *bob_acc, config={"store": str(db)})
        live.append(bob2)
        await until(lambda: any(isinstance(e.error, LocalUsageError)
                                and "device option" in e.reason
                                for e in rb2.events["mls_error"]))
        await asyncio.sleep(2.0)  # nothing rejoins meanwhile
        assert rb2.events["mls_joined"] == [] and bob2.plugin["mls"].groups == []
        assert (group.epoch, group.members) == (epoch, members)
        # asked explicitly, it refuses too
        with pytest.raises(LocalUsageError):
            await bob2.plugin["mls"].rejoin(group.room)
        assert bob2.plugin["mls"].groups == []
    finally:
        await close(*live)


def test_no_recovery_without_a_device_name(
        prosody: ProsodyServer, tmp_path: Path, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_no_device(prosody, accounts, tmp_path), 120))



async def _removed_while_busy(server: ProsodyServer, alice_acc: Account,
                              carol_acc: Account) -> None:
    alice, _ = await mls_client(server, *alice_acc)
    carol, rc = await mls_client(server, *carol_acc, config=FAST_RETRY)
    try:
        await befriend(alice, carol)
        group = await alice.plugin["mls"].create_group(members=[carol_acc.jid])
        (joined,) = await rc.wait("mls_joined")
        await synced(group, joined)
        ejected = asyncio.get_running_loop().create_future()

        def on_presence(presence: Any) -> None:
            codes = set(presence["muc"]["status_codes"])
            if presence["type"] == "unavailable" and 321 in codes and not ejected.done():
                ejected.set_result(None)

        carol.add_event_handler("groupchat_presence", on_presence)
        # carol's device is busy (its group's lock held, as by a slow write) while
        # alice removes her: the Commit waits in the queue when the room's word that
        # carol's account lost its place arrives
        async with joined.group_lock:
            await group.remove(carol_acc.jid)
            await asyncio.wait_for(ejected, 30)
            await asyncio.sleep(0.5)  # the presence handler has run
        # the Commit is read first and ends the group: removed, not suspended
        await rc.wait("mls_removed")
        assert joined.removed and _suspensions(rc) == []
        assert carol.plugin["mls"].groups == []
    finally:
        await close(alice, carol)


def test_removal_is_read_before_the_room_took_the_device_out(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_removed_while_busy(prosody, new_account("alice"),
                                                     new_account("carol")), 120))
