"""One MLS group carried by one MUC room: ordering, processing, commits.

The room gives every member one order of handshake and application
messages (the Delivery Service of RFC 9420 §3 / RFC 9750). A single worker
task per group processes room messages strictly in that order, deduplicated
by the room's stanza-id. Local operations (commits) run one at a time; a
member's own Commit is merged only when the room reflects it, and a Commit
that lost the race is rebuilt and sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..core.errors import MLSError
from ..core.group.commit import PendingCommit
from ..core.group.events import ApplicationMessage, CommitApplied, Member, ProposalReceived
from ..core.group.group import Group
from ..core.messages.key_package import KeyPackage
from .envelope import Envelope, Kind, decode_content, encode_content
from .errors import TransportError
from .events import MembershipEvent, MLSErrorEvent, MLSMessageEvent

if TYPE_CHECKING:
    from .plugin import XEP_MLS

log = logging.getLogger(__name__)

MAX_SEEN = 4096
#: Trees up to this size travel inside Welcome/GroupInfo; larger ones by HTTP upload.
TREE_INLINE_LIMIT = 96 * 1024


def member_jid(member: Member) -> str:
    """The bare JID a member's basic credential names."""
    return member.credential.identity.decode("utf-8", "replace")


def fingerprint(signature_key: bytes) -> str:
    """A short, comparable fingerprint of a device's signature key."""
    digest = hashlib.sha256(signature_key).hexdigest()
    return " ".join(digest[i:i + 8] for i in range(0, 32, 8))


