"""Senders and committers around a Commit, over the real Prosody (issue 17).

What a member sees when the room takes a Commit between a message's encryption and
the message itself, and when two Commits race for one epoch: every application
message is read once by every other member, the sender sees it ``reflected``, and
nothing is reported as an error (docs/PROTOCOL.md section 9.7). The timing is made
certain with a :class:`FaultProxy` that holds one client's bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mls_xmpp.testing import Account, FaultProxy, ProsodyServer
from mls_xmpp.xmpp.late import RESEND_AFTER

from .mls_clients import Recorder, befriend, close, mls_client, synced, until


def _run(coro: Any, timeout: float = 180) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def _errors(*recorders: Recorder) -> list[list[str]]:
    return [[e.reason for e in r.events["mls_error"]] for r in recorders]


async def _stalled(server: ProsodyServer, accs: list[Account], commits: int) -> None:
    """alice's message is encrypted in epoch n; ``commits`` Commits of bob and carol
    reach the room before it (alice's stanzas wait in a stalled proxy)."""
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, ra = await mls_client(server, *accs[0], via=(proxy.host, proxy.port))
        bob, rb = await mls_client(server, *accs[1])
        carol, rc = await mls_client(server, *accs[2])
        states: list[tuple[str, str]] = []
        alice.add_event_handler("mls_outbox", lambda e: states.append((e.message_id, e.state)))
        try:
            await befriend(alice, bob, carol)
            ga = await alice.plugin["mls"].create_group(members=[accs[1].jid, accs[2].jid])
            (gb,) = await rb.wait("mls_joined")
            (gc,) = await rc.wait("mls_joined")
            await synced(ga, gb, gc)
            epoch = ga.epoch
            proxy.stall = True  # alice's stanzas wait in the proxy
            mid = await ga.send("encrypted before the Commits")
            assert ga.message_state(mid) == "sent"
            for i in range(commits):  # the room takes them; bob and carol apply them
                await (gb, gc)[i % 2].update()
            await synced(gb, gc)
            assert gb.epoch == epoch + commits and ga.epoch == epoch
            proxy.stall = False  # now alice's message, of epoch n, follows the Commits
            await synced(ga, gb, gc)
            await until(lambda: ga.message_state(mid) == "reflected")
            await rb.wait("mls_message")
            await rc.wait("mls_message")
            if commits <= RESEND_AFTER:
                # bob and carol read it with the keys of an epoch they left (past_epochs)
                read_in, path = epoch, ["queued", "sent", "reflected"]
            else:  # nobody keeps epoch n: alice sent it again, in the current epoch
                read_in = epoch + commits
                path = ["queued", "sent", "queued", "sent", "reflected"]
            for r in (rb, rc):
                assert [(m.body, m.epoch) for m in r.events["mls_message"]] == [
                    ("encrypted before the Commits", read_in)]
            assert [s for i, s in states if i == mid] == path
            assert ga.outbox == []
            # a last message after everything: nothing else was on its way
            await gc.send("last")
            await ra.wait("mls_message")
            await rb.wait("mls_message", 2)
            assert ra.bodies() == ["last"]
            assert rb.bodies() == ["encrypted before the Commits", "last"]  # once
            assert _errors(ra, rb, rc) == [[], [], []]
        finally:
            await close(alice, bob, carol)


def test_a_message_encrypted_before_a_commit_is_read_by_everyone(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_stalled(prosody, [new_account(n) for n in ("alice", "bob", "carol")], 1))


def test_a_message_the_room_took_too_late_to_be_read_is_sent_again(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    """Four Commits before it: the members keep three past epochs (``past_epochs``)."""
    _run(_stalled(prosody, [new_account(n) for n in ("alice", "bob", "carol")],
                  RESEND_AFTER + 1))


async def _race(server: ProsodyServer, accs: list[Account]) -> None:
    """bob and carol commit in epoch n while everyone sends: carol's Commit reaches the
    room first; bob's (and bob's message, encrypted in epoch n) after it."""
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, ra = await mls_client(server, *accs[0])
        bob, rb = await mls_client(server, *accs[1], via=(proxy.host, proxy.port))
        carol, rc = await mls_client(server, *accs[2])
        dave, rd = await mls_client(server, *accs[3])
        recorders = (ra, rb, rc, rd)
        try:
            await befriend(alice, bob, carol, dave)
            ga = await alice.plugin["mls"].create_group(members=[a.jid for a in accs[1:]])
            gb, gc, gd = [(await r.wait("mls_joined"))[0] for r in recorders[1:]]
            groups = (ga, gb, gc, gd)
            await synced(*groups)
            epoch = ga.epoch
            proxy.stall = True  # bob's Commit and message wait in the proxy
            bob_commit = asyncio.ensure_future(gb.update())
            await until(lambda: gb.group.pending_commit is not None)
            bob_mid = await gb.send("bob, in epoch n")
            sent = [await g.send(f"{name} before") for g, name in
                    ((ga, "alice"), (gc, "carol"), (gd, "dave"))]
            await gc.update()  # wins: the room has no other Commit for epoch n yet
            sent += [await g.send(f"{name} after") for g, name in
                     ((ga, "alice"), (gc, "carol"), (gd, "dave"))]
            proxy.stall = False
            await asyncio.wait_for(bob_commit, 60)  # lost the race, built again, won
            await synced(*groups)
            assert ga.epoch == epoch + 2
            await until(lambda: all(g.outbox == [] for g in groups))
            assert gb.message_state(bob_mid) == "reflected"
            assert all(g.message_state(m) == "reflected" for g, m in
                       zip((ga, gc, gd, ga, gc, gd), sent, strict=True))
            everyone = {"bob, in epoch n"} | {f"{n} {w}" for n in ("alice", "carol", "dave")
                                              for w in ("before", "after")}
            for r, name in zip(recorders, ("alice", "bob", "carol", "dave"), strict=True):
                mine = {b for b in everyone if b.startswith(name)}
                await r.wait("mls_message", len(everyone - mine))
            for r, name in zip(recorders, ("alice", "bob", "carol", "dave"), strict=True):
                mine = {b for b in everyone if b.startswith(name)}
                assert sorted(r.bodies()) == sorted(everyone - mine)  # each once
            # bob's losing Commit came to everyone after carol's: dropped, not an error
            assert _errors(*recorders) == [[], [], [], []]
            assert [g.healer.superseded_count for g in groups] == [1, 0, 1, 1]
        finally:
            await close(alice, bob, carol, dave)


def test_commits_racing_with_senders_lose_nothing_and_report_nothing(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_race(prosody, [new_account(n) for n in ("alice", "bob", "carol", "dave")]))


async def _join_storm(server: ProsodyServer, accs: list[Account]) -> None:
    """Six devices join at once and each updates at once (``update_join_delay`` 0), while
    the creator sends: their Commits race; every one of them ends updated."""
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        config = {"update_after_join": True, "update_join_delay": 0.0}
        alice, ra = await mls_client(server, *accs[0], config=config)
        joiners = [await mls_client(server, *a, config=config, via=(proxy.host, proxy.port))
                   for a in accs[1:]]
        recorders = [ra] + [r for _, r in joiners]
        try:
            await befriend(alice, *(c for c, _ in joiners))
            proxy.stall_down = True  # the Welcomes wait in the proxy: all come at once
            ga = await alice.plugin["mls"].create_group(members=[a.jid for a in accs[1:]])
            proxy.stall_down = False
            groups = [ga] + [(await r.wait("mls_joined"))[0] for _, r in joiners]
            bodies = [f"during the updates {i}" for i in range(10)]
            for body in bodies:
                await ga.send(body)
                await asyncio.sleep(0.05)

            def updated() -> bool:
                return all(c.plugin["mls"].freshness.record(g).update_due is None
                           for (c, _), g in zip(joiners, groups[1:], strict=True))

            await until(updated, 120)
            await synced(*groups)
            assert ga.epoch >= 1 + len(joiners)  # the add, then an update by each
            committers = {e.committer for e in ra.events["mls_membership"]}
            assert committers >= {a.jid for a in accs[1:]}
            for _, r in joiners:
                await r.wait("mls_message", len(bodies))
                assert r.bodies() == bodies
            assert [r.events["mls_error"] for r in recorders] == [[]] * len(recorders)
            print("Commits dropped as superseded:", [g.healer.superseded_count for g in groups])
        finally:
            await close(alice, *(c for c, _ in joiners))


def test_devices_joining_together_all_update_without_errors(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_join_storm(prosody, [new_account(f"m{i}") for i in range(7)]))

