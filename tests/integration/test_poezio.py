"""The poezio plugin as poezio users get it: real poezio processes in a pty.

poezio (with ``plugins_autoload = mls``, the entry point of the installed
package) runs in a pseudo-terminal against the session's Prosody; assertions
are on its rendered screen (:mod:`.poezio_pty`). The other members are plugin
clients (:func:`.mls_clients.mls_client`) on an event loop in a thread of
their own, since the test thread waits on the screen.
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from slixmpp.xmlstream import ET

from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.testing.client import room_archive
from mls_xmpp.xmpp.trust import fingerprint

from .mls_clients import close, mls_client, until
from .poezio_pty import Poezio, write_config

T = TypeVar("T")
WAIT = 60.0  #: seconds for one expected screen or event (a loaded 2-core machine)


class Bots:
    """Plugin clients on an asyncio loop in a thread: ``run(coro)`` waits for a result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clients: list[Any] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, server: ProsodyServer, account: Account) -> tuple[Any, Any]:
        """A started plugin client that joins anyone's groups."""
        client, recorder = self.run(mls_client(server, account.jid, account.password,
                                               {"invitations": "any"}))
        self.clients.append(client)
        return client, recorder

    def stop(self) -> None:
        try:
            self.run(close(*self.clients), timeout=30)
        finally:
            # the clients go while their loop runs (slixmpp's __del__ schedules on it)
            self.clients.clear()
            self.run(_collect())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


async def _collect() -> None:
    gc.collect()


@pytest.fixture
def bots() -> Iterator[Bots]:
    b = Bots()
    yield b
    b.stop()


@pytest.fixture
def poezios() -> Iterator[list[Poezio]]:
    started: list[Poezio] = []
    yield started
    for pz in started:
        pz.quit()


def start_poezio(started: list[Poezio], home: Path, server: ProsodyServer,
                 account: Account, invitations: str = "any") -> Poezio:
    """poezio for ``account`` in ``home`` (kept across restarts), the plugin ready."""
    cfg = home / "poezio.cfg"
    if not cfg.exists():
        write_config(home, account.jid, account.password, server.host, server.c2s_port,
                     {"invitations": invitations})
    pz = Poezio(home, cfg).start()
    started.append(pz)
    pz.wait_for("mls: ready", WAIT, flat=True)
    return pz


#: how poezio shows this device's own join: the plugin's nick form (mls_xmpp.xmpp.privacy)
OWN_NICK = re.compile(r"You \([a-z2-7]{16}\)")


def local(jid: str) -> str:
    return jid.split("@", 1)[0]


