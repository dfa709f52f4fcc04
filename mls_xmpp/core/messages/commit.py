"""Commit and UpdatePath (RFC 9420 §12.4, §7.6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ..codec import EncodeOnce, Opaque, Optional, Reader, Struct, Vec, write_opaque
from .leaf_node import LeafNode
from .proposals import PROPOSAL_OR_REF, ProposalOrRef


@dataclass(frozen=True)
class HPKECiphertext(Struct):
    """An HPKE ciphertext: KEM output and AEAD ciphertext (§7.6)."""

    kem_output: Annotated[bytes, Opaque]
    ciphertext: Annotated[bytes, Opaque]

    # spelled out: an UpdatePath after a bulk add carries one per member
    def write(self, w: bytearray) -> None:
        write_opaque(w, self.kem_output)
        write_opaque(w, self.ciphertext)

    @classmethod
    def read(cls, r: Reader) -> HPKECiphertext:
        return cls(r.opaque(), r.opaque())


@dataclass(frozen=True)
class UpdatePathNode(Struct):
    """One node of an UpdatePath: the new public key and the encrypted path secrets."""

    encryption_key: Annotated[bytes, Opaque]
    encrypted_path_secret: tuple[HPKECiphertext, ...]


@dataclass(frozen=True)
class UpdatePath(Struct):
    """The committer's new leaf and one node per filtered direct path entry (§7.6)."""

    leaf_node: LeafNode
    nodes: tuple[UpdatePathNode, ...]


@dataclass(frozen=True)
class Commit(EncodeOnce):
    """A Commit: the proposals it covers and optionally an UpdatePath (§12.4).

    The encoding is kept (see :class:`EncodeOnce`): a Commit is encoded for its
    signature, for the confirmed transcript hash and for the message itself.
    """

    proposals: Annotated[tuple[ProposalOrRef, ...], Vec(PROPOSAL_OR_REF)] = ()
    path: Annotated[UpdatePath | None, Optional(UpdatePath.codec())] = None
