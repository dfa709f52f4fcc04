"""An MLS echo bot: answers every group message it can read.

    python examples/echo_bot.py bot@example.org PASSWORD [--store bot.db] [--server HOST:PORT]

Anyone who adds the bot's account to an MLS group (it publishes its KeyPackages
on start) gets each of their messages echoed back, end-to-end encrypted. The bot
is public: it takes everyone's invitations (``"invitations": "any"``; each inviter
still at most ``invitation_limit`` per hour). A private bot keeps the default,
its roster contacts with a mutual subscription only.
"""

from __future__ import annotations

import argparse
import asyncio

import slixmpp

import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("jid")
    p.add_argument("password")
    p.add_argument("--store", help="SQLite file for the bot's keys and groups")
    p.add_argument("--server", help="HOST:PORT (default: from the JID's domain)")
    p.add_argument("--plaintext", action="store_true", help="no TLS (loopback tests only)")
    args = p.parse_args()
    bot = EchoBot(args.jid, args.password, args.store)
    if args.plaintext:
        bot.enable_starttls = bot.enable_direct_tls = False
        bot.enable_plaintext = True
        bot.plugin["feature_mechanisms"].unencrypted_scram = True
    if args.server:
        host, _, port = args.server.rpartition(":")
        bot.connect(host, int(port))
    else:
        bot.connect()
    asyncio.get_event_loop().run_forever()


if __name__ == "__main__":
    main()
