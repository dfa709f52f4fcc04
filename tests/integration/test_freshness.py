"""Post-compromise security by default and retention, over a real Prosody.

* auto_update: a device that joined with its last-resort KeyPackage sends an
  update (an empty Commit with a path) on its own, and keeps updating after
  ``update_interval`` (an injected clock: no test waits days).
* idle: a device that never updates is removed by the admin device after
  ``idle_timeout``, and every member -- the removed device too -- is told why.
* retention: past epochs' keys and a retired last resort's keys are deleted
  (from memory and from the SQLite file) once their time is up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mls_xmpp.core.group.client_state import decode_client
from mls_xmpp.core.group.serialize import decode_group_parts
from mls_xmpp.core.messages.common import LeafNodeSource
from mls_xmpp.storage import SQLiteStore
from mls_xmpp.testing import Account, ProsodyServer

from .mls_clients import befriend, close, mls_client, synced, until

DAY = 86400.0


class Clock:
    """An injected clock the test moves forward."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _leaf(session: Any, jid: str) -> Any:
    (index,) = [i for j, _, i in session.members if j == jid]
    return session.group.state.tree.leaf(index)


def _config(clock: Clock, **extra: Any) -> dict[str, Any]:
    return {"clock": clock, "freshness_interval": 0.1, "update_join_delay": 0.0,
            "update_after_join": True, **extra}  # the default (mls_client turns it off)


async def _auto_update(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                       tmp: Path) -> None:
    clock = Clock()
    alice, ra = await mls_client(server, *alice_acc, config=_config(clock))
    # bob's pool holds only the last-resort KeyPackage; updates after an ordinary
    # join are off, so only the last-resort rule makes him update
    bob, rb = await mls_client(server, *bob_acc, config=_config(
        clock, pool_size=0, update_after_join=False, store=str(tmp / "bob.db")))
    try:
        await befriend(alice, bob)
        mls_b = bob.plugin["mls"]
        (last_resort,) = mls_b.identity.last_resort
        kp_key = mls_b.identity.key_packages[last_resort].key_package.leaf_node.encryption_key
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        (gb,) = await rb.wait("mls_joined")
        # bob's own Commit, with a path: his leaf no longer holds the last resort's key
        await until(lambda: any(e.committer == bob_acc.jid
                                for e in ra.events["mls_membership"]))
        await synced(group, gb)
        leaf = _leaf(group, bob_acc.jid)
        assert leaf.leaf_node_source == LeafNodeSource.COMMIT
        assert leaf.encryption_key != kp_key
        assert mls_b.freshness.record(gb).update_due is None

        # retention: the retired last resort's private keys go after retired_key_lifetime
        await until(lambda: last_resort not in mls_b.identity.last_resort)
        assert last_resort in mls_b.identity.key_packages  # kept for a second Welcome
        clock.now += DAY + 1
        await until(lambda: last_resort not in mls_b.identity.key_packages)
        with SQLiteStore(str(tmp / "bob.db")) as store:
            stored = decode_client(store.load_identity(), mls_b.identity.config)
        assert last_resort not in stored.key_packages

        # a week later both devices update again on their own
        epoch = group.epoch
        clock.now += 7 * DAY + 1
        await until(lambda: group.epoch >= epoch + 2 and gb.epoch == group.epoch)
        committers = {e.committer for e in ra.events["mls_membership"] if e.epoch > epoch}
        assert committers == {alice_acc.jid, bob_acc.jid}
        # a Commit that lost a race (alice and bob update at once) is not an error
        assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
    finally:
        await close(alice, bob)


def test_auto_update_after_last_resort_join(prosody: ProsodyServer,
                                            new_account: Callable[[str], Account],
                                            tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_auto_update(prosody, new_account("alice"),
                                              new_account("bob"), tmp_path), 180))


