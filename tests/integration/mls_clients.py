"""Helpers for integration tests: slixmpp clients with the MLS plugin on real Prosody."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin
from mls_xmpp.testing import ProsodyServer, disconnect_client

TIMEOUT = 30


class Recorder:
    """Collects the plugin's events of one client, with waits.

    ``mls_joined`` records the group handle (``event.group``); the
    :class:`~mls_xmpp.xmpp.events.JoinedEvent` itself is in ``mls_joined_event``.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.events: dict[str, list[Any]] = defaultdict(list)
        self._cond = asyncio.Condition()
        for name in ("mls_message", "mls_membership", "mls_joined", "mls_error",
                     "mls_removed", "mls_trust", "mls_invitation"):
            client.add_event_handler(name, self._make(name))

    def _make(self, name: str) -> Any:
        async def handler(event: Any) -> None:
            async with self._cond:
                if name == "mls_joined":  # tests use the group: keep the event aside
                    self.events["mls_joined_event"].append(event)
                    event = event.group
                self.events[name].append(event)
                self._cond.notify_all()
        return handler

    async def wait(self, name: str, count: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        """Wait until at least ``count`` events of ``name`` were seen."""
        async with self._cond:
            await asyncio.wait_for(
                self._cond.wait_for(lambda: len(self.events[name]) >= count), timeout)
            return list(self.events[name])

    def bodies(self) -> list[str]:
        """Bodies of the messages received, in order."""
        return [e.body for e in self.events["mls_message"]]


async def mls_client(server: ProsodyServer, jid: str, password: str,
                     config: dict[str, Any] | None = None, *,
                     via: tuple[str, int] | None = None) -> tuple[Any, Recorder]:
    """A connected client with the plugin started (KeyPackages published).

    ``via`` connects to that address instead of the server's (a FaultProxy).
    """
    import slixmpp

    client = slixmpp.ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_scram = True
    client.register_plugin("xep_0199")
    # the random update after each join (option update_after_join, on for users) is
    # off unless a test asks for it: tests count epochs; tests/integration/
    # test_freshness.py tests that option
    client.register_plugin("mls", {"update_after_join": False, **(config or {})})
    recorder = Recorder(client)
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.add_event_handler("mls_ready", lambda _: started.done() or started.set_result(None))
    client.add_event_handler("session_start", lambda _: client.send_presence())
    client.connect(*(via or (server.host, server.c2s_port)))
    await asyncio.wait_for(started, TIMEOUT)
    return client, recorder


async def befriend(*members: Any, timeout: float = TIMEOUT) -> None:
    """Make the accounts roster contacts of each other, as users do.

    ``members`` are connected clients, or bare JIDs of accounts whose client
    runs elsewhere (another process) and approves requests. Each pair: one
    asks for the other's presence (subscribe); the other's slixmpp approves
    and asks back (its defaults ``auto_authorize`` and ``auto_subscribe``),
    and the first approves that. Waits until every client's roster shows a
    mutual subscription ("both") with each other account: by default the
    plugin joins only such contacts' Welcomes.
    """
    def bare(m: Any) -> str:
        return m if isinstance(m, str) else str(m.boundjid.bare)

    clients = [m for m in members if not isinstance(m, str)]
    pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]
             if bare(a) != bare(b)]
    # as a chat client does at login (the plugin does too): the server then pushes
    # roster changes to this resource
    await asyncio.gather(*(c.get_roster() for c in clients))
    for a, b in pairs:
        asker, other = (b, a) if isinstance(a, str) else (a, b)
        if not isinstance(asker, str):
            asker.send_presence(pto=bare(other), ptype="subscribe")

    def mutual(x: Any, y: Any) -> bool:
        if isinstance(x, str):
            return True  # its own client keeps its roster
        roster = x.client_roster
        return bool(roster.has_jid(bare(y)) and roster[bare(y)]["subscription"] == "both")

    await until(lambda: all(mutual(a, b) and mutual(b, a) for a, b in pairs), timeout)


def offline_key_packages(client: Any, jids: list[str]) -> list[Any]:
    """One KeyPackage for each of ``jids``, of ``client``'s plugin's cipher suite, made
    as the plugin makes them (their private keys dropped): members added while offline
    (``create_group(key_packages=...)``)."""
    from mls_xmpp.core.group.client import Client
    from mls_xmpp.core.group.config import GroupConfig

    suite = int(client.plugin["mls"].config["suite"])
    return [Client.generate(j.encode(), suite, config=GroupConfig()).make_key_package()
            for j in jids]


async def close(*clients: Any) -> None:
    """Disconnect clients."""
    for c in clients:
        await disconnect_client(c)




async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll until ``predicate()`` holds; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


async def synced(*sessions: Any) -> None:
    """Wait until every GroupSession is ready, at one epoch with one epoch authenticator."""
    await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in sessions)), TIMEOUT)
    await until(lambda: len({(s.epoch, s.group.epoch_authenticator) for s in sessions}) == 1)
