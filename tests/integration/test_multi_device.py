"""Several devices per user on Prosody and ejabberd (RFC 9750 §3.1.1, DESIGN "Multi-device").

Every device is its own leaf: two slixmpp clients of one account (different
resources, device names and stores) are two members of a group. Adding a user
adds all of that user's devices; a group's creator brings her other devices
along; a user's new device joins the account's groups by external Commit,
next to (never instead of) the devices already there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mls_xmpp.errors import UnknownDeviceError
from mls_xmpp.storage import MemoryStore
from mls_xmpp.testing import Account, XmppServer
from mls_xmpp.xmpp.session import GroupSession
from mls_xmpp.xmpp.trust import fingerprint

from .mls_clients import TIMEOUT, Recorder, befriend, close, mls_client, synced, until


def _device(name: str) -> dict[str, Any]:
    """Plugin configuration of one device: its own name and its own store."""
    return {"device": name, "store": MemoryStore()}


async def _message(recorder: Recorder, body: str) -> Any:
    """Wait for the message with ``body``; return its event."""
    await until(lambda: body in recorder.bodies())
    return next(e for e in recorder.events["mls_message"] if e.body == body)


def _joined(recorder: Recorder, room: str) -> GroupSession | None:
    return next((s for s in recorder.events["mls_joined"] if s.room == room), None)


async def _join(recorder: Recorder, room: str) -> GroupSession:
    """Wait until this device joined ``room``'s group."""
    await until(lambda: _joined(recorder, room) is not None)
    session = _joined(recorder, room)
    assert session is not None
    return session


def _devices(session: GroupSession, jid: str) -> list[str]:
    """Device fingerprints of ``jid`` in the group, as a member sees them."""
    return sorted(fp for member, fp, _ in session.members if member == jid)


def _no_errors(*recorders: Recorder) -> None:
    for r in recorders:
        assert r.events["mls_error"] == [], [e.reason for e in r.events["mls_error"]]


# -- 1: adding a user adds all of the user's devices ---------------------------------


async def _bob_adds_alice(server: XmppServer, alice_acc: Account, bob_acc: Account) -> None:
    laptop, rl = await mls_client(server, *alice_acc, config=_device("laptop"))
    phone, rp = await mls_client(server, *alice_acc, config=_device("phone"))
    bob, rb = await mls_client(server, *bob_acc, config=_device("desktop"))
    try:
        await befriend(laptop, phone, bob)
        assert laptop.boundjid.full != phone.boundjid.full  # two resources, one account
        group = await bob.plugin["mls"].create_group(members=[alice_acc.jid])
        # Welcomes went to alice's bare JID: each device saw both, took its own
        gl = await _join(rl, group.room)
        gp = await _join(rp, group.room)
        await synced(group, gl, gp)
        assert len(rl.events["mls_joined"]) == len(rp.events["mls_joined"]) == 1
        assert len(group.members) == 3
        assert len(_devices(group, alice_acc.jid)) == 2
        assert gl.group.own_leaf_index != gp.group.own_leaf_index

        await group.send("hello alice, both of you")
        for r in (rl, rp):
            event = await _message(r, "hello alice, both of you")
            assert event.sender == bob_acc.jid

        await gl.send("from alice's laptop")
        from_laptop = [await _message(r, "from alice's laptop") for r in (rb, rp)]
        assert {e.sender for e in from_laptop} == {alice_acc.jid}  # seen as alice
        await gp.send("from alice's phone")
        from_phone = [await _message(r, "from alice's phone") for r in (rb, rl)]
        assert {e.sender for e in from_phone} == {alice_acc.jid}
        assert from_laptop[0].device != from_phone[0].device  # two devices
        assert sorted([from_laptop[0].device, from_phone[0].device]) == \
            _devices(group, alice_acc.jid)
        assert "from alice's laptop" not in rl.bodies()  # one's own: not an event
        _no_errors(rl, rp, rb)
    finally:
        await close(laptop, phone, bob)


