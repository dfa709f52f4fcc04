"""ReInit over XMPP: a group moves to a new cipher suite in a new room (RFC 9420 §11.2).

The flow (docs/PROTOCOL.md, section 15.3, has the normative text):

1. A member the group rules allow (``GroupRules.reinit``) commits a ReInit
   proposal, alone in its Commit, in the old room. The ReInit names the new
   group ID and suite, and its extensions -- which become the new group's
   GroupContext extensions -- carry the old group's rules and a
   :class:`GroupLink` naming the old group, the old room and the new room.
   That Commit is the old room's last handshake message: every member reads
   the new room from it. The old group is closed (RFC 9420 §12.1.5).
2. The committer creates the new group with its identity of the new suite,
   creates the new room, and commits the Adds of every member device that has
   a KeyPackage of the new suite together with the resumption PSK (usage
   ``reinit``) of the old group's last epoch; each device gets a Welcome.
3. A member device opens the Welcome only if it continues a group it holds
   (the PSK, checked by the core, proves it; RFC 9420 §12.4.3.1): no
   invitation gate, but also no other group. A Welcome that comes before the
   device has read the ReInit waits for it.
4. Once in the new group, the device deletes the old group's state and
   leaves the old room. The old handle raises :class:`GroupClosedError`
   naming the new room.

Devices that cannot follow -- no KeyPackage of the new suite, no support for
it, or a downgrade they did not agree to -- are reported (``mls_reinit`` with
``stranded``, ``mls_error`` with :class:`CannotFollowError` or
:class:`DowngradeError`) and their copy of the old group is closed and deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from slixmpp import JID
from slixmpp.jid import InvalidJID

from ..core.codec import U8, Opaque, Struct
from ..core.errors import DecodeError, MLSError, UnsupportedCipherSuiteError
from ..core.group.client import Client, leaf_device_id
from ..core.group.events import CommitApplied, Member
from ..core.group.group import Group
from ..core.messages.common import ProtocolVersion
from ..core.messages.extensions import Extension, Extensions, find_extension
from ..core.messages.key_package import KeyPackage
from ..core.messages.proposals import PreSharedKey, ReInit
from ..core.schedule.psk import PreSharedKeyID, PSKType, ResumptionPSKUsage
from ..storage import GroupRecord
from .envelope import Envelope
from .errors import (
    CannotFollowError,
    EnvelopeError,
    RulesError,
    TransportError,
)
from .events import MLSErrorEvent, ReInitEvent
from .privacy import GROUP_INFO_KEY_EXTENSION, group_info_key_extension
from .rules import Who, rules_of
from .suites import check_move, choose_suite
from .trust import fingerprint

if TYPE_CHECKING:
    from .plugin import XEP_MLS
    from .session import GroupSession

log = logging.getLogger(__name__)

__all__ = ["LINK_EXTENSION", "GroupLink", "ReInitFlow", "Successor", "link_of"]

#: The extension type of :class:`GroupLink` in a ReInit and the new group's
#: GroupContext (private use range, RFC 9420 §17.3).
LINK_EXTENSION = 0xF0E3
LINK_VERSION = 1
#: Welcomes kept per closed group while its ReInit has not been read.
MAX_WAITING = 8


@dataclass(frozen=True)
class GroupLink(Struct):
    """Where a group came from, and its room (RFC 9420 §11.2: history linked).

    Wire format (TLS presentation language)::

        struct {
            uint8 version;                 /* 1 */
            opaque predecessor_group_id<V>;
            opaque predecessor_room<V>;    /* bare JID, UTF-8 */
            opaque room<V>;                /* the new group's room, bare JID, UTF-8 */
        } GroupLink;
    """

    version: Annotated[int, U8] = LINK_VERSION
    predecessor_group_id: Annotated[bytes, Opaque] = b""
    predecessor_room: Annotated[bytes, Opaque] = b""
    room: Annotated[bytes, Opaque] = b""


def link_of(extensions: Extensions) -> GroupLink | None:
    """The :class:`GroupLink` among ``extensions``; ``None`` when absent.

    :raises EnvelopeError: present, but malformed (unknown version, a room that
        is not a bare JID).
    """
    data = find_extension(extensions, LINK_EXTENSION)
    if data is None:
        return None
    try:
        link = GroupLink.decode(data)
        rooms = [link.predecessor_room.decode(), link.room.decode()]
    except (DecodeError, UnicodeDecodeError) as e:
        raise EnvelopeError(f"the group link does not decode: {e}") from e
    if link.version != LINK_VERSION:
        raise EnvelopeError(f"group link version {link.version} is not supported")
    for room in rooms:
        try:
            jid = JID(room)
        except InvalidJID as e:
            raise EnvelopeError(f"the group link names an invalid room {room!r}") from e
        if not jid.user or jid.resource or str(jid.bare) != room:
            raise EnvelopeError(f"the group link names {room!r}, not a bare room JID")
    return link


@dataclass(frozen=True)
class Successor:
    """The group that replaces a closed one."""

    group_id: bytes
    room: str
    cipher_suite: int
    version: int


def _successor(reinit: ReInit) -> Successor:
    link = link_of(reinit.extensions)
    room = "" if link is None else link.room.decode()
    return Successor(reinit.group_id, room, reinit.cipher_suite, reinit.version)


class ReInitFlow:
    """The ReInit flow of one device (see the module documentation)."""

    def __init__(self, plugin: XEP_MLS) -> None:
        self.plugin = plugin
        #: closed groups kept until this device is in their successor: old group_id ->
        #: handle (its state stays stored: its resumption PSK opens the Welcome)
        self.closed: dict[bytes, GroupSession] = {}
        #: Welcomes into a successor whose ReInit this device has not read yet:
        #: old group_id -> [(envelope, sender)] (a few: a forged one must not push
        #: out the real one)
        self.waiting: dict[bytes, list[tuple[Envelope, str]]] = {}
        #: ReInits this device committed whose successor is not made yet: old
        #: group_id -> (ReInit, KeyPackages to add, stranded devices)
        self.unfinished: dict[bytes, tuple[ReInit, list[KeyPackage],
                                           list[tuple[str, str]]]] = {}

    # -- the member that moves the group --------------------------------------------------

    async def move(self, session: GroupSession, suite: int, *, allow_downgrade: bool = False,
                   require_all: bool = False) -> GroupSession:
        """Move ``session``'s group to cipher ``suite``: see :meth:`GroupSession.reinit`."""
        plugin = self.plugin
        unfinished = self.unfinished.get(session.group_id)
        if unfinished is not None and plugin.sessions.get(session.room) is session:
            if unfinished[0].cipher_suite != suite:
                raise session.closed_error()
            plugin.require_connected()
            return await self._finish(session, *unfinished)
        await session.ensure_usable()
        state = session.group.state
        plugin.client_for(suite)  # UnsupportedCipherSuiteError before anything is sent
        check_move(plugin.suite_order, state.suite.id, suite, agreed=allow_downgrade)
        rules = rules_of(state.context.extensions)
        me = plugin.bare_jid.encode()
        if rules.reinit == Who.NOBODY or (rules.reinit == Who.ADMINS and me not in rules.admins):
            raise RulesError("the group's rules refuse this change: this member may not "
                             "reinitialise the group")
        from .session import member_jid

        own_leaf = session.group.own_leaf_index
        others = [m for m in session.group.members if m.leaf_index != own_leaf]
        jids = sorted({member_jid(m) for m in others})
        offers = await fetch_offers(plugin, jids, (suite,))
        key_packages = [kp for kps in offers[suite].values() for kp in kps]
        stranded = _stranded(session.group, others, offers[suite])
        if stranded and require_all:
            raise _cannot_follow(stranded, suite)
        new_id = os.urandom(16)
        new_room = f"{new_id.hex()}@{plugin.muc_domain}"
        link = GroupLink(predecessor_group_id=session.group_id,
                         predecessor_room=session.room.encode(), room=new_room.encode())
        extensions = tuple(e for e in state.context.extensions
                           if e.extension_type not in (LINK_EXTENSION, GROUP_INFO_KEY_EXTENSION))
        # the new group gets its own GroupInfo key (.privacy)
        extensions += (Extension(LINK_EXTENSION, link.encode()), group_info_key_extension())
        reinit = ReInit(new_id, ProtocolVersion.MLS10, suite, extensions)
        # the old group's last Commit: it closes the group for every member alike
        await session.commit_proposals([reinit])
        self.unfinished[session.group_id] = (reinit, key_packages, stranded)
        return await self._finish(session, reinit, key_packages, stranded)

    async def _finish(self, session: GroupSession, reinit: ReInit,
                      key_packages: list[KeyPackage], stranded: list[tuple[str, str]]
                      ) -> GroupSession:
        """Make the successor of a group this device closed by ReInit; report."""
        plugin = self.plugin
        suite, new_room = reinit.cipher_suite, _successor(reinit).room
        try:
            new = await self._create_successor(session, plugin.client_for(suite),
                                               session.group, reinit, key_packages)
        except MLSError as e:
            raise TransportError(
                f"the ReInit closed the group of {session.room}, but its successor in "
                f"{new_room} is not made yet ({e}): call reinit({suite}) on this handle "
                "again to go on") from e
        self.unfinished.pop(session.group_id, None)
        if stranded:
            err = _cannot_follow(stranded, suite)
            plugin.error(MLSErrorEvent(str(err), session, error=err))
        plugin.xmpp.event("mls_reinit", ReInitEvent(
            session, "moved", reinit.group_id, new_room, suite, reinit.version,
            plugin.bare_jid, new, tuple(stranded)))
        return new

    async def _create_successor(self, old_session: GroupSession, client: Client, old: Group,
                                reinit: ReInit, key_packages: list[KeyPackage]
                                ) -> GroupSession:
        """The new group (RFC 9420 §11.2), its room, the Adds and Welcomes."""
        from .session import GroupSession

        plugin = self.plugin
        successor = _successor(reinit)
        epoch = old.epoch
        client.resumption_psks[(old.group_id, epoch)] = old.state.resumption_psks[epoch]
        session = plugin.sessions.get(successor.room)
        if session is None or session.group_id != reinit.group_id:  # not a second try
            group = client.groups.get(reinit.group_id)
            if group is None or group.epoch != 0:
                group = client.create_group(reinit.group_id, extensions=reinit.extensions)
            await plugin.delivery.create_room(successor.room, plugin.nick(successor.room))
            session = GroupSession(plugin, group, successor.room)
            session.predecessor = old_session.room
            plugin.sessions[successor.room] = session
            plugin.persist(session)
            session.start(catch_up=False)
            await plugin.record(session)
        if session.epoch == 0:  # the first Commit: the members and the reinit PSK
            psk = PreSharedKeyID.resumption(ResumptionPSKUsage.REINIT, old.group_id, epoch,
                                            client.config.rng(client.suite.hash_len))
            await session.add_key_packages(key_packages, proposals=[PreSharedKey(psk)])
        self._close(old_session)
        return session

    # -- every member: the ReInit read from the old room ---------------------------------

    def committed(self, session: GroupSession, event: CommitApplied) -> None:
        """A Commit with a ReInit closed ``session``'s group (called by its worker)."""
        plugin = self.plugin
        reinit = event.reinit
        assert reinit is not None
        try:
            successor = _successor(reinit)
        except EnvelopeError as e:
            successor = Successor(reinit.group_id, "", reinit.cipher_suite, reinit.version)
            plugin.error(MLSErrorEvent(f"the ReInit names no usable room: {e}", session,
                                       error=e))
        session.successor = successor
        session.drop_outbox(session.closed_error())
        committer = None
        leaf = session.group.state.tree.leaf(event.committer.index)
        if leaf is not None:
            from .session import _jid_of

            committer = _jid_of(leaf.credential)
        plugin.xmpp.event("mls_reinit", ReInitEvent(
            session, "committed", successor.group_id, successor.room, successor.cipher_suite,
            successor.version, committer))
        if event.own:
            return  # :meth:`move` goes on
        why: MLSError | None = None
        if successor.cipher_suite not in plugin.identities:
            why = CannotFollowError(
                f"the group of {session.room} moved to cipher suite {successor.cipher_suite}, "
                f"which this device does not support (option suites "
                f"{plugin.suite_order}): it stays behind", (plugin.bare_jid,))
        else:
            try:
                check_move(plugin.suite_order, session.group.state.suite.id,
                           successor.cipher_suite,
                           agreed=bool(plugin.config["accept_downgrade"]))
            except MLSError as e:
                why = e
        if why is not None or not successor.room:
            if why is not None:
                plugin.error(MLSErrorEvent(f"not following the group of {session.room}: {why}",
                                           session, error=why))
            self._close(session)
            return
        self.closed[session.group_id] = session
        asyncio.ensure_future(self._park(session))
        for env, sender in self.waiting.pop(session.group_id, []):
            asyncio.ensure_future(plugin.inbox.reconsider(env, sender))

    async def _park(self, session: GroupSession) -> None:
        """Take a closed group out of the live ones once the worker wrote its state
        (under the group's lock): no room, no worker; kept stored for its PSK."""
        plugin = self.plugin
        async with session.group_lock:
            if plugin.sessions.get(session.room) is not session:
                return
            del plugin.sessions[session.room]
        plugin.delivery.leave_room(session.room, plugin.nick(session.room))
        await session.stop()

    def follows(self, env: Envelope, sender: str, client: Client
                ) -> GroupSession | None | bool:
        """Whether a Welcome continues a group of this device's by ReInit.

        :returns: the closed group it continues (the invitation gate does not
            apply: the PSK proves the link, the core checks it); ``True`` when it
            names a group whose ReInit this device has not read yet (it waits:
            :meth:`committed` takes it up again); ``None`` for any other Welcome.
        :raises MLSError: it continues a group of ours, but not as the ReInit
            said (another group or room), or as a downgrade not agreed to.
        """
        psk = reinit_psk(env.mls_message, client)
        if psk is None or psk.psk_group_id is None or psk.psk_epoch is None:
            return None
        old_id, epoch = psk.psk_group_id, psk.psk_epoch
        session = self.closed.get(old_id)
        if session is None:
            live = next((s for s in self.plugin.sessions.values() if s.group_id == old_id), None)
            if live is None or live.removed or live.epoch >= epoch:
                return None  # not a group of ours (the core refuses it without the PSK)
            waiting = self.waiting.setdefault(old_id, [])
            if len(waiting) < MAX_WAITING:
                waiting.append((env, sender))
            return True
        successor = session.successor
        assert successor is not None
        try:
            room = str(JID(env.room).bare)
        except InvalidJID:
            room = ""
        if env.group_id != successor.group_id or room != successor.room:
            raise EnvelopeError("a Welcome continuing a closed group names another group or "
                                "room than its ReInit")
        return session

    async def followed(self, old: GroupSession, new: GroupSession) -> None:
        """This device is in the successor of ``old``: close the old group for good."""
        new.predecessor = old.room
        self._close(old)
        assert old.successor is not None
        self.plugin.xmpp.event("mls_reinit", ReInitEvent(
            old, "followed", new.group_id, new.room, old.successor.cipher_suite,
            old.successor.version, None, new))

    def restore(self, group: Group, record: GroupRecord) -> GroupSession:
        """A closed group read from the store at start: kept until its successor comes."""
        from .session import GroupSession

        session = GroupSession(self.plugin, group, record.room, record.last_stanza_id)
        assert group.state.reinit is None or isinstance(group.state.reinit, ReInit)
        reinit = group.state.reinit
        if isinstance(reinit, ReInit):
            try:
                session.successor = _successor(reinit)
            except EnvelopeError:
                session.successor = Successor(reinit.group_id, "", reinit.cipher_suite,
                                              reinit.version)
        self.closed[group.group_id] = session
        return session

    def forget(self, room: str) -> bool:
        """Delete a closed group kept for its successor (``plugin.forget``)."""
        for session in list(self.closed.values()):
            if session.room == room:
                self._close(session)
                return True
        return False

    def _close(self, session: GroupSession) -> None:
        """Delete a closed group's state, leave its room (the history stays in the
        room's archive; the new group's link names it)."""
        plugin = self.plugin
        self.closed.pop(session.group_id, None)
        client = plugin.identity
        if client is not None and client.groups.get(session.group_id) is session.group:
            del client.groups[session.group_id]
        plugin.writer.store.delete_group(session.group_id)
        live = plugin.sessions.get(session.room) is session
        if live:
            del plugin.sessions[session.room]
            plugin.delivery.leave_room(session.room, plugin.nick(session.room))
        asyncio.ensure_future(session.stop())
        asyncio.ensure_future(plugin.registry.remove(session.room))


