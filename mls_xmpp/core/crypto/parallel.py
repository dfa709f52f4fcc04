"""Large batches of independent public-key operations, spread over worker processes.

Adding thousands of members, joining a group of thousands, or the first
update after a bulk add each cost one Ed25519 verification or one HPKE
encryption per member. ``cryptography`` holds the GIL while it computes, so
threads do not help, but other processes do. :func:`verify_many` and
:func:`seal_many` split a batch between the calling process and a few worker
processes and return the results in order, exactly as if computed serially.

* The pool starts lazily, the first time a batch reaches :func:`threshold`
  operations (256 by default): small groups never start one.
* Workers are fresh interpreters started with ``subprocess`` (never a fork of
  the application, which may run asyncio and threads); they share no state,
  random generator included, with the parent. A worker's first batch has to
  wait for its start-up (~0.1-0.2 s), but the caller never does: it computes
  its own share in the meantime and hands chunks only to workers that are
  ready. Workers end when the parent closes their input: at interpreter exit
  (``atexit``), in :func:`shutdown`, or when the parent dies.
* The number of workers: :func:`set_workers`, else the environment variable
  ``MLS_XMPP_WORKERS``, else one less than the usable CPU cores (so none on a
  single core), at most 8. ``MLS_XMPP_WORKERS=0`` (or a value that is not
  a number) turns the pool off.
* Anything going wrong with the workers (they cannot be started, die, stall)
  makes the caller compute the rest itself and turns the pool off until
  :func:`set_workers` is called again. Results never depend on the workers:
  callers re-check a failed item serially, so errors are those of the serial
  code.

Only one batch at a time uses the pool; a batch started meanwhile from
another thread runs serially.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import LocalUsageError
from ._pool import Pool, WorkerGone
from ._worker import SealItem, VerifyItem, frame, seal_items, verify_items

__all__ = ["ENV_WORKERS", "active", "seal_many", "set_threshold", "set_workers", "shutdown",
           "start", "stats", "threshold", "use_pool", "verify_many", "workers"]

#: Environment variable with the number of worker processes (0: none).
ENV_WORKERS = "MLS_XMPP_WORKERS"
DEFAULT_THRESHOLD = 256
MAX_AUTO_WORKERS = 8

_MIN_CHUNK = 16  # smallest chunk handed to a worker
_MAX_CHUNK = 512  # largest (~50 ms of work): keeps the end of a batch balanced
_DEPTH = 2  # chunks queued per worker, so it never waits for the parent
_STEP = 8  # items the parent computes between two looks at its workers
_STALL = 30.0  # seconds without any answer before busy workers are given up

_lock = threading.Lock()
_workers: int | None = None  # None: automatic
_threshold = DEFAULT_THRESHOLD
_pool: Pool | None = None
_broken = False
_stats = {"batches": 0, "worker_items": 0, "local_items": 0}


# -- configuration ------------------------------------------------------------------


def _auto_workers() -> int:
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


def workers() -> int:
    """The number of worker processes a large batch uses (0: everything is serial)."""
    return _auto_workers() if _workers is None else _workers


def set_workers(count: int | None) -> None:
    """Use ``count`` worker processes (0: none; ``None``: automatic, see the module doc).

    A running pool is shut down; a pool turned off after a failure may start again.
    """
    global _workers, _broken
    if count is not None and count < 0:
        raise LocalUsageError("the number of workers must be >= 0")
    shutdown()
    with _lock:
        _workers, _broken = count, False


def threshold() -> int:
    """The smallest batch (in operations) that is spread over the workers."""
    return _threshold


def set_threshold(operations: int) -> None:
    """Spread batches of at least ``operations`` operations (default 256) over the workers."""
    global _threshold
    if operations < 1:
        raise LocalUsageError("the threshold must be >= 1")
    _threshold = operations


def use_pool(operations: int) -> bool:
    """Whether a batch of ``operations`` operations would be spread over workers."""
    return operations >= _threshold and not _broken and workers() > 0


def active() -> bool:
    """Whether worker processes are running."""
    return _pool is not None


def start(*, wait: float = 0.0) -> int:
    """Start the workers now rather than with the first large batch.

    Waits up to ``wait`` seconds for them to be ready; returns how many are.
    """
    with _lock:
        pool = _get_pool()
        if pool is None:
            return 0
        deadline = time.monotonic() + wait
        while not all(w.ready for w in pool.workers) and time.monotonic() < deadline:
            pool.pump([], 0.05, _no_redo)
        ready = sum(w.ready for w in pool.workers)
        _after_batch()
        return ready


def _no_redo(start: int, end: int) -> None:
    """Nothing is in flight outside a batch."""


def stats() -> dict[str, int]:
    """Counters since the process started: batches run with workers, items each side did."""
    return dict(_stats)


def shutdown() -> None:
    """End the worker processes (they start again with the next large batch)."""
    with _lock:
        _shutdown_locked()


def _shutdown_locked() -> None:
    """:func:`shutdown`, for a caller that holds the lock."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.close()


