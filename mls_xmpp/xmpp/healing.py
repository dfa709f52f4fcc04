"""Forks: noticing that a group went on without this device, and healing it.

A member can fall out of step with its group: the server drops one Commit for
it alone, or a Commit's path secret was encrypted wrongly to it, or its
archive read ran out of budget. Without help it would stay in the old epoch
for ever. Each :class:`~.session.GroupSession` has a :class:`Healer` that

* **holds early messages** (:class:`EarlyMessages`): a message of a later
  epoch than the group's is kept, within bounds of count, bytes and age, and
  processed after the Commit that starts its epoch;
* **collects evidence** that the group moved on. Envelope epochs (and the
  epoch in an MLSMessage header) are not authenticated: a hostile server can
  write anything there. Such *claims* only make the device re-read the room
  archive and look for proof, at a bounded rate. *Proof* is a GroupInfo of
  this group for a later epoch, signed by a leaf whose signature key is a
  member's in this device's current epoch (or in an already proven tree),
  whose tree verifies (§12.4.3.1) and still holds this device's leaf;
* **heals**: first by re-reading the archive from where the current epoch
  began (messages dropped for their epoch are read again, and a Commit the
  device never received is found); if the device is still behind and has
  proof, by an external Commit from the newest proven GroupInfo that removes
  its own old leaf (RFC 9420 §12.4.3.2, a "resync"; allowed by the group rules
  for accounts already in the group). The application is told with
  ``mls_resynced`` (:class:`~.events.ResyncEvent`).

A Commit this device refused is not proof by itself: an invalid Commit (forged,
or refused by the group's rules) is refused by every honest member, and the
room goes on at the same epoch. docs/PROTOCOL.md §12 states the rule.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.errors import MLSError, ValidationError, WrongEpochError
from ..core.group.join import tree_from_group_info, verify_group_info
from ..core.messages.common import ContentType
from ..core.messages.framing import MLSMessage, PrivateMessage, PublicMessage
from ..core.messages.group_info import GroupInfo
from .envelope import Envelope, Kind
from .errors import TransportError
from .events import MLSErrorEvent, ResyncEvent
from .late import resent_application, wire_header

if TYPE_CHECKING:
    from .session import GroupSession

log = logging.getLogger(__name__)

#: Early messages held at most per group (the oldest beyond are dropped, reported).
HOLD_MAX_MESSAGES = 256
#: Bytes of early messages held at most per group.
HOLD_MAX_BYTES = 4 * 1024 * 1024
#: Seconds an early message is held before it is dropped (its Commit never came).
HOLD_MAX_AGE = 120.0
#: Unauthenticated claims of a later epoch that make the device look for proof.
CLAIMS_TO_PROBE = 2
#: Seconds between two looks for proof made on claims alone; doubles up to the next.
PROBE_DELAY = 5.0
PROBE_DELAY_MAX = 300.0
#: Attempts at an external Commit before giving up until the next evidence.
RESYNC_ATTEMPTS = 3


def wire_epoch(data: bytes, fallback: int) -> int:
    """The epoch an MLSMessage's header names (not authenticated); ``fallback`` if none."""
    try:
        body = MLSMessage.decode(data).body
    except MLSError:
        return fallback
    if isinstance(body, PublicMessage):
        return int(body.content.epoch)
    if isinstance(body, PrivateMessage):
        return int(body.epoch)
    return fallback


@dataclass
class Held:
    """A message of a later epoch, waiting for the Commit that starts it."""

    msg: Any
    stanza_id: str | None
    epoch: int
    size: int
    since: float


