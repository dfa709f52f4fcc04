"""Cipher suites and ReInit over a real Prosody (issue 18, docs/PROTOCOL.md section 15.3).

Alice, Bob and Carol support suites 3 and 1 (3 preferred); Dave supports only
suite 1. A group of the four is created in suite 1 (the best one every device
supports), then Alice (an admin, allowed by the group's rules) moves it to
suite 3 by ReInit: Alice, Bob and Carol continue in a new group and room,
linked to the old one; the old group is closed for everyone; Dave, who has no
KeyPackage of suite 3, is reported on both sides and his copy of the old group
is closed and deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mls_xmpp.errors import (
    CannotFollowError,
    DowngradeError,
    GroupClosedError,
    RulesError,
    UnknownGroupError,
)
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.reinit import link_of
from mls_xmpp.xmpp.rules import DEFAULT_RULES, Who
from mls_xmpp.xmpp.suites import suite_feature

from .mls_clients import TIMEOUT, befriend, close, mls_client, synced, until

BOTH = {"suites": (3, 1)}


def _reinit_events(client: Any) -> list[Any]:
    events: list[Any] = []
    client.add_event_handler("mls_reinit", events.append)
    return events


def _stored(client: Any) -> set[bytes]:
    return {r.group_id for r in client.plugin["mls"].state_store.load_groups()}


async def _features(asker: Any, jid: str) -> set[str]:
    info = await asker.plugin["xep_0030"].get_info(jid=jid, timeout=TIMEOUT)
    return set(info["disco_info"]["features"])


async def _reinit(server: ProsodyServer, accounts: list[Account]) -> None:
    a_acc, b_acc, c_acc, d_acc = accounts
    alice, ra = await mls_client(server, *a_acc, BOTH)
    bob, rb = await mls_client(server, *b_acc, BOTH)
    carol, rc = await mls_client(server, *c_acc, BOTH)
    dave, rd = await mls_client(server, *d_acc)
    clients = [alice, bob, carol, dave]
    ea, eb, ec, ed = (_reinit_events(c) for c in clients)
    try:
        await befriend(*clients)
        # each device advertises its suites (disco) ...
        full = alice.boundjid.full
        assert {suite_feature(3), suite_feature(1)} <= await _features(bob, full)
        assert suite_feature(3) not in await _features(alice, dave.boundjid.full)
        # ... and publishes KeyPackages of each: a new group takes the best suite every
        # invited device supports
        pair = await alice.plugin["mls"].create_group(members=[b_acc.jid])
        assert pair.group.state.suite.id == 3
        rules = DEFAULT_RULES.__class__(reinit=Who.ADMINS)
        group = await alice.plugin["mls"].create_group(
            members=[b_acc.jid, c_acc.jid, d_acc.jid], rules=rules)
        assert group.group.state.suite.id == 1  # dave has suite 1 only
        old_room, old_id = group.room, group.group_id
        await rb.wait("mls_joined", 2)
        gb = bob.plugin["mls"].group(old_room)
        gc = (await rc.wait("mls_joined"))[0]
        gd = (await rd.wait("mls_joined"))[0]
        await synced(group, gb, gc, gd)
        await group.send("before")
        for r in (rb, rc, rd):
            await until(lambda r=r: "before" in r.bodies())

        # the group's rules decide who may reinitialise (bob is no admin): refused at once
        with pytest.raises(RulesError):
            await gb.reinit(3)
        # a move down alice's preference is a downgrade she must agree to
        with pytest.raises(DowngradeError):
            await pair.reinit(1)

        # dave cannot follow: with require_all nothing is sent
        epoch = group.epoch
        with pytest.raises(CannotFollowError) as refused:
            await group.reinit(3, require_all=True)
        assert refused.value.jids == (d_acc.jid,) and group.epoch == epoch
        # carol is slow to read her room: her Welcome into the new group comes first
        await gc.stop_worker()
        new = await group.reinit(3)
        assert new.group.state.suite.id == 3 and new.room != old_room
        await until(lambda: old_id in carol.plugin["mls"].reinit.waiting)
        assert ec == [] and new.room not in carol.plugin["mls"].sessions
        gc.start(catch_up=False)  # the ReInit, then the Welcome that waited for it
        moved = [e for e in ea if e.stage == "moved"]
        assert [(e.new_group, e.stranded) for e in moved] == [
            (new, ((d_acc.jid, m[1]),)) for m in group.members if m[0] == d_acc.jid]
        await until(lambda: any(isinstance(e.error, CannotFollowError)
                                and d_acc.jid in e.error.jids for e in ra.events["mls_error"]))

        # bob and carol follow into the new group and room
        for events in (eb, ec):
            await until(lambda events=events: any(e.stage == "followed" for e in events))
        nb = next(e.new_group for e in eb if e.stage == "followed")
        nc = next(e.new_group for e in ec if e.stage == "followed")
        await synced(new, nb, nc)
        assert new.jids() == {a_acc.jid, b_acc.jid, c_acc.jid}
        assert nb.room == new.room and nb.group.state.suite.id == 3
        # the history is linked: the new group names the old one and its room
        link = link_of(nb.group.state.context.extensions)
        assert link is not None
        assert (link.predecessor_group_id, link.predecessor_room.decode(),
                link.room.decode()) == (old_id, old_room, new.room)
        assert nb.predecessor == old_room

        # messages flow in the new group
        await new.send("after")
        await nc.send("from carol")
        await until(lambda: "after" in rb.bodies() and "after" in rc.bodies())
        await until(lambda: "from carol" in ra.bodies() and "from carol" in rb.bodies())
        assert all(e.group is not group for e in ra.events["mls_message"][-1:])

        # the old group is closed everywhere: typed error naming the new group, no state
        for handle in (group, gb, gc):
            with pytest.raises(GroupClosedError) as info:
                await handle.send("too late")
            assert info.value.successor_room == new.room
        for client in (alice, bob, carol):
            assert old_id not in _stored(client)
            with pytest.raises(UnknownGroupError):
                client.plugin["mls"].group(old_room)

        # dave cannot follow (no suite 3): reported, his old group closed and deleted
        await until(lambda: any(isinstance(e.error, CannotFollowError)
                                for e in rd.events["mls_error"]))
        assert [e.stage for e in ed] == ["committed"]
        with pytest.raises(GroupClosedError):
            await gd.send("anyone?")
        await until(lambda: old_id not in _stored(dave))
        assert new.room not in dave.plugin["mls"].sessions
        assert rb.events["mls_error"] == [] and rc.events["mls_error"] == []
    finally:
        await close(*clients)


def test_reinit_moves_a_group_to_suite_3(prosody: ProsodyServer,
                                         new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "carol", "dave")]
    asyncio.run(asyncio.wait_for(_reinit(prosody, accounts), 240))


async def _reinit_while_away(server: ProsodyServer, accounts: list[Account], db: Any) -> None:
    a_acc, b_acc, c_acc = accounts
    alice, ra = await mls_client(server, *a_acc, BOTH)
    bob, rb = await mls_client(server, *b_acc, {**BOTH, "store": str(db)})
    carol, rc = await mls_client(server, *c_acc, BOTH)
    try:
        await befriend(alice, bob, carol)
        rules = DEFAULT_RULES.__class__(reinit=Who.MEMBERS)
        group = await alice.plugin["mls"].create_group(
            members=[b_acc.jid, c_acc.jid], rules=rules, suite=1)
        (gb,) = await rb.wait("mls_joined")
        (gc,) = await rc.wait("mls_joined")
        await synced(group, gb, gc)
        old_id = group.group_id
        bob_keys = {s: c.signature_public_key
                    for s, c in bob.plugin["mls"].identities.items()}
        await close(bob)  # his identities (one per suite) and the group are on disk

        new = await gc.reinit(3)  # carol, a member: the rules let members reinitialise
        await new.send("while bob was away")

        bob2, rb2 = await mls_client(server, *b_acc, {**BOTH, "store": str(db)})
        eb = _reinit_events(bob2)
        try:
            assert {s: c.signature_public_key
                    for s, c in bob2.plugin["mls"].identities.items()} == bob_keys
            # he reads the ReInit from the old room's archive and the Welcome from his
            # own (whichever comes first: the Welcome waits for the ReInit)
            await until(lambda: any(e.stage == "followed" for e in eb), 60)
            nb = bob2.plugin["mls"].group(new.room)
            await synced(new, nb)
            await until(lambda: "while bob was away" in rb2.bodies())
            assert old_id not in _stored(bob2)
            await nb.send("bob is back")
            await until(lambda: "bob is back" in ra.bodies() and "bob is back" in rc.bodies())
            assert rb2.events["mls_error"] == []
        finally:
            await close(bob2)
    finally:
        await close(alice, carol)


def test_reinit_while_a_member_is_away(prosody: ProsodyServer, tmp_path: Any,
                                       new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "carol")]
    asyncio.run(asyncio.wait_for(_reinit_while_away(prosody, accounts, tmp_path / "b.db"),
                                 240))


async def _reinit_read_then_away(server: ProsodyServer, accounts: list[Account],
                                 db: Any) -> None:
    a_acc, b_acc = accounts
    alice, ra = await mls_client(server, *a_acc, BOTH)
    bob, rb = await mls_client(server, *b_acc, {**BOTH, "store": str(db)})
    eb = _reinit_events(bob)
    try:
        await befriend(alice, bob)
        rules = DEFAULT_RULES.__class__(reinit=Who.ADMINS)
        group = await alice.plugin["mls"].create_group(members=[b_acc.jid], rules=rules,
                                                       suite=1)
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        old_id = group.group_id
        # alice's new room waits until bob has read the ReInit and gone away
        delivery = alice.plugin["mls"].delivery
        real_create, go_on = delivery.create_room, asyncio.Event()

        async def create_room(room: str, nick: str) -> None:
            await go_on.wait()
            await real_create(room, nick)

        delivery.create_room = create_room
        moving = asyncio.ensure_future(group.reinit(3))
        await until(lambda: [e.stage for e in eb] == ["committed"])
        await until(lambda: gb.room not in bob.plugin["mls"].sessions)  # parked, stored
        assert old_id in _stored(bob)
        await close(bob)
        go_on.set()
        new = await asyncio.wait_for(moving, TIMEOUT)
        await new.send("hello in suite 3")

        bob2, rb2 = await mls_client(server, *b_acc, {**BOTH, "store": str(db)})
        eb2 = _reinit_events(bob2)
        try:
            # the closed group came back from the store, and its PSK opens the Welcome
            await until(lambda: any(e.stage == "followed" for e in eb2), 60)
            (followed,) = [e for e in eb2 if e.stage == "followed"]
            assert followed.group.group_id == old_id and followed.new_group is not None
            await synced(new, followed.new_group)
            await until(lambda: "hello in suite 3" in rb2.bodies())
            assert old_id not in _stored(bob2)
            with pytest.raises(GroupClosedError):
                await followed.group.send("old")
            assert rb2.events["mls_error"] == []
        finally:
            await close(bob2)
    finally:
        await close(alice)


def test_reinit_read_before_a_restart(prosody: ProsodyServer, tmp_path: Any,
                                      new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_reinit_read_then_away(prosody, accounts, tmp_path / "b.db"),
                                 240))


async def _suite3_state_loss(server: ProsodyServer, accounts: list[Account], db: Any) -> None:
    a_acc, b_acc = accounts
    phone = {**BOTH, "store": str(db), "device": "phone"}
    alice, ra = await mls_client(server, *a_acc, BOTH)
    bob, rb = await mls_client(server, *b_acc, phone)
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[b_acc.jid])
        assert group.group.state.suite.id == 3
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        old = bob.plugin["mls"].identities[3].signature_public_key
        await close(bob)
        db.unlink()  # the phone is wiped

        bob2, rb2 = await mls_client(server, *b_acc, phone)
        try:
            # it rejoins the suite-3 group with its new suite-3 identity
            (gb2,) = await rb2.wait("mls_joined", timeout=60)
            await synced(group, gb2)
            assert gb2.group.state.suite.id == 3
            keys = {m.signature_key for m in group.group.members}
            assert old not in keys
            assert bob2.plugin["mls"].identities[3].signature_public_key in keys
            # its own KeyPackages of both suites stay published (not taken for stale ones)
            for suite in (1, 3):
                items = await bob2.plugin["mls"].keystores[suite].own_items()
                assert any(i.usable for i in items)
            await gb2.send("back")
            await until(lambda: "back" in ra.bodies())
        finally:
            await close(bob2)
    finally:
        await close(alice)


def test_suite3_member_rejoins_after_losing_its_store(
        prosody: ProsodyServer, tmp_path: Any, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_suite3_state_loss(prosody, accounts, tmp_path / "b.db"),
                                 240))


async def _reinit_retried(server: ProsodyServer, accounts: list[Account]) -> None:
    from mls_xmpp.errors import TransportError

    a_acc, b_acc = accounts
    alice, ra = await mls_client(server, *a_acc, BOTH)
    bob, rb = await mls_client(server, *b_acc, BOTH)
    eb = _reinit_events(bob)
    try:
        await befriend(alice, bob)
        rules = DEFAULT_RULES.__class__(reinit=Who.ADMINS)
        group = await alice.plugin["mls"].create_group(members=[b_acc.jid], rules=rules,
                                                       suite=1)
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        # the server refuses the new room once: the ReInit is committed, the successor not
        delivery = alice.plugin["mls"].delivery
        real_create = delivery.create_room

        async def refused(room: str, nick: str) -> None:
            delivery.create_room = real_create
            raise TransportError("the MUC service refused the room (injected)")

        delivery.create_room = refused
        with pytest.raises(TransportError, match="call reinit"):
            await group.reinit(3)
        with pytest.raises(GroupClosedError):
            await group.send("closed")
        await until(lambda: [e.stage for e in eb] == ["committed"])
        new = await group.reinit(3)  # goes on where it stopped
        await until(lambda: any(e.stage == "followed" for e in eb))
        nb = bob.plugin["mls"].group(new.room)
        await synced(new, nb)
        await nb.send("made it")
        await until(lambda: "made it" in ra.bodies())
        assert rb.events["mls_error"] == []
    finally:
        await close(alice, bob)


def test_reinit_successor_retried_after_a_failure(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_reinit_retried(prosody, accounts), 240))
