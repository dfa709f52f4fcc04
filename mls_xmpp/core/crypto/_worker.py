"""The operations :mod:`.parallel` runs, and the worker process that serves them.

The same functions run in the parent (its own share of a batch) and in the
workers, so both give the same answers. A worker is a fresh interpreter
(``python -c ...``, never a fork of the application), so its OpenSSL random
generator is seeded on its own and shares no state with the parent.

Wire format between parent and worker, on the worker's stdin and stdout:
frames of a 4-byte big-endian length followed by a pickle. The worker sends
:data:`READY` once it has imported everything, then answers each request
``(op, args)`` with ``OPS[op](*args)``, in order. It exits at end of input
(the parent closed the pipe, or died). Pickles only travel between the
parent and the children it started itself, over private pipes.
"""

from __future__ import annotations

import functools
import pickle
import signal
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from ..errors import MLSError
from .signature import SignatureScheme
from .suite import get_suite

READY = "ready"
HEADER = 4

#: ``(public key, message, signature)`` of one verification.
VerifyItem = tuple[bytes, bytes, bytes]
#: ``(public key, plaintext)`` of one HPKE seal.
SealItem = tuple[bytes, bytes]


def frame(obj: object) -> bytes:
    """One frame: the length of the pickle of ``obj``, then the pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(HEADER, "big") + data


@functools.lru_cache(maxsize=8)
def _scheme(name: str) -> SignatureScheme:
    return SignatureScheme(name)


def verify_items(scheme: str, items: list[VerifyItem]) -> list[bool]:
    """Whether each ``(public key, message, signature)`` verifies under ``scheme``.

    ``message`` is the complete signed content (SignContent of RFC 9420
    §5.1.2, label included).
    """
    sig = _scheme(scheme)
    out = []
    for pk, msg, signature in items:
        try:
            sig.verify(pk, msg, signature)
        except MLSError:
            out.append(False)
        else:
            out.append(True)
    return out


def seal_items(suite_id: int, info: bytes, items: list[SealItem]
               ) -> list[tuple[bytes, bytes] | None]:
    """HPKE ``SealBase(pk, info, "", plaintext)`` of each item (RFC 9180 §6.1).

    ``(enc, ciphertext)`` per item, ``None`` where the public key is unusable.
    """
    hpke = get_suite(suite_id).hpke
    out: list[tuple[bytes, bytes] | None] = []
    for pk, plaintext in items:
        try:
            out.append(hpke.seal_base(pk, info, b"", plaintext))
        except MLSError:
            out.append(None)
    return out


OPS: dict[str, Callable[..., list[Any]]] = {"verify": verify_items, "seal": seal_items}


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
        op, args = pickle.loads(body)
        out.write(frame(OPS[op](*args)))
        out.flush()


def main() -> None:
    """Entry point of a worker process (started by :mod:`.parallel`)."""
    # Ctrl-C in a terminal reaches the whole process group: leave it to the
    # parent, which ends its workers by closing their input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    serve(inp, out)
