"""The device of the chaos test that gets killed: a plugin client on an SQLite store,
run as a separate process so that SIGKILL is real.

Usage: python chaos_child.py HOST PORT JID PASSWORD DB LOG DEVICE

Connects (through the test's fault proxy) and reconnects after every lost
connection, as a bot or a chat client does. Appends to LOG, with fsync, one
line per event: ``msg <epoch> <stanza-id> <body>`` for every message it reads,
``state <epoch> <epoch_authenticator hex> <member fingerprints, comma-separated>``
after start and after every Commit, ``me <fingerprint>`` and ``up`` when ready. Runs until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import slixmpp

import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin


def main() -> None:
    host, port, jid, password, db, log_path, device = sys.argv[1:8]
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    # the plugin's own reports (mls_error, healing), for the test's report of a failed run
    import logging

    handler = logging.FileHandler(log_path.rsplit(".", 1)[0] + ".debug")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger("mls_xmpp").addHandler(handler)
    logging.getLogger("mls_xmpp").setLevel(logging.INFO)

    def write(line: str) -> None:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())

    client = slixmpp.ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_scram = True
    client.register_plugin("mls", {"store": db, "device": device, "pool_size": 3,
                                   "commit_timeout": 10.0, "room_retry": 1.0})

    def state(_: Any = None) -> None:
        for g in client.plugin["mls"].groups:
            fps = ",".join(sorted(fp.replace(" ", "") for _, fp, _ in g.members))
            write(f"state {g.epoch} {g.group.epoch_authenticator.hex()} {fps}")

    def message(e: Any) -> None:
        write(f"msg {e.epoch} {e.stanza_id} {e.body}")

    client.add_event_handler("session_start", lambda _: client.send_presence())
    client.add_event_handler("mls_message", message)
    client.add_event_handler("mls_membership", state)
    client.add_event_handler("mls_resynced", state)

    async def joined(event: Any) -> None:
        await event.group.ready.wait()
        state()

    async def ready(_: Any) -> None:
        for g in client.plugin["mls"].groups:
            await g.ready.wait()
        from mls_xmpp.xmpp.trust import fingerprint

        me = fingerprint(client.plugin["mls"].identity.signature_public_key)
        write("me " + me.replace(" ", ""))
        state()
        write("up")

    async def lost(_: Any) -> None:
        await asyncio.sleep(0.5)
        client.connect(host, int(port))

    client.add_event_handler("mls_joined", joined)
    client.add_event_handler("mls_ready", ready)
    client.add_event_handler("disconnected", lost)
    client.connect(host, int(port))
    asyncio.get_event_loop().run_forever()


if __name__ == "__main__":
    main()
