"""Batches of independent public-key operations, and who computes them.

Adding thousands of members, joining a group of thousands, or the first update
after a bulk add each cost one signature verification or one HPKE encryption
per member. The core describes such a batch as plain data -- a
:class:`VerifyBatch` or a :class:`SealBatch`, bytes and a cipher suite number
that pickle as they are -- and hands it to the :class:`BatchCrypto` of the
group's :class:`~mls_xmpp.core.group.config.GroupConfig` (``batch_crypto``).

The core itself only has :data:`SERIAL`, which computes the batch in the
calling thread. It starts no thread or process and reads no environment: an
application that wants several cores passes its own :class:`BatchCrypto` (for
example :class:`mls_xmpp.workers.WorkerPool`, which the slixmpp plugin creates
and owns) and decides how and when its workers start and end.

A :class:`BatchCrypto` must return exactly what :meth:`VerifyBatch.run` and
:meth:`SealBatch.run` return for the same batch, in order, one result per
item; it is trusted as much as the crypto library. The core never relies on a
negative answer: a signature reported as invalid is verified again serially
and an encryption reported as failed (``None``) is redone serially, so errors
are always those of the serial code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import LocalUsageError, MLSError
from .suite import get_suite

__all__ = ["PREHASH_INFO_BYTES", "SERIAL", "BatchCrypto", "SealBatch", "SealItem", "SealResult",
           "SerialCrypto",
           "VerifyBatch", "VerifyItem"]

#: ``(public key, signed content, signature)`` of one verification; the content is
#: the complete SignContent (RFC 9420 §5.1.2), label included.
VerifyItem = tuple[bytes, bytes, bytes]
#: ``(public key, plaintext)`` of one HPKE seal.
SealItem = tuple[bytes, bytes]
#: ``(enc, ciphertext)`` of one seal, ``None`` where the public key is unusable.
SealResult = tuple[bytes, bytes] | None

#: From this length of ``info`` on, a :class:`SealBatch` hashes ``info`` once and
#: seals with our own key schedule (see :class:`SealBatch`).
PREHASH_INFO_BYTES = 8192


@dataclass(frozen=True)
class VerifyBatch:
    """Signature verifications under the signature scheme of cipher suite ``suite_id``."""

    suite_id: int
    items: tuple[VerifyItem, ...]

    def __len__(self) -> int:
        return len(self.items)

    def part(self, start: int, end: int) -> VerifyBatch:
        """The batch of items ``start`` to ``end`` (for a caller that splits the work)."""
        return VerifyBatch(self.suite_id, self.items[start:end])

    def run(self) -> list[bool]:
        """Whether each item verifies, computed here. Never raises for a bad key or signature."""
        scheme = get_suite(self.suite_id).signature
        out = []
        for public_key, content, signature in self.items:
            try:
                scheme.verify(public_key, content, signature)
            except MLSError:
                out.append(False)
            else:
                out.append(True)
        return out


@dataclass(frozen=True)
class SealBatch:
    """HPKE ``SealBase(pk, info, "", plaintext)`` (RFC 9180 §6.1) under suite ``suite_id``.

    With an ``info`` of at least :data:`PREHASH_INFO_BYTES` (a Welcome whose
    encrypted GroupInfo carries the ratchet tree) the key schedule's
    ``info_hash``, which depends on ``info`` alone, is computed once when the
    batch is made and every seal uses it
    (:meth:`Hpke.seal_base_hashed <mls_xmpp.core.crypto.hpke.Hpke.seal_base_hashed>`);
    :meth:`part` keeps it, and a pickled batch that has it travels without
    ``info`` (which it no longer needs). Shorter ``info`` goes to the native HPKE
    per seal, which is ~7 µs faster per seal than our key schedule (X25519)
    while hashing a short ``info`` costs ~0.65 µs per KiB.
    """

    suite_id: int
    info: bytes
    items: tuple[SealItem, ...]
    info_hash: bytes | None = None

    def __post_init__(self) -> None:
        if self.info_hash is None and len(self.info) >= PREHASH_INFO_BYTES:
            info_hash = get_suite(self.suite_id).hpke.info_hash(self.info)
            object.__setattr__(self, "info_hash", info_hash)

    def __reduce__(self) -> tuple[type[SealBatch], tuple[int, bytes, tuple[SealItem, ...],
                                                          bytes | None]]:
        info = b"" if self.info_hash is not None else self.info
        return SealBatch, (self.suite_id, info, self.items, self.info_hash)

    def __len__(self) -> int:
        return len(self.items)

    def part(self, start: int, end: int) -> SealBatch:
        """The batch of items ``start`` to ``end`` (for a caller that splits the work)."""
        return SealBatch(self.suite_id, self.info, self.items[start:end], self.info_hash)

    def run(self) -> list[SealResult]:
        """``(enc, ciphertext)`` per item, computed here; ``None`` where the key is unusable."""
        hpke = get_suite(self.suite_id).hpke
        out: list[SealResult] = []
        info_hash = self.info_hash
        if info_hash is not None:
            for public_key, plaintext in self.items:
                try:
                    out.append(hpke.seal_base_hashed(public_key, info_hash, plaintext))
                except MLSError:
                    out.append(None)
            return out
        for public_key, plaintext in self.items:
            try:
                out.append(hpke.seal_base(public_key, self.info, b"", plaintext))
            except MLSError:
                out.append(None)
        return out


class BatchCrypto(Protocol):
    """Computes batches of independent operations (see the module docstring)."""

    def verify(self, batch: VerifyBatch) -> list[bool]:
        """:meth:`VerifyBatch.run`, computed however the implementation likes."""
        ...

    def seal(self, batch: SealBatch) -> list[SealResult]:
        """:meth:`SealBatch.run`, computed however the implementation likes."""
        ...


class SerialCrypto:
    """The core's :class:`BatchCrypto`: every batch computed in the calling thread."""

    def verify(self, batch: VerifyBatch) -> list[bool]:
        """:meth:`VerifyBatch.run`."""
        return batch.run()

    def seal(self, batch: SealBatch) -> list[SealResult]:
        """:meth:`SealBatch.run`."""
        return batch.run()

    def __repr__(self) -> str:
        return "SERIAL"


#: The default of :attr:`GroupConfig.batch_crypto <mls_xmpp.core.group.config.GroupConfig>`.
SERIAL = SerialCrypto()


def check_results(results: Sequence[object], expected: int) -> None:
    """Refuse an answer of an injected :class:`BatchCrypto` with the wrong number of results."""
    if len(results) != expected:
        raise LocalUsageError(f"the batch crypto returned {len(results)} results for "
                              f"{expected} items")
