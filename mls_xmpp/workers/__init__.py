"""Worker processes for large batches of public-key operations.

The sans-IO core computes its batches of signature verifications and HPKE
encryptions with the :class:`~mls_xmpp.core.crypto.batch.BatchCrypto` of its
:class:`~mls_xmpp.core.group.config.GroupConfig` (serially by default).
``cryptography`` holds the GIL while it computes, so threads do not help, but
other processes do: a :class:`WorkerPool` is a ``BatchCrypto`` that shares
each large batch between the calling thread and a few worker processes and
returns the results in order, exactly as if computed serially::

    pool = WorkerPool()                       # automatic size, nothing started yet
    config = pool.attach(GroupConfig())       # GroupConfig(batch_crypto=pool)
    ...
    pool.shutdown()                           # or: with WorkerPool() as pool: ...

The slixmpp plugin creates one (its ``workers`` option) and shuts it down in
``plugin_end``; an application using the core alone creates and owns its own.

* Workers start lazily, with the first batch of at least ``threshold``
  operations (256 by default): small groups never start one. :meth:`start`
  starts them ahead.
* Workers are fresh interpreters started with ``subprocess`` (never a fork of
  the application, which may run asyncio and threads; nor a re-import of its
  main module, as ``multiprocessing``'s spawn does); they share no state,
  random generator included, with the parent, and talk to it over pipes
  (:mod:`._pool`, :mod:`._worker`). A worker's start-up takes ~0.1-0.2 s; the
  caller never waits for it: it computes its own share of the batch meanwhile
  and hands chunks only to workers that are ready. Workers end when the parent
  closes their input: :meth:`shutdown`, interpreter exit, or the parent's death.
* Why not ``concurrent.futures.ProcessPoolExecutor``: its helper threads in
  the parent need the GIL, which the caller holds while it computes its own
  share, so chunks reach the workers late; measured on 2 cores with 5,000
  operations per batch, it was 8-28 % slower at the median than these pipes,
  which the caller serves itself between two of its own items.
* The number of workers: the constructor's ``workers``, else the environment
  variable ``MLS_XMPP_WORKERS`` (read here, never by the core), else one less
  than the usable CPU cores (so none on a single core), at most 8. ``0`` (or a
  variable that is not a number) means no workers: every batch is serial.
* Results never depend on the workers. Anything going wrong with them (they
  cannot start, die, stall, answer nonsense) makes the caller compute the rest
  itself and turns the pool off until :meth:`reset`; the core verifies a
  failed signature again serially, so errors are those of the serial code.

* :meth:`WorkerPool.start_verify` (through
  :func:`mls_xmpp.core.crypto.ahead.start_verify`) takes signature items one by
  one while the caller does serial work (a join decodes and checks the tree, a
  bulk add runs the KeyPackages' other checks): once ``threshold`` items are
  in, a feeder thread (it waits on the pipes with the GIL released) keeps the
  worker ~10 ms of items ahead, and the caller's ``result()`` shares what was
  not sent yet as :meth:`WorkerPool.verify` does. The pipes to the workers are
  asked to hold 1 MiB (Linux ``F_SETPIPE_SZ``) so a chunk never waits for the
  caller's next look at them.

Only one batch at a time uses the workers; a batch started meanwhile from
another thread is computed serially. A child forked from the process drops
its copies of the workers' pipes (they belong to the parent) and starts its
own workers if it needs them.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.crypto.batch import SERIAL, SealBatch, SealResult, VerifyBatch, VerifyItem
from ..core.errors import LocalUsageError
from ._pool import Pool, WorkerGone
from ._worker import frame

if TYPE_CHECKING:
    from ..core.group.config import GroupConfig

__all__ = ["DEFAULT_THRESHOLD", "ENV_WORKERS", "MAX_AUTO_WORKERS", "WorkerPool",
           "default_workers"]

#: Environment variable with the number of worker processes (0: none).
ENV_WORKERS = "MLS_XMPP_WORKERS"
#: The smallest batch (in operations) shared with workers, by default.
DEFAULT_THRESHOLD = 256
#: The most workers the automatic count gives.
MAX_AUTO_WORKERS = 8

_MIN_CHUNK = 16  # smallest chunk handed to a worker
_MAX_CHUNK = 512  # largest (~50 ms of work): keeps the end of a batch balanced
_DEPTH = 2  # chunks queued per worker, so it never waits for the parent
_STEP = 8  # items the parent computes between two looks at its workers
_STALL = 30.0  # seconds without any answer before busy workers are given up
_STREAM_CHUNK = 32  # items sent together while the caller is still adding (start_verify)
_AHEAD_ITEMS = 3 * _STREAM_CHUNK  # items queued per worker while the caller adds (~10 ms)

_B = TypeVar("_B", VerifyBatch, SealBatch)

#: Every pool with running workers, for the fork and exit hooks below.
_live: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def default_workers() -> int:
    """The automatic number of workers: ``MLS_XMPP_WORKERS``, else usable cores - 1 (max 8)."""
    env = os.environ.get(ENV_WORKERS)
    if env is not None:
        try:
            return max(int(env), 0)
        except ValueError:
            return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return min(max(cores - 1, 0), MAX_AUTO_WORKERS)


class WorkerPool:
    """A :class:`~mls_xmpp.core.crypto.batch.BatchCrypto` backed by worker processes.

    ``workers``: how many (``None``: :func:`default_workers`; ``0``: none, every
    batch serial). ``threshold``: the smallest batch shared with them. See the
    module docstring.
    """

    def __init__(self, workers: int | None = None, *,
                 threshold: int = DEFAULT_THRESHOLD) -> None:
        if workers is not None and workers < 0:
            raise LocalUsageError("the number of workers must be >= 0")
        if threshold < 1:
            raise LocalUsageError("the threshold must be >= 1")
        self._count = default_workers() if workers is None else workers
        self._threshold = threshold
        self._lock = threading.Lock()
        self._pool: Pool | None = None
        self._broken = False
        self._stats = {"batches": 0, "worker_items": 0, "local_items": 0,
                       "stream_dispatches": 0}

    # -- configuration and life cycle ---------------------------------------------------

    @property
    def workers(self) -> int:
        """The number of worker processes a large batch uses (0: everything is serial)."""
        return self._count

    @property
    def threshold(self) -> int:
        """The smallest batch (in operations) that is shared with the workers."""
        return self._threshold

    @property
    def active(self) -> bool:
        """Whether worker processes are running."""
        return self._pool is not None

    @property
    def broken(self) -> bool:
        """Whether the workers failed and every batch is serial until :meth:`reset`."""
        return self._broken

    def use_workers(self, operations: int) -> bool:
        """Whether a batch of ``operations`` operations would be shared with workers."""
        return operations >= self._threshold and self._count > 0 and not self._broken

    def stats(self) -> dict[str, int]:
        """Counters: batches shared with workers, the items each side computed, and
        how often a :meth:`start_verify` caller's ``add`` handed chunks out itself."""
        return dict(self._stats)

    def attach(self, config: GroupConfig) -> GroupConfig:
        """``config`` with this pool as its ``batch_crypto``.

        A config that already has a batch crypto of its own (not the core's
        serial default) is returned unchanged: the application's choice wins.
        """
        if config.batch_crypto is not SERIAL:
            return config
        return replace(config, batch_crypto=self)

    def start(self, *, wait: float = 0.0) -> int:
        """Start the workers now rather than with the first large batch.

        Waits up to ``wait`` seconds for them to be ready; returns how many are.
        """
        with self._lock:
            pool = self._get_pool()
            if pool is None:
                return 0
            deadline = time.monotonic() + wait
            while not all(w.ready for w in pool.workers) and time.monotonic() < deadline:
                pool.pump([], 0.05, _no_redo)
            ready = sum(w.ready for w in pool.workers)
            self._after_batch()
            return ready

    def shutdown(self) -> None:
        """End the worker processes (they start again with the next large batch)."""
        with self._lock:
            self._shutdown_locked()

    def reset(self) -> None:
        """Shut the workers down and turn the pool on again after a failure."""
        with self._lock:
            self._shutdown_locked()
            self._broken = False

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return (f"WorkerPool(workers={self._count}, threshold={self._threshold}, "
                f"active={self.active}, broken={self._broken})")

    def _shutdown_locked(self) -> None:
        """:meth:`shutdown`, for a caller that holds the lock."""
        pool, self._pool = self._pool, None
        _live.discard(self)
        if pool is not None:
            pool.close()

    def _get_pool(self) -> Pool | None:
        """The running workers, started if need be; ``None`` when there are none to use."""
        if self._pool is not None and self._pool.pid != os.getpid():
            self._pool = None  # inherited through a fork: the workers belong to the parent
        if self._pool is not None and not self._pool.workers:
            self._shutdown_locked()
        if self._pool is None and not self._broken:
            if self._count <= 0 or not sys.executable:
                return None
            try:
                self._pool = Pool(self._count)
            except Exception:  # cannot start processes here: stay serial
                self._broken = True
                return None
            _live.add(self)
        return self._pool

    def _after_batch(self) -> None:
        """Book-keeping after a batch (lock held): counters, and the workers' end if need be.

        After a worker failure the pool stays off until :meth:`reset`; after an
        interrupted batch (chunks still out, whose answers would confuse the next
        batch) the workers go and the next large batch starts new ones.
        """
        if self._pool is None:
            return
        self._stats["worker_items"] += self._pool.worker_items
        self._pool.worker_items = 0
        if self._pool.failed:
            self._broken = True
        if self._pool.failed or self._pool.busy():
            self._shutdown_locked()

    # -- BatchCrypto --------------------------------------------------------------------

    def verify(self, batch: VerifyBatch) -> list[bool]:
        """Whether each signature of ``batch`` verifies (see :class:`VerifyBatch`)."""
        return self._run(batch)

    def seal(self, batch: SealBatch) -> list[SealResult]:
        """The HPKE seals of ``batch`` (see :class:`SealBatch`)."""
        return self._run(batch)

    def start_verify(self, suite_id: int) -> _VerifyStream:
        """Signature checks handed over one by one while the caller does other work.

        The :class:`~mls_xmpp.core.crypto.ahead.PendingVerify` of
        :func:`mls_xmpp.core.crypto.ahead.start_verify`: once ``threshold``
        items are in, the workers verify them in chunks as they come (the
        caller itself computes none of them yet); :meth:`_VerifyStream.result`
        then shares the rest between the caller and the workers as
        :meth:`verify` does. The workers are this stream's until its
        ``result`` or ``close``.
        """
        return _VerifyStream(self, suite_id)

    def _run(self, batch: _B) -> list[Any]:
        """``batch.run()``, with the workers' help when the batch is large."""
        if not self.use_workers(len(batch)) or not self._lock.acquire(blocking=False):
            return batch.run()  # small, off, or another thread's batch has the workers
        try:
            pool = self._get_pool()
            if pool is None:
                return batch.run()
            return self._share(pool, batch)
        finally:
            self._after_batch()
            self._lock.release()

    def _share(self, pool: Pool, batch: _B, results: list[Any] | None = None,
               lo: int = 0) -> list[Any]:
        """Workers take chunks from the back of ``batch``, the caller items from the front.

        ``lo``: the items before it were handed to the workers already (their
        answers go to ``results``, as do those of this call).
        """
        n = len(batch)
        if results is None:
            results = [None] * n

        def redo(start: int, end: int) -> None:
            results[start:end] = batch.part(start, end).run()
            self._stats["local_items"] += end - start

        self._stats["batches"] += 1
        hi = n
        last = time.monotonic()
        while True:
            for w in list(pool.workers):
                while w.ready and len(w.inflight) < _DEPTH and hi - lo >= 2 * _MIN_CHUNK:
                    start = hi - _chunk_size(hi - lo, len(pool.workers))
                    w.inflight.append((start, hi))
                    try:
                        w.send(frame(batch.part(start, hi)))
                    except WorkerGone:
                        pool.drop(w, redo)  # computes this chunk too
                        hi = start
                        break
                    hi = start
            if lo < hi:
                end = min(lo + _STEP, hi)
                redo(lo, end)
                lo = end
                pool.pump(results, 0.0, redo)
            elif pool.busy():
                if pool.pump(results, 0.5, redo):
                    last = time.monotonic()
                elif time.monotonic() - last > _STALL:
                    for w in [w for w in pool.workers if w.inflight]:
                        pool.drop(w, redo)
            else:
                return results