def test_poezio_group_with_bots(prosody: ProsodyServer, new_account: Any, tmp_path: Path,
                                bots: Bots, poezios: list[Poezio]) -> None:
    """A poezio user creates a group with a bot, they talk both ways, the user adds a
    third member, verifies the bot's key, restarts poezio and reads the group again."""
    alice, bob, carol = new_account("alice"), new_account("bob"), new_account("carol")
    bob_client, bob_events = bots.client(prosody, bob)
    carol_client, carol_events = bots.client(prosody, carol)
    home = tmp_path / "alice"
    pz = start_poezio(poezios, home, prosody, alice)

    # create: the group's tab opens, with encryption on ("mls" in the info bar)
    pz.send_line(f"/mls_create {bob.jid}")
    pz.wait_for(f"mls: created this group with {bob.jid}", WAIT)
    bob_group = bots.run(bob_events.wait("mls_joined"))[0]
    room = bob_group.room
    pz.wait_for(re.compile(re.escape(f"[{room}]") + r".* mls"), WAIT)
    # the tab's join is the plugin's: the same (opaque, per-room) nick, not poezio's
    pz.wait_for(OWN_NICK, WAIT)
    pz.send_line("/mls")  # the E2EE toggle: never off in a group tab
    pz.wait_for("mls: encryption is always on in MLS group tabs", WAIT)

    # poezio -> bot: typed text is sent through MLS, the room never sees it in clear
    pz.send_line("hello from poezio")
    bots.run(bob_events.wait("mls_message"))
    assert bob_events.bodies() == ["hello from poezio"]
    assert bob_events.events["mls_message"][0].sender == alice.jid
    pz.wait_for(re.compile(rf"\d\d:\d\d:\d\d {local(alice.jid)}> hello from poezio"))
    # bot -> poezio: shown with the sender's JID and a trust marker (~ trusted, unverified)
    bots.run(bob_group.send("hi from the bot"))
    pz.wait_for(re.compile(rf"{local(bob.jid)} ~> hi from the bot"), WAIT)
    assert "encrypted with MLS" not in pz.text()  # fallback bodies are never shown

    # a third member, added from poezio
    pz.send_line(f"/mls_invite {carol.jid}")
    carol_group = bots.run(carol_events.wait("mls_joined"))[0]
    pz.wait_for(f"mls: you added {carol.jid}", WAIT, flat=True)
    bots.run(until(lambda: bob_group.epoch == carol_group.epoch))
    bots.run(carol_group.send("carol is here"))
    pz.wait_for(re.compile(rf"{local(carol.jid)} ~> carol is here"), WAIT)
    pz.send_line("welcome carol")
    bots.run(carol_events.wait("mls_message"))
    assert carol_events.bodies() == ["welcome carol"]

    # fresh keys for the poezio device: a Commit the others process
    pz.send_line("/mls_update")
    pz.wait_for("mls: you updated your keys (epoch 3)", WAIT)
    bots.run(until(lambda: bob_group.epoch == carol_group.epoch == 3))

    # a wrong command is an error on screen and changes nothing
    epoch = bob_group.epoch
    pz.send_line("/mls_remove nobody@localhost")
    pz.wait_for("nobody@localhost", WAIT, flat=True)
    pz.wait_for("Error> mls:", WAIT)
    assert bob_group.epoch == epoch

    # members with fingerprints, then verify the bot's device
    bob_fp = fingerprint(bob_client.plugin["mls"].identity.signature_public_key)
    pz.send_line("/mls_members")
    pz.wait_for(f"{bob.jid} {bob_fp} [trusted]", WAIT, flat=True)
    pz.send_line(f"/mls_verify {bob.jid} {bob_fp.replace(' ', '')[:12]}")
    pz.wait_for(f"mls: {bob.jid} [{bob_fp}] is verified", WAIT, flat=True)
    bots.run(bob_group.send("now verified"))
    pz.wait_for(re.compile(rf"{local(bob.jid)} ✔> now verified"), WAIT)
    screen = pz.dump()

    # /part and /close detach the tab only: the device stays in the group's room
    pz.send_line("/part")
    pz.wait_for("this device stays in the room of group", WAIT, flat=True)
    bots.run(bob_group.send("still here"))
    pz.wait_for(re.compile(rf"{local(bob.jid)} ✔> still here"), WAIT)
    pz.send_line(f"/join {room}")  # re-attaches the tab, with the device's nick
    pz.wait_for(re.compile(r"You \([a-z2-7]{16}\) joined the room(.|\n)*"
                           r"You \([a-z2-7]{16}\) joined"), WAIT)
    pz.send_line("/close")
    pz.wait_for(re.compile(r"^\[0\]$", re.MULTILINE), WAIT)
    bots.run(bob_group.send("tab closed"))
    pz.wait_for("[0|1]", WAIT)  # a message reopens the tab
    pz.send_line("/win 1")
    pz.wait_for(re.compile(rf"{local(bob.jid)} ✔> tab closed"), WAIT)
    pz.wait_for(OWN_NICK, WAIT)
    pz.send_line("typed after reopening")
    bots.run(until(lambda: "typed after reopening" in bob_events.bodies()))

    # restart: the group comes back from the store in poezio's data directory,
    # with what was sent meanwhile (the room archive) and the trust decision
    pz.quit()
    assert (home / "data" / "poezio" / "mls" / f"{alice.jid}.db").exists()
    bots.run(bob_group.send("sent while you were away"))
    # a bookmark poezio autojoins at start, under poezio's nick: the device's nick wins
    cfg = home / "poezio.cfg"
    cfg.write_text(cfg.read_text().replace("[Poezio]\n",
                                           f"[Poezio]\nrooms = {room}/{local(alice.jid)}\n", 1))
    pz = start_poezio(poezios, home, prosody, alice)
    pz.wait_for("[0|1]", WAIT)  # the group's tab is open again
    pz.send_line("/win 1")
    pz.wait_for(re.compile(rf"{local(bob.jid)} ✔> sent while you were away"), WAIT)
    # poezio's own archive loading on join shows no raw stanzas (fallback bodies)
    assert "encrypted with MLS" not in pz.text()
    joined = re.findall(r"You \((\S+)\) joined the room", pz.text())
    # always the device's one nick in this room (opaque: no localpart, no key)
    assert joined and all(re.fullmatch(r"[a-z2-7]{16}", n) for n in joined)
    assert len(set(joined)) == 1
    assert "is now known as" not in pz.text()
    bots.run(carol_group.send("and after the restart"))
    pz.wait_for(re.compile(rf"{local(carol.jid)} ~> and after the restart"), WAIT)
    pz.send_line("back again")
    bots.run(until(lambda: "back again" in bob_events.bodies()))
    assert bob_events.bodies().count("back again") == 1
    # what the room got from poezio: MLS payloads only, never the typed text
    archived = bots.run(room_archive(bob_client, room))
    from_alice = [a for a in archived if a.sender.endswith(f"/{joined[0]}")]
    assert len(from_alice) >= 4 and all(a.payload for a in from_alice)
    raw = "".join(ET.tostring(a.message, encoding="unicode") for a in archived)
    for typed in ("hello from poezio", "welcome carol", "back again"):
        assert typed not in raw
    print("\n" + screen + "\n\nafter the restart:\n" + pz.dump())


