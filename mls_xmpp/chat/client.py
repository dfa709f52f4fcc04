"""The chat session: the XMPP client and its plugin, their events, and the commands."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from .errors import ChatError, _describe
from .options import ChatOptions
from .stdin import _start_reader
from .text import HELP, _jids, _one_line, _size, _stamp, clean, room_short, safe_file_name

#: Messages kept in memory per group for ``/history``.
HISTORY_SIZE = 1000
#: ``/history`` without a count.
HISTORY_DEFAULT = 20
#: Fewest leading characters of a room that ``/open`` accepts.
MIN_PREFIX = 4
#: Seconds before reconnecting after the stream was lost.
RECONNECT_DELAY = 2.0
#: Operations on at least this many accounts or devices show their progress.
PROGRESS_MIN = 8
#: KeyPackage fetches in flight at once.
PARALLEL_FETCHES = 8
#: Seconds to wait for invitees to accept this account as a contact.
CONTACT_WAIT = 5.0

log = logging.getLogger(__package__)  # "mls_xmpp.chat", as before the split into modules


@dataclass(frozen=True)
class _Command:
    run: Callable[[list[str]], Awaitable[None]]
    needs_group: bool = False
    needs_online: bool = True


class Chat:
    """One account's chat session: the XMPP client, its events and the command loop."""

    def __init__(self, options: ChatOptions, out: TextIO | None = None) -> None:
        self.options = options
        self.out = out if out is not None else sys.stdout
        self.xmpp: Any = None
        self.current: str | None = None  #: room of the selected group
        self.history: dict[str, deque[str]] = {}
        self.online = False
        self.ever_ready = False
        self.quitting = False
        self.store_encrypted = False  #: the store is encrypted at rest (:mod:`.storekey`)
        self._new_store = False  #: this run created the store
        self._ready: asyncio.Future[None] | None = None
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._connecting = 0  #: counts slixmpp's "connecting" events
        self._reconnect: asyncio.Task[None] | None = None
        self._command: asyncio.Task[None] | None = None
        self._problems: deque[str] = deque(maxlen=10)
        self._progress_shown: dict[str, int] = {}  #: stage -> last tenth shown
        self.files: list[Any] = []  #: Attachments received, numbered from 1 for /save
        self._auth_failed = False
        self._commands: dict[str, _Command] = {
            "help": _Command(self.cmd_help, needs_online=False),
            "groups": _Command(self.cmd_groups),
            "create": _Command(self.cmd_create),
            "open": _Command(self.cmd_open),
            "invite": _Command(self.cmd_invite, needs_group=True),
            "remove": _Command(self.cmd_remove, needs_group=True),
            "remove-device": _Command(self.cmd_remove_device, needs_group=True),
            "members": _Command(self.cmd_members, needs_group=True),
            "update": _Command(self.cmd_update, needs_group=True),
            "leave": _Command(self.cmd_leave, needs_group=True),
            "history": _Command(self.cmd_history, needs_online=False),
            "send-file": _Command(self.cmd_send_file, needs_group=True),
            "save": _Command(self.cmd_save),
            "fingerprints": _Command(self.cmd_fingerprints, needs_online=False),
            "safety": _Command(self.cmd_safety),
            "verify": _Command(self.cmd_verify, needs_online=False),
            "distrust": _Command(self.cmd_distrust, needs_online=False),
            "trust": _Command(self.cmd_trust, needs_online=False),
            "quit": _Command(self.cmd_quit, needs_online=False),
        }
        self._aliases = {"exit": "quit", "join": "open", "add": "invite", "h": "help",
                         "?": "help", "list": "groups", "who": "members",
                         "fp": "fingerprints", "devices": "fingerprints"}

    # -- output ---------------------------------------------------------------

    def say(self, text: str) -> None:
        """Write one line (or several) to the output, flushed at once."""
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):  # nobody reads any more: end quietly
            if not self.quitting:
                self.quitting = True
                self._lines.put_nowait(None)

    def notice(self, text: str) -> None:
        """A status line or a command's result."""
        self.say(f"* {text}")

    def error(self, text: str) -> None:
        """A command failed."""
        self.say(f"error: {text}")

    def group_line(self, room: str | None, mark: str, text: str) -> None:
        """A timestamped line about a group (or about the connection when ``room`` is None)."""
        tag = f" {room_short(room)}" if room else ""
        self.say(f"[{_stamp()}]{tag} {mark} {text}")

    def _message_line(self, room: str, sender: str, body: str) -> str:
        lines = clean(body).split("\n")
        first = f"[{_stamp()}] {room_short(room)} {_one_line(sender)}: {lines[0]}"
        return "\n".join([first, *(f"    {line}" for line in lines[1:])])

    def _show_message(self, room: str, sender: str, body: str,
                      extra: Sequence[str] = ()) -> None:
        line = self._message_line(room, sender, body)
        line = "\n".join([line, *(f"    {x}" for x in extra)])
        self.history.setdefault(room, deque(maxlen=HISTORY_SIZE)).append(line)
        self.say(line)

    # -- the plugin -------------------------------------------------------------

    @property
    def mls(self) -> Any:
        """The ``mls`` plugin (:class:`mls_xmpp.xmpp.plugin.XEP_MLS`)."""
        return self.xmpp.plugin["mls"]

    @property
    def me(self) -> str:
        """This account's bare JID."""
        return str(self.xmpp.boundjid.bare)

    def own_fingerprint(self) -> str:
        """This device's fingerprint, as /members shows it."""
        from mls_xmpp.xmpp.trust import fingerprint

        client = self.mls.identity
        return "?" if client is None else fingerprint(client.signature_public_key)

    def active_groups(self) -> list[Any]:
        """The groups this device is in, in the plugin's order (GroupSession objects)."""
        return [s for s in self.mls.groups if s.group.active]

    def session(self, room: str | None) -> Any:
        """The active GroupSession of ``room``, or None."""
        if room is None or self.xmpp is None:
            return None
        s = self.mls.sessions.get(room)
        return s if s is not None and s.group.active else None

    def build_client(self) -> Any:
        """The slixmpp client with the plugin and this chat's event handlers."""
        import slixmpp

        import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin
        from mls_xmpp.storage import SQLiteStore

        from .storekey import store_key

        opts = self.options
        self._new_store = not opts.store.exists()
        key = store_key(opts.store, opts.password, encrypt=opts.encrypt_store)
        self.store_encrypted = key is not None
        store = SQLiteStore(str(opts.store), key=key)
        client = slixmpp.ClientXMPP(opts.jid, opts.password)
        if opts.plaintext:
            client.enable_direct_tls = False
            client.enable_starttls = False
            client.enable_plaintext = True
            cast(Any, client.plugin)["feature_mechanisms"].unencrypted_scram = True
        elif not opts.tls_verify:
            client.ssl_context.check_hostname = False
            client.ssl_context.verify_mode = ssl.CERT_NONE
        client.register_plugin("xep_0199", {"keepalive": True, "interval": 120, "timeout": 30})
        config: dict[str, Any] = {"store": store}
        if opts.device:
            config["device"] = opts.device
        client.register_plugin("mls", config)
        for name, handler in (
            ("session_start", self.on_session_start),
            ("connecting", self.on_connecting),
            ("connection_failed", self.on_connection_failed),
            ("failed_all_auth", self.on_auth_failed),
            ("disconnected", self.on_disconnected),
            ("mls_ready", self.on_ready),
            ("mls_message", self.on_message),
            ("mls_membership", self.on_membership),
            ("mls_joined", self.on_joined),
            ("mls_removed", self.on_removed),
            ("mls_error", self.on_mls_error),
            ("mls_progress", self.on_progress),
            ("mls_trust", self.on_trust),
        ):
            client.add_event_handler(name, handler)
        return client

    # -- connection events ------------------------------------------------------------

    def on_session_start(self, _: Any) -> None:
        self.xmpp.send_presence()

    def on_connecting(self, _: Any) -> None:
        self._connecting += 1

    def on_connection_failed(self, reason: Any) -> None:
        text = _one_line(str(reason))
        self._problems.append(text)
        if self.ever_ready and not self.quitting:
            self.group_line(None, "!", f"connecting failed: {text}; trying again")

    def on_auth_failed(self, _: Any) -> None:
        secure = ("starttls" in self.xmpp.features
                  or isinstance(self.xmpp.socket, ssl.SSLSocket | ssl.SSLObject))
        hint = "" if secure or self.options.plaintext else (
            " (the server offered no TLS, and the client does not send the password without "
            "it; --plaintext allows that, for loopback test servers only)")
        reason = f"authentication as {self.options.jid} failed{hint}"
        self._auth_failed = True
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ChatError(reason))
        elif not self.quitting:
            self.group_line(None, "!", f"{reason}; not reconnecting (/quit, and start again)")

    def on_ready(self, _: Any) -> None:
        self.online = True
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        elif self.ever_ready:
            self.group_line(None, "*", f"reconnected; {len(self.active_groups())} group(s)")
            if self.current is not None and self.session(self.current) is None:
                self.current = None

    def on_disconnected(self, reason: Any) -> None:
        self.online = False
        if self.quitting or not self.ever_ready or self._auth_failed:
            return
        why = f" ({_one_line(str(reason))})" if reason else ""
        self.group_line(None, "!", f"disconnected from the server{why}; reconnecting")
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.ensure_future(self._reconnect_later(self._connecting))

    async def _reconnect_later(self, seen: int) -> None:
        """Connect again unless slixmpp (keepalive) already started to."""
        await asyncio.sleep(RECONNECT_DELAY)
        if self.quitting or self._connecting != seen:
            return
        self._connect()

    def _connect(self) -> None:
        if self.options.server is None:
            self.xmpp.connect()
        else:
            self.xmpp.connect(*self.options.server)

    # -- group events -----------------------------------------------------------------

    def on_message(self, event: Any) -> None:  # MLSMessageEvent
        attachments = getattr(event.content, "attachments", ())
        self._show_message(event.group.room, str(event.sender), str(event.body),
                           self._file_lines(attachments))

    def _file_lines(self, attachments: Sequence[Any]) -> list[str]:
        """Number received attachments for /save; one line to show for each."""
        lines = []
        for att in attachments:
            self.files.append(att)
            name = _one_line(att.name or "unnamed")
            lines.append(f"[file {len(self.files)}] {name}, {_size(att.size)}, "
                         f"{_one_line(att.media_type)} (/save {len(self.files)})")
        return lines

    def on_membership(self, event: Any) -> None:  # MembershipEvent
        if event.own:
            who = "you"
        elif event.committer:
            who = _one_line(str(event.committer))
        else:
            who = "a new device (external join)"
        parts = []
        if event.added:
            parts.append(f"added {_jids(event.added)}")
        if event.removed:
            parts.append(f"removed {_jids(event.removed)}")
        # the committer's own new keys (its UpdatePath) go without saying, below
        updated = tuple(j for j in event.updated if j != event.committer)
        if updated:
            parts.append(f"updated the keys of {_jids(updated)}")
        if not parts:
            parts.append("updated " + ("your" if event.own else "their") + " keys")
        self.group_line(event.group.room, "*", f"{who} {'; '.join(parts)} (epoch {event.epoch})")

    def on_trust(self, change: Any) -> None:  # TrustChange
        """A device's first key, a key change, or a decision: warn where it matters.

        The first device of an account is recorded quietly (/fingerprints shows
        it); another device of an account already known, and a device's new
        key, are warnings, with how to compare them.
        """
        room = getattr(change.group, "room", None)
        jid, fp = _one_line(change.jid), change.fingerprint
        if change.change == "changed":
            name = f" {_one_line(change.device)}" if change.device else ""
            self.group_line(room, "!", f"{jid}'s device{name} has a NEW KEY {fp} (was "
                            f"{change.previous}) [{change.state}]; /safety {jid} "
                            f"{fp[:8]} to compare")
        elif change.change == "new":
            if fp == self.own_fingerprint():
                return
            others = list(change.others)
            if change.jid == self.me:
                others.append(self.own_fingerprint())
            if others:
                self.group_line(room, "!", f"{jid} has a new device {fp} (their other "
                                f"device{'s' if len(others) > 1 else ''}: "
                                f"{', '.join(others)}) [{change.state}]")
        else:
            self.notice(f"{jid} [{fp}] is now {change.state}")

    def on_joined(self, event: Any) -> None:  # JoinedEvent
        session = event.group
        room = session.room
        others = sorted(session.jids() - {self.me})
        if not others:
            own = sum(1 for jid, _, _ in session.members if jid == self.me) - 1
            others = [f"{own} other device(s) of yours" if own > 0 else "nobody else"]
        text = (f"you joined group {_one_line(room)} (epoch {session.epoch}, with "
                f"{_jids(others)})")
        if self.current is None or self.session(self.current) is None:
            self.current = room
            text += "; selected"
        self.group_line(room, "*", text)

    def on_removed(self, session: Any) -> None:  # GroupSession
        room = session.room
        self.group_line(room, "*", f"you are no longer a member of group {_one_line(room)}")
        if self.current == room:
            self.current = None
            self.notice("no group selected now (/groups, /open N)")
        # The plugin keeps a removed group in its store and resumes it at the next
        # start, where joining its (members-only) room fails and the whole start-up
        # with it. Forget it once the plugin has stored the final state.
        asyncio.get_running_loop().call_soon(self._forget, session)

    def _forget(self, session: Any) -> None:
        if self.mls.sessions.get(session.room) is session:
            del self.mls.sessions[session.room]
        asyncio.ensure_future(session.stop())
        try:
            self.mls.writer.store.delete_group(session.group_id)  # after its pending writes
        except Exception as e:  # noqa: BLE001 - a storage failure is reported, not fatal
            self.group_line(session.room, "!", f"could not delete the group from the store: "
                            f"{_one_line(str(e))}")

    def on_progress(self, event: Any) -> None:  # ProgressEvent
        batches = int(getattr(event, "batches", 1))
        suffix = f" (Commit {event.batch} of {batches})" if batches > 1 else ""
        self.progress(str(event.stage), int(event.done), int(event.total), suffix)

    def progress(self, stage: str, done: int, total: int, suffix: str = "") -> None:
        """A progress line for operations on many accounts or devices."""
        if total < PROGRESS_MIN:
            return
        tenth = 10 * done // total
        if done not in (0, total) and self._progress_shown.get(stage) == tenth:
            return
        self._progress_shown[stage] = tenth
        self.say(f"... {stage} {done}/{total}" + (" done" if done == total else "") + suffix)

    def on_mls_error(self, event: Any) -> None:  # MLSErrorEvent
        from mls_xmpp.errors import AuthenticationError, NotConnectedError

        if isinstance(event.error, AuthenticationError):
            return  # on_auth_failed says it (with a hint about TLS)
        reason = _one_line(str(event.reason))
        starting = self._ready is not None and not self._ready.done()
        if starting and (reason.startswith("start-up failed") or (
                isinstance(event.error, NotConnectedError))):
            # no server, a server without MUC/MAM/PEP: nothing to wait for
            assert self._ready is not None
            self._ready.set_exception(ChatError(reason))
            return
        room = event.group.room if event.group is not None else None
        sender = f" (from {_one_line(str(event.sender))})" if event.sender else ""
        self.group_line(room, "!", f"{reason}{sender}")

    # -- the command loop -------------------------------------------------------------

    async def handle(self, line: str) -> None:
        """One input line: a command, or a message for the current group."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        if line.startswith("/") and not line.startswith("//"):
            name, *args = line[1:].split() or [""]
            name = self._aliases.get(name.lower(), name.lower())
            command = self._commands.get(name)
            if command is None:
                self.error(f"unknown command /{_one_line(name)} (/help lists the commands)")
                return
            if command.needs_online and not self.online:
                self.error("not connected to the server (reconnecting); try again shortly")
                return
            if command.needs_group and self.session(self.current) is None:
                self.error("no group selected: /groups lists yours, /open N selects one, "
                           "/create makes one")
                return
            await command.run(args)
            return
        text = line[1:] if line.startswith("//") else line
        await self.send(text)

    async def send(self, text: str) -> None:
        """Send a message to the current group."""
        if not self.online:
            self.error("not connected to the server (reconnecting); message not sent")
            return
        session = self.session(self.current)
        if session is None:
            self.error("no group selected: /groups lists yours, /open N selects one, "
                       "/create makes one")
            return
        await session.send(text)
        self._show_message(session.room, self.me, text)

    def _jid(self, text: str) -> str:
        """A bare account JID from user input (a local part is taken on our domain)."""
        import slixmpp
        from slixmpp.jid import InvalidJID

        if "@" not in text:
            text = f"{text}@{self.xmpp.boundjid.domain}"
        try:
            jid = slixmpp.JID(text)
        except InvalidJID:
            raise ChatError(f"{_one_line(text)!r} is not a JID") from None
        if not jid.user or not jid.domain or jid.resource:
            raise ChatError(f"{_one_line(text)!r} is not an account JID user@domain")
        return str(jid.bare)

    async def _devices(self, jid: str) -> list[Any]:
        """KeyPackages of every device of ``jid`` (other devices only for our own JID)."""
        keystore = self.mls.keystore
        if keystore is None:
            raise ChatError("the plugin has not started yet")
        return list(await keystore.fetch(jid))

    async def _check_invitees(self, args: list[str], session: Any = None) -> list[Any]:
        """KeyPackages of every device to add for the JIDs in ``args``.

        Unknown accounts are an error (nothing is changed then); accounts
        fetched a few at a time, with progress shown for many.
        """
        jids: list[str] = []
        for arg in args:
            jid = self._jid(arg)
            if jid not in jids:
                jids.append(jid)
        members = set() if session is None else {
            m.signature_key for m in session.group.members}
        gate = asyncio.Semaphore(PARALLEL_FETCHES)
        fetched: dict[str, list[Any]] = {}
        self.progress("key packages", 0, len(jids))

        async def one(jid: str) -> None:
            async with gate:
                fetched[jid] = await self._devices(jid)
            self.progress("key packages", len(fetched), len(jids))

        await asyncio.gather(*(one(jid) for jid in jids))
        await self._befriend([jid for jid in jids if fetched[jid] and jid != self.me])
        wanted = []
        for jid in jids:
            found = fetched[jid]
            new = [f for f in found if f.signature_key not in members]
            if not found and jid == self.me:
                self.notice("you have no other device to add")
            elif not found:
                raise ChatError(f"{jid} has no KeyPackages: no such account, or it does not "
                                "use MLS over XMPP (nothing was changed)")
            elif not new:
                self.notice(f"{jid} is already in the group (every device)")
            else:
                wanted += [f.key_package for f in new]
        return wanted

    async def _befriend(self, jids: list[str]) -> None:
        """Ask each invitee that is not a contact yet for a presence subscription.

        By default a device joins only the groups its contacts (a mutual
        subscription) add it to; the invitee's client approves and asks back
        (slixmpp does so by default, and this client approves in turn). Waits
        a little; whoever has not answered by then is named.
        """
        strangers = [j for j in jids if not self.mls.is_mutual_contact(j)]
        for jid in strangers:
            self.xmpp.send_presence(pto=jid, ptype="subscribe")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONTACT_WAIT
        while strangers and loop.time() < deadline:
            await asyncio.sleep(0.05)
            strangers = [j for j in strangers if not self.mls.is_mutual_contact(j)]
        for jid in strangers:
            self.notice(f"{jid} has not accepted you as a contact (yet): their devices may "
                        "not join")

    async def cmd_help(self, args: list[str]) -> None:
        self.say(HELP)

    async def cmd_groups(self, args: list[str]) -> None:
        groups = self.active_groups()
        if not groups:
            self.notice("no groups yet: /create [JID ...] makes one")
            return
        self.notice(f"{len(groups)} group(s):")
        for i, s in enumerate(groups, 1):
            mark = "  (current)" if s.room == self.current else ""
            count = len(s.members)
            self.say(f"  {i}. {_one_line(s.room)}  epoch {s.epoch}, {count} member"
                     f"{'' if count == 1 else 's'}{mark}")

    async def cmd_create(self, args: list[str]) -> None:
        devices = await self._check_invitees(args)
        if args and not devices:
            raise ChatError("nobody to add (nothing was created)")
        before = set(self.mls.sessions)
        try:
            session = await self.mls.create_group(key_packages=devices)
        except Exception as e:
            created = [room for room in self.mls.sessions if room not in before]
            if not created:
                raise
            self.current = created[0]
            raise ChatError(f"group {created[0]} was created and selected, but adding "
                            f"{', '.join(args)} failed: {_describe(e)}") from e
        self.current = session.room
        self.notice(f"created group {session.room} (epoch {session.epoch}, {len(session.members)}"
                    f" member device(s)); selected")

    async def cmd_open(self, args: list[str]) -> None:
        if len(args) != 1:
            session = self.session(self.current)
            if session is None:
                raise ChatError("usage: /open N|ROOM (no group selected)")
            self.notice(f"current group: {session.room}")
            return
        session = self._find_group(args[0])
        self.current = session.room
        count = len(session.members)
        self.notice(f"selected group {session.room} (epoch {session.epoch}, {count} member"
                    f"{'' if count == 1 else 's'})")

    def _find_group(self, arg: str) -> Any:
        groups = self.active_groups()
        if not groups:
            raise ChatError("you are in no group: /create [JID ...] makes one")
        if arg.isdigit() and 1 <= int(arg) <= len(groups):
            return groups[int(arg) - 1]
        # a room JID, its local part, or its first (at least four) characters, which
        # may be all digits
        wanted = arg.lower()
        for s in groups:
            if s.room.lower() == wanted or s.room.split("@", 1)[0].lower() == wanted:
                return s
        found = [s for s in groups
                 if len(wanted) >= MIN_PREFIX and s.room.lower().startswith(wanted)]
        if len(found) == 1:
            return found[0]
        if found:
            raise ChatError(f"{_one_line(arg)!r} matches {len(found)} groups; give more of it")
        if arg.isdigit():
            raise ChatError(f"no group {arg}: /groups lists 1..{len(groups)}")
        raise ChatError(f"no group matches {_one_line(arg)!r} (/groups lists yours)")

    async def cmd_invite(self, args: list[str]) -> None:
        if not args:
            raise ChatError("usage: /invite JID [JID ...]")
        session = self.session(self.current)
        devices = await self._check_invitees(args, session)
        if devices:
            await session.add_key_packages(devices)

    async def cmd_remove(self, args: list[str]) -> None:
        if not args:
            raise ChatError("usage: /remove JID [JID ...]")
        session = self.session(self.current)
        present = session.jids()
        jids = []
        for arg in args:
            jid = self._jid(arg)
            if jid == self.me:
                raise ChatError("you cannot remove yourself: /leave asks the others to")
            if jid not in present:
                raise ChatError(f"{jid} is not in this group (/members lists who is)")
            if jid not in jids:
                jids.append(jid)
        await session.remove(*jids)

    async def cmd_remove_device(self, args: list[str]) -> None:
        wanted = "".join(args).replace(" ", "").lower()
        if len(wanted) < 8 or not re.fullmatch(r"[0-9a-f]+", wanted):
            raise ChatError("usage: /remove-device FINGERPRINT (at least its first 8 hex "
                            "digits, as /members shows it)")
        session = self.session(self.current)
        found = [(jid, fp) for jid, fp, _ in session.members
                 if fp.replace(" ", "").startswith(wanted)]
        if not found:
            raise ChatError("no device in this group has that fingerprint (/members lists them)")
        if len(found) > 1:
            raise ChatError(f"{len(found)} devices match; give more of the fingerprint")
        jid, fp = found[0]
        if fp == self.own_fingerprint():
            raise ChatError("that is this device: /leave asks the others to remove it")
        await session.remove_device(fp)
        self.notice(f"removed the device {fp} of {_one_line(jid)}")

    async def cmd_members(self, args: list[str]) -> None:
        session = self.session(self.current)
        auth = session.group.epoch_authenticator.hex()
        members = sorted(session.members, key=lambda m: m[2])
        self.notice(f"group {session.room}: epoch {session.epoch}, epoch_authenticator "
                    f"{auth[:16]}, {len(members)} member device(s):")
        mine = self.own_fingerprint()
        width = max(len(_one_line(jid)) for jid, _, _ in members)
        for jid, fp, leaf in members:
            if jid == self.me and fp == mine:
                note = "  (this device)"
            else:
                state = self.mls.trust.state(jid, fp)
                note = f"  [{state}]" if state is not None else ""
            self.say(f"  leaf {leaf:<3} {_one_line(jid):<{width}}  {fp}{note}")

    def _device(self, args: list[str], usage: str) -> tuple[str, str]:
        """(jid, full fingerprint) from ``JID FP-PREFIX`` (at least 8 hex digits)."""
        if len(args) < 2:
            raise ChatError(f"usage: {usage}")
        jid = self._jid(args[0])
        wanted = "".join(args[1:]).replace(" ", "").lower()
        if len(wanted) < 8 or not re.fullmatch(r"[0-9a-f]+", wanted):
            raise ChatError(f"usage: {usage} (at least 8 hex digits of the fingerprint, as "
                            "/fingerprints shows it)")
        found = [d.fingerprint for d in self.mls.devices(jid)
                 if d.fingerprint.replace(" ", "").startswith(wanted)]
        if not found:
            raise ChatError(f"no device of {jid} with that fingerprint has been seen "
                            "(/fingerprints lists them)")
        if len(found) > 1:
            raise ChatError(f"{len(found)} devices match; give more of the fingerprint")
        return jid, found[0]

    async def cmd_fingerprints(self, args: list[str]) -> None:
        jid = self._jid(args[0]) if args else None
        devices = self.mls.devices(jid)
        self.notice(f"this device: {self.own_fingerprint()}")
        if not devices:
            self.notice("no other devices seen yet" if jid is None else f"no device of {jid} "
                        "seen yet")
            return
        self.notice(f"{len(devices)} device(s) seen:")
        width = max(len(_one_line(d.jid)) for d in devices)
        for d in devices:
            name = _one_line(d.device) if d.device else "-"
            self.say(f"  {_one_line(d.jid):<{width}}  {d.fingerprint}  {d.state:<10}  {name}")

    async def cmd_safety(self, args: list[str]) -> None:
        jid, fp = self._device(args, "/safety JID FINGERPRINT")
        number = self.mls.safety_number(jid, fp)
        self.notice(f"safety number with {jid} [{fp}]: {number}")
        self.say("  compare it with theirs (in person or by a call); if it is the same: "
                 f"/verify {jid} {fp[:8]}")

    async def cmd_verify(self, args: list[str]) -> None:
        jid, fp = self._device(args, "/verify JID FINGERPRINT")
        self.mls.verify(jid, fp)

    async def cmd_distrust(self, args: list[str]) -> None:
        jid, fp = self._device(args, "/distrust JID FINGERPRINT")
        self.mls.distrust(jid, fp)
        self.say(f"  /remove-device {fp[:8]} removes it from the current group")

    async def cmd_trust(self, args: list[str]) -> None:
        jid, fp = self._device(args, "/trust JID FINGERPRINT")
        self.mls.trust_device(jid, fp)

    async def cmd_update(self, args: list[str]) -> None:
        session = self.session(self.current)
        await session.update()

    async def cmd_leave(self, args: list[str]) -> None:
        session = self.session(self.current)
        if len(session.members) < 2:
            raise ChatError("you are the only member: nobody could commit your removal")
        await session.leave()
        self.notice("leave requested: another member's device will remove you")

    async def cmd_history(self, args: list[str]) -> None:
        if len(args) > 1 or (args and not args[0].isdigit()):
            raise ChatError("usage: /history [N]")
        count = int(args[0]) if args else HISTORY_DEFAULT
        room = self.current
        if room is None:
            raise ChatError("no group selected: /groups lists yours, /open N selects one")
        lines = list(self.history.get(room, ()))[-count:] if count else []
        self.notice(f"last {len(lines)} message(s) of {room_short(room)}:")
        for line in lines:
            self.say(line)

    async def cmd_send_file(self, args: list[str]) -> None:
        if not args:
            raise ChatError("usage: /send-file PATH [TEXT]")
        path = Path(args[0]).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ChatError(f"cannot read {args[0]}: {e.strerror or e}") from None
        text = " ".join(args[1:])
        session = self.session(self.current)
        await session.send_file(data, name=path.name, body=text)
        self._show_message(session.room, self.me, text,
                           [f"[sent file] {_one_line(path.name)}, {_size(len(data))}"])

    async def cmd_save(self, args: list[str]) -> None:
        if not args or len(args) > 2 or not args[0].isdigit():
            raise ChatError("usage: /save N [DIR] (N as shown by [file N])")
        index = int(args[0])
        if not 1 <= index <= len(self.files):
            raise ChatError(f"no file {index}" + (f": 1..{len(self.files)} were received"
                                                  if self.files else ": none received yet"))
        att = self.files[index - 1]
        folder = Path(args[1] if len(args) > 1 else ".").expanduser()
        if not folder.is_dir():
            raise ChatError(f"{folder} is not a directory")
        data = await self.mls.download(att)
        name = safe_file_name(att.name)
        stem, suffix = Path(name).stem[:100], Path(name).suffix[:20]  # within NAME_MAX
        target = folder / f"{stem}{suffix}"
        for n in range(1, 10_000):
            try:  # never over an existing file or through a symlink: create it new
                with open(target, "xb") as f:
                    f.write(data)
                break
            except FileExistsError:
                target = folder / f"{stem}-{n}{suffix}"
            except OSError as e:
                raise ChatError(f"cannot save to {target}: {e.strerror or e}") from None
        else:
            raise ChatError(f"too many files named like {name} in {folder}")
        self.notice(f"saved file {index} ({_size(len(data))}) as {target}")

    async def cmd_quit(self, args: list[str]) -> None:
        self.quitting = True

    # -- running -----------------------------------------------------------------

    async def login(self) -> None:
        """Connect and wait until the plugin is ready.

        :raises ChatError: authentication failed, or not ready within the timeout.
        """
        from mls_xmpp.core.errors import MLSError

        self._ready = asyncio.get_running_loop().create_future()
        try:
            self.xmpp = self.build_client()
        except MLSError as e:
            hint = ("" if "wrong storage key" not in str(e) else
                    " (the store is encrypted with the account's password, or "
                    "$MLS_XMPP_STORE_PASSPHRASE: a wrong password? after a password change, "
                    "set that variable to the old password)")
            raise ChatError(f"cannot open the store {self.options.store}: {e}{hint}") from None
        self._connect()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.options.timeout)
        except TimeoutError:
            problems = "; ".join(dict.fromkeys(list(self._problems)[-3:]))
            self._discard_new_store()
            raise ChatError(f"not logged in within {self.options.timeout:g} s"
                            + (f" ({problems})" if problems else "")) from None
        except ChatError:
            self._discard_new_store()
            raise
        self.ever_ready = True

    def _discard_new_store(self) -> None:
        """The first login with a new store failed: delete the store (and its salt), so
        that a mistyped password does not become the key of the store the next run uses.
        It holds only an identity that was never published."""
        if not self._new_store or self.ever_ready or self.xmpp is None:
            return
        from .storekey import salt_path

        try:
            self.mls.state_store.close()
        except Exception:  # noqa: BLE001 - deleting it anyway
            pass
        for path in (self.options.store, salt_path(self.options.store)):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass

    async def logout(self) -> None:
        """Close the stream (abort it when the server does not answer)."""
        self.quitting = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        if self.xmpp is None:
            return
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=2.0), 5.0)
        except (TimeoutError, Exception):  # noqa: BLE001 - leaving anyway
            pass
        finally:
            self.xmpp.abort()
            self.xmpp.cancel_connection_attempt()

    async def repl(self) -> None:
        """Read input lines and run them, one at a time, until /quit or end of input."""
        groups = self.active_groups()
        self.notice(f"logged in as {self.me}, device {self.own_fingerprint()}"
                    + (f" ({self.options.device})" if self.options.device else ""))
        self.notice(f"store {self.options.store} ("
                    f"{'encrypted' if self.store_encrypted else 'NOT encrypted'}); "
                    f"{len(groups)} group(s)")
        if len(groups) == 1 and self.current is None:
            self.current = groups[0].room
            self.notice(f"selected group {groups[0].room}")
        self.notice("ready: /help lists the commands")
        _start_reader(asyncio.get_running_loop(), self._lines)
        while not self.quitting:
            line = await self._lines.get()
            if line is None:  # end of input
                break
            self._command = asyncio.ensure_future(self._run_line(line))
            await self._command

    async def _run_line(self, line: str) -> None:
        try:
            await self.handle(line)
        except ChatError as e:
            self.error(str(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a command never ends the client
            log.debug("command %r failed", line, exc_info=True)
            self.error(_describe(e))

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: stop the running command and leave."""
        self.quitting = True
        if self._command is not None:
            self._command.cancel()
        self._lines.put_nowait(None)
