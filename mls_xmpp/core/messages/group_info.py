"""GroupContext (RFC 9420 §8.1) and GroupInfo (§12.4.3)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated

from ..codec import U16, U32, U64, EncodeOnce, Opaque, Struct, Vec, write_opaque
from .extensions import Extension, Extensions

if TYPE_CHECKING:
    from ..crypto import CipherSuite

_EXTS = Vec(Extension.codec())


@dataclass(frozen=True)
class GroupContext(EncodeOnce):
    """The state every member agrees on in an epoch (§8.1).

    The encoding is kept (see :class:`EncodeOnce`): it is the signing context
    of every message of the epoch.
    """

    version: Annotated[int, U16]
    cipher_suite: Annotated[int, U16]
    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    tree_hash: Annotated[bytes, Opaque]
    confirmed_transcript_hash: Annotated[bytes, Opaque]
    extensions: Annotated[Extensions, _EXTS] = ()


@dataclass(frozen=True)
class GroupInfo(Struct):
    """What a joiner needs besides the tree: context, extensions, tag, signer (§12.4.3)."""

    group_context: GroupContext
    extensions: Annotated[Extensions, _EXTS]
    confirmation_tag: Annotated[bytes, Opaque]
    signer: Annotated[int, U32]
    signature: Annotated[bytes, Opaque] = b""

    def tbs(self) -> bytes:
        """GroupInfoTBS: every field but the signature."""
        w = bytearray()
        self.group_context.write(w)
        _EXTS.write(w, self.extensions)
        write_opaque(w, self.confirmation_tag)
        U32.write(w, self.signer)
        return bytes(w)

    def signed(self, suite: CipherSuite, signature_private_key: bytes) -> GroupInfo:
        """A copy signed with SignWithLabel(., "GroupInfoTBS", GroupInfoTBS)."""
        sig = suite.sign_with_label(signature_private_key, "GroupInfoTBS", self.tbs())
        return replace(self, signature=sig)

    def verify_signature(self, suite: CipherSuite, signer_public_key: bytes) -> None:
        """Check the signature with the signer leaf's key (§12.4.3.1)."""
        suite.verify_with_label(signer_public_key, "GroupInfoTBS", self.tbs(), self.signature)
