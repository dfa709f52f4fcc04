"""HTTP File Upload (XEP-0363) in groups, on Prosody and on ejabberd.

Files: the file is encrypted before it is uploaded; members download, check and
decrypt it; what the server stores is ciphertext; a tampered description is
refused; a file over the server's limit fails cleanly on the sender's side.
Trees: a ratchet tree too large for a Welcome is uploaded, and the new member
fetches it from the server's upload service.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from mls_xmpp.testing import Account, EjabberdServer, ProsodyServer, XmppServer
from mls_xmpp.xmpp import session as session_module
from mls_xmpp.xmpp.errors import EnvelopeError, TransportError

from .mls_clients import befriend, close, mls_client, synced, until


def _stored_files(server: XmppServer) -> list[bytes]:
    """Everything the server's upload service keeps on disk."""
    if isinstance(server, EjabberdServer):
        root, part = Path(server.directory, "upload"), ""  # mod_http_upload's docroot
    else:
        assert isinstance(server, ProsodyServer)
        root, part = Path(server.directory, "data"), "http_file_share"
    return [path.read_bytes() for path in root.rglob("*")
            if path.is_file() and part in str(path)]


async def _share(server: XmppServer, alice_acc: Account, bob_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        await synced(group, gb)
        data = os.urandom(150_000) + b"THE-PLAINTEXT-MARKER" + os.urandom(1000)
        message_id = await group.send_file(data, name="report.pdf", body="the report")
        await until(lambda: bool(rb.events["mls_message"]))
        event = rb.events["mls_message"][0]
        assert event.body == "the report" and event.content.message_id == message_id
        assert event.content.timestamp_ms > 0
        (att,) = event.content.attachments
        assert (att.name, att.media_type, att.size) == ("report.pdf", "application/pdf",
                                                        len(data))
        assert await bob.plugin["mls"].download(att) == data
        # the server holds the upload, and only as ciphertext
        stored = _stored_files(server)
        assert any(len(f) == len(data) + 16 for f in stored)
        assert not any(b"THE-PLAINTEXT-MARKER" in f for f in stored)
        # a description that does not fit the file is refused
        with pytest.raises(EnvelopeError):
            await bob.plugin["mls"].download(replace(att, key=os.urandom(32)))
        with pytest.raises((EnvelopeError, TransportError)):
            await bob.plugin["mls"].download(replace(att, size=att.size + 1))
        # a reply names the message it answers
        await gb.send("thanks", reply_to=message_id)
        await until(lambda: "thanks" in ra.bodies())
        reply = next(e for e in ra.events["mls_message"] if e.body == "thanks")
        assert reply.content.reply_to == message_id
        # over the server's upload limit (10 MiB: Prosody's default, the ejabberd
        # fixture's): a clean error, nothing sent
        with pytest.raises(TransportError):
            await group.send_file(bytes(11 * 1024 * 1024), name="big.bin")
        await asyncio.sleep(0.3)
        assert len(rb.events["mls_message"]) == 1
        assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
    finally:
        await close(alice, bob)


def test_file_shared_encrypted(server: XmppServer,
                               new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_share(server, new_account("alice"), new_account("bob")),
                                 120))


async def _tree_by_upload(server: XmppServer, alice_acc: Account, bob_acc: Account) -> None:
    alice, ra = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        before = len(_stored_files(server))
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        gb = (await rb.wait("mls_joined"))[0]
        await synced(group, gb)
        # the tree went by upload: the server holds it (not encrypted: public data)
        tree = group.group.ratchet_tree()
        assert len(_stored_files(server)) > before
        assert any(f == tree for f in _stored_files(server))
        await gb.send("joined with an uploaded tree")
        await until(lambda: "joined with an uploaded tree" in ra.bodies())
        assert ra.events["mls_error"] == [] and rb.events["mls_error"] == []
    finally:
        await close(alice, bob)


def test_welcome_tree_by_upload(server: XmppServer, new_account: Callable[[str], Account],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    # every ratchet tree goes by URL (as a large group's would)
    monkeypatch.setattr(session_module, "TREE_INLINE_LIMIT", 0)
    asyncio.run(asyncio.wait_for(
        _tree_by_upload(server, new_account("alice"), new_account("bob")), 120))
