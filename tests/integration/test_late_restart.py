"""A message the room took too late to be read, reflected after its sender restarted.

The epoch a message was encrypted in is stored with its outbox entry (SQLite,
schema version 6), so the sender that reads its own reflection from the room
archive after a restart still sees that the members could not read it, and
sends it again (docs/PROTOCOL.md 9.7, :mod:`mls_xmpp.xmpp.late`). Before, that
epoch was kept in memory only: the entry ended ``reflected`` and the message was
read by nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from mls_xmpp.storage import SQLiteStore
from mls_xmpp.testing import Account, FaultProxy, ProsodyServer
from mls_xmpp.xmpp.late import RESEND_AFTER

from .mls_clients import befriend, close, mls_client, synced, until

BODY = "encrypted before the Commits"


async def _late_after_restart(server: ProsodyServer, accs: list[Account], db: Path) -> None:
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        alice, _ = await mls_client(server, *accs[0], config={"store": str(db)},
                                    via=(proxy.host, proxy.port))
        bob, rb = await mls_client(server, *accs[1])
        carol, rc = await mls_client(server, *accs[2])
        clients = [alice, bob, carol]
        try:
            await befriend(alice, bob, carol)
            ga = await alice.plugin["mls"].create_group(members=[accs[1].jid, accs[2].jid])
            (gb,) = await rb.wait("mls_joined")
            (gc,) = await rc.wait("mls_joined")
            await synced(ga, gb, gc)
            epoch, room = ga.epoch, ga.room
            proxy.stall = True  # alice's stanzas wait in the proxy
            mid = await ga.send(BODY)
            assert ga.message_state(mid) == "sent"
            (entry,) = SQLiteStore(db).load_outbox(ga.group_id)
            assert entry.sent_epoch == epoch  # stored with the entry
            for i in range(RESEND_AFTER + 1):  # more Commits than members keep epochs
                await (gb, gc)[i % 2].update()
            await synced(gb, gc)
            position = gb.last_stanza_id
            # the message reaches the room now, its reflection does not reach alice
            proxy.stall_down = True
            proxy.stall = False
            await until(lambda: gb.last_stanza_id != position and gc.last_stanza_id
                        != position)  # bob and carol took it: unreadable, dropped
            assert rb.bodies() == [] and rc.bodies() == []
            proxy.cut_all()  # alice's device stops before the reflection came
            await close(alice)
            clients.remove(alice)
            # alice starts again from her SQLite file, straight to the server: she reads
            # the 4 Commits and then her message from the archive, 4 epochs late
            alice2, ra2 = await mls_client(server, *accs[0], config={"store": str(db)})
            clients.append(alice2)
            ga2 = alice2.plugin["mls"].group(room)
            await rb.wait("mls_message", timeout=60)
            await rc.wait("mls_message", timeout=60)
            await synced(ga2, gb, gc)
            for r in (rb, rc):  # sent again in the current epoch, read once
                assert [(m.body, m.epoch) for m in r.events["mls_message"]] == [
                    (BODY, epoch + RESEND_AFTER + 1)]
            await until(lambda: ga2.message_state(mid) == "reflected")
            assert ga2.outbox == []
            assert [r.events["mls_error"] for r in (ra2, rb, rc)] == [[], [], []]
        finally:
            await close(*clients)


def test_a_late_reflection_after_the_senders_restart_is_sent_again(
        prosody: ProsodyServer, new_account: Callable[[str], Account], tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_late_after_restart(
        prosody, [new_account(n) for n in ("alice", "bob", "carol")],
        tmp_path / "alice.db"), 240))
