"""New and removed devices of member accounts over a real Prosody (RFC 9750 §6.7).

A device announces itself on its account's device list (PEP); members
subscribed to that list add it to the groups they share with the account, one
member per group (:mod:`mls_xmpp.xmpp.devices`); a device taken off the list is
removed from them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mls_xmpp.storage import MemoryStore
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.devices import DeviceEvent
from mls_xmpp.xmpp.keystore import device_fingerprint
from mls_xmpp.xmpp.rules import DEFAULT_RULES, Who
from mls_xmpp.xmpp.session import GroupSession
from mls_xmpp.xmpp.trust import TrustState, fingerprint

from .mls_clients import Recorder, befriend, close, mls_client, synced, until


def _device(name: str, **more: Any) -> dict[str, Any]:
    # recover=False: a new device is brought in by the members, not by its own rejoin
    return {"device": name, "store": MemoryStore(), "recover": False,
            "device_add_delay": 1.0, **more}


def _device_events(*clients: Any) -> list[DeviceEvent]:
    return [e for c in clients for e in getattr(c, "_device_events", [])]


def _record_devices(client: Any) -> None:
    client._device_events = []
    client.add_event_handler("mls_device", client._device_events.append)


def _joined(recorder: Recorder, room: str) -> GroupSession | None:
    return next((s for s in recorder.events["mls_joined"] if s.room == room), None)


async def _new_device(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                      carol_acc: Account) -> None:
    laptop, rl = await mls_client(server, *alice_acc, config=_device("laptop"))
    bob, rb = await mls_client(server, *bob_acc, config=_device("desktop"))
    carol, rc = await mls_client(server, *carol_acc, config=_device("phone"))
    tablet = None
    for c in (laptop, bob, carol):
        _record_devices(c)
    try:
        await befriend(laptop, bob, carol)
        group = await bob.plugin["mls"].create_group(members=[alice_acc.jid, carol_acc.jid])
        await until(lambda: _joined(rl, group.room) is not None
                    and _joined(rc, group.room) is not None)
        gl, gc = _joined(rl, group.room), _joined(rc, group.room)
        assert gl is not None and gc is not None
        await synced(group, gl, gc)
        assert len(group.members) == 3
        epoch = group.epoch

        # alice's new tablet: its KeyPackages, then its item on alice's device list
        tablet_config = _device("tablet")
        tablet, rt = await mls_client(server, *alice_acc, config=tablet_config)
        key = tablet.plugin["mls"].identity.signature_public_key
        await until(lambda: _joined(rt, group.room) is not None, 60)
        gt = _joined(rt, group.room)
        assert gt is not None
        await synced(group, gl, gc, gt)
        assert fingerprint(key) in [fp for _, fp, _ in group.members]
        # exactly one Commit added it, made by alice's other device (her account first)
        assert group.epoch == epoch + 1
        added = [e for e in _device_events(laptop, bob, carol) if e.action == "added"]
        assert [(e.group.plugin.bare_jid, e.fingerprint) for e in added] == \
            [(alice_acc.jid, fingerprint(key))]
        await group.send("hello, tablet")
        await until(lambda: "hello, tablet" in rt.bodies())

        # the laptop takes the tablet off alice's list: it leaves the group
        assert await laptop.plugin["mls"].unlink_device(fingerprint(key))
        await until(lambda: _joined(rt, group.room) in rt.events["mls_removed"], 60)
        await until(lambda: fingerprint(key) not in [fp for _, fp, _ in group.members])
        await synced(group, gl, gc)
        assert len(group.members) == 3
        def removed() -> list[DeviceEvent]:
            return [e for e in _device_events(laptop, bob, carol) if e.action == "removed"]
        await until(lambda: removed() != [])
        assert [(e.group.plugin.bare_jid, e.fingerprint) for e in removed()] == \
            [(alice_acc.jid, fingerprint(key))]
        listed = await bob.plugin["mls"].device_watch.listed(alice_acc.jid)
        assert listed is not None and device_fingerprint(key) not in listed
        for c in (laptop, bob, carol):  # every member now distrusts the unlisted key
            await until(lambda c=c: c.plugin["mls"].trust.state(
                alice_acc.jid, fingerprint(key)) == TrustState.DISTRUSTED)

        # the unlisted tablet (its state kept, like a stolen phone) announces itself
        # again: every member holds it back, nobody adds it
        await close(tablet)
        epoch = group.epoch
        tablet, rt = await mls_client(server, *alice_acc, config=tablet_config)
        assert tablet.plugin["mls"].identity.signature_public_key == key
        await until(lambda: {e.group.plugin.bare_jid for e in _device_events(laptop, bob, carol)
                             if e.action == "held"} >= {alice_acc.jid}, 60)
        held = [e for e in _device_events(laptop, bob, carol) if e.action == "held"]
        assert all(e.fingerprint == fingerprint(key) and "distrusts" in e.reason
                   for e in held)
        await synced(group, gl, gc)
        assert group.epoch == epoch and rt.events["mls_joined"] == []
        for r in (rl, rb, rc):
            assert r.events["mls_error"] == [], [e.reason for e in r.events["mls_error"]]
    finally:
        await close(*(c for c in (laptop, bob, carol, tablet) if c is not None))


def test_new_device_added_and_removed_device_removed(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = new_account("alice"), new_account("bob"), new_account("carol")
    asyncio.run(asyncio.wait_for(_new_device(prosody, *accounts), 240))


async def _held(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    laptop, rl = await mls_client(server, *alice_acc, config=_device("laptop"))
    bob, rb = await mls_client(server, *bob_acc, config=_device("desktop"))
    tablet = None
    _record_devices(bob)
    try:
        await befriend(laptop, bob)
        # only bob may add; and bob has verified alice's laptop
        rules = replace(DEFAULT_RULES.with_admins(bob_acc.jid), add=Who.ADMINS)
        group = await bob.plugin["mls"].create_group(members=[alice_acc.jid], rules=rules)
        await until(lambda: _joined(rl, group.room) is not None)
        gl = _joined(rl, group.room)
        await synced(group, gl)
        laptop_fp = fingerprint(laptop.plugin["mls"].identity.signature_public_key)
        bob.plugin["mls"].verify(alice_acc.jid, laptop_fp)
        epoch = group.epoch

        # alice's new tablet is unverified while another device of hers is: held
        tablet, rt = await mls_client(server, *alice_acc, config=_device("tablet"))
        key = tablet.plugin["mls"].identity.signature_public_key
        await until(lambda: any(e.action == "held" for e in _device_events(bob)), 60)
        held = _device_events(bob)[0]
        assert (held.jid, held.fingerprint, held.group) == (alice_acc.jid, fingerprint(key),
                                                            group)
        assert "verified" in held.reason
        # nobody else may add: the group is as it was
        assert group.epoch == epoch and len(group.members) == 2
        assert rt.events["mls_joined"] == []
    finally:
        await close(*(c for c in (laptop, bob, tablet) if c is not None))


def test_new_device_held_by_the_trust_checks(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = new_account("alice"), new_account("bob")
    asyncio.run(asyncio.wait_for(_held(prosody, *accounts), 180))
