"""Blob URLs (trees, messages by reference, attachments) over a real Prosody.

An attacker -- a stranger sending a Welcome, or a member of the group -- names
blob URLs of its choosing. A device fetches a blob only from the servers of
the room, of its account and of the sender (and their upload services), only
after the Welcome was decrypted, within a time budget and without redirects
(docs/PROTOCOL.md §11.2). Each test runs its own small HTTP servers on loopback
and records every request they get: "no request" is checked there, not
inferred from an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mls_xmpp.errors import BlobRefusedError, TransportError
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Attachment, BlobRef, Envelope, Kind, encode_content
from mls_xmpp.xmpp.session import GroupSession

from .mls_clients import TIMEOUT, befriend, close, mls_client


class HttpSpy:
    """A tiny HTTP/1.1 server on ``host`` that records each request it gets.

    ``mode``: ``"serve"`` answers ``body``; ``"stall"`` sends nothing, for ever;
    ``"redirect"`` answers 302 to ``location``; ``"fail"`` answers 503 to the first
    ``failures`` requests, then serves ``body``.
    """

    def __init__(self, host: str, mode: str = "serve", body: bytes = b"",
                 location: str = "") -> None:
        self.host, self.mode, self.body, self.location = host, mode, body, location
        self.requests: list[str] = []
        self.failures = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HttpSpy:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, name: str = "blob.bin", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/{name}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head.split(b"\r\n", 1)[0].decode())
            if self.mode == "stall":
                await asyncio.sleep(3600)
            elif self.mode == "fail" and len(self.requests) <= self.failures:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
            elif self.mode == "redirect":
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: " + self.location.encode()
                             + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n" % len(self.body) + self.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def _ref(url: str, data: bytes) -> BlobRef:
    return BlobRef(url=url, sha256=hashlib.sha256(data).digest(), size=len(data))


async def _three(server: ProsodyServer, accounts: list[Account], config: dict[str, Any]
                 ) -> tuple[list[Any], list[Any], list[GroupSession]]:
    """alice's group with bob and mallory; bob with ``config``."""
    clients, recorders = [], []
    for acc in accounts:
        c, r = await mls_client(server, *acc, config=config if acc.jid.startswith("bob")
                                else None)
        clients.append(c)
        recorders.append(r)
    await befriend(*clients)
    g0 = await clients[0].plugin["mls"].create_group(members=[a.jid for a in accounts[1:]])
    sessions = [g0]
    for r in recorders[1:]:
        (g,) = await r.wait("mls_joined")
        await asyncio.wait_for(g.ready.wait(), TIMEOUT)
        sessions.append(g)
    return clients, recorders, sessions


async def _by_reference(session: GroupSession, url: str, body: str = "evil",
                        attachments: tuple[Attachment, ...] = ()) -> bytes:
    """A real application message of ``session``'s member, sent as a reference to ``url``
    (which never serves it); returns the MLSMessage."""
    async with session._group_lock:
        data = session.group.encrypt(encode_content(body, attachments=attachments))
    env = Envelope(kind=Kind.APPLICATION, group_id=session.group_id, epoch=session.epoch,
                   mls_message_ref=_ref(url, data))
    await session.plugin.delivery.send_room(session.room, env)
    return data


def _errors(recorder: Any, kind: type) -> list[Any]:
    return [e for e in recorder.events["mls_error"] if isinstance(e.error, kind)]


async def _until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def _welcome_out_of_band(mls: Any, kp: Any) -> tuple[Any, bytes, bytes]:
    """A new group of ``mls``'s identity with ``kp`` added, the tree left out of the
    Welcome: the group, the Welcome and the tree."""
    g = mls.identity.create_group(os.urandom(16))
    g.config = replace(g.config, ratchet_tree_in_welcome=False)
    pending = g.commit(add=[kp])
    g.merge_pending_commit()
    (welcome,) = pending.welcomes.values()
    return g, welcome, g.ratchet_tree()


# -- (a) a stranger's Welcome names a tree URL of its choosing ------------------------------


