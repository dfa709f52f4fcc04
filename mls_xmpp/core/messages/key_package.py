"""KeyPackage (RFC 9420 §10) and KeyPackageRef (§5.2)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated

from ..codec import U16, EncodeOnce, Opaque, Reader, Vec, varint_size
from .common import LeafNodeSource
from .credentials import Credential
from .extensions import Extension, Extensions
from .leaf_node import Capabilities, LeafNode, Lifetime

if TYPE_CHECKING:
    from ..crypto import CipherSuite, Rng

_EXTS = Vec(Extension.codec())
#: Instance attribute (not a field) caching ``(suite id, KeyPackageRef)``.
_REF = "_ref_"


@dataclass(frozen=True)
class KeyPackage(EncodeOnce):
    """A KeyPackage: a client's offer to be added to groups (§10).

    The encoding is kept once computed (or as decoded, see :class:`EncodeOnce`),
    and so is the KeyPackageRef: both are needed several times per Add.
    """

    version: Annotated[int, U16]
    cipher_suite: Annotated[int, U16]
    init_key: Annotated[bytes, Opaque]
    leaf_node: LeafNode
    extensions: Annotated[Extensions, _EXTS]
    signature: Annotated[bytes, Opaque] = b""

    def tbs(self) -> bytes:
        """KeyPackageTBS: every field but the signature."""
        encoded = self.encode()
        n = len(self.signature)
        return encoded[:len(encoded) - n - varint_size(n)]

    def signed(self, suite: CipherSuite, signature_private_key: bytes) -> KeyPackage:
        """A copy signed with SignWithLabel(., "KeyPackageTBS", KeyPackageTBS)."""
        sig = suite.sign_with_label(signature_private_key, "KeyPackageTBS", self.tbs())
        return replace(self, signature=sig)

    def signature_item(self) -> tuple[bytes, str, bytes, bytes]:
        """``(public key, label, content, signature)`` of VerifyWithLabel for this KeyPackage."""
        return self.leaf_node.signature_key, "KeyPackageTBS", self.tbs(), self.signature

    def verify_signature(self, suite: CipherSuite) -> None:
        """Check the signature with the leaf's signature_key (§10.1)."""
        suite.verify_with_label(*self.signature_item())

    def ref(self, suite: CipherSuite) -> bytes:
        """KeyPackageRef = RefHash("MLS 1.0 KeyPackage Reference", KeyPackage) (§5.2)."""
        cached: tuple[int, bytes] | None = self.__dict__.get(_REF)
        if cached is not None and cached[0] == suite.id:
            return cached[1]
        ref = suite.ref_hash("MLS 1.0 KeyPackage Reference", self.encode())
        object.__setattr__(self, _REF, (suite.id, ref))
        return ref

    @classmethod
    def read_fields(cls, r: Reader) -> KeyPackage:
        return cls(r.uint(2), r.uint(2), r.opaque(), LeafNode.read(r), _EXTS.read(r),
                   r.opaque())


@dataclass(frozen=True, repr=False)
class KeyPackageBundle:
    """A KeyPackage with the private keys its owner keeps until it is used (§10)."""

    key_package: KeyPackage
    init_private_key: bytes
    encryption_private_key: bytes

    def __repr__(self) -> str:
        return f"KeyPackageBundle(suite={self.key_package.cipher_suite}, <private keys>)"


def build_key_package(suite: CipherSuite, signature_private_key: bytes, credential: Credential,
                      *, not_before: int, not_after: int,
                      capabilities: Capabilities | None = None,
                      leaf_extensions: Extensions = (), extensions: Extensions = (),
                      rng: Rng = os.urandom) -> KeyPackageBundle:
    """Make and sign a fresh KeyPackage (RFC 9420 §10) for ``credential``.

    ``capabilities`` default to this implementation's: version 1, the given
    suite, and the credential's type.
    """
    init_priv, init_pub = suite.generate_kem_key_pair(rng)
    enc_priv, enc_pub = suite.generate_kem_key_pair(rng)
    caps = capabilities or Capabilities(
        versions=(1,), cipher_suites=(suite.id,), extensions=(), proposals=(),
        credentials=(credential.credential_type,))
    leaf = LeafNode(enc_pub, suite.signature_public_key(signature_private_key), credential, caps,
                    LeafNodeSource.KEY_PACKAGE, Lifetime(not_before, not_after),
                    extensions=leaf_extensions).signed(suite, signature_private_key)
    kp = KeyPackage(1, suite.id, init_pub, leaf, extensions).signed(suite, signature_private_key)
    return KeyPackageBundle(kp, init_priv, enc_priv)
