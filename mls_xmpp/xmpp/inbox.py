"""Welcomes: messages sent to this account directly, live or from its own archive.

A Welcome goes to the bare JID of each new member (one message per device,
all of the account's devices see it; each keeps only those for its own
KeyPackages). A server delivers such a message only to the account's online
resources, and keeps it in offline storage only when none is online: a
device that was away while another device of its account was online finds
its Welcome only in the account's own archive (MAM). :class:`Inbox` handles
both paths, one Welcome at a time, and records how far the archive was read
(the *inbox position*) so a restart reads on from there.

Before a Welcome is opened, its sender must be someone the account allows to
invite it (:class:`~.invitations.InvitationGate`, option ``invitations``);
otherwise it is dropped and reported, no KeyPackage used and nothing fetched.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.jid import InvalidJID

from ..core.errors import LocalUsageError, MLSError
from ..core.messages.leaf_node import LeafNode
from .blobs import jid_domain, room_server_domains
from .envelope import Envelope, Kind
from .errors import EnvelopeError, InvitationRefusedError, TransportError
from .events import InvitationEvent, JoinedEvent, MLSErrorEvent
from .invitations import MAX_PENDING, InvitationGate, Verdict
from .removal import on_removal_notice
from .session import GroupSession, _bare, _in_thread, _jid_of
from .suites import check_move

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..core.group.client import Client
    from ..core.group.group import Group
    from ..core.group.join import OpenedWelcome
    from .plugin import XEP_MLS

log = logging.getLogger(__name__)

#: The archive is read from this long before this device's oldest KeyPackage.
ARCHIVE_SLACK = 24 * 3600
#: Seconds a used KeyPackage's private keys stay in memory (never on disk), for a second
#: Welcome from an adder that fetched the same KeyPackage before it was retracted.
REUSE_GRACE = 600.0
#: Attempts at downloading a Welcome's tree (sent by reference) before the Welcome is
#: refused: a failure may pass (many joiners fetch the same tree at once from a
#: single upload service, a connection drops), and a refused Welcome is never joined.
TREE_ATTEMPTS = 4
#: Seconds before the second attempt; doubled after each, each wait spread by +-50 %
#: so that joiners that failed together do not come back together.
TREE_RETRY = 2.0
#: Bytes of Welcome and tree from which joining runs in a worker thread, with the
#: encoding of the state to store: about 256 leaves (the size from which a Commit
#: is processed off the loop, ``session.HEAVY_TREE``). At 50,000 members a join takes
#: seconds of CPU (a signature per leaf); on the event loop it stalled every other
#: task of the process: the room join's answer, IQs, keepalives (docs/PERFORMANCE.md,
#: "50,000 members on a real server").
HEAVY_WELCOME = 48 * 1024
#: One such join at a time in a process: threads share one GIL, so several at once end
#: no sooner, hold more memory, and leave the event loop less of the GIL.
_HEAVY_JOINS = threading.Lock()


class _PositionUnknown(TransportError):
    """The archive refused the stored position (e.g. that message expired)."""


class Inbox:
    """Joins groups from Welcomes addressed to this account."""

    def __init__(self, plugin: XEP_MLS, gate: InvitationGate) -> None:
        self.plugin = plugin
        #: who may invite this device (options ``invitations``, ``invitation_limit``)
        self.gate = gate
        self._lock = asyncio.Lock()  # the live copy and the archive's, one at a time
        #: KeyPackages a Welcome used: ref -> (bundle, when); memory only, for a while
        self._recent: dict[bytes, tuple[Any, float]] = {}
        #: invitations waiting for the application: group_id -> (envelope, sender, timer)
        self._pending: dict[bytes, tuple[Envelope, str, asyncio.TimerHandle]] = {}
        #: Welcomes back into a group this device still holds in an earlier epoch (it
        #: was removed and added again, perhaps several times, and has not read its
        #: removal yet): group_id -> [(envelope, sender)] by epoch; the earliest is
        #: opened once the group ends (:meth:`group_ended`), the next when that
        #: membership ends in turn, so each stint's messages are read
        self._deferred: dict[bytes, list[tuple[Envelope, str]]] = {}
        #: groups this device was removed from: group_id -> the last epoch it held. A
        #: Welcome into that epoch or an earlier one is stale (sent again after a cut,
        #: or replayed): opened, it would make the device read that epoch's
        #: messages a second time (memory only; a restart forgets the KeyPackages
        #: such a Welcome could be opened with, except the last-resort one)
        self._ended: dict[bytes, int] = {}

    async def on_direct(self, msg: Any, archive_id: str | None = None) -> None:
        """A Welcome (or anything else) sent to this account directly; never raises MLSError.

        ``archive_id`` is the message's id in the account's own archive when
        it was read from there (:meth:`fetch`); a live message carries it as
        a stanza-id by the account's bare JID. Either way the inbox position
        moves past the message.
        """
        plugin = self.plugin
        sender = str(msg["from"])
        env: Envelope | None = None
        try:
            env = plugin.delivery.envelope_of(msg, sender)
            if env is None:
                return
            if env.kind not in (Kind.WELCOME, Kind.COMMIT):
                raise EnvelopeError(f"unexpected {env.kind.name} sent directly")
            what = "Welcome" if env.kind == Kind.WELCOME else "removal notice"
            try:
                await plugin.wait_ready()
            except TimeoutError:
                # not handled: the position stays, and the archive read at the next
                # start finds the message again
                plugin.error(MLSErrorEvent(f"{what} left for later: the device is not ready",
                                           sender=sender))
                return
            if env.kind == Kind.COMMIT:  # see mls_xmpp.xmpp.removal
                await on_removal_notice(plugin, env, sender)
            else:
                async with self._lock:
                    await self._consider(env, sender)
        except MLSError as e:  # refused for good
            what = "removal notice" if env is not None and env.kind == Kind.COMMIT else "Welcome"
            plugin.error(MLSErrorEvent(f"{what} refused: {e}", sender=sender, error=e))
        position = archive_id or plugin.delivery.own_stanza_id(msg, plugin.bare_jid)
        if position is not None:
            plugin.state_store.save_inbox_position(position)

    async def _consider(self, env: Envelope, sender: str) -> None:
        """Join, ask about, or refuse a Welcome (see :mod:`.invitations`).

        The decision is made before anything of the Welcome is downloaded or
        opened, and before a KeyPackage is touched: a refused Welcome leaves
        this device as it was. Only its GroupSecrets are decrypted first, to
        tell a Welcome that continues a group of this device's by ReInit (its
        reinit PSK, :mod:`.reinit`): that one needs no invitation, since the
        device is in the group it continues.

        :raises InvitationRefusedError: the sender may not invite this device.
        :raises MLSError: the Welcome is invalid, or its tree could not be fetched.
        """
        if self._defer(env, sender) or not self._for_this_device(env):
            return
        client = self._client(welcome_refs(env.mls_message))
        follows = self.plugin.reinit.follows(env, sender, client)
        if follows is True:
            log.info("a Welcome into %s continues a group whose ReInit this device has not "
                     "read yet: it waits", env.room)
            return
        if follows:  # the successor of a group of ours (docs/PROTOCOL.md 15.3)
            assert isinstance(follows, GroupSession)
            check_move(self.plugin.suite_order, follows.group.state.suite.id,
                       welcome_suite(env.mls_message),
                       agreed=bool(self.plugin.config["accept_downgrade"]))
            session = await self._join(env, sender)
            if session is not None:
                await self.plugin.reinit.followed(follows, session)
            return
        inviter = _bare(sender)
        verdict = self.gate.check(inviter)
        if verdict is Verdict.STRANGER:
            raise InvitationRefusedError(
                f"{inviter} (inviting to {env.room}) is not a contact with a mutual "
                f"subscription (option invitations={self.gate.mode!r})")
        if verdict is Verdict.OVER_LIMIT:
            raise InvitationRefusedError(
                f"{inviter} sent more than {self.gate.limit} invitations within an hour "
                f"(option invitation_limit)")
        if verdict is Verdict.ASK:
            self._ask(env, sender, inviter)
            return
        await self._join(env, sender)

    def _defer(self, env: Envelope, sender: str) -> bool:
        """Keep a Welcome for later when it is for a group this device holds in an
        earlier epoch than the Welcome's: the device was removed and added again, and
        its group has not read the removal yet (a cut, a suspended room). Opened
        then, the device reads what it was sent before the removal and what it is
        sent after the addition; dropped, it would never be in the group again."""
        old = next((s for s in self.plugin.sessions.values()
                    if s.group_id == env.group_id), None)
        if old is None or old.removed or env.epoch <= old.epoch:
            return False
        refs = welcome_refs(env.mls_message)
        if not any(r in self._client(refs).key_packages or r in self._recent for r in refs):
            return False  # for another device of this account
        waiting = self._deferred.setdefault(env.group_id, [])
        if any(e.epoch == env.epoch for e, _ in waiting):
            return True  # the same Welcome again (live and from the archive)
        waiting.append((env, sender))
        waiting.sort(key=lambda item: item[0].epoch)
        log.info("a Welcome back into %s (epoch %d) waits until this device reads its "
                 "removal (it is in epoch %d)", env.room, env.epoch, old.epoch)
        return True

    def waiting(self, group_id: bytes) -> bool:
        """Whether a Welcome back into group ``group_id`` waits (:meth:`_defer`)."""
        return bool(self._deferred.get(group_id))

    def group_ended(self, group_id: bytes, epoch: int) -> None:
        """This device's group ``group_id`` ended in ``epoch`` (it was removed): open a
        Welcome back into it kept by :meth:`_defer`, if one; refuse from now on any
        Welcome into ``epoch`` or an earlier one."""
        self._ended[group_id] = max(epoch, self._ended.get(group_id, -1))
        waiting = [(e, s) for e, s in self._deferred.pop(group_id, [])
                   if e.epoch > self._ended[group_id]]
        if waiting:
            if waiting[1:]:
                self._deferred[group_id] = waiting[1:]  # for when this stint ends
            asyncio.ensure_future(self._open_deferred(*waiting[0]))

    async def reconsider(self, env: Envelope, sender: str) -> None:
        """Take up a Welcome that waited (for the ReInit of the group it continues)."""
        await self._open_deferred(env, sender)

    def _client(self, refs: set[bytes]) -> Client:
        """The identity (of one cipher suite) that holds one of ``refs``' KeyPackages."""
        plugin = self.plugin
        for client in plugin.identities.values():
            if any(r in client.key_packages for r in refs):
                return client
        for r in refs:
            if r in self._recent:
                suite = self._recent[r][0].key_package.cipher_suite
                if suite in plugin.identities:
                    return plugin.identities[suite]
        assert plugin.identity is not None
        return plugin.identity

    async def _open_deferred(self, env: Envelope, sender: str) -> None:
        """Open a kept Welcome; when it joins nothing (refused, or not this device's
        after all), the next kept one for the group is tried."""
        while True:
            try:
                async with self._lock:
                    await self._consider(env, sender)
            except MLSError as e:
                self.plugin.error(MLSErrorEvent(f"Welcome refused: {e}", sender=sender,
                                                error=e))
            if any(s.group_id == env.group_id for s in self.plugin.sessions.values()):
                return
            waiting = self._deferred.pop(env.group_id, [])
            if not waiting:
                return
            (env, sender), rest = waiting[0], waiting[1:]
            if rest:
                self._deferred[env.group_id] = rest

    def _for_this_device(self, env: Envelope) -> bool:
        """Whether a Welcome is for one of this device's KeyPackages (refs only: no key
        is used) and for a group it is not in yet (one Welcome may be read twice: live
        and from the archive)."""
        if any(s.group_id == env.group_id for s in self.plugin.sessions.values()):
            return False
        if env.epoch <= self._ended.get(env.group_id, -1):
            log.info("a stale Welcome into %s (epoch %d) ignored: this device held the "
                     "group until epoch %d", env.room, env.epoch, self._ended[env.group_id])
            return False
        refs = welcome_refs(env.mls_message)
        self.expire_recent()
        client = self._client(refs)
        return any(r in client.key_packages or r in self._recent for r in refs)

    def expire_recent(self) -> int:
        """Forget the used KeyPackages' keys kept over :data:`REUSE_GRACE` (by the
        plugin's clock); run before each Welcome and by the periodic check.
        Returns how many were forgotten."""
        now = self.plugin.freshness.now()
        before = len(self._recent)
        self._recent = {r: (b, t) for r, (b, t) in self._recent.items()
                        if now - t < REUSE_GRACE}
        return before - len(self._recent)

    def _ask(self, env: Envelope, sender: str, inviter: str) -> None:
        """Put an invitation to the application (``mls_invitation``), expiring later."""
        plugin = self.plugin
        key = env.group_id
        if key in self._pending:
            return  # the same Welcome again (live and from the archive)
        if len(self._pending) >= MAX_PENDING:
            raise InvitationRefusedError(
                f"{inviter}'s invitation: {MAX_PENDING} invitations already wait for a decision")
        timeout = float(plugin.config["invitation_timeout"])
        timer = asyncio.get_running_loop().call_later(timeout, self._expire, key)
        self._pending[key] = (env, sender, timer)

        async def decide(accept: bool) -> GroupSession | None:
            return await self._decide(key, accept)

        plugin.xmpp.event("mls_invitation", InvitationEvent(
            inviter=inviter, room=env.room, group_id=env.group_id, expires_in=timeout,
            decide=decide))

    def _expire(self, key: bytes) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        env, sender, _ = pending
        e = InvitationRefusedError(f"the invitation of {_bare(sender)} to {env.room} was "
                                   f"not decided in time (option invitation_timeout)")
        self.plugin.error(MLSErrorEvent(f"Welcome refused: {e}", sender=sender, error=e))

    async def _decide(self, key: bytes, accept: bool) -> GroupSession | None:
        """The application's decision on a pending invitation (``InvitationEvent``)."""
        pending = self._pending.pop(key, None)
        if pending is None:
            raise LocalUsageError("this invitation was decided already, or it expired")
        env, sender, timer = pending
        timer.cancel()
        if not accept:
            return None
        async with self._lock:
            if not self._for_this_device(env):
                raise LocalUsageError("this invitation cannot be used any more: the device "
                                      "is in the group already, or the KeyPackage is gone")
            session = await self._join(env, sender)
        assert session is not None
        return session

    def drop_pending(self) -> None:
        """Forget every undecided invitation (the plugin stops)."""
        for _, _, timer in self._pending.values():
            timer.cancel()
        self._pending.clear()

    async def _join(self, env: Envelope, sender: str) -> GroupSession | None:
        """Join the group of a Welcome meant for this device, its sender being allowed.

        The member who signed the GroupInfo (who added this device) must be
        the sender's account; otherwise the Welcome is refused, its
        KeyPackage kept.

        :returns: the group joined; ``None`` for a Welcome that turned out not
            to be this device's after all (its KeyPackage was used long ago).
        :raises MLSError: the Welcome is refused (nothing joined).
        """
        plugin = self.plugin
        inviter = _bare(sender)
        refs = welcome_refs(env.mls_message)
        client = self._client(refs)
        now = self.plugin.freshness.now()
        reused = [r for r in refs if r in self._recent and r not in client.key_packages]
        if not reused and not any(r in client.key_packages for r in refs):
            return None  # for another device of this account, or used long ago
        try:
            room = JID(env.room)
        except InvalidJID:
            raise EnvelopeError("Welcome names an invalid room") from None
        if not room.user or not room.domain:
            raise EnvelopeError("Welcome without a room")
        if str(room.bare) in plugin.sessions:
            # that room carries another group of ours: a Welcome must not take it over
            raise EnvelopeError("Welcome names the room of another group")
        last_resort = client.last_resort & refs
        held = {r: client.key_packages[r] for r in refs if r in client.key_packages}
        restored = not held
        if restored:
            # another adder picked the same KeyPackage at the same time (it was on
            # the node until the first Welcome was processed): its keys, kept a
            # little while in memory only, open this Welcome too
            held = {reused[0]: self._recent[reused[0]][0]}
            client.key_packages.update(held)

        def signed_by_inviter(adder: LeafNode) -> None:
            # the adder's MLS credential, which the server cannot forge, names the
            # account the stanza came from (a contact's, or this account's own)
            signer = _bare(_jid_of(adder.credential))
            if signer != inviter:
                raise InvitationRefusedError(
                    f"the Welcome from {inviter} was made by {signer} (the GroupInfo's "
                    f"signer): refused")

        try:
            # decrypted and its confirmation tag checked first; only then is a tree
            # sent by reference fetched, and only from the servers of the sender
            # and the room (docs/PROTOCOL.md §11.2)
            opened = client.open_welcome(env.mls_message)
            context = opened.group_info.group_context
            if context.group_id != env.group_id:
                raise EnvelopeError("Welcome envelope names another group")
            if context.epoch <= self._ended.get(context.group_id, -1):
                # the envelope's epoch lied: the Welcome itself is stale
                raise EnvelopeError(
                    f"a Welcome into epoch {context.epoch} of a group this device was "
                    f"in until epoch {self._ended[context.group_id]}: stale, refused")
            tree = None
            if env.ratchet_tree is not None:
                domains = [*room_server_domains(str(room)), jid_domain(sender) or ""]
                tree = await self._download_tree(env, domains)
            parts: tuple[bytes, bytes] | None = None
            if len(env.mls_message) + len(tree or b"") >= HEAVY_WELCOME:
                group, parts = await _in_thread(_join_and_encode, client, opened, tree,
                                                signed_by_inviter)
            else:
                group = client.join(opened, ratchet_tree=tree,
                                    signer_check=signed_by_inviter)
        except BaseException:
            if restored:  # a refused Welcome leaves the KeyPackages as they were
                for r in held:
                    client.key_packages.pop(r, None)
            raise
        for r, bundle in held.items():
            if r not in client.last_resort:
                client.key_packages.pop(r, None)
                self._recent.setdefault(r, (bundle, now))
        plugin.save_identity()  # the used KeyPackage's private keys are gone
        if env.group_id != group.group_id:
            del client.groups[group.group_id]
            raise EnvelopeError("Welcome envelope names another group")
        session = GroupSession(plugin, group, str(JID(env.room).bare),
                               env.after_stanza_id or None, first_epoch=group.epoch)
        plugin.sessions[session.room] = session
        plugin.persist(session, parts)
        try:
            await plugin.delivery.join_room(session.room, plugin.nick(session.room))
        except TransportError as e:
            plugin.error(MLSErrorEvent(f"joining the room failed: {e}", session, error=e))
        plugin.freshness.joined(session, last_resort=bool(last_resort))
        session.start(catch_up=True)
        await plugin.record(session)
        if plugin.keystore is not None:
            asyncio.ensure_future(self._after_join(next(iter(last_resort), None),
                                                   client.suite_id))
        plugin.xmpp.event("mls_joined", JoinedEvent(session, "welcome", inviter))
        return session

    async def _download_tree(self, env: Envelope, domains: list[str]) -> bytes:
        """A Welcome's tree sent by reference, tried :data:`TREE_ATTEMPTS` times while
        the download fails (:class:`TransportError`: a timeout, a dropped connection,
        an HTTP error); a refused URL or a blob that is not the one described is not
        tried again. Nothing of the Welcome is used before the tree is here."""
        assert env.ratchet_tree is not None
        wait = TREE_RETRY
        for attempt in range(1, TREE_ATTEMPTS + 1):
            try:
                return await self.plugin.delivery.download(env.ratchet_tree, domains=domains)
            except TransportError as e:
                if attempt == TREE_ATTEMPTS:
                    raise
                pause = wait * random.uniform(0.5, 1.5)  # noqa: S311 - spreading only
                log.info("the tree of a Welcome into %s: attempt %d failed (%s); again in "
                         "%.1f s", env.room, attempt, e, pause)
                await asyncio.sleep(pause)
                wait *= 2
        raise AssertionError("unreachable")

    async def fetch(self) -> list[GroupSession]:
        """Join the groups whose Welcome this device missed, from the account's archive.

        Read from the stored inbox position, and no earlier than
        :data:`ARCHIVE_SLACK` before this device's oldest KeyPackage was made:
        no Welcome can be for this device before that. The plugin runs it at
        start for a device with stored state.

        :returns: the groups joined.
        :raises TransportError: the archive could not be read.
        """
        plugin = self.plugin
        assert plugin.identity is not None
        bundles = [b for c in (plugin.identities.values() or [plugin.identity])
                   for b in list(c.key_packages.values())]  # (a join may run in a thread)
        if not bundles:
            return []  # nothing to be welcomed with
        oldest = min((lt.not_before for b in bundles
                      if (lt := b.key_package.leaf_node.lifetime) is not None), default=0)
        since = datetime.fromtimestamp(max(0, oldest - ARCHIVE_SLACK), tz=UTC)
        after = plugin.state_store.load_inbox_position()
        before = set(plugin.sessions)
        try:
            await self._read(after, since)
        except _PositionUnknown:
            # the position is gone from the archive (expired): read by time alone
            await self._read(None, since)
        return [s for room, s in plugin.sessions.items() if room not in before]

    async def _read(self, after: str | None, since: datetime) -> None:
        """Handle the archive's direct messages after ``after``, a page at a time."""
        first = True
        pages = self.plugin.delivery.archive_pages(None, after=after, start=since)
        try:
            async for batch in pages:
                first = False
                for msg, archive_id in batch:
                    if msg["type"] not in ("groupchat", "error"):
                        await self.on_direct(msg, archive_id)
        except TransportError as e:
            if first and after is not None:
                raise _PositionUnknown(str(e)) from e
            raise

    async def _after_join(self, last_resort_used: bytes | None = None,
                          suite: int | None = None) -> None:
        """Retract KeyPackages that were used (retire a used last resort) and top up."""
        plugin = self.plugin
        keystore = plugin.keystores.get(suite or 0, plugin.keystore)
        assert keystore is not None
        try:
            if last_resort_used is not None:
                plugin.freshness.retired(last_resort_used)  # its keys go after a while
                await keystore.retire(last_resort_used)
            await keystore.sync_used()
            await keystore.top_up(int(plugin.config["pool_size"]))
            plugin.save_identity()
        except MLSError as e:
            plugin.error(MLSErrorEvent(f"KeyPackage upkeep failed: {e}", error=e))


