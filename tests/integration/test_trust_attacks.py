"""The server and the members are not trusted (issue: identities, device trust, who may enter).

Each test plays one attack over a real Prosody. The attacker is real: a member's
own client whose MLS objects are bent, a second connection of an account (what
the account's server can always make), or a stranger's client; forged messages
are injected into the room as the server could inject them. After each attack
the honest members agree (one epoch_authenticator), the attack is refused or
reported, and no group state is deleted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from mls_xmpp.core.group.config import Policy
from mls_xmpp.core.group.external import external_proposal
from mls_xmpp.core.messages.common import ContentType
from mls_xmpp.core.messages.proposals import Add, ReInit, Update
from mls_xmpp.errors import UntrustedDeviceError
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Envelope, Kind
from mls_xmpp.xmpp.session import GroupSession
from mls_xmpp.xmpp.trust import TrustState, fingerprint

from ..core.test_group_rules import frame
from .mls_clients import Recorder, befriend, close, mls_client, synced, until


async def _three(server: ProsodyServer, accounts: list[Account],
                 configs: list[dict[str, Any] | None] | None = None,
                 ) -> tuple[list[Any], list[Recorder], list[GroupSession]]:
    """alice creates a group with bob and carol; returns clients, recorders, sessions."""
    configs = configs or [None] * len(accounts)
    clients, recorders = [], []
    for acc, cfg in zip(accounts, configs, strict=True):
        c, r = await mls_client(server, *acc, cfg)
        clients.append(c)
        recorders.append(r)
    await befriend(*clients)  # by default, Welcomes are joined only from contacts
    g0 = await clients[0].plugin["mls"].create_group(members=[a.jid for a in accounts[1:]])
    sessions = [g0]
    for r in recorders[1:]:
        (g,) = await r.wait("mls_joined")
        sessions.append(g)
    await synced(*sessions)
    return clients, recorders, sessions


async def _inject(via: GroupSession, kind: Kind, data: bytes, epoch: int | None = None) -> None:
    """Put an MLSMessage into the room, as the server (or any occupant) can."""
    await via.plugin.delivery.send_room(via.room, Envelope(
        kind=kind, group_id=via.group_id, epoch=via.epoch if epoch is None else epoch,
        mls_message=data))


def _errors(r: Recorder) -> list[str]:
    return [e.reason for e in r.events["mls_error"]]


async def _still_talking(sessions: list[GroupSession], recorders: list[Recorder],
                         text: str) -> None:
    """The honest members still read each other: sessions[0] sends, the rest receive."""
    counts = [len(r.events["mls_message"]) for r in recorders[1:]]
    await sessions[0].send(text)
    for r, n in zip(recorders[1:], counts, strict=True):
        await r.wait("mls_message", n + 1)
        assert r.events["mls_message"][-1].body == text


def _run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 180))


# -- 1. external joins ------------------------------------------------------------------------


async def _stranger_external_join(server: ProsodyServer, accounts: list[Account]) -> None:
    clients, recorders, (ga, gb, gc) = await _three(server, accounts[:3])
    mallory, _ = await mls_client(server, *accounts[3])
    try:
        before = ga.group.epoch_authenticator
        # whoever holds the GroupInfo (the room archive has it) joins under its own JID
        info = ga.group.group_info(with_tree=True)
        _, commit = mallory.plugin["mls"].identity.join_external(info)
        await _inject(gc, Kind.COMMIT, commit, epoch=ga.epoch)
        for r in recorders:
            await until(lambda r=r: any("external joins" in e for e in _errors(r)))
        assert all(s.group.epoch_authenticator == before for s in (ga, gb, gc))
        assert accounts[3].jid not in ga.jids()
        await _still_talking([ga, gb, gc], recorders, "mallory is not in")
    finally:
        await close(*clients, mallory)


def test_attack1_stranger_external_join_refused(prosody: ProsodyServer,
                                                new_account: Callable[[str], Account]) -> None:
    _run(_stranger_external_join(
        prosody, [new_account(n) for n in ("alice", "bob", "carol", "mallory")]))


async def _member_jid_external_join(server: ProsodyServer, accounts: list[Account]) -> None:
    clients, recorders, (ga, gb, gc) = await _three(server, accounts[:3])
    # the server runs bob's account: it can connect a device of bob's the user never had
    rogue, _ = await mls_client(server, *accounts[1], {"device": "rogue",
                                                        "publish_key_packages": False,
                                                        "recover": False})
    try:
        ra = recorders[0]
        seen = len(ra.events["mls_trust"])
        info = ga.group.group_info(with_tree=True)
        evil = rogue.plugin["mls"].identity
        joined, commit = evil.join_external(info)
        await _inject(gc, Kind.COMMIT, commit, epoch=ga.epoch)
        await until(lambda: all(s.epoch == joined.epoch for s in (ga, gb, gc)))
        await synced(ga, gb, gc)
        assert ga.group.epoch_authenticator == joined.epoch_authenticator
        # allowed (bob's own account), but never silently: a new device of bob's is news
        rogue_fp = fingerprint(evil.signature_public_key)
        await until(lambda: any(c.jid == accounts[1].jid and c.fingerprint == rogue_fp
                                for c in ra.events["mls_trust"][seen:]))
        change = next(c for c in ra.events["mls_trust"][seen:] if c.fingerprint == rogue_fp)
        assert change.change == "new" and change.device == "rogue"
        for r in recorders[1:]:
            assert any(c.fingerprint == rogue_fp for c in r.events["mls_trust"])
    finally:
        await close(*clients, rogue)


def test_attack1_external_join_under_a_members_jid_is_reported(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_member_jid_external_join(
        prosody, [new_account(n) for n in ("alice", "bob", "carol")]))


# -- 2. new_member_proposal ------------------------------------------------------------------


async def _new_member_proposal(server: ProsodyServer, accounts: list[Account]) -> None:
    clients, recorders, (ga, gb, gc) = await _three(server, accounts[:3])
    mallory, rm = await mls_client(server, *accounts[3])
    try:
        before = ga.group.epoch_authenticator
        evil = mallory.plugin["mls"].identity
        # group_id and epoch are visible on the wire: enough to build the proposal
        proposal = external_proposal(
            Add(evil.make_key_package()), group_id=ga.group_id, epoch=ga.epoch,
            suite_id=evil.suite_id, signature_private_key=evil.signature_private_key,
            sender_index=None)
        await _inject(gc, Kind.PROPOSAL, proposal)
        for r in recorders:
            await until(lambda r=r: any("outside the group" in e for e in _errors(r)))
        await asyncio.sleep(1.0)  # time for a designated committer to (wrongly) act
        assert all(s.group.epoch_authenticator == before for s in (ga, gb, gc))
        assert accounts[3].jid not in ga.jids()
        assert not rm.events["mls_joined"]
        await _still_talking([ga, gb, gc], recorders, "no proposals from outside")
    finally:
        await close(*clients, mallory)


def test_attack2_new_member_proposal_refused(prosody: ProsodyServer,
                                             new_account: Callable[[str], Account]) -> None:
    _run(_new_member_proposal(
        prosody, [new_account(n) for n in ("alice", "bob", "carol", "mallory")]))


# -- 3. a member takes another member's name --------------------------------------------------


async def _update_as_another(server: ProsodyServer, accounts: list[Account]) -> None:
    clients, recorders, (ga, gb, gc) = await _three(server, accounts[:3])
    try:
        before = ga.group.epoch_authenticator
        # bob's Update proposal whose leaf names alice
        g = gb.group
        s = g.state
        _, pub = s.suite.generate_kem_key_pair(g.config.rng)
        leaf = replace(s.own_leaf_node(), credential=ga.group.state.own_leaf_node().credential,
                       encryption_key=pub, leaf_node_source=2, lifetime=None,
                       parent_hash=None).signed(s.suite, s.signature_private_key, s.group_id,
                                                s.own_leaf)
        await _inject(gb, Kind.PROPOSAL, frame(g, ContentType.PROPOSAL, Update(leaf)))
        for r in (recorders[0], recorders[2]):
            await until(lambda r=r: any("§5.3.1" in e for e in _errors(r)))
        assert ga.group.epoch_authenticator == gc.group.epoch_authenticator == before
        # bob's next message is still shown as bob's
        await gb.send("still bob")
        await recorders[0].wait("mls_message")
        assert recorders[0].events["mls_message"][-1].sender == accounts[1].jid
    finally:
        await close(*clients)


def test_attack3_update_naming_another_member_refused(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_update_as_another(prosody, [new_account(n) for n in ("alice", "bob", "carol")]))


async def _commit_as_another(server: ProsodyServer, accounts: list[Account]) -> None:
    clients, recorders, (ga, gb, gc) = await _three(server, accounts[:3])
    try:
        before = ga.group.epoch_authenticator
        # bob's own view of his leaf names alice: his Commit's UpdatePath leaf does too
        tree = gb.group.state.tree
        tree.set_leaf_node(gb.group.own_leaf_index, replace(
            tree.leaf(gb.group.own_leaf_index),
            credential=ga.group.state.own_leaf_node().credential))
        pending = gb.group.commit()
        gb.group.discard_pending_commit()
        await _inject(gb, Kind.COMMIT, pending.message, epoch=gb.epoch)
        for r in (recorders[0], recorders[2]):
            await until(lambda r=r: any("§5.3.1" in e for e in _errors(r)))
        assert ga.group.epoch_authenticator == gc.group.epoch_authenticator == before
        await _still_talking([ga, gc], [recorders[0], recorders[2]], "alice is alice")
    finally:
        await close(*clients)


def test_attack3_commit_path_naming_another_member_refused(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_commit_as_another(prosody, [new_account(n) for n in ("alice", "bob", "carol")]))


# -- 4. keys the server introduces, and the trust store ---------------------------------------


async def _server_device(server: ProsodyServer, accounts: list[Account], db: str) -> None:
    alice_acc, bob_acc = accounts
    bob, _ = await mls_client(server, *bob_acc, {"device": "phone"})
    # the server publishes KeyPackages of a "new device" of bob's (a second connection)
    rogue, _ = await mls_client(server, *bob_acc, {"device": "rogue", "recover": False})
    alice, ra = await mls_client(server, *alice_acc, {"store": db,
                                                      "refuse_send_to": "distrusted"})
    try:
        await befriend(alice, bob, rogue)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        rogue_fp = fingerprint(rogue.plugin["mls"].identity.signature_public_key)
        phone_fp = fingerprint(bob.plugin["mls"].identity.signature_public_key)
        await until(lambda: {c.fingerprint for c in ra.events["mls_trust"]
                             if c.jid == bob_acc.jid} == {rogue_fp, phone_fp})
        assert {c.device for c in ra.events["mls_trust"] if c.jid == bob_acc.jid} == {
            "phone", "rogue"}
        mls = alice.plugin["mls"]
        assert mls.verify(bob_acc.jid, phone_fp).state == TrustState.VERIFIED
        assert mls.distrust(bob_acc.jid, rogue_fp).state == TrustState.DISTRUSTED
        with pytest.raises(UntrustedDeviceError) as info:
            await group.send("not to the rogue device")
        assert [d[2] for d in info.value.devices] == [rogue_fp]
        # acting on distrust is an explicit removal Commit
        await group.remove_device(rogue_fp)
        await group.send("only to bob's phone")
        number = mls.safety_number(bob_acc.jid, phone_fp)
        assert number == bob.plugin["mls"].safety_number(
            alice_acc.jid, fingerprint(mls.identity.signature_public_key))
    finally:
        await close(alice, bob, rogue)
    # remembered: a restarted alice still distrusts the rogue key, and knows the phone
    alice, _ = await mls_client(server, *alice_acc, {"store": db})
    try:
        mls = alice.plugin["mls"]
        assert mls.trust.state(bob_acc.jid, rogue_fp) == TrustState.DISTRUSTED
        assert mls.trust.state(bob_acc.jid, phone_fp) == TrustState.VERIFIED
    finally:
        await close(alice)


def test_attack4_server_made_device_is_shown_and_remembered(
        prosody: ProsodyServer, new_account: Callable[[str], Account], tmp_path: Any) -> None:
    _run(_server_device(prosody, [new_account("alice"), new_account("bob")],
                        str(tmp_path / "alice.db")))


# -- 6. ReInit ---------------------------------------------------------------------------------


async def _reinit(server: ProsodyServer, accounts: list[Account]) -> None:
    clients, recorders, (ga, gb, gc) = await _three(server, accounts[:3])
    try:
        before = ga.group.epoch_authenticator
        # bob's client ignores the rules and commits a ReInit
        g = gb.group
        g.config = replace(g.config, policy=Policy())
        pending = g.commit(proposals=[ReInit(os.urandom(16), 1, g.state.suite.id,
                                             g.state.context.extensions)])
        g.discard_pending_commit()
        await _inject(gb, Kind.COMMIT, pending.message, epoch=gb.epoch)
        for r in (recorders[0], recorders[2]):
            await until(lambda r=r: any("reinitialise" in e for e in _errors(r)))
        assert ga.group.active and gc.group.active
        assert ga.group.epoch_authenticator == gc.group.epoch_authenticator == before
        await _still_talking([ga, gc], [recorders[0], recorders[2]], "the group goes on")
    finally:
        await close(*clients)


def test_attack6_reinit_by_a_member_refused(prosody: ProsodyServer,
                                            new_account: Callable[[str], Account]) -> None:
    _run(_reinit(prosody, [new_account(n) for n in ("alice", "bob", "carol")]))


# -- local trust never splits the group ---------------------------------------------------------


async def _different_trust(server: ProsodyServer, accounts: list[Account]) -> None:
    configs: list[dict[str, Any] | None] = [
        {"blind_trust": False, "refuse_send_to": "unverified"}, None, {"blind_trust": False}]
    clients, recorders, sessions = await _three(server, accounts[:3], configs)
    ga, gb, gc = sessions
    dave, rd = await mls_client(server, *accounts[3])
    try:
        await befriend(clients[1], dave)  # bob adds dave
        alice = clients[0].plugin["mls"]
        bob_fp = fingerprint(clients[1].plugin["mls"].identity.signature_public_key)
        alice.distrust(accounts[1].jid, bob_fp)       # alice distrusts bob
        clients[2].plugin["mls"].verify(accounts[1].jid, bob_fp)  # carol verified him
        # commits from everyone, including the distrusted device
        await gb.update()
        await gc.update()
        await gb.add(accounts[3].jid)
        (gd,) = await rd.wait("mls_joined")
        await ga.update()
        await gc.remove(accounts[3].jid)
        await synced(ga, gb, gc)
        assert len({s.group.epoch_authenticator for s in (ga, gb, gc)}) == 1
        # alice's strictness only stops alice's own sending
        with pytest.raises(UntrustedDeviceError):
            await ga.send("alice refuses")
        await gb.send("bob still talks")
        await recorders[0].wait("mls_message")
        assert recorders[0].events["mls_message"][-1].body == "bob still talks"
        assert gd.removed
    finally:
        await close(*clients, dave)


def test_members_with_different_trust_never_diverge(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_different_trust(prosody, [new_account(n) for n in ("alice", "bob", "carol", "dave")]))

