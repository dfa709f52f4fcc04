"""Who may put a device into a group (issue 12, attack 5), over a real Prosody.

KeyPackages are public: anyone can make a group, add a device and send it a
Welcome. By default a device joins only Welcomes from roster contacts with a
mutual subscription (and from its own account); a stranger's Welcome is
dropped and reported before anything in it is decrypted or downloaded, and
the KeyPackage stays usable. ``invitations="any"`` joins everyone's,
``"ask"`` lets the application decide, and each inviter is held to an hourly
limit. The stranger ("mallory") is an ordinary plugin client on the same server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mls_xmpp.errors import InvitationRefusedError, LocalUsageError
from mls_xmpp.storage import MemoryStore
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp import session as session_module
from mls_xmpp.xmpp.envelope import Envelope
from mls_xmpp.xmpp.inbox import welcome_refs
from mls_xmpp.xmpp.session import GroupSession

from .mls_clients import Recorder, befriend, close, mls_client, synced, until


def _joined(recorder: Recorder, room: str) -> GroupSession | None:
    return next((s for s in recorder.events["mls_joined"] if s.room == room), None)


async def _join(recorder: Recorder, room: str) -> GroupSession:
    await until(lambda: _joined(recorder, room) is not None)
    session = _joined(recorder, room)
    assert session is not None
    return session


async def _refused(recorder: Recorder, inviter: str, count: int = 1) -> list[Any]:
    """Wait for ``count`` refused invitations from the bare JID ``inviter``."""
    def mine() -> list[Any]:
        return [e for e in recorder.events["mls_error"]
                if isinstance(e.error, InvitationRefusedError)
                and e.sender is not None and e.sender.split("/")[0] == inviter]
    await until(lambda: len(mine()) >= count)
    return mine()


def _record_welcomes(client: Any) -> list[Envelope]:
    """Record every Welcome envelope ``client`` sends (they are still sent)."""
    sent: list[Envelope] = []
    delivery = client.plugin["mls"].delivery
    original = delivery.send_welcome

    async def send_welcome(jid: str, env: Envelope, **kw: Any) -> None:
        sent.append(env)
        await original(jid, env, **kw)

    delivery.send_welcome = send_welcome
    return sent


def _record_downloads(client: Any) -> list[str]:
    """Record the URL of every blob ``client`` downloads."""
    urls: list[str] = []
    delivery = client.plugin["mls"].delivery
    original = delivery.download

    async def download(ref: Any, **kw: Any) -> bytes:
        urls.extend(url for url, _ in ref.parts)
        return bytes(await original(ref, **kw))

    delivery.download = download
    return urls


async def _stranger(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                    mallory_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    mallory, _ = await mls_client(server, *mallory_acc)
    try:
        await befriend(alice, bob)
        downloads = _record_downloads(alice)
        mallory_welcomes = _record_welcomes(mallory)
        identity = alice.plugin["mls"].identity
        (fetched,) = await mallory.plugin["mls"].keystore.fetch(alice_acc.jid)
        assert fetched.ref in identity.key_packages

        # the stranger adds alice with her KeyPackage and sends her the Welcome
        theirs = await mallory.plugin["mls"].create_group(key_packages=[fetched.key_package])
        (event,) = await _refused(ra, mallory_acc.jid)
        assert mallory_acc.jid in event.reason
        assert ra.events["mls_joined"] == []
        assert alice.plugin["mls"].groups == []
        # the KeyPackage's private keys are still there, and nothing was fetched:
        # the Welcome named a tree by URL (a stranger's choice of URL)
        assert fetched.ref in identity.key_packages
        (welcome,) = mallory_welcomes
        assert welcome.ratchet_tree is not None and downloads == []
        assert alice.plugin["mls"].state_store.load_groups() == []

        # a contact adds alice with the very same KeyPackage: she joins
        ours = await bob.plugin["mls"].create_group(key_packages=[fetched.key_package])
        joined = await _join(ra, ours.room)
        await synced(ours, joined)
        assert fetched.ref not in identity.key_packages  # used now
        assert _joined(ra, theirs.room) is None
        await ours.send("from a contact")
        await until(lambda: "from a contact" in ra.bodies())
        assert len(ra.events["mls_error"]) == 1  # only the stranger's Welcome
        assert rb.events["mls_error"] == []
    finally:
        await close(alice, bob, mallory)


def test_stranger_invitation_is_dropped_and_the_key_package_kept(
        prosody: ProsodyServer, new_account: Callable[[str], Account],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every ratchet tree goes by URL, so the test sees whether alice would fetch one
    monkeypatch.setattr(session_module, "TREE_INLINE_LIMIT", 0)
    asyncio.run(asyncio.wait_for(_stranger(prosody, new_account("alice"), new_account("bob"),
                                           new_account("mallory")), 120))


async def _relayed(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                   mallory_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc)
    bob, _ = await mls_client(server, *bob_acc)
    mallory, _ = await mls_client(server, *mallory_acc)
    try:
        await befriend(alice, bob)
        # mallory's Welcome is not sent by mallory: it reaches alice from bob's account
        # (a contact relaying it, or a server forging a contact's stanza 'from')
        held: list[Envelope] = []

        async def keep(jid: str, env: Envelope, **kw: Any) -> None:
            held.append(env)

        mallory.plugin["mls"].delivery.send_welcome = keep
        identity = alice.plugin["mls"].identity
        (fetched,) = await mallory.plugin["mls"].keystore.fetch(alice_acc.jid)
        await mallory.plugin["mls"].create_group(key_packages=[fetched.key_package])
        (env,) = held
        await bob.plugin["mls"].delivery.send_welcome(alice_acc.jid, env)
        (event,) = await _refused(ra, bob_acc.jid)
        assert mallory_acc.jid in event.reason  # the GroupInfo's signer
        assert ra.events["mls_joined"] == [] and alice.plugin["mls"].groups == []
        assert fetched.ref in identity.key_packages
        assert env.group_id not in identity.groups
    finally:
        await close(alice, bob, mallory)


def test_invitation_signed_by_another_than_its_sender_is_refused(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_relayed(prosody, new_account("alice"), new_account("bob"),
                                          new_account("mallory")), 120))


async def _any(server: ProsodyServer, alice_acc: Account, mallory_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc, config={"invitations": "any"})
    mallory, _ = await mls_client(server, *mallory_acc)
    try:
        group = await mallory.plugin["mls"].create_group(members=[alice_acc.jid])
        joined = await _join(ra, group.room)
        await synced(group, joined)
        assert ra.events["mls_error"] == []
    finally:
        await close(alice, mallory)


def test_any_invitation_from_a_stranger_is_joined(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_any(prosody, new_account("alice"), new_account("mallory")),
                                 120))


async def _ask(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
               mallory_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc, config={"invitations": "ask"})
    bob, _ = await mls_client(server, *bob_acc)
    mallory, rm = await mls_client(server, *mallory_acc)
    try:
        await befriend(alice, bob)
        identity = alice.plugin["mls"].identity
        plugin = mallory.plugin["mls"]

        # declined: nothing joined, nothing used
        (fetched,) = await plugin.keystore.fetch(alice_acc.jid)
        first = await plugin.create_group(key_packages=[fetched.key_package])
        (invitation,) = await ra.wait("mls_invitation")
        assert (invitation.inviter, invitation.room) == (mallory_acc.jid, first.room)
        assert invitation.group_id == first.group_id
        assert fetched.ref in identity.key_packages and alice.plugin["mls"].groups == []
        await invitation.decline()
        with pytest.raises(LocalUsageError):
            await invitation.accept()
        assert fetched.ref in identity.key_packages and alice.plugin["mls"].groups == []

        # accepted: joined as from a contact
        second = await plugin.create_group(members=[alice_acc.jid])
        invitations = await ra.wait("mls_invitation", 2)
        assert invitations[1].room == second.room
        joined = await invitations[1].accept()
        assert joined.room == second.room and await _join(ra, second.room) is joined
        await synced(second, joined)
        await second.send("accepted")
        await until(lambda: "accepted" in ra.bodies())

        # a contact is not asked about
        third = await bob.plugin["mls"].create_group(members=[alice_acc.jid])
        await synced(third, await _join(ra, third.room))
        assert len(ra.events["mls_invitation"]) == 2
        assert ra.events["mls_error"] == [] and rm.events["mls_error"] == []
    finally:
        await close(alice, bob, mallory)


def test_ask_invitation_accept_and_decline(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_ask(prosody, new_account("alice"), new_account("bob"),
                                      new_account("mallory")), 120))


async def _ask_expires(server: ProsodyServer, alice_acc: Account,
                       mallory_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc,
                                 config={"invitations": "ask", "invitation_timeout": 1.0})
    mallory, _ = await mls_client(server, *mallory_acc)
    try:
        identity = alice.plugin["mls"].identity
        (fetched,) = await mallory.plugin["mls"].keystore.fetch(alice_acc.jid)
        await mallory.plugin["mls"].create_group(key_packages=[fetched.key_package])
        (invitation,) = await ra.wait("mls_invitation")
        (event,) = await _refused(ra, mallory_acc.jid)
        assert "not decided in time" in event.reason
        with pytest.raises(LocalUsageError):
            await invitation.accept()
        assert fetched.ref in identity.key_packages and alice.plugin["mls"].groups == []
    finally:
        await close(alice, mallory)


def test_ask_invitation_expires_undecided(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_ask_expires(prosody, new_account("alice"),
                                              new_account("mallory")), 120))


async def _limit(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc, config={"invitation_limit": 2})
    bob, _ = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        sent = _record_welcomes(bob)
        identity = alice.plugin["mls"].identity
        groups = []
        for _ in range(3):
            groups.append(await bob.plugin["mls"].create_group(members=[alice_acc.jid]))
            if len(groups) < 3:
                await _join(ra, groups[-1].room)
        (event,) = await _refused(ra, bob_acc.jid)
        assert "more than 2 invitations within an hour" in event.reason
        assert {s.room for s in alice.plugin["mls"].groups} == {g.room for g in groups[:2]}
        # the refused Welcome's KeyPackage is still usable
        assert welcome_refs(sent[2].mls_message) & set(identity.key_packages)
    finally:
        await close(alice, bob)


def test_invitation_limit_per_inviter_and_hour(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_limit(prosody, new_account("alice"), new_account("bob")),
                                 120))


async def _from_archive(server: ProsodyServer, alice_acc: Account, mallory_acc: Account) -> None:
    phone_config = {"device": "phone", "store": MemoryStore()}
    phone, _ = await mls_client(server, *alice_acc, config=phone_config)
    kps = set(phone.plugin["mls"].identity.key_packages)
    await close(phone)  # the phone goes away; alice's laptop stays online
    laptop, rl = await mls_client(server, *alice_acc, config={"device": "laptop"})
    mallory, _ = await mls_client(server, *mallory_acc)
    try:
        fetched = [f for f in await mallory.plugin["mls"].keystore.fetch(alice_acc.jid)
                   if f.ref in kps]
        assert fetched
        await mallory.plugin["mls"].create_group(key_packages=[fetched[0].key_package])
        # the laptop sees the Welcome live: not for its KeyPackages, ignored silently;
        # the server does not keep it offline (a resource was online): only the archive has it
        phone, rp = await mls_client(server, *alice_acc, config=phone_config)
        assert phone.plugin["mls"].welcome_scan is not None
        await phone.plugin["mls"].welcome_scan
        (event,) = await _refused(rp, mallory_acc.jid)
        assert rp.events["mls_joined"] == [] and phone.plugin["mls"].groups == []
        assert fetched[0].ref in phone.plugin["mls"].identity.key_packages  # as stored
        assert rl.events["mls_error"] == [] and rl.events["mls_joined"] == []
    finally:
        await close(phone, laptop, mallory)


def test_stranger_invitation_from_the_archive_is_dropped(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_from_archive(prosody, new_account("alice"),
                                               new_account("mallory")), 120))


async def _stale(server: ProsodyServer, alice_acc: Account, carol_acc: Account) -> None:
    alice, _ = await mls_client(server, *alice_acc)
    carol, rc = await mls_client(server, *carol_acc)
    try:
        await befriend(alice, carol)
        welcomes = _record_welcomes(alice)
        group = await alice.plugin["mls"].create_group(members=[carol_acc.jid])
        joined = await _join(rc, group.room)
        await synced(group, joined)
        await group.send("before the removal")
        await until(lambda: "before the removal" in rc.bodies())
        await group.remove(carol_acc.jid)
        await rc.wait("mls_removed")
        # the first Welcome again, as an adder sends it after a cut (or a server
        # replays it): its KeyPackage's keys are still at hand, but the device held
        # that epoch already and must not read its messages a second time
        first = welcomes[0]
        await alice.plugin["mls"].delivery.send_welcome(carol_acc.jid, first)
        # added again: the new Welcome comes behind the stale one on the same route
        await group.add(carol_acc.jid)
        await until(lambda: len(rc.events["mls_joined"]) == 2)
        again = rc.events["mls_joined"][1]
        assert again.epoch == group.epoch > first.epoch
        await synced(group, again)
        await group.send("after the return")
        await until(lambda: "after the return" in rc.bodies())
        assert rc.bodies() == ["before the removal", "after the return"]
        assert [s.room for s in carol.plugin["mls"].groups] == [group.room]
    finally:
        await close(alice, carol)


def test_stale_welcome_after_removal_is_not_joined_again(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_stale(prosody, new_account("alice"), new_account("carol")),
                                 120))


async def _stints(server: ProsodyServer, alice_acc: Account, carol_acc: Account,
                  caplog: pytest.LogCaptureFixture) -> None:
    from mls_xmpp.testing import FaultProxy

    from .test_outbox import _down, _up

    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, _ = await mls_client(server, *alice_acc)
        carol, rc = await mls_client(server, *carol_acc, {"room_retry": 0.5},
                                     via=(proxy.host, proxy.port))
        try:
            await befriend(alice, carol)
            group = await alice.plugin["mls"].create_group(members=[carol_acc.jid])
            joined = await _join(rc, group.room)
            await synced(group, joined)
            # carol is offline while she is removed and added back twice; a message in
            # each stint of her membership
            await _down(carol, proxy, refuse=True)
            for stint in (1, 2):
                await group.remove(carol_acc.jid)
                await group.add(carol_acc.jid)
                await group.send(f"stint {stint}")
            # and the room refuses her for a while (as it does a removed account until
            # it is added again): her group, in epoch 1, cannot read its removal yet
            # when both Welcomes come
            delivery = alice.plugin["mls"].delivery
            await delivery.set_affiliation(group.room, carol_acc.jid, "none")

            def kept() -> list[str]:
                return [r.message for r in caplog.records
                        if "waits until this device reads" in r.message]

            with caplog.at_level("INFO", logger="mls_xmpp"):
                await _up(carol, proxy)
                await until(lambda: len(kept()) == 2)
                assert joined.suspended is not None and joined.epoch == 1
                await delivery.set_affiliation(group.room, carol_acc.jid, "member")
                # she reads her removal, then each Welcome in turn: every stint is read
                await until(lambda: "stint 2" in rc.bodies(), 60)
            assert rc.bodies() == ["stint 1", "stint 2"]
            assert len(rc.events["mls_removed"]) == 2
            (again,) = carol.plugin["mls"].groups
            await synced(group, again)
        finally:
            await close(alice, carol)


def test_welcomes_kept_while_removed_are_opened_one_stint_after_another(
        prosody: ProsodyServer, new_account: Callable[[str], Account],
        caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(asyncio.wait_for(_stints(prosody, new_account("alice"), new_account("carol"),
                                         caplog), 150))
