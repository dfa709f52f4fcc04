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
import contextlib
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from slixmpp import JID
from slixmpp.jid import InvalidJID

from ..core.errors import GroupStateError, MLSError, PolicyError, ValidationError
from ..core.group.client import leaf_device_id
from ..core.group.commit import PendingCommit
from ..core.group.events import ApplicationMessage, CommitApplied, Member, ProposalReceived
from ..core.group.group import Group
from ..core.messages.common import CredentialType
from ..core.messages.credentials import Credential, credential_identity
from ..core.messages.key_package import KeyPackage
from .affiliations import apply_affiliations, counting
from .attachments import upload_attachment
from .blobs import jid_domain, room_server_domains
from .envelope import Attachment, Envelope, Kind, decode_content, encode_content
from .errors import (
    ArchiveBudgetError,
    EnvelopeError,
    GroupClosedError,
    GroupSuspendedError,
    NoKeyPackageError,
    NotConnectedError,
    NotInGroupError,
    RulesError,
    SentNotStoredError,
    TooLargeError,
    TransportError,
    UnknownDeviceError,
    UnknownMemberError,
    UntrustedDeviceError,
)
from .events import MembershipEvent, MLSErrorEvent, MLSMessageEvent, OutboxEvent, ProgressEvent
from .healing import Healer
from .late import LateCopies
from .outbox import FAILED, Outbox, OutboxItem
from .params import follow_parameters
from .privacy import group_info_key, open_group_info, seal_group_info
from .publication import watch_publication
from .removal import send_removal_notices
from .reservation import Reservation
from .room import REPAIRERS, plan_affiliations
from .trust import fingerprint
from .writer import BURST, Unsaved

if TYPE_CHECKING:
    from ..core.messages.proposals import Proposal
    from .plugin import XEP_MLS
    from .reinit import Successor

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SEEN = 4096
#: A leave proposal is sent in at most this many epochs before the device gives up.
LEAVE_ATTEMPTS = 5
#: Additions per Commit; more are made in several Commits (plugin option
#: ``max_adds_per_commit``). 2,000 KeyPackages make a Commit of about 0.6 MB.
MAX_ADDS_PER_COMMIT = 2000
#: From this many leaves (or added members), Commits are built and processed in a
#: thread, so the event loop stays responsive (keepalives, other groups, the UI).
HEAVY_TREE = 256
#: Requests (KeyPackage fetches, affiliation changes) in flight at once.
PARALLEL_REQUESTS = 8
#: Trees up to this size travel inside Welcome/GroupInfo; larger ones by HTTP upload.
TREE_INLINE_LIMIT = 96 * 1024
#: The largest application message :meth:`GroupSession.send` sends (its encoded,
#: padded ``Content``: the body in UTF-8, attachment descriptions and a little
#: more). A message that does not fit one stanza goes by reference (uploaded,
#: ``mls_message_ref``); above this limit ``send`` raises :class:`TooLargeError`
#: and :meth:`GroupSession.send_file` is the way (receivers download up to 64 MiB).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Seconds between looks at the connection while an API call waits for a group.
_POLL = 0.2
#: Streams on which Welcomes the server did not take are sent again, and the seconds
#: waited for each stream.
WELCOME_ATTEMPTS = 5
WELCOME_WAIT = 120.0
#: Seconds the server may take, per Welcome sent, before the round trip after them
#: (:meth:`Delivery.barrier`) counts as lost (plus 10 s; a stream that goes down ends
#: the wait at once): the server answers it after it handled every Welcome, and
#: 2,000 Welcomes to offline accounts took Prosody 0.12 more than 110 s under load
#: (benchmarks/bench_50k.py). Taken as lost, they were all sent again, behind the
#: next Commit, which then missed ``commit_timeout``.
WELCOME_BARRIER_PER_STANZA = 0.25


def welcome_barrier_timeout(count: int) -> float:
    """Seconds to wait for the server to answer after ``count`` Welcomes."""
    return 10.0 + WELCOME_BARRIER_PER_STANZA * count
#: Seconds each member waits after the one before it to repair a lost affiliation.
REPAIR_DELAY = 2.0
#: a queue item that is a call to run in room order (:meth:`GroupSession.in_room_order`)
_CALL = object()
#: Generations of its own application ratchet a sender reserves at once (stored
#: ahead, so that no write is needed before each message; see
#: :meth:`Group.reserve_generations <mls_xmpp.core.group.group.Group.reserve_generations>`).
#: After a crash receivers see a gap of at most this many and keep those keys
#: until their out-of-order window drops them.
RESERVED_GENERATIONS = 32


