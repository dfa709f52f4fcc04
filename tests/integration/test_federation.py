"""An MLS group across two federating servers (s2s): a.test and b.test.

Each test runs twice: on two Prosody servers, and across implementations with
ejabberd as a.test's role (``e.test``) and Prosody as b.test's (``p.test``).

alice@a.test and carol@a.test, bob@b.test and dave@b.test. KeyPackages are
fetched from the other domain's PEP both ways; alice creates the group (its
room is on conference.a.test) with bob and carol while bob is offline: his
Welcome crosses s2s to his bare JID and waits in b.test's offline store; once
online he joins the remote room and reads, from its archive (MAM across s2s),
the messages sent meanwhile. Then messages flow every way, bob updates his
keys, carol adds dave (online, on b.test), bob (remote) removes carol (a
local member: MUC affiliation changed across s2s), alice removes dave; all
members agree on the epoch_authenticator throughout.

Timings of each phase are printed (``pytest -s``) and attached to the report
as ``federation_timings``.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mls_xmpp.core.group.client import Client
from mls_xmpp.storage import MemoryStore
from mls_xmpp.testing import Account, Federation, MixedFederation, find_ejabberdctl

from .mls_clients import TIMEOUT, Recorder, befriend, close, mls_client

SCENARIO_TIMEOUT = 180
ROUND_TRIPS = 20


@pytest.fixture(scope="module", params=["prosody", "ejabberd-prosody"])
def federation(request: pytest.FixtureRequest) -> Iterator[Federation | MixedFederation]:
    """Two federating servers, stopped by PID at the end: a.test (127.0.0.1) and b.test
    (127.0.0.2), both Prosody; then across implementations: e.test on ejabberd
    (127.0.0.3) as ``a`` and p.test on Prosody (127.0.0.4) as ``b``."""
    if shutil.which("prosody") is None:
        pytest.fail("prosody is not installed: run bin/setup (Debian package 'prosody')")
    if request.param == "prosody":
        with Federation() as fed:
            yield fed
        return
    if find_ejabberdctl() is None:
        pytest.fail("ejabberd is not installed: run bin/setup (Debian package 'ejabberd')")
    with MixedFederation() as mixed:
        yield mixed


class Timings:
    """Named durations of the scenario's phases."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self._t = time.monotonic()

    def lap(self, name: str) -> None:
        """Record the time since the previous lap under ``name``."""
        now = time.monotonic()
        self.values[name] = now - self._t
        self._t = now

    def report(self) -> str:
        return "\n".join(f"  {name:<52} {1000 * s:9.1f} ms" for name, s in self.values.items())


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait until ``condition()`` holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.002)


def authenticators(*sessions: Any) -> set[bytes]:
    return {s.group.epoch_authenticator for s in sessions}


async def latency(sender: Any, receiver: Recorder, label: str, n: int) -> list[float]:
    """Send ``n`` messages one at a time; seconds from each send to its receipt."""
    out = []
    for i in range(n):
        body = f"{label} #{i}"
        t0 = time.monotonic()
        await sender.send(body)

        def received(body: str = body) -> bool:
            return body in receiver.bodies()

        await until(received, f"{label} #{i} received")
        out.append(time.monotonic() - t0)
    return out