async def _welcome_tree(server: ProsodyServer, bob_acc: Account, mallory_acc: Account) -> None:
    bob, rb = await mls_client(server, *bob_acc)
    mallory, _ = await mls_client(server, *mallory_acc)
    try:
        async with HttpSpy("127.0.0.2") as spy:
            evil = mallory.plugin["mls"]
            kp = (await evil.keystore.fetch(bob_acc.jid))[0].key_package
            g, welcome, tree = _welcome_out_of_band(evil, kp)
            spy.body = tree
            kept = set(bob.plugin["mls"].identity.key_packages)
            # the tree "by reference" on a host of mallory's choosing (127.0.0.2: on
            # loopback, where a device's own network would be)
            await evil.delivery.send_welcome(bob_acc.jid, Envelope(
                kind=Kind.WELCOME, group_id=g.group_id, epoch=g.epoch, mls_message=welcome,
                room="elsewhere@conference.localhost", ratchet_tree=_ref(spy.url(), tree)))
            await rb.wait("mls_error")
            await asyncio.sleep(0.5)
            assert spy.requests == [], spy.requests
            assert not rb.events["mls_joined"] and not bob.plugin["mls"].sessions
            assert "Welcome refused" in rb.events["mls_error"][0].reason
            # nothing of bob's was used up
            assert set(bob.plugin["mls"].identity.key_packages) == kept
    finally:
        await close(bob, mallory)


async def _tree_retried(server: ProsodyServer, alice_acc: Account, bob_acc: Account) -> None:
    alice, _ = await mls_client(server, *alice_acc)
    bob, rb = await mls_client(server, *bob_acc)
    try:
        await befriend(alice, bob)
        async with HttpSpy("127.0.0.1", mode="fail") as spy:
            spy.failures = 2  # the upload service fails twice (busy), then serves
            mls = alice.plugin["mls"]
            kp = (await mls.keystore.fetch(bob_acc.jid))[0].key_package
            g, welcome, spy.body = _welcome_out_of_band(mls, kp)
            await mls.delivery.send_welcome(bob_acc.jid, Envelope(
                kind=Kind.WELCOME, group_id=g.group_id, epoch=g.epoch, mls_message=welcome,
                room=server.room_jid("retried"),
                ratchet_tree=_ref(spy.url(host="localhost"), spy.body)))
            (gb,) = await rb.wait("mls_joined", timeout=60)
            assert len(spy.requests) == 3, spy.requests
            assert gb.group.epoch_authenticator == g.epoch_authenticator
            assert not any("Welcome refused" in e.reason for e in rb.events["mls_error"])
    finally:
        await close(alice, bob)


def test_blob_a_welcome_tree_download_that_fails_is_tried_again(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    """A Welcome whose tree download fails for a while is not refused (it would never be
    joined): the download is tried again, after a growing, spread wait."""
    asyncio.run(asyncio.wait_for(
        _tree_retried(prosody, new_account("alice"), new_account("bob")), 120))


def test_blob_a_welcome_tree_url_on_a_foreign_host_is_not_fetched(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _welcome_tree(prosody, new_account("bob"), new_account("mallory")), 120))


# -- (b) a member's message by reference, and an attachment, on a foreign host ---------------


