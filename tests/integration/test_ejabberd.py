"""ejabberd as the Delivery Service: the fixture itself, and a two-node cluster.

The cluster (:class:`mls_xmpp.testing.EjabberdCluster`): two Erlang nodes of
ejabberd 23.01 on this machine serving one domain (mnesia replicates accounts,
rooms, archives and PEP; a room is one process reachable from both nodes).
Members of one group connect to different nodes; the tests check what a user
of a cluster gets: one order of messages and Commits for everyone, catch-up
from the room archive through the other node, and a node stopped and
restarted in the middle of a conversation without a message lost or doubled.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mls_xmpp.core.errors import WrongEpochError
from mls_xmpp.testing import (
    Account,
    ClientError,
    EjabberdCluster,
    EjabberdError,
    EjabberdServer,
    connect_client,
    disconnect_client,
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
    if shutil.which("ejabberdctl") is None:
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
        # order picks the first; the other, for an epoch gone, is reported and dropped)
        epoch = group.epoch
        await asyncio.gather(sessions["bob"].update(), sessions["carol"].update())
        await synced(*sessions.values())
        assert group.epoch > epoch
        await sessions["dave"].send("after the commits")
        for name in ("alice", "bob", "carol"):
            await until(lambda r=clients[name][1]: "after the commits" in r.bodies())
        for _, rec in clients.values():
            assert all(isinstance(e.error, WrongEpochError) for e in rec.events["mls_error"])
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


async def _node_restart(cluster: EjabberdCluster, alice_acc: Account, bob_acc: Account,
                        carol_acc: Account, db: Path) -> None:
    a, b = cluster.nodes
    alice, ra = await mls_client(a, *alice_acc)
    carol, rc = await mls_client(a, *carol_acc)
    bob, rb = await mls_client(b, *bob_acc, config={"store": str(db)})
    try:
        await befriend(alice, bob, carol)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid, carol_acc.jid])
        (gb,) = await rb.wait("mls_joined")
        (gc,) = await rc.wait("mls_joined")
        await synced(group, gb, gc)
        await group.send("before 1")
        await gb.send("before 2")
        await rb.wait("mls_message", 1)
        await rc.wait("mls_message", 2)

        # node b goes down under bob in the middle of the conversation
        await asyncio.to_thread(b.stop_process)
        await close(bob)
        assert await asyncio.to_thread(_cluster_is, cluster, a, [a.node])
        await group.send("during 1")
        await gc.send("during 2")
        await gc.update()
        await group.send("during 3")
        await ra.wait("mls_message", 2)

        await asyncio.to_thread(b.start)  # on its spool: it rejoins the cluster by itself
        assert await asyncio.to_thread(_cluster_is, cluster, b, [a.node, b.node])
        bob2, rb2 = await mls_client(b, *bob_acc, config={"store": str(db)})
        try:
            await rb2.wait("mls_message", 3)
            assert rb2.bodies() == ["during 1", "during 2", "during 3"]  # none lost or twice
            (gb2,) = bob2.plugin["mls"].groups
            await synced(group, gb2, gc)
            await gb2.send("after")
            await ra.wait("mls_message", 3)
            await rc.wait("mls_message", 3)
            assert ra.bodies() == ["before 2", "during 2", "after"]
            assert rc.bodies() == ["before 1", "before 2", "during 1", "during 3", "after"]
            assert ra.events["mls_error"] == [] and rc.events["mls_error"] == []
        finally:
            await close(bob2)
    finally:
        await close(alice, carol)


def test_cluster_node_restarted_mid_conversation_loses_nothing(
        cluster: EjabberdCluster, tmp_path: Path) -> None:
    accounts = [cluster.first.create_account(n) for n in ("alice", "bob", "carol")]
    asyncio.run(asyncio.wait_for(
        _node_restart(cluster, *accounts, tmp_path / "bob.db"), SCENARIO_TIMEOUT))
