"""The worker process of :mod:`mls_xmpp.workers`.

A worker is a fresh interpreter (``python -c ...``, never a fork of the
application), so its OpenSSL random generator is seeded on its own and shares
no state with the parent. It computes each batch with the same code the
parent uses for its own share (:meth:`VerifyBatch.run
<mls_xmpp.core.crypto.batch.VerifyBatch.run>`, :meth:`SealBatch.run
<mls_xmpp.core.crypto.batch.SealBatch.run>`), so both give the same answers.

Wire format between parent and worker, on the worker's stdin and stdout:
frames of a 4-byte big-endian length followed by a pickle. The worker sends
:data:`READY` once it has imported everything, then answers each request (a
``VerifyBatch`` or ``SealBatch``) with the list its ``run()`` returns, in
order. It exits at end of input (the parent closed the pipe, or died).
Pickles only travel between the parent and the children it started itself,
over private pipes.
"""

from __future__ import annotations

import pickle
import signal
import sys
from typing import BinaryIO

from ..core.crypto.batch import SealBatch, VerifyBatch

READY = "ready"
HEADER = 4


def frame(obj: object) -> bytes:
    """One frame: the length of the pickle of ``obj``, then the pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(HEADER, "big") + data


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests from ``inp`` on ``out`` until ``inp`` ends."""
    out.write(frame(READY))
    out.flush()
    while True:
        head = _read_exact(inp, HEADER)
        if head is None:
            return
        body = _read_exact(inp, int.from_bytes(head, "big"))
        if body is None:
            return
        batch = pickle.loads(body)
        if not isinstance(batch, VerifyBatch | SealBatch):
            return  # not from our parent: stop (the parent sees the pipe close)
        out.write(frame(batch.run()))
        out.flush()


def main() -> None:
    """Entry point of a worker process (started by :class:`._pool.Worker`)."""
    # Ctrl-C in a terminal reaches the whole process group: leave it to the
    # parent, which ends its workers by closing their input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    serve(inp, out)