def reinit_psk(data: bytes, client: Client) -> PreSharedKeyID | None:
    """The reinit resumption PSK a Welcome carries, read with this device's KeyPackage.

    Only the GroupSecrets are decrypted (no key is used up, nothing is joined).
    ``None`` when the Welcome has none, or is for none of ``client``'s KeyPackages.
    """
    from ..core.crypto import get_suite
    from ..core.messages.framing import MLSMessage
    from ..core.messages.welcome import Welcome, decrypt_group_secrets

    try:
        body = MLSMessage.decode(data).body
    except MLSError:
        return None
    if not isinstance(body, Welcome):
        return None
    for entry in body.secrets:
        bundle = client.key_packages.get(entry.new_member)
        if bundle is None or bundle.key_package.cipher_suite != body.cipher_suite:
            continue
        suite = get_suite(body.cipher_suite)
        try:
            secrets = decrypt_group_secrets(suite, body, entry.new_member,
                                            bundle.init_private_key)
        except MLSError:
            return None
        for psk in secrets.psks:
            if psk.psktype == PSKType.RESUMPTION and psk.usage == ResumptionPSKUsage.REINIT:
                return psk
        return None
    return None


async def fetch_offers(plugin: XEP_MLS, jids: list[str], suites: tuple[int, ...]
                       ) -> dict[int, dict[str, list[KeyPackage]]]:
    """The KeyPackages of each suite on each account's node (none: an empty list).

    :raises TransportError: a fetch failed.
    """
    out: dict[int, dict[str, list[KeyPackage]]] = {}
    for s in suites:
        store = plugin.keystores.get(s)
        if store is None:
            raise UnsupportedCipherSuiteError(
                f"this device has no identity of cipher suite {s} (option suites)")
        fetched = await asyncio.gather(*(store.fetch(j) for j in jids))
        out[s] = {j: [f.key_package for f in fs] for j, fs in zip(jids, fetched, strict=True)}
    return out