async def _scenario(fed: Federation | MixedFederation, acc: dict[str, Account], t: Timings) -> None:
    a, b = fed.a, fed.b
    alice, ra = await mls_client(a, *acc["alice"])
    carol, rc = await mls_client(a, *acc["carol"])
    # bob's device keeps its identity and KeyPackage keys across his two sessions
    bob_client = Client.generate(acc["bob"].jid.encode())
    # a.test hands out upload URLs on its IP address (no DNS here), which is no name
    # under a.test: bob's device is told that origin is a.test's (docs/PROTOCOL.md §11.2)
    bob_device = {"client": bob_client, "store": MemoryStore(),
                  "blob_origins": (f"http://{a.host}:{a.http_port}",)}
    bob, _ = await mls_client(b, *acc["bob"], config=bob_device)
    dave, rd = await mls_client(b, *acc["dave"])
    t.lap("connect 4 clients (KeyPackages published)")
    clients = [alice, carol, dave]
    try:
        # -- KeyPackages from the other domain's PEP, both ways --------------------
        mls_a, mls_b = alice.plugin["mls"], bob.plugin["mls"]
        from_a = await mls_b.keystore.fetch(acc["alice"].jid)
        t.lap("bob@b fetches alice's KeyPackages from a.test (first s2s use)")
        from_b = await mls_a.keystore.fetch(acc["bob"].jid)
        t.lap("alice@a fetches bob's KeyPackages from b.test")
        assert len(from_a) == 1 and from_a[0].jid == acc["alice"].jid
        assert from_a[0].key_package.leaf_node.credential.identity == acc["alice"].jid.encode()
        assert len(from_b) == 1 and from_b[0].jid == acc["bob"].jid
        assert from_b[0].key_package.leaf_node.signature_key == bob_client.signature_public_key

        # -- a blob uploaded on a.test, fetched by a b.test member -------------------
        blob = bytes(range(256)) * 64
        ref = await mls_a.delivery.upload(blob, "federation-check")
        assert ref.url.startswith(f"http://{a.host}:{a.http_port}/")
        assert await mls_b.delivery.download(ref) == blob
        t.lap("upload on a.test, download by bob@b")

        await befriend(alice, carol, bob, dave)  # contacts, across the two servers
        t.lap("the four become mutual roster contacts")
        await close(bob)  # bob goes offline
        t.lap("bob disconnects")

        # -- alice creates the group: bob (offline, remote) and carol -----------------
        group = await mls_a.create_group(members=[acc["bob"].jid, acc["carol"].jid])
        t.lap("create group + add bob@b (offline) and carol@a")
        assert group.room.endswith(f"@{a.muc_domain}")
        (gc,) = await rc.wait("mls_joined")
        await asyncio.wait_for(gc.ready.wait(), TIMEOUT)
        t.lap("carol joined")
        await group.send("m1 from alice while bob is offline")
        await until(lambda: len(rc.bodies()) == 1, "m1 at carol")  # room order: m1, m2
        await gc.send("m2 from carol while bob is offline")
        await until(lambda: len(ra.bodies()) == 1, "m2 at alice")
        t.lap("m1, m2 sent and received on a.test")

        # -- bob comes online: offline Welcome across s2s, remote room, MAM catch-up ---
        bob, rb = await mls_client(b, *acc["bob"], config=bob_device)
        clients.append(bob)
        t.lap("bob reconnects (mls_ready)")
        (gb,) = await rb.wait("mls_joined")
        assert gb.room == group.room
        await asyncio.wait_for(gb.ready.wait(), TIMEOUT)
        await until(lambda: len(rb.bodies()) == 2, "bob caught up on m1, m2")
        t.lap("bob: offline Welcome, joins room@a, MAM catch-up")
        assert rb.bodies() == ["m1 from alice while bob is offline",
                               "m2 from carol while bob is offline"]
        assert [e.sender for e in rb.events["mls_message"]] == [acc["alice"].jid,
                                                                  acc["carol"].jid]
        assert gb.epoch == gc.epoch == group.epoch
        assert len(authenticators(group, gb, gc)) == 1

        # -- messages every way ---------------------------------------------------------
        await gb.send("hello from bob@b")
        await until(lambda: "hello from bob@b" in ra.bodies()
                    and "hello from bob@b" in rc.bodies(), "bob's message at alice and carol")
        t.lap("bob@b -> room@a -> alice, carol")
        await group.send("hello from alice@a")
        await gc.send("hello from carol@a")
        await until(lambda: {"hello from alice@a", "hello from carol@a"} <= set(rb.bodies()),
                    "alice's and carol's messages at bob")
        await until(lambda: "hello from alice@a" in rc.bodies()
                    and "hello from carol@a" in ra.bodies(), "local messages")
        t.lap("alice, carol -> room@a -> bob@b")
        a_to_b = await latency(group, rb, "alice->bob", ROUND_TRIPS)
        b_to_a = await latency(gb, ra, "bob->alice", ROUND_TRIPS)
        a_to_c = await latency(group, rc, "alice->carol", ROUND_TRIPS)
        t.lap(f"{3 * ROUND_TRIPS} one-at-a-time latency messages")
        for name, xs in (("alice@a -> bob@b", a_to_b), ("bob@b -> alice@a", b_to_a),
                         ("alice@a -> carol@a", a_to_c)):
            t.values[f"  message {name}: median"] = statistics.median(xs)
            t.values[f"  message {name}: max"] = max(xs)

        # -- bob (remote) updates his keys ----------------------------------------------
        epoch = group.epoch
        await gb.update()
        t.lap("bob's update committed (room@a reflected it)")
        await until(lambda: group.epoch == gc.epoch == epoch + 1, "update at alice and carol")
        t.lap("alice and carol processed bob's update")
        assert len(authenticators(group, gb, gc)) == 1
        # alice: her Commit that created the group, then bob's (empty, with a new path)
        last = (await ra.wait("mls_membership", 2))[-1]
        assert (last.committer, last.added, last.removed) == (acc["bob"].jid, (), ())
        await group.send("after bob's update")
        await until(lambda: "after bob's update" in rb.bodies(), "message after the update")

        # -- carol adds dave@b.test, who is online: Welcome across s2s -------------------
        await gc.add(acc["dave"].jid)
        t.lap("carol adds dave@b (online)")
        (gd,) = await rd.wait("mls_joined")
        await asyncio.wait_for(gd.ready.wait(), TIMEOUT)
        t.lap("dave joined the remote room and caught up")
        await until(lambda: group.epoch == gb.epoch == gc.epoch == gd.epoch,
                    "everyone at dave's epoch")
        assert len(authenticators(group, gb, gc, gd)) == 1
        await gd.send("dave@b is here")
        await until(lambda: all("dave@b is here" in r.bodies() for r in (ra, rb, rc)),
                    "dave's message everywhere")
        t.lap("dave's first message at alice, bob, carol")

        # -- bob (remote) removes carol (local): affiliation set across s2s -------------
        seen_by_carol = len(rc.bodies())
        await gb.remove(acc["carol"].jid)
        t.lap("bob@b removes carol@a")
        await until(lambda: group.epoch == gd.epoch == gb.epoch, "removal at alice, dave")
        await rc.wait("mls_removed")
        assert acc["carol"].jid not in gb.jids() | group.jids() | gd.jids()
        assert len(authenticators(group, gb, gd)) == 1
        await group.send("secret after carol left")
        await until(lambda: all("secret after carol left" in r.bodies() for r in (rb, rd)),
                    "message after the removal")
        t.lap("carol removed; next message at bob and dave")
        # bob (an admin) cannot take carol's (an admin's) affiliation; alice, the room's
        # owner, does when she sees the Commit (docs/PROTOCOL.md 9.2)
        async def affiliations() -> dict[str, str]:
            return await alice.plugin["mls"].delivery.affiliations(group.room)

        for _ in range(100):
            if acc["carol"].jid not in await affiliations():
                break
            await asyncio.sleep(0.1)
        current = await affiliations()
        assert acc["carol"].jid not in current
        assert current[acc["bob"].jid] == "admin"
        await asyncio.sleep(0.3)
        assert len(rc.bodies()) == seen_by_carol, "carol must not read after her removal"
        t.lap("room affiliations checked; 300 ms for stray messages to carol")

        # -- alice removes dave (remote) ------------------------------------------------
        await group.remove(acc["dave"].jid)
        await rd.wait("mls_removed")
        await until(lambda: gb.epoch == group.epoch, "dave's removal at bob")
        assert group.jids() == gb.jids() == {acc["alice"].jid, acc["bob"].jid}
        assert len(authenticators(group, gb)) == 1
        await gb.send("just the two of us")
        await until(lambda: "just the two of us" in ra.bodies(), "last message")
        t.lap("alice removes dave@b; last message")
        errors = {name: r.events["mls_error"] for name, r in
                  (("alice", ra), ("bob", rb), ("carol", rc), ("dave", rd))}
        assert not any(errors.values()), errors
    finally:
        await close(*clients)
        t.lap("disconnect")


