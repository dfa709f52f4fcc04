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
(:class:`MembershipEvent`), ``mls_joined`` (:class:`JoinedEvent`: ``group``, the
:class:`GroupSession` this device was welcomed or rejoined into),
``mls_removed``, ``mls_error`` (:class:`MLSErrorEvent`:
input dropped, group state unchanged; or a group suspended because its room
refused or dropped this account, its ``error`` a :class:`GroupSuspendedError`),
``mls_ready`` (KeyPackages published,
groups resumed), ``mls_progress`` (:class:`ProgressEvent`: the stages of adding
many members), ``mls_invitation`` (:class:`InvitationEvent`: someone who is not
a contact invites this device; with ``invitations="ask"``), ``mls_resynced``
(:class:`ResyncEvent`: this device had fallen behind its group and caught up again,
from the archive or by external Commit), ``mls_outbox`` (:class:`OutboxEvent`: a sent
message queued, sent, reflected by the room, or failed), ``mls_idle_removed``
(:class:`IdleRemovalEvent`: devices removed for not updating their keys, and why).

Post-compromise security by default (:mod:`.freshness`): each device updates its
keys soon after joining and after ``update_interval`` without an update; one admin
device removes devices idle for ``idle_timeout``; every kept secret has a time limit.

Who may put this device into a group (option ``invitations``): by default only
roster contacts with a mutual subscription and this account's own devices;
anyone else's Welcome is dropped and reported (:mod:`.invitations`).

A :class:`GroupSession` stays its group's handle for the life of the plugin:
across disconnections, reconnections and resumed streams (XEP-0198, used when
the server offers it) the same object resumes, reading the room archive it
missed; messages sent meanwhile wait in its outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID
from slixmpp.plugins import BasePlugin
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from ..core.errors import (
    LocalUsageError,
    MLSError,
    UnsupportedCipherSuiteError,
    UntrustedCredentialError,
    WrongGroupError,
)
from ..core.group.client import Client
from ..core.group.config import GroupConfig
from ..core.messages.common import CredentialType
from ..core.messages.credentials import Credential, credential_identity
from ..core.messages.key_package import KeyPackage
from ..core.messages.x509 import TrustAnchors
from ..storage import (
    GroupRecord,
    MemoryStore,
    OutboxRecord,
    SQLiteStore,
    StateStore,
    StorageError,
)
from ..workers import WorkerPool
from .attachments import download_attachment
from .blobs import jid_domain, room_server_domains
from .delivery import (
    ARCHIVE_MAX_PAGES,
    ARCHIVE_TIMEOUT,
    DEFAULT_PART_SIZE,
    MAX_BLOB,
    Delivery,
    RoomRefused,
)
from .devices import DeviceWatch
from .envelope import Attachment, Envelope, Kind
from .errors import (
    AuthenticationError,
    GroupSuspendedError,
    NotConnectedError,
    NotInGroupError,
    ServerFeatureError,
    TransportError,
    UnknownDeviceError,
    UnknownGroupError,
)
from .events import JoinedEvent, MLSErrorEvent
from .freshness import Freshness
from .healing import self_ping_rooms
from .inbox import Inbox
from .invitations import InvitationGate
from .keystore import KeyPackageStore
from .params import DEFAULT_PAD_TO, PARAMS_EXTENSION, params_extension
from .privacy import (
    GROUP_INFO_KEY_EXTENSION,
    group_info_key,
    group_info_key_extension,
    room_nick,
)
from .recovery import (
    GroupRegistry,
    NoGroupInfo,
    latest_group_info,
    old_leaf,
    retract_stale_device_items,
)
from .reinit import LINK_EXTENSION, ReInitFlow, negotiate
from .removal import apply_removal_notice
from .room import AFFILIATION_CODES, LOST_CODES
from .rules import DEFAULT_RULES, RULES_EXTENSION, GroupRules, mapping_config, rules_extension
from .session import MAX_ADDS_PER_COMMIT, GroupSession, Progress, fetch_devices, member_jid
from .stanza import NS, register_stanzas
from .suites import decode_identities, encode_identities, preference, suite_feature
from .trust import DeviceRecord, TrustChange, TrustStore, safety_number
from .trust import fingerprint as trust_fingerprint
from .writer import BURST, LAZY_DELAY, StoreWriter, wake_after_stream
from .x509 import load_trust_anchors, load_x509_credential

log = logging.getLogger(__name__)