class EarlyMessages:
    """Messages of later epochs, held within bounds of count, bytes and age."""

    def __init__(self, *, max_messages: int = HOLD_MAX_MESSAGES,
                 max_bytes: int = HOLD_MAX_BYTES, max_age: float = HOLD_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self.items: list[Held] = []
        #: the archive position before the oldest held message (not stored past it)
        self.before: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def holds(self, stanza_id: str | None) -> bool:
        """Whether a message with this stanza-id is held."""
        return stanza_id is not None and any(h.stanza_id == stanza_id for h in self.items)

    def hold(self, msg: Any, stanza_id: str | None, epoch: int, size: int,
             position: str | None) -> list[Held]:
        """Hold a message; returns those dropped to stay within bounds (maybe itself)."""
        if self.holds(stanza_id):
            return []
        if not self.items:
            self.before = position
        self.items.append(Held(msg, stanza_id, epoch, size, self.clock()))
        dropped = self.expired()
        while self.items and (len(self.items) > self.max_messages
                              or sum(h.size for h in self.items) > self.max_bytes):
            dropped.append(self.items.pop(0))
        if not self.items:
            self.before = None
        return dropped

    def expired(self) -> list[Held]:
        """Remove and return the messages held longer than ``max_age``."""
        limit = self.clock() - self.max_age
        old = [h for h in self.items if h.since < limit]
        if old:
            self.items = [h for h in self.items if h.since >= limit]
            if not self.items:
                self.before = None
        return old

    def due(self, epoch: int) -> list[Held]:
        """Remove and return, in room order, the messages of ``epoch`` or before."""
        out = [h for h in self.items if h.epoch <= epoch]
        self.items = [h for h in self.items if h.epoch > epoch]
        if not self.items:
            self.before = None
        return out

    def clear(self) -> list[Held]:
        """Remove and return everything held."""
        out, self.items, self.before = self.items, [], None
        return out


@dataclass
class Proof:
    """A verified GroupInfo of this group for a later epoch (see the module docstring)."""

    info: GroupInfo
    tree: bytes | None
    stanza_id: str | None
    #: this device's leaf in that epoch's tree (same signature key)
    own_leaf: int
    #: every signature key in that epoch's tree
    keys: frozenset[bytes] = field(default_factory=frozenset)

    @property
    def epoch(self) -> int:
        """The epoch the GroupInfo describes."""
        return int(self.info.group_context.epoch)


class Healer:
    """Per group: early messages, evidence of a gap, and the healing (module docstring)."""

    def __init__(self, session: GroupSession) -> None:
        self.session = session
        self.early = EarlyMessages()
        #: claimed epoch -> how many messages claimed it since this epoch began
        self.claims: dict[int, int] = {}
        #: stanza-ids dropped for their epoch (or refused Commits) in this epoch
        self.gap: list[str] = []
        #: Commits of the current epoch this device refused
        self.refused = 0
        #: where the current epoch began in the archive (in this run of the worker)
        self.epoch_start: str | None = None
        self.proof: Proof | None = None
        self.task: asyncio.Future[None] | None = None
        #: the next heal, started when the one in progress ends
        self.waiting: Any = None
        #: the heal the task was started with
        self._job: Any = None
        #: the highest claimed epoch already looked into without finding proof
        self.probed = -1
        self.delay = PROBE_DELAY
        self.next_probe = 0.0
        #: how many heals ran (for tests and benchmarks)
        self.heals = 0
        #: messages dropped without a report (see :meth:`superseded`)
        self.superseded_count = 0

    # -- what the session tells it ---------------------------------------------------

    def started(self, position: str | None) -> None:
        """The worker starts reading after ``position``."""
        if self.epoch_start is None:
            self.epoch_start = position

    def epoch_changed(self, stanza_id: str | None) -> None:
        """A Commit moved the group on: evidence of the old epoch is void."""
        self.epoch_start = stanza_id
        self.claims.clear()
        self.gap.clear()
        self.refused = 0
        if self.proof is not None and self.proof.epoch <= self.session.epoch:
            self.proof = None

    def position(self, last: str | None) -> str | None:
        """The archive position to store: never past a message still held."""
        return self.early.before if self.early.items else last

    def refused_message(self, env: Envelope, data: bytes, error: MLSError, msg: Any,
                        stanza_id: str | None, position: str | None) -> bool:
        """A room message the group refused. ``True`` when it is held (not dropped)."""
        ours = self.session.epoch
        epoch = wire_epoch(data, env.epoch)
        if isinstance(error, WrongEpochError) and epoch > ours:
            self.claims[epoch] = self.claims.get(epoch, 0) + 1
            held = False
            if stanza_id is not None:  # room messages carry one; others are not held
                for h in self.early.hold(msg, stanza_id, epoch, len(data), position):
                    self._report_lost(h, "more early messages than are held")
                held = self.early.holds(stanza_id)
                if not held:
                    self.gap.append(stanza_id)
            self._consider()
            return held
        if env.kind == Kind.COMMIT and epoch == ours and stanza_id is not None:
            # not proof: an invalid Commit is refused by every honest member too
            self.refused += 1
            self.gap.append(stanza_id)
            self._consider()
        return False

    def superseded(self, data: bytes, error: MLSError) -> bool:
        """Whether a message the group refused for its epoch is one that is dropped
        without a report, since nothing was lost (counted in :attr:`superseded_count`):

        * a Commit or proposal of an epoch that has ended here: the room took another
          Commit for that epoch first (a race, section 9.7 of docs/PROTOCOL.md), which
          every member applied alike; its sender learns it from the winning Commit (a
          committer builds its change again in the new epoch, a leaving member proposes
          again);
        * an application message the room took so late that its sender sends it again
          (:mod:`.late`).

        The header is not authenticated, but a message refused for its epoch changed
        nothing, whatever it claims."""
        if not isinstance(error, WrongEpochError):
            return False
        header = wire_header(data)
        if header is None:
            return False
        epoch, content_type = header
        quiet = (epoch < self.session.epoch
                 and content_type in (ContentType.COMMIT, ContentType.PROPOSAL))
        if quiet or resent_application(data, self.session.epoch):
            self.superseded_count += 1
            return True
        return False

    def group_info_ahead(self, env: Envelope, stanza_id: str | None) -> None:
        """A GroupInfo of a later epoch came from the room: check it, then heal."""
        self._start(self._from_group_info(env, stanza_id))

    def release(self) -> list[Held]:
        """Held messages whose epoch has come (or gone), in room order; expired ones
        are reported."""
        for h in self.early.expired():
            self._report_lost(h, "its epoch's Commit did not come in time")
        return self.early.due(self.session.epoch)

    def forget(self) -> None:
        """Stop any heal in progress (the group stops)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None
        if self._job is not None and inspect.getcoroutinestate(self._job) == inspect.CORO_CREATED:
            self._job.close()  # cancelled before it started: nothing to wait for
        self._job = None
        if self.waiting is not None:
            self.waiting.close()
            self.waiting = None

    # -- deciding ----------------------------------------------------------------------

    def _consider(self) -> None:
        """Claims alone: look for proof now and then, never act on them."""
        if self.proof is not None:
            return
        claimed = max(self.claims, default=-1)
        total = sum(self.claims.values())
        if claimed <= self.probed and not self.refused:
            return
        if total < CLAIMS_TO_PROBE and not (self.refused and total):
            return
        now = time.monotonic()
        if now < self.next_probe:
            return
        self.next_probe = now + self.delay
        self.delay = min(self.delay * 2, PROBE_DELAY_MAX)
        self._start(self._heal(None, claimed))

    def _start(self, job: Any) -> None:
        """Run ``job`` (a coroutine) now, or after the heal in progress (the newest
        waiting job replaces an older one)."""
        if self.task is not None and not self.task.done():
            if self.waiting is not None:
                self.waiting.close()
            self.waiting = job
            return
        self._job = job
        self.task = asyncio.ensure_future(self._guarded(job))

    async def _guarded(self, job: Any) -> None:
        try:
            await job
            while self.waiting is not None:
                job, self.waiting = self.waiting, None
                await job
        except asyncio.CancelledError:
            raise
        except MLSError as e:
            self.session.plugin.error(MLSErrorEvent(f"healing the group failed: {e}",
                                                    self.session, error=e))
        except Exception as e:  # noqa: BLE001 - a background task must report, not vanish
            log.exception("healing %s failed", self.session.room)
            self.session.plugin.error(MLSErrorEvent(f"healing the group failed: {e!r}",
                                                    self.session, error=e))

    async def _from_group_info(self, env: Envelope, stanza_id: str | None) -> None:
        s = self.session
        tree = None
        if env.ratchet_tree is not None:
            tree = await s.plugin.delivery.download(env.ratchet_tree, domains=s.blob_domains())
        try:
            proof = self.verify(self.session.opened_group_info(env), tree, stanza_id)
        except MLSError as e:
            s.plugin.error(MLSErrorEvent(f"a GroupInfo for a later epoch is not proof that "
                                         f"the group moved on: {e}", s, stanza_id=stanza_id,
                                         error=e))
            return
        if proof is None:
            return
        self.proof = proof
        await self._heal(proof, proof.epoch)

    def verify(self, group_info: bytes, tree: bytes | None, stanza_id: str | None,
               also_known: frozenset[bytes] = frozenset()) -> Proof | None:
        """A GroupInfo of this group for a later epoch, checked as proof; ``None`` when it
        is not for a later epoch.

        :raises ValidationError: not signed by a key this device knows as a member's,
            not a valid GroupInfo and tree, or this device's leaf is not in it.
        """
        s = self.session
        body = MLSMessage.decode(group_info).body
        if not isinstance(body, GroupInfo):
            raise ValidationError("not a GroupInfo")
        ctx = body.group_context
        if ctx.group_id != s.group_id:
            raise ValidationError("a GroupInfo of another group")
        if ctx.epoch <= s.epoch:
            return None
        known = {m.signature_key for m in s.group.members} | set(also_known)
        parsed = tree_from_group_info(body, tree, ctx.cipher_suite)
        signer = parsed.leaf(body.signer) if body.signer < parsed.n_leaves else None
        if signer is None or signer.signature_key not in known:
            raise ValidationError("signed by a key that is no member's in this device's "
                                  "epoch (§12.4.3.1)")
        verify_group_info(body, parsed, s.group.config)
        own_key = s.group.state.own_leaf_node().signature_key
        mine = [i for i, leaf in parsed.leaves() if leaf.signature_key == own_key]
        if not mine:
            raise ValidationError("this device's leaf is not in that epoch's tree (it was "
                                  "removed meanwhile): no resync")
        return Proof(body, tree, stanza_id, mine[0],
                     frozenset(leaf.signature_key for _, leaf in parsed.leaves()))

    async def find_proof(self, also_known: frozenset[bytes] = frozenset()) -> Proof | None:
        """The newest GroupInfo in the room's archive that is proof (newest first, down
        to the first one that is not for a later epoch)."""
        s = self.session
        delivery = s.plugin.delivery
        async for batch in delivery.archive_pages_backward(s.room):
            for msg, stanza_id in reversed(batch):
                try:
                    env = delivery.envelope_of(msg, str(msg["from"]))
                except MLSError:
                    continue
                if env is None or env.kind != Kind.GROUP_INFO or env.group_id != s.group_id:
                    continue
                tree = None
                try:
                    if env.ratchet_tree is not None:
                        tree = await delivery.download(env.ratchet_tree,
                                                       domains=s.blob_domains())
                    proof = self.verify(s.opened_group_info(env), tree, stanza_id, also_known)
                except MLSError as e:
                    log.info("%s: GroupInfo %s is no proof: %s", s.room, stanza_id, e)
                    continue
                if proof is None:
                    return None  # the newest valid one is not ahead
                return proof
        return None

    # -- healing -----------------------------------------------------------------------

    def _live(self) -> bool:
        """Whether the group is this device's running group (not suspended, left, or
        replaced): only then is it healed."""
        s = self.session
        return (s.suspended is None and not s.removed
                and s.plugin.sessions.get(s.room) is s)

    async def _heal(self, proof: Proof | None, target: int) -> None:
        s = self.session
        if not self._live():
            return
        before = s.epoch
        started = time.monotonic()
        self.heals += 1
        # 1. the archive, from where this epoch began: a Commit never received, or
        #    messages dropped for their epoch, are read again
        await s.reread(self.epoch_start, list(self.gap))
        if s.epoch >= target or (proof is None and s.epoch > before):
            self.delay = PROBE_DELAY
            self._report(before, "archive", "a Commit this device had missed was read "
                         "from the room archive", started)
            return
        # 2. proof that the group went on: the newest in the archive, or the one seen
        also = proof.keys if proof is not None else frozenset()
        newest = await self.find_proof(also)
        if newest is None or (proof is not None and newest.epoch < proof.epoch):
            newest = proof
        if newest is None or newest.epoch <= s.epoch:
            self.probed = max(self.probed, target)
            log.info("%s: epoch %d claimed, no proof that the group moved on", s.room,
                     target)
            return
        # 3. an external Commit from it, replacing this device's leaf
        for attempt in range(RESYNC_ATTEMPTS):
            if not self._live():
                return
            if await s.resync(newest.info, newest.tree, newest.own_leaf, newest.stanza_id):
                self.delay = PROBE_DELAY
                self._report(before, "external commit",
                             f"this device could not follow the group from epoch {before} "
                             f"(the room is at {newest.epoch}): it rejoined by external "
                             "Commit", started)
                return
            if attempt + 1 < RESYNC_ATTEMPTS:
                again = await self.find_proof(newest.keys)
                newest = again if again is not None else newest
        raise TransportError(f"could not resync with {s.room}: another Commit came first "
                             f"{RESYNC_ATTEMPTS} times")

    def reset(self) -> list[Held]:
        """Forget every piece of evidence (after a resync); returns what was held."""
        self.claims.clear()
        self.gap.clear()
        self.refused = 0
        self.proof = None
        self.probed = -1
        return self.early.clear()

    def _report(self, before: int, how: str, reason: str, started: float) -> None:
        s = self.session
        event = ResyncEvent(s, before, s.epoch, how, reason, time.monotonic() - started)
        log.info("%s healed (%s): epoch %d -> %d", s.room, how, before, s.epoch)
        s.plugin.xmpp.event("mls_resynced", event)

    def _report_lost(self, held: Held, why: str) -> None:
        s = self.session
        err = WrongEpochError(f"a message of epoch {held.epoch} was dropped: {why}")
        s.plugin.error(MLSErrorEvent(str(err), s, str(held.msg["from"]), held.stanza_id,
                                     err))


async def self_ping_rooms(plugin: Any, interval: float) -> None:
    """Every ``interval`` seconds, ask each group's room whether this device is still an
    occupant (XEP-0410 MUC self-ping); a room that dropped it silently (no
    ``unavailable`` presence came) suspends the group, which re-enters the room and
    reads what it missed from the archive (:meth:`XEP_MLS.suspend`)."""
    from slixmpp import JID
    from slixmpp.plugins.xep_0410 import PingStatus

    pinger = plugin.xmpp.plugin["xep_0410"]
    while True:
        await asyncio.sleep(interval)
        for session in list(plugin.sessions.values()):
            if session.suspended is not None or session.removed or not session.ready.is_set():
                continue
            own = JID(f"{session.room}/{plugin.nick(session.room)}")
            status = await pinger.send_self_ping(own,
                                                 timeout=max(1.0, min(interval, 30.0)))
            if status == PingStatus.DISCONNECTED and plugin.sessions.get(session.room) is session:
                plugin.suspend(session, "the room no longer counts this device as an occupant "
                                        "(XEP-0410 self-ping): it dropped it without a word")