def test_adding_a_user_adds_every_device(server: XmppServer,
                                         new_account: Callable[[str], Account]) -> None:
    alice, bob = new_account("alice"), new_account("bob")
    asyncio.run(asyncio.wait_for(_bob_adds_alice(server, alice, bob), 120))


# -- 2: the creator's other devices are in her groups ----------------------------------


async def _creator_brings_devices(server: XmppServer, alice_acc: Account,
                                  bob_acc: Account) -> None:
    laptop, rl = await mls_client(server, *alice_acc, config=_device("laptop"))
    phone, rp = await mls_client(server, *alice_acc, config=_device("phone"))
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(laptop, phone, bob)
        group = await laptop.plugin["mls"].create_group(members=[bob_acc.jid])
        gp = await _join(rp, group.room)
        gb = await _join(rb, group.room)
        await synced(group, gp, gb)
        assert len(_devices(gb, alice_acc.jid)) == 2
        assert group.jids() == {alice_acc.jid, bob_acc.jid}

        await gb.send("hi alice")
        for r in (rl, rp):
            await _message(r, "hi alice")
        await group.send("phone, are you there?")
        await _message(rp, "phone, are you there?")
        await _message(rb, "phone, are you there?")
        await gp.send("yes")
        for r in (rl, rb):
            assert (await _message(r, "yes")).sender == alice_acc.jid

        # a group of one's own devices only
        solo = await laptop.plugin["mls"].create_group()
        gp_solo = await _join(rp, solo.room)
        await synced(solo, gp_solo)
        assert len(solo.members) == 2 and solo.jids() == {alice_acc.jid}
        await gp_solo.send("note to self")
        await _message(rl, "note to self")
        _no_errors(rl, rp, rb)
    finally:
        await close(laptop, phone, bob)


def test_creator_brings_her_other_devices(server: XmppServer,
                                          new_account: Callable[[str], Account]) -> None:
    alice, bob = new_account("alice"), new_account("bob")
    asyncio.run(asyncio.wait_for(_creator_brings_devices(server, alice, bob), 120))


# -- 3: a new device joins by external Commit, next to the others ----------------------


async def _new_device(server: XmppServer, alice_acc: Account, bob_acc: Account) -> None:
    laptop, rl = await mls_client(server, *alice_acc, config=_device("laptop"))
    phone, rp = await mls_client(server, *alice_acc, config=_device("phone"))
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(laptop, phone, bob)
        bobs = await bob.plugin["mls"].create_group(members=[alice_acc.jid])
        alices = await laptop.plugin["mls"].create_group(members=[bob_acc.jid])
        sessions = {}
        for room in (bobs.room, alices.room):
            sessions[room] = (await _join(rl, room) if room != alices.room else alices,
                              await _join(rp, room),
                              await _join(rb, room) if room != bobs.room else bobs)
            await synced(*sessions[room])
        before = {room: {m[1] for m in s[0].members} for room, s in sessions.items()}
        memberships = {r: len(r.events["mls_membership"]) for r in (rl, rp, rb)}

        # the tablet: a fresh store; it finds the account's groups and joins them
        tablet, rt = await mls_client(server, *alice_acc, config=_device("tablet"))
        try:
            for room, (gl, gp, gb) in sessions.items():
                gt = await _join(rt, room)
                await synced(gl, gp, gb, gt)
                assert gt.group.own_leaf_index not in {gl.group.own_leaf_index,
                                                       gp.group.own_leaf_index}
                # nobody was replaced: the old leaves are all there, plus the tablet's
                now = {m[1] for m in gb.members}
                assert before[room] < now and len(now) == len(before[room]) + 1
                assert len(_devices(gb, alice_acc.jid)) == 3
                assert gb.jids() == {alice_acc.jid, bob_acc.jid}

            # every other device saw alice added, once per group
            for r in (rl, rp, rb):
                await r.wait("mls_membership", memberships[r] + 2)
                news = r.events["mls_membership"][memberships[r]:]
                assert sorted(e.group.room for e in news) == sorted(sessions)
                tablet_device = fingerprint(tablet.plugin["mls"].identity.signature_public_key)
                for e in news:
                    assert e.added == (alice_acc.jid,) and e.removed == ()
                    # which device: alice's new one (an application can warn about it)
                    assert e.added_devices == ((alice_acc.jid, tablet_device),)
                    # an external Commit has no member sender: no committer JID
                    assert e.committer in (None, alice_acc.jid) and not e.own

            for room, (gl, _gp, gb) in sessions.items():
                joined = _joined(rt, room)
                assert joined is not None
                await gb.send(f"bob to all of alice in {room}")
                for r in (rl, rp, rt):
                    await _message(r, f"bob to all of alice in {room}")
                await joined.send(f"tablet in {room}")
                for r in (rl, rp, rb):
                    event = await _message(r, f"tablet in {room}")
                    assert (event.sender, event.device) == (alice_acc.jid, tablet_device)
                await gl.send(f"laptop in {room}")
                await _message(rt, f"laptop in {room}")
            _no_errors(rl, rp, rb, rt)
        finally:
            await close(tablet)
    finally:
        await close(laptop, phone, bob)