def test_group_across_two_servers(federation: Federation | MixedFederation,
                                  record_property: Callable[[str, object], None]) -> None:
    fed = federation
    accounts = {
        "alice": fed.a.create_account("alice"),
        "carol": fed.a.create_account("carol"),
        "bob": fed.b.create_account("bob"),
        "dave": fed.b.create_account("dave"),
    }
    timings = Timings()
    try:
        asyncio.run(asyncio.wait_for(_scenario(fed, accounts, timings), SCENARIO_TIMEOUT))
    except BaseException:
        print(fed.log_tails(60))
        raise
    finally:
        print(f"\nfederation start {1000 * (fed.start_seconds or 0):.0f} ms "
              f"(a {1000 * (fed.a.start_seconds or 0):.0f} ms, "
              f"b {1000 * (fed.b.start_seconds or 0):.0f} ms, s2s pings "
              + ", ".join(f"{1000 * p:.1f} ms" for p in fed.ping_seconds or ()) + ")")
        print(timings.report())
        record_property("federation_timings", timings.values)


async def _hosted_on_b(fed: Federation | MixedFederation, acc: dict[str, Account],
                       t: Timings) -> None:
    bob, rb = await mls_client(fed.b, *acc["bob"])
    alice, ra = await mls_client(fed.a, *acc["alice"])
    try:
        await befriend(alice, bob)
        t.lap("connect bob@b, alice@a")
        group = await bob.plugin["mls"].create_group(members=[acc["alice"].jid])
        assert group.room.endswith(f"@{fed.b.muc_domain}")
        (ga,) = await ra.wait("mls_joined")
        await asyncio.wait_for(ga.ready.wait(), TIMEOUT)
        t.lap("bob@b creates a group on conference.b.test with alice@a")
        await ga.send("hi bob, from a.test")
        await group.send("hi alice, from b.test")
        await until(lambda: ra.bodies() == ["hi alice, from b.test"]
                    and rb.bodies() == ["hi bob, from a.test"], "one message each way")
        await ga.update()
        await until(lambda: group.epoch == ga.epoch, "alice's update at bob")
        assert len(authenticators(group, ga)) == 1
        t.lap("a message each way, alice's update")
    finally:
        await close(alice, bob)