class GroupSession:
    """A group as the application sees it: send, add, remove, update, leave."""

    def __init__(self, plugin: XEP_MLS, group: Group, room: str,
                 last_stanza_id: str | None = None) -> None:
        self.plugin = plugin
        self.group = group
        self.room = room
        self.last_stanza_id = last_stanza_id
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._seen: deque[str] = deque(maxlen=MAX_SEEN)
        self._seen_set: set[str] = set()
        self._sent: dict[bytes, None] = {}
        self._op_lock = asyncio.Lock()
        self._commit_waiter: asyncio.Future[tuple[bool, CommitApplied]] | None = None
        self._commit_stanza_id: str | None = None
        self._worker: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.latest_group_info: bytes | None = None
        self._inline_tree = True

    # -- what the group is ----------------------------------------------------

    @property
    def group_id(self) -> bytes:
        """The MLS group ID."""
        return self.group.group_id

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return self.group.epoch

    @property
    def members(self) -> list[tuple[str, str, int]]:
        """``(jid, device fingerprint, leaf index)`` of every member device."""
        return [(member_jid(m), fingerprint(m.signature_key), m.leaf_index)
                for m in self.group.members]

    def jids(self) -> set[str]:
        """The bare JIDs in the group."""
        return {member_jid(m) for m in self.group.members}

    def __repr__(self) -> str:
        return f"GroupSession({self.room}, epoch={self.epoch})"

    # -- lifecycle --------------------------------------------------------------

    def start(self, *, catch_up: bool = True) -> None:
        """Start the worker; it first reads the room archive after ``last_stanza_id``."""
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._run(catch_up))

    async def stop(self) -> None:
        """Stop the worker."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self._worker = None

    def feed(self, msg: Any, stanza_id: str | None) -> None:
        """Queue a live room message (and its room stanza-id) for the worker."""
        self._queue.put_nowait((msg, stanza_id))

    async def _run(self, catch_up: bool) -> None:
        try:
            if catch_up:
                try:
                    for msg, sid in await self.plugin.delivery.fetch_archive(
                            self.room, after=self.last_stanza_id):
                        await self._handle(msg, sid)
                except TransportError as e:
                    self.plugin.error(MLSErrorEvent(f"archive catch-up failed: {e}", self,
                                                    error=e))
            self.ready.set()
            while True:
                msg, sid = await self._queue.get()
                await self._handle(msg, sid)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the worker must never die silently
            log.exception("group worker for %s crashed", self.room)
            self.plugin.error(MLSErrorEvent(f"worker crashed: {e!r}", self, error=e))

    # -- processing in room order -------------------------------------------------

    def _mark(self, stanza_id: str | None) -> None:
        if stanza_id is None:
            return
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(stanza_id)
        self._seen_set.add(stanza_id)
        self.last_stanza_id = stanza_id

    async def _handle(self, msg: Any, stanza_id: str | None) -> None:
        """Process one room message; any failure is reported and changes nothing."""
        if stanza_id is not None and stanza_id in self._seen_set:
            return
        sender = str(msg["from"])
        try:
            env = self.plugin.delivery.envelope_of(msg, sender)
            if env is None:
                return  # a fragment; the rest has not arrived yet
            if env.group_id != self.group_id:
                raise TransportError("envelope names another group")
            if env.kind == Kind.GROUP_INFO:
                self.latest_group_info = env.mls_message
                self._mark(stanza_id)
                self.plugin.persist(self)
                return
            data = await self.plugin.delivery.resolve_payload(env)
            digest = hashlib.sha256(data).digest()
            if digest in self._sent:
                del self._sent[digest]  # our own message, reflected by the room
                self._mark(stanza_id)
                self.plugin.persist(self)
                return
            self._commit_stanza_id = stanza_id
            event = self.group.process(data)
        except MLSError as e:
            log.info("dropped room message %s from %s: %s", stanza_id, sender, e)
            self._mark(stanza_id)
            self.plugin.persist(self)
            self.plugin.error(MLSErrorEvent(f"{type(e).__name__}: {e}", self, sender,
                                            stanza_id, e))
            return
        self._mark(stanza_id)
        self.plugin.persist(self)
        self._dispatch(event, stanza_id)

    def _dispatch(self, event: object, stanza_id: str | None) -> None:
        if isinstance(event, ApplicationMessage):
            try:
                content = decode_content(event.data)
            except MLSError as e:
                self.plugin.error(MLSErrorEvent(f"bad application content: {e}", self,
                                                member_jid(event.sender), stanza_id, e))
                return
            self.plugin.xmpp.event("mls_message", MLSMessageEvent(
                self, member_jid(event.sender), fingerprint(event.sender.signature_key),
                content.body, event.epoch, content, stanza_id))
        elif isinstance(event, CommitApplied):
            waiter = self._commit_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result((event.own, event))
            committer = None
            if event.committer.sender_type == 1:
                leaf = self.group.state.tree.leaf(event.committer.index)
                committer = None if leaf is None else leaf.credential.identity.decode()
            self.plugin.xmpp.event("mls_membership", MembershipEvent(
                self, event.epoch, committer,
                tuple(sorted({member_jid(m) for m in event.added})),
                tuple(sorted({member_jid(m) for m in event.removed})),
                tuple(sorted({member_jid(m) for m in event.updated})), event.own))
            if event.self_removed:
                self.plugin.group_removed(self)
        elif isinstance(event, ProposalReceived):
            self.plugin.xmpp.event("mls_proposal", event)
            if self._designated_committer():
                asyncio.ensure_future(self._commit_pending_proposals())

    def _designated_committer(self) -> bool:
        """The lowest remaining leaf commits others' proposals, so commits rarely race."""
        removing = {p.proposal.removed for p in self.group.state.proposals.values()
                    if hasattr(p.proposal, "removed")}
        for m in self.group.members:
            if m.leaf_index not in removing:
                return m.leaf_index == self.group.own_leaf_index
        return False

    async def _commit_pending_proposals(self) -> None:
        try:
            if self.group.state.proposals and self.group.active:
                await self._commit()
        except MLSError as e:
            self.plugin.error(MLSErrorEvent(f"committing proposals failed: {e}", self, error=e))

    # -- sending ----------------------------------------------------------------

    def _remember_sent(self, data: bytes) -> None:
        self._sent[hashlib.sha256(data).digest()] = None
        while len(self._sent) > MAX_SEEN:
            del self._sent[next(iter(self._sent))]

    async def send(self, body: str, *, thread_id: str = "", reply_to: str = "",
                   attachments: tuple[Any, ...] = ()) -> None:
        """Encrypt ``body`` for the group and send it through the room."""
        await self.ready.wait()
        content = encode_content(body, attachments=attachments, thread_id=thread_id,
                                 reply_to=reply_to, pad_to=self.group.config.pad_to)
        data = self.group.encrypt(content)
        self._remember_sent(data)
        self.plugin.persist(self)
        await self.plugin.delivery.send_room(self.room, Envelope(
            kind=Kind.APPLICATION, group_id=self.group_id, epoch=self.epoch, mls_message=data))

    async def add(self, *jids: str) -> None:
        """Add every device of each user (KeyPackages from their PEP nodes)."""
        key_packages: list[KeyPackage] = []
        keystore = self.plugin.keystore
        if keystore is None:
            raise TransportError("the plugin has not started")
        for jid in jids:
            found = await keystore.fetch(jid)
            if not found:
                raise TransportError(f"{jid} has no usable KeyPackage")
            key_packages += [v.key_package for v in found]
        await self._commit(add=key_packages)

    async def remove(self, *jids: str) -> None:
        """Remove every device of each user."""
        wanted = set(jids)
        leaves = [m.leaf_index for m in self.group.members if member_jid(m) in wanted]
        if not leaves:
            raise TransportError("none of these JIDs is in the group")
        await self._commit(remove=leaves)

    async def update(self) -> None:
        """Fresh keys for this device: an empty Commit with a path (PCS)."""
        await self._commit()

    async def leave(self) -> None:
        """Propose this device's removal; another member commits it."""
        await self.ready.wait()
        data = self.group.propose_leave()
        self._remember_sent(data)
        await self.plugin.delivery.send_room(self.room, Envelope(
            kind=Kind.PROPOSAL, group_id=self.group_id, epoch=self.epoch, mls_message=data))

    async def _commit(self, *, add: list[KeyPackage] | None = None,
                      remove: list[int] | None = None, attempts: int = 4) -> CommitApplied:
        await self.ready.wait()
        async with self._op_lock:
            add = list(add or [])
            remove = list(remove or [])
            last: Exception | None = None
            for _ in range(attempts):
                current = {m.signature_key for m in self.group.members}
                add = [kp for kp in add if kp.leaf_node.signature_key not in current]
                leaves = {m.leaf_index for m in self.group.members}
                remove = [i for i in remove if i in leaves]
                self._inline_tree = len(self.group.ratchet_tree()) <= TREE_INLINE_LIMIT
                self.group.config = replace(self.group.config,
                                            ratchet_tree_in_welcome=self._inline_tree)
                pending = self.group.commit(add=add, remove=remove)
                loop = asyncio.get_running_loop()
                self._commit_waiter = loop.create_future()
                self.plugin.persist(self)
                await self.plugin.delivery.send_room(self.room, Envelope(
                    kind=Kind.COMMIT, group_id=self.group_id, epoch=self.epoch,
                    mls_message=pending.message))
                try:
                    own, event = await asyncio.wait_for(self._commit_waiter,
                                                        self.plugin.commit_timeout)
                except TimeoutError as e:
                    last = TransportError("the room did not reflect the Commit in time")
                    raise last from e
                finally:
                    self._commit_waiter = None
                if own:
                    await self._after_own_commit(pending, self._commit_stanza_id)
                    return event
                last = TransportError("another Commit won; retrying")
            raise TransportError(f"could not commit after {attempts} attempts: {last}")

    async def _after_own_commit(self, pending: PendingCommit, stanza_id: str | None) -> None:
        """Affiliations follow membership; Welcomes go out; the GroupInfo is published."""
        now_jids = self.jids()
        added = {kp.leaf_node.credential.identity.decode() for _, kp in pending.added}
        removed = {leaf.credential.identity.decode() for _, leaf in pending.removed}
        for jid in sorted(added):
            await self.plugin.delivery.set_affiliation(self.room, jid, "owner")
        for jid in sorted(removed - now_jids):
            await self.plugin.delivery.set_affiliation(self.room, jid, "none")
        for ref, welcome in pending.welcomes.items():
            kp = next(k for _, k in pending.added if k.ref(self.group.state.suite) == ref)
            jid = kp.leaf_node.credential.identity.decode()
            await self.plugin.delivery.send_welcome(jid, Envelope(
                kind=Kind.WELCOME, group_id=self.group_id, epoch=self.epoch,
                mls_message=welcome, room=self.room, after_stanza_id=stanza_id or ""),
                ratchet_tree=None if self._inline_tree else self.group.ratchet_tree())
        await self.publish_group_info()

    async def publish_group_info(self) -> None:
        """Send the current GroupInfo (with external_pub) to the room for external joins."""
        tree = self.group.ratchet_tree()
        inline = len(tree) <= TREE_INLINE_LIMIT
        info = self.group.group_info(with_tree=inline)
        self.latest_group_info = info
        await self.plugin.delivery.send_room(self.room, Envelope(
            kind=Kind.GROUP_INFO, group_id=self.group_id, epoch=self.epoch, mls_message=info),
            ratchet_tree=None if inline else tree)


Callback = Callable[..., Any]