# -- the batch operations -------------------------------------------------------------


def verify_many(scheme: str, items: Sequence[VerifyItem], *, parallel: bool = True
                ) -> list[bool]:
    """Whether each ``(public key, message, signature)`` verifies under ``scheme``.

    ``scheme`` is a :class:`~.signature.SignatureScheme` name; ``message`` the
    whole signed content. Never raises for a bad signature or key.
    """
    if parallel and use_pool(len(items)):
        out = _run("verify", (scheme,), items, verify_items)
        if out is not None:
            return out
    return verify_items(scheme, list(items))


def seal_many(suite_id: int, info: bytes, items: Sequence[SealItem], *,
              parallel: bool = True) -> list[tuple[bytes, bytes] | None]:
    """HPKE ``SealBase(pk, info, "", plaintext)`` for each ``(pk, plaintext)``.

    ``(enc, ciphertext)`` per item, ``None`` where the key is unusable (the
    caller redoes that item serially to raise the usual error).
    """
    if parallel and use_pool(len(items)):
        out = _run("seal", (suite_id, info), items, seal_items)
        if out is not None:
            return out
    return seal_items(suite_id, info, list(items))


def _get_pool() -> Pool | None:
    """The running pool, started if need be; ``None`` when there is none to use."""
    global _pool, _broken
    if _pool is not None and _pool.pid != os.getpid():
        _pool = None  # inherited through a fork: the workers belong to the parent
    if _pool is not None and not _pool.workers:
        _pool.close()
        _pool = None
    if _pool is None and not _broken:
        count = workers()
        if count <= 0 or not sys.executable:
            return None
        try:
            _pool = Pool(count)
        except Exception:  # cannot start processes here: stay serial
            _broken = True
            return None
    return _pool


def _chunk_size(remaining: int, n_workers: int) -> int:
    """Guided scheduling: big chunks first, smaller ones towards the end."""
    return max(_MIN_CHUNK, min(_MAX_CHUNK, remaining // (2 * (n_workers + 1))))


def _run(op: str, head: tuple[Any, ...], items: Sequence[Any],
         local: Callable[..., list[Any]]) -> list[Any] | None:
    """Compute ``local(*head, items)`` with the workers' help; ``None``: do it serially."""
    if not _lock.acquire(blocking=False):
        return None  # another thread's batch has the pool
    try:
        pool = _get_pool()
        if pool is None:
            return None
        n = len(items)
        results: list[Any] = [None] * n

        def redo(start: int, end: int) -> None:
            results[start:end] = local(*head, list(items[start:end]))
            _stats["local_items"] += end - start

        _stats["batches"] += 1

        lo, hi = 0, n
        last = time.monotonic()
        while True:
            for w in list(pool.workers):
                while w.ready and len(w.inflight) < _DEPTH and hi - lo >= 2 * _MIN_CHUNK:
                    start = hi - _chunk_size(hi - lo, len(pool.workers))
                    w.inflight.append((start, hi))
                    try:
                        w.send(frame((op, (*head, list(items[start:hi])))))
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
    finally:
        _after_batch()
        _lock.release()


def _after_batch() -> None:
    """Book-keeping after a batch (lock held): counters, and the pool's end if need be.

    After a worker failure the pool stays off until :func:`set_workers`; after an
    interrupted batch (chunks still out, whose answers would confuse the next
    batch) the workers go and the next large batch starts new ones.
    """
    global _broken
    if _pool is None:
        return
    _stats["worker_items"] += _pool.worker_items
    _pool.worker_items = 0
    if _pool.failed:
        _broken = True
    if _pool.failed or _pool.busy():
        _shutdown_locked()


def _after_fork_in_child() -> None:
    """A forked child drops its copies of the parent's pipes to the workers.

    (Keeping the write end open would stop a worker from seeing the end of its input.)
    """
    global _pool, _lock
    pool, _pool = _pool, None
    _lock = threading.Lock()
    for w in pool.workers if pool is not None else ():
        w.close_pipes()


def _at_exit() -> None:
    """End the workers at interpreter exit, even if a daemon thread is inside a batch."""
    if _lock.acquire(timeout=1.0):
        try:
            _shutdown_locked()
        finally:
            _lock.release()
    elif _pool is not None:
        for w in _pool.workers:
            w.proc.kill()
            w.proc.wait()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
