"""What the server stores and sees (RFC 9750 §8.2), read from a real Prosody's files.

A group of three talks, grows, updates and shrinks; then the test reads what
Prosody wrote to disk (its room archive, offline store, PEP nodes: internal
storage, plain files) and its debug log, and checks that

* no GroupInfo is there in the clear: every GROUP_INFO envelope is sealed, and
  nothing stored decodes as a GroupInfo or names a member's signature key;
* room nicknames carry no key material: no nick contains any prefix of a
  member's signature key or its account's localpart, and one device's nicks in
  two rooms differ;
* every envelope has a bucketed size (a power of two from 256 bytes to 16 KiB,
  else a multiple of 16 KiB), whatever the message length was.

(Occupants still see each other's real JIDs: members reconcile the room's
affiliations, which the room lets non-owners read only with whois "anyone".)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from mls_xmpp.core.errors import MLSError
from mls_xmpp.core.messages.framing import MLSMessage
from mls_xmpp.core.messages.group_info import GroupInfo
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Envelope, Kind
from mls_xmpp.xmpp.errors import EnvelopeError
from mls_xmpp.xmpp.privacy import bucket, is_sealed
from mls_xmpp.xmpp.rules import DEFAULT_RULES, Who

from .mls_clients import Recorder, befriend, close, mls_client, synced, until

#: base64 runs long enough to be an envelope (the shortest is 256 bytes: 344 characters)
_B64 = re.compile(rb"[A-Za-z0-9+/]{300,}={0,2}")


def _joined(recorder: Recorder, room: str) -> Any:
    return next((s for s in recorder.events["mls_joined"] if s.room == room), None)


def _stored(directory: Path) -> bytes:
    """Every file Prosody wrote (data directory and log), concatenated."""
    return b"\n".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def _envelopes(blob: bytes) -> list[tuple[Envelope, int]]:
    """Every envelope in ``blob`` with the size of its encoding."""
    out = []
    for match in _B64.finditer(blob):
        try:
            data = base64.b64decode(match.group(), validate=True)
            env = Envelope.from_bytes(data)
        except (binascii.Error, EnvelopeError, ValueError):
            continue
        out.append((env, len(data)))
    return out


async def _scenario(server: ProsodyServer, accounts: list[Account]) -> dict[str, Any]:
    alice, ra = await mls_client(server, *accounts[0], config={"device": "laptop"})
    bob, rb = await mls_client(server, *accounts[1], config={"device": "phone"})
    carol, rc = await mls_client(server, *accounts[2], config={"device": "tablet"})
    try:
        await befriend(alice, bob, carol)
        # bob is a plain member: only alice (admin) may add and remove
        rules = replace(DEFAULT_RULES.with_admins(accounts[0].jid), add=Who.ADMINS,
                        remove=Who.ADMINS)
        group = await alice.plugin["mls"].create_group(members=[accounts[1].jid], rules=rules)
        await until(lambda: _joined(rb, group.room) is not None)
        gb = _joined(rb, group.room)
        await synced(group, gb)
        bodies = ["hi", "a" * 60, "b" * 180, "x" * 300, "y" * 1000, "z" * 5000, "w" * 20000]
        for body in bodies:
            await group.send(body)
        await until(lambda: len(rb.bodies()) == len(bodies))
        await gb.update()
        await group.add(accounts[2].jid)
        await until(lambda: _joined(rc, group.room) is not None)
        gc = _joined(rc, group.room)
        await synced(group, gb, gc)
        await gc.send("from carol")
        await until(lambda: "from carol" in rb.bodies())
        await group.remove(accounts[2].jid)
        await synced(group, gb)
        second = await alice.plugin["mls"].create_group(members=[accounts[1].jid])
        await until(lambda: _joined(rb, second.room) is not None)
        return {
            "keys": [c.plugin["mls"].identity.signature_public_key
                     for c in (alice, bob, carol)],
            "nicks": {c.boundjid.bare: (c.plugin["mls"].nick(group.room),
                                        c.plugin["mls"].nick(second.room))
                      for c in (alice, bob, carol)},
            "rooms": (group.room, second.room),
            "errors": [e.reason for r in (ra, rb, rc) for e in r.events["mls_error"]],
        }
    finally:
        await close(alice, bob, carol)


def test_metadata_the_server_stores_and_sees() -> None:
    # a server of its own, logging at debug level, whose files stay until read
    server = ProsodyServer(log_level="debug", keep_directory=True)
    directory: Path | None = None
    try:
        with server:
            directory = server.directory
            accounts = [server.create_account(n) for n in ("alice", "bob", "carol")]
            seen = asyncio.run(asyncio.wait_for(_scenario(server, accounts), 240))
        stored = _stored(directory)
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    assert seen["errors"] == []
    envelopes = _envelopes(stored)
    assert b"Authenticated as" in stored  # the log is read too (debug level)
    kinds = {env.kind for env, _ in envelopes}
    # the archive and offline store hold the traffic: every kind the scenario sent
    assert {Kind.APPLICATION, Kind.COMMIT, Kind.GROUP_INFO, Kind.WELCOME} <= kinds, kinds

    # 1. no GroupInfo in the clear
    infos = [env for env, _ in envelopes if env.kind == Kind.GROUP_INFO]
    assert infos and all(is_sealed(env.mls_message) for env in infos)
    for env, _ in envelopes:
        if env.fragment is None and env.mls_message:
            try:
                body = MLSMessage.decode(env.mls_message).body
            except MLSError:
                continue
            assert not isinstance(body, GroupInfo), env
    for key in seen["keys"]:  # no member's key (a GroupInfo's tree) in any envelope
        assert not any(key in env.mls_message for env, _ in envelopes)

    # 2. nicknames: no key material, no localpart, unlinkable across rooms
    for jid, (nick1, nick2) in seen["nicks"].items():
        assert nick1 != nick2
        assert jid.split("@")[0] not in nick1
        for key in seen["keys"]:
            for n in (3, 4, 8):
                assert key[:n].hex() not in nick1 and key[:n].hex() not in nick2
        assert f"/{nick1}".encode() in stored  # the server did see it (the archive)
    for jid in seen["nicks"]:  # the former form (localpart-key prefix), anywhere: none
        for key in seen["keys"]:
            assert f"{jid.split('@')[0]}-{key[:4].hex()}".encode() not in stored

    # 3. only bucketed sizes, though the bodies ranged from 2 to 20,000 characters
    sizes = sorted({size for _, size in envelopes})
    assert all(bucket(size) == size for size in sizes), sizes
    app = sorted({size for env, size in envelopes if env.kind == Kind.APPLICATION})
    # eight lengths of body (2 to 20,000 characters, carol's 10), five sizes on the wire:
    # 2, 10, 60 and 180 characters look alike
    assert len(app) == 5, app
    print(f"\nmetadata: {len(envelopes)} envelopes stored, sizes {sizes}, "
          f"{len(infos)} sealed GroupInfos, application sizes {app}")
