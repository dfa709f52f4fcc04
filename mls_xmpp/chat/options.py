"""The command line of ``mls-xmpp chat``: its options, parsed and checked."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ChatError

#: Environment variable read for the password when ``--password`` is not given.
PASSWORD_ENV = "MLS_XMPP_PASSWORD"


@dataclass(frozen=True)
class ChatOptions:
    """What ``mls-xmpp chat`` was asked to do."""

    jid: str
    password: str
    store: Path
    server: tuple[str, int] | None = None
    plaintext: bool = False
    tls_verify: bool = True
    device: str | None = None
    timeout: float = 30.0
    verbose: bool = False
    #: encrypt a new store (see :mod:`.storekey`)
    encrypt_store: bool = True


def parse_server(value: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (port 5222 by default; ``[v6]:PORT`` for IPv6 literals).

    :raises ChatError: malformed, or the port is out of range.
    """
    m = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?"
                     r"|(?P<host>[^:\s\[\]]+)(?::(?P<port>\d+))?", value.strip())
    if m is None:
        raise ChatError(f"--server wants HOST:PORT, not {value!r}")
    host = m["v6"] or m["host"]
    port = int(m["p6"] or m["port"] or 5222)
    if not 0 < port < 65536:
        raise ChatError(f"--server port {port} is out of range")
    return host, port


def default_store(bare_jid: str) -> Path:
    """``$XDG_DATA_HOME/mls-xmpp/<jid>.db`` (``~/.local/share`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    name = bare_jid.replace(os.sep, "_")
    return Path(base) / "mls-xmpp" / f"{name}.db"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mls-xmpp chat",
        description="A terminal chat client for MLS (RFC 9420) groups over XMPP. Reads lines "
        "from standard input: /help lists the commands, any other line is sent to the current "
        "group.",
        epilog=f"The password comes from --password, else ${PASSWORD_ENV}, else a prompt "
        "(when standard input is a terminal). Prefer the variable or the prompt: command-line "
        "arguments are visible to other users of the machine. Exit status: 0 after /quit or "
        "end of input, 1 when logging in failed, 2 on bad options.",
    )
    p.add_argument("jid", help="your account, user@domain")
    p.add_argument("--password", help=f"the account's password (default: ${PASSWORD_ENV}, "
                   "else a prompt)")
    p.add_argument("--server", metavar="HOST:PORT",
                   help="connect here (default port 5222; default: DNS SRV of the JID's domain)")
    p.add_argument("--plaintext", action="store_true",
                   help="no TLS at all (loopback test servers only)")
    p.add_argument("--no-tls-verify", action="store_true",
                   help="accept any TLS certificate (self-signed test servers)")
    p.add_argument("--store", metavar="PATH",
                   help="SQLite file for this device's keys and groups "
                   "(default: ~/.local/share/mls-xmpp/<jid>.db)")
    p.add_argument("--unencrypted-store", action="store_true",
                   help="make a new store without encryption (by default it is encrypted "
                   "with a key derived from $MLS_XMPP_STORE_PASSPHRASE, else the password)")
    p.add_argument("--device", metavar="NAME",
                   help="a stable name for this device; with it, a device whose store was "
                   "lost replaces its old leaf when it rejoins its groups")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds to wait for logging in (default 30)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log slixmpp and the plugin to standard error")
    return p


def _options(argv: Sequence[str]) -> ChatOptions:
    """Parse and check the command line; exits with status 2 on bad options."""
    import slixmpp
    from slixmpp.jid import InvalidJID

    parser = _parser()
    ns = parser.parse_args(list(argv))
    try:
        jid = slixmpp.JID(ns.jid)
    except InvalidJID as e:
        parser.error(f"{ns.jid!r} is not a JID: {e}")
    if not jid.user or not jid.domain:
        parser.error(f"{ns.jid!r} is not an account JID user@domain")
    if ns.plaintext and ns.no_tls_verify:
        parser.error("--plaintext and --no-tls-verify exclude each other")
    if ns.timeout <= 0:
        parser.error("--timeout must be positive")
    server = None
    if ns.server is not None:
        try:
            server = parse_server(ns.server)
        except ChatError as e:
            parser.error(str(e))
    if ns.device is not None and not ns.device.strip():
        parser.error("--device must not be empty")
    password = ns.password
    if password is None:
        password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if not sys.stdin.isatty():
            parser.error(f"no password: give --password or set ${PASSWORD_ENV} (standard input "
                         "is not a terminal to prompt on)")
        try:
            password = getpass.getpass(f"password for {jid.bare}: ")
        except (EOFError, KeyboardInterrupt):
            parser.error("no password given")
    if not password:
        parser.error("the password is empty")
    store = Path(ns.store).expanduser() if ns.store else default_store(str(jid.bare))
    return ChatOptions(jid=str(jid), password=password, store=store, server=server,
                       plaintext=ns.plaintext, tls_verify=not ns.no_tls_verify,
                       device=ns.device.strip() if ns.device else None,
                       timeout=ns.timeout, verbose=ns.verbose,
                       encrypt_store=not ns.unencrypted_store)
