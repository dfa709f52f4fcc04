"""Nothing lost across network faults: handles that stay valid, a durable outbox, fail fast.

Over the real Prosody, with alice's connection going through a :class:`FaultProxy`
the test controls (cuts, refused connections, stalled bytes); bob connects directly.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import slixmpp

import mls_xmpp  # noqa: F401 - registers the "mls" plugin
from mls_xmpp.errors import AuthenticationError, NotConnectedError, ServerFeatureError
from mls_xmpp.testing import Account, FaultProxy, ProsodyServer

from .mls_clients import TIMEOUT, Recorder, befriend, close, mls_client, synced, until


def _run(coro: Any, timeout: float = 180) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def _down(client: Any, proxy: FaultProxy, *, refuse: bool = False) -> None:
    """Cut the client's connection (and refuse new ones with ``refuse``); wait until the
    client noticed."""
    gone = asyncio.get_running_loop().create_future()

    def on_gone(_: Any) -> None:
        if not gone.done():
            gone.set_result(None)

    client.add_event_handler("disconnected", on_gone)
    try:
        proxy.refuse = refuse
        assert proxy.cut_all() >= 1
        await asyncio.wait_for(gone, 15)
    finally:
        client.del_event_handler("disconnected", on_gone)
    assert not client.plugin["mls"].connected


async def _up(client: Any, proxy: FaultProxy) -> None:
    """Connect again through the proxy; wait for mls_ready."""
    proxy.refuse = False
    ready = asyncio.get_running_loop().create_future()

    def on_ready(_: Any) -> None:
        if not ready.done():
            ready.set_result(None)

    client.add_event_handler("mls_ready", on_ready)
    try:
        client.connect(proxy.host, proxy.port)
        await asyncio.wait_for(ready, TIMEOUT)
    finally:
        client.del_event_handler("mls_ready", on_ready)


async def _outbox_events(client: Any) -> list[Any]:
    events: list[Any] = []
    client.add_event_handler("mls_outbox", events.append)
    return events


# -- the handle stays the group's handle ---------------------------------------------------


async def _handle(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, ra = await mls_client(server, *alice_acc, via=(proxy.host, proxy.port))
        bob, rb = await mls_client(server, *bob_acc)
        try:
            mls = alice.plugin["mls"]
            await befriend(alice, bob)
            group = await mls.create_group(members=[bob_acc.jid])
            (gb,) = await rb.wait("mls_joined")
            await synced(group, gb)
            for round_ in range(2):  # twice: the handle survives every reconnection
                await _down(alice, proxy)
                await gb.send(f"while alice was away {round_}")
                await _up(alice, proxy)
                # the object the application holds is still the group's handle
                assert mls.group(group.room) is group and mls.groups == [group]
                await synced(group, gb)
                await ra.wait("mls_message", round_ + 1)
                await group.send(f"alice is back {round_}")
                await rb.wait("mls_message", round_ + 1)
                await group.update()  # her own Commit: merged, the others agree
                await synced(group, gb)
            assert rb.bodies() == ["alice is back 0", "alice is back 1"]
            assert ra.bodies() == ["while alice was away 0", "while alice was away 1"]
            assert group.epoch == 3 and gb.epoch == 3
            assert group.group.epoch_authenticator == gb.group.epoch_authenticator
            assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
        finally:
            await close(alice, bob)


def test_a_group_handle_stays_valid_across_reconnections(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_handle(prosody, new_account("alice"), new_account("bob")))


# -- send() offline: queued, then sent once, in order ----------------------------------------


async def _offline(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, ra = await mls_client(server, *alice_acc, via=(proxy.host, proxy.port))
        bob, rb = await mls_client(server, *bob_acc)
        events = await _outbox_events(alice)
        try:
            await befriend(alice, bob)
            group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
            (gb,) = await rb.wait("mls_joined")
            await synced(group, gb)
            await group.send("online")
            await rb.wait("mls_message", 1)
            await until(lambda: group.outbox == [])  # alice read its echo too

            await _down(alice, proxy, refuse=True)
            client_try = time.monotonic()
            alice.connect(proxy.host, proxy.port)  # refused: still offline
            ids = [await group.send(f"offline {i}") for i in range(3)]
            assert time.monotonic() - client_try < 5  # accepted at once, not after a timeout
            assert [group.message_state(i) for i in ids] == ["queued"] * 3
            assert [(o.message_id, o.state) for o in group.outbox] == [
                (i, "queued") for i in ids]
            # the group moves on meanwhile: queued messages are encrypted when sent, in
            # the epoch of that moment
            await gb.update()
            await gb.send("bob while alice is away")
            await asyncio.sleep(1.0)
            assert rb.bodies() == ["online"]  # nothing left alice

            await _up(alice, proxy)
            await rb.wait("mls_message", 4)
            await until(lambda: all(group.message_state(i) == "reflected" for i in ids))
            await asyncio.sleep(2.0)  # nothing comes twice
            assert rb.bodies() == ["online", "offline 0", "offline 1", "offline 2"]
            assert ra.bodies() == ["bob while alice is away"]
            assert group.outbox == []
            assert {e.epoch for e in rb.events["mls_message"][1:]} == {gb.epoch}
            states = [(e.message_id, e.state) for e in events if e.message_id in ids]
            for i in ids:
                assert [s for m, s in states if m == i] == ["queued", "sent", "reflected"]
            assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
            await synced(group, gb)
        finally:
            await close(alice, bob)


def test_messages_sent_offline_are_delivered_once_in_order_after_reconnecting(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_offline(prosody, new_account("alice"), new_account("bob")))


# -- a cut in the middle of a send ---------------------------------------------------------


async def _mid_send(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, ra = await mls_client(server, *alice_acc, via=(proxy.host, proxy.port))
        bob, rb = await mls_client(server, *bob_acc)
        try:
            await befriend(alice, bob)
            group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
            (gb,) = await rb.wait("mls_joined")
            await synced(group, gb)

            # 1. the stanza never reaches the server: stalled, then cut
            proxy.stall = True
            lost = await group.send("stalled then cut")
            assert group.message_state(lost) == "sent"
            await asyncio.sleep(0.5)
            await _down(alice, proxy, refuse=True)  # the held bytes die with the link
            proxy.stall = False
            await asyncio.sleep(0.5)
            assert rb.bodies() == []
            await _up(alice, proxy)
            await rb.wait("mls_message", 1)  # sent again: the archive did not hold it
            await until(lambda: group.message_state(lost) == "reflected")

            # 2. the room has it, but its reflection never reaches alice: cut
            proxy.stall_down = True
            kept = await group.send("reached the room, echo cut")
            await rb.wait("mls_message", 2)  # the room distributed it
            assert group.message_state(kept) == "sent"
            proxy.stall_down = False
            await _down(alice, proxy, refuse=True)
            await _up(alice, proxy)
            # the archive holds it: it ends there, and is not sent again
            await until(lambda: group.message_state(kept) == "reflected")
            await group.send("after both")
            await rb.wait("mls_message", 3)
            await asyncio.sleep(2.0)
            assert rb.bodies() == ["stalled then cut", "reached the room, echo cut",
                                   "after both"]
            assert ra.events["mls_error"] == [] and ra.events["mls_message"] == []
            await synced(group, gb)
        finally:
            await close(alice, bob)


def test_a_cut_mid_send_delivers_the_message_exactly_once(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_mid_send(prosody, new_account("alice"), new_account("bob")))


# -- a restart with messages in the outbox ---------------------------------------------------


async def _restart(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                   db: Path) -> None:
    config = {"store": str(db), "store_key": b"k" * 32, "device": "laptop"}
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, _ = await mls_client(server, *alice_acc, config=config,
                                    via=(proxy.host, proxy.port))
        bob, rb = await mls_client(server, *bob_acc)
        alice2 = None
        try:
            await befriend(alice, bob)
            group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
            (gb,) = await rb.wait("mls_joined")
            await synced(group, gb)
            # one reaches the room, its echo does not; two are sent offline
            proxy.stall_down = True
            await group.send("before the crash")
            await rb.wait("mls_message", 1)
            proxy.stall_down = False
            await _down(alice, proxy, refuse=True)
            await group.send("queued 1")
            await group.send("queued 2")
            assert [o.state for o in group.outbox] == ["sent", "queued", "queued"]
            # the process ends (nothing more is written); its store is all that is left
            store = alice.plugin["mls"].state_store
            assert len(store.load_outbox(group.group_id)) == 3
            store.close()
            alice.abort()
            raw = db.read_bytes()
            assert b"queued 1" not in raw and b"before the crash" not in raw  # sealed

            proxy.refuse = False
            alice2, ra2 = await mls_client(server, *alice_acc, config=config,
                                           via=(proxy.host, proxy.port))
            (g2,) = alice2.plugin["mls"].groups
            await rb.wait("mls_message", 3)
            await until(lambda: g2.outbox == [])
            await asyncio.sleep(2.0)
            assert rb.bodies() == ["before the crash", "queued 1", "queued 2"]
            assert alice2.plugin["mls"].state_store.load_outbox(g2.group_id) == []
            assert ra2.events["mls_message"] == []
            await synced(g2, gb)
        finally:
            await close(*(c for c in (alice2, bob) if c is not None))


def test_a_restart_sends_what_the_outbox_kept_exactly_once(
        prosody: ProsodyServer, tmp_path: Path,
        new_account: Callable[[str], Account]) -> None:
    _run(_restart(prosody, new_account("alice"), new_account("bob"), tmp_path / "a.db"))


# -- a stream resumed by XEP-0198 ----------------------------------------------------------


async def _resumed(tmp: Path) -> None:
    with ProsodyServer(smacks=True, storage="memory") as server:
        alice_acc, bob_acc = server.create_account("alice"), server.create_account("bob")
        async with FaultProxy(server.host, server.c2s_port) as proxy:
            alice, ra = await mls_client(server, *alice_acc, via=(proxy.host, proxy.port))
            bob, rb = await mls_client(server, *bob_acc)
            try:
                assert alice.plugin["xep_0198"].sm_id  # the server offered it
                mls = alice.plugin["mls"]
                await befriend(alice, bob)
                group = await mls.create_group(members=[bob_acc.jid])
                (gb,) = await rb.wait("mls_joined")
                await synced(group, gb)
                starts, resumes, joins = [], [], []
                alice.add_event_handler("session_start", starts.append)
                alice.add_event_handler("session_resumed", resumes.append)
                join_room = mls.delivery.join_room

                async def counted(room: str, nick: str) -> None:
                    joins.append(room)
                    await join_room(room, nick)

                mls.delivery.join_room = counted
                # her message reaches the room, its echo does not; bob writes meanwhile
                proxy.stall_down = True
                mid = await group.send("from alice")
                await rb.wait("mls_message", 1)
                await _down(alice, proxy)
                proxy.stall_down = False
                await gb.send("from bob while alice is cut off")
                await _up(alice, proxy)
                assert len(resumes) == 1 and starts == [] and joins == []  # nothing restarted
                assert mls.group(group.room) is group
                await ra.wait("mls_message", 1)
                await until(lambda: group.message_state(mid) == "reflected")
                await group.update()
                await synced(group, gb)
                await asyncio.sleep(1.0)
                assert rb.bodies() == ["from alice"]
                assert ra.bodies() == ["from bob while alice is cut off"]
                assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
            finally:
                await close(alice, bob)


def test_a_resumed_stream_goes_on_without_restarting_the_groups(tmp_path: Path) -> None:
    _run(_resumed(tmp_path))


# -- fail fast -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(jid: str, password: str, config: dict[str, Any] | None = None
            ) -> tuple[Any, Recorder]:
    client = slixmpp.ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_scram = True
    client.register_plugin("mls", dict(config or {}))
    return client, Recorder(client)


async def _soon(error: type[BaseException], call: Any, within: float = 5.0) -> BaseException:
    start = time.monotonic()
    with pytest.raises(error) as info:
        await asyncio.wait_for(call, within + 10)
    assert time.monotonic() - start < within
    return info.value


async def _fail_fast(server: ProsodyServer, acc: Account) -> None:
    # a wrong password: the reason, at once, and an mls_error
    wrong, rw = _client(acc.jid, "not the password")
    try:
        wrong.connect(server.host, server.c2s_port)
        await rw.wait("mls_error", timeout=15)
        err = await _soon(AuthenticationError, wrong.plugin["mls"].create_group())
        assert "refused the credentials" in str(err)
        assert isinstance(rw.events["mls_error"][0].error, AuthenticationError)
    finally:
        await close(wrong)

    # no server: connection refused, the reason at once (slixmpp keeps trying)
    lost, rl = _client(acc.jid, acc.password)
    try:
        lost.connect("127.0.0.1", _free_port())
        await rl.wait("mls_error", timeout=15)
        err = await _soon(NotConnectedError, lost.plugin["mls"].create_group())
        assert "cannot reach the XMPP server" in str(err)
        assert isinstance(rl.events["mls_error"][0].error, NotConnectedError)
    finally:
        lost.cancel_connection_attempt()
        lost.abort()

    # a server without what groups need (here: no MUC service where it is looked for)
    bare, rb = _client(acc.jid, acc.password, {"muc_domain": "upload.localhost"})
    try:
        bare.connect(server.host, server.c2s_port)
        await rb.wait("mls_error", timeout=15)
        err = await _soon(ServerFeatureError, bare.plugin["mls"].create_group())
        assert "upload.localhost" in str(err) and "muc_domain" in str(err)
    finally:
        await close(bare)


def test_api_calls_fail_fast_with_the_reason(prosody: ProsodyServer,
                                            new_account: Callable[[str], Account]) -> None:
    _run(_fail_fast(prosody, new_account("alice")), 120)


async def _readded(server: ProsodyServer, alice_acc: Account, carol_acc: Account) -> None:
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, _ = await mls_client(server, *alice_acc)
        carol, rc = await mls_client(server, *carol_acc, {"room_retry": 3.0},
                                     via=(proxy.host, proxy.port))
        try:
            await befriend(alice, carol)
            group = await alice.plugin["mls"].create_group(members=[carol_acc.jid])
            await rc.wait("mls_joined")
            old = carol.plugin["mls"].group(group.room)
            await synced(group, old)
            # carol is away while she is removed; back, the room refuses her (the group
            # is suspended, retried); meanwhile she is added again: the Welcome back
            # comes before she has read her removal
            await _down(carol, proxy, refuse=True)
            await group.remove(carol_acc.jid)
            await _up(carol, proxy)
            # the room refuses her: suspended (the removal notice waits, section 9.5)
            await until(lambda: old.suspended is not None, 30)
            await group.add(carol_acc.jid)
            await group.send("after the return")
            await rc.wait("mls_joined", 2, timeout=60)
            await until(lambda: "after the return" in rc.bodies(), 60)
            new = carol.plugin["mls"].group(group.room)
            assert new is not old and old.removed
            await synced(group, new)
        finally:
            await close(alice, carol)


def test_a_device_removed_and_added_again_while_away_comes_back(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    """The Welcome back into a group waits until the device has read its removal (from
    the room archive) instead of being dropped as one for a group it is in already."""
    _run(_readded(prosody, new_account("alice"), new_account("carol")))
