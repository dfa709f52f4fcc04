"""The ``mls-xmpp`` command.

Subcommands:

* ``demo`` -- the architecture's scenario end to end (:mod:`mls_xmpp.demo`):
  an embedded Prosody as the MLS Delivery Service, four devices, KeyPackages
  on PEP, a group in a MUC room, messages every way, a key update, a removal,
  and a member added while offline who catches up from the room archive.
  Exit status 0 only when every step passed. ``--server``/``--account`` run
  the same steps on an existing server with existing accounts.
* ``vectors PATH...`` -- run mlswg test-vector files
  (same as ``python -m mls_xmpp.vectors``).
* ``chat JID [options]`` -- a terminal chat client for MLS groups on any XMPP
  server (:mod:`mls_xmpp.chat`; ``mls-xmpp chat --help``).
* ``doctor --server HOST[:PORT] --account JID --password PW`` -- check that an
  XMPP server provides what the mapping needs, by using it
  (:mod:`mls_xmpp.doctor`): a table of checks, the server setting to change
  for each failure, exit status 1 when a required feature is missing.
* ``server [--accounts alice,bob]`` -- a throw-away Prosody on loopback to try
  the plugin on: creates the accounts, prints their JIDs and passwords (as the
  settings of the README's examples) and serves until Ctrl-C, then deletes
  its data.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]

DEMO_EPILOG = """Without options the demo starts a throw-away Prosody on free loopback ports
(Debian package 'prosody'; bin/setup installs it), creates the accounts
alice, bob, charlie and dave, runs every step and stops the server again.

On an existing server give all four accounts; they must exist already (the
demo does not register accounts) and be used for nothing else, since the demo
publishes KeyPackages to their PEP node and adds every device it finds there.
Their server needs MUC with MAM (conference.DOMAIN unless --muc-domain), PEP
and offline storage. The demo destroys its room and retracts its KeyPackages
when it ends. Example:

  mls-xmpp demo --server xmpp.example.org:5222 --domain example.org \\
      --account alice=alice:PW1 --account bob=bob:PW2 \\
      --account charlie=charlie:PW3 --account dave=dave:PW4

