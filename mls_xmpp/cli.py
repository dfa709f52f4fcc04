"""The ``mls-xmpp`` command.

Subcommands:

* ``demo`` -- start an embedded Prosody (the Delivery Service), connect two
  slixmpp clients and pass one body-less, namespaced payload through a MUC room
  and its archive. Says plainly which parts of the project exist and which not.
* ``vectors PATH...`` -- run mlswg test-vector files
  (same as ``python -m mls_xmpp.vectors``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mls_xmpp.testing import ProsodyServer

__all__ = ["main"]

NOT_BUILT = (
    "This demo exercises the transport only. Not built yet: the slixmpp plugin that\n"
    "carries MLS over XMPP (mls_xmpp/xmpp), hence no MLS group is created here and\n"
    "nothing is encrypted: the payload above is placeholder bytes, NOT an MLS message.\n"
    "The RFC 9420 core (mls_xmpp/core) is in progress; see what passes with\n"
    "`mls-xmpp vectors tests/vectors/data/*.json` (the mlswg test vectors)."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mls-xmpp`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["vectors"]:  # hand every remaining option to the vector runner
        from mls_xmpp.vectors.__main__ import main as vectors_main

        return vectors_main(args[1:])

    parser = argparse.ArgumentParser(
        prog="mls-xmpp", description="MLS (RFC 9420) over XMPP, as a slixmpp plugin."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = sub.add_parser(
        "demo",
        help="start an embedded Prosody and pass a payload through a room",
        description="Start a throw-away Prosody on loopback, connect alice and bob, "
        "and pass one body-less payload through a MUC room and its MAM archive.",
    )
    demo.add_argument("--keep", action="store_true", help="keep Prosody's directory and log")
    demo.add_argument("-v", "--verbose", action="store_true", help="log slixmpp (debug)")
    demo.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    sub.add_parser(
        "vectors",
        help="run mlswg test-vector files: vectors [--type T] [-q] [-v] PATH...",
        add_help=False,
    )
    ns = parser.parse_args(args)
    if ns.command == "demo":
        return run_demo(keep=ns.keep, verbose=ns.verbose, step_timeout=ns.timeout)
    parser.error(f"unknown command {ns.command!r}")  # pragma: no cover - argparse exits


def run_demo(*, keep: bool = False, verbose: bool = False, step_timeout: float = 10.0) -> int:
    """The ``demo`` subcommand; 0 only when every step worked."""
    # imported here so that `mls-xmpp vectors` does not load slixmpp
    from mls_xmpp.testing import ClientError, ProsodyError, ProsodyServer

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    print("mls-xmpp demo: XMPP server as MLS Delivery Service (infrastructure only)")
    server = ProsodyServer(keep_directory=keep)
    try:
        with server:
            say(
                f"Prosody pid {server.pid} ready in {server.start_seconds:.2f} s: "
                f"c2s 127.0.0.1:{server.c2s_port}, http {server.http_port}, "
                f"rooms on {server.muc_domain}"
            )
            ok = asyncio.run(
                asyncio.wait_for(_demo_flow(server, step_timeout), 6 * step_timeout)
            )
        say(f"Prosody stopped in {server.stop_seconds:.2f} s")
    except (ProsodyError, ClientError, TimeoutError) as e:
        _fail(str(e) or type(e).__name__)
        ok = False
    except Exception as e:  # noqa: BLE001 - a demo reports any failure plainly
        _fail(f"{type(e).__name__}: {e}")
        ok = False
    if keep:
        try:
            say(f"kept {server.directory} (log: prosody.log)")
        except ProsodyError:
            pass
    print()
    print(NOT_BUILT)
    print()
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


async def _demo_flow(server: ProsodyServer, step: float) -> bool:
    """Accounts, two clients, a room, one payload live and from the archive."""
    import base64

    from mls_xmpp.testing import (
        PayloadInbox,
        connect_client,
        create_room,
        disconnect_client,
        join_room,
        payload_of,
        room_archive,
        send_payload,
        stanza_id,
    )

    alice_acct = server.create_user("alice", "alice-demo-pw")
    bob_acct = server.create_user("bob", "bob-demo-pw")
    say(f"accounts created: {alice_acct.jid}, {bob_acct.jid}")

    t0 = time.monotonic()
    alice = await connect_client(server, *alice_acct, timeout=step)
    bob = await connect_client(server, *bob_acct, timeout=step)
    say(f"alice and bob logged in (plaintext SCRAM on loopback) in {time.monotonic() - t0:.2f} s")
    try:
        room = server.room_jid("demo")
        await create_room(alice, room, "alice", timeout=step)
        say(f"alice created and configured {room} (persistent, archived)")
        await join_room(bob, room, "bob", timeout=step)
        say(f"bob joined {room}")

        data = b"placeholder, not an MLSMessage: " + bytes(range(16))
        encoded = base64.b64encode(data).decode("ascii")
        with PayloadInbox(bob) as inbox:
            t0 = time.monotonic()
            send_payload(alice, room, data, store_hint=True)
            say(
                f"alice sent a groupchat message with no <body/>: <mls xmlns='urn:mls-xmpp:0'> "
                f"({len(data)} bytes, base64) + <store xmlns='urn:xmpp:hints'/>"
            )
            got = await inbox.get(step)
            elapsed_ms = (time.monotonic() - t0) * 1000
        sid = stanza_id(got.xml, by=room)
        if payload_of(got.xml) != encoded or not sid:
            say("bob received a message, but the payload or the room's stanza-id is wrong")
            return False
        say(
            f"bob received it from {got['from']} in {elapsed_ms:.1f} ms, "
            f"payload intact, room stanza-id {sid}"
        )

        archive = await room_archive(bob, room, timeout=step)
        hits = [m for m in archive if m.payload == encoded and m.archive_id == sid]
        if not hits:
            say("the payload is missing from the room's MAM archive")
            return False
        say(f"room archive (MAM) holds it under the same id: {len(archive)} message(s) in room")
        return True
    finally:
        await asyncio.gather(disconnect_client(alice), disconnect_client(bob))
        say("clients disconnected")


def _fail(reason: str) -> None:
    sys.stdout.flush()
    print(f"FAILED: {reason}", file=sys.stderr, flush=True)


def say(line: str) -> None:
    """One progress line of the demo."""
    print(f"  - {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
