"""The plugin's writes of group state, in order, some of them off the event loop.

One :class:`StoreWriter` per plugin (per state store). Writes on the hot path
of a message -- the receiver's ratchets after a burst, the sender's outbox
entry after its stanza left, the echo's outbox deletion and archive position
-- are *submitted*: they run in one worker thread, in the order they were
submitted, several at a time in one store transaction (one commit, one set of
fsyncs, for whatever queued up while the previous commit ran). Every other
write and every read of group state from the event loop goes through
:attr:`StoreWriter.store` (an :class:`OrderedStore`), which first waits until
every submitted write has finished (:meth:`StoreWriter.drain`). So no write
ever overtakes an older one: an old position or old ratchets cannot land
after newer ones, an outbox save cannot land after its deletion, and a read
(the rollback after a failed write) sees every write submitted before it.

A submitted write that fails marks its group *failed* in the writer: every
later write of that group submitted before the plugin learnt of it fails
too, without writing (the plugin then rolls the group back to what the store
holds and suspends it, :meth:`XEP_MLS.storage_failed
<mls_xmpp.xmpp.plugin.XEP_MLS.storage_failed>`); the mark ends with the
plugin's next whole write of the group (its retry, :meth:`StoreWriter.clear`).

A store that cannot be used from another thread (without ``thread_safe``,
e.g. :class:`~mls_xmpp.storage.MemoryStore`) gets no thread: a submitted
write runs at once, on the event loop, as before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ..storage import GroupRecord, OutboxRecord, StateStore, StorageError, TrustRecord
from ..storage.sqlite import SQLiteStore

__all__ = ["BURST", "LAZY_DELAY", "WAKE_AFTER", "OrderedStore", "StoreWriter", "Unsaved",
           "wake_after_stream"]

log = logging.getLogger(__name__)

#: A group's receive-side writes wait for the end of a burst (its worker's queue
#: empty), but not for more than this many messages.
BURST = 64
#: Seconds a write of only a position moved by this device's own echoes waits for
#: the group's next write (see ``XEP_MLS.persist_later``).
LAZY_DELAY = 1.0

#: ``job(store)``: one write, run in the writer's thread (inside its transaction).
Job = Callable[[StateStore], None]


@dataclass
class Unsaved:
    """What a group changed in memory that is not submitted for writing yet (after
    application messages read, and echoes of its own: see ``GroupSession._handle``).

    Every write of the group's position also writes these (the ratchets when
    they changed, the outbox deletions in the same transaction): a position
    stored past messages whose ratchets or echoes are not would lose them
    after a crash instead of replaying them.
    """

    #: the secret trees moved (application messages read)
    ratchets: bool = False
    #: the archive position moved
    position: bool = False
    #: outbox entries (their ``seq``) whose echo was read: deleted with the position
    deletes: list[int] = field(default_factory=list)
    #: messages since the last write
    messages: int = 0

    def __bool__(self) -> bool:
        return self.ratchets or self.position or bool(self.deletes)

    def clear(self) -> None:
        """Everything is written (or given up: the group was rolled back)."""
        self.ratchets = self.position = False
        self.deletes = []
        self.messages = 0


class StoreWriter:
    """A serial writer of one state store (see the module docstring)."""

    def __init__(self, store: StateStore) -> None:
        self._raw = store
        self._threaded = bool(getattr(store, "thread_safe", False))
        self._cond = threading.Condition()
        self._jobs: collections.deque[
            tuple[bytes, Job, asyncio.AbstractEventLoop, asyncio.Future[None]]
        ] = collections.deque()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        #: group id -> the error of its failed write (until :meth:`clear`)
        self._failed: dict[bytes, StorageError] = {}
        #: depth of :meth:`OrderedStore.transaction` blocks open on the event loop
        self._in_transaction = 0
        #: the store as the event loop must use it: every call after the submitted writes
        self.store = OrderedStore(store, self)
        #: the task of :func:`wake_after_stream` waiting to wake the thread
        self._waker: asyncio.Future[None] | None = None
        #: commits made by the thread, and the writes they held (for the benchmarks)
        self.commits = 0
        self.writes = 0

    @property
    def threaded(self) -> bool:
        """Whether submitted writes run in a worker thread (the store is thread-safe)."""
        return self._threaded

    def submit(self, group_id: bytes, job: Job, *, wake: bool = True) -> asyncio.Future[None]:
        """Run ``job(store)`` after every write submitted before it; the future ends
        when it committed (or raises its :class:`StorageError`). Call from the event
        loop, never inside an open store transaction.

        ``wake=False``: an idle thread is not woken for it yet (:meth:`wake` does,
        as does any later submit, :meth:`drain` or :meth:`close`), so that it does
        not compete with the event loop for the GIL and the CPU while a stanza is
        on its way out."""
        if self._in_transaction:
            raise RuntimeError("a write submitted inside a store transaction")
        group_id = bytes(group_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._threaded:
            try:
                self._check(group_id)
                with _transaction(self._raw, whole=True):  # all of the job or none of it
                    job(self._raw)
            except StorageError as e:
                self._failed.setdefault(group_id, e)
                future.set_exception(e)
            else:
                future.set_result(None)
            return future
        with self._cond:
            if self._closed:
                raise StorageError("the store is closed")
            self._jobs.append((group_id, job, loop, future))
            if wake:
                self._wake_locked()
        return future

    def wake(self) -> None:
        """Let the thread take the writes submitted with ``wake=False``."""
        if self._threaded:
            with self._cond:
                self._wake_locked()

    def _wake_locked(self) -> None:
        if not self._jobs:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mls-store-writer",
                                            daemon=True)
            self._thread.start()
        elif not self._busy:  # a busy thread takes the queue when its batch is done
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every submitted write has finished (blocking: a commit at most)."""
        if not self._threaded or self._thread is threading.current_thread():
            return
        with self._cond:
            self._wake_locked()
            while self._jobs or self._busy:
                self._cond.wait()

    @property
    def idle(self) -> bool:
        """Whether no submitted write is waiting or running."""
        with self._cond:
            return not self._jobs and not self._busy

    def failed(self, group_id: bytes) -> StorageError | None:
        """The error of a failed write of the group not yet :meth:`clear` ed."""
        return self._failed.get(bytes(group_id))

    def clear(self, group_id: bytes) -> None:
        """Writes of the group may go on (it was rolled back and written whole)."""
        self._failed.pop(bytes(group_id), None)

    def close(self) -> None:
        """Finish the submitted writes and stop the thread."""
        with self._cond:
            self._wake_locked()
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._thread = None
        with self._cond:
            self._closed = False  # a store reopened later gets a new thread

    def _check(self, group_id: bytes) -> None:
        error = self._failed.get(group_id)
        if error is not None:
            raise StorageError(f"an earlier write of this group failed: {error}")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    self._thread = None
                    return
                batch = list(self._jobs)
                self._jobs.clear()
                self._busy = True
            results: list[BaseException | None] = []
            try:
                results = self._write(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                for (_gid, _job, loop, future), error in zip(batch, results, strict=False):
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(_settle, future, error)

    def _write(self, batch: list[tuple[bytes, Job, Any, Any]]) -> list[BaseException | None]:
        """The batch in one transaction; each job's error (``None``: committed)."""
        if len(batch) == 1:  # the transaction is the job's (two statements fewer)
            gid, job, _loop, _future = batch[0]
            try:
                self._check(gid)
                with _transaction(self._raw, whole=True):
                    job(self._raw)
            except Exception as e:  # noqa: BLE001 - reported to its caller
                error = e if isinstance(e, StorageError) else StorageError(
                    f"{type(e).__name__}: {e}")
                self._failed.setdefault(gid, error)
                return [error]
            self.commits += 1
            self.writes += 1
            return [None]
        results: list[BaseException | None] = []
        try:
            with _transaction(self._raw):
                for gid, job, _loop, _future in batch:
                    try:
                        self._check(gid)
                        with _transaction(self._raw, whole=True):  # a savepoint: all or none
                            job(self._raw)
                    except StorageError as e:  # rolled back alone
                        self._failed.setdefault(gid, e)
                        results.append(e)
                    except Exception as e:  # noqa: BLE001 - reported to its caller
                        log.exception("a deferred store write failed")
                        wrapped = StorageError(f"{type(e).__name__}: {e}")
                        self._failed.setdefault(gid, wrapped)
                        results.append(wrapped)
                    else:
                        results.append(None)
        except StorageError as e:  # the commit failed: nothing of the batch is kept
            for gid, *_ in batch:
                self._failed.setdefault(gid, e)
            return [e] * len(batch)
        self.commits += 1
        self.writes += len(batch)
        return results


#: Seconds a write submitted with ``wake=False`` waits at most for the stream.
WAKE_AFTER = 0.005


def wake_after_stream(xmpp: Any, writer: StoreWriter) -> None:
    """Wake ``writer`` once slixmpp's send queue has written what it holds (the stanza
    just handed to it: it goes out a few turns of the event loop later, through the
    outgoing filters), or after :data:`WAKE_AFTER` seconds, whichever comes first."""
    if not writer.threaded:
        return
    queue = getattr(xmpp, "waiting_queue", None)
    if not isinstance(queue, asyncio.Queue):
        writer.wake()
        return
    if getattr(writer, "_waker", None) is not None:
        return  # one waker wakes it for every write queued meanwhile

    async def waker() -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.join(), WAKE_AFTER)
        finally:
            writer._waker = None
            writer.wake()
    writer._waker = asyncio.ensure_future(waker())


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # retrieved: a fire-and-forget write reports it by callback