class XEP_MLS(BasePlugin):  # noqa: N801 - slixmpp plugin naming
    """MLS (RFC 9420) groups: one MUC room each, KeyPackages on PEP."""

    name = "mls"
    description = "MLS groups over MUC (urn:mls-xmpp:0)"
    dependencies = {"xep_0004", "xep_0030", "xep_0045", "xep_0059", "xep_0060", "xep_0163",
                    "xep_0198", "xep_0313", "xep_0334", "xep_0359", "xep_0363", "xep_0380",
                    "xep_0410"}
    default_config = {
        "store": None,            # a StateStore or an SQLite file path; memory by default
        "store_key": None,        # 32 bytes: encrypt the SQLite store at rest
        "client": None,           # a core Client; generated from the JID by default
        "suite": 1,
        "suites": None,           # supported cipher suites, best first; default (suite,)
        "accept_downgrade": False,  # follow a ReInit to a suite ranked below the group's
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
        "rules": None,            # GroupRules of new groups; default: DEFAULT_RULES, creator admin
        "blind_trust": True,      # a device's first key is trusted until one is verified
        "refuse_send_to": None,   # None, "distrusted" or "unverified": devices send() refuses
        "workers": None,  # processes for large batches: None auto, 0 off, or a shared WorkerPool
        "blob_max_size": MAX_BLOB,  # bytes: the largest blob downloaded
        "blob_timeout": 60.0,  # seconds for one blob (tree, Commit by reference, file)
        "blob_message_timeout": 5.0,  # seconds an application message by reference may
                                      # hold up the room's order before it is dropped
        "blob_origins": (),  # more origins ("https://cdn.example.net") blobs come from
        "room_retry": 5.0,        # seconds before re-entering a room that refused or dropped us
        "room_retry_max": 300.0,  # the delay doubles up to this
        "archive_max_pages": ARCHIVE_MAX_PAGES,  # pages one archive read may take
        "archive_timeout": ARCHIVE_TIMEOUT,  # seconds one archive read may take
        "room_ping_interval": 300.0,  # seconds between XEP-0410 self-pings of each room
        "group_info_grace": 10.0,  # seconds a committer has to publish its GroupInfo
        "x509_trust_anchors": None,  # CA certificates (PEM bundle path, PEM/DER, list):
                                     # judge X.509 credentials; advertise x509 only with them
        "x509_credential": None,  # (certificates, private_key): this device's X.509 credential
        "invitations": "contacts",  # whose Welcomes are joined: "contacts", "any" or "ask"
        "invitation_limit": 20,     # Welcomes per inviter per hour (own account excepted)
        "invitation_timeout": 3600.0,  # seconds an "ask" invitation waits for a decision
        # post-compromise security and retention (mls_xmpp.xmpp.freshness)
        "clock": None,  # a callable: seconds since the Unix epoch (default time.time)
        "update_after_join": True,  # update soon after joining (always after a last resort)
        "update_join_delay": 30.0,  # the update after a join waits up to this (random)
        "update_join_spread": 1.0,  # ... or members x this, when longer (turns, leaf order)
        "update_interval": 7 * 86400.0,  # seconds without an update before one is sent
        "idle_timeout": 90 * 86400.0,  # seconds without an update before removal; 0: never
        "freshness_interval": 3600.0,  # seconds between checks of the above
        "past_epoch_lifetime": 86400.0,  # seconds a past epoch's keys are kept at most
        "retired_key_lifetime": 86400.0,  # seconds a retired last resort's keys are kept
        "device_list": True,  # announce this device on the account's device list; add the
                              # new devices (and remove the unlisted ones) of member accounts
        "device_add_delay": 5.0,  # seconds each fallback adder waits after the one before
        "pad_envelopes": True,  # pad every envelope sent to a size bucket
        "recovery_key": None,  # bytes the application keeps: seals the GroupInfo keys in
                               # the account's registry (else the server can read them)
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
        #: every write and read of group state, in order; the hot path's writes off
        #: the event loop (:mod:`.writer`)
        self.writer = StoreWriter(self.state_store)
        self.sessions: dict[str, GroupSession] = {}
        workers = cfg["workers"]  # a WorkerPool given by the application stays its own
        self._workers_pool = workers if isinstance(workers, WorkerPool) else WorkerPool(workers)
        self._owns_workers_pool = self._workers_pool is not workers
        #: this device's MLS identity, the core ``Client`` (config ``client``, or
        #: loaded from the store or generated by :meth:`start`)
        self.identity: Client | None = cfg["client"]
        if self.identity is not None:
            self.identity.config = self._workers_pool.attach(self.identity.config)
        self.delivery = Delivery(self.xmpp, cfg, part_size=int(cfg["upload_part_size"]))
        recovery_key = cfg["recovery_key"]  # a passphrase given as text is its UTF-8
        self.registry = GroupRegistry(self.xmpp, recovery_key=(
            recovery_key.encode() if isinstance(recovery_key, str) else recovery_key))
        self.keystore: KeyPackageStore | None = None
        #: this device's identity per cipher suite it supports (option ``suites``;
        #: :mod:`.suites`), :attr:`identity` among them; they share one group table
        self.identities: dict[int, Client] = {}
        #: the KeyPackage store of each suite's identity (:attr:`keystore` among them)
        self.keystores: dict[int, KeyPackageStore] = {}
        #: the suites this device supports, best first (option ``suites``)
        self.suite_order: tuple[int, ...] = ()
        #: groups moving to a new suite or version by ReInit (:mod:`.reinit`)
        self.reinit = ReInitFlow(self)
        self._ready = asyncio.Event()
        #: True between ``session_start`` and ``disconnected``
        self._session_up = False
        #: why :meth:`start` failed, until the next session start
        self._start_error: MLSError | None = None
        #: why there is no stream (authentication refused, server unreachable),
        #: until the next session start
        self._link_error: NotConnectedError | None = None
        #: :meth:`start` has finished once (later streams resume what it set up)
        self._started = False
        #: counts the XMPP streams (a resumed one is the same stream): what was handed
        #: to an earlier one and not acknowledged may be lost
        self.stream = 0
        self.inbox = Inbox(self, InvitationGate(
            str(cfg["invitations"]), int(cfg["invitation_limit"]),
            own_jid=lambda: self.bare_jid, is_contact=self.is_mutual_contact))
        #: the X.509 trust anchors others' certificates are judged by (config
        #: ``x509_trust_anchors``); ``None``: this device does not accept x509
        self.x509_anchors: TrustAnchors | None = load_trust_anchors(cfg["x509_trust_anchors"])
        #: this account's device trust store (config ``blind_trust``), kept in the state store
        self.trust = TrustStore(self.state_store, blind_trust=bool(cfg["blind_trust"]))
        #: automatic updates, idle-device removal, retention bounds (:mod:`.freshness`)
        self.freshness = Freshness(self)
        self._upkeep: asyncio.Future[None] | None = None
        #: the XEP-0410 self-pings of every group's room (a silent drop suspends the group)
        self._room_pings: asyncio.Future[None] | None = None
        #: the read of missed Welcomes from the account's archive, started by :meth:`start`
        self.welcome_scan: asyncio.Future[None] | None = None
        self.xmpp.register_handler(Callback(
            "mls payload", MatchXPath(f"{{{self.xmpp.default_ns}}}message/{{{NS}}}mls"),
            self._on_payload))
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        self.xmpp.add_event_handler("session_resumed", self._on_session_resumed)
        self.xmpp.add_event_handler("disconnected", self._on_disconnected)
        self.xmpp.add_event_handler("failed_all_auth", self._on_auth_failed)
        self.xmpp.add_event_handler("connection_failed", self._on_connection_failed)
        self.xmpp.add_event_handler("connected", self._on_connected)
        self.xmpp.add_event_handler("groupchat_presence", self._on_room_presence)
        #: the device lists of this account and of its groups' accounts (:mod:`.devices`)
        self.device_watch = DeviceWatch(self)
        self.device_watch.register()
        self.xmpp.add_event_handler("mls_membership", self._watch_devices)
        self.xmpp.add_event_handler("mls_joined", self._watch_devices)

    def plugin_end(self) -> None:
        self.inbox.drop_pending()
        self.freshness.stop()
        self.device_watch.unregister()
        self.xmpp.del_event_handler("mls_membership", self._watch_devices)
        self.xmpp.del_event_handler("mls_joined", self._watch_devices)
        self.xmpp.remove_handler("mls payload")
        self.xmpp.del_event_handler("groupchat_presence", self._on_room_presence)
        self.xmpp.del_event_handler("session_start", self._on_session_start)
        self.xmpp.del_event_handler("session_resumed", self._on_session_resumed)
        self.xmpp.del_event_handler("disconnected", self._on_disconnected)
        self.xmpp.del_event_handler("failed_all_auth", self._on_auth_failed)
        self.xmpp.del_event_handler("connection_failed", self._on_connection_failed)
        self.xmpp.del_event_handler("connected", self._on_connected)
        self.xmpp.plugin["xep_0030"].del_feature(feature=NS)
        for suite in self.suite_order:
            self.xmpp.plugin["xep_0030"].del_feature(feature=suite_feature(suite))
        for session in list(self.sessions.values()):
            asyncio.ensure_future(session.stop())
        self.writer.close()
        if self._owns_workers_pool:
            self._workers_pool.shutdown()

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
        return self._workers_pool.attach(
            mapping_config(cfg if isinstance(cfg, GroupConfig) else GroupConfig()))

    # -- connection state ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the XMPP session is up (connected, authenticated, session started)."""
        return self._session_up and self.xmpp.is_connected()

    def require_connected(self) -> None:
        """Raise :class:`NotConnectedError` at once when there is no XMPP session.

        After a refused login it is an :class:`AuthenticationError`; after a
        failed connection attempt its message says why (e.g. connection refused).
        """
        if self._link_error is not None and not self._session_up:
            raise self._link_error
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
                if isinstance(self._start_error, NotConnectedError):
                    raise self._start_error
                raise NotConnectedError(f"the plugin failed to start: {self._start_error}"
                                        ) from self._start_error
            if self._link_error is not None and not self._session_up:
                raise self._link_error
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
        """Stop every group's worker (the stream is gone; state is already stored).

        The :class:`GroupSession` objects stay: the next stream resumes them
        (:meth:`start`), so the application's handles stay valid.
        """
        if self._upkeep is not None:
            self._upkeep.cancel()
            self._upkeep = None
        if self._room_pings is not None:
            self._room_pings.cancel()
            self._room_pings = None
        self.freshness.stop()
        self._ready.clear()
        for session in list(self.sessions.values()):
            await session.pause()
        self.writer.drain()  # what the sessions wrote last is in the store

    def _on_connected(self, _: Any) -> None:
        self._link_error = None  # a new attempt: its own outcome decides

    def _on_auth_failed(self, _: Any) -> None:
        err = AuthenticationError(f"the server refused the credentials of {self.bare_jid} "
                                  "(wrong password, or no such account)")
        self._link_error = err
        self.error(MLSErrorEvent(str(err), error=err))

    def _on_connection_failed(self, reason: Any) -> None:
        if self._session_up:
            return
        err = NotConnectedError(f"cannot reach the XMPP server of {self.xmpp.boundjid.domain}: "
                                f"{reason or 'connection failed'}")
        self._link_error = err
        self.error(MLSErrorEvent(str(err), error=err))

    def _watch_devices(self, _: Any) -> None:
        """Follow the device lists of the accounts of this device's groups (new ones too)."""
        if self._started and self.connected:
            self.device_watch.watch_groups()

    async def _on_session_start(self, _: Any) -> None:
        self.device_watch.stream_started()
        self.stream += 1
        self._session_up = True
        self._start_error = None
        self._link_error = None
        try:
            await self.start()
        except MLSError as e:
            self._start_error = e
            self.error(MLSErrorEvent(f"start-up failed: {e}", error=e))

    async def _on_session_resumed(self, _: Any) -> None:
        """The stream was resumed (XEP-0198): the server kept the session, its rooms and
        what it could not deliver; the groups go on where they stopped, without
        re-entering rooms or restarting anything."""
        self._session_up = True
        self._link_error = None
        if not self._started:
            await self._on_session_start(None)  # start-up had not finished
            return
        for session in list(self.sessions.values()):
            if session.removed:
                continue
            if session.suspended is not None:
                session.room_retry = asyncio.ensure_future(self._retry_room(session))
            else:
                session.resume()
        if self.config["publish_key_packages"] and self._upkeep is None:
            self._upkeep = asyncio.ensure_future(self._upkeep_loop())
        self.freshness.start()
        self._ready.set()
        self.xmpp.event("mls_ready", self)

    async def start(self) -> None:
        """Set up identity, resume stored groups, publish KeyPackages."""
        if self._ready.is_set():
            return
        fresh = self.state_store.load_identity() is None and self.identity is None
        if self.identity is None:
            self.identity = self._load_identity()
        client = self.identity
        # the mapping's rules bind every group of this device, whatever config it came with
        client.config = self._workers_pool.attach(mapping_config(client.config))
        client.supported_extensions = tuple(dict.fromkeys(
            (*client.supported_extensions, RULES_EXTENSION, PARAMS_EXTENSION,
             GROUP_INFO_KEY_EXTENSION)))
        # x509 is advertised only with anchors to judge certificates by (RFC 9420 §7.3
        # then keeps x509 leaves out of every group this device's leaf is in)
        client.supported_credentials = (
            (CredentialType.X509,) if self.x509_anchors is not None else ())
        device = self.config["device"]
        if device:
            client.device_id = str(device).encode()
        self._setup_suites(client)
        if self.config["invitations"] != "any":
            await self._load_roster()
        from ..core.group.serialize import decode_group, decode_group_parts

        def unreadable(group_id: bytes, room: str, e: MLSError) -> None:
            # only that group is unavailable; the device starts with the others
            self.error(MLSErrorEvent(f"stored group {room or group_id.hex()} is unreadable "
                                     f"and stays unavailable: {e}", error=e))

        await self.check_server()
        resumed = [s for s in self.sessions.values() if not s.removed]
        for record in self.writer.store.load_groups(on_error=unreadable):
            if str(JID(record.room).bare) in self.sessions:
                continue  # this process has it already: the same object goes on
            try:
                if record.ratchets is None:  # stored whole (by an earlier version)
                    group = decode_group(record.state, client.config,
                                         client.psk_lookup)
                else:
                    group = decode_group_parts(record.state, record.ratchets,
                                               client.config, client.psk_lookup)
            except MLSError as e:
                unreadable(record.group_id, record.room, e)
                continue
            if group.state.reinit is not None and group.state.active:
                # closed by a ReInit: kept (its PSK opens the successor's Welcome)
                client.groups[group.group_id] = group
                self.reinit.restore(group, record)
                continue
            if not group.active:  # removed while we were away
                self.writer.store.delete_group(record.group_id)
                continue
            client.groups[group.group_id] = group
            session = GroupSession(self, group, record.room, record.last_stanza_id)
            self.sessions[str(JID(record.room).bare)] = session
            if record.ratchets is None:
                self.persist(session)  # in two parts from now on
            await self._enter(session)
        for session in resumed:  # kept from an earlier stream: the handles stay valid
            session.suspended = None
            await self._enter(session)
        if self.config["publish_key_packages"]:
            # a failure is reported, not fatal: the groups work, and upkeep retries
            await self.renew_key_packages()
            self._upkeep = asyncio.ensure_future(self._upkeep_loop())
        rejoining = fresh and bool(self.config["recover"])
        if self.config["device_list"] and not rejoining:
            asyncio.ensure_future(self._devices_up())
        interval = float(self.config["room_ping_interval"] or 0)
        if interval > 0 and self._room_pings is None:
            self._room_pings = asyncio.ensure_future(self_ping_rooms(self, interval))
        self._started = True
        self.freshness.start()
        self._ready.set()
        if not fresh:
            self.welcome_scan = asyncio.ensure_future(self._fetch_welcomes_reporting())
        if rejoining:
            # in the background: a slow or vanished room must not hold up the device
            asyncio.ensure_future(self._recover_then_announce())
        self.xmpp.event("mls_ready", self)

    async def _recover_then_announce(self) -> None:
        """A fresh device rejoins the account's groups first, then goes on the device
        list: members would otherwise add it while it joins by external Commit."""
        try:
            await self.recover()
        except MLSError as e:  # the registry could not be read (a timeout, a cut): said
            self.error(MLSErrorEvent(f"recovering this account's groups failed: {e}; call "
                                     f"recover() again", error=e))
        finally:
            if self.config["device_list"] and self.connected:
                await self._devices_up()

    async def _devices_up(self) -> None:
        """Announce this device (after its KeyPackages) and follow the groups' accounts."""
        if self.config["publish_key_packages"]:
            await self.device_watch.announce()
        self.device_watch.watch_groups()

    async def unlink_device(self, fingerprint: str) -> bool:
        """Take a device of this account off its device list (a lost or retired phone);
        members then remove it from every group it shares with them (:mod:`.devices`).

        :raises NotConnectedError: there is no XMPP session (raised at once).
        :returns: whether the device was listed.
        """
        self.require_connected()
        return await self.device_watch.unlink(fingerprint)

    async def _enter(self, session: GroupSession) -> None:
        """Enter a group's room and start its worker (reading the archive it missed)."""
        try:
            await self.delivery.join_room(session.room, self.nick(session.room))
        except TransportError as e:
            # The room is not the group: a refusal (registration-required,
            # forbidden, not-authorized) or no answer suspends the group; only a
            # Commit that removes this device ends it. One room must not keep
            # the device down either.
            why = (f"the room refused this account ({e.condition})"
                   if isinstance(e, RoomRefused) else f"the room did not take us: {e}")
            self.suspend(session, why, e)
            return
        session.start()

    async def check_server(self) -> None:
        """Check that the server has what groups need: a MUC service whose rooms are
        archived (XEP-0045, XEP-0313) and, to publish KeyPackages, PEP (XEP-0163).

        :raises ServerFeatureError: one is missing (the message says which).
        :raises TransportError: the server did not answer.
        """
        from slixmpp.exceptions import IqError, IqTimeout

        disco = self.xmpp.plugin["xep_0030"]

        async def features(jid: str) -> tuple[set[str], set[tuple[str, str]]]:
            try:
                info = await disco.get_info(jid=JID(jid), timeout=self.delivery.timeout)
            except IqError as e:
                raise ServerFeatureError(
                    f"the MUC service {jid} is not there ({e.condition}): set the "
                    "muc_domain option to the server's MUC service", "muc") from e
            except IqTimeout as e:
                raise TransportError(f"{jid} did not answer a disco#info query") from e
            query = info["disco_info"]
            return (set(query["features"]),
                    {(str(i[0]), str(i[1])) for i in query["identities"]})

        muc_features, muc_identities = await features(self.muc_domain)
        if "http://jabber.org/protocol/muc" not in muc_features and not any(
                c == "conference" for c, _ in muc_identities):
            raise ServerFeatureError(f"{self.muc_domain} is not a MUC service (XEP-0045): set "
                                     "the muc_domain option", "http://jabber.org/protocol/muc")
        if not muc_features & {"urn:xmpp:mam:2", "urn:xmpp:mam:1"}:
            raise ServerFeatureError(
                f"the rooms of {self.muc_domain} are not archived (no XEP-0313 MAM): groups "
                "need the room archive to catch up (Prosody: muc_mam)", "urn:xmpp:mam:2")
        if self.config["publish_key_packages"]:
            _, identities = await features(self.bare_jid)
            if ("pubsub", "pep") not in identities:
                raise ServerFeatureError(
                    f"the server of {self.bare_jid} has no PEP (XEP-0163): KeyPackages cannot "
                    "be published (Prosody: mod_pep)", "pep")

    async def recover(self) -> list[GroupSession]:
        """Rejoin, by external Commit, every recorded group this device is not in.

        For a device whose state was lost: its old leaf (same account and
        device name) is removed in the same Commit (RFC 9750 §3.1.2). Each
        room's group must be the one the registry recorded for it. Without a
        device name (option ``device``) nothing is rejoined and that is
        reported: the old leaf could not be told from the account's other devices.
        """
        async def one(room: str, group_id: bytes | None,
                      key: bytes | None) -> GroupSession | None:
            try:
                return await self.rejoin(room, group_id=group_id, group_info_key=key)
            except NoGroupInfo as e:  # the room is gone or never held this group
                self.error(MLSErrorEvent(f"not rejoining {room}: {e}", error=e))
                await self.registry.remove(room)
            except MLSError as e:
                self.error(MLSErrorEvent(f"rejoining {room} failed: {e}", error=e))
            return None

        device_id = None if self.identity is None else self.identity.device_id
        if device_id is not None:
            try:
                await retract_stale_device_items(self, device_id)
            except (MLSError, ValueError) as e:
                self.error(MLSErrorEvent(f"retracting stale KeyPackages failed: {e}", error=e))
        entries = {r: g for r, g in (await self.registry.records()).items()
                   if r not in self.sessions}
        if entries and device_id is None:
            err = LocalUsageError(_NO_DEVICE)
            self.error(MLSErrorEvent(f"not recovering {len(entries)} group(s) of this "
                                     f"account: {err}", error=err))
            return []
        # concurrently: a slow or vanished room must not hold up the others
        done = await asyncio.gather(*(one(r, g, k) for r, (g, k) in entries.items()))
        return [s for s in done if s is not None]

    async def rejoin(self, room: str, *, group_id: bytes | None = None,
                     group_info_key: bytes | None = None, attempts: int = 3) -> GroupSession:
        """Rejoin one room's group from its latest GroupInfo (external Commit).

        ``group_id`` is the group the account's registry recorded for the room
        (read from the registry when not given, with ``group_info_key``, the key
        that opens the room's sealed GroupInfos); a GroupInfo of any other group
        is never joined.

        :raises LocalUsageError: no device name is configured (option ``device``).
        :raises WrongGroupError: the room holds no GroupInfo of that group
            (only of others), or the registry recorded none for the room.
        :raises NoGroupInfo: the room holds no GroupInfo at all.
        :raises TransportError: the room did not take the rejoin.
        """
        assert self.identity is not None
        from ..core.messages.framing import MLSMessage

        if self.identity.device_id is None:
            raise LocalUsageError(_NO_DEVICE)
        if group_id is None:
            group_id, group_info_key = (await self.registry.records()).get(room, (None, None))
            if group_id is None:
                raise WrongGroupError(f"this account's group registry records no group_id "
                                      f"for {room}: not rejoining")
        await self.delivery.join_room(room, self.nick(room))
        last: Exception | None = None
        for _ in range(attempts):
            try:
                info, tree, stanza_id = await latest_group_info(self, room, group_id,
                                                                group_info_key)
            except MLSError:
                self.delivery.leave_room(room, self.nick(room))
                raise
            if info.group_context.group_id != group_id:  # latest_group_info filtered it
                self.delivery.leave_room(room, self.nick(room))
                raise WrongGroupError(f"{room}'s GroupInfo names another group than the "
                                      "registry's: not rejoining")
            resync = old_leaf(info, tree, self.bare_jid, self.identity.device_id)
            self.identity.groups.pop(info.group_context.group_id, None)
            client = self.client_for(info.group_context.cipher_suite)
            group, commit = client.join_external(MLSMessage(info).encode(),
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
                self.freshness.created(session)  # a new leaf: its keys are fresh
                self.xmpp.event("mls_joined", JoinedEvent(session, "external commit"))
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
        data = self.state_store.load_identity()
        if data is not None:
            try:
                client, *others = decode_identities(data, self._group_config())
            except MLSError as e:
                raise LocalUsageError(f"the stored identity is unreadable (wrong store or "
                                      f"store_key?): {e}") from e
            if any(credential_identity(c.credential) != self.bare_jid.encode()
                   for c in (client, *others)):
                raise LocalUsageError("the stored identity belongs to another account")
            self.identities = {c.suite_id: c for c in others}
            x509 = self._x509_credential(client.suite_id)
            if x509 is not None and x509[0] != client.credential:
                if x509[1] != client.signature_private_key:
                    raise LocalUsageError("x509_credential has another key than this device's "
                                          "stored identity: use a certificate for its key")
                client.credential = x509[0]  # a renewed certificate, or basic -> x509
                self.identity = client
                self.save_identity()
            return client
        suite = int(self.config["suite"])
        x509 = self._x509_credential(suite)
        if x509 is not None:
            client = Client(x509[0], suite, x509[1], self._group_config())
        else:
            client = Client.generate(self.bare_jid.encode(), suite, config=self._group_config())
        self.identity = client
        self.save_identity()
        return client

    def _x509_credential(self, suite_id: int) -> tuple[Credential, bytes] | None:
        """The ``x509_credential`` option, checked against this account and suite."""
        value = self.config["x509_credential"]
        return None if value is None else load_x509_credential(value, suite_id, self.bare_jid)

    def authenticate(self, credential: Credential) -> None:
        """Judge a member's credential by this device's trust anchors (local only).

        A basic credential passes (it is judged by fingerprints, :mod:`.trust`);
        an X.509 one must lead to an anchor at the current time.

        :raises UntrustedCredentialError: it does not, or there are no anchors.
        :raises CredentialError: the chain fails the structural checks.
        """
        if credential.credential_type != CredentialType.X509:
            return
        if self.x509_anchors is None:
            raise UntrustedCredentialError("an X.509 credential, and this device has no trust "
                                           "anchors (x509_trust_anchors) to judge it by")
        clock = (self.identity.config if self.identity is not None
                 else self._group_config()).clock
        self.x509_anchors.verify(credential.certificates, clock())

    def save_identity(self) -> None:
        """Write the identity and its KeyPackage private keys (after every change)."""
        if self.identity is not None:
            others = [c for s, c in self.identities.items() if s != self.identity.suite_id]
            self.state_store.save_identity(encode_identities([self.identity, *others]))

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until :meth:`start` finished (KeyPackages published, groups resumed)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    def nick(self, room: str) -> str:
        """This device's nick in ``room``: opaque, the same on every start, different in
        every room (:func:`.privacy.room_nick`; it reveals no key)."""
        assert self.identity is not None
        return room_nick(self.identity.signature_private_key, _bare(room))

    # -- persistence and events -------------------------------------------------------

    # Every write of a group goes through _write: a failed one rolls the group back to
    # its stored state and suspends it (docs/PROTOCOL.md §13), so a later small write
    # can never mix the ratchets of one epoch with the base of another.

    def persist(self, session: GroupSession, parts: tuple[bytes, bytes] | None = None) -> None:
        """Write a group's whole state and archive position (after a handshake change).

        ``parts`` is ``encode_group_parts`` of the group as it is now, when the
        caller already has it (encoded in a worker thread for a large group).

        :raises StorageError: the write failed; the group is rolled back to its
            stored state and suspended (:meth:`storage_failed`).
        """
        if not self._writable(session):
            return  # left or removed: nothing of it is kept
        self._write(session, self.writer.store.save_group, self._record(session, parts))

    @staticmethod
    def _record(session: GroupSession, parts: tuple[bytes, bytes] | None = None
                ) -> GroupRecord:
        """What the store keeps of a group now (``parts``: its state, already encoded)."""
        from ..core.group.serialize import encode_group_parts

        base, ratchets = parts if parts is not None else encode_group_parts(session.group)
        return GroupRecord(session.group_id, session.room, base, session.stored_position,
                           ratchets)

    async def persist_off_loop(self, session: GroupSession,
                               parts: tuple[bytes, bytes]) -> None:
        """:meth:`persist` of a large group's encoded state, written in a worker thread
        when the store can be used from one (``thread_safe``, as :class:`SQLiteStore`),
        so that the event loop goes on meanwhile. The caller holds the group's lock."""
        if not self._writable(session):
            return
        if not self.writer.threaded:
            self.persist(session, parts)
            return
        record = self._record(session, parts)
        gid, deletes = session.group_id, list(session.unsaved.deletes)

        def job(store: StateStore) -> None:
            store.save_group(record)
            for seq in deletes:
                store.delete_outbox(gid, seq)
        session.unsaved.clear()
        try:
            await self.writer.submit(gid, job)
        except StorageError as e:
            self.storage_failed(session, e)
            raise

    def persist_ratchets(self, session: GroupSession,
                         outbox: OutboxRecord | None = None) -> bool:
        """Write only the secret trees and the archive position.

        After an application message (sent or read), which changes nothing
        else: the write stays small however large the group's tree is.
        ``outbox``: the outbox entry of the message just encrypted, marked
        ``sent``, written in the same transaction. Whether anything was written.
        """
        from ..core.group.serialize import encode_ratchets

        if not self._writable(session):
            return False
        ratchets = encode_ratchets(session.group)
        if outbox is None:
            self._write(session, self.writer.store.save_ratchets, session.group_id,
                        ratchets, session.stored_position)
            return True

        def both() -> None:
            self.writer.store.save_ratchets(session.group_id, ratchets,
                                            session.stored_position)
            self.writer.store.save_outbox(outbox)
        self._write(session, both)
        return True

    def store_transaction(self) -> contextlib.AbstractContextManager[None]:
        """The store's ``transaction()`` (the writes of the block in one commit), or
        nothing for a store without one (each write its own)."""
        return self.writer.store.transaction()

    def persist_position(self, session: GroupSession) -> None:
        """Record only the archive position (an echo or a GroupInfo changed nothing else);
        with the ratchets if messages read since the last write moved them."""
        if not self._writable(session):
            return
        if session.unsaved.ratchets:
            self.persist_ratchets(session)
            return
        self._write(session, self.writer.store.save_position, session.group_id,
                    session.stored_position)

    def persist_later(self, session: GroupSession, *, lazy: bool = False
                      ) -> asyncio.Future[None] | None:
        """Submit what the group changed since its last write (:attr:`GroupSession.unsaved`:
        ratchets moved by messages read, the position, echoes' outbox entries) as one
        write off the event loop (:mod:`.writer`), after every write submitted before.
        A failure rolls the group back and suspends it (:meth:`storage_failed`).
        The write's future (``None``: nothing submitted now).

        ``lazy`` (the end of a burst): when only echoes of this device's own
        messages moved the position (no ratchet changed), the write waits for
        the group's next one (e.g. the next message's outbox entry) or
        :data:`~.writer.LAZY_DELAY` seconds: a crash meanwhile reads those echoes
        again from the archive, which ends their entries as before.
        """
        unsaved = session.unsaved
        if not unsaved or not self._writable(session):
            return None
        if lazy and not unsaved.ratchets and unsaved.messages < BURST:
            if session.lazy_write is None:
                session.lazy_write = asyncio.get_running_loop().call_later(
                    LAZY_DELAY, self._lazy_write, session)
            return None
        return self._watched(session, self.writer.submit(session.group_id,
                                                         self._unsaved_job(session)))

    def _lazy_write(self, session: GroupSession) -> None:
        session.lazy_write = None
        self.persist_later(session)

    def _unsaved_job(self, session: GroupSession) -> Callable[[StateStore], None]:
        """The write of what is unsaved, encoded now (nothing, if nothing is)."""
        from ..core.group.serialize import encode_ratchets

        unsaved = session.unsaved
        if session.lazy_write is not None:
            session.lazy_write.cancel()
            session.lazy_write = None
        if not unsaved:
            return lambda store: None
        gid, position = session.group_id, session.stored_position
        ratchets = encode_ratchets(session.group) if unsaved.ratchets else None
        deletes = list(unsaved.deletes)
        unsaved.clear()

        def job(store: StateStore) -> None:
            if ratchets is not None:
                store.save_ratchets(gid, ratchets, position)
            else:
                store.save_position(gid, position)
            for seq in deletes:
                store.delete_outbox(gid, seq)
        return job

    def store_sent_later(self, session: GroupSession,
                         record: OutboxRecord) -> asyncio.Future[None]:
        """Submit the ``sent`` mark of an outbox entry that was not stored yet (its
        stanza has left: see :meth:`Outbox.flush <.outbox.Outbox.flush>`), with what
        the group has unsaved, in one transaction; the future ends once it committed.
        A failure suspends the group like any failed write."""
        if not self._writable(session):  # left or removed: nothing of it is kept
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        unsaved = self._unsaved_job(session)

        def job(store: StateStore) -> None:
            store.save_outbox(record)
            unsaved(store)
        # the thread is woken once the stream wrote the stanza (.writer, wake=False)
        future = self.writer.submit(session.group_id, job, wake=False)
        wake_after_stream(self.xmpp, self.writer)
        return self._watched(session, future)

    def _watched(self, session: GroupSession,
                 future: asyncio.Future[None]) -> asyncio.Future[None]:
        """``future``, whose failure rolls the group back and suspends it (under the
        group's lock: not in the middle of a change)."""
        def done(f: asyncio.Future[None]) -> None:
            if f.cancelled():
                return
            error = f.exception()
            if isinstance(error, StorageError):
                asyncio.ensure_future(self._deferred_failed(session, error))
        future.add_done_callback(done)
        return future

    async def _deferred_failed(self, session: GroupSession, error: StorageError) -> None:
        async with session.group_lock:
            self.storage_failed(session, error)

    def _writable(self, session: GroupSession) -> bool:
        """Whether the group's state is written: it is this device's live session, and
        not stopped by a failed write (nothing more is written until it is retried)."""
        return (self.sessions.get(session.room) is session
                and not (session.suspended or "").startswith(_STORAGE))

    def _write(self, session: GroupSession, fn: Any, *args: Any) -> None:
        """``fn(*args)`` writes the group's ratchets (or whole state) and position; the
        outbox deletions of echoes read since the last write go in its transaction."""
        deletes = session.unsaved.deletes
        try:
            if deletes:
                with self.store_transaction():
                    fn(*args)
                    for seq in deletes:
                        self.writer.store.delete_outbox(session.group_id, seq)
            else:
                fn(*args)
        except StorageError as e:
            self.storage_failed(session, e)
            raise
        session.unsaved.clear()

    def storage_failed(self, session: GroupSession, error: StorageError) -> None:
        """A write of the group failed: roll it back to its stored state, suspend it.

        The group in memory is replaced by the one last stored (its epoch, its
        ratchets, its archive position), the worker stops, and API calls raise
        :class:`GroupSuspendedError`. The write is tried again after
        ``room_retry`` seconds (doubling up to ``room_retry_max``); then the
        group reads the room archive from its stored position and catches up.
        The device and its other groups go on.
        """
        if (session.suspended or "").startswith(_STORAGE):
            return
        stored = self._stored(session.group_id)
        if stored is not None:
            group, position = stored
            assert self.identity is not None
            self.identity.groups[group.group_id] = group
            session.rolled_back(group, position)
        log.warning("writing the group of %s failed (%s): rolled back to epoch %d",
                    session.room, error, session.epoch)
        self.suspend(session, f"{_STORAGE}{error}", error, retry=self._retry_store)

    def _stored(self, group_id: bytes) -> tuple[Any, str | None] | None:
        """The group as last stored, and its archive position (``None``: not stored,
        or unreadable now)."""
        from ..core.group.serialize import decode_group, decode_group_parts

        assert self.identity is not None
        config, psks = self.identity.config, self.identity.psk_lookup
        try:
            for record in self.writer.store.load_groups(on_error=lambda *_: None):
                if record.group_id == group_id:
                    group = (decode_group(record.state, config, psks) if record.ratchets is None
                             else decode_group_parts(record.state, record.ratchets, config,
                                                     psks))
                    return group, record.last_stanza_id
        except MLSError as e:
            log.warning("the stored group %s cannot be read back: %s", group_id.hex(), e)
        return None

    async def _retry_store(self, session: GroupSession) -> None:
        """Write the (rolled back) group again until the store takes it, then resume."""
        async def attempt() -> str | None:
            try:
                async with session.group_lock:  # the rolled back state, as it is now
                    self.writer.clear(session.group_id)  # written whole: writes go on
                    self.writer.store.save_group(self._record(session))
            except StorageError as e:
                return f"the store still fails for {session.room} ({e})"
            return None

        await self._retry_suspended(session, attempt, "the store takes it again")

    async def _retry_suspended(self, session: GroupSession,
                               attempt: Callable[[], Awaitable[str | None]],
                               success: str) -> None:
        """Call ``attempt`` after ``room_retry`` seconds, the delay doubling up to
        ``room_retry_max``, until it returns ``None`` (done: the suspended group resumes
        and reads the archive after its stored position) or the group is gone. It
        returns why it failed otherwise."""
        delay = float(self.config["room_retry"])
        ceiling = float(self.config["room_retry_max"])
        await session.stop_worker()
        while True:
            await asyncio.sleep(delay)
            if self.sessions.get(session.room) is not session or session.removed:
                return
            failure = await attempt()
            if session.removed:
                return  # the attempt ended the group (a removal notice)
            if failure is not None:
                delay = min(delay * 2, ceiling)
                log.info("%s; next try in %.0f s", failure, delay)
                continue
            log.info("%s: %s: the group resumes", session.room, success)
            session.suspended = None
            session.start(catch_up=True)
            return

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
        session.drop_outbox(NotInGroupError(
            f"this device was removed from the group of {session.room} before the message "
            "was sent"))
        self.xmpp.event("mls_removed", session)
        # its secrets are of no more use: forget the group (forward secrecy on disk)
        self.writer.store.delete_group(session.group_id)
        self.freshness.forget(session.group_id)
        self.sessions.pop(session.room, None)
        asyncio.ensure_future(session.stop())
        # out of the room too: an account that stays affiliated through another
        # device would otherwise keep this one an occupant, fed traffic it cannot read
        self.delivery.leave_room(session.room, self.nick(session.room))
        if not account_still_in:
            asyncio.ensure_future(self.registry.remove(session.room))
        # a Welcome back into the group that came before this removal was read
        self.inbox.group_ended(session.group_id, session.epoch)

    # -- the room is not the group ----------------------------------------------------

    def suspend(self, session: GroupSession, reason: str,
                cause: BaseException | None = None, *, retry: Any = None) -> None:
        """The room refused or dropped this account: keep the group, report, retry.

        The group's MLS state and stored record stay as they are; API calls on
        it raise :class:`GroupSuspendedError` until the room takes the device
        again (tried after ``room_retry`` seconds, the delay doubling up to
        ``room_retry_max``); then it reads the archive it missed and goes on.
        """
        if (session.suspended is not None or session.removed
                or self.sessions.get(session.room) is not session):
            return
        session.suspended = reason
        session.ready.clear()
        err = GroupSuspendedError(
            f"the group of {session.room} is suspended: {reason}; its MLS state is kept "
            "and the room is retried", reason)
        err.__cause__ = cause
        self.error(MLSErrorEvent(str(err), session, error=err))
        session.room_retry = asyncio.ensure_future((retry or self._retry_room)(session))

    async def _retry_room(self, session: GroupSession) -> None:
        """Join the room again until it takes this device, then resume the group."""
        async def attempt() -> str | None:
            try:
                await self.delivery.join_room(session.room, self.nick(session.room))
            except TransportError as e:
                if await apply_removal_notice(self, session):
                    return None  # it cannot read its removal in the room: the notice ended it
                return f"{session.room} still refuses this account ({e})"
            return None

        await self._retry_suspended(session, attempt, "it takes this account again")

    def _on_room_presence(self, presence: Any) -> None:
        """A room says an occupant lost its place: this device (suspend the group) or
        another member's (put its affiliation back, section 9.2 of the protocol)."""
        if presence["type"] != "unavailable":
            return
        codes = set(presence["muc"]["status_codes"])
        if not codes & LOST_CODES:
            return
        session = self.sessions.get(str(presence["from"].bare))
        if session is None or session.removed:
            return
        if 110 in codes or presence["from"].resource == self.nick(session.room):
            reason = (f"the room took this device out (status "
                      f"{', '.join(str(c) for c in sorted(codes & LOST_CODES))})")
            # after what the room sent before (the Commit that removed this device,
            # if that is why): that Commit ends the group instead
            session.in_room_order(lambda: self.suspend(session, reason))
        elif codes & AFFILIATION_CODES:
            real = presence["muc"]["jid"]
            jid = _bare(str(real)) if real else ""
            if jid and jid in session.jids():
                asyncio.ensure_future(session.repair_affiliation(jid))

    async def forget(self, room_or_id: str | bytes) -> None:
        """Delete a group's local state without a Commit, at the application's word.

        For a group that stays suspended (e.g. this account was removed while
        the device was away, and the room no longer admits it, so the removing
        Commit cannot be read). For the others the device is still a member
        until one of them removes it.

        :raises UnknownGroupError: this device is in no such group.
        """
        if isinstance(room_or_id, str) and self.reinit.forget(_bare(room_or_id)):
            return  # a group closed by ReInit, kept for its successor's Welcome
        session = self.group(room_or_id)
        self.writer.store.delete_group(session.group_id)
        self.sessions.pop(session.room, None)
        await session.stop()
        self.delivery.leave_room(session.room, self.nick(session.room))
        await self.registry.remove(session.room)

    async def record(self, session: GroupSession) -> None:
        try:
            await self.registry.add(session.room, session.group_id,
                                    group_info_key(session.group.state.context.extensions))
        except TransportError as e:
            self.error(MLSErrorEvent(f"recording the group failed: {e}", session, error=e))

    # -- the API -------------------------------------------------------------------------

    async def create_group(self, *, members: list[str] | None = None,
                           group_id: bytes | None = None,
                           key_packages: list[KeyPackage] | None = None,
                           rules: GroupRules | None = None,
                           suite: int | None = None,
                           pad_to: int | None = None) -> GroupSession:
        """Create an MLS group and its room, then add ``members`` (every device of each).

        ``rules`` (default: the ``rules`` option, else :data:`.DEFAULT_RULES`
        with this account as the only admin) are the group's
        :class:`~mls_xmpp.xmpp.rules.GroupRules`, carried in its GroupContext
        and enforced by every member alike. ``pad_to`` (1 to 65536) sets the
        multiple every member pads messages to, carried in the group as well
        (:mod:`~mls_xmpp.xmpp.params`); default 32, and no extension.

        The account's other devices (those with KeyPackages on its node) are
        added too: every device is its own leaf. ``key_packages`` adds devices
        whose KeyPackages the caller fetched already. Adding many members
        reports its stages as ``mls_progress`` events.

        ``suite`` is the group's cipher suite; by default the first of this
        device's ``suites`` that every invited device supports (:mod:`.suites`).

        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NoKeyPackageError: a member has no usable KeyPackage (checked
            before anything is created).
        :raises NoCommonSuiteError: no suite of this device's is supported by every
            invited device (nothing is created).
        :raises UnsupportedCipherSuiteError: this device does not support ``suite``.
        :raises TransportError: the server refused the room, or did not answer.
        """
        await self.ensure_ready()
        assert self.identity is not None and self.keystore is not None
        members = [m for m in dict.fromkeys(members or []) if _bare(m) != self.bare_jid]
        if suite is None:
            suite = await negotiate(self, members)
        client = self.client_for(suite)
        progress = Progress(self, None, "add")
        wanted = list(key_packages or [])
        if members:
            devices = await fetch_devices(self, members, progress, suite_id=suite)
            wanted += [kp for kps in devices.values() for kp in kps]
        try:  # this account's other devices (exclude_own: not this one)
            wanted += [f.key_package
                       for f in await self.keystores[suite].fetch(self.bare_jid)]
        except TransportError as e:
            self.error(MLSErrorEvent(f"fetching this account's devices failed: {e}", error=e))
        rules = rules or self.config["rules"] or DEFAULT_RULES
        if not rules.admins:
            rules = rules.with_admins(self.bare_jid)
        extensions = [rules_extension(rules)]
        if pad_to is not None and pad_to != DEFAULT_PAD_TO:
            extensions.append(params_extension(pad_to))  # PolicyError: out of range
        group = client.create_group(group_id or os.urandom(16),
                                    extensions=(*extensions, group_info_key_extension()))
        room = f"{group.group_id.hex()}@{self.muc_domain}"
        await self.delivery.create_room(room, self.nick(room))
        session = GroupSession(self, group, room)
        progress.group = session
        self.sessions[room] = session
        self.persist(session)
        self.freshness.created(session)
        session.start(catch_up=False)
        await self.record(session)
        unique = list({kp.leaf_node.signature_key: kp for kp in wanted}.values())
        if unique:
            await session.add_key_packages(unique, progress=progress)
        else:
            await session.publish_group_info()
        return session

    # -- device trust ------------------------------------------------------------------

    def devices(self, jid: str | None = None) -> list[DeviceRecord]:
        """The devices this account has seen (of ``jid``), with fingerprint and trust state."""
        return self.trust.devices(_bare(jid) if jid else None)

    def verify(self, jid: str, fingerprint: str) -> TrustChange:
        """Mark a device's key as verified (after comparing :meth:`safety_number`).

        :raises UnknownDeviceError: no device of ``jid`` with that fingerprint was seen.
        """
        return self._decide(self.trust.verify, jid, fingerprint)

    def distrust(self, jid: str, fingerprint: str) -> TrustChange:
        """Mark a device's key as distrusted (with ``refuse_send_to``, sending stops).

        Acting on it -- removing the device from a group -- is an explicit
        Commit: ``group.remove_device(fingerprint)``.

        :raises UnknownDeviceError: no device of ``jid`` with that fingerprint was seen.
        """
        return self._decide(self.trust.distrust, jid, fingerprint)

    def trust_device(self, jid: str, fingerprint: str) -> TrustChange:
        """Trust a device's key without verifying it (undoes :meth:`distrust`).

        :raises UnknownDeviceError: no device of ``jid`` with that fingerprint was seen.
        """
        return self._decide(self.trust.trust, jid, fingerprint)

    def _decide(self, fn: Any, jid: str, fingerprint: str) -> TrustChange:
        try:
            change: TrustChange = fn(_bare(jid), fingerprint)
        except KeyError as e:
            raise UnknownDeviceError(f"no device of {jid} with fingerprint {fingerprint} "
                                     "has been seen") from e
        self.xmpp.event("mls_trust", change)
        return change

    def safety_number(self, jid: str, fingerprint: str) -> str:
        """The number to compare with the owner of a device, read aloud or side by side.

        The same on both sides; it covers this device's key and theirs.

        :raises UnknownDeviceError: the device is in none of this device's groups.
        """
        assert self.identity is not None
        want = "".join(fingerprint.split()).lower()
        for session in self.sessions.values():
            for m in session.group.members:
                if (member_jid(m) == _bare(jid)
                        and "".join(trust_fingerprint(m.signature_key).split()) == want):
                    own = session.group.state.tree.leaf(session.group.own_leaf_index)
                    mine = (self.identity.signature_public_key if own is None
                            else own.signature_key)  # this device's key of that suite
                    return safety_number(self.bare_jid, mine, member_jid(m), m.signature_key)
        raise UnknownDeviceError(f"no device of {jid} with fingerprint {fingerprint} is in "
                                 "any group of this device")

    async def download(self, attachment: Attachment, *, sender: str | None = None,
                       room: str | None = None) -> bytes:
        """Fetch, check and decrypt a file a member shared (an ``Attachment`` of a message).

        Files are fetched only when asked for, never automatically. The URL must
        be on the server of the message's ``sender`` or ``room`` (give them from
        the ``mls_message`` event: ``msg.sender``, ``msg.group.room``), of this
        account, or of an upload service of theirs (docs/PROTOCOL.md §11.2).
        Without them, the servers of every room and member of this device's
        groups are allowed.

        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises BlobRefusedError: the URL is not one files are fetched from
            (nothing was requested).
        :raises TransportError: the download failed or took longer than the
            option ``blob_timeout``.
        :raises EnvelopeError: the file is not the one the sender described.
        """
        self.require_connected()
        domains: list[str] = []
        if sender is None and room is None:
            for session in self.sessions.values():
                domains += session.blob_domains()
        else:
            domains += [d for d in [jid_domain(sender or "")] if d]
            domains += room_server_domains(room or "")
        return await download_attachment(self.delivery, attachment, domains=domains)

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

    def _on_payload(self, msg: Any) -> None:
        """Route a stanza with an <mls/> payload as the stream parses it; never raises.

        A room message goes to its group's queue at once, in stream order (no task
        per stanza: the group's worker is the one task on a message's way); anything
        sent to this account directly (a Welcome) is handled in a task of its own.
        """
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
            asyncio.ensure_future(self._on_direct(msg))
        except Exception as e:  # noqa: BLE001 - hostile input must not kill the loop
            self._payload_failed(msg, e)

    async def _on_direct(self, msg: Any) -> None:
        try:
            await self.inbox.on_direct(msg)
        except Exception as e:  # noqa: BLE001 - hostile input must not kill the loop
            self._payload_failed(msg, e)

    def _payload_failed(self, msg: Any, e: Exception) -> None:
        log.exception("payload handling failed")
        self.error(MLSErrorEvent(f"{type(e).__name__}: {e}", sender=str(msg["from"]), error=e))

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
            if self.config["device_list"]:
                self.device_watch.watch_groups()  # lists that could not be followed yet

    async def renew_key_packages(self) -> None:
        """One KeyPackage upkeep round (:meth:`KeyPackageStore.renew`) for each suite's
        identity; errors are reported."""
        for store in self.keystores.values() or ([self.keystore] if self.keystore else []):
            try:
                await store.renew(int(self.config["pool_size"]))
                self.save_identity()
            except MLSError as e:
                self.error(MLSErrorEvent(f"KeyPackage upkeep failed: {e}", error=e))

    # -- cipher suites (see mls_xmpp.xmpp.suites) ------------------------------------------

    def _setup_suites(self, client: Client) -> None:
        """One identity and KeyPackage store per supported suite (option ``suites``);
        the disco features that advertise them."""
        order = preference(self.config["suites"], client.suite_id)
        self.suite_order = order
        fresh = False
        identities = {s: c for s, c in self.identities.items() if s != client.suite_id}
        for s in order:
            if s != client.suite_id and s not in identities:
                identities[s] = Client.generate(self.bare_jid.encode(), s,
                                                config=client.config)
                fresh = True
        psks = client.resumption_psks
        for c in identities.values():  # one group table and PSK store for all suites
            psks.update(c.resumption_psks)
            c.resumption_psks = psks
            c.groups = client.groups
            c.config = client.config
            c.device_id = client.device_id
            # an X.509 credential is the first identity's only; the others accept what it does
            c.supported_credentials = client.supported_credentials
        self.identities = {client.suite_id: client, **identities}
        for c in self.identities.values():
            c.supported_extensions = tuple(dict.fromkeys(
                (*client.supported_extensions, LINK_EXTENSION)))
            c.supported_suites = tuple(s for s in order if s != c.suite_id)
        self.keystore = KeyPackageStore(self.xmpp, client, anchors=self.x509_anchors)
        self.keystores = {s: (self.keystore if s == client.suite_id else
                              KeyPackageStore(self.xmpp, self.identities[s],
                                              anchors=self.x509_anchors))
                          for s in order}
        disco = self.xmpp.plugin["xep_0030"]
        for s in order:
            disco.add_feature(suite_feature(s))
        if fresh:
            self.save_identity()

    def client_for(self, suite: int) -> Client:
        """This device's identity of cipher ``suite``.

        :raises UnsupportedCipherSuiteError: the device does not support it (option
            ``suites``).
        """
        client = self.identities.get(suite)
        if client is None:
            raise UnsupportedCipherSuiteError(
                f"this device has no identity of cipher suite {suite} (option suites: "
                f"{self.suite_order})")
        return client


#: How the reason of a group suspended by a failed write begins.
_STORAGE = "its state could not be stored: "

_NO_DEVICE = ("automatic recovery needs a device name: set the device option (e.g. "
              "register_plugin('mls', {'device': 'phone'})), so that a rejoin replaces "
              "exactly this device's old leaf and no other device of the account")


def _bare(jid: str) -> str:
    """The bare form of ``jid``; an invalid one as given (adding it reports the error)."""
    try:
        return str(JID(jid).bare)
    except InvalidJID:
        return jid
