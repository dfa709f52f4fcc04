"""The Delivery Service behaviour the plugin relies on, checked against real servers.

Each test runs on Prosody and on ejabberd (the ``server`` fixture).

A room (XEP-0045) fans a body-less, namespaced payload out to its members in one
order and reflects it to the sender; with ``<store xmlns='urn:xmpp:hints'/>`` the
room's archive (XEP-0313) keeps it under the same stanza-id (XEP-0359), so a
member that was offline can fetch it later. Without the hint the payload is
delivered live but NOT archived: the plugin must always send the hint.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar

import pytest
import slixmpp

from mls_xmpp.testing import (
    Account,
    ClientError,
    PayloadInbox,
    ProsodyError,
    ProsodyServer,
    XmppServer,
    connect_client,
    create_room,
    disconnect_client,
    join_room,
    payload_of,
    room_archive,
    send_payload,
    stanza_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T = TypeVar("T")
STEP = 10.0  # seconds allowed for any single network step


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop; fail instead of hanging after ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Room(NamedTuple):
    jid: str
    alice: slixmpp.ClientXMPP
    bob: slixmpp.ClientXMPP


@asynccontextmanager
async def room_with_alice_and_bob(
    server: XmppServer, new_account: Callable[[str], Account]
) -> AsyncIterator[Room]:
    """A fresh room created (and configured) by alice, joined by bob."""
    room = server.room_jid(f"group-{secrets.token_hex(4)}")
    clients: list[slixmpp.ClientXMPP] = []
    try:
        alice = await connect_client(server, *new_account("alice"), timeout=STEP)
        clients.append(alice)
        bob = await connect_client(server, *new_account("bob"), timeout=STEP)
        clients.append(bob)
        await create_room(alice, room, "alice", timeout=STEP)
        await join_room(bob, room, "bob", timeout=STEP)
        yield Room(room, alice, bob)
    finally:
        await asyncio.gather(*(disconnect_client(c) for c in clients))


async def archive_of(server: XmppServer, account: Account, room: str) -> list[Any]:
    """``room``'s archive as seen by ``account``, who never joined the room."""
    charlie = await connect_client(server, *account, timeout=STEP)
    try:
        return await room_archive(charlie, room, timeout=STEP)
    finally:
        await disconnect_client(charlie)


def test_bodyless_payload_with_store_hint_is_delivered_reflected_and_archived(
    server: XmppServer, new_account: Callable[[str], Account]
) -> None:
    charlie = new_account("charlie")
    data = os.urandom(600)

    async def scenario() -> None:
        async with room_with_alice_and_bob(server, new_account) as r:
            with PayloadInbox(r.bob) as bob_inbox, PayloadInbox(r.alice) as alice_inbox:
                send_payload(r.alice, r.jid, data, store_hint=True)
                received = await bob_inbox.get(STEP)
                reflected = await alice_inbox.get(STEP)

            # bob got exactly what alice sent, body-less, from alice's occupant JID
            assert payload_of(received.xml) == b64(data)
            assert received["type"] == "groupchat"
            assert received.xml.find("{jabber:client}body") is None
            assert str(received["from"]) == f"{r.jid}/alice"
            # the room stamped it with its stanza-id; alice's reflection carries the same
            sid = stanza_id(received.xml, by=r.jid)
            assert sid
            assert payload_of(reflected.xml) == b64(data)
            assert stanza_id(reflected.xml, by=r.jid) == sid

            # charlie, never in the room, finds it in the room's archive under that id
            archived = [m for m in await archive_of(server, charlie, r.jid) if m.payload]
            assert [(m.payload, m.archive_id, m.sender) for m in archived] == [
                (b64(data), sid, f"{r.jid}/alice")
            ]

    run(scenario())


def test_bodyless_payload_without_store_hint_is_delivered_but_not_archived(
    server: XmppServer, new_account: Callable[[str], Account]
) -> None:
    charlie = new_account("charlie")
    unhinted, hinted = os.urandom(100), os.urandom(100)

    async def scenario() -> None:
        async with room_with_alice_and_bob(server, new_account) as r:
            with PayloadInbox(r.bob) as bob_inbox:
                send_payload(r.alice, r.jid, unhinted, store_hint=False)
                send_payload(r.alice, r.jid, hinted, store_hint=True)  # ordering barrier
                first = await bob_inbox.get(STEP)
                second = await bob_inbox.get(STEP)

            # both delivered live, in the order sent
            assert [payload_of(first.xml), payload_of(second.xml)] == [b64(unhinted), b64(hinted)]
            # only the hinted one got a stanza-id (i.e. was archived)
            assert stanza_id(first.xml, by=r.jid) is None
            assert stanza_id(second.xml, by=r.jid)

            # once bob has the later, hinted payload, the archive holds it; never the first
            payloads = [m.payload for m in await archive_of(server, charlie, r.jid)]
            assert b64(hinted) in payloads
            assert b64(unhinted) not in payloads

    run(scenario())


