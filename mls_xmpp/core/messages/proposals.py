"""The proposal types of RFC 9420 §12.1 and ProposalOrRef (§12.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from ..codec import U16, U32, Codec, Opaque, Reader, Struct, Vec, write_opaque
from ..errors import DecodeError
from ..schedule.psk import PreSharedKeyID
from .common import ProposalType
from .extensions import Extension, Extensions
from .key_package import KeyPackage
from .leaf_node import LeafNode

_EXTS = Vec(Extension.codec())


@dataclass(frozen=True)
class Add(Struct):
    """Add a member by KeyPackage (§12.1.1)."""

    PROPOSAL_TYPE: ClassVar[int] = ProposalType.ADD
    key_package: KeyPackage


@dataclass(frozen=True)
class Update(Struct):
    """Replace the sender's own leaf (§12.1.2)."""

    PROPOSAL_TYPE: ClassVar[int] = ProposalType.UPDATE
    leaf_node: LeafNode


@dataclass(frozen=True)
class Remove(Struct):
    """Remove the member at leaf index ``removed`` (§12.1.3)."""

    PROPOSAL_TYPE: ClassVar[int] = ProposalType.REMOVE
    removed: Annotated[int, U32]


@dataclass(frozen=True)
class PreSharedKey(Struct):
    """Inject a PSK into the next epoch's key schedule (§12.1.4)."""

    PROPOSAL_TYPE: ClassVar[int] = ProposalType.PSK
    psk: PreSharedKeyID


@dataclass(frozen=True)
class ReInit(Struct):
    """Close the group and re-create it with new parameters (§12.1.5)."""

    PROPOSAL_TYPE: ClassVar[int] = ProposalType.REINIT
    group_id: Annotated[bytes, Opaque]
    version: Annotated[int, U16]
    cipher_suite: Annotated[int, U16]
    extensions: Annotated[Extensions, _EXTS] = ()


@dataclass(frozen=True)
class ExternalInit(Struct):
    """The KEM output of an external joiner (§12.1.6)."""

    PROPOSAL_TYPE: ClassVar[int] = ProposalType.EXTERNAL_INIT
    kem_output: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class GroupContextExtensions(Struct):
    """Replace the group context's extensions (§12.1.7)."""

    PROPOSAL_TYPE: ClassVar[int] = ProposalType.GROUP_CONTEXT_EXTENSIONS
    extensions: Annotated[Extensions, _EXTS]


Proposal = Add | Update | Remove | PreSharedKey | ReInit | ExternalInit | GroupContextExtensions

PROPOSAL_CLASSES: dict[int, type[Proposal]] = {
    c.PROPOSAL_TYPE: c
    for c in (Add, Update, Remove, PreSharedKey, ReInit, ExternalInit, GroupContextExtensions)
}


class ProposalCodec(Codec[Proposal]):
    """``Proposal``: proposal_type then the body of that type."""

    def write(self, w: bytearray, value: Proposal) -> None:
        U16.write(w, value.PROPOSAL_TYPE)
        value.write(w)

    def read(self, r: Reader) -> Proposal:
        ptype = r.uint(2)
        cls = PROPOSAL_CLASSES.get(ptype)
        if cls is None:
            raise DecodeError(f"unsupported proposal type {ptype:#06x}")
        return cls.read(r)


PROPOSAL = ProposalCodec()


def encode_proposal(p: Proposal) -> bytes:
    """The wire encoding of a Proposal, type included."""
    return PROPOSAL.encode(p)


@dataclass(frozen=True)
class ProposalRef(Struct):
    """A proposal by reference: ProposalRef = RefHash of its AuthenticatedContent (§5.2)."""

    reference: Annotated[bytes, Opaque]


ProposalOrRef = Proposal | ProposalRef


class ProposalOrRefCodec(Codec[ProposalOrRef]):
    """``ProposalOrRef``: 1 = proposal by value, 2 = by reference (§12.4)."""

    def write(self, w: bytearray, value: ProposalOrRef) -> None:
        if isinstance(value, ProposalRef):
            w.append(2)
            write_opaque(w, value.reference)
        else:
            w.append(1)
            PROPOSAL.write(w, value)

    def read(self, r: Reader) -> ProposalOrRef:
        t = r.uint(1)
        if t == 1:
            return PROPOSAL.read(r)
        if t == 2:
            return ProposalRef(r.opaque())
        raise DecodeError(f"unknown ProposalOrRefType {t}")


PROPOSAL_OR_REF = ProposalOrRefCodec()
