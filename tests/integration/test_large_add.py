"""Adding many members over a real Prosody: several Commits, progress reported.

More additions than ``max_adds_per_commit`` are split over several Commits
(so no Commit outgrows what a room carries); every member ends in the same
epoch, and the ``mls_progress`` events report each stage of each Commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.events import STAGES

from .mls_clients import befriend, close, mls_client, synced


async def _batched(server: ProsodyServer, alice_acc: Account, others: list[Account]) -> None:
    alice, ra = await mls_client(server, *alice_acc, config={"max_adds_per_commit": 2})
    progress: list[Any] = []
    alice.add_event_handler("mls_progress", progress.append)
    members = await asyncio.gather(*(mls_client(server, *acc) for acc in others))
    try:
        await befriend(alice, *(c for c, _ in members))
        group = await alice.plugin["mls"].create_group(members=[a.jid for a in others])
        assert group.epoch == 3  # 5 additions, 2 per Commit
        sessions = [(await r.wait("mls_joined"))[0] for _, r in members]
        await synced(group, *sessions)
        assert len(group.members) == 6
        # every stage of every Commit, in order; KeyPackages fetched once, up front
        seen = [(e.stage, e.batch, e.batches) for e in progress if e.done == e.total]
        assert seen[0] == ("key packages", 1, 1)  # before the Commits are planned
        per_commit = [s for s in STAGES if s != "key packages"]
        assert seen[1:] == [(stage, b, 3) for b in (1, 2, 3) for stage in per_commit]
        assert [e.total for e in progress if e.stage == "commit" and e.done == 0] == [2, 2, 1]
        await group.send("all six of us")
        for _, r in members:
            await r.wait("mls_message")
        assert ra.events["mls_error"] == [] and all(not r.events["mls_error"]
                                                    for _, r in members)
    finally:
        await close(alice, *(c for c, _ in members))


def test_many_additions_in_several_commits(prosody: ProsodyServer,
                                           new_account: Callable[[str], Account]) -> None:
    others = [new_account(f"m{i}") for i in range(5)]
    asyncio.run(asyncio.wait_for(_batched(prosody, new_account("alice"), others), 120))
