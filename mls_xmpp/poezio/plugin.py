"""The poezio plugin ``mls``: MLS groups (RFC 9420) as poezio MUC tabs.

Loaded by poezio (``/load mls``, or ``plugins_autoload = mls``) through the
``poezio_plugins`` entry point ``mls``; requires poezio 0.18. It registers the
``mls`` slixmpp plugin (:class:`mls_xmpp.xmpp.plugin.XEP_MLS`) on poezio's own
client, so the MLS work -- keys, Commits, the room order, the archive, the
outbox, worker processes for large groups -- is that plugin's, on poezio's event
loop exactly as in any slixmpp program. This module only maps it to poezio:

* a group is a MUC tab, opened (before the plugin enters the room) with the
  device's room nick; encryption is always on there: what is typed goes to
  ``group.send()`` and poezio's own plaintext stanza is never sent;
* what the plugin decrypts (``mls_message``) is shown in the tab with the
  sender's JID (from its MLS credential) and a trust marker; membership and key
  changes (``mls_membership``, ``mls_trust``) are shown there too. poezio's
  display of the raw stanzas (their fallback bodies) is suppressed;
* commands ``/mls_create``, ``/mls_invite``, ``/mls_remove``, ``/mls_update``,
  ``/mls_leave``, ``/mls_members``, ``/mls_fingerprints``, ``/mls_safety``,
  ``/mls_verify``, ``/mls_distrust``, ``/mls_trust``, ``/mls_upload``,
  ``/mls_save``, ``/mls_groups``.

State: an SQLite store in poezio's data directory (``$XDG_DATA_HOME/poezio/mls/
JID.db``), the device name ``poezio-<device_id>`` of the poezio profile (option
``device`` overrides it). Options (section ``[mls]`` of ``plugins/mls.cfg``):
``device``, ``store``, ``invitations`` (contacts, any, or ask: /mls_accept N),
``blind_trust``, ``refuse_send_to`` (distrusted, unverified, or empty),
``rules_add`` and ``rules_remove`` (members or admins: who may add / remove in
groups this device creates).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from poezio import xdg
from poezio.config import config as poezio_config
from poezio.plugin_e2ee import E2EEPlugin
from poezio.tabs import MucTab
from poezio.ui.types import InfoMessage
from poezio.ui.types import Message as UIMessage
from slixmpp import JID
from slixmpp.jid import InvalidJID

import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin
from mls_xmpp.core.errors import MLSError
from mls_xmpp.xmpp.delivery import FALLBACK_BODY
from mls_xmpp.xmpp.rules import DEFAULT_RULES, Who
from mls_xmpp.xmpp.stanza import NS
from mls_xmpp.xmpp.trust import fingerprint as key_fingerprint

log = logging.getLogger(__name__)

#: Trust marker after a sender's name: verified, trusted (blindly), new, distrusted.
MARKS = {"verified": "✔", "trusted": "~", "new": "?", "distrusted": "✘"}
#: Seconds to wait for invitees to accept this account as a contact.
CONTACT_WAIT = 5.0
#: Seconds poezio's own room joins wait, at start, for the plugin to read its groups.
KNOWN_WAIT = 60.0
#: Additions of at least this many accounts or devices show their stages.
PROGRESS_MIN = 8

HELP = """MLS groups (each group is a MUC tab; in it everything typed is MLS-encrypted):
/mls_create JID [JID ...]   create a group with these accounts and open its tab
/mls_groups                 list your groups
in a group tab:
/mls_invite JID [JID ...]   add every device of each account
/mls_remove JID [JID ...]   remove every device of each account
/mls_update                 fresh keys for this device
/mls_leave                  ask the others to remove this device
/mls_members                member devices with fingerprints and trust
/mls_upload PATH [TEXT]     share a file (encrypted, through HTTP upload)
/mls_save N [DIR]           save received file N
/mls_accept N, /mls_decline N   an invitation from a non-contact (invitations = ask)
anywhere:
/mls_fingerprints [JID]     devices seen, with fingerprint and trust state
/mls_safety JID FP          the safety number to compare with that device's owner
/mls_verify JID FP          mark a device verified (after comparing)
/mls_distrust JID FP        mark a device distrusted;  /mls_trust JID FP undoes it
FP: at least the first 8 hex digits of a fingerprint. Markers after a sender:
✔ verified, ~ trusted (not verified), ? new, ✘ distrusted."""


class _SentThroughMLS(Exception):
    """Drops a stanza poezio meant to send in a group tab: its body went through MLS."""


# without poezio installed (mypy in an environment without the extra) E2EEPlugin is Any
class Plugin(E2EEPlugin):  # type: ignore[misc, unused-ignore]
    """poezio's view of the ``mls`` slixmpp plugin (module documentation above)."""

    encryption_name = "MLS"
    encryption_short_name = "mls"
    eme_ns = NS
    encrypted_tags = [(NS, "mls")]
    replace_body_with_eme = True
    stanza_encryption = False
    supported_tab_types = (MucTab,)
    trust_states: dict[str, set[str]] = {"accepted": set(), "rejected": set()}
    default_config = {"mls": {
        "device": "",
        "store": "",
        "invitations": "contacts",
        "blind_trust": True,
        "refuse_send_to": "",
        "rules_add": "members",
        "rules_remove": "members",
    }}

    # -- set-up ---------------------------------------------------------------------

    def init(self) -> None:
        super().init()
        #: attachments received, numbered from 1 for /mls_save: (attachment, sender, room)
        self.files: list[tuple[Any, str, str]] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        #: set once the slixmpp plugin has read its groups (first ``mls_ready``)
        self._known = asyncio.Event()
        self.groups_known = False
        #: invitations waiting for /mls_accept or /mls_decline (option invitations=ask)
        self.invitations: list[Any] = []
        xmpp = self.core.xmpp
        xmpp.register_plugin("mls", self.mls_options())
        self.mls: Any = cast(Any, xmpp.plugin)["mls"]
        self.mls.delivery.before_join.append(self.open_tab)
        for name, handler in (
            ("mls_ready", self.on_ready),
            ("mls_message", self.on_message),
            ("mls_membership", self.on_membership),
            ("mls_joined", self.on_joined),
            ("mls_removed", self.on_removed),
            ("mls_trust", self.on_trust),
            ("mls_error", self.on_error),
            ("mls_invitation", self.on_invitation),
            ("mls_progress", self.on_progress),
        ):
            self.api.add_slix_event_handler(name, handler)
        self.api.add_event_handler("muc_say", self.on_say, priority=0)
        self.api.add_event_handler("private_say", self.on_private_say, priority=0)
        self.add_commands()
        self._guard_rooms()
        self._skip_direct_payloads()
        # poezio loads plugins at session start: the slixmpp plugin missed that event
        if xmpp.session_bind_event.is_set():
            asyncio.get_running_loop().call_soon(self._start_now)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task, referenced until it ends (asyncio keeps weak ones)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_now(self) -> None:
        if not self.mls._session_up:  # noqa: SLF001 - no public "started late" entry
            self.spawn(self.mls._on_session_start(None))  # noqa: SLF001

    def mls_options(self) -> dict[str, Any]:
        """The slixmpp plugin's options, from this plugin's config and poezio's profile."""
        jid = str(JID(self.core.xmpp.boundjid.bare))
        store = self.config.getstr("store") or str(xdg.DATA_HOME / "mls" / f"{jid}.db")
        Path(store).parent.mkdir(parents=True, exist_ok=True)
        device = self.config.getstr("device") or f"poezio-{poezio_config.getstr('device_id')}"
        invitations = self.config.getstr("invitations") or "contacts"
        if invitations not in ("contacts", "any", "ask"):
            invitations = "contacts"
        refuse = self.config.getstr("refuse_send_to") or None
        rules = DEFAULT_RULES
        for key in ("add", "remove"):
            value = self.config.getstr(f"rules_{key}") or "members"
            who = Who.ADMINS if value == "admins" else Who.MEMBERS
            rules = _replace(rules, **{key: int(who)})
        return {"store": store, "device": device, "invitations": invitations,
                "blind_trust": self.config.getbool("blind_trust"),
                "refuse_send_to": refuse, "rules": rules}

    def cleanup(self) -> None:
        super().cleanup()
        try:
            self.mls.delivery.before_join.remove(self.open_tab)
        except ValueError:
            pass
        from poezio import multiuserchat

        for name, original in self._muc_originals.items():
            setattr(multiuserchat, name, original)
        for event, original, wrapper in self._message_handlers:
            self.core.xmpp.del_event_handler(event, wrapper)
            self.core.xmpp.add_event_handler(event, original)

    def _skip_direct_payloads(self) -> None:
        """Keep poezio from opening a conversation tab for a stanza sent to this account
        directly with an MLS payload (a Welcome, or its carbon copy): the slixmpp plugin
        reads it, and the group it opens gets its own tab."""
        xmpp = self.core.xmpp
        handler = self.core.handler
        self._message_handlers: list[tuple[str, Any, Any]] = []
        for event, original in (("message", handler.on_message),
                                ("carbon_received", handler.on_carbon_received),
                                ("carbon_sent", handler.on_carbon_sent)):
            async def skipping(msg: Any, original: Any = original) -> None:
                if msg["type"] != "groupchat" and msg.xml.find(f".//{{{NS}}}mls") is not None:
                    return
                await original(msg)

            xmpp.del_event_handler(event, original)
            xmpp.add_event_handler(event, skipping)
            self._message_handlers.append((event, original, skipping))

    async def _join_when_known(self, *args: Any, **kwargs: Any) -> None:
        try:
            await asyncio.wait_for(self._known.wait(), KNOWN_WAIT)
        except TimeoutError:
            self.api.information("mls: the groups were not read in time; joining anyway",
                                 "Error")
            self.groups_known = True
        self._guarded_join(*args, **kwargs)

    def is_group(self, room: str) -> bool:
        """Whether ``room`` is the room of a group this device is in."""
        session = self.mls.sessions.get(room)
        return session is not None and not session.removed

    def _guard_rooms(self) -> None:
        """Keep poezio's MUC code from moving this device in a group's room.

        The device's occupant there is the slixmpp plugin's, under the nick the
        protocol gives it: poezio joins a group's room only with that nick
        (``/join`` re-attaches a tab), does not change it (``/nick``), and
        does not leave the room (``/part``, ``/close``, or a message for a
        room without a tab): the device stays a member until ``/mls_leave``.
        """
        from poezio import multiuserchat

        self._muc_originals = {name: getattr(multiuserchat, name)
                               for name in ("join_groupchat", "leave_groupchat", "change_nick")}
        join = self._muc_originals["join_groupchat"]
        leave = self._muc_originals["leave_groupchat"]
        change_nick = self._muc_originals["change_nick"]

        def join_groupchat(core: Any, jid: Any, nick: str, *args: Any, **kwargs: Any) -> None:
            room = str(JID(jid).bare)
            if not self.groups_known:
                # poezio joins bookmarked rooms at session start, before the slixmpp
                # plugin has read its groups: a group's room must not be entered
                # under poezio's nick first (that would rename the device's occupant)
                self.spawn(self._join_when_known(core, jid, nick, *args, **kwargs))
                return
            if self.is_group(room):
                nick = self.mls.nick(room)
                tab = kwargs.get("tab") or self.core.tabs.by_name_and_class(room, MucTab)
                if tab is not None:
                    tab.own_nick = nick
                    self.open_tab(room, nick)
            join(core, jid, nick, *args, **kwargs)

        def leave_groupchat(xmpp: Any, jid: Any, own_nick: str, msg: str) -> None:
            room = str(JID(jid).bare)
            if self.is_group(room):
                self.api.information(
                    f"mls: this device stays in the room of group {room} while it is a "
                    "member (/join reopens the tab; /mls_leave leaves the group)", "Info")
                return
            leave(xmpp, jid, own_nick, msg)

        def guarded_change_nick(core: Any, jid: Any, nick: str, *args: Any,
                                **kwargs: Any) -> None:
            if self.is_group(str(JID(jid).bare)):
                self.api.information("mls: a device's nick in a group's room is fixed "
                                     "(section 9.1 of the protocol)", "Error")
                return
            change_nick(core, jid, nick, *args, **kwargs)

        self._guarded_join = join_groupchat
        multiuserchat.join_groupchat = join_groupchat
        multiuserchat.leave_groupchat = leave_groupchat
        multiuserchat.change_nick = guarded_change_nick

    def add_commands(self) -> None:
        """The /mls_* commands (poezio removes them on /unload)."""
        commands: list[tuple[str, Any, str, str]] = [
            ("mls_help", self.cmd_help, "", "MLS commands"),
            ("mls_create", self.cmd_create, "<jid> [jid ...]", "Create an MLS group"),
            ("mls_groups", self.cmd_groups, "", "List your MLS groups"),
            ("mls_invite", self.cmd_invite, "<jid> [jid ...]", "Add accounts to this group"),
            ("mls_remove", self.cmd_remove, "<jid> [jid ...]",
             "Remove accounts from this group"),
            ("mls_update", self.cmd_update, "", "Fresh keys for this device"),
            ("mls_leave", self.cmd_leave, "", "Leave this group"),
            ("mls_members", self.cmd_members, "", "Members of this group"),
            ("mls_fingerprints", self.cmd_fingerprints, "[jid]", "Devices seen"),
            ("mls_safety", self.cmd_safety, "<jid> <fingerprint>", "Safety number"),
            ("mls_verify", self.cmd_verify, "<jid> <fingerprint>", "Verify a device"),
            ("mls_distrust", self.cmd_distrust, "<jid> <fingerprint>", "Distrust a device"),
            ("mls_trust", self.cmd_trust, "<jid> <fingerprint>", "Trust a device again"),
            ("mls_upload", self.cmd_upload, "<path> [text]", "Share a file in this group"),
            ("mls_save", self.cmd_save, "<n> [dir]", "Save a received file"),
            ("mls_accept", self.cmd_accept, "<n>", "Join the group of invitation n"),
            ("mls_decline", self.cmd_decline, "<n>", "Decline invitation n"),
        ]
        for name, handler, usage, short in commands:
            self.api.add_command(name, self._runner(handler), usage=usage, short=short,
                                 help=HELP)

    def _runner(self, handler: Any) -> Any:
        async def run(line: str) -> None:
            try:
                await handler(line.split())
            except (MLSError, _UsageError) as e:
                self.api.information(f"mls: {e}", "Error")
            except Exception as e:  # noqa: BLE001 - a command never takes poezio down
                log.exception("mls command failed")
                self.api.information(f"mls: {type(e).__name__}: {e}", "Error")
        return run

    # -- tabs ------------------------------------------------------------------------

    def open_tab(self, room: str, nick: str) -> Any:
        """The group's MUC tab, opened (unfocused) if needed, with encryption on.

        Called before the slixmpp plugin enters the room, so that poezio knows
        the room when its presences and messages arrive (poezio leaves rooms it
        has no tab for); the plugin's join is the tab's join.
        """
        tab = self.core.tabs.by_name_and_class(room, MucTab)
        if tab is None:
            tab = self.core.open_new_room(JID(room), nick, focus=False)
        elif not tab.joined:
            tab.own_nick = nick
        self._enabled_tabs[JID(room)] = self.encrypt
        tab.e2e_encryption = self.encryption_name
        _hide_archived_stanzas(tab)
        return tab

    def tab_of(self, room: str) -> Any:
        """The tab of a group of this device (opened if it was closed)."""
        tab = self.core.tabs.by_name_and_class(room, MucTab)
        if tab is None:  # closed by the user: the room still has this device
            from poezio import multiuserchat

            tab = self.open_tab(room, self.mls.nick(room))
            if self.is_group(room):  # not a group this device just left
                multiuserchat.join_groupchat(self.core, JID(room), self.mls.nick(room),
                                             tab=tab)
        return tab

    def show(self, room: str, message: Any) -> None:
        """Add a line to a group's tab and redraw what needs it."""
        tab = self.tab_of(room)
        tab.add_message(message)
        if tab is self.core.tabs.current_tab:
            self.core.refresh_window()
        else:
            self.core.refresh_tab_win()

    def note(self, room: str | None, text: str) -> None:
        """An information line in a group's tab (or poezio's information buffer)."""
        if room is None:
            self.api.information(text, "Info")
        else:
            self.show(room, InfoMessage(f"mls: {text}"))

    def current_session(self) -> Any:
        """The group of the current tab."""
        tab = self.api.current_tab()
        session = self.mls.sessions.get(str(tab.jid.bare)) if isinstance(tab, MucTab) else None
        if session is None or not session.group.active:
            raise _UsageError("not in an MLS group tab (/mls_groups lists them)")
        return session

    def _toggle_tab(self, _input: str) -> None:
        tab = self.api.current_tab()
        if isinstance(tab, MucTab) and str(tab.jid.bare) in self.mls.sessions:
            self.api.information("mls: encryption is always on in MLS group tabs", "Info")
        else:
            self.api.information("mls: this is not an MLS group; /mls_create makes one",
                                 "Error")

    # -- E2EEPlugin ------------------------------------------------------------------

    def on_say(self, msg: Any, tab: Any) -> None:
        """A line typed in a group tab: send it through the group, not as poezio's stanza."""
        session = self.mls.sessions.get(str(tab.jid.bare)) if isinstance(tab, MucTab) else None
        if session is None:
            return
        body = str(msg["body"])
        msg["body"] = ""  # poezio sends nothing
        if body:
            self.spawn(self._send(session, body))

    def on_private_say(self, msg: Any, tab: Any) -> None:
        """A private message to an occupant of a group's room would go in clear: refused."""
        if self.is_group(str(tab.jid.bare)) and msg["body"]:
            msg["body"] = ""
            self.api.information("mls: not sent: private messages in a group's room are not "
                                 "encrypted; write in the group tab", "Error")

    async def _send(self, session: Any, body: str) -> None:
        try:
            await session.send(body)
        except MLSError as e:
            self.note(session.room, f"NOT SENT: {e}")
            return
        self.show(session.room, UIMessage(body, self._own_nick()))

    async def encrypt(self, message: Any, jids: Any, tab: Any) -> None:
        """A body poezio sends to a group room another way (not a typed line)."""
        room = str(message["to"].bare)
        session = self.mls.sessions.get(room)
        if session is None:
            self.api.information(f"mls: not sent: {room} is not a group of this device "
                                 "(any more); nothing goes there in clear", "Error")
            raise MLSError(f"{room} is not an MLS group of this device: nothing sent")
        body = str(message["body"])
        if body:
            self.spawn(self._send(session, body))
        raise _SentThroughMLS("sent through MLS instead")

    async def decrypt(self, message: Any, jid: Any, tab: Any) -> None:
        """A group stanza as poezio sees it: shown by :meth:`on_message` instead."""
        message["body"] = ""

    async def get_fingerprints(self, jid: Any) -> list[tuple[str, bool]]:
        """``/mls_fingerprint [jid]``: the devices of an account seen, this one marked."""
        bare = str(JID(jid).bare)
        found = [(f"{d.fingerprint} [{d.state}]", False) for d in self.mls.devices(bare)]
        if bare == self.mls.bare_jid:
            found.insert(0, (f"{self.own_fingerprint()} (this device)", True))
        return found

    # -- the plugin's events -----------------------------------------------------------

    def own_fingerprint(self) -> str:
        """This device's fingerprint."""
        client = self.mls.identity
        return "?" if client is None else key_fingerprint(client.signature_public_key)

    def _own_nick(self) -> str:
        return str(JID(self.mls.bare_jid).user)

    def sender_name(self, jid: str, device: str) -> str:
        """A sender as shown: local part (the JID if on another domain) and trust marker."""
        try:
            sender = JID(jid)
            own = JID(self.mls.bare_jid)
            name = str(sender.user) if sender.domain == own.domain else str(sender.bare)
        except InvalidJID:
            name = jid
        if jid == self.mls.bare_jid and device == self.own_fingerprint():
            return name
        state = self.mls.trust.state(jid, device)
        return f"{name} {MARKS.get(str(state), '?')}"

    def on_ready(self, _: Any) -> None:
        self.groups_known = True
        self._known.set()
        groups = [s for s in self.mls.groups if s.group.active]
        self.api.information(
            f"mls: ready; this device {self.own_fingerprint()} "
            f"({self.mls.config['device']}), {len(groups)} group(s)", "Info")

    def on_message(self, event: Any) -> None:
        lines = [str(event.body)] if event.body else []
        for att in getattr(event.content, "attachments", ()) or ():
            self.files.append((att, str(event.sender), event.group.room))
            lines.append(f"[file {len(self.files)}] {att.name or 'unnamed'}, "
                         f"{_size(att.size)}, {att.media_type} (/mls_save {len(self.files)})")
        stamp = getattr(event.content, "timestamp_ms", 0) or 0
        when = datetime.fromtimestamp(stamp / 1000) if stamp else None
        self.show(event.group.room, UIMessage("\n".join(lines),
                                              self.sender_name(event.sender, event.device),
                                              time=when))

    def on_membership(self, event: Any) -> None:
        if event.own:
            who = "you"
        elif event.committer:
            who = str(event.committer)
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
        self.note(event.group.room, f"{who} {'; '.join(parts)} (epoch {event.epoch})")

    def on_joined(self, event: Any) -> None:  # JoinedEvent
        session = event.group
        others = sorted(session.jids() - {self.mls.bare_jid})
        self.note(session.room, f"you joined this group (epoch {session.epoch}, with "
                                f"{_jids(others) or 'nobody else'})")
        self.api.information(f"mls: joined group {session.room}", "Info")

    def on_removed(self, session: Any) -> None:
        self.note(session.room, "you are no longer a member of this group")

    def on_trust(self, change: Any) -> None:
        room = getattr(change.group, "room", None)
        jid, fp = change.jid, change.fingerprint
        if change.change == "changed":
            self.note(room, f"WARNING: {jid}'s device has a NEW KEY {fp} (was "
                            f"{change.previous}) [{change.state}]; /mls_safety {jid} {fp[:8]}")
        elif change.change == "new":
            if fp == self.own_fingerprint() or not change.others:
                return
            self.note(room, f"{jid} has a new device {fp} [{change.state}]; "
                            f"/mls_safety {jid} {fp[:8]}")
        else:
            self.api.information(f"mls: {jid} [{fp}] is now {change.state}", "Info")

    def on_invitation(self, event: Any) -> None:
        self.invitations.append(event)
        n = len(self.invitations)
        self.api.information(
            f"mls: {event.inviter} (not a contact) invites you into group {event.room}: "
            f"/mls_accept {n} joins, /mls_decline {n} declines (within "
            f"{event.expires_in / 60:.0f} min)", "Info")

    def on_progress(self, event: Any) -> None:
        if event.total >= PROGRESS_MIN and event.done in (0, event.total):
            batch = f" (Commit {event.batch} of {event.batches})" if event.batches > 1 else ""
            self.api.information(f"mls: adding: {event.stage} {event.done}/{event.total}"
                                 f"{batch}", "Info")

    def on_error(self, event: Any) -> None:
        if not self.groups_known and self.mls._start_error is not None:  # noqa: SLF001
            self.groups_known = True  # start-up failed: poezio's rooms wait no longer
            self._known.set()
        room = getattr(event.group, "room", None)
        if room is not None and self.core.tabs.by_name_and_class(room, MucTab) is not None:
            self.note(room, f"error: {event.reason}")
        else:
            self.api.information(f"mls: {event.reason}", "Error")

    # -- commands ----------------------------------------------------------------------

    def _jid(self, text: str) -> str:
        if "@" not in text:
            text = f"{text}@{self.core.xmpp.boundjid.domain}"
        try:
            jid = JID(text)
        except InvalidJID:
            raise _UsageError(f"{text!r} is not a JID") from None
        if not jid.user or jid.resource:
            raise _UsageError(f"{text!r} is not an account JID user@domain")
        return str(jid.bare)

    async def _befriend(self, jids: Sequence[str]) -> None:
        """Ask invitees that are not contacts for a subscription (their devices join
        only contacts' groups by default); wait a little for their answer."""
        strangers = [j for j in jids if not self.mls.is_mutual_contact(j)]
        for jid in strangers:
            self.core.xmpp.send_presence(pto=jid, ptype="subscribe")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONTACT_WAIT
        while strangers and loop.time() < deadline:
            await asyncio.sleep(0.05)
            strangers = [j for j in strangers if not self.mls.is_mutual_contact(j)]
        for jid in strangers:
            self.api.information(f"mls: {jid} has not accepted you as a contact (yet): "
                                 "their devices may not join", "Info")

    async def cmd_help(self, args: list[str]) -> None:
        self.api.information(HELP, "Info")

    async def cmd_create(self, args: list[str]) -> None:
        jids = list(dict.fromkeys(self._jid(a) for a in args))
        if not jids:
            raise _UsageError("usage: /mls_create JID [JID ...]")
        await self._befriend([j for j in jids if j != self.mls.bare_jid])
        session = await self.mls.create_group(members=jids)
        tab = self.tab_of(session.room)
        self.core.tabs.set_current_tab(tab)
        self.note(session.room, f"created this group with {_jids(jids)} "
                                f"(epoch {session.epoch}, {len(session.members)} devices)")

    async def cmd_groups(self, args: list[str]) -> None:
        groups = [s for s in self.mls.groups if s.group.active]
        lines = [f"{s.room}: epoch {s.epoch}, {len(s.members)} device(s)" for s in groups]
        self.api.information("mls: " + ("\n".join(lines) if lines else "no groups yet"), "Info")

    async def cmd_invite(self, args: list[str]) -> None:
        session = self.current_session()
        jids = list(dict.fromkeys(self._jid(a) for a in args))
        if not jids:
            raise _UsageError("usage: /mls_invite JID [JID ...]")
        await self._befriend([j for j in jids if j != self.mls.bare_jid])
        await session.add(*jids)

    async def cmd_remove(self, args: list[str]) -> None:
        session = self.current_session()
        jids = list(dict.fromkeys(self._jid(a) for a in args))
        if not jids:
            raise _UsageError("usage: /mls_remove JID [JID ...]")
        if self.mls.bare_jid in jids:
            raise _UsageError("you cannot remove yourself: /mls_leave asks the others to")
        await session.remove(*jids)

    async def cmd_update(self, args: list[str]) -> None:
        await self.current_session().update()

    async def cmd_leave(self, args: list[str]) -> None:
        session = self.current_session()
        if len(session.members) < 2:
            raise _UsageError("you are the only member: nobody could commit your removal")
        await session.leave()
        self.note(session.room, "leave requested: another member's device will remove you")

    async def cmd_members(self, args: list[str]) -> None:
        session = self.current_session()
        members = sorted(session.members, key=lambda m: m[2])
        lines = [f"epoch {session.epoch}, {len(members)} member device(s):"]
        mine = self.own_fingerprint()
        for jid, fp, leaf in members:
            if jid == self.mls.bare_jid and fp == mine:
                note = "(this device)"
            else:
                note = f"[{self.mls.trust.state(jid, fp) or 'new'}]"
            lines.append(f"leaf {leaf} {jid} {fp} {note}")
        for line in lines:
            self.note(session.room, line)

    def _device(self, args: list[str], usage: str) -> tuple[str, str]:
        if len(args) < 2:
            raise _UsageError(f"usage: {usage}")
        jid = self._jid(args[0])
        wanted = "".join(args[1:]).lower()
        if len(wanted) < 8 or not re.fullmatch(r"[0-9a-f]+", wanted):
            raise _UsageError(f"usage: {usage} (at least 8 hex digits of the fingerprint)")
        found = [d.fingerprint for d in self.mls.devices(jid)
                 if d.fingerprint.replace(" ", "").startswith(wanted)]
        if not found:
            raise _UsageError(f"no device of {jid} with that fingerprint has been seen "
                              "(/mls_fingerprints lists them)")
        if len(found) > 1:
            raise _UsageError(f"{len(found)} devices match; give more of the fingerprint")
        return jid, found[0]

    def _where(self) -> str | None:
        tab = self.api.current_tab()
        room = str(tab.jid.bare) if isinstance(tab, MucTab) else None
        return room if room in self.mls.sessions else None

    async def cmd_fingerprints(self, args: list[str]) -> None:
        jid = self._jid(args[0]) if args else None
        lines = [f"this device: {self.own_fingerprint()}"]
        lines += [f"{d.jid} {d.fingerprint} {d.state} {d.device or '-'}"
                  for d in self.mls.devices(jid)]
        for line in lines:
            self.note(self._where(), line)

    async def cmd_safety(self, args: list[str]) -> None:
        jid, fp = self._device(args, "/mls_safety JID FINGERPRINT")
        number = self.mls.safety_number(jid, fp)
        self.note(self._where(), f"safety number with {jid} [{fp}]: {number}; the same on "
                                 f"their side? /mls_verify {jid} {fp[:8]}")

    async def cmd_verify(self, args: list[str]) -> None:
        jid, fp = self._device(args, "/mls_verify JID FINGERPRINT")
        self.mls.verify(jid, fp)
        self.note(self._where(), f"{jid} [{fp}] is verified")

    async def cmd_distrust(self, args: list[str]) -> None:
        jid, fp = self._device(args, "/mls_distrust JID FINGERPRINT")
        self.mls.distrust(jid, fp)
        self.note(self._where(), f"{jid} [{fp}] is distrusted")

    async def cmd_trust(self, args: list[str]) -> None:
        jid, fp = self._device(args, "/mls_trust JID FINGERPRINT")
        self.mls.trust_device(jid, fp)
        self.note(self._where(), f"{jid} [{fp}] is trusted")

    async def cmd_upload(self, args: list[str]) -> None:
        if not args:
            raise _UsageError("usage: /mls_upload PATH [TEXT]")
        session = self.current_session()
        path = Path(args[0]).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise _UsageError(f"cannot read {args[0]}: {e.strerror or e}") from None
        text = " ".join(args[1:])
        await session.send_file(data, name=path.name, body=text)
        self.show(session.room, UIMessage(
            "\n".join([*([text] if text else []),
                       f"[sent file] {path.name}, {_size(len(data))}"]), self._own_nick()))

    def _invitation(self, args: list[str], usage: str) -> Any:
        if len(args) != 1 or not args[0].isdigit():
            raise _UsageError(f"usage: {usage}")
        index = int(args[0])
        if not 1 <= index <= len(self.invitations) or self.invitations[index - 1] is None:
            raise _UsageError(f"no open invitation {index}")
        event = self.invitations[index - 1]
        self.invitations[index - 1] = None  # numbers stay as shown
        return event

    async def cmd_accept(self, args: list[str]) -> None:
        event = self._invitation(args, "/mls_accept N")
        session = await event.accept()
        self.core.tabs.set_current_tab(self.tab_of(session.room))
        self.core.refresh_window()

    async def cmd_decline(self, args: list[str]) -> None:
        event = self._invitation(args, "/mls_decline N")
        await event.decline()
        self.api.information(f"mls: declined {event.inviter}'s invitation", "Info")

    async def cmd_save(self, args: list[str]) -> None:
        if not args or len(args) > 2 or not args[0].isdigit():
            raise _UsageError("usage: /mls_save N [DIR] (N as shown by [file N])")
        index = int(args[0])
        if not 1 <= index <= len(self.files):
            raise _UsageError(f"no file {index}")
        att, sender, room = self.files[index - 1]
        folder = Path(args[1] if len(args) > 1 else xdg.DATA_HOME / "mls" / "files")
        folder.mkdir(parents=True, exist_ok=True)
        data = await self.mls.download(att, sender=sender, room=room)
        name = Path(att.name or "file").name or "file"
        target = folder / name
        n = 0
        while True:
            try:  # never over an existing file or through a symlink
                with open(target, "xb") as f:
                    f.write(data)
                break
            except FileExistsError:
                n += 1
                target = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
        self.note(room, f"saved file {index} ({_size(len(data))}) as {target}")


class _UsageError(Exception):
    """A command used wrongly: shown to the user, nothing changed."""


def _hide_archived_stanzas(tab: Any) -> None:
    """Keep poezio's own history loading (the room archive, read when the tab joins
    or scrolls up, and local logs filled from it) from showing a group's raw
    stanzas: it bypasses decrypt() and would show their fallback bodies. The
    plugin reads the archive itself and shows what it decrypts."""
    buffer = tab._text_buffer  # noqa: SLF001 - poezio has no hook for history lines
    if getattr(buffer, "mls_filtered", False):
        return
    add_history = buffer.add_history_messages

    def add_history_messages(messages: Sequence[Any], gap: Any = None) -> None:
        add_history([m for m in messages if FALLBACK_BODY not in str(getattr(m, "txt", ""))],
                    gap=gap)

    buffer.add_history_messages = add_history_messages
    buffer.mls_filtered = True


def _replace(rules: Any, **changes: Any) -> Any:
    from dataclasses import replace
    return replace(rules, **changes)


def _jids(items: Sequence[str]) -> str:
    return ", ".join(str(j) for j in items)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"
