"""Room affiliations for many members in few ``muc#admin`` requests (mls_xmpp.xmpp.affiliations).

A group of the creator, one online member and offline accounts whose KeyPackages
the test made: every member account must end up with the affiliation the group's rules give it
(:func:`~mls_xmpp.xmpp.room.wanted_affiliation`) in the room.
On ejabberd (which applies every item of a request) that takes one request; on
Prosody 0.12 (which applies only the first item of a request, and still answers
with a result) the plugin must notice it by reading the lists back and give the
others their affiliation one by one. Requests are counted, not timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.testing import Account, EjabberdServer, XmppServer
from mls_xmpp.xmpp.affiliations import service_of
from mls_xmpp.xmpp.room import wanted_affiliation

from .mls_clients import befriend, close, mls_client, offline_key_packages

OFFLINE = 20


def counted(delivery: Any) -> dict[str, list[int]]:
    """Count the plugin's affiliation requests: ``single`` ones and ``batch`` sizes."""
    counts: dict[str, list[int]] = {"single": [], "batch": []}
    one, many = delivery.set_affiliation, delivery.set_affiliations

    async def set_affiliation(room: str, jid: str, affiliation: Any) -> None:
        counts["single"].append(1)
        await one(room, jid, affiliation)

    async def set_affiliations(room: str, changes: list[tuple[str, str]]) -> None:
        counts["batch"].append(len(changes))
        await many(room, changes)

    delivery.set_affiliation = set_affiliation
    delivery.set_affiliations = set_affiliations
    return counts


async def _run(server: XmppServer, new_account: Callable[[str], Account]) -> None:
    alice_acc, bob_acc = new_account("alice"), new_account("bob")
    offline = [new_account("away") for _ in range(OFFLINE)]
    alice, _ = await mls_client(server, *alice_acc, {"invitations": "any"})
    bob, rb = await mls_client(server, *bob_acc, {"invitations": "any"})
    try:
        await befriend(alice, bob)
        plugin = alice.plugin["mls"]
        suite = int(plugin.config["suite"])
        kps = offline_key_packages(alice, [a.jid for a in offline])
        counts = counted(plugin.delivery)
        group = await plugin.create_group(members=[bob_acc.jid], key_packages=kps)
        await rb.wait("mls_joined")
        current = await plugin.delivery.affiliations(group.room)
        members = {a.jid for a in offline} | {bob_acc.jid}
        may_change = group._may_change(members)  # the group's rules: admin or member
        wanted = {j: wanted_affiliation(j, may_change) for j in members}
        assert {j: current.get(j) for j in members} == wanted
        assert set(wanted.values()) <= {"member", "admin"}
        assert current[alice_acc.jid] == "owner"
        learned = plugin.delivery.batching.get(service_of(group.room))
        if isinstance(server, EjabberdServer):
            # every item of one request applied: one request for all 21
            assert learned is True
            assert counts == {"single": [], "batch": [OFFLINE + 1]}
        else:
            # Prosody 0.12 applied the first item only; the read-back caught it
            assert learned is False
            assert counts == {"single": [1] * OFFLINE, "batch": [OFFLINE + 1]}
        # a later change on the same service uses what was learned: no probe again
        late = new_account("late")
        late_kp = Client.generate(late.jid.encode(), suite,
                                  config=GroupConfig()).make_key_package()
        more = [new_account("later") for _ in range(2)]
        more_kps = [Client.generate(a.jid.encode(), suite,
                                    config=GroupConfig()).make_key_package() for a in more]
        counts["single"].clear()
        counts["batch"].clear()
        await group.add_key_packages([late_kp, *more_kps])
        current = await plugin.delivery.affiliations(group.room)
        assert all(current.get(a.jid) == wanted[bob_acc.jid] for a in (late, *more))
        if learned:
            assert counts == {"single": [], "batch": [3]}
        else:
            assert counts == {"single": [1, 1, 1], "batch": []}
    finally:
        await close(alice, bob)


def test_many_members_get_their_affiliation_in_few_requests(
        server: XmppServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_run(server, new_account), 240))


async def _barrier(server: XmppServer, account: Account) -> None:
    from mls_xmpp.testing import FaultProxy

    async with FaultProxy(server.host, server.c2s_port) as proxy:
        client, _ = await mls_client(server, *account, via=(proxy.host, proxy.port))
        try:
            delivery = client.plugin["mls"].delivery
            assert await delivery.barrier(30.0)
            # the server is slow to answer (held replies): a long barrier keeps waiting ...
            proxy.stall_down = True
            waiting = asyncio.ensure_future(delivery.barrier(600.0))
            await asyncio.sleep(2.0)
            assert not waiting.done()
            # ... until the stream goes down: then it says so without waiting its 600 s
            proxy.cut_all()
            assert await asyncio.wait_for(waiting, 60.0) is False
        finally:
            proxy.stall_down = False
            await close(client)


def test_the_round_trip_after_welcomes_waits_while_the_stream_is_up(
        prosody: XmppServer, new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_barrier(prosody, new_account("slow")), 240))