def _join_and_encode(client: Client, opened: OpenedWelcome, tree: bytes | None,
                     signer_check: Callable[[LeafNode], None]
                     ) -> tuple[Group, tuple[bytes, bytes]]:
    """Join (``Client.join``) and encode the new group's state for the store, in one go
    (a worker thread's job: see :data:`HEAVY_WELCOME`)."""
    from ..core.group.serialize import encode_group_parts

    with _HEAVY_JOINS:
        group = client.join(opened, ratchet_tree=tree, signer_check=signer_check)
        return group, encode_group_parts(group)


def welcome_refs(data: bytes) -> set[bytes]:
    """The KeyPackageRefs a Welcome (an MLSMessage) is for.

    :raises DecodeError: not an MLSMessage.
    :raises EnvelopeError: an MLSMessage, but not a Welcome.
    """
    from ..core.messages.framing import MLSMessage
    from ..core.messages.welcome import Welcome

    msg = MLSMessage.decode(data)
    if not isinstance(msg.body, Welcome):
        raise EnvelopeError("Welcome envelope without a Welcome")
    return {e.new_member for e in msg.body.secrets}


def welcome_suite(data: bytes) -> int:
    """The cipher suite of a Welcome (an MLSMessage; see :func:`welcome_refs`)."""
    from ..core.messages.framing import MLSMessage
    from ..core.messages.welcome import Welcome

    msg = MLSMessage.decode(data)
    if not isinstance(msg.body, Welcome):
        raise EnvelopeError("Welcome envelope without a Welcome")
    return int(msg.body.cipher_suite)
