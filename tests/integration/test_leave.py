"""Leaving a group over a real Prosody: a lost leave proposal is sent again.

A proposal belongs to its epoch (RFC 9420 §12). When a Commit that does not
include a device's leave proposal ends the epoch, the proposal is gone; the
device sends it again in the new epoch, so it is removed at the next Commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mls_xmpp.testing import Account, ProsodyServer

from .mls_clients import befriend, close, mls_client, synced, until


async def _lost_leave(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                      carol_acc: Account) -> None:
    alice, _ = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    carol, rc = await mls_client(server, *carol_acc)
    try:
        await befriend(alice, bob, carol)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid, carol_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        gc = (await rc.wait("mls_joined"))[0]
        await synced(group, gb, gc)
        # alice, the designated committer (lowest leaf), is away: nobody commits at once
        await close(alice)

        await gb.leave()
        await until(lambda: len(gc.group.state.proposals) == 1)
        # carol commits without having the proposal (as if it reached her too late)
        gc.group.state.proposals.clear()
        epoch = gc.epoch
        await gc.update()
        await until(lambda: gb.epoch == epoch + 1)
        assert bob_acc.jid in gc.jids() and rb.events["mls_removed"] == []
        # bob's proposal died with epoch N; he sends it again in epoch N + 1
        await until(lambda: len(gc.group.state.proposals) == 1)
        await gc.update()  # every Commit includes the cached proposals
        await rb.wait("mls_removed")
        assert gc.jids() == {alice_acc.jid, carol_acc.jid}
        assert rc.events["mls_error"] == [] and rb.events["mls_error"] == []
    finally:
        await close(bob, carol)


def test_lost_leave_proposal_is_sent_again(prosody: ProsodyServer,
                                           new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_lost_leave(prosody, new_account("alice"),
                                             new_account("bob"), new_account("carol")), 120))