def test_new_device_joins_by_external_commit(server: XmppServer,
                                             new_account: Callable[[str], Account]) -> None:
    alice, bob = new_account("alice"), new_account("bob")
    asyncio.run(asyncio.wait_for(_new_device(server, alice, bob), 180))



# -- 4: a device that was away while another device of the account was online ---------


async def _away_device(server: XmppServer, alice_acc: Account, bob_acc: Account) -> None:
    phone_store = MemoryStore()
    phone_config = {"device": "phone", "store": phone_store}
    phone, _ = await mls_client(server, *alice_acc, config=phone_config)
    await close(phone)  # the phone published its KeyPackages and went away
    laptop, rl = await mls_client(server, *alice_acc, config=_device("laptop"))
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(laptop, bob)
        group = await bob.plugin["mls"].create_group(members=[alice_acc.jid])
        gl = await _join(rl, group.room)
        await synced(group, gl)
        assert len(_devices(group, alice_acc.jid)) == 2  # the away phone is a member
        await group.send("while the phone was away")
        await _message(rl, "while the phone was away")

        # the server gave both Welcomes to the laptop only (a resource was online, so
        # nothing went to offline storage); the phone finds its own in the archive
        phone, rp = await mls_client(server, *alice_acc, config=phone_config)
        try:
            gp = await _join(rp, group.room)
            await synced(group, gl, gp)
            await _message(rp, "while the phone was away")
            await gp.send("the phone is back")
            for r in (rb, rl):
                assert (await _message(r, "the phone is back")).sender == alice_acc.jid
            assert len(rp.events["mls_joined"]) == 1
            _no_errors(rl, rp, rb)
        finally:
            await close(phone)

        # a restart reads the archive from where it stopped: no second join
        assert phone_store.load_inbox_position() is not None
        phone, rp = await mls_client(server, *alice_acc, config=phone_config)
        try:
            plugin = phone.plugin["mls"]
            assert plugin.welcome_scan is not None
            await asyncio.wait_for(plugin.welcome_scan, TIMEOUT)
            assert rp.events["mls_joined"] == [] and len(plugin.groups) == 1
            await group.send("after the restart")
            await _message(rp, "after the restart")
            _no_errors(rl, rp, rb)
        finally:
            await close(phone)
    finally:
        await close(laptop, bob)


def test_away_device_finds_its_welcome_in_the_archive(
        server: XmppServer, new_account: Callable[[str], Account]) -> None:
    alice, bob = new_account("alice"), new_account("bob")
    asyncio.run(asyncio.wait_for(_away_device(server, alice, bob), 120))


# -- 5: one device removed, the account stays ------------------------------------------


def _occupant_nicks(client: Any, room: str) -> set[str]:
    """Nicks in ``room`` as ``client``'s MUC plugin tracks them from presence."""
    return set(client.plugin["xep_0045"].get_roster(room) or ())


