"""Welcomes: messages sent to this account directly, live or from its own archive.

A Welcome goes to the bare JID of each new member (one message per device,
all of the account's devices see it; each keeps only those for its own
KeyPackages). A server delivers such a message only to the account's online
resources, and keeps it in offline storage only when none is online: a
device that was away while another device of its account was online finds
its Welcome only in the account's own archive (MAM). :class:`Inbox` handles
both paths, one Welcome at a time, and records how far the archive was read
(the *inbox position*) so a restart reads on from there.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.jid import InvalidJID

from ..core.errors import MLSError
from .blobs import jid_domain, room_server_domains
from .envelope import Envelope, Kind
from .errors import EnvelopeError, TransportError
from .events import MLSErrorEvent
from .session import GroupSession

if TYPE_CHECKING:
    from .plugin import XEP_MLS

#: The archive is read from this long before this device's oldest KeyPackage.
ARCHIVE_SLACK = 24 * 3600
#: Seconds a used KeyPackage's private keys stay in memory (never on disk), for a second
#: Welcome from an adder that fetched the same KeyPackage before it was retracted.
REUSE_GRACE = 600.0


class _PositionUnknown(TransportError):
    """The archive refused the stored position (e.g. that message expired)."""


class Inbox:
    """Joins groups from Welcomes addressed to this account."""

    def __init__(self, plugin: XEP_MLS) -> None:
        self.plugin = plugin
        self._lock = asyncio.Lock()  # the live copy and the archive's, one at a time
        #: KeyPackages a Welcome used: ref -> (bundle, when); memory only, for a while
        self._recent: dict[bytes, tuple[Any, float]] = {}

    async def on_direct(self, msg: Any, archive_id: str | None = None) -> None:
        """A Welcome (or anything else) sent to this account directly; never raises MLSError.

        ``archive_id`` is the message's id in the account's own archive when
        it was read from there (:meth:`fetch`); a live message carries it as
        a stanza-id by the account's bare JID. Either way the inbox position
        moves past the message.
        """
        plugin = self.plugin
        sender = str(msg["from"])
        try:
            env = plugin.delivery.envelope_of(msg, sender)
            if env is None:
                return
            if env.kind != Kind.WELCOME:
                raise EnvelopeError(f"unexpected {env.kind.name} sent directly")
            try:
                await plugin.wait_ready()
            except TimeoutError:
                # not handled: the position stays, and the archive read at the next
                # start finds the message again
                plugin.error(MLSErrorEvent("Welcome left for later: the device is not ready",
                                           sender=sender))
                return
            async with self._lock:
                await self._accept(env, sender)
        except MLSError as e:  # refused for good
            plugin.error(MLSErrorEvent(f"Welcome refused: {e}", sender=sender, error=e))
        position = archive_id or plugin.delivery.own_stanza_id(msg, plugin.bare_jid)
        if position is not None:
            plugin.state_store.save_inbox_position(position)

    async def _accept(self, env: Envelope, sender: str) -> None:
        """Join the group of a Welcome meant for this device; anything else is dropped."""
        plugin = self.plugin
        client = plugin.identity
        assert client is not None
        if any(s.group_id == env.group_id for s in plugin.sessions.values()):
            return  # already in it (a Welcome read twice: live and from the archive)
        try:
            refs = welcome_refs(env.mls_message)
            now = time.monotonic()
            self._recent = {r: (b, t) for r, (b, t) in self._recent.items()
                            if now - t < REUSE_GRACE}
            reused = [r for r in refs if r in self._recent and r not in client.key_packages]
            if not reused and not any(r in client.key_packages for r in refs):
                return  # for another device of this account, or used long ago
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
            try:
                # decrypted and its confirmation tag checked first; only then is a tree
                # sent by reference fetched, and only from the servers of the sender
                # and the room (docs/PROTOCOL.md §11.2)
                opened = client.open_welcome(env.mls_message)
                if opened.group_info.group_context.group_id != env.group_id:
                    raise EnvelopeError("Welcome envelope names another group")
                tree = None
                if env.ratchet_tree is not None:
                    domains = [*room_server_domains(str(room)), jid_domain(sender) or ""]
                    tree = await plugin.delivery.download(env.ratchet_tree, domains=domains)
                group = client.join(opened, ratchet_tree=tree)
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
        except MLSError as e:
            plugin.error(MLSErrorEvent(f"Welcome refused: {e}", sender=sender, error=e))
            return
        if env.group_id != group.group_id:
            del client.groups[group.group_id]
            plugin.error(MLSErrorEvent("Welcome envelope names another group", sender=sender))
            return
        session = GroupSession(plugin, group, str(JID(env.room).bare),
                               env.after_stanza_id or None, first_epoch=group.epoch)
        plugin.sessions[session.room] = session
        plugin.persist(session)
        try:
            await plugin.delivery.join_room(session.room, plugin.nick())
        except TransportError as e:
            plugin.error(MLSErrorEvent(f"joining the room failed: {e}", session, error=e))
        session.start(catch_up=True)
        await plugin.record(session)
        if plugin.keystore is not None:
            asyncio.ensure_future(self._after_join(next(iter(last_resort), None)))
        plugin.xmpp.event("mls_joined", session)

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
        bundles = list(plugin.identity.key_packages.values())
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

    async def _after_join(self, last_resort_used: bytes | None = None) -> None:
        """Retract KeyPackages that were used (retire a used last resort) and top up."""
        plugin = self.plugin
        keystore = plugin.keystore
        assert keystore is not None
        try:
            if last_resort_used is not None:
                await keystore.retire(last_resort_used)
            await keystore.sync_used()
            await keystore.top_up(int(plugin.config["pool_size"]))
            plugin.save_identity()
        except MLSError as e:
            plugin.error(MLSErrorEvent(f"KeyPackage upkeep failed: {e}", error=e))


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