async def negotiate(plugin: XEP_MLS, jids: list[str]) -> int:
    """The suite of a new group with ``jids``: the best of this device's ``suites`` that
    every invited device supports (:func:`.suites.choose_suite`).

    :raises NoCommonSuiteError: there is none.
    """
    order = plugin.suite_order
    if len(order) == 1 or not jids:
        return order[0]
    offers = await fetch_offers(plugin, jids, order)
    return choose_suite(order, offers, jids)


def _stranded(group: Group, members: list[Member], offers: dict[str, list[KeyPackage]]
              ) -> list[tuple[str, str]]:
    """``(jid, fingerprint)`` of the member devices without a KeyPackage of the new suite.

    Devices are matched by device name (the leaves' application_id) where they
    have one; an account's unnamed devices follow if the account offers as many
    unnamed KeyPackages.
    """
    from .session import member_jid

    out = []
    by_jid: dict[str, list[Member]] = {}
    for m in members:
        by_jid.setdefault(member_jid(m), []).append(m)
    for jid, devices in by_jid.items():
        kps = offers.get(jid, [])
        names = [leaf_device_id(kp.leaf_node) for kp in kps]
        unnamed = sum(1 for n in names if n is None)
        for m in devices:
            leaf = group.state.tree.leaf(m.leaf_index)
            name = None if leaf is None else leaf_device_id(leaf)
            if name is not None and name in names:
                continue
            if name is None and unnamed > 0:
                unnamed -= 1
                continue
            out.append((jid, fingerprint(m.signature_key)))
    return out


def _cannot_follow(stranded: list[tuple[str, str]], suite: int) -> CannotFollowError:
    jids = tuple(dict.fromkeys(j for j, _ in stranded))
    return CannotFollowError(
        f"{', '.join(f'{j} [{fp}]' for j, fp in stranded)} cannot follow the group to "
        f"cipher suite {suite} (no KeyPackage of it): they stay in the closed group",
        jids, tuple(stranded))

