"""Forks and early messages over a real Prosody (issue 13, faults 4 and 5).

The faults are injected on the member's own connection, as a server that
misbehaves would: a stanza filter (slixmpp ``add_filter("in")``) swallows or
holds back one room stanza before the plugin sees it, or another member's
Commit is built with one path secret corrupted so that only one member fails
to decrypt it, or a hostile occupant posts envelopes that claim a later epoch.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from mls_xmpp.core.crypto.suite import CipherSuite
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.messages.common import ContentType
from mls_xmpp.core.messages.framing import MLSMessage, PrivateMessage
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Envelope, Kind
from mls_xmpp.xmpp.stanza import NS

from .mls_clients import TIMEOUT, befriend, close, mls_client, synced, until


def _envelope(stanza: Any) -> Envelope | None:
    """The envelope of a room stanza, if it carries one."""
    el = stanza.xml.find(f"{{{NS}}}mls")
    if el is None or stanza["type"] != "groupchat":
        return None
    try:
        return Envelope.from_base64(el.text or "")
    except Exception:  # noqa: BLE001 - not ours to judge here
        return None


class RoomFilter:
    """An incoming-stanza filter on one client's connection: the server, as this
    client sees it, drops or holds back room stanzas that match."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.drop: Callable[[Envelope], bool] = lambda env: False
        self.hold: Callable[[Envelope], bool] = lambda env: False
        self.release_on: Callable[[Envelope], bool] = lambda env: False
        self.held: list[Any] = []
        self.dropped: list[Envelope] = []
        self.released = 0
        self._reinjected: set[int] = set()
        client.add_filter("in", self._filter)

    def _filter(self, stanza: Any) -> Any:
        if id(stanza.xml) in self._reinjected:
            return stanza
        env = _envelope(stanza)
        if env is None:
            return stanza
        if self.drop(env):
            self.dropped.append(env)
            return None
        if self.hold(env):
            self.held.append(stanza)
            return None
        if self.held and self.release_on(env):
            loop = asyncio.get_running_loop()
            held, self.held = self.held, []
            for h in held:  # after this stanza: the server delivers them late
                loop.call_later(0.3, self._reinject, h)
        return stanza

    def _reinject(self, stanza: Any) -> None:
        self.released += 1
        self.client.data_received(str(stanza))

    def remove(self) -> None:
        self.client.del_filter("in", self._filter)


def once(pred: Callable[[Envelope], bool]) -> Callable[[Envelope], bool]:
    """``pred``, true for the first matching envelope only."""
    fired = [False]

    def check(env: Envelope) -> bool:
        if not fired[0] and pred(env):
            fired[0] = True
            return True
        return False
    return check


async def _three(server: ProsodyServer, accounts: list[Account],
                 config: dict[str, Any] | None = None) -> tuple[Any, ...]:
    alice, ra = await mls_client(server, *accounts[0])
    bob, rb = await mls_client(server, *accounts[1])
    carol, rc = await mls_client(server, *accounts[2], config=config)
    resynced: list[Any] = []
    carol.add_event_handler("mls_resynced", resynced.append)
    await befriend(alice, bob, carol)
    group = await alice.plugin["mls"].create_group(members=[accounts[1].jid, accounts[2].jid])
    (gb,) = await rb.wait("mls_joined")
    (gc,) = await rc.wait("mls_joined")
    await synced(group, gb, gc)
    return alice, ra, bob, rb, carol, rc, group, gb, gc, resynced


# -- 4a: a Commit the server withheld from one member ---------------------------------