async def _one_device_removed(server: XmppServer, alice_acc: Account,
                              bob_acc: Account) -> None:
    laptop, rl = await mls_client(server, *alice_acc, config=_device("laptop"))
    phone, rp = await mls_client(server, *alice_acc, config=_device("phone"))
    tablet, rt = await mls_client(server, *alice_acc, config=_device("tablet"))
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(laptop, phone, tablet, bob)
        group = await bob.plugin["mls"].create_group(members=[alice_acc.jid])
        gl, gp, gt = [await _join(r, group.room) for r in (rl, rp, rt)]
        await synced(group, gl, gp, gt)
        assert len(_devices(group, alice_acc.jid)) == 3
        phone_nick = phone.plugin["mls"].nick(group.room)
        tablet_nick = tablet.plugin["mls"].nick(group.room)
        await until(lambda: {phone_nick, tablet_nick} <= _occupant_nicks(bob, group.room))

        # the phone leaves on its own (a proposal that another member commits)
        await gp.leave()
        await rp.wait("mls_removed")
        await synced(group, gl, gt)
        # bob lost a tablet: he removes just that device, by its fingerprint
        tablet_fp = fingerprint(tablet.plugin["mls"].identity.signature_public_key)
        await group.remove_device(tablet_fp)
        await rt.wait("mls_removed")
        await synced(group, gl)
        assert _devices(group, alice_acc.jid) == _devices(gl, alice_acc.jid)
        assert len(_devices(group, alice_acc.jid)) == 1 and alice_acc.jid in group.jids()
        # both are out of the room although alice's account is still affiliated
        await until(lambda: not {phone_nick, tablet_nick} & _occupant_nicks(bob, group.room))
        assert phone.plugin["mls"].groups == [] and tablet.plugin["mls"].groups == []

        await group.send("only the laptop now")
        assert (await _message(rl, "only the laptop now")).sender == bob_acc.jid
        await gl.send("laptop here")
        await _message(rb, "laptop here")
        await asyncio.sleep(0.5)  # what the removed devices would have received by now
        for r in (rp, rt):
            assert "only the laptop now" not in r.bodies()
        _no_errors(rl, rp, rt, rb)
        with pytest.raises(UnknownDeviceError):
            await group.remove_device("00000000 00000000 00000000 00000000")
    finally:
        await close(laptop, phone, tablet, bob)


def test_removed_device_leaves_the_room(server: XmppServer,
                                        new_account: Callable[[str], Account]) -> None:
    alice, bob = new_account("alice"), new_account("bob")
    asyncio.run(asyncio.wait_for(_one_device_removed(server, alice, bob), 120))


# -- 6: two adders picked the same KeyPackage ------------------------------------------


async def _same_key_package(server: XmppServer, alice_acc: Account, bob_acc: Account,
                            carol_acc: Account) -> None:
    phone, rp = await mls_client(server, *alice_acc, config=_device("phone"))
    bob, _ = await mls_client(server, *bob_acc)
    carol, _ = await mls_client(server, *carol_acc)
    try:
        await befriend(phone, bob, carol)
        # both fetch before the phone has used (and retracted) any: the same one each
        (fetched,) = await bob.plugin["mls"].keystore.fetch(alice_acc.jid)
        kp = fetched.key_package
        first = await bob.plugin["mls"].create_group(key_packages=[kp])
        await _join(rp, first.room)
        second = await carol.plugin["mls"].create_group(key_packages=[kp])
        gp = await _join(rp, second.room)  # opened with the keys kept in memory
        await synced(second, gp)
        # the keys are not kept on disk, nor for reuse beyond the grace period
        assert fetched.ref not in phone.plugin["mls"].identity.key_packages
        _no_errors(rp)
    finally:
        await close(phone, bob, carol)


def test_two_adders_with_the_same_key_package(server: XmppServer,
                                              new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_same_key_package(server, new_account("alice"),
                                                   new_account("bob"), new_account("carol")),
                                 120))
