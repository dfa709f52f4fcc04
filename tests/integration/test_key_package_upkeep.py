"""KeyPackage upkeep by the plugin on real servers (Prosody, ejabberd).

A last-resort KeyPackage that a Welcome used is withdrawn and replaced
(RFC 9420 §16.8), and the periodic upkeep keeps a device reachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mls_xmpp.testing import Account, XmppServer

from .mls_clients import TIMEOUT, befriend, close, mls_client


async def _last_resort_rotated(server: XmppServer, alice_acc: Account,
                               bob_acc: Account) -> None:
    # bob keeps no pool: only a last-resort KeyPackage, so adders must use it
    bob, rb = await mls_client(server, *bob_acc, config={"pool_size": 0})
    alice, ra = await mls_client(server, *alice_acc)
    try:
        await befriend(alice, bob)
        keystore = bob.plugin["mls"].keystore
        before = await keystore.own_items()
        assert [i.last_resort for i in before] == [True]
        used = before[0].ref

        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        await rb.wait("mls_joined")

        async def rotated(away_from: bytes) -> bytes:
            """Wait until the one last-resort item is another than ``away_from``."""
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while True:
                items = await keystore.own_items()
                if [i.last_resort for i in items] == [True] and items[0].ref != away_from:
                    return items[0].ref
                assert asyncio.get_running_loop().time() < deadline, "not rotated"
                await asyncio.sleep(0.1)

        fresh = await rotated(used)
        client = bob.plugin["mls"].identity
        assert used not in client.last_resort  # withdrawn (its keys age out later)
        assert client.last_resort == {fresh}

        # bob is still reachable: a second group uses the new last resort
        second = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        await rb.wait("mls_joined", 2)
        assert {s.room for s in bob.plugin["mls"].groups} == {group.room, second.room}
        await rotated(fresh)
        # an upkeep round with nothing to do changes nothing
        now = await keystore.own_items()
        await bob.plugin["mls"].renew_key_packages()
        assert await keystore.own_items() == now
        assert rb.events["mls_error"] == [] and ra.events["mls_error"] == []
    finally:
        await close(alice, bob)


def test_used_last_resort_is_replaced(server: XmppServer,
                                      new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _last_resort_rotated(server, new_account("alice"), new_account("bob")), 120))