def member_jid(member: Member) -> str:
    """The bare JID a member's credential names (basic identity or X.509 subjectAltName)."""
    return _jid_of(member.credential)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; a cancelled caller still waits for it to end.

    The caller holds the group's lock, and the thread changes the group: the
    lock must not be released (by the cancellation unwinding) before it is done.
    """
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(job)
            break
        except asyncio.CancelledError:
            if job.done():
                raise
            cancelled = True  # wait on; cancel once the thread has finished
    if cancelled:
        raise asyncio.CancelledError
    return result


def _jid_of(credential: Credential) -> str:
    """A credential's identity as text (a peer's bytes need not be UTF-8).

    Leaves in a group passed the structural credential checks, so an x509
    credential names one JID; a credential that names none shows as ``""``.
    """
    try:
        identity = credential_identity(credential)
    except MLSError:
        return ""
    return identity.decode("utf-8", "replace")


def _bare(jid: str) -> str:
    """The bare form of ``jid`` (normalised); an invalid one as given."""
    try:
        return str(JID(jid).bare)
    except InvalidJID:
        return jid


def _device_of(group: Group, leaf_index: int) -> str:
    """The device name (application_id) of a leaf, as text; ``""`` when it has none."""
    leaf = group.state.tree.leaf(leaf_index)
    device = None if leaf is None else leaf_device_id(leaf)
    return "" if device is None else device.decode("utf-8", "replace")


class Progress:
    """Reports the stages of a long operation as ``mls_progress`` events.

    Within a stage, at most about a hundred reports go out, whatever the total.
    """

    def __init__(self, plugin: XEP_MLS, group: GroupSession | None, operation: str) -> None:
        self.plugin = plugin
        self.group = group
        self.operation = operation
        self.batch = 1
        self.batches = 1
        self._step = 1

    def start(self, stage: str, total: int) -> None:
        """A stage begins (``done == 0``)."""
        self._step = max(1, total // 100)
        self._emit(stage, 0, total)

    def advance(self, stage: str, done: int, total: int) -> None:
        """``done`` of ``total`` items of ``stage`` are finished."""
        if done == total or done % self._step == 0:
            self._emit(stage, done, total)

    def _emit(self, stage: str, done: int, total: int) -> None:
        self.plugin.xmpp.event("mls_progress", ProgressEvent(
            self.group, self.operation, stage, done, total, self.batch, self.batches))


async def fetch_devices(plugin: XEP_MLS, jids: list[str],
                        progress: Progress | None = None, *, suite_id: int | None = None
                        ) -> dict[str, list[KeyPackage]]:
    """One KeyPackage per device of each JID, fetched a few accounts at a time, of
    cipher suite ``suite_id`` (default: this device's first identity's).

    :raises NoKeyPackageError: a JID has no usable KeyPackage (nothing is added then).
    :raises TransportError: a fetch failed.
    """
    keystore = plugin.keystore if suite_id is None else plugin.keystores.get(suite_id)
    if keystore is None:
        raise NotConnectedError("the plugin has not started: no XMPP session yet")
    jids = list(dict.fromkeys(jids))
    found: dict[str, list[KeyPackage]] = {}
    gate = asyncio.Semaphore(PARALLEL_REQUESTS)
    if progress is not None:
        progress.start("key packages", len(jids))

    async def one(jid: str) -> None:
        async with gate:
            found[jid] = [f.key_package for f in await keystore.fetch(jid)]
        if progress is not None:
            progress.advance("key packages", len(found), len(jids))

    await asyncio.gather(*(one(j) for j in jids))
    missing = [j for j in jids if not found.get(j)]
    if missing:
        raise NoKeyPackageError(
            f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no usable "
            "KeyPackage (no MLS client, or all its KeyPackages expired)", tuple(missing))
    return {j: found[j] for j in jids}


class GroupSession:
    """A group as the application sees it: send, add, remove, update, leave."""

    def __init__(self, plugin: XEP_MLS, group: Group, room: str,
                 last_stanza_id: str | None = None, *, first_epoch: int | None = None) -> None:
        self.plugin = plugin
        self.group = group
        self.room = room
        self.last_stanza_id = last_stanza_id
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._seen: deque[str] = deque(maxlen=MAX_SEEN)
        self._seen_set: set[str] = set()
        self._sent: dict[bytes, None] = {}
        self._op_lock = asyncio.Lock()
        #: held while the group's state changes and is written (the change may run
        #: in a thread: nothing else reads or writes the state meanwhile)
        self._group_lock = asyncio.Lock()
        self._commit_waiter: asyncio.Future[tuple[bool, CommitApplied, str | None]] | None = None
        self._inflight: PendingCommit | None = None
        #: the stream (:attr:`XEP_MLS.stream`) the pending Commit was handed to
        self._commit_stream: int | None = None
        self._worker: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.latest_group_info: Envelope | None = None
        #: the epoch of :attr:`latest_group_info` (one a member signed for that epoch)
        self.group_info_epoch: int | None = None
        self._inline_tree = True
        #: the epoch this device joined in: earlier room traffic was never meant for it
        self.first_epoch = first_epoch
        #: a rejoin's external Commit, until the room reflects it
        self.expect_echo: bytes | None = None
        self.echo_result: asyncio.Future[bool] = asyncio.get_event_loop().create_future()
        #: leave proposals sent so far (None: this device is not leaving)
        self._leave_attempts: int | None = None
        #: set when this device was removed from the group (or its leave was committed)
        self.removed = False
        #: why the room does not take this device now (``None``: it does); the group
        #: is kept and the room retried (:meth:`XEP_MLS.suspend`)
        self.suspended: str | None = None
        #: the task re-entering the room while suspended
        self.room_retry: asyncio.Future[None] | None = None
        #: a removal notice kept for when the room refuses this device (:mod:`.removal`)
        self.removal_notice: Envelope | None = None
        #: early messages, epoch gaps and their healing (:mod:`.healing`)
        self.healer = Healer(self)
        #: late messages read whose copy is dropped (mls_xmpp.xmpp.late)
        self.late_copies = LateCopies()
        #: what send() accepted and the room has not reflected yet (see :mod:`.outbox`)
        self._outbox = Outbox(plugin.writer.store, group.group_id, self._outbox_changed)
        #: what changed since the group's last write, written after a burst of room
        #: messages, off the event loop (:meth:`XEP_MLS.persist_later`)
        self.unsaved = Unsaved()
        #: the delayed write of a position only this device's echoes moved
        self.lazy_write: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Future[None] | None = None
        #: what the store holds of the own sending reservation (.reservation)
        self._reserved = Reservation()
        #: the worker was stopped before it finished reading the archive
        self._unread = False
        #: set when a ReInit closed the group: the group that replaces it (:mod:`.reinit`)
        self.successor: Successor | None = None
        #: the room of the group this one replaced by ReInit, if any
        self.predecessor: str | None = None

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

    # -- what the API checks first ---------------------------------------------

    def closed_error(self) -> GroupClosedError:
        """The error of a group a ReInit closed, naming the group that replaces it."""
        successor = self.successor
        room = "" if successor is None else successor.room
        return GroupClosedError(
            f"the group of {self.room} was closed by a ReInit and continues in "
            f"{room or 'a new group'}: use xmpp['mls'].group({room!r})",
            room, b"" if successor is None else successor.group_id)

    def _require_usable(self) -> None:
        """Raise at once when this handle cannot act (see :meth:`_usable`)."""
        if self.successor is not None:
            raise self.closed_error()
        if self.removed or not self.group.active:
            raise NotInGroupError(f"this device is no longer in the group of {self.room}")
        self.plugin.require_connected()
        self._require_member()

    def _require_member(self) -> None:
        """Raise at once when the group cannot take a message, online or not."""
        if self.successor is not None:
            raise self.closed_error()
        if self.removed or not self.group.active:
            raise NotInGroupError(f"this device is no longer in the group of {self.room}")
        if self.suspended is not None:
            raise GroupSuspendedError(
                f"the group of {self.room} is suspended: {self.suspended}; the room is "
                "retried and the group resumes when it takes this device again",
                self.suspended)
        if self.plugin.sessions.get(self.room) is not self:
            raise GroupStateError(
                f"this handle of {self.room} was replaced (the group was rejoined or "
                "forgotten): get the group again with xmpp['mls'].group(room)")

    async def ensure_usable(self) -> None:
        """Wait until the group can act (:meth:`_usable`); raise at once when it cannot."""
        await self._usable()

    async def _usable(self) -> None:
        """Wait until the group has read its archive; raise at once instead when this
        device is no longer in the group (:class:`NotInGroupError`), there is no XMPP
        session (:class:`NotConnectedError`), or the handle is stale."""
        self._require_usable()
        while not self.ready.is_set():
            try:  # look again now and then: a lost stream sets no event this waits on
                await asyncio.wait_for(self.ready.wait(), _POLL)
            except TimeoutError:
                self._require_usable()

    # -- lifecycle --------------------------------------------------------------

    def start(self, *, catch_up: bool = True) -> None:
        """Start the worker; it first reads the room archive after ``last_stanza_id``."""
        if self._worker is None:
            self._observe(self.group.members)
            self._worker = asyncio.ensure_future(self._run(catch_up))

    def _observe(self, members: Iterable[Member]) -> None:
        """Show the trust store these devices; report first keys and key changes.

        Local data: it never decides whether anything is valid.
        """
        members = list(members)
        try:
            changes = self.plugin.trust.observe_many(
                ((member_jid(m), _device_of(self.group, m.leaf_index), m.signature_key)
                 for m in members), self)
        except MLSError as e:  # the store failed: the group goes on, the user is told
            self.plugin.error(MLSErrorEvent(f"the trust store failed: {e}", self, error=e))
            return
        for change in changes:
            self.plugin.xmpp.event("mls_trust", change)
        self._authenticate(members, {(c.jid, c.fingerprint) for c in changes})

    def _authenticate(self, members: list[Member], news: set[tuple[str, str]]) -> None:
        """Judge X.509 members by this device's trust anchors (local, never validity).

        A certificate that does not lead to an anchor (or any, without anchors)
        is reported as ``mls_error`` each time the device is seen; a key seen
        for the first time with such a certificate is also marked distrusted
        (an ``mls_trust`` event), which a later decision of the user overrides.
        """
        for m in members:
            if m.credential.credential_type != CredentialType.X509:
                continue
            try:
                self.plugin.authenticate(m.credential)
            except MLSError as e:
                jid, fp = member_jid(m), fingerprint(m.signature_key)
                self.plugin.error(MLSErrorEvent(
                    f"the certificate of {jid}'s device {fp} is not trusted here (the device "
                    f"stays in the group): {e}", self, jid, error=e))
                if (jid, fp) in news:
                    try:
                        change = self.plugin.trust.distrust(jid, fp)
                    except (KeyError, MLSError) as e2:
                        self.plugin.error(MLSErrorEvent(f"the trust store failed: {e2}", self,
                                                        error=e2))
                        continue
                    self.plugin.xmpp.event("mls_trust", replace(change, group=self))

    async def stop(self) -> None:
        """Stop the worker (and the room retries of a suspended group, and healing)."""
        self.healer.forget()
        if self.room_retry is not None:
            self.room_retry.cancel()
            self.room_retry = None
        await self.stop_worker()

    async def pause(self) -> None:
        """The XMPP stream went down: stop the worker, keep everything else.

        The same object resumes with :meth:`start` on the next stream (after
        reading the archive it missed) or on a resumed one (XEP-0198).
        """
        self._unread = self._unread or not self.ready.is_set()
        self.ready.clear()
        await self.stop()

    def resume(self) -> None:
        """The stream was resumed (XEP-0198): nothing was lost; go on where it stopped."""
        catch_up, self._unread = self._unread, False
        self.start(catch_up=catch_up)

    async def stop_worker(self) -> None:
        """Stop processing room messages (the group is suspended, or stopping)."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self._worker = None
        # what the worker read last is written now (not when it was rolled back)
        await self._settle()

    async def _settle(self) -> None:
        """Write what is unsaved and wait for it (its failure is handled by the plugin)."""
        pending = self.plugin.persist_later(self)
        if pending is not None:
            with contextlib.suppress(MLSError):
                await pending

    @property
    def group_lock(self) -> asyncio.Lock:
        """Held while the group's state changes or is written."""
        return self._group_lock

    def rolled_back(self, group: Group, position: str | None) -> None:
        """The group as last stored replaces the one in memory (a write failed):
        its epoch, its ratchets and its archive position, read again from there."""
        self.group = group
        self.last_stanza_id = position
        self.unsaved.clear()
        self._outbox.restore_stored()  # echoes whose end was not written yet
        self._seen.clear()
        self._seen_set.clear()
        self._inflight = None
        self._commit_waiter = None
        self.healer.reset()
        self.healer.epoch_start = position

    async def save(self) -> None:
        """Write the whole state now, under the group's lock (no change runs meanwhile)."""
        async with self._group_lock:
            self.plugin.persist(self)

    def feed(self, msg: Any, stanza_id: str | None) -> None:
        """Queue a live room message (and its room stanza-id) for the worker."""
        self._queue.put_nowait((msg, stanza_id))

    def in_room_order(self, call: Callable[[], None]) -> None:
        """Run ``call`` once the worker has processed every room message queued before
        it (at once when no worker runs). The room's word about this device (it was
        taken out) comes after the messages the room sent before it, e.g. the Commit
        that removed this device: acted on earlier, it would hide that Commit."""
        worker = self._worker
        if worker is None or worker.done():
            call()
        else:
            self._queue.put_nowait((_CALL, call))

    @property
    def stored_position(self) -> str | None:
        """The archive position to store: the last message processed, but never past a
        message held for a later epoch (a restart reads it again)."""
        return self.healer.position(self.last_stanza_id)

    async def _run(self, catch_up: bool) -> None:
        self.healer.started(self.last_stanza_id)
        try:
            caught_up = not catch_up or await self._catch_up()
            waiter = self._commit_waiter
            # A pending Commit the archive does not hold is given up when it cannot come
            # any more: it was handed to an earlier stream (or process) that is gone, or
            # its committer stopped waiting and the archive was read again. One sent on
            # this stream (a heal re-reading the archive meanwhile, a resumed stream)
            # may still be on its way: given up, its reflection would be a Commit this
            # device cannot process, a fork of its own making.
            gone = (self._commit_stream != self.plugin.stream
                    or (waiter is None and catch_up))
            if caught_up and self.group.pending_commit is not None and catch_up and gone:
                async with self._group_lock:
                    self.group.discard_pending_commit()
                    self._inflight = None
                    self.plugin.persist(self)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(NotConnectedError(
                        "the connection was lost before the room took the Commit; nothing "
                        "changed: call again"))
            if catch_up and caught_up:
                # the archive held every earlier attempt that reached the room (and
                # ended its outbox entry): what is still "sent" on an earlier stream
                # never did (what this stream took may still be on its way: a heal
                # re-reading the archive must not send it twice)
                self._outbox.requeue(self.plugin.stream)
            self._unread = False
            self.plugin.persist_later(self)  # what the archive's messages changed
            self.ready.set()
            self.kick_outbox()
            while True:
                msg, sid = await self._queue.get()
                if msg is _CALL:
                    sid()
                else:
                    await self._handle_safely(msg, sid)
                if self._queue.empty():  # the end of a burst: write what it changed
                    self.plugin.persist_later(self, lazy=True)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the worker must never die silently
            log.exception("group worker for %s crashed", self.room)
            self.plugin.error(MLSErrorEvent(f"worker crashed: {e!r}", self, error=e))

    async def _handle_safely(self, msg: Any, stanza_id: str | None) -> None:
        """:meth:`_handle`, with any unexpected failure reported: one message must not
        stop the group's worker."""
        try:
            await self._handle(msg, stanza_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            log.exception("handling room message %s of %s failed", stanza_id, self.room)
            self.plugin.error(MLSErrorEvent(f"{type(e).__name__}: {e}", self,
                                            stanza_id=stanza_id, error=e))

    async def _catch_up(self, attempts: int = 3) -> bool:
        """Read the room archive after ``last_stanza_id``; retried, since live messages
        processed after a gap would move the position past it for good."""
        for attempt in range(attempts):
            try:
                async for batch in self.plugin.delivery.archive_pages(
                        self.room, after=self.last_stanza_id):
                    for msg, sid in batch:
                        await self._handle_safely(msg, sid)
                return True
            except TransportError as e:
                if attempt == attempts - 1 or isinstance(e, ArchiveBudgetError):
                    self.plugin.error(MLSErrorEvent(f"archive catch-up failed: {e}", self,
                                                    error=e))
                    return False
                await asyncio.sleep(1.0 * (attempt + 1))
        return False

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
        if self.removed:
            return  # queued before the Commit that removed this device: nothing to read
        if self.suspended is not None:
            return  # read again from the archive when the group resumes
        sender = str(msg["from"])
        try:
            env = self.plugin.delivery.envelope_of(msg, sender)
            if env is None:
                return  # a fragment; the rest has not arrived yet
            if env.group_id != self.group_id:
                raise EnvelopeError("envelope names another group")
            if env.kind == Kind.GROUP_INFO:
                ahead = self._accept_group_info(env)
                self._mark(stanza_id)
                self.plugin.persist_position(self)
                if ahead:  # the group may have moved on without this device
                    self.healer.group_info_ahead(env, stanza_id)
                return
            ref = env.mls_message_ref
            if ref is not None and self._reflected(ref.sha256, stanza_id):
                # our own message by reference, reflected: its hash (that of the
                # MLSMessage) is known, so it need not be downloaded
                return
            data = await self._resolve(env)
            if self.expect_echo is not None and env.kind == Kind.COMMIT:
                mine = data == self.expect_echo
                self.expect_echo = None
                if not self.echo_result.done():
                    self.echo_result.set_result(mine)
                if not mine:  # another Commit came first: this rejoin is void
                    self._mark(stanza_id)
                    return
            if self.first_epoch is not None and env.epoch < self.first_epoch:
                self._mark(stanza_id)  # sent before this device joined: not for it
                self.plugin.persist_position(self)
                return
            if self._reflected(hashlib.sha256(data).digest(), stanza_id):
                return  # our own message, reflected by the room
        except MLSError as e:
            self._dropped(e, sender, stanza_id)
            return
        async with self._group_lock:
            parts: tuple[bytes, bytes] | None = None
            try:
                if env.kind == Kind.COMMIT and self._heavy():
                    # off the event loop: the Commit and the encoding of the new state
                    event, parts = await _in_thread(self._process_and_encode, data)
                else:
                    event = self.group.process(data)
            except MLSError as e:
                if not self.healer.refused_message(env, data, e, msg, stanza_id,
                                                   self.last_stanza_id):
                    self._dropped(e, sender, stanza_id,
                                  report=not self.healer.superseded(data, e))
                return  # else held for the Commit that starts its epoch
            self._mark(stanza_id)
            # events first, then the state: a crash in between replays this message
            # after the restart (same stanza-id, for the application to deduplicate)
            # instead of losing it. After an application message the ratchets are
            # written once per burst (when the worker's queue is empty, or every
            # BURST messages), off the event loop: a crash replays up to a burst.
            try:
                self._dispatch(event, stanza_id)
            except Exception as e:  # noqa: BLE001 - the state moved on: save it anyway
                log.exception("dispatching an event of %s failed", self.room)
                self.plugin.error(MLSErrorEvent(f"{type(e).__name__}: {e}", self, sender,
                                                stanza_id, e))
            if isinstance(event, ApplicationMessage) and parts is None:
                self._unsaved_message(ratchets=True)  # only the secret trees changed
            elif parts is not None:
                await self.plugin.persist_off_loop(self, parts)  # a large group's state
            else:
                self.plugin.persist(self)
        if isinstance(event, CommitApplied):
            self.healer.epoch_changed(stanza_id)
            for held in self.healer.release():  # messages that came before this Commit
                await self._handle_safely(held.msg, held.stanza_id)

    def _reflected(self, digest: bytes, stanza_id: str | None) -> bool:
        """Whether the MLSMessage of ``digest`` is this device's own, reflected by the
        room; if so its outbox entry ends (or is queued again when the room took it too
        late, :mod:`.late`) and the archive position moves past it, both written with
        the group's next write (after the burst)."""
        if digest not in self._sent and not self._outbox.holds(digest):
            return False
        again = False
        if self._sent.pop(digest, None) is None:
            # too late for members to read (mls_xmpp.xmpp.late): it goes again
            again = self._outbox.too_late(digest, self.epoch)
            if not again:
                # the entry's deletion is written with the position, after the burst
                self._outbox.reflected(digest, stanza_id, later=self.unsaved.deletes)
        self._mark(stanza_id)
        self._unsaved_message(ratchets=False)
        if again:
            self.kick_outbox()
        return True

    def _unsaved_message(self, *, ratchets: bool) -> None:
        """A room message changed the ratchets (or only the position): written after
        the burst (see :meth:`_run`), or now when the burst is long."""
        unsaved = self.unsaved
        unsaved.position = True
        unsaved.ratchets = unsaved.ratchets or ratchets
        unsaved.messages += 1
        if unsaved.messages >= BURST:
            self.plugin.persist_later(self)

    def _process_and_encode(self, data: bytes) -> tuple[object, tuple[bytes, bytes]]:
        """``group.process`` and the new state's encoding (run in a worker thread)."""
        from ..core.group.serialize import encode_group_parts

        event = self.group.process(data)
        return event, encode_group_parts(self.group)

    def _commit_and_encode(self, add: list[KeyPackage], remove: list[int],
                           **more: Any) -> tuple[PendingCommit, tuple[bytes, bytes]]:
        """``group.commit`` and the state's encoding (run in a worker thread)."""
        from ..core.group.serialize import encode_group_parts

        follow_parameters(self.group)  # pad as the group says
        pending = self.group.commit(add=add, remove=remove, **more)
        return pending, encode_group_parts(self.group)

    def _heavy(self, added: int = 0) -> bool:
        """Whether a Commit in this group is worth a thread (see :data:`HEAVY_TREE`)."""
        return self.group.state.tree.n_leaves >= HEAVY_TREE or added >= HEAVY_TREE // 4

    def _dropped(self, e: MLSError, sender: str, stanza_id: str | None, *,
                 report: bool = True) -> None:
        """Report a room message that changed nothing (unless ``report`` is false), and
        move past it."""
        log.info("dropped room message %s from %s: %s", stanza_id, sender, e)
        self._mark(stanza_id)
        self.plugin.persist_position(self)
        if report:
            self.plugin.error(MLSErrorEvent(f"{type(e).__name__}: {e}", self, sender,
                                            stanza_id, e))

    def blob_domains(self) -> list[str]:
        """The XMPP servers blobs of this group may come from: the room's (the MUC
        service and its parent domain) and every member's (docs/PROTOCOL.md §11.2)."""
        out = room_server_domains(self.room)
        for jid in sorted(self.jids()):
            domain = jid_domain(jid)
            if domain and domain not in out:
                out.append(domain)
        return out

    async def _resolve(self, env: Envelope) -> bytes:
        """The payload bytes, downloaded when sent by reference, within a budget.

        The room's order waits on this, so the budget is short for an application
        message (option ``blob_message_timeout``: a slower one is dropped and
        reported, never retried) and bounded for a handshake message (option
        ``blob_timeout`` for all attempts together). A URL that is not allowed
        is refused without a request (:class:`BlobRefusedError`).
        """
        if env.mls_message_ref is None:
            return env.mls_message
        cfg = self.plugin.config
        delivery = self.plugin.delivery
        domains = self.blob_domains()
        if env.kind == Kind.APPLICATION:
            return await delivery.resolve_payload(
                env, domains=domains, timeout=float(cfg["blob_message_timeout"]))
        deadline = time.monotonic() + float(cfg["blob_timeout"])
        for attempt in range(3):
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TransportError("blob download ran out of time")
                return await delivery.resolve_payload(env, domains=domains, timeout=left)
            except TransportError:
                if attempt == 2 or deadline - time.monotonic() <= 1.0:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def opened_group_info(self, env: Envelope) -> bytes:
        """The MLSMessage of a GROUP_INFO envelope, opened with the group's GroupInfo key.

        :raises EnvelopeError: it is sealed and does not open with this group's key.
        """
        key = group_info_key(self.group.state.context.extensions)
        return open_group_info(key, env.group_id, env.epoch, env.mls_message)

    def _accept_group_info(self, env: Envelope) -> bool:
        """Keep a GroupInfo from the room only if a member signed it for this epoch.

        ``True`` when it claims a later epoch (for the :class:`.Healer` to check).
        """
        from ..core.messages.framing import MLSMessage
        from ..core.messages.group_info import GroupInfo

        body = MLSMessage.decode(self.opened_group_info(env)).body
        if not isinstance(body, GroupInfo):
            raise EnvelopeError("GROUP_INFO envelope without a GroupInfo")
        ctx = body.group_context
        state = self.group.state
        if ctx.group_id != self.group_id:
            return False  # foreign: not an error, just not useful
        if ctx.epoch != state.epoch:
            return ctx.epoch > state.epoch  # stale (not useful), or ahead of this device
        if ctx.tree_hash != state.context.tree_hash or body.signer >= state.tree.n_leaves:
            raise ValidationError("GroupInfo does not describe this epoch's tree")
        signer = state.tree.leaf(body.signer)
        if signer is None:
            raise ValidationError("GroupInfo signed by a blank leaf")
        body.verify_signature(state.suite, signer.signature_key)
        self.latest_group_info, self.group_info_epoch = env, state.epoch
        return False

    # -- healing (see mls_xmpp.xmpp.healing) -----------------------------------------------

    async def reread(self, position: str | None, gap: list[str]) -> None:
        """Read the room archive again after ``position``, the worker stopped meanwhile.

        Messages never received are processed now, and those in ``gap`` (dropped
        for their epoch) are tried again; everything else processed in this run
        is skipped as before.
        """
        await self.stop_worker()
        for stanza_id in gap:
            self._seen_set.discard(stanza_id)
        self.last_stanza_id = position
        self.ready.clear()
        self.start(catch_up=True)
        budget = float(self.plugin.config["archive_timeout"])
        await asyncio.wait_for(self.ready.wait(), 3 * budget + 30.0)

    async def resync(self, info: Any, tree: bytes | None, own_leaf: int,
                     stanza_id: str | None) -> bool:
        """Rejoin by external Commit from ``info`` (a verified GroupInfo of a later
        epoch, at ``stanza_id`` in the archive), removing this device's leaf
        ``own_leaf`` in the same Commit (RFC 9420 §12.4.3.2). The handle stays the
        same object. ``False`` when another Commit came first (nothing changed).
        """
        from ..core.messages.framing import MLSMessage

        identity = self.plugin.client_for(self.group.state.suite.id)
        await self.stop_worker()
        old, old_first = self.group, self.first_epoch
        loop = asyncio.get_running_loop()
        async with self._group_lock:
            group, commit = identity.join_external(MLSMessage(info).encode(),
                                                   ratchet_tree=tree, resync_leaf=own_leaf)
            lost = self.healer.reset()
            self.group = group
            self.first_epoch = info.group_context.epoch + 1
            self.expect_echo = commit
            self.echo_result = loop.create_future()
            self.last_stanza_id = stanza_id
            self._seen.clear()
            self._seen_set.clear()
            self.healer.epoch_start = stanza_id
            self._inflight = None
            waiter = self._commit_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(TransportError(
                    "this device fell behind its group and rejoined it by external "
                    "Commit: the Commit was not made; try again"))
        for held in lost:
            self.healer._report_lost(held, "this device rejoined in a later epoch")
        self.ready.clear()
        self.start(catch_up=True)
        await self.plugin.delivery.send_room(self.room, Envelope(
            kind=Kind.COMMIT, group_id=group.group_id, epoch=info.group_context.epoch,
            mls_message=commit))
        try:
            ok = await asyncio.wait_for(asyncio.shield(self.echo_result),
                                        float(self.plugin.config["commit_timeout"]))
        except TimeoutError:
            ok = False
        if ok:
            await self.save()
            self.plugin.freshness.created(self)  # a new leaf: its keys are fresh
            await self.publish_group_info()
            return True
        # void: another Commit came first; back to the old state (still behind)
        await self.stop_worker()
        async with self._group_lock:
            identity.groups[old.group_id] = old
            self.group, self.first_epoch = old, old_first
            self.expect_echo = None
        self.ready.clear()
        self.start(catch_up=True)
        return False

    def _dispatch(self, event: object, stanza_id: str | None) -> None:
        if isinstance(event, ApplicationMessage):
            try:
                content = decode_content(event.data)
            except MLSError as e:
                self.plugin.error(MLSErrorEvent(f"bad application content: {e}", self,
                                                member_jid(event.sender), stanza_id, e))
                return
            if self.late_copies.repeated(event.sender.signature_key, content.message_id,
                                         event.epoch, self.epoch):
                return  # the copy of a late message read already (mls_xmpp.xmpp.late)
            self.plugin.xmpp.event("mls_message", MLSMessageEvent(
                self, member_jid(event.sender), fingerprint(event.sender.signature_key),
                content.body, event.epoch, content, stanza_id))
        elif isinstance(event, CommitApplied):
            waiter = self._commit_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result((event.own, event, stanza_id))
            elif event.own and self._inflight is not None:
                # merged after the committer stopped waiting: finish its work now
                pending, self._inflight = self._inflight, None
                asyncio.ensure_future(self._finish_late(pending, stanza_id))
            if not event.own and self._inflight is not None:
                # our Commit lost the race; its echo, right behind, is not news
                self._remember_sent(self._inflight.message)
                self._inflight = None
            committer = None
            if event.committer.sender_type == 1:
                leaf = self.group.state.tree.leaf(event.committer.index)
                committer = None if leaf is None else _jid_of(leaf.credential)
            elif event.committer.sender_type == 4 and event.added:  # an external joiner
                committer = member_jid(event.added[-1])
            updated = {member_jid(m) for m in event.updated}
            if event.path and event.committer.sender_type == 1 and committer is not None:
                updated.add(committer)  # its UpdatePath replaced its leaf (§12.4.2)
            self.plugin.xmpp.event("mls_membership", MembershipEvent(
                self, event.epoch, committer,
                tuple(sorted({member_jid(m) for m in event.added})),
                tuple(sorted({member_jid(m) for m in event.removed})),
                tuple(sorted(updated)), event.own,
                tuple((member_jid(m), fingerprint(m.signature_key)) for m in event.added),
                tuple((member_jid(m), fingerprint(m.signature_key)) for m in event.removed)))
            self.plugin.freshness.commit_applied(self, event)  # leaf ages, idle notices
            if not event.self_removed:
                # keys that are new to this group: added devices, updated leaves, and
                # the committer's leaf (its UpdatePath may carry a new signature key)
                seen = list(event.added) + list(event.updated)
                if event.committer.sender_type == 1:
                    seen += [m for m in self.group.members
                             if m.leaf_index == event.committer.index]
                self._observe(seen)
            if not event.own and not event.self_removed:
                # the committer MUST publish the epoch's GroupInfo; if it does not
                committer_leaf = (event.committer.index if event.committer.sender_type == 1
                          else event.added[-1].leaf_index if event.added else None)
                watch_publication(self, committer_leaf)
            if self._leave_attempts is not None and not event.self_removed:
                # the epoch ended without our removal: the proposal died with it
                asyncio.ensure_future(self._retry_leave())
            if event.removed and not event.own and not event.self_removed:
                self._others_removed({member_jid(m) for m in event.removed})
            if event.reinit is not None:  # the group is closed: see mls_xmpp.xmpp.reinit
                self.plugin.reinit.committed(self, event)
            if event.self_removed:
                # the tree is still the one before the Commit: is another device of
                # this account staying in the group?
                me = self.plugin.bare_jid
                gone = {m.leaf_index for m in event.removed}
                others = any(member_jid(m) == me and m.leaf_index not in gone
                             for m in self.group.members)
                self.plugin.group_removed(self, account_still_in=others)
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

    async def _retry_leave(self) -> None:
        try:
            await self._propose_leave()
        except MLSError as e:
            self.plugin.error(MLSErrorEvent(f"proposing to leave again failed: {e}", self,
                                            error=e))

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
                   attachments: tuple[Attachment, ...] = (), durable: bool = True) -> str:
        """Encrypt ``body`` for the group and send it through the room.

        The message goes through the group's outbox (:mod:`.outbox`): it is
        stored first, then encrypted and sent, and it stays there until the
        room reflects it. Offline (no XMPP session) or while the group still
        reads the room archive after a reconnection, it is only stored, and
        sent when the group is back -- once, in the order of the ``send()``
        calls, also after a restart with a persistent store. Its state is
        :meth:`message_state` and ``mls_outbox`` events
        (:class:`~mls_xmpp.xmpp.events.OutboxEvent`). Only messages are kept
        for later: :meth:`add`, :meth:`remove`, :meth:`update` and
        :meth:`leave` raise :class:`NotConnectedError` at once offline.

        A message too large for one stanza is uploaded (HTTP File Upload,
        XEP-0363) and sent by reference; members download and check it. The
        limit is :data:`MAX_MESSAGE_SIZE` (16 MiB of encoded content).

        ``durable=False`` (an explicit choice, for a sender of many messages
        that cannot wait for one store commit each): online, ``send()`` returns
        once the stanza was handed to the stream; the outbox entry is still
        written (in the next commit of the store writer, with whatever queued
        up) but not waited for. Until :meth:`wait_stored` returns, a crash of
        the process may lose such a message without a report (if its stanza had
        not reached the server). Everything else holds as with ``durable=True``:
        no generation is ever used twice (the reservation is written before the
        stanza leaves), a lost stream or failed write is handled and reported
        the same way, and offline the message is stored before ``send()``
        returns. docs/PROTOCOL.md, "Crash and durability".

        :returns: the message's id (``Content.message_id``, random), which
            others may name in ``reply_to``.
        :raises TooLargeError: over :data:`MAX_MESSAGE_SIZE`; nothing was sent
            (share the text with :meth:`send_file` instead).
        :raises NotInGroupError: this device is no longer in the group.
        :raises GroupSuspendedError: the room does not take this device now.
        :raises TransportError: online, the upload of a large message failed
            (the message is not kept).
        :raises SentNotStoredError: the message **was transmitted** (its stanza
            left for the room; the members read it once), but writing its outbox
            entry afterwards failed: **do not send it again**. Its id is in
            ``.message_ids``; the group is suspended until the store takes writes
            again (a :class:`~mls_xmpp.storage.StorageError` subclass).
        :raises StorageError: the state store did not take the message: it was
            not transmitted and is not kept.
        :raises UntrustedDeviceError: the group holds a device the ``refuse_send_to``
            option refuses; nothing was sent.
        """
        self._require_member()
        self._check_trust()
        message_id = secrets.token_hex(12)
        content = encode_content(body, attachments=attachments, thread_id=thread_id,
                                 reply_to=reply_to, message_id=message_id,
                                 timestamp_ms=int(time.time() * 1000),
                                 pad_to=follow_parameters(self.group))
        if len(content) > MAX_MESSAGE_SIZE:
            raise TooLargeError(
                f"the message is {len(content)} bytes encoded, over the limit of "
                f"{MAX_MESSAGE_SIZE}: send it as a file instead, e.g. group.send_file("
                "text.encode(), name='message.txt', media_type='text/plain')")
        online = self._can_send()
        # online, the entry is written by the flush below, already "sent", in the
        # transaction of the ratchets that encrypt it (store_pending: if it was not)
        self._outbox.add(message_id, content, defer_store=online, lazy=not durable)
        if online:
            try:
                await self._flush_outbox()
            except SentNotStoredError as e:
                if message_id in e.message_ids:  # this message left: say so
                    raise SentNotStoredError(
                        f"message {message_id} was transmitted, but writing its outbox "
                        f"entry failed (do not send it again): {e.__cause__ or e}",
                        (message_id,)) from e
                # only others' writes failed (the group's suspension reports it):
                # this message's own fate follows
            finally:
                self._outbox.store_pending(message_id)  # stored before send() returns
            if self._outbox.state(message_id) == FAILED:
                error = self._outbox.error(message_id)
                if isinstance(error, MLSError):
                    raise error
                raise TransportError(f"the message was not sent: {error}")
        return message_id

    async def wait_stored(self) -> None:
        """Return once every message :meth:`send` accepted before this call is in the
        state store (those sent with ``durable=False`` included): from then on a
        crash loses none of them -- each is delivered or reported ``failed``.

        :raises SentNotStoredError: a write failed (a StorageError; the group is
            suspended and rolled back, as for any failed write): the messages it
            names (``.message_ids``) were transmitted -- do not send them again --
            but may be lost in a crash.
        """
        await self._outbox.written()

    @property
    def outbox(self) -> list[OutboxItem]:
        """The messages ``send()`` accepted that the room has not reflected yet, oldest
        first, each ``queued`` (waiting for the stream or the group) or ``sent``."""
        return self._outbox.items

    def message_state(self, message_id: str) -> str | None:
        """Where a message ``send()`` accepted is: ``queued``, ``sent``,
        ``reflected`` (the room has it: delivered) or ``failed``; ``None`` for an
        id this device does not know (or finished long ago)."""
        return self._outbox.state(message_id)

    def _outbox_changed(self, message_id: str, state: str, stanza_id: str | None,
                        error: BaseException | None) -> None:
        self.plugin.xmpp.event("mls_outbox", OutboxEvent(self, message_id, state, stanza_id,
                                                         error))
        if error is not None:
            self.plugin.error(MLSErrorEvent(f"message {message_id} was not sent: {error}", self,
                                            error=error))

    def drop_outbox(self, error: BaseException) -> None:
        """Give up every message still in the outbox (reported ``failed``)."""
        self._outbox.fail_all(error)

    def _can_send(self) -> bool:
        """Whether the outbox may send now: a live stream, the room's archive read, the
        room taking this device, and this the group's handle."""
        return (self.plugin.connected and self.ready.is_set() and self.suspended is None
                and not self.removed and self.group.active
                and self.plugin.sessions.get(self.room) is self)

    def kick_outbox(self) -> None:
        """Send what the outbox holds, in the background, if it may send now."""
        if len(self._outbox) and self._can_send() and (
                self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush_reporting())

    async def _flush_reporting(self) -> None:
        try:
            await self._flush_outbox()
        except MLSError as e:
            self.plugin.error(MLSErrorEvent(f"sending queued messages failed: {e}", self,
                                            error=e))

    async def _flush_outbox(self) -> None:
        """Encrypt and send the queued messages, oldest first (see :meth:`Outbox.flush`)."""
        epoch = self.epoch

        async def encrypt(content: bytes) -> bytes:
            nonlocal epoch
            async with self._group_lock:
                if self.successor is not None:
                    raise self.closed_error()
                if self.removed or not self.group.active:
                    raise NotInGroupError(
                        f"this device is no longer in the group of {self.room}")
                if not self._can_send():
                    raise NotConnectedError("the stream went down")
                follow_parameters(self.group)  # pad as the group says
                # a generation is never reused after a crash: the store holds the
                # own ratchet RESERVED_GENERATIONS ahead, renewed off the event loop
                # when half of it is used, and written before the stanza leaves only
                # when no committed write covers the generation (.reservation;
                # docs/PROTOCOL.md, crash and durability)
                ahead = self._reservation()
                generation = self.group.sending_generation()
                if not self._reserved.covered(self.epoch, generation):
                    await self._reserved.wait_renewal()  # the lock stays held
                renewed = self.group.reserve_generations(ahead, early=ahead // 2)
                write_now = not self._reserved.covered(self.epoch, generation)
                upto = self.group.reserved_generations()
                data = self.group.encrypt(content)  # in the epoch of this moment
                epoch = self.epoch
                if write_now:  # written before the stanza leaves
                    sent = self._outbox.sending(data)  # marked sent in the same commit
                    if self.plugin.persist_ratchets(self, sent):
                        if upto is not None:
                            self._reserved.stored(epoch, upto)
                        if sent is not None:
                            self._outbox.stored_sent(sent)
                elif renewed and upto is not None:  # written off the loop, not waited for
                    self.unsaved.ratchets = True
                    write = self.plugin.persist_later(self)
                    if write is not None:
                        self._reserved.renewing(epoch, upto, write)
            return data

        async def prepare(data: bytes) -> Envelope:
            return await self.plugin.delivery.prepare_room(Envelope(
                kind=Kind.APPLICATION, group_id=self.group_id, epoch=epoch,
                mls_message=data), by_reference=True)

        await self._outbox.flush(
            can_send=self._can_send, encrypt=encrypt, prepare=prepare,
            transmit=lambda env: self.plugin.delivery.send_prepared(self.room, env),
            stream=self.plugin.stream,
            store_later=lambda record: self.plugin.store_sent_later(self, record))
        await asyncio.sleep(0)  # let the stream write

    def _reservation(self) -> int:
        """How many generations a reservation holds: :data:`RESERVED_GENERATIONS`, but
        well inside the gap receivers accept (``max_generation_gap``)."""
        gap = self.group.state.secret_tree.max_generation_gap
        return max(1, min(RESERVED_GENERATIONS, gap // 2))

    def _check_trust(self) -> None:
        """With ``refuse_send_to``, refuse to send to a group holding such devices."""
        refuse = self.plugin.config["refuse_send_to"]
        if refuse is None:
            return
        blocking = self.plugin.trust.blocking(
            ((member_jid(m), fingerprint(m.signature_key)) for m in self.group.members),
            refuse=refuse)
        if blocking:
            names = ", ".join(f"{r.jid} [{r.fingerprint}] ({r.state})" for r in blocking)
            raise UntrustedDeviceError(
                f"not sending to {self.room}: it holds devices that are {refuse}: {names}; "
                "verify them, or remove them with group.remove_device(fingerprint)",
                tuple((r.jid, r.device, r.fingerprint, r.state.value) for r in blocking))

    async def send_file(self, data: bytes, *, name: str = "", media_type: str = "",
                        body: str = "", thread_id: str = "", reply_to: str = "") -> str:
        """Share a file: encrypted and uploaded (HTTP File Upload), sent by reference.

        Members receive it as an attachment of an ``mls_message`` event's
        content and fetch it with ``xmpp.plugin["mls"].download(attachment)``.

        :returns: the message's id.
        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NotInGroupError: this device is no longer in the group.
        :raises TransportError: the upload failed (e.g. over the server's size limit).
        :raises UntrustedDeviceError: the group holds a device the ``refuse_send_to``
            option refuses (nothing was uploaded).
        """
        await self._usable()
        self._check_trust()
        attachment = await upload_attachment(self.plugin.delivery, data, name=name,
                                             media_type=media_type)
        return await self.send(body, thread_id=thread_id, reply_to=reply_to,
                               attachments=(attachment,))

    async def add(self, *jids: str) -> None:
        """Add every device of each user (KeyPackages from their PEP nodes).

        Reports its stages as ``mls_progress`` events (:class:`ProgressEvent`).

        :raises NoKeyPackageError: a user has no usable KeyPackage (nobody is added).
        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NotInGroupError: this device is no longer in the group.
        :raises TransportError: a fetch failed, or the room did not take the Commit.
        """
        await self._usable()
        progress = Progress(self.plugin, self, "add")
        devices = await fetch_devices(self.plugin, list(jids), progress,
                                      suite_id=self.group.state.suite.id)
        await self.add_key_packages([kp for kps in devices.values() for kp in kps],
                                    progress=progress)

    async def add_key_packages(self, key_packages: list[KeyPackage], *,
                               progress: Progress | None = None,
                               proposals: list[Proposal] | None = None) -> None:
        """Add devices whose KeyPackages the application already fetched.

        More than ``max_adds_per_commit`` (plugin option, 2,000 by default)
        are added in several Commits, so that no Commit outgrows what a room
        carries (64 fragments) and each one's work stays bounded.
        ``proposals`` (the reinit PSK of a group that replaces a closed one,
        :mod:`.reinit`) go into the first Commit.
        """
        await self._usable()
        progress = progress or Progress(self.plugin, self, "add")
        size = max(1, int(self.plugin.config["max_adds_per_commit"]))
        batches = [list(key_packages[i:i + size]) for i in range(0, len(key_packages), size)]
        progress.batches = max(1, len(batches))
        for number, batch in enumerate(batches or [[]], 1):
            progress.batch = number
            first = proposals if number == 1 else None
            # the GroupInfo (with the whole tree) once, after the last Commit
            await self._commit(add=batch, progress=progress, proposals=first,
                               reinitialising=bool(first), publish=number == len(batches))

    async def remove(self, *jids: str) -> None:
        """Remove every device of each user (bare JIDs).

        :raises UnknownMemberError: a JID is not a member (nobody is removed).
        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NotInGroupError: this device is no longer in the group.
        """
        await self._usable()
        wanted = {_bare(j) for j in jids}
        present = self.jids()
        unknown = sorted(wanted - present)
        if unknown or not wanted:
            raise UnknownMemberError(f"not a member of the group: {', '.join(unknown) or '-'}")
        keys = [m.signature_key for m in self.group.members if member_jid(m) in wanted]
        await self._commit(remove_keys=keys)

    async def remove_device(self, *fingerprints: str) -> None:
        """Remove single devices (e.g. a lost phone), named by their fingerprint.

        The account stays in the group through its other devices.

        :raises UnknownDeviceError: a fingerprint is not in the group (nothing is removed).
        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NotInGroupError: this device is no longer in the group.
        """
        await self._usable()
        wanted = set(fingerprints)
        present = {fingerprint(m.signature_key): m.signature_key for m in self.group.members}
        unknown = sorted(wanted - set(present))
        if unknown or not wanted:
            raise UnknownDeviceError(
                f"no device in the group has the fingerprint {', '.join(unknown) or '-'}")
        await self._commit(remove_keys=[present[f] for f in wanted])

    async def commit_proposals(self, proposals: list[Proposal]) -> CommitApplied:
        """Commit ``proposals`` by value, alone (others' pending proposals left out).

        :raises RulesError: the group's rules refuse them (nothing was sent).
        """
        return await self._commit(proposals=proposals, include_pending=False)

    async def reinit(self, suite: int, *, allow_downgrade: bool = False,
                     require_all: bool = False) -> GroupSession:
        """Move the group to cipher ``suite`` by ReInit (RFC 9420 §11.2), in a new room.

        Commits a ReInit in this room (closing this group for every member),
        creates the new group and room, and adds every member device that has
        a KeyPackage of ``suite``; those that have none are reported
        (``mls_reinit`` ``stranded``, ``mls_error`` with
        :class:`CannotFollowError`). See :mod:`mls_xmpp.xmpp.reinit`.

        :returns: the new group. This handle then raises :class:`GroupClosedError`.
        :raises RulesError: the group's rules do not let this member reinitialise.
        :raises UnsupportedCipherSuiteError: this device has no identity of ``suite``
            (option ``suites``).
        :raises DowngradeError: ``suite`` ranks below the group's current suite in
            this device's ``suites`` and ``allow_downgrade`` is not set.
        :raises CannotFollowError: with ``require_all``, a member device has no
            KeyPackage of ``suite`` (nothing was sent).
        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises TransportError: the ReInit closed the group but the new group is not
            made yet (the room refused, the stream went down): call again with the
            same ``suite`` to go on where it stopped.
        """
        return await self.plugin.reinit.move(self, suite, allow_downgrade=allow_downgrade,
                                             require_all=require_all)

    async def update(self, *, attempts: int = 4) -> None:
        """Fresh keys for this device: an empty Commit with a path (PCS).

        ``attempts``: how many Commits to send when others' Commits win the race
        (each rebuilt in the new epoch at once).

        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NotInGroupError: this device is no longer in the group.
        :raises TransportError: every attempt lost a race, or the room did not
            reflect the Commit in time.
        """
        await self._usable()
        await self._commit(attempts=attempts)

    async def remove_idle(self, signature_keys: list[bytes], notice: bytes) -> None:
        """Remove devices by signature key with a reason in the Commit's
        authenticated_data (:mod:`.freshness`: idle devices).

        :raises RulesError: the group rules do not allow this device to remove them.
        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NotInGroupError: this device is no longer in the group.
        """
        await self._usable()
        await self._commit(remove_keys=signature_keys, authenticated_data=notice)

    async def leave(self) -> None:
        """Propose this device's removal; another member commits it.

        A proposal lives for one epoch: if a Commit ends the epoch without
        removing this device, the proposal is sent again in the new epoch
        (up to :data:`LEAVE_ATTEMPTS` times in all).

        :raises NotConnectedError: there is no XMPP session (raised at once).
        :raises NotInGroupError: this device is no longer in the group.
        """
        await self._usable()
        self._leave_attempts = 0
        await self._propose_leave()

    async def _propose_leave(self) -> None:
        attempts = self._leave_attempts or 0
        if not self.group.active or attempts >= LEAVE_ATTEMPTS:
            return
        self._leave_attempts = attempts + 1
        async with self._group_lock:
            follow_parameters(self.group)  # pad as the group says
            data = self.group.propose_leave()
            self._remember_sent(data)
            self.plugin.persist(self)
        await self.plugin.delivery.send_room(self.room, Envelope(
            kind=Kind.PROPOSAL, group_id=self.group_id, epoch=self.epoch, mls_message=data))

    async def _commit(self, *, add: list[KeyPackage] | None = None,
                      remove_keys: list[bytes] | None = None,
                      attempts: int = 4, progress: Progress | None = None,
                      proposals: list[Proposal] | None = None,
                      include_pending: bool = True,
                      reinitialising: bool = False,
                      authenticated_data: bytes = b"",
                      publish: bool = True) -> CommitApplied:
        """Commit (with pending proposals), wait for the room, rebuild if another won.

        Removals are named by signature key, so a retry after another Commit
        never removes whoever took over a freed leaf. ``proposals`` go in by
        value (a ReInit, a PSK); ``include_pending=False`` leaves out others'
        proposals (a ReInit must be alone in its Commit, RFC 9420 §12.2).
        ``publish=False`` leaves the GroupInfo to a later Commit (several of one add).
        """
        more: dict[str, Any] = {}
        if proposals or not include_pending or reinitialising:
            more = {"proposals": list(proposals or []), "include_pending": include_pending,
                    "reinitialising": reinitialising}
        if authenticated_data:
            more["authenticated_data"] = authenticated_data
        await self._usable()
        async with self._op_lock:
            add = list(add or [])
            gone = set(remove_keys or [])
            last: Exception | None = None
            for _ in range(attempts):
                async with self._group_lock:
                    self._require_usable()
                    if self.group.pending_commit is not None:
                        raise GroupStateError("an earlier Commit is still waiting for the room")
                    current = {m.signature_key for m in self.group.members}
                    add = [kp for kp in add if kp.leaf_node.signature_key not in current]
                    remove = [m.leaf_index for m in self.group.members if m.signature_key in gone]
                    # the tree after this Commit: today's plus the new leaves
                    estimate = len(self.group.ratchet_tree()) + sum(
                        len(kp.leaf_node.encode()) + 16 for kp in add)
                    self._inline_tree = estimate <= TREE_INLINE_LIMIT
                    self.group.config = replace(self.group.config,
                                                ratchet_tree_in_welcome=self._inline_tree)
                    if progress is not None:
                        progress.start("commit", len(add))
                    parts: tuple[bytes, bytes] | None = None
                    try:
                        if self._heavy(len(add)):
                            pending, parts = await _in_thread(self._commit_and_encode, add,
                                                              remove, **more)
                        else:
                            follow_parameters(self.group)
                            pending = self.group.commit(add=add, remove=remove, **more)
                    except PolicyError as e:  # nothing was sent; the group is unchanged
                        raise RulesError(f"the group's rules refuse this change: {e}") from e
                    if progress is not None:
                        progress.advance("commit", len(add), len(add))
                        progress.start("room", 1)
                    loop = asyncio.get_running_loop()
                    self._commit_waiter = loop.create_future()
                    self._inflight = pending
                    self._commit_stream = self.plugin.stream
                    if parts is not None:  # a large group: written off the event loop
                        await self.plugin.persist_off_loop(self, parts)
                    else:
                        self.plugin.persist(self)
                await self.plugin.delivery.send_room(self.room, Envelope(
                    kind=Kind.COMMIT, group_id=self.group_id, epoch=self.epoch,
                    mls_message=pending.message))
                try:
                    own, event, stanza_id = await asyncio.wait_for(
                        asyncio.shield(self._commit_waiter),
                        float(self.plugin.config["commit_timeout"]))
                except TimeoutError as e:
                    # keep it pending: if the room reflects it later, the worker merges
                    # it and finishes the Welcomes and affiliations then
                    raise TransportError("the room did not reflect the Commit in time") from e
                finally:
                    self._commit_waiter = None
                if own:
                    self._inflight = None
                    if progress is not None:
                        progress.advance("room", 1, 1)
                    if event.reinit is None:  # a ReInit closed the group: nothing follows
                        await self._after_own_commit(pending, stanza_id, progress,
                                                     publish=publish)
                    return event
                # our Commit lost the race: its echo, when it comes, is not news
                self._remember_sent(pending.message)
                last = TransportError("another Commit won; retrying")
            raise TransportError(f"could not commit after {attempts} attempts: {last}")

    async def _finish_late(self, pending: PendingCommit, stanza_id: str | None) -> None:
        if self.successor is not None:
            return  # a late ReInit: the group is closed (see mls_xmpp.xmpp.reinit)
        try:
            await self._after_own_commit(pending, stanza_id)
        except MLSError as e:
            self.plugin.error(MLSErrorEvent(f"finishing a late Commit failed: {e}", self,
                                            error=e))

    async def _after_own_commit(self, pending: PendingCommit, stanza_id: str | None,
                                progress: Progress | None = None, *,
                                publish: bool = True) -> None:
        """Affiliations follow membership; Welcomes go out; the GroupInfo is published."""
        now_jids = self.jids()
        added = {_jid_of(kp.leaf_node.credential) for _, kp in pending.added}
        removed = {_jid_of(leaf.credential) for _, leaf in pending.removed}
        # before the room lets them go: devices of theirs that were away learn it
        await send_removal_notices(self, pending, stanza_id, removed - now_jids)
        await self.reconcile_room(added=added, revoke=removed - now_jids, progress=progress)
        tree_ref = None
        if pending.welcomes and not self._inline_tree:
            # the tree of the epoch the Welcomes open (the group may be further on by now)
            tree = pending.new_state.tree.encode()
            tree_ref = await self.plugin.delivery.upload(tree, "ratchet-tree")
        suite = self.group.state.suite
        by_ref = {kp.ref(suite): kp for _, kp in pending.added}
        welcomes = list(pending.welcomes.items())
        if progress is not None:
            progress.start("welcomes", len(welcomes))
        out: list[tuple[str, Envelope]] = []
        for i, (ref, welcome) in enumerate(welcomes, 1):
            jid = _jid_of(by_ref[ref].leaf_node.credential)
            env = Envelope(kind=Kind.WELCOME, group_id=self.group_id,
                           epoch=int(pending.new_state.epoch), mls_message=welcome,
                           room=self.room, after_stanza_id=stanza_id or "",
                           ratchet_tree=tree_ref)
            try:
                await self.plugin.delivery.send_welcome(jid, env)
                out.append((jid, env))
            except (TransportError, ValueError) as e:  # e.g. not a JID: the others still go
                self.plugin.error(MLSErrorEvent(f"Welcome to {jid}: {e}", self, error=e))
            if progress is not None:
                progress.advance("welcomes", i, len(welcomes))
        if out and not await self.plugin.delivery.barrier(welcome_barrier_timeout(len(out))):
            # the stream went down before the server took them: nobody else sends
            # them, and the added devices would never join
            asyncio.ensure_future(self._resend_welcomes(out))
        if not publish:
            return
        try:
            await self.publish_group_info()
        except TransportError as e:  # for external joins only: the Commit stands
            self.plugin.error(MLSErrorEvent(f"publishing the GroupInfo failed: {e}", self,
                                            error=e))

    async def _resend_welcomes(self, welcomes: list[tuple[str, Envelope]]) -> None:
        """Send Welcomes again on the next streams until the server takes them
        (:data:`WELCOME_ATTEMPTS` streams at most; a Welcome that arrives twice is
        ignored the second time)."""
        for _ in range(WELCOME_ATTEMPTS):
            deadline = time.monotonic() + WELCOME_WAIT
            while not self.plugin.connected:
                if time.monotonic() > deadline or self.plugin.sessions.get(self.room) is not self:
                    break
                await asyncio.sleep(_POLL)
            if not self.plugin.connected:
                continue
            try:
                for jid, env in welcomes:
                    await self.plugin.delivery.send_welcome(jid, env)
            except (TransportError, ValueError) as e:
                self.plugin.error(MLSErrorEvent(f"sending Welcomes again: {e}", self, error=e))
                return
            if await self.plugin.delivery.barrier(welcome_barrier_timeout(len(welcomes))):
                return
        err = TransportError(f"Welcomes to {', '.join(sorted({j for j, _ in welcomes}))} "
                             "could not be sent: the connection kept failing")
        self.plugin.error(MLSErrorEvent(str(err), self, error=err))

    # -- the room follows the group (see mls_xmpp.xmpp.room) ---------------------------

    def _may_change(self, jids: set[str]) -> set[str]:
        """The accounts the group's rules let add or remove members."""
        from .rules import DEFAULT_RULES, Who, rules_of

        try:
            rules = rules_of(self.group.state.context.extensions)
        except MLSError:
            rules = DEFAULT_RULES

        def allowed(who: int, jid: str) -> bool:
            return who == Who.MEMBERS or (who == Who.ADMINS and jid.encode() in rules.admins)

        return {j for j in jids if allowed(rules.add, j) or allowed(rules.remove, j)}

    async def reconcile_room(self, *, added: set[str] | None = None,
                             revoke: set[str] | None = None, only: set[str] | None = None,
                             progress: Progress | None = None) -> None:
        """Make the room's affiliations follow MLS membership, as far as this account's
        own affiliation allows (:func:`~mls_xmpp.xmpp.room.plan_affiliations`).

        Reads the room's owner, admin and member lists (three queries), then
        grants what member accounts lack and revokes ``revoke`` (accounts this
        device's Commit removed); ``only`` limits the changes to those accounts.
        Failures are reported; the MLS change stands.
        """
        if self._own_room_affiliation() in ("member", "none"):
            return  # it can change no affiliation: no need to read the lists
        members = self.jids()
        try:
            current = await self.plugin.delivery.affiliations(self.room)
            changes = plan_affiliations(current, members, self.plugin.bare_jid,
                                        self._may_change(members), revoke=revoke or ())
        except TransportError as e:
            # the lists are unreadable: at least let in whom this Commit added
            self.plugin.error(MLSErrorEvent(f"reading the room's affiliations: {e}", self,
                                            error=e))
            changes = [(j, "member") for j in sorted(added or ())]
            changes += [(j, "none") for j in sorted(revoke or ())]
        if only is not None:
            changes = [(j, a) for j, a in changes if j in only]
        if progress is not None:
            progress.start("affiliations", len(changes))

        def failed(jid: str, e: Exception) -> None:  # the MLS change stands: go on
            self.plugin.error(MLSErrorEvent(f"room affiliation of {jid}: {e}", self, error=e))

        def advance(done: int, total: int) -> None:
            if progress is not None:
                progress.advance("affiliations", done, total)

        known: list[Any] = [None, set()]

        def wanted(jid: str, affiliation: str) -> bool:  # still a member?
            if self.group.state is not known[0]:  # (the member set once per epoch)
                known[:] = [self.group.state, self.jids()]
            return affiliation == "none" or jid in known[1]

        # several items per muc#admin request where the room applies them all
        await apply_affiliations(self.plugin.delivery, self.room, changes, wanted=wanted,
                                 failed=failed, advanced=counting(advance, len(changes)))

    def _own_room_affiliation(self) -> str | None:
        """This device's affiliation as the room last announced it (its presence)."""
        muc = self.plugin.xmpp.plugin["xep_0045"]
        try:
            value = muc.get_jid_property(JID(self.room), self.plugin.nick(self.room),
                                         "affiliation")
        except (InvalidJID, ValueError):
            return None
        return None if value is None else str(value)

    def _others_removed(self, jids: set[str]) -> None:
        """Another member's Commit removed accounts; an admin committer cannot take an
        admin's affiliation, so the room's owner (if this is its device) does."""
        departed = jids - self.jids()
        if departed and self._own_room_affiliation() == "owner":
            asyncio.ensure_future(self.reconcile_room(revoke=departed, only=departed))

    def _repairer_rank(self, lost: str) -> int | None:
        """This device's place among the member devices that could give ``lost`` its
        affiliation back: those whose accounts the group's rules let add or remove (the
        room makes them admins), by leaf index. From the group state alone: nicks are
        opaque (.privacy), so the room's occupant list cannot say whose device is whose."""
        members = sorted(self.group.members, key=lambda m: m.leaf_index)
        able = self._may_change({member_jid(m) for m in members} - {lost})
        eligible = [m.leaf_index for m in members if member_jid(m) in able]
        own = self.group.own_leaf_index
        return eligible.index(own) if own in eligible else None

    async def repair_affiliation(self, jid: str) -> None:
        """The room says member account ``jid`` lost its affiliation: put it back.

        The first :data:`~mls_xmpp.xmpp.room.REPAIRERS` member devices able to
        (by leaf index) do it, each :data:`REPAIR_DELAY` seconds after the one
        before and only if it is still missing: a bounded number of queries
        however large the group, and no single member (e.g. the one that took
        the affiliation) can stop the repair.
        """
        rank = self._repairer_rank(jid)
        if rank is None or rank >= REPAIRERS:
            return
        await asyncio.sleep(REPAIR_DELAY * rank)
        if self.removed or self.suspended is not None or jid not in self.jids():
            return
        await self.reconcile_room(only={jid})

    async def publish_group_info(self) -> None:
        """Send the current GroupInfo (with external_pub) to the room for external joins."""
        async with self._group_lock:  # one epoch's tree and GroupInfo
            tree = self.group.ratchet_tree()
            inline = len(tree) <= TREE_INLINE_LIMIT
            info = self.group.group_info(with_tree=inline)
            key = group_info_key(self.group.state.context.extensions)
            if key is not None:  # sealed: only members read it (.privacy)
                info = seal_group_info(key, self.group_id, self.epoch, info)
            env = Envelope(kind=Kind.GROUP_INFO, group_id=self.group_id, epoch=self.epoch,
                           mls_message=info)
        self.latest_group_info, self.group_info_epoch = env, env.epoch
        await self.plugin.delivery.send_room(self.room, env,
                                             ratchet_tree=None if inline else tree)


Callback = Callable[..., Any]
