"""The updates after joining in a group made in one go, over a real Prosody.

Every device the creator adds updates after joining (``update_after_join``). With
many of them in one group, their Commits raced: one wins each epoch, the others
were rebuilt and sent again at once (up to 16 Commits a device, O(K^2) in all,
each encrypting to nearly every leaf while the parent nodes are blank). The
updates now take turns in leaf order (each device counts, in the tree, the
leaves ahead of its own not updated yet), a device whose Commit lost backs off,
and one that no longer needs its update does not send it. These tests count the
Commits the joiners sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mls_xmpp.core.messages.common import LeafNodeSource
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Kind

from .mls_clients import close, mls_client, synced, until

JOINERS = 24


def _count_commits(client: Any) -> list[int]:
    """Count the Commits ``client`` sends to rooms (wraps its Delivery.send_room)."""
    delivery = client.plugin["mls"].delivery
    sent = [0]
    inner = delivery.send_room

    async def send_room(room: str, env: Any, **kw: Any) -> None:
        if env.kind == Kind.COMMIT:
            sent[0] += 1
        await inner(room, env, **kw)

    delivery.send_room = send_room
    return sent


def _refreshed(client: Any, group: Any) -> bool:
    leaf = group.group.state.tree.leaf(group.group.own_leaf_index)
    return (client.plugin["mls"].freshness.record(group).update_due is None
            and leaf is not None and leaf.leaf_node_source == LeafNodeSource.COMMIT)


async def _storm(server: ProsodyServer, accs: list[Account]) -> None:
    # a short delay, as a large addition has: the old code spread the joiners' updates
    # over it and let the losers retry at once
    config = {"update_after_join": True, "update_join_delay": 2.0,
              "update_join_spread": 0.5, "invitations": "any"}
    alice, ra = await mls_client(server, *accs[0], config={"invitations": "any"})
    joiners = list(await asyncio.gather(*(mls_client(server, *a, config=config)
                                          for a in accs[1:])))
    clients = [alice] + [c for c, _ in joiners]
    try:
        counts = [_count_commits(c) for c, _ in joiners]
        ga = await alice.plugin["mls"].create_group(members=[a.jid for a in accs[1:]])
        groups = [(await r.wait("mls_joined", timeout=120))[0] for _, r in joiners]
        recorders = [ra] + [r for _, r in joiners]

        def settled() -> bool:  # every joiner updated, or one gave up (the old code)
            return (all(_refreshed(c, g) for (c, _), g in zip(joiners, groups, strict=True))
                    or any(r.events["mls_error"] for r in recorders))

        await until(settled, 240)
        sent = sum(c[0] for c in counts)
        lost = sent - JOINERS
        print(f"{JOINERS} joiners sent {sent} update Commits ({lost} lost a race); "
              f"per joiner: {[c[0] for c in counts]}")
        assert [r.events["mls_error"] for r in recorders] == [[]] * (1 + JOINERS)
        await synced(ga, *groups)
        # each joiner's update is in: the add, then one epoch per update
        assert ga.epoch == 1 + JOINERS
        # the old code: 193 Commits here, up to 16 a joiner (every loser rebuilt at
        # once, 4 rounds of 4), and some joiners gave up (mls_error); now 24-32
        assert sent <= 2 * JOINERS, sent
        assert max(c[0] for c in counts) <= 4
    finally:
        await close(*clients)


def test_joiners_of_one_addition_take_turns_updating(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _storm(prosody, [new_account(f"s{i}") for i in range(JOINERS + 1)]), 600))


class Clock:
    """An injected clock that stands still (the wait itself is real time)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def _small(server: ProsodyServer, accs: list[Account]) -> None:
    clock = Clock()
    delay = 4.0  # the default spread (1 s a member) gives 3 s here: the delay rules
    config = {"update_after_join": True, "update_join_delay": delay, "clock": clock,
              "invitations": "any"}
    alice, _ = await mls_client(server, *accs[0], config={"invitations": "any"})
    others = [await mls_client(server, *a, config=config) for a in accs[1:]]
    try:
        counts = [_count_commits(c) for c, _ in others]
        ga = await alice.plugin["mls"].create_group(members=[a.jid for a in accs[1:]])
        groups = [(await r.wait("mls_joined"))[0] for _, r in others]
        for (c, _), g in zip(others, groups, strict=True):
            due = c.plugin["mls"].freshness.record(g).update_due
            if due is not None:  # else already sent
                assert clock.now <= due <= clock.now + delay
        await until(lambda: all(_refreshed(c, g) for (c, _), g in
                                zip(others, groups, strict=True)), 60)
        await synced(ga, *groups)
        assert ga.epoch == 3
        assert [c[0] for c in counts] in ([1, 1], [1, 2], [2, 1])
    finally:
        await close(alice, *(c for c, _ in others))


def test_small_group_updates_within_the_configured_delay(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _small(prosody, [new_account(n) for n in ("alice", "bob", "carol")]), 120))