async def _idle(server: ProsodyServer, accounts: list[Account], tmp: Path) -> None:
    clock = Clock()
    month = {"update_interval": 30 * DAY, "update_after_join": False}
    alice, ra = await mls_client(server, *accounts[0], config=_config(
        clock, store=str(tmp / "alice.db"), **month))
    bob, rb = await mls_client(server, *accounts[1], config=_config(clock, **month))
    # carol's device never updates (an old client, or one left running unattended)
    carol, rc = await mls_client(server, *accounts[2], config=_config(
        clock, update_interval=0, update_after_join=False))
    idle: dict[str, list[Any]] = {"alice": [], "bob": [], "carol": []}
    for name, client in (("alice", alice), ("bob", bob), ("carol", carol)):
        client.add_event_handler("mls_idle_removed", idle[name].append)
    carol_jid = accounts[2].jid
    try:
        await befriend(alice, bob, carol)
        group = await alice.plugin["mls"].create_group(
            members=[accounts[1].jid, accounts[2].jid])
        (gb,) = await rb.wait("mls_joined")
        (gc,) = await rc.wait("mls_joined")
        await synced(group, gb, gc)
        join_epoch = group.epoch
        assert group.group.retained_epochs  # earlier epochs, kept for late messages
        assert bob.plugin["mls"].inbox._recent  # the used KeyPackage, for a second Welcome

        # three months in monthly steps: alice and bob update each time, carol never
        for step in range(3):
            epoch = group.epoch
            clock.now += 31 * DAY
            if step < 2:
                await until(lambda: group.epoch >= epoch + 2  # noqa: B023 - awaited here and gb.epoch == group.epoch
                            and gc.epoch == group.epoch, 90)
                assert carol_jid in group.jids()
        await rc.wait("mls_removed")
        await until(lambda: carol_jid not in group.jids() and carol_jid not in gb.jids())
        assert set(group.jids()) == {accounts[0].jid, accounts[1].jid}
        # every member is told why, carol too
        await until(lambda: all(idle.values()))
        (event,) = idle["carol"]
        assert event.self_removed and event.committer == accounts[0].jid
        ((jid, _, last_epoch, seconds),) = event.removed
        assert jid == carol_jid and last_epoch == join_epoch and seconds > 90 * DAY
        assert not idle["alice"][0].self_removed and not idle["bob"][0].self_removed
        assert all(e[0].disputed == () for e in idle.values())  # the records agree
        assert rb.events["mls_removed"] == [] and ra.events["mls_removed"] == []

        # retention: no past epoch outlives past_epoch_lifetime, in memory or on disk
        assert group.group.retained_epochs  # those the last Commits ended
        # (once bob's monthly update is in too)
        await until(lambda: bob.plugin["mls"].freshness.record(gb).own_updated_at == clock.now)
        await synced(group, gb)
        clock.now += DAY + 1
        await until(lambda: not group.group.retained_epochs)
        await until(lambda: not bob.plugin["mls"].inbox._recent)
        with SQLiteStore(str(tmp / "alice.db")) as store:
            (record,) = store.load_groups()
        identity = alice.plugin["mls"].identity
        stored = decode_group_parts(record.state, record.ratchets, identity.config,
                                    identity.psk_lookup)
        assert stored.retained_epochs == []
        # none: a Commit that lost a race (alice and bob update at once) is not an error
        assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
    finally:
        await close(alice, bob, carol)


def test_idle_device_removed_by_admin(prosody: ProsodyServer,
                                      new_account: Callable[[str], Account],
                                      tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_idle(prosody, [new_account("alice"), new_account("bob"),
                                                 new_account("carol")], tmp_path), 240))


def test_retention_room_archive_expiry_configured(prosody: ProsodyServer) -> None:
    """The archives' expiry is a server setting (XEP-0045 and XEP-0313 define no room
    field for it): the project's Prosody writes it out, and a deployment can set it."""
    assert prosody.config_value("conference.localhost", "muc_log_expires_after") == '"1w"'
    assert prosody.config_value("localhost", "archive_expires_after") == '"1w"'
    with ProsodyServer(storage="memory", archive_expires="2d") as short:
        assert short.config_value("conference.localhost", "muc_log_expires_after") == '"2d"'
        assert short.config_value("localhost", "archive_expires_after") == '"2d"'
        # the muc_mam module took it (it logs an error for a value it cannot parse)
        assert "muc_log_expires_after" not in short.log_text()


async def _ordinary_join(server: ProsodyServer, accounts: list[Account]) -> None:
    clock = Clock()
    alice, ra = await mls_client(server, *accounts[0], config=_config(clock))
    # carol: the default (update after every join); dave turned it off
    carol, rc = await mls_client(server, *accounts[1], config=_config(clock))
    dave, rd = await mls_client(server, *accounts[2], config=_config(
        clock, update_after_join=False))
    try:
        await befriend(alice, carol, dave)
        group = await alice.plugin["mls"].create_group(
            members=[accounts[1].jid, accounts[2].jid])
        (gc,) = await rc.wait("mls_joined")
        (gd,) = await rd.wait("mls_joined")
        # dave's join scheduled no update (decided when the Welcome was joined)
        assert dave.plugin["mls"].freshness.record(gd).update_due is None
        await until(lambda: any(e.committer == accounts[1].jid
                                for e in ra.events["mls_membership"]))
        await synced(group, gc, gd)
        assert carol.plugin["mls"].freshness.record(gc).update_due is None  # done
        assert _leaf(group, accounts[1].jid).leaf_node_source == LeafNodeSource.COMMIT
        assert _leaf(group, accounts[2].jid).leaf_node_source == LeafNodeSource.KEY_PACKAGE
    finally:
        await close(alice, carol, dave)


def test_auto_update_after_ordinary_join_configurable(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_ordinary_join(prosody, [
        new_account("alice"), new_account("carol"), new_account("dave")]), 120))
