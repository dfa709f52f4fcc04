"""docs/PROTOCOL.md's rules, played over a real Prosody (issue 19).

* the ``mls_joined`` payload names its group like the other events, and
  ``mls_membership.updated`` names a committer whose UpdatePath replaced its leaf;
* receivers accept handshake messages sent as PublicMessage (§ Handshake messages);
* a group's ``pad_to`` travels in the group and a joiner pads by it (§ Padding);
* when a committer does not publish its GroupInfo, a member does (§ GroupInfo publication);
* a device whose account was removed while it was away learns its removal (§ Removal).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.messages.framing import MLSMessage, PrivateMessage, PublicMessage
from mls_xmpp.core.messages.group_info import GroupInfo
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Envelope, Kind
from mls_xmpp.xmpp.events import JoinedEvent
from mls_xmpp.xmpp.privacy import is_sealed
from mls_xmpp.xmpp.session import GroupSession

from .mls_clients import TIMEOUT, befriend, close, mls_client, synced, until


class Wire:
    """The ``<mls/>`` envelopes a client receives from its rooms, in order."""

    def __init__(self, client: Any) -> None:
        self.envelopes: list[Envelope] = []
        client.add_event_handler("groupchat_message", self._on)

    def _on(self, msg: Any) -> None:
        text = msg["mls"]["payload"]
        if text:
            self.envelopes.append(Envelope.from_base64(text))

    def of(self, kind: Kind) -> list[Envelope]:
        return [e for e in self.envelopes if e.kind == kind]


def _run(coro: Any, timeout: float = 120) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def _events(server: ProsodyServer, a: Account, b: Account) -> None:
    alice, ra = await mls_client(server, *a)
    bob, rb = await mls_client(server, *b)
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[b.jid])
        await rb.wait("mls_joined")
        (joined,) = rb.events["mls_joined_event"]
        assert isinstance(joined, JoinedEvent) and isinstance(joined.group, GroupSession)
        assert joined.how == "welcome" and joined.inviter == a.jid
        assert joined.epoch == group.epoch == joined.group.epoch  # the handle's, as before
        assert joined.room == joined.group.room == group.room  # the old payload's attributes
        await synced(group, joined.group)
        await joined.group.update()  # a Commit with an UpdatePath, no proposals
        (*_, theirs) = await ra.wait("mls_membership", 2)
        assert theirs.committer == b.jid and theirs.updated == (b.jid,)
        assert not theirs.added and not theirs.removed
        (*_, own) = await rb.wait("mls_membership", 1)
        assert own.own and own.updated == (b.jid,)
    finally:
        await close(alice, bob)


def test_joined_event_names_its_group_and_updated_names_the_committer(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_events(prosody, new_account("alice"), new_account("bob")))


async def _public(server: ProsodyServer, a: Account, b: Account, c: Account) -> None:
    alice, ra = await mls_client(server, *a)
    # bob's MLS stack sends handshake messages in the clear only (some libraries do)
    bob, rb = await mls_client(server, *b,
                               config={"group_config": GroupConfig(handshake_private=False)})
    carol, rc = await mls_client(server, *c)
    wire = Wire(alice)
    try:
        await befriend(alice, bob, carol)
        group = await alice.plugin["mls"].create_group(members=[b.jid, c.jid])
        (gb,), (gc,) = await rb.wait("mls_joined"), await rc.wait("mls_joined")
        await synced(group, gb, gc)
        await gb.update()
        await synced(group, gb, gc)  # alice and carol merged bob's Commit
        assert gb.epoch == 2
        commits = [MLSMessage.decode(e.mls_message).body for e in wire.of(Kind.COMMIT)]
        assert isinstance(commits[-1], PublicMessage)
        assert all(isinstance(x, PrivateMessage) for x in commits[:-1])
        await gb.leave()  # now a PublicMessage proposal, committed by alice
        await until(lambda: b.jid not in group.jids(), TIMEOUT)
        props = [MLSMessage.decode(e.mls_message).body for e in wire.of(Kind.PROPOSAL)]
        assert isinstance(props[-1], PublicMessage)
        await rb.wait("mls_removed")
        assert not [e for e in ra.events["mls_error"] if e.group is group]
    finally:
        await close(alice, bob, carol)


def test_public_message_handshakes_are_accepted(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_public(prosody, new_account("alice"), new_account("bob"), new_account("carol")))


async def _pad(server: ProsodyServer, a: Account, b: Account) -> None:
    alice, _ = await mls_client(server, *a)
    bob, rb = await mls_client(server, *b)
    wire = Wire(alice)
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[b.jid], pad_to=256)
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        await gb.send("hi")  # bob learnt pad_to from his Welcome's GroupContext
        await until(lambda: bool(wire.of(Kind.APPLICATION)))
        (env,) = wire.of(Kind.APPLICATION)
        body = MLSMessage.decode(env.mls_message).body
        assert isinstance(body, PrivateMessage)
        # the PrivateMessageContent, padded to 256, plus the AEAD tag (16)
        assert (len(body.ciphertext) - 16) % 256 == 0
        assert gb.group.config.pad_to == 256 and len(body.ciphertext) > 32
        # the group parameters and the GroupInfo key are two extensions: the GroupInfo
        # posted to the room is still sealed, and bob opens it
        infos = wire.of(Kind.GROUP_INFO)
        assert infos and all(is_sealed(e.mls_message) for e in infos)
        assert MLSMessage.decode(gb.opened_group_info(infos[-1])).body is not None
    finally:
        await close(alice, bob)


def test_group_pad_to_travels_in_the_group(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_pad(prosody, new_account("alice"), new_account("bob")))


async def _stand_in(server: ProsodyServer, a: Account, b: Account, c: Account) -> None:
    grace = {"group_info_grace": 1.0}
    alice, _ = await mls_client(server, *a, config=grace)
    bob, rb = await mls_client(server, *b, config=grace)
    carol, rc = await mls_client(server, *c, config=grace)
    wire = Wire(carol)
    try:
        await befriend(alice, bob, carol)
        group = await alice.plugin["mls"].create_group(members=[b.jid, c.jid])
        (gb,), (gc,) = await rb.wait("mls_joined"), await rc.wait("mls_joined")
        await synced(group, gb, gc)

        async def silent() -> None:  # alice's implementation cannot publish GroupInfos
            return None
        group.publish_group_info = silent
        await group.update()
        await synced(group, gb, gc)
        epoch = group.epoch
        await until(lambda: gc.group_info_epoch == epoch, TIMEOUT)
        infos = [e for e in wire.of(Kind.GROUP_INFO) if e.epoch == epoch]
        signers = {_signer(gc, e) for e in infos}
        assert signers == {gb.group.own_leaf_index}  # bob, leaf 1, stood in
        assert gb.group_info_epoch == epoch
    finally:
        await close(alice, bob, carol)


def _signer(member: Any, env: Envelope) -> int:
    """The signer of a (sealed) GroupInfo posted to the room, opened by a member."""
    body = MLSMessage.decode(member.opened_group_info(env)).body
    assert isinstance(body, GroupInfo)
    return body.signer


def test_group_info_published_by_a_member_when_the_committer_did_not(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_stand_in(prosody, new_account("alice"), new_account("bob"), new_account("carol")))


async def _removed(server: ProsodyServer, a: Account, b: Account, db: Path) -> None:
    from mls_xmpp.storage import SQLiteStore

    alice, _ = await mls_client(server, *a)
    bob, rb = await mls_client(server, *b, config={"store": str(db)})
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[b.jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        await close(bob)
        await group.remove(b.jid)  # while bob is away; the room lets his account go
        bob2, rb2 = await mls_client(server, *b, config={"store": str(db)})
        try:
            (gone,) = await rb2.wait("mls_removed")  # from the removal notice
            assert gone.group_id == group.group_id
            assert bob2.plugin["mls"].groups == []
        finally:
            await close(bob2)
        with SQLiteStore(db) as store:
            assert store.load_groups() == []
    finally:
        await close(alice)


def test_account_removed_while_away_learns_its_removal(
        prosody: ProsodyServer, tmp_path: Path, new_account: Callable[[str], Account]) -> None:
    _run(_removed(prosody, new_account("alice"), new_account("bob"), tmp_path / "bob.db"))



async def _forged_notices(server: ProsodyServer, a: Account, b: Account, c: Account,
                          m: Account) -> None:
    from mls_xmpp.testing import send_payload

    alice, _ = await mls_client(server, *a)
    bob, rb = await mls_client(server, *b)
    carol, rc = await mls_client(server, *c)
    mallory, _ = await mls_client(server, *m)
    wire = Wire(bob)
    try:
        await befriend(alice, bob, carol)
        group = await alice.plugin["mls"].create_group(members=[b.jid, c.jid])
        (gb,), (gc,) = await rb.wait("mls_joined"), await rc.wait("mls_joined")
        await group.update()
        await synced(group, gb, gc)
        before = (gb.epoch, gb.group.epoch_authenticator)
        old = wire.of(Kind.COMMIT)[-1]  # the update, already applied: a replay
        for sender, epoch in ((mallory, gb.epoch), (carol, old.epoch), (carol, gb.epoch)):
            notice = Envelope(kind=Kind.COMMIT, group_id=group.group_id, epoch=epoch,
                              mls_message=old.mls_message, room=group.room)
            send_payload(sender, b.jid, notice.to_bytes(), mtype="chat")

        def refused() -> list[str]:
            return [e.reason for e in rb.events["mls_error"]
                    if "removal notice refused" in e.reason]
        await until(lambda: len(refused()) == 3)
        # stanzas of different senders may arrive in any order
        assert sorted("not in the group" in r for r in refused()) == [False, False, True]
        assert sum("another epoch" in r for r in refused()) == 2
        assert (gb.epoch, gb.group.epoch_authenticator) == before
        assert bob.plugin["mls"].groups == [gb] and not rb.events["mls_removed"]
        await group.send("still here")
        await rb.wait("mls_message")
    finally:
        await close(alice, bob, carol, mallory)


def test_forged_removal_notices_change_nothing(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_forged_notices(prosody, new_account("alice"), new_account("bob"),
                         new_account("carol"), new_account("mallory")))
