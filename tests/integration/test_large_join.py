"""Joining a large group keeps the device's event loop serving (docs/PERFORMANCE.md,
"50,000 members on a real server").

At 50,000 members a join from a Welcome costs seconds of CPU (a signature per
leaf). On the event loop it stalled every other task of the process (in a
process with several devices, their room joins and IQs ran out of time). Now a
large Welcome is joined in a worker thread. And each joiner subscribed to the
device list of every member account and read it (100,000 requests per joiner at
50,000, O(N^2) on the server); in a large group a device now follows only the
accounts it may act on (mls_xmpp.xmpp.watching). Over a real Prosody; requests
are counted, nothing is timed.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable
from typing import Any

import pytest

from mls_xmpp.core.group.client import Client
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.devices import ADDERS
from mls_xmpp.xmpp.inbox import HEAVY_WELCOME

from .mls_clients import befriend, close, mls_client, offline_key_packages, synced

#: Offline members whose KeyPackages the test makes: a tree of ~300 leaves (~57 KB),
#: a Welcome over :data:`HEAVY_WELCOME`.
OFFLINE = 300


async def _large_welcome(server: ProsodyServer, alice_acc: Account, bob_acc: Account,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    offline = server.create_numbered_users(f"away{secrets.token_hex(3)}-", OFFLINE,
                                           f"pw-{secrets.token_hex(6)}")
    alice, _ = await mls_client(server, *alice_acc, {"invitations": "any"})
    bob, rb = await mls_client(server, *bob_acc, {"invitations": "any"})
    threads: list[bool] = []  # per Client.join: did it run on the event loop's thread?
    followed: set[str] = set()  # the accounts whose device lists bob's device follows
    watch = bob.plugin["mls"].device_watch.watch
    subscribed: list[str] = []  # bob's device-list subscription requests
    pubsub = bob.plugin["xep_0060"]
    subscribe = pubsub.subscribe

    async def spied_watch(jids: Any) -> None:
        followed.update(jids)
        await watch(jids)

    async def spied_subscribe(jid: Any, node: str, **kwargs: Any) -> Any:
        subscribed.append(str(jid))
        return await subscribe(jid, node, **kwargs)

    monkeypatch.setattr(bob.plugin["mls"].device_watch, "watch", spied_watch)
    monkeypatch.setattr(pubsub, "subscribe", spied_subscribe)
    join = Client.join

    def spied(self: Client, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return join(self, *args, **kwargs)

    monkeypatch.setattr(Client, "join", spied)
    try:
        await befriend(alice, bob)
        kps = offline_key_packages(alice, [a.jid for a in offline])
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid], key_packages=kps)
        session = (await rb.wait("mls_joined"))[0]
        assert len(session.group.members) == OFFLINE + 2
        assert len(session.group.ratchet_tree()) >= HEAVY_WELCOME  # a large Welcome...
        assert threads == [False]  # ...joined off the event loop's thread
        await synced(group, session)
        await group.send("in a large group")
        await rb.wait("mls_message")
        assert rb.bodies() == ["in a large group"]
        # bob's leaf comes after those of more than ADDERS member accounts: he is not
        # among the devices that add or remove other accounts' devices, and follows
        # (subscribes to, reads) only his own account's list, not 302
        assert session.group.own_leaf_index > ADDERS + 1
        assert followed == {bob_acc.jid}
        assert set(subscribed) <= {bob_acc.jid}
    finally:
        await close(alice, bob)


def test_a_large_welcome_is_joined_off_the_event_loop(
        prosody: ProsodyServer, new_account: Callable[[str], Account],
        monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(asyncio.wait_for(
        _large_welcome(prosody, new_account("alice"), new_account("bob"), monkeypatch), 300))
