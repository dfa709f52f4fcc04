"""Pre-shared keys: PreSharedKeyID, PSKLabel and the psk_secret chain (RFC 9420 §8.4).

:class:`PreSharedKeyID` is a wire structure with a ``select`` on ``psktype``;
it is used by PreSharedKey proposals and GroupSecrets (the messages layer
imports it from here). Only the fields of its own variant are set, the others
are ``None``::

    PreSharedKeyID.external(psk_id, psk_nonce)
    PreSharedKeyID.resumption(usage, psk_group_id, psk_epoch, psk_nonce)

:func:`psk_secret` chains a list of ``(PreSharedKeyID, psk)`` pairs into the
``psk_secret`` input of the key schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

from ..codec import U16, Reader, Struct, write_opaque
from ..crypto.suite import CipherSuite
from ..errors import DecodeError, LocalUsageError

__all__ = ["PSKLabel", "PSKType", "PreSharedKeyID", "ResumptionPSKUsage", "psk_secret"]


class PSKType(IntEnum):
    """PSKType (RFC 9420 §8.4)."""

    EXTERNAL = 1
    RESUMPTION = 2


class ResumptionPSKUsage(IntEnum):
    """ResumptionPSKUsage (RFC 9420 §8.4)."""

    APPLICATION = 1
    REINIT = 2
    BRANCH = 3


@dataclass(frozen=True)
class PreSharedKeyID(Struct):
    """PreSharedKeyID (RFC 9420 §8.4).

    ``psk_id`` is set for external PSKs; ``usage``, ``psk_group_id`` and
    ``psk_epoch`` for resumption PSKs. ``usage`` is kept as a plain ``int``
    so that values outside :class:`ResumptionPSKUsage` survive a round trip;
    judging them is left to proposal validation (§12.2).
    """

    psktype: int
    psk_nonce: bytes
    psk_id: bytes | None = None
    usage: int | None = None
    psk_group_id: bytes | None = None
    psk_epoch: int | None = None

    def __post_init__(self) -> None:
        resumption = (self.usage, self.psk_group_id, self.psk_epoch)
        if self.psktype == PSKType.EXTERNAL:
            if self.psk_id is None or any(v is not None for v in resumption):
                raise LocalUsageError("an external PreSharedKeyID has psk_id and nothing else")
        elif self.psktype == PSKType.RESUMPTION:
            if self.psk_id is not None or any(v is None for v in resumption):
                raise LocalUsageError(
                    "a resumption PreSharedKeyID has usage, psk_group_id and psk_epoch only")
            assert self.usage is not None and self.psk_epoch is not None
            if not 0 <= self.usage <= 0xFF or not 0 <= self.psk_epoch <= 0xFFFFFFFFFFFFFFFF:
                raise LocalUsageError("usage is a uint8 and psk_epoch a uint64")
        else:
            raise LocalUsageError(f"unknown PSKType {self.psktype}")

    @classmethod
    def external(cls, psk_id: bytes, psk_nonce: bytes) -> PreSharedKeyID:
        """An ``external`` PreSharedKeyID."""
        return cls(PSKType.EXTERNAL, psk_nonce, psk_id=psk_id)

    @classmethod
    def resumption(cls, usage: int, psk_group_id: bytes, psk_epoch: int,
                   psk_nonce: bytes) -> PreSharedKeyID:
        """A ``resumption`` PreSharedKeyID for ``resumption_psk`` of a group's epoch."""
        return cls(PSKType.RESUMPTION, psk_nonce, usage=usage, psk_group_id=psk_group_id,
                   psk_epoch=psk_epoch)

    def write(self, w: bytearray) -> None:
        """Append the encoding: psktype, the selected fields, psk_nonce."""
        w.append(self.psktype)
        if self.psk_id is not None:
            write_opaque(w, self.psk_id)
        else:
            assert self.usage is not None and self.psk_group_id is not None
            assert self.psk_epoch is not None
            w.append(self.usage)
            write_opaque(w, self.psk_group_id)
            w += self.psk_epoch.to_bytes(8, "big")
        write_opaque(w, self.psk_nonce)

    @classmethod
    def read(cls, r: Reader) -> PreSharedKeyID:
        """Read one PreSharedKeyID; an unknown psktype is a :class:`DecodeError`."""
        psktype = r.uint(1)
        if psktype == PSKType.EXTERNAL:
            psk_id = r.opaque()
            return cls(PSKType.EXTERNAL, r.opaque(), psk_id=psk_id)
        if psktype == PSKType.RESUMPTION:
            usage = r.uint(1)
            group_id = r.opaque()
            epoch = r.uint(8)
            return cls(PSKType.RESUMPTION, r.opaque(), usage=usage, psk_group_id=group_id,
                       psk_epoch=epoch)
        raise DecodeError(f"unknown PSKType {psktype}")


@dataclass(frozen=True)
class PSKLabel(Struct):
    """PSKLabel (RFC 9420 §8.4): the context of ``psk_input_[i]``."""

    id: PreSharedKeyID
    index: Annotated[int, U16]
    count: Annotated[int, U16]


def psk_secret(suite: CipherSuite, psks: Sequence[tuple[PreSharedKeyID, bytes]]) -> bytes:
    """``psk_secret`` from ``(PreSharedKeyID, psk)`` pairs, in order (RFC 9420 §8.4).

    ::

        psk_extracted_[i] = KDF.Extract(0, psk_[i])
        psk_input_[i]     = ExpandWithLabel(psk_extracted_[i], "derived psk",
                                            PSKLabel, KDF.Nh)
        psk_secret_[0]    = 0
        psk_secret_[i]    = KDF.Extract(psk_input_[i-1], psk_secret_[i-1])

    With no PSKs the result is ``KDF.Nh`` zero bytes.
    """
    count = len(psks)
    if count > 0xFFFF:
        raise LocalUsageError(f"{count} PSKs do not fit PSKLabel.count (uint16)")
    nh = suite.hash_len
    zero = bytes(nh)
    secret = zero
    for index, (psk_id, psk) in enumerate(psks):
        extracted = suite.extract(zero, psk)
        label = PSKLabel(psk_id, index, count).encode()
        psk_input = suite.expand_with_label(extracted, "derived psk", label, nh)
        secret = suite.extract(psk_input, secret)
    return secret
