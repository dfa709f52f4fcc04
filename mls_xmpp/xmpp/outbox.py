"""The outbox: what ``send()`` accepted, kept until the room reflects it.

A message goes through three states, each reported as an ``mls_outbox``
event (:class:`~mls_xmpp.xmpp.events.OutboxEvent`) and readable with
:meth:`GroupSession.message_state <mls_xmpp.xmpp.session.GroupSession.message_state>`:

``queued``
    Accepted by ``send()`` and written to the state store (its plaintext
    ``Content``, sealed when the store is encrypted), not yet encrypted. A
    message sent while the device is offline, or while its group is still
    reading the room archive, waits here. Online, ``send()`` encrypts at once
    and writes the entry only after its stanza has left, already ``sent``
    (off the event loop, :meth:`Outbox.flush` ``store_later``); either way
    it is in the store before ``send()`` returns.
``sent``
    Encrypted in the epoch of that moment and handed to the XMPP stream; the
    SHA-256 of the MLSMessage and that epoch are stored with the entry.
``reflected``
    The room sent it back (live or in its archive): every member can read it
    in the room's order. The entry is gone from the store. (Unless the room
    took it so late that members no longer keep the keys of its epoch: then
    it is ``queued`` again and sent anew, see :mod:`.late`.)

A message that cannot be sent at all (this device left the group, an upload
of a large message failed) ends ``failed`` and is reported.

Exactly once: an entry already in the store is marked ``sent`` (its digest
written) before the stanza goes out or a large message is uploaded -- in the
transaction of the ratchet state that encrypted it when that is written
(a new reservation of generations, ``Group.reserve_generations``), else
alone. An entry not in the store yet (``send()`` online) is written ``sent``
after its stanza left, and ``send()`` returns once that committed: a crash
in between loses a message whose ``send()`` had not returned, sent once at
most. An entry whose stanza
then did not go out (the stream fell, the upload failed) is ``queued`` again
in memory while the store still says ``sent``: after a restart it is treated
as one that never reached the room, below. After a new XMPP stream (a reconnection, a restart), the
group reads the room archive first; a reflection found there ends its entry
(even after a restart: the digest is in the store), and only the entries still
``sent`` afterwards -- those that never reached the room -- are queued again
and encrypted anew, in order, in the current epoch. A stream resumed by
XEP-0198 needs none of this: the stream itself resends what the server did
not acknowledge.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from ..core.errors import MLSError
from ..storage import OutboxRecord, StateStore, StorageError
from .errors import NotConnectedError, SentNotStoredError
from .late import sent_too_late, wire_header

__all__ = ["FAILED", "QUEUED", "REFLECTED", "SENT", "Outbox", "OutboxItem"]

QUEUED = "queued"
SENT = "sent"
REFLECTED = "reflected"
FAILED = "failed"

#: Finished messages whose state is still answered (the most recent ones).
MAX_FINISHED = 4096


@dataclass(frozen=True)
class OutboxItem:
    """One message of a group's outbox, as :attr:`GroupSession.outbox` lists it.

    Attributes:
        message_id: the id ``send()`` returned.
        state: ``queued`` or ``sent`` (reflected ones have left the outbox).
    """

    message_id: str
    state: str


#: ``notify(message_id, state, stanza_id, error)``: report a change of state.
Notify = Callable[[str, str, "str | None", "BaseException | None"], None]


class Outbox:
    """One group's outbox, mirrored in the state store.

    It is given the store and a callback, not the plugin: the session that
    owns it decides when it may send (see :meth:`flush`).
    """

    def __init__(self, store: StateStore, group_id: bytes, notify: Notify) -> None:
        self._store = store
        self._group_id = group_id
        self._notify = notify
        self._entries: list[OutboxRecord] = list(store.load_outbox(group_id))
        self._finished: OrderedDict[str, tuple[str, BaseException | None]] = OrderedDict()
        #: message id -> the stream a ``sent`` entry was handed to (in this process)
        self._streams: dict[str, int] = {}
        #: held while entries are encrypted and sent: one flush at a time, in order
        self.lock = asyncio.Lock()
        #: the entry a flush is encrypting now, and its ``sent`` record once the
        #: encryption stored it (see :meth:`sending`)
        self._encrypting: OutboxRecord | None = None
        self._stored_sent: OutboxRecord | None = None
        #: ids of entries accepted with ``defer_store`` and not written yet
        self._unstored: set[str] = set()
        #: ids of entries accepted with ``lazy``: a flush does not wait for their write
        self._lazy: set[str] = set()
        #: message id -> the submitted write of a ``lazy`` entry, until it ended
        self._writing: dict[str, asyncio.Future[None]] = {}

    # -- what is in it -----------------------------------------------------------------

    @property
    def items(self) -> list[OutboxItem]:
        """The messages not yet reflected by the room, oldest first."""
        return [OutboxItem(e.message_id, QUEUED if e.sent_digest is None else SENT)
                for e in self._entries]

    def state(self, message_id: str) -> str | None:
        """``queued``, ``sent``, ``reflected`` or ``failed``; ``None`` when unknown
        (never accepted here, or finished long ago)."""
        for e in self._entries:
            if e.message_id == message_id:
                return QUEUED if e.sent_digest is None else SENT
        done = self._finished.get(message_id)
        return None if done is None else done[0]

    def error(self, message_id: str) -> BaseException | None:
        """Why a ``failed`` message was given up."""
        done = self._finished.get(message_id)
        return None if done is None else done[1]

    def __len__(self) -> int:
        return len(self._entries)

    # -- changes ------------------------------------------------------------------------

    def add(self, message_id: str, content: bytes, *, defer_store: bool = False,
            lazy: bool = False) -> None:
        """Accept a message: stored (durably) before this returns.

        With ``defer_store``, it is only kept in memory here, for a :meth:`flush`
        that follows at once to write it already ``sent``, in the transaction of
        the ratchets that encrypt it (one commit instead of two); the caller then
        calls :meth:`store_pending` before it reports the message accepted, which
        writes it ``queued`` if the flush did not.

        ``lazy`` (with ``defer_store``): a flush that sends it submits its write
        after the stanza left but does not wait for it (``send(durable=False)``);
        :meth:`written` waits for such writes.

        :raises StorageError: the store refused it (then it was not accepted).
        """
        seq = self._entries[-1].seq + 1 if self._entries else 0
        record = OutboxRecord(self._group_id, seq, message_id, content)
        if defer_store:
            self._unstored.add(message_id)
            if lazy:
                self._lazy.add(message_id)
        else:
            self._store.save_outbox(record)
        self._entries.append(record)
        self._notify(message_id, QUEUED, None, None)

    def store_pending(self, message_id: str) -> None:
        """Write the entry :meth:`add` kept in memory (``defer_store``), unless a flush
        wrote it already or it has finished.

        :raises StorageError: the store refused it; the entry is given up
            (reported ``failed``), the message was not accepted.
        """
        if message_id not in self._unstored or message_id in self._writing:
            return  # written, or its write submitted (lazy)
        self._unstored.discard(message_id)
        self._lazy.discard(message_id)
        for e in self._entries:
            if e.message_id == message_id:
                try:
                    self._store.save_outbox(e)
                except MLSError as err:
                    self._fail(e, err)
                    raise
                return

    async def written(self) -> None:
        """Wait until the writes submitted so far for ``lazy`` entries have ended.

        :raises SentNotStoredError: one of them failed (the first error, once all
            ended; a StorageError): those messages were transmitted all the same.
        """
        first: BaseException | None = None
        unstored: list[str] = []
        for message_id, write in list(self._writing.items()):
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                if not write.cancelled():
                    raise  # this wait was cancelled
            except BaseException as e:  # noqa: BLE001 - raised below, after the rest
                first = first or e
                unstored.append(message_id)
            if self._writing.get(message_id) is write:  # ended: raised once
                del self._writing[message_id]
        _raise_first(first, unstored)

    def _write_in_background(self, message_id: str, write: Awaitable[None]) -> None:
        """A ``lazy`` entry's submitted write: kept for :meth:`written`, not waited for."""
        future = asyncio.ensure_future(write)
        self._writing[message_id] = future

        def done(f: asyncio.Future[None]) -> None:
            if self._writing.get(message_id) is f:
                del self._writing[message_id]
            self._unstored.discard(message_id)
            self._lazy.discard(message_id)
            if not f.cancelled():
                f.exception()  # retrieved: a failure is reported by the write's callback
        future.add_done_callback(done)

    def holds(self, digest: bytes) -> bool:
        """Whether an entry was sent as the MLSMessage of this digest."""
        return any(e.sent_digest == digest for e in self._entries)

    def reflected(self, digest: bytes, stanza_id: str | None, *,
                  later: list[int] | None = None) -> bool:
        """The room reflected an MLSMessage of this device: end its entry, if one.

        With ``later``, the entry's ``seq`` is appended to it instead of deleted
        from the store here: the caller deletes it with the archive position
        that moves past the reflection, in one transaction."""
        for i, e in enumerate(self._entries):
            if e.sent_digest == digest:
                del self._entries[i]
                self._finish(e, REFLECTED, None, later)
                self._notify(e.message_id, REFLECTED, stanza_id, None)
                return True
        return False

    def too_late(self, digest: bytes, epoch: int) -> bool:
        """The room reflected an MLSMessage of this device while the group was in
        ``epoch``: if its entry was encrypted so many epochs before that members no
        longer read it (:func:`.late.sent_too_late`), queue it again (to be encrypted
        anew, in the current epoch) and return ``True``; else nothing changes."""
        for i, e in enumerate(self._entries):
            if e.sent_digest != digest:
                continue
            if e.sent_epoch is None or not sent_too_late(e.sent_epoch, epoch):
                return False
            self._entries[i] = replace(e, sent_digest=None, sent_epoch=None)
            self._store.save_outbox(self._entries[i])
            self._streams.pop(e.message_id, None)
            self._notify(e.message_id, QUEUED, None, None)
            return True
        return False

    def restore_stored(self) -> int:
        """After the group was rolled back to its stored state (a failed write): the
        entries the store still holds whose end in memory was not written (an echo
        whose deletion waited for the group's next write) come back, ``sent``, to be
        ended again by their reflection when the archive is read again from the
        stored position -- else a restart would find them and send them twice.
        Their number."""
        try:
            stored = self._store.load_outbox(self._group_id)
        except MLSError:
            return 0
        have = {e.seq for e in self._entries}
        back = [r for r in stored if r.seq not in have and r.sent_digest is not None]
        if back:
            self._entries = sorted(self._entries + back, key=lambda e: e.seq)
        return len(back)

    def requeue(self, stream: int | None = None) -> int:
        """Queue again the ``sent`` entries that were handed to a stream other than
        ``stream`` (an earlier one, or another process): the room archive, read
        since, did not hold them, so they never reached the room. Those handed to
        ``stream`` itself may still be on their way, and stay ``sent``. Their number."""
        count = 0
        for i, e in enumerate(self._entries):
            if (e.sent_digest is not None
                    and (stream is None or self._streams.get(e.message_id) != stream)):
                self._entries[i] = replace(e, sent_digest=None, sent_epoch=None)
                self._store.save_outbox(self._entries[i])
                count += 1
        return count

    def fail_all(self, error: BaseException) -> None:
        """Give up every entry (this device is no longer in the group)."""
        for e in list(self._entries):
            self._fail(e, error)

    def _fail(self, entry: OutboxRecord, error: BaseException) -> None:
        self._entries.remove(entry)
        self._finish(entry, FAILED, error)
        self._notify(entry.message_id, FAILED, None, error)

    def _finish(self, entry: OutboxRecord, state: str, error: BaseException | None,
                later: list[int] | None = None) -> None:
        self._streams.pop(entry.message_id, None)
        if entry.message_id not in self._writing:
            self._unstored.discard(entry.message_id)
            self._lazy.discard(entry.message_id)
        if later is not None:
            later.append(entry.seq)
        else:
            try:
                self._store.delete_outbox(self._group_id, entry.seq)
            except MLSError:  # a leftover row: reflected again later, it is ignored then
                pass
        self._finished[entry.message_id] = (state, error)
        while len(self._finished) > MAX_FINISHED:
            self._finished.popitem(last=False)

    # -- sending ------------------------------------------------------------------------

    def sending(self, message: bytes) -> OutboxRecord | None:
        """The entry being encrypted by :meth:`flush`, marked ``sent`` with the digest of
        ``message`` (its MLSMessage), for the ``encrypt`` callback to store in the
        same transaction as the ratchets; ``None`` if no entry is being encrypted.
        The callback calls :meth:`stored_sent` once the write committed, and the
        flush then does not write the entry again."""
        entry = self._encrypting
        if entry is None or entry not in self._entries:
            return None
        return _sent(entry, message)

    def stored_sent(self, record: OutboxRecord) -> None:
        """The record :meth:`sending` gave is in the store."""
        self._stored_sent = record
        self._unstored.discard(record.message_id)

    async def flush(self, *, can_send: Callable[[], bool],
                    encrypt: Callable[[bytes], Awaitable[bytes]],
                    prepare: Callable[[bytes], Awaitable[Any]],
                    transmit: Callable[[Any], None], stream: int | None = None,
                    store_later: Callable[[OutboxRecord], Awaitable[None]] | None = None
                    ) -> None:
        """Send the queued entries, oldest first, while ``can_send()`` holds.

        ``encrypt(content)`` encrypts in the current epoch (and stores the
        ratchets); ``prepare(message)`` builds what goes out (uploading a
        large message); ``transmit(prepared)`` hands it to the stream without
        waiting. Between marking an entry ``sent`` and transmitting it, nothing
        waits, so an entry marked ``sent`` was given to this stream.

        An entry that cannot be sent (an :class:`MLSError` other than a lost
        stream) is given up and reported ``failed``; a lost stream stops the
        flush and leaves the rest queued. ``stream`` names the stream the entries
        are handed to (see :meth:`requeue`).

        ``store_later(record)``: for an entry not in the store yet (accepted with
        ``defer_store``, and not written with the ratchets), its ``sent`` record
        is submitted *after* the transmission, to be written off the event loop
        (the call submits it, the awaitable it returns ends once it committed),
        and the flush waits for all of them before it returns -- after the
        loop, so that the writes of a burst of entries are submitted together
        and committed together: a crash before they committed lost messages
        whose ``send()`` had not returned, each sent once at most. An entry
        already in the store (``queued``) is written ``sent`` before it is
        transmitted, as without ``store_later``: else a crash would leave it
        ``queued`` and it would be encrypted and sent again.
        """
        async with self.lock:
            writes: list[tuple[str, Awaitable[None]]] = []
            try:
                await self._flush_entries(can_send, encrypt, prepare, transmit, stream,
                                          store_later, writes)
            finally:
                await self._settle(writes)

    async def _settle(self, writes: list[tuple[str, Awaitable[None]]]) -> None:
        """Wait for the ``sent`` marks submitted by a flush; the first failure is
        raised once every one ended (written, or failed and the group suspended).
        Those messages were transmitted: a failed write is raised as
        :class:`SentNotStoredError` naming every message whose write failed."""
        first: BaseException | None = None
        unstored: list[str] = []
        for message_id, write in writes:
            try:
                await write
            except BaseException as e:  # noqa: BLE001 - raised below, after the rest
                first = first or e
                unstored.append(message_id)
            finally:
                self._unstored.discard(message_id)
        _raise_first(first, unstored)

    async def _flush_entries(self, can_send: Callable[[], bool],
                             encrypt: Callable[[bytes], Awaitable[bytes]],
                             prepare: Callable[[bytes], Awaitable[Any]],
                             transmit: Callable[[Any], None], stream: int | None,
                             store_later: Callable[[OutboxRecord], Awaitable[None]] | None,
                             writes: list[tuple[str, Awaitable[None]]]) -> None:
        """The loop of :meth:`flush` (its lock held); ``store_later``'s awaitables are
        added to ``writes`` for the caller to wait for."""
        for entry in list(self._entries):
            if entry.sent_digest is not None or entry not in self._entries:
                continue
            if not can_send():
                return
            self._encrypting, self._stored_sent = entry, None
            try:
                message = await encrypt(entry.content)
                prepared = await prepare(message)
            except NotConnectedError:
                return
            except MLSError as e:
                if not can_send():
                    return  # e.g. an upload cut by the lost stream: try again later
                self._fail(entry, e)
                continue
            finally:
                self._encrypting = None
            if not can_send() or entry not in self._entries:
                return  # stays queued: encrypted again next time
            sent = _sent(entry, message)
            later = (sent != self._stored_sent and store_later is not None
                     and entry.message_id in self._unstored)
            if sent != self._stored_sent and not later:  # not written with the ratchets
                self._store.save_outbox(sent)
                self._unstored.discard(sent.message_id)
            self._entries[self._entries.index(entry)] = sent
            if stream is not None:
                self._streams[entry.message_id] = stream
            transmit(prepared)
            self._notify(entry.message_id, SENT, None, None)
            if later:  # submitted now, waited for after the loop (_settle)
                assert store_later is not None
                if entry.message_id in self._lazy:  # send(durable=False): not waited for
                    self._write_in_background(sent.message_id, store_later(sent))
                else:
                    writes.append((sent.message_id, store_later(sent)))


def _sent(entry: OutboxRecord, message: bytes) -> OutboxRecord:
    """``entry`` marked ``sent`` as ``message``: its digest and its epoch (read from
    the header this device wrote), stored together (:mod:`.late`)."""
    header = wire_header(message)
    return replace(entry, sent_digest=hashlib.sha256(message).digest(),
                   sent_epoch=None if header is None else header[0])


def _raise_first(first: BaseException | None, unstored: list[str]) -> None:
    """Raise the first failure of the writes of sent entries, if any: a store's
    failure as :class:`SentNotStoredError` naming ``unstored`` (their stanzas left:
    not to be sent again), anything else as it was."""
    if isinstance(first, StorageError):
        raise SentNotStoredError(
            f"transmitted, but writing the outbox entry failed: {first}",
            tuple(unstored)) from first
    if first is not None:
        raise first