async def _withheld(server: ProsodyServer, accounts: list[Account]) -> None:
    alice, ra, bob, rb, carol, rc, group, gb, gc, resynced = await _three(server, accounts)
    try:
        before = gc.epoch
        f = RoomFilter(carol)
        f.drop = once(lambda env: env.kind == Kind.COMMIT)
        await group.update()
        assert f.dropped, "the filter did not see the Commit"
        await synced(group, gb)
        # carol notices (the GroupInfo of the new epoch) and reads the archive again
        await until(lambda: bool(resynced), TIMEOUT)
        await synced(group, gb, gc)
        assert resynced[0].how == "archive" and resynced[0].from_epoch == before
        print(f"healed from the archive in {resynced[0].seconds:.2f} s (3 members)")
        assert gc.group.epoch_authenticator == group.group.epoch_authenticator
        await group.send("after the gap")
        await rc.wait("mls_message", 1)
        assert rc.bodies() == ["after the gap"]
    finally:
        await close(alice, bob, carol)


def test_withheld_commit_is_detected_and_healed_from_the_archive(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "carol")]
    asyncio.run(asyncio.wait_for(_withheld(prosody, accounts), 150))


# -- 4b: a Commit whose path secret only one member cannot decrypt -----------------------


async def _corrupted(server: ProsodyServer, accounts: list[Account]) -> None:
    alice, ra, bob, rb, carol, rc, group, gb, gc, resynced = await _three(server, accounts)
    try:
        before = gc.epoch
        carol_key = gc.group.state.own_leaf_node().signature_key
        tree = group.group.state.tree
        (leaf,) = [m.leaf_index for m in group.group.members
                   if m.signature_key == carol_key]
        # carol's leaf and the parent above it that covers no one else
        victims = set()
        for node in (2 * leaf, 2 * leaf + 1):
            try:
                n = tree.node(node)
            except Exception:  # noqa: BLE001 - no such node in this tree
                n = None
            if n is not None:
                victims.add(n.encryption_key)
        original = CipherSuite.encrypt_with_label_many

        def corrupting(self: CipherSuite, label: Any, context: bytes,
                       items: Any, crypto: Any = None) -> list[tuple[bytes, bytes]]:
            out = original(self, label, context, items, crypto)
            return [(kem, ct[:-1] + bytes([ct[-1] ^ 1])) if pk in victims else (kem, ct)
                    for (pk, _), (kem, ct) in zip(items, out, strict=True)]

        CipherSuite.encrypt_with_label_many = corrupting  # type: ignore[method-assign]
        try:
            await group.update()  # alice's Commit: bob can read it, carol cannot
        finally:
            CipherSuite.encrypt_with_label_many = original  # type: ignore[method-assign]
        await synced(group, gb)
        await until(lambda: bool(resynced), 60)
        assert resynced[0].how == "external commit" and resynced[0].from_epoch == before
        print(f"healed by external commit in {resynced[0].seconds:.2f} s (3 members)")
        await synced(group, gb, gc)
        assert len(group.members) == 3  # carol's old leaf was replaced, not kept
        await group.send("can carol read this?")
        await rc.wait("mls_message", 1)
        assert rc.bodies()[-1] == "can carol read this?"
        await gc.send("carol is back")
        await ra.wait("mls_message", 1)
        assert ra.bodies()[-1] == "carol is back"
    finally:
        await close(alice, bob, carol)


def test_commit_one_member_cannot_decrypt_is_healed_by_external_commit(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "carol")]
    asyncio.run(asyncio.wait_for(_corrupted(prosody, accounts), 150))


# -- 4c: forged claims of a later epoch do not make a device resync -------------------------


def _forged_private(group_id: bytes, epoch: int) -> bytes:
    return MLSMessage(PrivateMessage(group_id, epoch, ContentType.APPLICATION, b"",
                                     os.urandom(32), os.urandom(64))).encode()


