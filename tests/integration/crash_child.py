"""A device that the crash test kills with SIGKILL: a plugin client on an SQLite store.

Usage: python crash_child.py HOST PORT JID PASSWORD DB LOG [send|send-lazy]

Appends to LOG, with fsync, one line per event: ``msg <stanza-id> <body>``,
``joined``, ``epoch <n> <epoch_authenticator hex>`` (after start and after every
Commit). Runs until killed. With ``send`` it also sends messages to its group
without pause once ready, each body ``<pid>-<n>``, logging ``sending <body>``
before ``send()`` and ``sent <body>`` once it returned. With ``send-lazy`` it sends
with ``send(durable=False)`` (``handed <body>`` once it returned) and calls
``wait_stored()`` after every fifth message, then logs ``sent <body>`` for the five.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import slixmpp

import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin


def main() -> None:
    host, port, jid, password, db, log_path = sys.argv[1:7]
    sender = sys.argv[7:8] in (["send"], ["send-lazy"])
    lazy = sys.argv[7:8] == ["send-lazy"]
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process

    def write(line: str) -> None:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())

    client = slixmpp.ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_scram = True
    client.register_plugin("mls", {"store": db, "pool_size": 2})

    def status(_: Any = None) -> None:
        for g in client.plugin["mls"].groups:
            write(f"epoch {g.epoch} {g.group.epoch_authenticator.hex()}")

    client.add_event_handler("session_start", lambda _: client.send_presence())
    client.add_event_handler("mls_message", lambda e: write(f"msg {e.stanza_id} {e.body}"))
    async def joined(event: Any) -> None:
        await event.group.ready.wait()
        write("joined")
        status()

    client.add_event_handler("mls_joined", joined)
    client.add_event_handler("mls_membership", status)

    async def ready(_: Any) -> None:
        for g in client.plugin["mls"].groups:
            await g.ready.wait()
        status()
        write("ready")
        if sender:
            asyncio.ensure_future(send_forever())

    async def send_forever() -> None:
        n = 0
        handed: list[str] = []
        while True:
            for g in client.plugin["mls"].groups:
                body = f"{os.getpid()}-{n}"
                n += 1
                write(f"sending {body}")
                if not lazy:
                    await g.send(body)
                    write(f"sent {body}")
                    continue
                await g.send(body, durable=False)
                write(f"handed {body}")
                handed.append(body)
                if len(handed) == 5:
                    await g.wait_stored()
                    for b in handed:
                        write(f"sent {b}")
                    handed.clear()
            await asyncio.sleep(0.005)

    client.add_event_handler("mls_ready", ready)
    client.connect(host, int(port))
    asyncio.get_event_loop().run_forever()


if __name__ == "__main__":
    main()