Exit status: 0 when every step passed, 1 when one failed, 2 on bad options.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mls-xmpp`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["vectors"]:  # hand every remaining option to the vector runner
        from mls_xmpp.vectors.__main__ import main as vectors_main

        return vectors_main(args[1:])
    if args[:1] == ["chat"]:  # the chat client parses its own options
        from mls_xmpp.chat import main as chat_main

        return chat_main(args[1:])

    parser = argparse.ArgumentParser(
        prog="mls-xmpp", description="MLS (RFC 9420) over XMPP, as a slixmpp plugin."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the architecture's scenario on an embedded Prosody (or a given server)",
        description="Four devices, one MLS group over a MUC room: KeyPackages on PEP, group "
        "creation, messages every way, a key update, a removal, and a member added while "
        "offline who catches up from the room archive. Every step is checked.",
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    existing = demo.add_argument_group("existing server (instead of the embedded one)")
    existing.add_argument("--server", metavar="HOST:PORT",
                          help="connect here (default port 5222; default: DNS SRV of the JIDs)")
    existing.add_argument("--domain", metavar="D",
                          help="XMPP domain for --account JIDs given as a bare local part")
    existing.add_argument("--muc-domain", metavar="D",
                          help="MUC service for the group room (default: conference.DOMAIN)")
    existing.add_argument("--account", metavar="NAME=JID:PASSWORD", action="append",
                          default=[], help="an existing account for NAME (alice, bob, charlie, "
                          "dave); give all four")
    existing.add_argument("--plaintext", action="store_true",
                          help="no TLS at all (loopback test servers only)")
    existing.add_argument("--no-tls-verify", action="store_true",
                          help="accept any TLS certificate (self-signed test servers)")
    demo.add_argument("-q", "--quiet", action="store_true",
                      help="print only the step results and the verdict")
    demo.add_argument("-v", "--verbose", action="store_true", help="log slixmpp and the plugin")
    demo.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                      help="seconds to wait for each reply or event (default 30)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the embedded Prosody's directory and log")
    demo.add_argument("--fail-at", type=int, metavar="STEP", help=argparse.SUPPRESS)
    server = sub.add_parser(
        "server",
        help="a throw-away Prosody on loopback with accounts, to try the plugin on",
        description="Start Prosody (Debian package 'prosody') on a free loopback port with "
        "its state in a temporary directory, create the accounts, print their JIDs and "
        "passwords, and serve until Ctrl-C (or SIGTERM); then stop it and delete its data. "
        "Plaintext on loopback only: clients must allow SCRAM without TLS.",
    )
    server.add_argument("--accounts", default="alice,bob", metavar="NAME,NAME...",
                        help="local parts of the accounts to create (default: alice,bob)")
    doctor = sub.add_parser(
        "doctor",
        help="check that an XMPP server provides what the mapping needs",
        description="Log in to an existing account and check, by using them, the server "
        "features MLS over XMPP needs: members-only persistent rooms, MAM on rooms, PEP, "
        "offline storage, the stanza size limit, HTTP upload, stream management.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from mls_xmpp.doctor import DOCTOR_EPILOG, build_parser

    doctor.epilog = DOCTOR_EPILOG
    build_parser(doctor)
    sub.add_parser(
        "vectors",
        help="run mlswg test-vector files: vectors [--type T] [-q] [-v] PATH...",
        add_help=False,
    )
    sub.add_parser(
        "chat",
        help="a terminal chat client: chat JID [--server HOST:PORT] [--store PATH] ... "
        "(chat --help)",
        add_help=False,
    )
    ns = parser.parse_args(args)
    if ns.command == "server":
        names = [n.strip() for n in ns.accounts.split(",") if n.strip()]
        if not names or len(set(names)) != len(names):
            server.error("--accounts: give distinct names, e.g. alice,bob")
        return serve(names)
    if ns.command == "doctor":
        from mls_xmpp.doctor import options_from, run

        try:
            doctor_options = options_from(ns)
        except ValueError as e:
            doctor.error(str(e))
        return run(doctor_options)
    if ns.command == "demo":
        # imported here so that `mls-xmpp vectors` does not load slixmpp
        from mls_xmpp import demo as demo_module

        try:
            options = demo_module.DemoOptions.build(
                server=ns.server, domain=ns.domain, muc_domain=ns.muc_domain,
                accounts=ns.account, plaintext=ns.plaintext, tls_verify=not ns.no_tls_verify,
                quiet=ns.quiet, verbose=ns.verbose, keep=ns.keep, step_timeout=ns.timeout,
                fail_at=ns.fail_at)
        except demo_module.DemoError as e:
            demo.error(str(e))
        return demo_module.run(options)
    parser.error(f"unknown command {ns.command!r}")  # pragma: no cover - argparse exits


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(names: Sequence[str]) -> int:
    """``mls-xmpp server``: run a throw-away Prosody with accounts ``names`` until Ctrl-C.

    Prints the accounts as Python assignments (``ALICE, ALICE_PASSWORD = ...``,
    ``HOST, PORT = ...``), the settings the README's examples start with.
    Returns 0 after Ctrl-C or SIGTERM, 1 when Prosody failed, 2 for an unusable name.
    """
    from mls_xmpp.testing import ProsodyError, ProsodyServer

    prosody = ProsodyServer()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        try:
            prosody.start()
        except ProsodyError as e:
            print(f"mls-xmpp server: {e}", file=sys.stderr)
            return 1
        accounts = []
        for name in names:
            try:
                accounts.append(prosody.create_user(name, secrets.token_hex(8)))
            except ValueError as e:
                print(f"mls-xmpp server: {e}", file=sys.stderr)
                return 2
        lines = [
            f"Prosody serves {prosody.domain} on {prosody.host}:{prosody.c2s_port} "
            "(plaintext, loopback only);",
            f"group rooms on {prosody.muc_domain}. Its data is deleted when it stops.",
            "",
            "# Settings for the README's examples:",
        ]
        for account in accounts:
            var = account.jid.split("@")[0].upper().replace("-", "_").replace(".", "_")
            lines.append(f'{var}, {var}_PASSWORD = "{account.jid}", "{account.password}"')
        lines += [
            f'HOST, PORT = "{prosody.host}", {prosody.c2s_port}',
            "LOCAL_TEST_SERVER = True",
            "",
            "# The terminal chat client:",
        ]
        lines += [f"#   mls-xmpp chat {a.jid} --password {a.password} "
                  f"--server {prosody.host}:{prosody.c2s_port} --plaintext" for a in accounts]
        lines += ["", "Ctrl-C stops the server."]
        print("\n".join(lines), flush=True)
        while prosody.running:
            time.sleep(0.2)
        print("mls-xmpp server: Prosody exited; its log:\n" + prosody.log_text(),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        prosody.stop()


if __name__ == "__main__":
    sys.exit(main())