def test_new_room_is_locked_until_its_owner_submits_the_configuration(
    prosody: ProsodyServer, new_account: Callable[[str], Account]
) -> None:
    """Prosody's default (muc_room_locking): the plugin must configure rooms it creates.

    Prosody only: ejabberd 23.01 lets others in before the form is submitted.
    """
    room = prosody.room_jid(f"locked-{secrets.token_hex(4)}")

    async def scenario() -> None:
        alice = await connect_client(prosody, *new_account("alice"), timeout=STEP)
        bob = await connect_client(prosody, *new_account("bob"), timeout=STEP)
        try:
            await join_room(alice, room, "alice", timeout=STEP)  # creates the room, locked
            with pytest.raises(ClientError, match="item-not-found"):
                await join_room(bob, room, "bob", timeout=STEP)
            await create_room(alice, room, "alice", timeout=STEP)  # re-join + configure
            await join_room(bob, room, "bob", timeout=STEP)
        finally:
            await asyncio.gather(disconnect_client(alice), disconnect_client(bob))

    run(scenario())


def test_prosody_server_lifecycle(prosody: ProsodyServer) -> None:
    """A second, private server: own ports and directory, accounts, clean stop by PID."""
    server = ProsodyServer(storage="memory")
    with server:
        assert server.running
        assert (server.pidfile_path.read_text().strip()) == str(server.pid)
        assert {server.c2s_port, server.http_port}.isdisjoint(
            {prosody.c2s_port, prosody.http_port}
        )
        assert server.directory != prosody.directory
        alice = server.create_user("alice", "alice-pw")
        assert alice.jid == "alice@localhost"
        with pytest.raises(ProsodyError, match="exists"):
            server.create_user("alice", "other-pw")
        pid, directory = server.pid, server.directory

        async def login() -> None:
            client = await connect_client(server, *alice, timeout=STEP)
            await disconnect_client(client)
            with pytest.raises(ClientError, match="authentication failed"):
                await connect_client(server, alice.jid, "wrong-pw", timeout=STEP)

        run(login())
    assert not server.running
    assert not directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the process is gone
    server.stop()  # idempotent
    assert server.start_seconds is not None and server.stop_seconds is not None


def test_prosody_server_settings_and_bulk_accounts() -> None:
    """``settings=`` reach Prosody's global config; ``create_users`` makes many accounts."""
    import subprocess

    with pytest.raises(ValueError):
        ProsodyServer(settings={"not an identifier": 1})
    with pytest.raises(ValueError):
        ProsodyServer(settings={"limit": [1, 2]})  # type: ignore[dict-item]
    server = ProsodyServer(storage="memory", settings={"c2s_stanza_size_limit": 123456,
                                                       "muc_room_locking": False})
    with server:
        shell = subprocess.run(
            [server.prosodyctl, "--config", str(server.config_path), "shell"],
            input='config:get("*", "c2s_stanza_size_limit")\n'
                  'config:get("*", "muc_room_locking")\n',
            env=server.environment, capture_output=True, text=True, timeout=30, check=True)
        assert "123456" in shell.stdout and "false" in shell.stdout
        accounts = server.create_users([(f"bulk{i}", f"pw{i}") for i in range(30)])
        assert [a.jid for a in accounts] == [f"bulk{i}@localhost" for i in range(30)]
        with pytest.raises(ProsodyError, match="created 0 of 1"):
            server.create_users([("bulk3", "again")])
        with pytest.raises(ValueError):
            server.create_users([("Bad Name", "pw")])
        with pytest.raises(ValueError):
            server.create_users([("fine", 'has"quote')])

        async def login() -> None:
            client = await connect_client(server, *accounts[17], timeout=STEP)
            await disconnect_client(client)

        run(login())
