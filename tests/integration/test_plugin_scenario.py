"""The architecture's scenario on Prosody and ejabberd (RFC 9750 §2, issue "slixmpp plugin").

alice, bob and charlie publish KeyPackages; alice creates a group with bob
and charlie; messages flow every way; bob updates his keys; alice removes
charlie, who cannot read what follows; dave is offline when added and, once
online, reads every message he was meant to, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mls_xmpp.core.group.client import Client
from mls_xmpp.storage import MemoryStore
from mls_xmpp.testing import Account, XmppServer

from .mls_clients import TIMEOUT, befriend, close, mls_client


async def _scenario(server: XmppServer, accounts: dict[str, Account]) -> None:
    alice, ra = await mls_client(server, *accounts["alice"])
    bob, rb = await mls_client(server, *accounts["bob"])
    charlie, rc = await mls_client(server, *accounts["charlie"])
    # dave publishes his KeyPackages, then goes offline; his device keeps its
    # identity and KeyPackage keys in its store across the two sessions
    dave_device = {"client": Client.generate(accounts["dave"].jid.encode()),
                   "store": MemoryStore()}
    dave, _ = await mls_client(server, *accounts["dave"], config=dave_device)
    await befriend(alice, bob, charlie, dave)  # contacts: each may invite the others
    await close(dave)
    try:
        group = await alice.plugin["mls"].create_group(
            members=[accounts["bob"].jid, accounts["charlie"].jid])
        (gb,) = await rb.wait("mls_joined")
        (gc,) = await rc.wait("mls_joined")
        await asyncio.wait_for(asyncio.gather(gb.ready.wait(), gc.ready.wait()), TIMEOUT)
        assert gb.epoch == gc.epoch == group.epoch
        assert gb.group.epoch_authenticator == group.group.epoch_authenticator

        await group.send("hello from alice")
        await gb.send("hello from bob")
        await gc.send("hello from charlie")
        await ra.wait("mls_message", 2)
        await rb.wait("mls_message", 2)
        await rc.wait("mls_message", 2)
        assert sorted(ra.bodies()) == ["hello from bob", "hello from charlie"]
        assert sorted(rb.bodies()) == ["hello from alice", "hello from charlie"]

        await gb.update()  # bob's fresh keys (post-compromise security)
        await ra.wait("mls_membership", 2)
        await rc.wait("mls_membership", 1)
        await group.send("after bob's update")
        await rb.wait("mls_message", 3)
        assert rb.bodies()[-1] == "after bob's update"
        assert group.group.epoch_authenticator == gb.group.epoch_authenticator

        await group.remove(accounts["charlie"].jid)
        await rb.wait("mls_membership", 2)
        seen_by_charlie = len(rc.bodies())
        await group.add(accounts["dave"].jid)  # dave is offline
        await group.send("secret after charlie left")
        await rb.wait("mls_message", 4)
        assert rb.bodies()[-1] == "secret after charlie left"
        await asyncio.sleep(0.5)
        assert len(rc.bodies()) == seen_by_charlie, "charlie must not read after removal"

        dave2, rd2 = await mls_client(server, *accounts["dave"], config=dave_device)
        try:
            (gd,) = await rd2.wait("mls_joined")
            await asyncio.wait_for(gd.ready.wait(), TIMEOUT)
            await rd2.wait("mls_message", 1)
            assert rd2.bodies() == ["secret after charlie left"]
            assert gd.group.epoch_authenticator == group.group.epoch_authenticator
            await gd.send("dave is here")
            await ra.wait("mls_message", 3)
            assert ra.bodies()[-1] == "dave is here"
        finally:
            await close(dave2)
    finally:
        await close(alice, bob, charlie)


def test_architecture_scenario(server: XmppServer,
                               new_account: Callable[[str], Account]) -> None:
    accounts = {n: new_account(n) for n in ("alice", "bob", "charlie", "dave")}
    asyncio.run(asyncio.wait_for(_scenario(server, accounts), 180))

