"""Post-compromise security by default, idle devices, and retention (RFC 9750 §8.3, §8.4).

Three duties, all driven by one clock (plugin option ``clock``, injectable so
tests need not wait days) and one periodic check (option ``freshness_interval``):

* **Updates.** Each device sends an update -- an empty Commit with an
  UpdatePath, :meth:`GroupSession.update` -- soon after it joined a group by
  Welcome (always after a join with its last-resort KeyPackage, whose private
  key stays on the device and may have opened other Welcomes; after other
  joins unless ``update_after_join`` is off), and whenever it has sent none for
  ``update_interval`` seconds (a week by default). A Commit rather than an
  Update proposal: it takes effect in the next epoch without waiting for
  another member to commit it, and it refreshes every node on the device's
  direct path, not only its leaf (RFC 9420 §12.4, §16.6).
* **Idle devices.** A leaf whose keys have not changed for ``idle_timeout``
  seconds (90 days by default) is removed by one admin device: the one with
  the lowest leaf index among the devices the group rules allow to remove
  others (the admins; with ``remove = members`` and no admins, any member)
  whose own leaf is not idle. The Commit is an ordinary Remove: the others
  accept it because the group rules allow its committer to remove, never
  because of a clock -- whether a leaf is idle is judged with this device's
  clock and its own record, and only decides *that* this device commits.
  The Commit's ``authenticated_data`` carries a :class:`RemovalNotice` (reason
  "idle", the epoch of the leaf's last update as the committer recorded it,
  and its idle time), which every member can read -- the removed device too,
  since the Commit is in an epoch it still holds -- and reports as
  ``mls_idle_removed`` (:class:`IdleRemovalEvent`).
* **Retention.** Past epochs kept for late messages are deleted once they
  ended ``past_epoch_lifetime`` seconds ago (besides the count bound of the
  group config's ``past_epochs``); a retired last-resort KeyPackage's private
  keys are deleted ``retired_key_lifetime`` seconds after it was retired.

What is kept per group (:class:`GroupFreshness`, in the state store's
``extra`` records, sealed when the store is encrypted): per leaf the epoch of
its last update and when this device saw it; when this device last updated;
a pending post-join update; when each kept past epoch ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from ..core.codec import U8, U16, U32, U64, Struct, Vec
from ..core.errors import DecodeError, MLSError
from ..core.group.events import CommitApplied
from ..core.messages.common import LeafNodeSource
from ..core.messages.credentials import credential_identity
from .errors import NotConnectedError, TransportError
from .events import IdleRemovalEvent, MLSErrorEvent
from .trust import fingerprint

if TYPE_CHECKING:
    from .plugin import XEP_MLS
    from .session import GroupSession

log = logging.getLogger(__name__)

#: The name of a group's :class:`GroupFreshness` record in the state store.
RECORD = "freshness"
#: The name of the account's record of retired last-resort KeyPackages.
RETIRED_RECORD = "retired-last-resort"
#: The tag that opens a :class:`RemovalNotice` in a Commit's authenticated_data.
NOTICE_TAG = 0x4D52  # "MR"
NOTICE_VERSION = 1
#: :attr:`RemovalNotice.reason`: the leaf was idle.
REASON_IDLE = 1
#: Commits one device sends at most for its update after joining when others' Commits
#: keep winning over it (one a round; each lost round doubles the back-off).
UPDATE_AFTER_JOIN_ROUNDS = 6
#: Seconds the first back-off after a lost race spans at least (random in
#: [0.5, 1.5] times this, or the device's slot when longer, doubled each round).
RACE_RETRY_WINDOW = 1.0
#: Seconds one turn of the updates after joining lasts at least, when the device
#: whose turn it is does not update (longer than a Commit takes to reach everyone).
TURN_MIN = 5.0
#: Seconds between two looks of a device waiting for its turn to update
#: (:meth:`Freshness._turn`) at whether a Commit came meanwhile.
TURN_POLL = 0.25


@dataclass(frozen=True)
class RemovedLeaf(Struct):
    """One leaf a :class:`RemovalNotice` covers."""

    leaf_index: Annotated[int, U32]
    last_update_epoch: Annotated[int, U64]
    idle_seconds: Annotated[int, U64]


@dataclass(frozen=True)
class RemovalNotice(Struct):
    """Why a Commit removes leaves: carried in its authenticated_data (RFC 9420 §6).

    ::

        struct {
            uint16 tag = 0x4D52;
            uint8 version = 1;
            uint8 reason;                       /* 1: idle */
            struct {
                uint32 leaf_index;
                uint64 last_update_epoch;       /* as the committer recorded it */
                uint64 idle_seconds;            /* by the committer's clock */
            } leaves<V>;
        } RemovalNotice;

    Informative only: the Commit's validity never depends on it.
    """

    tag: Annotated[int, U16] = NOTICE_TAG
    version: Annotated[int, U8] = NOTICE_VERSION
    reason: Annotated[int, U8] = REASON_IDLE
    leaves: Annotated[tuple[RemovedLeaf, ...], Vec(RemovedLeaf.codec())] = ()

    @classmethod
    def parse(cls, data: bytes) -> RemovalNotice | None:
        """The notice in ``data``, or ``None`` when it holds none (or another version)."""
        if len(data) < 4 or int.from_bytes(data[:2], "big") != NOTICE_TAG:
            return None
        try:
            notice = cls.decode(data)
        except (DecodeError, MLSError):
            return None
        return notice if notice.version == NOTICE_VERSION else None


@dataclass
class LeafSeen:
    """The last update of one leaf: its epoch (shared by all members) and when this
    device saw it (this device's clock)."""

    epoch: int
    seen_at: float
    key: bytes  # 8 bytes of the leaf's signature key (another device there: reset)


@dataclass
class GroupFreshness:
    """What this device keeps per group for updates, idle devices and retention."""

    leaves: dict[int, LeafSeen] = field(default_factory=dict)
    #: when this device's leaf last got fresh keys (a Commit of its with a path)
    own_updated_at: float | None = None
    #: when the update after a join is due (``None``: none pending)
    update_due: float | None = None
    #: past epoch -> when this device left it (for ``past_epoch_lifetime``)
    epochs_ended: dict[int, float] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The stored form: compact and fast, since it is written after every Commit
        (28 bytes a leaf: 1.4 MB for 50,000 members)::

            "MXF1" f64 own_updated_at f64 update_due      (NaN: none)
            u32 n  n * (u64 epoch, f64 ended_at)
            u32 m  m * (u32 leaf, u64 epoch, f64 seen_at, 8 bytes key)
        """
        nan = float("nan")
        head = _HEAD.pack(_MAGIC, nan if self.own_updated_at is None else self.own_updated_at,
                          nan if self.update_due is None else self.update_due,
                          len(self.epochs_ended))
        ended = b"".join(_ENDED.pack(e, t) for e, t in self.epochs_ended.items())
        pack = _LEAF.pack
        leaves = b"".join(pack(i, s.epoch, s.seen_at, s.key)
                          for i, s in self.leaves.items())
        return head + ended + _COUNT.pack(len(self.leaves)) + leaves

    @classmethod
    def decode(cls, data: bytes) -> GroupFreshness:
        """The inverse of :meth:`encode`; :class:`ValueError` when malformed."""
        try:
            magic, own, due, n = _HEAD.unpack_from(data, 0)
            if magic != _MAGIC:
                raise ValueError("not a freshness record")
            pos = _HEAD.size
            ended = {e: t for e, t in _ENDED.iter_unpack(data[pos:pos + n * _ENDED.size])}
            pos += n * _ENDED.size
            (m,) = _COUNT.unpack_from(data, pos)
            pos += _COUNT.size
            body = data[pos:]
            if len(body) != m * _LEAF.size or len(ended) != n:
                raise ValueError("a freshness record of the wrong length")
            leaves = {i: LeafSeen(epoch, seen, key)
                      for i, epoch, seen, key in _LEAF.iter_unpack(body)}
        except struct.error as e:
            raise ValueError(f"a truncated freshness record: {e}") from None
        return cls(leaves=leaves, own_updated_at=None if math.isnan(own) else own,
                   update_due=None if math.isnan(due) else due, epochs_ended=ended)


_MAGIC = b"MXF1"
_HEAD = struct.Struct(">4sddI")
_ENDED = struct.Struct(">Qd")
_COUNT = struct.Struct(">I")
_LEAF = struct.Struct(">IQd8s")


def _key(signature_key: bytes) -> bytes:
    """What tells a leaf's device from another at the same index (8 bytes of its key)."""
    return bytes(signature_key[:8])


class Freshness:
    """The plugin's updates, idle-device removals and retention bounds (module doc)."""

    def __init__(self, plugin: XEP_MLS) -> None:
        self.plugin = plugin
        self._records: dict[bytes, GroupFreshness] = {}
        self._busy: set[bytes] = set()
        #: group id -> when (time.monotonic) this device last applied a Commit there
        self._last_commit: dict[bytes, float] = {}
        #: groups joined with the last-resort KeyPackage: their update waits at most
        #: ``update_join_delay`` (that key may have opened other Welcomes)
        self._last_resort: set[bytes] = set()
        self._loop: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- configuration ----------------------------------------------------------------

    def now(self) -> float:
        """The time (seconds since the Unix epoch) by the ``clock`` option."""
        clock: Callable[[], float] | None = self.plugin.config["clock"]
        return float(clock() if clock is not None else time.time())

    def _seconds(self, name: str) -> float | None:
        value = self.plugin.config[name]
        return None if value is None or float(value) <= 0 else float(value)

    # -- the record of each group -------------------------------------------------------

    def record(self, session: GroupSession) -> GroupFreshness:
        """The group's record (loaded, or started now: every leaf counts as seen now)."""
        gid = session.group_id
        rec = self._records.get(gid)
        if rec is not None:
            return rec
        raw = None
        try:
            raw = self.plugin.state_store.load_extra(gid, RECORD)
        except MLSError as e:
            log.warning("reading the freshness record of %s failed: %s", session.room, e)
        if raw is not None:
            try:
                rec = GroupFreshness.decode(raw)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                log.warning("the freshness record of %s is unreadable (%s): started anew",
                            session.room, e)
        if rec is None:
            now = self.now()
            rec = GroupFreshness(own_updated_at=now)
            for m in session.group.members:
                rec.leaves[m.leaf_index] = LeafSeen(session.epoch, now, _key(m.signature_key))
        self._records[gid] = rec
        return rec

    def save(self, session: GroupSession) -> None:
        """Write the group's record (a failure is reported; the group goes on)."""
        rec = self._records.get(session.group_id)
        if rec is None or session.removed:
            return
        try:
            self.plugin.state_store.save_extra(session.group_id, RECORD, rec.encode())
        except MLSError as e:
            self.plugin.error(MLSErrorEvent(f"saving the update record failed: {e}", session,
                                            error=e))

    def forget(self, group_id: bytes) -> None:
        """The group is gone from this device (its stored record goes with the group)."""
        self._records.pop(group_id, None)
        self._last_commit.pop(group_id, None)
        self._last_resort.discard(group_id)

    # -- hooks -------------------------------------------------------------------------------

    def joined(self, session: GroupSession, *, last_resort: bool) -> None:
        """This device joined ``session`` by Welcome: schedule its first update."""
        self._records.pop(session.group_id, None)
        rec = self.record(session)
        if last_resort or self.plugin.config["update_after_join"]:
            self._last_commit[session.group_id] = time.monotonic()  # the Welcome's
            if last_resort:
                self._last_resort.add(session.group_id)
            rec.update_due = self.now() + self.join_update_delay(session)
            self.save(session)
            self._spawn(self._update_after(session))
        else:
            self.save(session)

    def join_update_window(self, members: int) -> float:
        """Seconds over which the updates after joining a group of ``members`` spread:
        ``update_join_delay``, or ``members`` times ``update_join_spread`` when longer
        (a group made in one go has as many new members wanting to update)."""
        delay = max(0.0, float(self.plugin.config["update_join_delay"] or 0))
        spread = max(0.0, float(self.plugin.config["update_join_spread"] or 0))
        return max(delay, members * spread)

    def join_slot(self, session: GroupSession) -> float:
        """Seconds of one turn: :meth:`join_update_window` over the members."""
        members = sum(1 for _ in session.group.state.tree.leaves())
        return self.join_update_window(members) / max(1, members)

    def waiting_ahead(self, session: GroupSession) -> int:
        """The leaves left of this device's that still hold their KeyPackage's keys
        (not updated since they joined): the updates whose turn comes first. Read
        from the tree, so every member counts alike (in the same epoch)."""
        own = session.group.own_leaf_index
        key_package = LeafNodeSource.KEY_PACKAGE
        return sum(1 for i, leaf in session.group.state.tree.leaves()
                   if i < own and leaf.leaf_node_source == key_package)

    def join_update_delay(self, session: GroupSession) -> float:
        """When (seconds after the last Commit) this device's update after joining
        ``session`` goes if nobody else commits meanwhile: a turn
        (:meth:`join_slot`, at least :data:`TURN_MIN`) for each update ahead of it
        (:meth:`waiting_ahead`), then a random part of a second at most (of a slot
        when shorter); never later than :meth:`join_update_window`. Local
        scheduling only: no member judges a Commit by it. After a join with the
        last-resort KeyPackage, never later than ``update_join_delay``."""
        slot = self.join_slot(session)
        ahead = self.waiting_ahead(session)
        part = random.random()  # noqa: S311 - spreading, not secrecy
        window = self.join_update_window(sum(1 for _ in session.group.state.tree.leaves()))
        if session.group_id in self._last_resort:
            window = min(window, max(0.0, float(self.plugin.config["update_join_delay"] or 0)))
        return min(ahead * max(slot, TURN_MIN) + part * min(slot, RACE_RETRY_WINDOW), window)

    def _update_needed(self, session: GroupSession) -> bool:
        """Whether the update after joining is still to be made: not when a Commit of
        this device with a path, or a committed Update of its leaf, refreshed the
        leaf since (its leaf no longer holds the KeyPackage's keys)."""
        if self.record(session).update_due is None:
            return False
        leaf = session.group.state.tree.leaf(session.group.own_leaf_index)
        if leaf is not None and leaf.leaf_node_source != LeafNodeSource.KEY_PACKAGE:
            self.record(session).update_due = None
            self.save(session)
            return False
        return True

    def created(self, session: GroupSession) -> None:
        """This device created ``session``, or rejoined it by external Commit: its
        leaf is fresh, and what it knew of the others' leaves starts anew."""
        self._records.pop(session.group_id, None)
        self.record(session)
        self.save(session)

    def commit_applied(self, session: GroupSession, event: CommitApplied) -> None:
        """A Commit moved the group on: note whose keys changed, tell why leaves left."""
        self._last_commit[session.group_id] = time.monotonic()
        notice = RemovalNotice.parse(event.authenticated_data) if event.removed else None
        if notice is not None and notice.reason == REASON_IDLE:
            self._report_idle(session, event, notice)
        if event.self_removed:
            self.forget(session.group_id)
            return
        rec = self.record(session)
        now = self.now()
        gone = {m.leaf_index for m in event.removed}
        for i in gone:
            rec.leaves.pop(i, None)
        fresh = list(event.added) + list(event.updated)
        if event.path and event.committer.sender_type == 1:
            fresh += [m for m in session.group.members if m.leaf_index == event.committer.index]
        for m in fresh:
            rec.leaves[m.leaf_index] = LeafSeen(event.epoch, now, _key(m.signature_key))
        own = session.group.own_leaf_index
        if event.path and (event.own or (event.committer.sender_type == 1
                                         and event.committer.index == own)):
            rec.own_updated_at = now
            rec.update_due = None
        if any(m.leaf_index == own for m in event.updated):
            rec.own_updated_at = now
            rec.update_due = None  # an Update proposal of this device, committed
        kept = set(session.group.retained_epochs)
        rec.epochs_ended = {e: t for e, t in rec.epochs_ended.items() if e in kept}
        for e in kept:
            rec.epochs_ended.setdefault(e, now)
        self.save(session)

    def _report_idle(self, session: GroupSession, event: CommitApplied,
                     notice: RemovalNotice) -> None:
        from .session import member_jid

        by_index = {r.leaf_index: r for r in notice.leaves}
        committer = None
        if event.committer.sender_type == 1:
            leaf = session.group.state.tree.leaf(event.committer.index)
            if leaf is not None:
                try:
                    committer = credential_identity(leaf.credential).decode("utf-8", "replace")
                except MLSError:
                    committer = None
        removed = tuple(
            (member_jid(m), fingerprint(m.signature_key),
             by_index[m.leaf_index].last_update_epoch, by_index[m.leaf_index].idle_seconds)
            for m in event.removed if m.leaf_index in by_index)
        if not removed:
            return
        rec = self.record(session)
        disputed = tuple(
            fingerprint(m.signature_key) for m in event.removed
            if m.leaf_index in by_index and m.leaf_index in rec.leaves
            and rec.leaves[m.leaf_index].epoch > by_index[m.leaf_index].last_update_epoch)
        self.plugin.xmpp.event("mls_idle_removed", IdleRemovalEvent(
            session, event.epoch, committer, removed, event.self_removed, disputed))

    # -- the periodic check --------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic check (at every stream start)."""
        interval = self._seconds("freshness_interval")
        if interval is not None and self._loop is None:
            self._loop = asyncio.ensure_future(self._run(interval))

    def stop(self) -> None:
        """Stop the periodic check and pending updates (the stream is gone)."""
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop must not die
                log.exception("the freshness check failed")
                self.plugin.error(MLSErrorEvent(f"{type(e).__name__}: {e}", error=e))

    async def check(self) -> None:
        """One round over every group: retention, due updates, idle removals; and the
        account's retired keys. Failures are reported, never raised."""
        self.expire_retired_keys()
        self.plugin.inbox.expire_recent()
        for session in list(self.plugin.sessions.values()):
            if not self._ready(session) or session.group_id in self._busy:
                continue
            self._busy.add(session.group_id)
            try:
                await self._check_group(session)
            except MLSError as e:
                self.plugin.error(MLSErrorEvent(f"automatic update failed: {e}", session,
                                                error=e))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the check must go on
                log.exception("freshness check of %s failed", session.room)
                self.plugin.error(MLSErrorEvent(f"{type(e).__name__}: {e}", session, error=e))
            finally:
                self._busy.discard(session.group_id)

    def _ready(self, session: GroupSession) -> bool:
        return (self.plugin.connected and session.ready.is_set() and not session.removed
                and session.suspended is None and session.group.active
                and self.plugin.sessions.get(session.room) is session)

    async def _check_group(self, session: GroupSession) -> None:
        await self.expire_past_epochs(session)
        rec = self.record(session)
        now = self.now()
        if await self._remove_idle(session, rec, now):
            return  # that Commit had a path: this device's leaf is fresh too
        interval = self._seconds("update_interval")
        due = rec.update_due is not None and now >= rec.update_due
        stale = (interval is not None
                 and (rec.own_updated_at is None or now - rec.own_updated_at >= interval))
        if due and not stale and not self._update_needed(session):
            return
        if due or stale:
            log.info("automatic update of %s (%s)", session.room,
                     "after joining" if due else "periodic")
            # one Commit: one that loses a race is tried again at the next check
            await session.update(attempts=1 if due else 4)

    async def _update_after(self, session: GroupSession) -> None:
        """The update after joining (:meth:`joined`), when its turn came
        (:meth:`_turn`). Devices that joined together would otherwise update about
        together, and their Commits race (docs/PROTOCOL.md 9.7): each round sends one
        Commit; one that lost (or that finds an earlier Commit of this device still
        waiting for the room) backs off a random, doubling time before the next
        round, up to :data:`UPDATE_AFTER_JOIN_ROUNDS` rounds in all, and only a
        failure of the last round (or any other failure) is reported; ``update_due``
        stays until an update succeeds, so the periodic check tries again after that.
        An update no longer needed (:meth:`_update_needed`) is not sent."""
        slot = self.join_slot(session)
        base = max(RACE_RETRY_WINDOW, slot)
        delay = 0.0
        for round_ in range(UPDATE_AFTER_JOIN_ROUNDS):
            await asyncio.sleep(delay)
            while not self._ready(session):
                if session.removed or self.plugin.sessions.get(session.room) is not session:
                    return
                await asyncio.sleep(0.2)
            await self._turn(session)
            if session.group_id in self._busy:
                return  # the periodic check is at it
            self._busy.add(session.group_id)
            last = round_ + 1 == UPDATE_AFTER_JOIN_ROUNDS
            try:
                if not self._update_needed(session):
                    return  # done meanwhile (a Commit of this device with a path)
                if session.group.pending_commit is not None and not last:
                    # one that timed out may still come back from the room (and then
                    # is this update), else it is given up on the next stream
                    log.info("update after joining %s: a Commit is pending; again later",
                             session.room)
                else:
                    await session.update(attempts=1)
                    return
            except TransportError as e:  # e.g. every attempt lost a Commit race
                if last or isinstance(e, NotConnectedError):
                    self.plugin.error(MLSErrorEvent(f"the update after joining failed: {e}",
                                                    session, error=e))
                    return
                log.info("update after joining %s: %s; again later", session.room, e)
            except MLSError as e:
                self.plugin.error(MLSErrorEvent(f"the update after joining failed: {e}",
                                                session, error=e))
                return
            finally:
                self._busy.discard(session.group_id)
            # back off: random, doubling with each lost round
            delay = base * (2 ** round_) * random.uniform(0.5, 1.5)  # noqa: S311

    async def _turn(self, session: GroupSession) -> None:
        """Wait for this device's turn to update: :meth:`join_update_delay` after the
        last Commit this device applied, counted anew at each Commit. So the new
        members of a group made in one go update one after the other, in leaf
        order, each soon after it applied the one before (no race); one ahead that
        does not update (offline, or with ``update_after_join`` off) holds those
        behind it up by a turn, at most :meth:`join_update_window` after the last
        Commit."""
        start = time.monotonic()
        seen: float | None = None
        delay = 0.0
        while not session.removed:
            last = self._last_commit.get(session.group_id, start)
            if last != seen:  # a Commit came: count anew
                seen, delay = last, self.join_update_delay(session)
            wait = last + delay - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, TURN_POLL))

    # -- idle devices ----------------------------------------------------------------------

    def idle_leaves(self, session: GroupSession, now: float | None = None) -> dict[int, float]:
        """Leaf index -> idle seconds of every leaf idle longer than ``idle_timeout``."""
        timeout = self._seconds("idle_timeout")
        if timeout is None:
            return {}
        now = self.now() if now is None else now
        rec = self.record(session)
        self._reconcile(session, rec, now)
        return {i: now - s.seen_at for i, s in rec.leaves.items()
                if now - s.seen_at > timeout}

    def _reconcile(self, session: GroupSession, rec: GroupFreshness, now: float) -> None:
        """Bring the record in line with the tree (a leaf it missed counts as seen now,
        a leaf no longer there is dropped): once per check, not per Commit, since it
        walks every leaf."""
        members = {m.leaf_index: _key(m.signature_key) for m in session.group.members}
        changed = False
        for i in [i for i in rec.leaves if i not in members]:
            del rec.leaves[i]
            changed = True
        for i, key in members.items():
            seen = rec.leaves.get(i)
            if seen is None or seen.key != key:
                rec.leaves[i] = LeafSeen(session.epoch, now, key)
                changed = True
        if changed:
            self.save(session)

    def is_designated_remover(self, session: GroupSession, idle: dict[int, float]) -> bool:
        """Whether this device is the one to remove idle leaves (see the module doc)."""
        from .rules import Who, rules_of

        try:
            rules = rules_of(session.group.state.context.extensions)
        except MLSError:
            return False
        admins = set(rules.admins)

        def may(identity: bytes) -> bool:
            if rules.remove == Who.ADMINS:
                return identity in admins
            if rules.remove == Who.MEMBERS:
                return identity in admins if admins else True
            return False

        candidates = []
        for m in session.group.members:
            try:
                identity = credential_identity(m.credential)
            except MLSError:
                continue
            if m.leaf_index not in idle and may(identity):
                candidates.append(m.leaf_index)
        return bool(candidates) and min(candidates) == session.group.own_leaf_index

    async def _remove_idle(self, session: GroupSession, rec: GroupFreshness,
                           now: float) -> bool:
        own = session.group.own_leaf_index
        idle = self.idle_leaves(session, now)
        targets = {i: t for i, t in idle.items() if i != own}
        if not targets or not self.is_designated_remover(session, idle):
            return False
        members = {m.leaf_index: m for m in session.group.members}
        leaves = tuple(RemovedLeaf(i, rec.leaves[i].epoch, int(t))
                       for i, t in sorted(targets.items()) if i in members)
        if not leaves:
            return False
        log.info("removing idle devices from %s: leaves %s", session.room,
                 [r.leaf_index for r in leaves])
        await session.remove_idle([members[r.leaf_index].signature_key for r in leaves],
                                  RemovalNotice(leaves=leaves).encode())
        return True

    # -- retention ---------------------------------------------------------------------------

    async def expire_past_epochs(self, session: GroupSession) -> list[int]:
        """Delete the kept secrets of past epochs that ended over ``past_epoch_lifetime``
        seconds ago, in memory and in the store. Returns the epochs deleted."""
        lifetime = self._seconds("past_epoch_lifetime")
        if lifetime is None:
            return []
        rec = self.record(session)
        now = self.now()
        old = [e for e in session.group.retained_epochs
               if now - rec.epochs_ended.setdefault(e, now) > lifetime]
        if not old:
            return []
        async with session.group_lock:
            gone = session.group.forget_past_epochs(old)
            self.plugin.persist(session)  # the whole state: the past epochs are in its base
        for e in gone:
            rec.epochs_ended.pop(e, None)
        self.save(session)
        log.info("%s: the keys of past epochs %s are deleted", session.room, gone)
        return gone

    def retired(self, ref: bytes) -> None:
        """A last-resort KeyPackage was retired now: its keys go after
        ``retired_key_lifetime`` seconds."""
        records = self._retired()
        records[ref.hex()] = self.now()
        self._save_retired(records)

    def expire_retired_keys(self) -> list[bytes]:
        """Delete the private keys of last-resort KeyPackages retired over
        ``retired_key_lifetime`` seconds ago. Returns their refs."""
        lifetime = self._seconds("retired_key_lifetime")
        client = self.plugin.identity
        records = self._retired()
        if lifetime is None or client is None or not records:
            return []
        now = self.now()
        gone = [bytes.fromhex(r) for r, t in records.items() if now - t > lifetime]
        if not gone:
            return []
        for ref in gone:
            if ref not in client.last_resort:  # (not made last resort again meanwhile)
                client.forget_key_package(ref)
            records.pop(ref.hex(), None)
        self.plugin.save_identity()
        self._save_retired(records)
        return gone

    def _retired(self) -> dict[str, float]:
        try:
            raw = self.plugin.state_store.load_extra(b"", RETIRED_RECORD)
            return {} if raw is None else {str(k): float(v) for k, v in json.loads(raw).items()}
        except (MLSError, ValueError, AttributeError) as e:
            log.warning("the record of retired keys is unreadable: %s", e)
            return {}

    def _save_retired(self, records: dict[str, float]) -> None:
        try:
            self.plugin.state_store.save_extra(
                b"", RETIRED_RECORD, json.dumps(records).encode() if records else None)
        except MLSError as e:
            self.plugin.error(MLSErrorEvent(f"saving the retired keys failed: {e}", error=e))
