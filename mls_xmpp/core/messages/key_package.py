"""KeyPackage (RFC 9420 §10) and KeyPackageRef (§5.2)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated

from ..codec import U16, Opaque, Reader, Struct, Vec, write_opaque
from .extensions import Extension, Extensions
from .leaf_node import LeafNode

if TYPE_CHECKING:
    from ..crypto import CipherSuite

_EXTS = Vec(Extension.codec())


@dataclass(frozen=True)
class KeyPackage(Struct):
    """A KeyPackage: a client's offer to be added to groups (§10)."""

    version: Annotated[int, U16]
    cipher_suite: Annotated[int, U16]
    init_key: Annotated[bytes, Opaque]
    leaf_node: LeafNode
    extensions: Annotated[Extensions, _EXTS]
    signature: Annotated[bytes, Opaque] = b""

    def tbs(self) -> bytes:
        """KeyPackageTBS: every field but the signature."""
        w = bytearray()
        U16.write(w, self.version)
        U16.write(w, self.cipher_suite)
        write_opaque(w, self.init_key)
        self.leaf_node.write(w)
        _EXTS.write(w, self.extensions)
        return bytes(w)

    def signed(self, suite: CipherSuite, signature_private_key: bytes) -> KeyPackage:
        """A copy signed with SignWithLabel(., "KeyPackageTBS", KeyPackageTBS)."""
        sig = suite.sign_with_label(signature_private_key, "KeyPackageTBS", self.tbs())
        return replace(self, signature=sig)

    def verify_signature(self, suite: CipherSuite) -> None:
        """Check the signature with the leaf's signature_key (§10.1)."""
        suite.verify_with_label(self.leaf_node.signature_key, "KeyPackageTBS", self.tbs(),
                                self.signature)

    def ref(self, suite: CipherSuite) -> bytes:
        """KeyPackageRef = RefHash("MLS 1.0 KeyPackage Reference", KeyPackage) (§5.2)."""
        return suite.ref_hash("MLS 1.0 KeyPackage Reference", self.encode())

    @classmethod
    def read(cls, r: Reader) -> KeyPackage:
        return cls(r.uint(2), r.uint(2), r.opaque(), LeafNode.read(r), _EXTS.read(r),
                   r.opaque())