def test_group_hosted_on_b(federation: Federation | MixedFederation) -> None:
    """The other direction: the room on conference.b.test, a member from a.test."""
    fed = federation
    accounts = {"alice": fed.a.create_account("alice"), "bob": fed.b.create_account("bob")}
    timings = Timings()
    try:
        asyncio.run(asyncio.wait_for(_hosted_on_b(fed, accounts, timings), SCENARIO_TIMEOUT))
    except BaseException:
        print(fed.log_tails(60))
        raise
    finally:
        print("\n" + timings.report())


def test_federation_lifecycle() -> None:
    """Start/stop: both servers are gone (by PID) afterwards, their directories removed."""
    fed = Federation(storage="memory")
    with fed:
        pids = [s.pid for s in fed.servers]
        dirs = [s.directory for s in fed.servers]
        assert fed.running
        assert fed.server_of("x@conference.b.test") is fed.b
        assert fed.ping_seconds is not None
    assert not fed.running
    for pid, directory in zip(pids, dirs, strict=True):
        with pytest.raises(ProcessLookupError):
            _signal0(pid)
        assert not directory.exists()


def test_federation_lifecycle_ejabberd_prosody() -> None:
    """The mixed pair: both servers gone (by PID) afterwards, directories removed, the
    DNS responder for ejabberd stopped."""
    fed = MixedFederation()
    with fed:
        pids = [s.pid for s in fed.servers]
        dirs = [s.directory for s in fed.servers]
        assert fed.running
        assert fed.server_of("x@conference.e.test") is fed.a
        assert fed.server_of("y@p.test") is fed.b
        assert fed.ping_seconds is not None
        name = f"mixed-federation-dns-{fed.dns_port}"
        threads = [t for t in threading.enumerate() if t.name == name]
        assert len(threads) == 1
    assert not fed.running
    assert not threads[0].is_alive()
    for pid, directory in zip(pids, dirs, strict=True):
        assert not _alive(pid)
        assert not directory.exists()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (ejabberd's node is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal0(pid: int) -> None:
    import os

    os.kill(pid, 0)