def _transaction(store: StateStore, *, whole: bool = False
                 ) -> contextlib.AbstractContextManager[None]:
    """The store's ``transaction()``; ``whole``: all of it or nothing, no savepoint per
    write inside (``parts=False``, where the store offers it: fewer SQLite calls, each
    of which takes the GIL back in the writer's thread)."""
    tx = getattr(store, "transaction", None)
    if tx is None:
        return contextlib.nullcontext()
    if whole and isinstance(store, SQLiteStore):
        return store.transaction(parts=False)
    return cast("contextlib.AbstractContextManager[None]", tx())


class OrderedStore:
    """A state store whose every call from the event loop first waits for the writes
    submitted before it (:meth:`StoreWriter.drain`), so it never overtakes one.
    Writes of a group whose submitted write failed raise :class:`StorageError`
    until the writer :meth:`~StoreWriter.clear` s it (the plugin's retry)."""

    def __init__(self, store: StateStore, writer: StoreWriter) -> None:
        self._store = store
        self._writer = writer

    @property
    def raw(self) -> StateStore:
        """The store itself (for the writer's thread)."""
        return self._store

    def _guard(self, group_id: bytes) -> None:
        self._writer.drain()
        self._writer._check(bytes(group_id))

    def load_identity(self) -> bytes | None:
        """:meth:`StateStore.load_identity`, after the submitted writes."""
        self._writer.drain()
        return self._store.load_identity()

    def save_identity(self, data: bytes) -> None:
        """:meth:`StateStore.save_identity`, after the submitted writes."""
        self._writer.drain()
        self._store.save_identity(data)

    def load_groups(self, on_error: Callable[[bytes, str, StorageError], None] | None = None
                    ) -> list[GroupRecord]:
        """:meth:`StateStore.load_groups`, after the submitted writes."""
        self._writer.drain()
        return self._store.load_groups(on_error)

    def save_group(self, record: GroupRecord) -> None:
        """:meth:`StateStore.save_group`, after the submitted writes."""
        self._guard(record.group_id)
        self._store.save_group(record)

    def save_position(self, group_id: bytes, last_stanza_id: str | None) -> None:
        """:meth:`StateStore.save_position`, after the submitted writes."""
        self._guard(group_id)
        self._store.save_position(group_id, last_stanza_id)

    def save_ratchets(self, group_id: bytes, ratchets: bytes,
                      last_stanza_id: str | None) -> None:
        """:meth:`StateStore.save_ratchets`, after the submitted writes."""
        self._guard(group_id)
        self._store.save_ratchets(group_id, ratchets, last_stanza_id)

    def delete_group(self, group_id: bytes) -> None:
        """:meth:`StateStore.delete_group`, after the submitted writes."""
        self._writer.drain()
        self._store.delete_group(group_id)
        self._writer.clear(group_id)

    def load_extra(self, owner: bytes, name: str) -> bytes | None:
        """:meth:`StateStore.load_extra`, after the submitted writes."""
        self._writer.drain()
        return self._store.load_extra(owner, name)

    def save_extra(self, owner: bytes, name: str, value: bytes | None) -> None:
        """:meth:`StateStore.save_extra`, after the submitted writes."""
        self._writer.drain()
        self._store.save_extra(owner, name, value)

    def load_inbox_position(self) -> str | None:
        """:meth:`StateStore.load_inbox_position`, after the submitted writes."""
        self._writer.drain()
        return self._store.load_inbox_position()

    def save_inbox_position(self, archive_id: str | None) -> None:
        """:meth:`StateStore.save_inbox_position`, after the submitted writes."""
        self._writer.drain()
        self._store.save_inbox_position(archive_id)

    def load_trust(self) -> list[TrustRecord]:
        """:meth:`StateStore.load_trust`, after the submitted writes."""
        self._writer.drain()
        return self._store.load_trust()

    def save_trust(self, records: Sequence[TrustRecord]) -> None:
        """:meth:`StateStore.save_trust`, after the submitted writes."""
        self._writer.drain()
        self._store.save_trust(records)

    def load_outbox(self, group_id: bytes) -> list[OutboxRecord]:
        """:meth:`StateStore.load_outbox`, after the submitted writes."""
        self._writer.drain()
        return self._store.load_outbox(group_id)

    def save_outbox(self, record: OutboxRecord) -> None:
        """:meth:`StateStore.save_outbox`, after the submitted writes."""
        self._guard(record.group_id)
        self._store.save_outbox(record)

    def delete_outbox(self, group_id: bytes, seq: int) -> None:
        """:meth:`StateStore.delete_outbox`, after the submitted writes."""
        self._guard(group_id)
        self._store.delete_outbox(group_id, seq)

    def close(self) -> None:
        """Finish the submitted writes (the thread stops); the store stays open."""
        self._writer.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The store's ``transaction()`` (see :class:`StateStore`), opened after the
        submitted writes. Nothing may be submitted inside it (the writer's thread
        would wait for it while it waits for the thread)."""
        self._writer.drain()
        self._writer._in_transaction += 1
        try:
            with _transaction(self._store):
                yield
        finally:
            self._writer._in_transaction -= 1
