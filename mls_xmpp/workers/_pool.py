"""The worker processes of :mod:`mls_xmpp.workers` and the parent's side of their pipes.

Each :class:`Worker` is a fresh interpreter running :func:`._worker.main`,
started with ``subprocess`` (never a fork of the application). Its pipes are
non-blocking on this side; :meth:`Pool.pump` writes what is pending and reads
answers, with a selector over all workers, so the caller can keep computing
its own share between two calls. A worker that dies, closes its pipe or sends
something unexpected is killed, reaped and dropped; its unfinished chunks go
back to the caller.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import selectors
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._worker import HEADER, READY

#: The size asked for the pipe to each worker (Linux; where refused, the system's default):
#: chunks queued ahead of the caller's next look at its pipes fit in it.
PIPE_BYTES = 1 << 20

_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from mls_xmpp.workers._worker import main; main()")


class WorkerGone(Exception):
    """A worker died, closed its pipe, or sent something unusable."""


class Worker:
    """One worker process and the parent's side of its pipes."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the directory holding mls_xmpp
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.w = self.proc.stdin.fileno()
        self.r = self.proc.stdout.fileno()
        os.set_blocking(self.w, False)
        set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
        if set_size is not None:
            try:
                fcntl.fcntl(self.w, set_size, PIPE_BYTES)
            except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
                pass
        os.set_blocking(self.r, False)
        self.ready = False
        self.out = bytearray()  # bytes not yet written
        self.buf = bytearray()  # bytes read, not yet a whole frame
        self.inflight: deque[tuple[int, int]] = deque()  # item ranges sent, in order

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the worker and write what the pipe takes now."""
        self.out += data
        self.flush()

    def flush(self) -> None:
        """Write queued bytes until the pipe is full (never blocks)."""
        try:
            while self.out:
                n = os.write(self.w, self.out)
                del self.out[:n]
        except BlockingIOError:
            pass
        except OSError as e:
            raise WorkerGone from e

    def receive(self) -> list[object]:
        """The complete frames read so far (non-blocking)."""
        try:
            while True:
                data = os.read(self.r, 1 << 20)
                if not data:
                    raise WorkerGone
                self.buf += data
        except BlockingIOError:
            pass
        except OSError as e:
            raise WorkerGone from e
        frames = []
        while len(self.buf) >= HEADER:
            n = int.from_bytes(self.buf[:HEADER], "big")
            if len(self.buf) < HEADER + n:
                break
            frames.append(pickle.loads(bytes(self.buf[HEADER:HEADER + n])))
            del self.buf[:HEADER + n]
        return frames

    def close_pipes(self) -> None:
        """Close this side of the pipes (the worker then sees the end of its input)."""
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """End the process: close its input, then wait (kill it if it does not go)."""
        self.close_pipes()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Pool:
    """The worker processes and a selector over their pipes."""

    def __init__(self, count: int) -> None:
        self.pid = os.getpid()
        self.failed = False  # a worker was given up
        self.worker_items = 0  # items computed by the workers
        self.sel = selectors.DefaultSelector()
        self.workers: list[Worker] = []
        try:
            for _ in range(count):
                w = Worker()
                self.workers.append(w)
                self.sel.register(w.r, selectors.EVENT_READ, w)
        except Exception:
            self.close()
            raise

    def busy(self) -> bool:
        """Whether some worker has chunks whose answers have not arrived."""
        return any(w.inflight for w in self.workers)

    def pump(self, results: list[Any], timeout: float,
             redo: Callable[[int, int], None]) -> bool:
        """Write what is pending, take in answers; ``False`` when nothing happened."""
        for w in list(self.workers):
            if w.out:
                try:
                    w.flush()
                except WorkerGone:
                    self.drop(w, redo)
        wait = 0.0 if any(w.out for w in self.workers) else timeout
        events = self.sel.select(wait)
        for key, _ in events:
            w = key.data
            if w not in self.workers:
                continue
            try:
                for msg in w.receive():
                    if msg == READY and not w.ready:
                        w.ready = True
                        continue
                    if not w.inflight or not isinstance(msg, list):
                        raise WorkerGone
                    start, end = w.inflight.popleft()
                    if len(msg) != end - start:
                        w.inflight.appendleft((start, end))
                        raise WorkerGone
                    results[start:end] = msg
                    self.worker_items += end - start
            except WorkerGone:
                self.drop(w, redo)
        return bool(events)

    def drop(self, w: Worker, redo: Callable[[int, int], None]) -> None:
        """Give up a worker (the pool is then failed); ``redo`` computes its unfinished chunks."""
        self.failed = True
        self.workers.remove(w)
        try:
            self.sel.unregister(w.r)
        except (KeyError, ValueError):
            pass
        pending = list(w.inflight)
        w.inflight.clear()
        w.proc.kill()
        w.close()
        for start, end in pending:
            redo(start, end)

    def close(self) -> None:
        """End every worker and release the selector."""
        for w in self.workers:
            try:
                self.sel.unregister(w.r)
            except (KeyError, ValueError):
                pass
            w.close()
        self.workers = []
        self.sel.close()