async def _message_ref(server: ProsodyServer, accounts: list[Account]) -> None:
    clients, (ra, rb, _), (ga, gb, gm) = await _three(server, accounts, {})
    try:
        async with HttpSpy("127.0.0.2") as spy, HttpSpy("127.0.0.1") as near:
            before = ga.group.epoch_authenticator
            await _by_reference(gm, spy.url("message"))
            # the same host as this account's upload service, another port: another origin
            await _by_reference(gm, near.url("message"))
            await _until(lambda: len(_errors(rb, BlobRefusedError)) >= 2)
            await _until(lambda: len(_errors(ra, BlobRefusedError)) >= 2)
            # a file whose URL is on the foreign host: never fetched by itself, and
            # refused when asked for
            secret = os.urandom(32)
            att = Attachment(url=spy.url("file"), sha256=hashlib.sha256(b"x").digest(),
                             key=secret, iv=os.urandom(12), size=1,
                             media_type="application/octet-stream", name="f")
            await gm.send("a file", attachments=(att,))
            (msg,) = await rb.wait("mls_message")
            (got,) = msg.content.attachments
            try:
                await clients[1].plugin["mls"].download(got, sender=msg.sender,
                                                        room=msg.group.room)
                raise AssertionError("a file on a foreign host was fetched")
            except BlobRefusedError:
                pass
            try:
                await clients[1].plugin["mls"].download(got)
                raise AssertionError("a file on a foreign host was fetched")
            except BlobRefusedError:
                pass
            assert spy.requests == [] and near.requests == [], (spy.requests, near.requests)
            # the group is as it was, and goes on
            assert ga.group.epoch_authenticator == gb.group.epoch_authenticator == before
            await ga.send("still fine")
            await rb.wait("mls_message", 2)
            assert rb.bodies() == ["a file", "still fine"]
            await ga.update()
            await _until(lambda: gb.epoch == ga.epoch == gm.epoch)
            assert ga.group.epoch_authenticator == gb.group.epoch_authenticator
            assert spy.requests == [] and near.requests == []
    finally:
        await close(*clients)


def test_blob_a_message_by_reference_on_a_foreign_host_is_not_fetched(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "mallory")]
    asyncio.run(asyncio.wait_for(_message_ref(prosody, accounts), 180))


# -- (c) an allowed host that never answers ----------------------------------------------


async def _slow(server: ProsodyServer, accounts: list[Account]) -> None:
    # bob keeps the default budget; "localhost" is the members' server, so the stalling
    # host is one a blob may come from
    clients, (_, rb, _), (ga, gb, gm) = await _three(server, accounts, {})
    budget = float(clients[1].plugin["mls"].config.get("blob_message_timeout", 5.0))
    try:
        async with HttpSpy("127.0.0.1", mode="stall") as slow:
            await _by_reference(gm, slow.url("slow", host="localhost"))
            await _until(lambda: bool(slow.requests))
            t0 = time.monotonic()
            await ga.send("right behind")
            await ga.update()
            await rb.wait("mls_message", timeout=budget + 10)
            took = time.monotonic() - t0
            assert rb.bodies() == ["right behind"]
            assert took < budget + 5, f"held up {took:.1f} s by a slow blob"
            await _until(lambda: gb.epoch == ga.epoch, timeout=10)
            assert ga.group.epoch_authenticator == gb.group.epoch_authenticator
            (dropped,) = _errors(rb, TransportError)
            assert "longer than" in dropped.reason
            assert len(slow.requests) <= 3  # once by each member: not retried
    finally:
        await close(*clients)


def test_blob_a_slow_message_by_reference_does_not_hold_up_the_group(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "mallory")]
    asyncio.run(asyncio.wait_for(_slow(prosody, accounts), 180))


# -- (d) an allowed host that redirects to a foreign one ------------------------------------


async def _redirect(server: ProsodyServer, accounts: list[Account]) -> None:
    clients, (_, rb, _), (ga, gb, gm) = await _three(server, accounts, {})
    try:
        async with HttpSpy("127.0.0.2") as target, \
                HttpSpy("127.0.0.1", mode="redirect", location=target.url("inner")) as hop:
            before = ga.group.epoch_authenticator
            await _by_reference(gm, hop.url("hop", host="localhost"))
            await _until(lambda: bool(_errors(rb, BlobRefusedError)))
            assert "redirect" in _errors(rb, BlobRefusedError)[0].reason
            assert hop.requests and target.requests == []
            assert gb.group.epoch_authenticator == before
            await ga.send("after the redirect")
            await rb.wait("mls_message")
            assert rb.bodies() == ["after the redirect"]
    finally:
        await close(*clients)


def test_blob_a_redirect_is_not_followed(prosody: ProsodyServer,
                                         new_account: Callable[[str], Account]) -> None:
    accounts = [new_account(n) for n in ("alice", "bob", "mallory")]
    asyncio.run(asyncio.wait_for(_redirect(prosody, accounts), 120))
