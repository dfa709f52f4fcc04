"""An MLS echo bot: answers every group message it can read.

    python examples/echo_bot.py bot@example.org PASSWORD [--store bot.db] [--server HOST:PORT]

Anyone who adds the bot's account to an MLS group (it publishes its KeyPackages
on start) gets each of their messages echoed back, end-to-end encrypted. The bot
is public: it takes everyone's invitations (``"invitations": "any"``; each inviter
still at most ``invitation_limit`` per hour). A private bot keeps the default,
its roster contacts with a mutual subscription only.
on start) gets each of their messages echoed back, end-to-end encrypted.

A wrong password, a server it cannot reach or one without what MLS groups need
(MUC rooms with an archive, PEP) at start-up: it says so on stderr and exits
with status 1. Once it has run, a lost connection is retried; its groups and
their handles carry on, and answers given meanwhile are sent on reconnection.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import slixmpp

import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin
from mls_xmpp.errors import NotConnectedError


class EchoBot(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, store: str | None) -> None:
        super().__init__(jid, password)
        # a public bot: anyone may add it to a group (default: roster contacts only)
        self.register_plugin("mls", {"store": store, "device": "echo-bot",
                                     "invitations": "any"})
        self.add_event_handler("session_start", lambda _: self.send_presence())
        self.add_event_handler("mls_message", self.on_message)

    async def on_message(self, event) -> None:  # MLSMessageEvent
        if event.sender != self.boundjid.bare:
            await event.group.send(f"echo: {event.body}")


class Supervisor:
    """Start-up failures end the bot with a reason; later disconnections are retried."""

    def __init__(self, bot: EchoBot, server: tuple[str, int] | None) -> None:
        self.bot, self.server = bot, server
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.ready_once = False
        bot.add_event_handler("mls_ready", self.on_ready)
        bot.add_event_handler("mls_error", self.on_error)
        bot.add_event_handler("disconnected", self.on_disconnected)

    def connect(self) -> None:
        if self.server is None:
            self.bot.connect()
        else:
            self.bot.connect(*self.server)

    def on_ready(self, _) -> None:
        self.ready_once = True
        groups = len(self.bot.plugin["mls"].groups)
        print(f"ready: {self.bot.boundjid.bare}, {groups} group(s)", file=sys.stderr, flush=True)

    def on_error(self, event) -> None:  # MLSErrorEvent
        if isinstance(event.error, NotConnectedError) and not self.ready_once:
            # a refused login, no server, a server lacking MUC/MAM/PEP: say so and stop
            if not self.failed.done():
                self.failed.set_result(event.reason)
        else:
            print(f"mls_error: {event.reason}", file=sys.stderr, flush=True)

    def on_disconnected(self, reason) -> None:
        if self.ready_once and not self.failed.done():
            print(f"disconnected ({reason}); reconnecting", file=sys.stderr, flush=True)
            asyncio.get_running_loop().call_later(2.0, self.reconnect)

    def reconnect(self) -> None:
        if not self.bot.is_connected() and not self.bot.is_connecting():
            self.connect()


async def run(args: argparse.Namespace) -> int:
    """Run the bot until start-up fails (1); otherwise for ever."""
    bot = EchoBot(args.jid, args.password, args.store)
    if args.plaintext:
        bot.enable_starttls = bot.enable_direct_tls = False
        bot.enable_plaintext = True
        bot.plugin["feature_mechanisms"].unencrypted_scram = True
    server = None
    if args.server:
        host, _, port = args.server.rpartition(":")
        server = (host, int(port))
    supervisor = Supervisor(bot, server)
    supervisor.connect()
    reason = await supervisor.failed
    print(f"error: {reason}", file=sys.stderr, flush=True)
    bot.cancel_connection_attempt()
    bot.abort()
    return 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("jid")
    p.add_argument("password")
    p.add_argument("--store", help="SQLite file for the bot's keys and groups")
    p.add_argument("--server", help="HOST:PORT (default: from the JID's domain)")
    p.add_argument("--plaintext", action="store_true", help="no TLS (loopback tests only)")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
