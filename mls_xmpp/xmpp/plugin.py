"""The slixmpp plugin: MLS groups over any XMPP server (urn:mls-xmpp:0).

::

    import mls_xmpp                                    # registers the "mls" plugin

    xmpp = slixmpp.ClientXMPP("alice@example.org", password)
    xmpp.register_plugin("mls")
    xmpp.add_event_handler("mls_message", on_message)  # MLSMessageEvent
    ...
    group = await xmpp.plugin["mls"].create_group(members=["bob@example.org"])
    await group.send("hello")

Events: ``mls_message`` (:class:`MLSMessageEvent`), ``mls_membership``
(:class:`MembershipEvent`), ``mls_joined`` (a :class:`GroupSession` this device
was welcomed into), ``mls_removed``, ``mls_error`` (:class:`MLSErrorEvent`:
input dropped, group state unchanged), ``mls_ready`` (KeyPackages published,
groups resumed), ``mls_progress`` (:class:`ProgressEvent`: the stages of adding
many members), ``mls_invitation`` (:class:`InvitationEvent`: someone who is not
a contact invites this device; with ``invitations="ask"``).

Who may put this device into a group (option ``invitations``): by default only
roster contacts with a mutual subscription and this account's own devices;
anyone else's Welcome is dropped and reported (:mod:`.invitations`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID
from slixmpp.plugins import BasePlugin
from slixmpp.plugins.base import register_plugin
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import MatchXPath

from ..core.errors import LocalUsageError, MLSError
from ..core.group.client import Client
from ..core.group.config import GroupConfig
from ..core.messages.key_package import KeyPackage
from ..storage import GroupRecord, MemoryStore, SQLiteStore, StateStore
from .attachments import download_attachment
from .delivery import DEFAULT_PART_SIZE, Delivery, RoomRefused
from .envelope import Attachment, Envelope, Kind
from .errors import NotConnectedError, TransportError, UnknownGroupError
from .events import MLSErrorEvent
from .inbox import Inbox
from .invitations import InvitationGate
from .keystore import KeyPackageStore
from .recovery import (
    GroupRegistry,
    NoGroupInfo,
    latest_group_info,
    old_leaf,
    retract_stale_device_items,
)
from .session import MAX_ADDS_PER_COMMIT, GroupSession, Progress, fetch_devices
from .stanza import NS, register_stanzas

log = logging.getLogger(__name__)


class XEP_MLS(BasePlugin):  # noqa: N801 - slixmpp plugin naming
    """MLS (RFC 9420) groups: one MUC room each, KeyPackages on PEP."""

    name = "mls"
    description = "MLS groups over MUC (urn:mls-xmpp:0)"
    dependencies = {"xep_0004", "xep_0030", "xep_0045", "xep_0059", "xep_0060", "xep_0163",
                    "xep_0313", "xep_0334", "xep_0359", "xep_0363", "xep_0380"}
    default_config = {
        "store": None,            # a StateStore or an SQLite file path; memory by default
        "store_key": None,        # 32 bytes: encrypt the SQLite store at rest
        "client": None,           # a core Client; generated from the JID by default
        "suite": 1,
        "muc_domain": None,       # default: conference.<domain>
        "pool_size": 5,           # KeyPackages kept on PEP
        "group_config": None,     # core GroupConfig
        "commit_timeout": 30.0,
        "device": None,           # a stable device name (application_id in its leaves)
        "recover": True,          # a device without stored state rejoins its groups
        "publish_key_packages": True,
        "upkeep_interval": 6 * 3600.0,  # seconds between KeyPackage renewals
        "max_adds_per_commit": MAX_ADDS_PER_COMMIT,  # more are split over several Commits
        "upload_part_size": DEFAULT_PART_SIZE,  # blobs above it are uploaded in parts
        "invitations": "contacts",  # whose Welcomes are joined: "contacts", "any" or "ask"
        "invitation_limit": 20,     # Welcomes per inviter per hour (own account excepted)
        "invitation_timeout": 3600.0,  # seconds an "ask" invitation waits for a decision
    }
    # Every default is written above and only there: code reads ``self.config[key]``.
    # No attribute of this class is named like a config key (slixmpp's BasePlugin
    # would write it into ``config``, overwriting what the application gave).

    # -- slixmpp lifecycle ------------------------------------------------------------

    def plugin_init(self) -> None:
        register_stanzas()
        cfg = self.config
        store = cfg["store"]
        if isinstance(store, str):
            store = SQLiteStore(store, key=cfg["store_key"])
        #: where groups and the identity are kept (config ``store``)
        self.state_store: StateStore = store or MemoryStore()
        self.sessions: dict[str, GroupSession] = {}
        #: this device's MLS identity, the core ``Client`` (config ``client``, or
        #: loaded from the store or generated by :meth:`start`)
        self.identity: Client | None = cfg["client"]
        self.delivery = Delivery(self, part_size=int(cfg["upload_part_size"]))
        self.registry = GroupRegistry(self)
        self.keystore: KeyPackageStore | None = None
        self._ready = asyncio.Event()
        #: True between ``session_start`` and ``disconnected``
        self._session_up = False
        #: why :meth:`start` failed, until the next session start
        self._start_error: MLSError | None = None
        self.inbox = Inbox(self, InvitationGate(
            str(cfg["invitations"]), int(cfg["invitation_limit"]),
            own_jid=lambda: self.bare_jid, is_contact=self.is_mutual_contact))
        self._upkeep: asyncio.Future[None] | None = None
        #: the read of missed Welcomes from the account's archive, started by :meth:`start`
        self.welcome_scan: asyncio.Future[None] | None = None
        self.xmpp.register_handler(CoroutineCallback(
            "mls payload", MatchXPath(f"{{{self.xmpp.default_ns}}}message/{{{NS}}}mls"),
            self._on_payload))
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        self.xmpp.add_event_handler("disconnected", self._on_disconnected)

    def plugin_end(self) -> None:
        self.inbox.drop_pending()
        self.xmpp.remove_handler("mls payload")
        self.xmpp.del_event_handler("session_start", self._on_session_start)
        self.xmpp.del_event_handler("disconnected", self._on_disconnected)
        self.xmpp.plugin["xep_0030"].del_feature(feature=NS)
        for session in list(self.sessions.values()):
            asyncio.ensure_future(session.stop())

    def session_bind(self, jid: Any) -> None:
        self.xmpp.plugin["xep_0030"].add_feature(NS)

    @property
    def bare_jid(self) -> str:
        """This account's bare JID."""
        return str(self.xmpp.boundjid.bare)

    @property
    def muc_domain(self) -> str:
        """Where group rooms are created."""
        return self.config["muc_domain"] or f"conference.{self.xmpp.boundjid.domain}"

    def _group_config(self) -> GroupConfig:
        cfg = self.config["group_config"]
        return cfg if isinstance(cfg, GroupConfig) else GroupConfig()

    # -- connection state ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the XMPP session is up (connected, authenticated, session started)."""
        return self._session_up and self.xmpp.is_connected()

    def require_connected(self) -> None:
        """Raise :class:`NotConnectedError` at once when there is no XMPP session."""
        if not self.xmpp.is_connected():
            raise NotConnectedError("not connected to the XMPP server: connect, wait for "
                                    "session_start (or mls_ready), then call again")
        if not self._session_up:
            raise NotConnectedError("the XMPP session has not started (still logging in, "
                                    "or authentication failed)")

    async def ensure_ready(self, timeout: float = 60.0) -> None:
        """Wait until :meth:`start` finished; :class:`NotConnectedError` without delay
        when there is no XMPP stream, or when it goes down (or start-up fails) meanwhile.

        While the stream is being set up (connecting, logging in) this waits.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._ready.is_set() and self.xmpp.is_connected():
                return
            if self._start_error is not None:
                raise NotConnectedError(f"the plugin failed to start: {self._start_error}"
                                        ) from self._start_error
            if not self.xmpp.is_connected() and not self.xmpp.is_connecting():
                self.require_connected()
            left = deadline - loop.time()
            if left <= 0:
                raise NotConnectedError(f"the XMPP session was not ready within {timeout} s")
            try:  # look again now and then: a lost stream sets no event this waits on
                await asyncio.wait_for(self._ready.wait(), min(left, 0.2))
            except TimeoutError:
                pass

    async def _on_disconnected(self, _: Any) -> None:
        self._session_up = False
        self.inbox.drop_pending()
        await self.stop_sessions()

    async def stop_sessions(self) -> None:
        """Stop every group worker (the stream is gone; state is already stored)."""
        if self._upkeep is not None:
            self._upkeep.cancel()
            self._upkeep = None
        for session in list(self.sessions.values()):
            await session.stop()
        self.sessions.clear()
        self._ready.clear()

    async def _on_session_start(self, _: Any) -> None:
        self._session_up = True
        self._start_error = None
        try:
            await self.start()
        except MLSError as e:
            self._start_error = e
            self.error(MLSErrorEvent(f"start-up failed: {e}", error=e))

    async def start(self) -> None:
        """Set up identity, resume stored groups, publish KeyPackages."""
        if self._ready.is_set():
            return
        fresh = self.state_store.load_identity() is None and self.identity is None
        if self.identity is None:
            self.identity = self._load_identity()
        client = self.identity
        device = self.config["device"]
        if device:
            client.device_id = str(device).encode()
        self.keystore = KeyPackageStore(self.xmpp, client)
        if self.config["invitations"] != "any":
            await self._load_roster()
        from ..core.group.serialize import decode_group, decode_group_parts

        for record in self.state_store.load_groups():
            try:
                if record.ratchets is None:  # stored whole (by an earlier version)
                    group = decode_group(record.state, client.config,
                                         client.psk_lookup)
                else:
                    group = decode_group_parts(record.state, record.ratchets,
                                               client.config, client.psk_lookup)
            except MLSError as e:
                self.error(MLSErrorEvent(f"stored group unreadable: {e}", error=e))
                continue
            if not group.active:  # removed (or reinitialised) while we were away
                self.state_store.delete_group(record.group_id)
                continue
            client.groups[group.group_id] = group
            session = GroupSession(self, group, record.room, record.last_stanza_id)
            self.sessions[str(JID(record.room).bare)] = session
            if record.ratchets is None:
                self.persist(session)  # in two parts from now on
            try:
                await self.delivery.join_room(record.room, self.nick())
            except RoomRefused as e:
                if e.condition in ("registration-required", "forbidden"):
                    # affiliations follow membership: the room no longer has this
                    # account, i.e. it was removed while this device was away
                    self.group_removed(session)
                    continue
                self.error(MLSErrorEvent(f"resuming {record.room}: {e}", session, error=e))
            except TransportError as e:  # one room must not keep the device down
                self.error(MLSErrorEvent(f"resuming {record.room}: {e}", session, error=e))
            session.start()
        if self.config["publish_key_packages"]:
            # a failure is reported, not fatal: the groups work, and upkeep retries
            await self.renew_key_packages()
            self._upkeep = asyncio.ensure_future(self._upkeep_loop())
        self._ready.set()
        if not fresh:
            self.welcome_scan = asyncio.ensure_future(self._fetch_welcomes_reporting())
        if fresh and self.config["recover"]:
            # in the background: a slow or vanished room must not hold up the device
            asyncio.ensure_future(self.recover())
        self.xmpp.event("mls_ready", self)

    async def recover(self) -> list[GroupSession]:
        """Rejoin, by external Commit, every recorded group this device is not in.

        For a device whose state was lost: its old leaf (same account and
        device name) is removed in the same Commit (RFC 9750 §3.1.2).
        """
        async def one(room: str) -> GroupSession | None:
            try:
                return await self.rejoin(room)
            except NoGroupInfo as e:  # the room is gone or never held this group
                self.error(MLSErrorEvent(f"not rejoining {room}: {e}", error=e))
                await self.registry.remove(room)
            except MLSError as e:
                self.error(MLSErrorEvent(f"rejoining {room} failed: {e}", error=e))
            return None

        if self.identity is not None and self.identity.device_id is not None:
            try:
                await retract_stale_device_items(self, self.identity.device_id)
            except (MLSError, ValueError) as e:
                self.error(MLSErrorEvent(f"retracting stale KeyPackages failed: {e}", error=e))
        rooms = [r for r in await self.registry.rooms() if r not in self.sessions]
        # concurrently: a slow or vanished room must not hold up the others
        done = await asyncio.gather(*(one(r) for r in rooms))
        return [s for s in done if s is not None]

    async def rejoin(self, room: str, *, attempts: int = 3) -> GroupSession:
        """Rejoin one room's group from its latest GroupInfo (external Commit)."""
        assert self.identity is not None
        from ..core.messages.framing import MLSMessage

        await self.delivery.join_room(room, self.nick())
        last: Exception | None = None
        for _ in range(attempts):
            info, tree, stanza_id = await latest_group_info(self, room)
            resync = old_leaf(info, tree, self.bare_jid, self.identity.device_id)
            self.identity.groups.pop(info.group_context.group_id, None)
            group, commit = self.identity.join_external(MLSMessage(info).encode(),
                                                      ratchet_tree=tree, resync_leaf=resync)
            session = GroupSession(self, group, room, stanza_id,
                                   first_epoch=info.group_context.epoch + 1)
            session.expect_echo = commit
            self.sessions[room] = session
            session.start(catch_up=True)
            await self.delivery.send_room(room, Envelope(
                kind=Kind.COMMIT, group_id=group.group_id, epoch=info.group_context.epoch,
                mls_message=commit))
            try:
                ok = await asyncio.wait_for(session.echo_result,
                                            float(self.config["commit_timeout"]))
            except TimeoutError as e:
                last = TransportError(f"the room did not reflect the rejoin: {e}")
                ok = False
            if ok:
                await session.save()
                self.xmpp.event("mls_joined", session)
                await session.publish_group_info()
                return session
            await session.stop()
            del self.sessions[room]
            last = last or TransportError("another Commit came first; retrying")
        raise TransportError(f"could not rejoin {room}: {last}")

    async def _load_roster(self) -> None:
        """Request the roster at each session start: contacts decide who may invite.

        A server pushes roster changes only to a resource that requested the
        roster in its session (RFC 6121 §2.1.6), so without this new contacts
        would stay unknown. An application that requests it too costs one query.
        A failure is reported; meanwhile only this account's devices may invite.
        """
        if not isinstance(self.xmpp, ClientXMPP):
            return  # a component has no roster
        try:
            await self.xmpp.get_roster(timeout=10)
        except (IqError, IqTimeout) as e:
            self.error(MLSErrorEvent(f"reading the roster failed (contacts may not invite "
                                     f"until it is read): {e}", error=TransportError(str(e))))

    def is_mutual_contact(self, jid: str) -> bool:
        """Whether the bare ``jid`` is a roster contact with a mutual subscription ("both")."""
        roster = self.xmpp.client_roster
        if not roster.has_jid(jid):
            return False  # (looking it up with [] would add it)
        item = roster[jid]
        return bool(item["from"] and item["to"])

    def _load_identity(self) -> Client:
        """This device's identity from the store, or a new one (saved at once)."""
        from ..core.group.client_state import decode_client

        data = self.state_store.load_identity()
        if data is not None:
            try:
                client = decode_client(data, self._group_config())
            except MLSError as e:
                raise LocalUsageError(f"the stored identity is unreadable (wrong store or "
                                      f"store_key?): {e}") from e
            if client.credential.identity != self.bare_jid.encode():
                raise LocalUsageError("the stored identity belongs to another account")
            return client
        client = Client.generate(self.bare_jid.encode(), int(self.config["suite"]),
                                 config=self._group_config())
        self.identity = client
        self.save_identity()
        return client

    def save_identity(self) -> None:
        """Write the identity and its KeyPackage private keys (after every change)."""
        from ..core.group.client_state import encode_client

        if self.identity is not None:
            self.state_store.save_identity(encode_client(self.identity))

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until :meth:`start` finished (KeyPackages published, groups resumed)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    def nick(self) -> str:
        assert self.identity is not None
        return f"{self.xmpp.boundjid.user}-{self.identity.signature_public_key[:4].hex()}"

    # -- persistence and events -------------------------------------------------------

    def persist(self, session: GroupSession, parts: tuple[bytes, bytes] | None = None) -> None:
        """Write a group's whole state and archive position (after a handshake change).

        ``parts`` is ``encode_group_parts`` of the group as it is now, when the
        caller already has it (encoded in a worker thread for a large group).
        """
        from ..core.group.serialize import encode_group_parts

        if self.sessions.get(session.room) is not session:
            return  # left or removed: nothing of it is kept
        base, ratchets = parts if parts is not None else encode_group_parts(session.group)
        self.state_store.save_group(GroupRecord(session.group_id, session.room, base,
                                          session.last_stanza_id, ratchets))

    def persist_ratchets(self, session: GroupSession) -> None:
        """Write only the secret trees and the archive position.

        After an application message (sent or read), which changes nothing
        else: the write stays small however large the group's tree is.
        """
        from ..core.group.serialize import encode_ratchets

        if self.sessions.get(session.room) is not session:
            return
        self.state_store.save_ratchets(session.group_id, encode_ratchets(session.group),
                                 session.last_stanza_id)

    def persist_position(self, session: GroupSession) -> None:
        """Record only the archive position (an echo or a GroupInfo changed nothing else)."""
        if self.sessions.get(session.room) is not session:
            return
        self.state_store.save_position(session.group_id, session.last_stanza_id)

    def error(self, event: MLSErrorEvent) -> None:
        """Report dropped input or a failed operation as ``mls_error``."""
        log.info("mls_error: %s", event.reason)
        self.xmpp.event("mls_error", event)

    def group_removed(self, session: GroupSession, *, account_still_in: bool = False) -> None:
        """This device was removed from a group.

        The account's record of the room is dropped only when no other device
        of the account stays in the group.
        """
        session.removed = True
        self.xmpp.event("mls_removed", session)
        # its secrets are of no more use: forget the group (forward secrecy on disk)
        self.state_store.delete_group(session.group_id)
        self.sessions.pop(session.room, None)
        asyncio.ensure_future(session.stop())
        # out of the room too: an account that stays affiliated through another
        # device would otherwise keep this one an occupant, fed traffic it cannot read
        self.delivery.leave_room(session.room, self.nick())
        if not account_still_in:
            asyncio.ensure_future(self.registry.remove(session.room))

    async def record(self, session: GroupSession) -> None:
        try:
            await self.registry.add(session.room, session.group_id)
        except TransportError as e:
            self.error(MLSErrorEvent(f"recording the group failed: {e}", session, error=e))

    # -- the API -------------------------------------------------------------------------

    async def create_group(self, *, members: list[str] | None = None,
                           group_id: bytes | None = None,
                           key_packages: list[KeyPackage] | None = None) -> GroupSession:
        """Create an MLS group and its room, then add ``members`` (every device of each).

        The account's other devices (those with KeyPackages on its node) are
        added too: every device is its own leaf. ``key_packages`` adds devices
        whose KeyPackages the caller fetched already. Adding many members
        reports its stages as ``mls_progress`` events.

        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NoKeyPackageError: a member has no usable KeyPackage (checked
            before anything is created).
        :raises TransportError: the server refused the room, or did not answer.
        """
        await self.ensure_ready()
        assert self.identity is not None and self.keystore is not None
        members = [m for m in dict.fromkeys(members or []) if _bare(m) != self.bare_jid]
        progress = Progress(self, None, "add")
        wanted = list(key_packages or [])
        if members:
            devices = await fetch_devices(self, members, progress)
            wanted += [kp for kps in devices.values() for kp in kps]
        try:  # this account's other devices (exclude_own: not this one)
            wanted += [f.key_package for f in await self.keystore.fetch(self.bare_jid)]
        except TransportError as e:
            self.error(MLSErrorEvent(f"fetching this account's devices failed: {e}", error=e))
        group = self.identity.create_group(group_id or os.urandom(16))
        room = f"{group.group_id.hex()}@{self.muc_domain}"
        await self.delivery.create_room(room, self.nick())
        session = GroupSession(self, group, room)
        progress.group = session
        self.sessions[room] = session
        self.persist(session)
        session.start(catch_up=False)
        await self.record(session)
        unique = list({kp.leaf_node.signature_key: kp for kp in wanted}.values())
        if unique:
            await session.add_key_packages(unique, progress=progress)
        else:
            await session.publish_group_info()
        return session

    async def download(self, attachment: Attachment) -> bytes:
        """Fetch, check and decrypt a file a member shared (an ``Attachment`` of a message).

        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises TransportError: the download failed.
        :raises EnvelopeError: the file is not the one the sender described.
        """
        self.require_connected()
        return await download_attachment(self.delivery, attachment)

    def group(self, room_or_id: str | bytes) -> GroupSession:
        """A group of this device's by room JID or group ID.

        :raises UnknownGroupError: this device is in no such group (also a
            :class:`LookupError`).
        """
        if isinstance(room_or_id, bytes):
            for s in self.sessions.values():
                if s.group_id == room_or_id:
                    return s
            raise UnknownGroupError(f"this device is in no group with ID {room_or_id.hex()}")
        try:
            room = str(JID(room_or_id).bare)
        except InvalidJID:
            raise UnknownGroupError(f"not a room JID: {room_or_id!r}") from None
        session = self.sessions.get(room)
        if session is None:
            raise UnknownGroupError(f"this device is in no group with room {room}")
        return session

    @property
    def groups(self) -> list[GroupSession]:
        """Every group this device is in."""
        return list(self.sessions.values())

    # -- incoming stanzas -------------------------------------------------------------------

    async def _on_payload(self, msg: Any) -> None:
        """Route a stanza with an <mls/> payload; never raises."""
        try:
            if msg["type"] == "groupchat":
                room = str(msg["from"].bare)
                session = self.sessions.get(room)
                if session is None:
                    return  # a room we are not (or no longer) in
                session.feed(msg, self.delivery.room_stanza_id(msg, room))
                return
            if msg["type"] == "error":
                return
            await self.inbox.on_direct(msg)
        except Exception as e:  # noqa: BLE001 - hostile input must not kill the loop
            log.exception("payload handling failed")
            self.error(MLSErrorEvent(f"{type(e).__name__}: {e}", sender=str(msg["from"]),
                                     error=e))

    async def fetch_welcomes(self) -> list[GroupSession]:
        """Join the groups whose Welcome this device missed (see :meth:`.Inbox.fetch`)."""
        return await self.inbox.fetch()

    async def _fetch_welcomes_reporting(self) -> None:
        try:
            await self.fetch_welcomes()
        except MLSError as e:
            self.error(MLSErrorEvent(f"reading Welcomes from the archive failed: {e}", error=e))

    async def _upkeep_loop(self) -> None:
        """Renew KeyPackages now and then (expiring ones replaced, old keys forgotten)."""
        interval = float(self.config["upkeep_interval"])
        while True:
            await asyncio.sleep(interval)
            await self.renew_key_packages()

    async def renew_key_packages(self) -> None:
        """One KeyPackage upkeep round (:meth:`KeyPackageStore.renew`); errors are reported."""
        if self.keystore is None:
            return
        try:
            await self.keystore.renew(int(self.config["pool_size"]))
            self.save_identity()
        except MLSError as e:
            self.error(MLSErrorEvent(f"KeyPackage upkeep failed: {e}", error=e))


def _bare(jid: str) -> str:
    """The bare form of ``jid``; an invalid one as given (adding it reports the error)."""
    try:
        return str(JID(jid).bare)
    except InvalidJID:
        return jid


register_plugin(XEP_MLS)