class _VerifyStream:
    """:meth:`WorkerPool.start_verify`: items verified by the workers as they are added.

    While the caller adds items and does its own serial work, a feeder thread
    keeps each worker :data:`_AHEAD_ITEMS` items ahead: it waits for answers
    with the GIL released and, on each, hands out the next chunk (the caller
    itself never looks at the pipes in between, and hands a worker no more
    than it will have done by then: what has not been sent stays for
    :meth:`result` to share). ``_mu`` guards the pipes and the lists below
    between the two threads.
    """

    def __init__(self, owner: WorkerPool, suite_id: int) -> None:
        self._owner = owner
        self._suite_id = suite_id
        self._items: list[VerifyItem] = []
        self._results: list[Any] = []
        self._sent = 0  # items before this one are in chunks handed to workers
        self._looked = 0  # len(_items) when add() last looked at the workers
        self._pool: Pool | None = None  # set while this stream holds the workers
        self._tried = False  # whether it tried to take the workers
        self._done = False
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._feeder: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    def add(self, item: VerifyItem) -> None:
        """Append one item; a full chunk goes to a worker with room for it.

        The caller's thread looks at the workers once per :data:`_STREAM_CHUNK`
        items it adds, not once per item: a worker behind the caller (the usual
        case: decoding a leaf is ~10x faster than verifying it) is topped up by
        the feeder thread as it answers, and a dispatch per item cost the caller
        a ``select`` and a scan of the workers for every leaf of a joined tree.
        """
        with self._mu:
            self._items.append(item)
            self._results.append(None)
            n = len(self._items)
            if n - self._sent < _STREAM_CHUNK or n - self._looked < _STREAM_CHUNK:
                return
            self._looked = n
            if self._pool is None and not self._tried and n >= self._owner.threshold:
                self._take()
            if self._pool is not None:
                self._dispatch()
                self._owner._stats["stream_dispatches"] += 1

    def poll(self) -> None:
        """Nothing to do: the feeder thread serves the workers."""

    def _take(self) -> None:
        """Take the workers for this stream, if they are usable and free (``_mu`` held)."""
        self._tried = True
        owner = self._owner
        if not owner.use_workers(len(self._items)) or not owner._lock.acquire(blocking=False):
            return
        pool = owner._get_pool()
        if pool is None:
            owner._lock.release()
            return
        self._pool = pool
        try:
            self._wake_r, self._wake_w = os.pipe()
            self._feeder = threading.Thread(target=self._feed, args=(pool,),
                                            name="mls-xmpp-verify-feeder", daemon=True)
            self._feeder.start()
        except Exception:  # no thread or pipe here: the workers get what add() sends
            self._feeder = None

    def _feed(self, pool: Pool) -> None:
        """The feeder thread: on each answer of a worker, hand out the next chunk."""
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ)
            for w in pool.workers:
                sel.register(w.r, selectors.EVENT_READ)
            while not self._stop.is_set():
                sel.select(1.0)  # the GIL is released while it waits
                if self._stop.is_set():
                    return
                with self._mu:
                    if self._pool is None:
                        return
                    self._dispatch()
                    if not pool.workers:
                        return

    def _redo(self, start: int, end: int) -> None:
        """Compute ``start:end`` here (the chunks of a worker that was given up)."""
        self._results[start:end] = VerifyBatch(self._suite_id,
                                               tuple(self._items[start:end])).run()
        self._owner._stats["local_items"] += end - start

    def _dispatch(self) -> None:
        """Take in answers, then top each worker up to :data:`_AHEAD_ITEMS` (``_mu`` held)."""
        pool = self._pool
        assert pool is not None
        pool.pump(self._results, 0.0, self._redo)
        n = len(self._items)
        for w in list(pool.workers):
            queued = sum(end - start for start, end in w.inflight)
            while w.ready and n - self._sent >= _STREAM_CHUNK and queued < _AHEAD_ITEMS:
                start, end = self._sent, self._sent + _STREAM_CHUNK
                w.inflight.append((start, end))
                self._sent = end
                queued += end - start
                try:
                    w.send(frame(VerifyBatch(self._suite_id, tuple(self._items[start:end]))))
                except WorkerGone:
                    pool.drop(w, self._redo)
                    break

    def _stop_feeder(self) -> None:
        """End the feeder thread (before this thread uses the pipes alone)."""
        self._stop.set()
        feeder, self._feeder = self._feeder, None
        if feeder is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            feeder.join()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def result(self) -> list[bool]:
        """Whether each item verifies, in order; the rest shared with the workers."""
        if self._done:
            raise LocalUsageError("the result of these checks was taken already")
        self._done = True
        self._stop_feeder()
        batch = VerifyBatch(self._suite_id, tuple(self._items))
        pool = self._pool
        if pool is None:
            return self._owner.verify(batch)
        try:
            return self._owner._share(pool, batch, self._results, self._sent)
        finally:
            self._release()

    def close(self) -> None:
        """Give the workers back (waiting for the chunks they have, if any)."""
        self._done = True
        self._stop_feeder()
        pool = self._pool
        if pool is None:
            return
        try:
            last = time.monotonic()
            while pool.busy() and pool.workers:
                if pool.pump(self._results, 0.5, self._redo):
                    last = time.monotonic()
                elif time.monotonic() - last > _STALL:
                    for w in [w for w in pool.workers if w.inflight]:
                        pool.drop(w, self._redo)
        finally:
            self._release()

    def _release(self) -> None:
        if self._pool is None:
            return
        self._pool = None
        owner = self._owner
        try:
            owner._after_batch()
        finally:
            owner._lock.release()

    def __enter__(self) -> _VerifyStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _chunk_size(remaining: int, n_workers: int) -> int:
    """Guided scheduling: big chunks first, smaller ones towards the end."""
    return max(_MIN_CHUNK, min(_MAX_CHUNK, remaining // (2 * (n_workers + 1))))


def _no_redo(start: int, end: int) -> None:
    """Nothing is in flight outside a batch."""


def _after_fork_in_child() -> None:
    """A forked child drops its copies of the parent's pipes to the workers.

    (Keeping the write end open would stop a worker from seeing the end of its input.)
    """
    for p in list(_live):
        pool, p._pool = p._pool, None
        p._lock = threading.Lock()
        for w in pool.workers if pool is not None else ():
            w.close_pipes()
    _live.clear()


def _at_exit() -> None:
    """End the workers at interpreter exit, even if a daemon thread is inside a batch."""
    for p in list(_live):
        if p._lock.acquire(timeout=1.0):
            try:
                p._shutdown_locked()
            finally:
                p._lock.release()
        elif p._pool is not None:
            for w in p._pool.workers:
                w.proc.kill()
                w.proc.wait()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