def test_poezio_welcomed_and_files(prosody: ProsodyServer, new_account: Any,
                                    tmp_path: Path, bots: Bots,
                                    poezios: list[Poezio]) -> None:
    """A bot's group appears in poezio as a tab (its Welcome opens no conversation tab);
    files both ways (HTTP upload; saved with /mls_save)."""
    alice, bob = new_account("alice"), new_account("bob")
    bob_client, bob_events = bots.client(prosody, bob)
    pz = start_poezio(poezios, tmp_path / "alice", prosody, alice)

    group = bots.run(bob_client.plugin["mls"].create_group(members=[alice.jid]))
    pz.wait_for("[0|1]", WAIT)  # welcomed: the group's tab, and no conversation tab
    pz.wait_for("mls: joined group", WAIT)
    pz.send_line("/win 1")
    pz.wait_for(re.compile(re.escape(f"[{group.room}]") + r".* mls"), WAIT)  # encrypted
    pz.wait_for(f"mls: you joined this group (epoch 1, with {bob.jid})", WAIT)
    bots.run(group.send("welcome to my group"))
    pz.wait_for(re.compile(rf"{local(bob.jid)} ~> welcome to my group"), WAIT)

    # bot -> poezio: a file, saved where the user says
    bots.run(group.send_file(b"report contents\n" * 100, name="report.txt",
                             media_type="text/plain", body="the report"))
    pz.wait_for(re.compile(rf"{local(bob.jid)} ~> the report"), WAIT)
    pz.wait_for("[file 1] report.txt, 1.6 KiB, text/plain (/mls_save 1)", WAIT)
    saved = tmp_path / "saved"
    saved.mkdir()
    pz.send_line(f"/mls_save 1 {saved}")
    pz.wait_for("mls: saved file 1 (1.6 KiB) as", WAIT)
    assert (saved / "report.txt").read_bytes() == b"report contents\n" * 100

    # poezio -> bot: /mls_upload
    photo = tmp_path / "photo.bin"
    photo.write_bytes(bytes(range(256)) * 40)
    pz.send_line(f"/mls_upload {photo} holiday")
    pz.wait_for("[sent file] photo.bin, 10.0 KiB", WAIT)
    event = bots.run(bob_events.wait("mls_message"))[-1]
    assert event.body == "holiday" and event.sender == alice.jid
    (attachment,) = event.content.attachments
    assert attachment.name == "photo.bin"
    data = bots.run(bob_client.plugin["mls"].download(attachment, sender=event.sender,
                                                      room=group.room))
    assert data == photo.read_bytes()
    assert "encrypted with MLS" not in pz.text()
    assert "[0|1|" not in pz.text()  # still one tab besides the roster: no conversation tab

    # a private message to an occupant of the group's room would go in clear: refused
    bob_nick = bob_client.plugin["mls"].nick(group.room)
    pz.send_line(f"/query {bob_nick} a private word")
    pz.wait_for("mls: not sent: private messages in a group's room are not encrypted",
                WAIT, flat=True)


def test_poezio_invitations_from_strangers(prosody: ProsodyServer, new_account: Any,
                                           tmp_path: Path, bots: Bots,
                                           poezios: list[Poezio]) -> None:
    """With ``invitations = ask`` a stranger's Welcome waits for /mls_accept or
    /mls_decline; accepting opens the group's tab."""
    alice, bob = new_account("alice"), new_account("bob")
    bob_client, _ = bots.client(prosody, bob)
    pz = start_poezio(poezios, tmp_path / "alice", prosody, alice, invitations="ask")
    mls = bob_client.plugin["mls"]

    first = bots.run(mls.create_group(members=[alice.jid]))
    # (the roster tab's info pane wraps the room JID anywhere: its parts are matched)
    pz.wait_for(f"{bob.jid} (not a contact) invites you into group", WAIT, flat=True)
    pz.wait_for("/mls_accept 1 joins, /mls_decline 1 declines", WAIT, flat=True)
    bots.run(mls.create_group(members=[alice.jid]))
    pz.wait_for("/mls_decline 2 declines", WAIT, flat=True)
    assert pz.lines()[-2] == "[0]"  # nothing joined yet
    pz.send_line("/mls_decline 2")
    pz.wait_for(f"mls: declined {bob.jid}'s invitation", WAIT, flat=True)
    pz.send_line("/mls_accept 1")
    pz.wait_for(re.compile(re.escape(f"[{first.room}]") + r".* mls"), WAIT)
    pz.wait_for(f"mls: you joined this group (epoch 1, with {bob.jid})", WAIT)
    bots.run(first.send("glad you came"))
    pz.wait_for(re.compile(rf"{local(bob.jid)} ~> glad you came"), WAIT)
    pz.send_line("/mls_accept 2")  # declined: gone
    pz.wait_for("mls: no open invitation 2", WAIT)
    assert pz.lines()[-2] == "[0|1]"  # one group tab: the declined group has none
