"""The plugin under pressure, over a real Prosody: racing commits, a ratchet tree
larger than the stanza limit, and hostile input from someone outside the group.
Racing commits and the outsider (members-only room, forged payloads) also run
on ejabberd."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from typing import Any

from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.serialize import encode_group
from mls_xmpp.testing import Account, ProsodyServer, XmppServer, connect_client, disconnect_client
from mls_xmpp.xmpp.envelope import Envelope, Kind
from mls_xmpp.xmpp.session import GroupSession
from mls_xmpp.xmpp.stanza import NS

from .mls_clients import TIMEOUT, befriend, close, mls_client

STANZA_LIMIT = 262144  # Prosody's default c2s_stanza_size_limit


async def _group_of(server: XmppServer, accounts: list[Account]
                    ) -> tuple[list[Any], list[Any], list[GroupSession]]:
    clients, recorders = [], []
    for acc in accounts:
        c, r = await mls_client(server, *acc)
        clients.append(c)
        recorders.append(r)
    await befriend(*clients)
    g0 = await clients[0].plugin["mls"].create_group(members=[a.jid for a in accounts[1:]])
    sessions = [g0]
    for r in recorders[1:]:
        (g,) = await r.wait("mls_joined")
        await asyncio.wait_for(g.ready.wait(), TIMEOUT)
        sessions.append(g)
    return clients, recorders, sessions


async def _settle(sessions: list[GroupSession], epoch: int) -> None:
    for _ in range(300):
        if all(s.epoch >= epoch for s in sessions):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"epochs {[s.epoch for s in sessions]}, wanted {epoch}")


# -- commits racing ------------------------------------------------------------------


async def _race(server: XmppServer, accounts: list[Account]) -> None:
    clients, recorders, sessions = await _group_of(server, accounts[:3])
    dave, rd = await mls_client(server, *accounts[3])
    erin, re_ = await mls_client(server, *accounts[4])
    try:
        await befriend(*clients, dave, erin)
        ga, gb, gc = sessions
        start = ga.epoch
        # both commit at the same moment: two updates
        await asyncio.gather(ga.update(), gb.update())
        await _settle(sessions, start + 2)
        auths = {s.group.epoch_authenticator for s in sessions}
        assert len(auths) == 1 and len({s.epoch for s in sessions}) == 1
        # both add someone at the same moment: neither addition is lost
        await asyncio.gather(ga.add(accounts[3].jid), gb.add(accounts[4].jid))
        (gd,) = await rd.wait("mls_joined")
        (ge,) = await re_.wait("mls_joined")
        await asyncio.wait_for(asyncio.gather(gd.ready.wait(), ge.ready.wait()), TIMEOUT)
        everyone = [ga, gb, gc, gd, ge]
        await _settle(everyone, max(s.epoch for s in everyone))
        assert len({s.epoch for s in everyone}) == 1
        assert len({s.group.epoch_authenticator for s in everyone}) == 1
        assert {a.jid for a in accounts} == ga.jids()
        await gd.send("dave and erin both made it")
        await re_.wait("mls_message", 1)
        assert re_.bodies()[-1] == "dave and erin both made it"
    finally:
        await close(*clients, dave, erin)


def test_concurrent_commits_converge(server: XmppServer,
                                    new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "carol", "dave", "erin")]
    asyncio.run(asyncio.wait_for(_race(server, accounts), 180))


# -- a tree larger than a stanza -----------------------------------------------------------


async def _large_tree(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    # uploads of at most 64 KiB: the tree (about 280 KB) goes up in five parts, as a
    # 50,000-member tree (13 MiB) does under Prosody's default limit of 10 MiB
    alice, _ = await mls_client(server, *alice_acc, config={"upload_part_size": 64 * 1024})
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group()
        delivery = alice.plugin["mls"].delivery
        upload, uploads = delivery.upload, []

        async def recorded(*args: Any, **kwargs: Any) -> Any:
            uploads.append(await upload(*args, **kwargs))
            return uploads[-1]

        delivery.upload = recorded
        # 1,500 devices that are not online: KeyPackages made locally
        fakes = [Client.generate(f"member{i}@{server.domain}".encode()) for i in range(1500)]
        kps = [c.make_key_package() for c in fakes]
        bob_kps = await alice.plugin["mls"].keystore.fetch(bob_acc.jid)
        await group._commit(add=kps + [bob_kps[0].key_package])
        tree = group.group.ratchet_tree()
        assert len(tree) > STANZA_LIMIT, len(tree)
        assert uploads and all(len(r.more_urls) == 4 and r.part_size == 64 * 1024
                               for r in uploads), uploads
        (gb,) = await rb.wait("mls_joined", timeout=120)
        await asyncio.wait_for(gb.ready.wait(), 120)
        assert gb.group.epoch_authenticator == group.group.epoch_authenticator
        for c in (alice, bob):  # the plugin's own pool shared the bulk add and the join
            pool = c.plugin["mls"]._workers_pool
            assert pool.stats()["batches"] > 0 or pool.workers == 0, pool.stats()
        await group.send("a big room")
        await rb.wait("mls_message", 1, timeout=60)
        assert rb.bodies() == ["a big room"]
    finally:
        await close(alice, bob)


def test_tree_over_stanza_limit_still_lets_a_member_join(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _large_tree(prosody, new_account("alice"), new_account("bob")), 600))


# -- hostile input ---------------------------------------------------------------------------


def _raw(client: Any, to: str, mtype: str, payload: str) -> None:
    from slixmpp.xmlstream import ET

    msg = client.make_message(mto=to, mtype=mtype)
    el = ET.Element(f"{{{NS}}}mls")
    el.text = payload
    msg.append(el)
    msg.append(ET.Element("{urn:xmpp:hints}store"))
    msg.send()


def _app_generation(group: Any) -> int:
    """The next generation of the member's own application ratchet."""
    from mls_xmpp.core.tree.secret_tree import RatchetType

    return int(group.state.secret_tree.next_generation(group.own_leaf_index,
                                                       RatchetType.APPLICATION))