async def _forged(server: ProsodyServer, accounts: list[Account]) -> None:
    alice, ra, bob, rb, carol, rc, group, gb, gc, resynced = await _three(server, accounts)
    try:
        epoch = gc.epoch
        own = gc.group.state.own_leaf_node().signature_key
        # a hostile occupant (bob's account, through its own connection) claims epoch +5:
        # PrivateMessages with that epoch, and a GroupInfo signed by a key of no member
        mallory = Client.generate(b"mallory@example.org", 1)
        fake = mallory.create_group(group.group_id)
        for _ in range(epoch + 5):
            fake.commit()
            fake.merge_pending_commit()
        delivery = bob.plugin["mls"].delivery
        for _ in range(4):
            await delivery.send_room(group.room, Envelope(
                kind=Kind.APPLICATION, group_id=group.group_id, epoch=epoch + 5,
                mls_message=_forged_private(group.group_id, epoch + 5)))
        await delivery.send_room(group.room, Envelope(
            kind=Kind.GROUP_INFO, group_id=group.group_id, epoch=fake.epoch,
            mls_message=fake.group_info()))
        await until(lambda: gc.healer.heals >= 1, 20)  # it looked...
        await until(lambda: gc.healer.task is None or gc.healer.task.done(), 30)
        assert not resynced  # ...and found no proof: no resync
        assert gc.epoch == epoch and gc.group.state.own_leaf_node().signature_key == own
        # the claims used up nothing: a real gap right after is still healed
        f = RoomFilter(carol)
        f.drop = once(lambda env: env.kind == Kind.COMMIT)
        await group.update()
        await until(lambda: bool(resynced), TIMEOUT)
        await synced(group, gb, gc)
        await group.send("still together")
        await rc.wait("mls_message", 1)
    finally:
        await close(alice, bob, carol)


def test_forged_newer_epoch_claims_do_not_make_a_device_resync(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "carol")]
    asyncio.run(asyncio.wait_for(_forged(prosody, accounts), 150))


# -- 5: an application message delivered before the Commit that starts its epoch -------------


async def _early(server: ProsodyServer, accounts: list[Account]) -> None:
    alice, ra = await mls_client(server, *accounts[0])
    bob, rb = await mls_client(server, *accounts[1])
    order: list[str] = []
    bob.add_event_handler("mls_membership", lambda e: order.append(f"epoch {e.epoch}"))
    bob.add_event_handler("mls_message", lambda e: order.append(e.body))
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        f = RoomFilter(bob)
        f.hold = once(lambda env: env.kind == Kind.COMMIT)
        f.drop = lambda env: env.kind == Kind.GROUP_INFO  # no help from elsewhere
        f.release_on = lambda env: env.kind == Kind.APPLICATION
        await group.update()
        await group.send("sent in the new epoch")
        await until(lambda: f.released == 1, TIMEOUT)
        await rb.wait("mls_message", 1)
        assert order[-2:] == [f"epoch {group.epoch}", "sent in the new epoch"]
        await synced(group, gb)
    finally:
        await close(alice, bob)


def test_message_before_its_commit_is_held_and_shown_after_it(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_early(prosody, accounts), 120))


# -- a room that drops the device without a word (XEP-0410 self-ping) -------------------------


async def _silent_drop(server: ProsodyServer, accounts: list[Account]) -> None:
    alice, ra = await mls_client(server, *accounts[0])
    bob, rb = await mls_client(server, *accounts[1],
                               config={"room_ping_interval": 1.0, "room_retry": 0.5})
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        nick = bob.plugin["mls"].nick(group.room)

        def unavailable(stanza: Any) -> Any:  # the server does not tell bob
            if (stanza.name == "presence" and stanza["type"] == "unavailable"
                    and str(stanza["from"]) == f"{group.room}/{nick}"):
                return None
            return stanza
        bob.add_filter("in", unavailable)
        await alice.plugin["xep_0045"].set_role(group.room, nick, "none")  # kicked
        await asyncio.sleep(0.5)
        await group.send("are you still there?")
        await rb.wait("mls_message", 1, timeout=30)
        assert rb.bodies() == ["are you still there?"]
    finally:
        await close(alice, bob)


def test_silently_dropped_from_the_room_notices_and_rejoins(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(_silent_drop(prosody, accounts), 120))
