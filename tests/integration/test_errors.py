"""The errors a user catches, and large messages, over a real Prosody.

Every failure the API reports is one of the documented classes of
:mod:`mls_xmpp.errors`: an unknown member, device or group, an account without
KeyPackages, a call without an XMPP session (raised at once, not after a
timeout), a device that was removed, a message too large even by reference. A
message larger than one stanza is uploaded and sent by reference. The stanzas
on the wire keep the store hint and the EME marker, and the plugin's ``config``
keeps what the application gave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import slixmpp

import mls_xmpp.xmpp.plugin  # noqa: F401 - registers the "mls" plugin
from mls_xmpp.errors import (
    LocalUsageError,
    MLSError,
    NoKeyPackageError,
    NotConnectedError,
    NotInGroupError,
    TooLargeError,
    TransportError,
    UnknownDeviceError,
    UnknownGroupError,
    UnknownMemberError,
)
from mls_xmpp.storage import SQLiteStore
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Attachment, Kind
from mls_xmpp.xmpp.session import MAX_MESSAGE_SIZE
from mls_xmpp.xmpp.stanza import NS

from .mls_clients import befriend, close, mls_client, synced


def _run(coro: Awaitable[None], timeout: float = 300) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


async def _raises_soon(error: type[BaseException], call: Awaitable[Any],
                       within: float = 2.0) -> BaseException:
    """``call`` raises ``error`` in less than ``within`` seconds."""
    start = time.monotonic()
    with pytest.raises(error) as info:
        await asyncio.wait_for(call, within + 5)
    took = time.monotonic() - start
    assert took < within, f"{error.__name__} after {took:.1f} s"
    return info.value


def test_the_tree_is_one_tree() -> None:
    assert issubclass(NoKeyPackageError, TransportError)
    assert issubclass(NotConnectedError, TransportError)
    assert issubclass(NotInGroupError, LocalUsageError)
    assert issubclass(UnknownDeviceError, UnknownMemberError)
    for cls in (UnknownGroupError, UnknownMemberError):
        assert issubclass(cls, LookupError) and issubclass(cls, LocalUsageError)
    assert not issubclass(UnknownGroupError, KeyError)
    import mls_xmpp.errors as errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), MLSError), name


# -- large messages ---------------------------------------------------------------------


async def _large(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        await synced(group, gb)
        delivery = alice.plugin["mls"].delivery
        upload, uploads = delivery.upload, []

        async def recorded(*args: Any, **kwargs: Any) -> Any:
            uploads.append(await upload(*args, **kwargs))
            return uploads[-1]

        delivery.upload = recorded
        small = "a short one"
        over_a_stanza = "é" * 200_000  # 400 KB of UTF-8: more than one stanza
        twelve_mib = "x" * (12 * 1024 * 1024)  # over Prosody's upload limit: two parts
        for body in (small, over_a_stanza, twelve_mib):
            await group.send(body)
        await rb.wait("mls_message", 3, timeout=120)
        assert rb.bodies() == [small, over_a_stanza, twelve_mib]
        assert len(uploads) == 2 and uploads[0].more_urls == ()
        assert len(uploads[1].more_urls) == 1, uploads[1]
        # in the room's archive: the small one inline, the large ones by reference
        archive = await delivery.fetch_archive(group.room)
        apps = [e for e in (delivery.envelope_of(m, str(m["from"])) for m, _ in archive)
                if e is not None and e.kind == Kind.APPLICATION]
        assert [e.mls_message_ref is not None for e in apps] == [False, True, True]
        assert not any(e.fragment for e in apps)
        # the sender's own echoes were recognised without downloading them
        await asyncio.sleep(0.5)
        assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []

        # too large even by reference: refused before anything is encrypted or sent
        sent_before = len(uploads)
        error = await _raises_soon(TooLargeError, group.send("y" * (MAX_MESSAGE_SIZE + 1)))
        assert "send_file(" in str(error)
        # ... and the advice works
        await group.send_file(b"y" * 1000, name="message.txt", media_type="text/plain")
        await rb.wait("mls_message", 4, timeout=60)
        (att,) = rb.events["mls_message"][3].content.attachments
        assert isinstance(att, Attachment)
        assert await bob.plugin["mls"].download(att) == b"y" * 1000
        assert len(uploads) == sent_before + 1  # the file; nothing for the refused one
        assert rb.bodies()[3] == ""
    finally:
        await close(alice, bob)


def test_a_large_message_goes_by_reference_and_an_oversize_one_is_refused(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_large(prosody, new_account("alice"), new_account("bob")))


# -- unknown members, devices, groups; no KeyPackage; removed ---------------------------


async def _unknown(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                   carol_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    mls = alice.plugin["mls"]
    try:
        await befriend(alice, bob)
        # carol has never used an MLS client: no KeyPackage, nothing is created
        error = await _raises_soon(NoKeyPackageError, mls.create_group(
            members=[bob_acc.jid, carol_acc.jid]), within=10)
        assert isinstance(error, NoKeyPackageError) and error.jids == (carol_acc.jid,)
        assert carol_acc.jid in str(error) and mls.groups == []

        group = await mls.create_group(members=[bob_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        await synced(group, gb)
        with pytest.raises(NoKeyPackageError):
            await group.add(carol_acc.jid)
        with pytest.raises(UnknownMemberError) as member:
            await group.remove(bob_acc.jid, carol_acc.jid)
        assert carol_acc.jid in str(member.value)
        with pytest.raises(UnknownDeviceError) as device:
            await group.remove_device("00000000 00000000 00000000 00000000")
        assert "00000000" in str(device.value)
        assert group.jids() == {alice_acc.jid, bob_acc.jid}  # nothing was removed

        with pytest.raises(UnknownGroupError):
            mls.group(f"nosuchroom@{server.muc_domain}")
        with pytest.raises(UnknownGroupError):
            mls.group(b"\x00" * 16)
        with pytest.raises(LookupError):
            mls.group("not a jid@@")
        assert mls.group(group.room) is group and mls.group(group.group_id) is group

        # bob is removed: his handle says so, whatever he calls
        await group.remove(bob_acc.jid.upper())  # JIDs are compared in normal form
        await rb.wait("mls_removed")
        for call in (gb.send("still here?"), gb.update(), gb.leave(),
                     gb.add(alice_acc.jid)):
            await _raises_soon(NotInGroupError, call)
        with pytest.raises(UnknownGroupError):
            bob.plugin["mls"].group(group.room)
        assert ra.events["mls_error"] == []
    finally:
        await close(alice, bob)


def test_unknown_member_device_group_and_no_key_package(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_unknown(prosody, new_account("alice"), new_account("bob"), new_account("carol")))


# -- not connected ------------------------------------------------------------------------


async def _offline(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    # never connected: refused at once
    lonely = slixmpp.ClientXMPP(alice_acc.jid, alice_acc.password)
    lonely.register_plugin("mls")
    await _raises_soon(NotConnectedError, lonely.plugin["mls"].create_group())

    alice, _ = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        mls = alice.plugin["mls"]
        group = await mls.create_group(members=[bob_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        await synced(group, gb)
        await group.send("before the stream went")
        (event,) = await rb.wait("mls_message")
        await close(alice)
        assert not mls.connected
        # a message is kept for later (tests/integration/test_outbox.py); the rest raise
        assert group.message_state(await group.send("anyone?")) == "queued"
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: group.send_file(b"data", name="f.bin"),
            lambda: group.add(bob_acc.jid),
            lambda: group.remove(bob_acc.jid),
            lambda: group.remove_device("00000000"),
            lambda: group.update(),
            lambda: group.leave(),
            lambda: mls.create_group(),
            lambda: mls.create_group(members=[bob_acc.jid]),
        ]
        for call in calls:
            await _raises_soon(NotConnectedError, call())
        fake = Attachment(url="https://example.org/x", sha256=b"\x00" * 32, key=b"\x00" * 32,
                          iv=b"\x00" * 12, size=1)
        await _raises_soon(NotConnectedError, mls.download(fake))
        assert event.body == "before the stream went"
    finally:
        await close(alice, bob)


def test_calls_without_a_session_raise_not_connected_at_once(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    _run(_offline(prosody, new_account("alice"), new_account("bob")))


# -- the stanzas on the wire; the config ----------------------------------------------------


async def _wire_and_config(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                           path: str) -> None:
    given = {"store": path, "commit_timeout": 25.0, "pool_size": 3, "device": "laptop"}
    alice, _ = await mls_client(server, *alice_acc, config=given)
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        mls = alice.plugin["mls"]
        # no attribute overwrote what the application gave
        for key, value in given.items():
            assert mls.config[key] == value, key
        assert mls.config["client"] is None
        assert isinstance(mls.state_store, SQLiteStore) and mls.identity is not None
        group = await mls.create_group(members=[bob_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        await synced(group, gb)
        await group.send("on the wire")
        await rb.wait("mls_message")
        assert mls.config["store"] == path and mls.config["client"] is None
        # what the room archived: payload, fallback body, store hint, EME marker
        archive = await mls.delivery.fetch_archive(group.room)
        assert archive
        for msg, stanza_id in archive:
            xml = msg.xml
            assert stanza_id
            assert xml.find(f"{{{NS}}}mls") is not None
            assert xml.find("{urn:xmpp:hints}store") is not None
            eme = xml.find("{urn:xmpp:eme:0}encryption")
            assert eme is not None and eme.get("namespace") == NS and eme.get("name") == "MLS"
            assert "encrypted with MLS" in (msg["body"] or "")
    finally:
        await close(alice, bob)


def test_stanzas_carry_store_hint_and_eme_and_config_is_kept(
        prosody: ProsodyServer, new_account: Callable[[str], Account], tmp_path: Path) -> None:
    _run(_wire_and_config(prosody, new_account("alice"), new_account("bob"),
                          str(tmp_path / "alice.db")))