async def _hostile(server: XmppServer, accounts: list[Account]) -> None:
    clients, recorders, sessions = await _group_of(server, accounts[:2])
    ga, gb = sessions
    ra, rb = recorders
    mallory = await connect_client(server, *accounts[2])
    try:
        # the room is members-only: an outsider cannot even enter it
        joined_uninvited = True
        try:
            await mallory.plugin["xep_0045"].join_muc_wait(ga.room, "mallory", maxstanzas=0,
                                                           timeout=5)
        except Exception:  # noqa: BLE001 - presence error or timeout: refused
            joined_uninvited = False
        assert not joined_uninvited
        await ga.send("before")
        await rb.wait("mls_message", 1)
        # the room's owner lets mallory in as an occupant (a hostile or sloppy DS);
        # she is not an MLS member
        await ga.plugin.delivery.set_affiliation(ga.room, accounts[2].jid, "member")
        await mallory.plugin["xep_0045"].join_muc_wait(ga.room, "mallory", maxstanzas=0,
                                                       timeout=TIMEOUT)
        own_generation = _app_generation(ga.group)
        before_b = encode_group(gb.group)
        errors_before = len(rb.events["mls_error"])
        old_ct = ga.group.encrypt(b"\x0a\x03old")  # valid ciphertext, replayed below
        good = Envelope(kind=Kind.APPLICATION, group_id=ga.group_id, epoch=ga.epoch,
                        mls_message=old_ct).to_base64()
        forged_mls = Envelope(kind=Kind.APPLICATION, group_id=ga.group_id, epoch=ga.epoch,
                              mls_message=bytes([0, 1, 0, 2]) + os.urandom(200)).to_base64()
        other_group = Envelope(kind=Kind.APPLICATION, group_id=b"x" * 16, epoch=1,
                               mls_message=old_ct).to_base64()
        payloads = [
            "!!! not base64 !!!",
            base64.b64encode(os.urandom(64)).decode(),   # not a protobuf envelope
            forged_mls,                                    # garbage MLS
            other_group,                                   # names another group
            good, good,                                    # replay: second copy must fail
        ]
        for p in payloads:
            _raw(mallory, ga.room, "groupchat", p)
        # direct messages to bob: garbage, a Welcome not meant for him
        _raw(mallory, accounts[1].jid, "chat", "%%%")
        _raw(mallory, accounts[1].jid, "chat", forged_mls)
        # 5 bad room payloads (the replayed copy included) + 2 direct ones
        await rb.wait("mls_error", errors_before + 7)
        await ga.send("after")
        await rb.wait("mls_message", 3)
        # bob read alice's genuine ciphertext once (relayed by mallory); the replay
        # and every forgery were dropped
        assert rb.bodies() == ["before", "old", "after"]
        assert gb.epoch == ga.epoch
        assert gb.group.epoch_authenticator == ga.group.epoch_authenticator
        # nothing mallory sent moved bob's group: only the one genuine message key was used
        # alice encrypted twice since (her stored state, ahead by its reserved
        # generations, need not change: the ratchet in memory does)
        assert _app_generation(ga.group) == own_generation + 2
        assert gb.group.state.tree.encode() == ga.group.state.tree.encode()
        del before_b
    finally:
        await disconnect_client(mallory)
        await close(*clients)


