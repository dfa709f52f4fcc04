"""ejabberd as the Delivery Service: the fixture itself, and a two-node cluster.

The cluster (:class:`mls_xmpp.testing.EjabberdCluster`): two Erlang nodes of
ejabberd 23.01 on this machine serving one domain (mnesia replicates accounts,
rooms, archives and PEP; a room is one process reachable from both nodes).
Members of one group connect to different nodes; the tests check what a user
of a cluster gets: one order of messages and Commits for everyone, catch-up
from the room archive through the other node, and a node stopped and
restarted in the middle of a conversation without a message lost or doubled:
a member's node, or the node the room's process lives on (its occupants on the
other node are told "system shutdown", status 332: their groups are suspended
and resume when the room, restarted on the node that is up, takes them again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mls_xmpp.errors import GroupSuspendedError
from mls_xmpp.testing import (
    Account,
    ClientError,
    EjabberdCluster,
    EjabberdError,
    EjabberdServer,
    connect_client,
    disconnect_client,
    find_ejabberdctl,
)

from .mls_clients import TIMEOUT, Recorder, befriend, close, mls_client, synced, until

SCENARIO_TIMEOUT = 180


def test_ejabberd_server_lifecycle(ejabberd: EjabberdServer) -> None:
    """A second, private node: own ports, node name and directory, accounts, restart
    on its spool, clean stop by PID."""
    server = EjabberdServer()
    with server:
        assert server.running
        assert {server.c2s_port, server.http_port, server.s2s_port}.isdisjoint(
            {ejabberd.c2s_port, ejabberd.http_port, ejabberd.s2s_port})
        assert server.node != ejabberd.node
        assert server.directory != ejabberd.directory
        alice = server.create_user("alice", "alice-pw")
        assert alice.jid == "alice@localhost"
        with pytest.raises(EjabberdError, match="already registered"):
            server.create_user("alice", "other-pw")
        with pytest.raises(ValueError):
            server.create_user("Alice!", "pw")

        async def login() -> None:
            client = await connect_client(server, *alice, timeout=TIMEOUT)
            await disconnect_client(client)
            with pytest.raises(ClientError, match="authentication failed"):
                await connect_client(server, alice.jid, "wrong-pw", timeout=TIMEOUT)

        asyncio.run(login())
        pid, directory = server.pid, server.directory
        server.stop_process()  # the state stays: a restart has the account
        assert not server.running and directory.exists()
        server.start()
        assert server.pid != pid
        assert server.api("registered_users", host="localhost") == ["alice"]
        pid = server.pid
    assert not server.running
    assert not directory.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    server.stop()  # idempotent
    assert server.start_seconds is not None and server.stop_seconds is not None


@pytest.fixture(scope="module")
def cluster() -> Iterator[EjabberdCluster]:
    """Two ejabberd nodes joined in a cluster; stopped (by PID) with their epmd at the end."""
    if find_ejabberdctl() is None:
        pytest.fail("ejabberd is not installed: run bin/setup (Debian package 'ejabberd')")
    with EjabberdCluster() as c:
        print(f"\ncluster: nodes started in "
              f"{', '.join(f'{n.start_seconds:.2f}' for n in c.nodes)} s, "
              f"join_cluster {c.join_seconds[0]:.2f} s")
        yield c


def test_cluster_nodes_form_one_cluster(cluster: EjabberdCluster) -> None:
    a, b = cluster.nodes
    assert sorted(cluster.running_nodes(a)) == sorted(cluster.running_nodes(b)) \
        == sorted([a.node, b.node])
    acc = b.create_account("probe")  # an account made through one node exists on both
    users = a.api("registered_users", host="localhost")
    assert isinstance(users, list) and acc.jid.split("@")[0] in users


def _same_order(seqs: list[list[str]]) -> None:
    """Every two members saw the messages both received in the same relative order."""
    for i, x in enumerate(seqs):
        for y in seqs[i + 1:]:
            common = set(x) & set(y)
            assert [m for m in x if m in common] == [m for m in y if m in common]


async def _one_order(cluster: EjabberdCluster, acc: dict[str, Account]) -> None:
    a, b = cluster.nodes
    # alice and carol on node a, bob and dave on node b
    on = {"alice": a, "bob": b, "carol": a, "dave": b}
    clients: dict[str, tuple[Any, Recorder]] = {}
    for name in on:
        clients[name] = await mls_client(on[name], *acc[name])
    try:
        await befriend(*(c for c, _ in clients.values()))
        group = await clients["alice"][0].plugin["mls"].create_group(
            members=[acc[n].jid for n in ("bob", "carol", "dave")])
        sessions = {"alice": group}
        for name in ("bob", "carol", "dave"):
            (sessions[name],) = await clients[name][1].wait("mls_joined")
        await synced(*sessions.values())

        # everyone talks at once, from both nodes
        n = 8

        async def talk(name: str) -> None:
            for i in range(n):
                await sessions[name].send(f"{name}-{i}")

        await asyncio.gather(*(talk(name) for name in sessions))
        for _, rec in clients.values():
            await rec.wait("mls_message", 3 * n)
        seqs = [rec.bodies() for _, rec in clients.values()]
        for name, (_, rec) in clients.items():
            others = {f"{o}-{i}" for o in sessions if o != name for i in range(n)}
            assert sorted(rec.bodies()) == sorted(others), name  # all, each once
        _same_order(seqs)
        for _, rec in clients.values():
            assert rec.events["mls_error"] == []

        # two Commits at once from the two nodes: one epoch for everyone (the room's
        # order picks the first; the other, for an epoch gone, is dropped without a report)
        epoch = group.epoch
        await asyncio.gather(sessions["bob"].update(), sessions["carol"].update())
        await synced(*sessions.values())
        assert group.epoch > epoch
        await sessions["dave"].send("after the commits")
        for name in ("alice", "bob", "carol"):
            await until(lambda r=clients[name][1]: "after the commits" in r.bodies())
        for _, rec in clients.values():
            assert rec.events["mls_error"] == []
    finally:
        await close(*(c for c, _ in clients.values()))


def test_cluster_members_on_both_nodes_see_one_order(
        cluster: EjabberdCluster) -> None:
    acc = {n: cluster.first.create_account(n) for n in ("alice", "bob", "carol", "dave")}
    asyncio.run(asyncio.wait_for(_one_order(cluster, acc), SCENARIO_TIMEOUT))


async def _catch_up(cluster: EjabberdCluster, alice_acc: Account, bob_acc: Account,
                    db: Path) -> None:
    a, b = cluster.nodes
    alice, ra = await mls_client(a, *alice_acc)
    bob, rb = await mls_client(b, *bob_acc, config={"store": str(db)})
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        (gb,) = await rb.wait("mls_joined")
        await synced(group, gb)
        await group.send("one")
        await rb.wait("mls_message", 1)
        await close(bob)  # bob goes away from node b ...

        await group.send("two")
        await group.update()
        await group.send("three")

        # ... and comes back through node a: the archive has what he missed
        bob2, rb2 = await mls_client(a, *bob_acc, config={"store": str(db)})
        try:
            await rb2.wait("mls_message", 2)
            assert rb2.bodies() == ["two", "three"]
            (gb2,) = bob2.plugin["mls"].groups
            await synced(group, gb2)
            await gb2.send("bob is back")
            await ra.wait("mls_message", 1)
            assert ra.bodies() == ["bob is back"]
        finally:
            await close(bob2)
    finally:
        await close(alice)


def test_cluster_catch_up_from_the_archive_through_the_other_node(
        cluster: EjabberdCluster, tmp_path: Path) -> None:
    accounts = [cluster.first.create_account(n) for n in ("alice", "bob")]
    asyncio.run(asyncio.wait_for(
        _catch_up(cluster, *accounts, tmp_path / "bob.db"), SCENARIO_TIMEOUT))


def _cluster_is(cluster: EjabberdCluster, via: EjabberdServer, nodes: list[str]) -> bool:
    """Whether ``via`` soon sees exactly ``nodes`` running (mnesia notices a node going
    or coming within moments)."""
    for _ in range(40):
        if sorted(cluster.running_nodes(via)) == sorted(nodes):
            return True
        time.sleep(0.25)
    return False


async def _node_restart(cluster: EjabberdCluster, accounts: dict[str, Account],
                        stopped: int, tmp: Path) -> None:
    """Node ``stopped`` goes down mid-conversation and comes back on its spool.

    alice creates the group (and its room) through node a; bob is on node b;
    carol is on the node that stays up. The member on the stopped node loses
    the connection and, once the node is back, starts again from its store on
    it; the other two talk meanwhile.
    """
    nodes = cluster.nodes
    up = nodes[1 - stopped]
    home = {"alice": nodes[0], "bob": nodes[1], "carol": up}
    leaver = "alice" if stopped == 0 else "bob"
    stayers = [n for n in ("alice", "bob", "carol") if n != leaver]
    stores = {n: {"store": str(tmp / f"{n}.db")} for n in ("alice", "bob")}
    clients: dict[str, tuple[Any, Recorder]] = {}
    for name in ("alice", "bob", "carol"):
        clients[name] = await mls_client(home[name], *accounts[name],
                                         config=stores.get(name))
    try:
        await befriend(*(c for c, _ in clients.values()))
        group = await clients["alice"][0].plugin["mls"].create_group(
            members=[accounts["bob"].jid, accounts["carol"].jid])
        sessions = {"alice": group}
        for name in ("bob", "carol"):
            (sessions[name],) = await clients[name][1].wait("mls_joined")
        await synced(*sessions.values())
        # each message is sent once the previous one was read (so the room's order
        # is the order sent)
        await sessions["alice"].send("before 1")
        await clients["bob"][1].wait("mls_message", 1)
        await sessions["bob"].send("before 2")
        await clients["carol"][1].wait("mls_message", 2)

        # the node goes down under one member in the middle of the conversation
        await asyncio.to_thread(nodes[stopped].stop_process)
        await close(clients.pop(leaver)[0])
        assert await asyncio.to_thread(_cluster_is, cluster, up, [up.node])
        if stopped == 0:
            # the room's process lived on the stopped node: it told its occupants
            # (status 332, system shutdown); their groups are suspended, and resume
            # when the room, restarted on the node that is up, takes them again
            for name in stayers:
                await clients[name][1].wait("mls_error")
            await until(lambda: all(sessions[n].suspended is None and sessions[n].ready.is_set()
                                    for n in stayers), 60)
        s1, s2 = stayers
        await sessions[s1].send("during 1")
        await until(lambda: "during 1" in clients[s2][1].bodies())
        await sessions[s2].send("during 2")
        await sessions[s2].update()
        await sessions[s1].send("during 3")
        await until(lambda: "during 2" in clients[s1][1].bodies())

        await asyncio.to_thread(nodes[stopped].start)  # its spool: it rejoins by itself
        assert await asyncio.to_thread(_cluster_is, cluster, up, [n.node for n in nodes])
        back, rback = await mls_client(home[leaver], *accounts[leaver],
                                       config=stores[leaver])
        clients[leaver] = (back, rback)
        await rback.wait("mls_message", 3)
        assert rback.bodies() == ["during 1", "during 2", "during 3"]  # none lost or twice
        (sessions[leaver],) = back.plugin["mls"].groups
        await synced(*sessions.values())
        await sessions[leaver].send("after")
        for name in stayers:
            await until(lambda r=clients[name][1]: "after" in r.bodies())
        everything = ["before 1", "before 2", "during 1", "during 2", "during 3", "after"]
        for name in stayers:
            mine = {"alice": {"before 1"}, "bob": {"before 2"}, "carol": set()}[name]
            mine |= {"during 1"} if name == s1 else set()
            mine |= {"during 2"} if name == s2 else set()
            mine |= {"during 3"} if name == s1 else set()
            assert clients[name][1].bodies() == [m for m in everything if m not in mine], name
            errors = clients[name][1].events["mls_error"]
            assert all(isinstance(e.error, GroupSuspendedError) and "332" in e.reason
                       for e in errors) and len(errors) == (1 if stopped == 0 else 0)
    finally:
        await close(*(c for c, _ in clients.values()))


@pytest.mark.parametrize("stopped", [1, 0], ids=["member-node", "room-creator-node"])
def test_cluster_node_restarted_mid_conversation_loses_nothing(
        cluster: EjabberdCluster, tmp_path: Path, stopped: int) -> None:
    accounts = {n: cluster.first.create_account(n) for n in ("alice", "bob", "carol")}
    asyncio.run(asyncio.wait_for(
        _node_restart(cluster, accounts, stopped, tmp_path), SCENARIO_TIMEOUT))