def test_outsider_payloads_change_nothing(server: XmppServer,
                                         new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "mallory")]
    asyncio.run(asyncio.wait_for(_hostile(server, accounts), 120))


# -- hostile members and Welcomes (found in review) -----------------------------------------


async def _room_takeover(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                         mallory_acc: Account) -> None:
    alice, _ = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    mallory, _ = await mls_client(server, *mallory_acc)
    try:
        await befriend(alice, bob, mallory)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        # mallory welcomes bob (his KeyPackages are public) into her own group, naming
        # the room of alice's group
        evil = mallory.plugin["mls"]
        kp = (await evil.keystore.fetch(bob_acc.jid))[0].key_package
        g = evil.identity.create_group(os.urandom(16))
        pending = g.commit(add=[kp])
        g.merge_pending_commit()
        (welcome,) = pending.welcomes.values()
        await evil.delivery.send_welcome(bob_acc.jid, Envelope(
            kind=Kind.WELCOME, group_id=g.group_id, epoch=g.epoch, mls_message=welcome,
            room=group.room))
        await rb.wait("mls_error")
        assert "room of another group" in rb.events["mls_error"][0].reason
        assert bob.plugin["mls"].sessions[group.room] is gb
        await group.send("still ours")
        await rb.wait("mls_message")
        assert rb.bodies() == ["still ours"] and len(rb.events["mls_joined"]) == 1
    finally:
        await close(alice, bob, mallory)


def test_a_welcome_cannot_take_over_a_room(prosody: ProsodyServer,
                                           new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_room_takeover(prosody, new_account("alice"),
                                                new_account("bob"), new_account("mallory")),
                                 120))


async def _not_utf8(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        # a member whose identity is not UTF-8 (not a JID either): nobody's worker dies
        odd = Client.generate(b"\xff\xfe not a jid")
        await group.add_key_packages([odd.make_key_package()])
        await group.send("after the odd member")
        await rb.wait("mls_message")
        assert rb.bodies() == ["after the odd member"]
        assert gb.epoch == group.epoch and len(gb.members) == 3
        # alice's Welcome to it could not be addressed: reported, not fatal
        assert any("\ufffd" in e.reason for e in ra.events["mls_error"]), \
            [e.reason for e in ra.events["mls_error"]]
    finally:
        await close(alice, bob)


def test_a_member_that_is_not_utf8_breaks_nothing(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_not_utf8(prosody, new_account("alice"),
                                           new_account("bob")), 120))
