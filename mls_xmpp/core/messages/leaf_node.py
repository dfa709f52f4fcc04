"""LeafNode, Capabilities and Lifetime (RFC 9420 §7.2) with their signatures."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated

from ..codec import U16, U32, U64, EncodeOnce, Reader, Struct, Vec, varint_size, write_opaque
from ..errors import DecodeError, ValidationError
from .common import LeafNodeSource
from .credentials import Credential
from .extensions import Extension, Extensions

if TYPE_CHECKING:
    from ..crypto import CipherSuite

_EXTS = Vec(Extension.codec())
_U16S = Vec(U16)
#: Capabilities decoded, by their encoding: the members of a group mostly run the
#: same software, so a tree of thousands of leaves holds a few distinct ones.
_CAPABILITIES: dict[bytes, Capabilities] = {}
_CAPABILITIES_MAX = 256


@dataclass(frozen=True)
class Capabilities(Struct):
    """What a client supports (RFC 9420 §7.2)."""

    versions: Annotated[tuple[int, ...], Vec(U16)] = (1,)
    cipher_suites: Annotated[tuple[int, ...], Vec(U16)] = ()
    extensions: Annotated[tuple[int, ...], Vec(U16)] = ()
    proposals: Annotated[tuple[int, ...], Vec(U16)] = ()
    credentials: Annotated[tuple[int, ...], Vec(U16)] = ()

    @classmethod
    def read(cls, r: Reader) -> Capabilities:  # one per leaf of a tree: spelled out
        v = _U16S.read
        return cls(v(r), v(r), v(r), v(r), v(r))

    @classmethod
    def read_shared(cls, r: Reader) -> Capabilities:
        """:meth:`read`, returning the instance decoded before from the same bytes.

        (Frozen and made of tuples of ints: one instance can serve many leaves.)
        """
        start = pos = r.pos
        for _ in range(5):  # the five vectors' extent, bounds-checked
            r.pos = pos
            pos = r.varint()
            pos += r.pos
            if pos > r.end:
                raise DecodeError(f"vector of {pos - r.pos} bytes at offset {r.pos} runs "
                                  "past the end")
        r.pos = pos
        raw = r.data[start:pos]
        caps = _CAPABILITIES.get(raw)
        if caps is None:
            sub = Reader(raw)
            caps = cls.read(sub)
            sub.finish()
            if len(_CAPABILITIES) >= _CAPABILITIES_MAX:  # odd input: start afresh
                _CAPABILITIES.clear()
            _CAPABILITIES[raw] = caps
        return caps


@dataclass(frozen=True)
class Lifetime(Struct):
    """Validity interval of a KeyPackage's leaf, in seconds since the epoch (§7.2)."""

    not_before: Annotated[int, U64]
    not_after: Annotated[int, U64]

    @classmethod
    def read(cls, r: Reader) -> Lifetime:
        return cls(r.uint(8), r.uint(8))

    def contains(self, now: int) -> bool:
        """True when ``now`` lies inside the interval."""
        return self.not_before <= now <= self.not_after


@dataclass(frozen=True)
class LeafNode(EncodeOnce):
    """A LeafNode; ``lifetime`` is set for source key_package, ``parent_hash`` for commit.

    The encoding is kept once computed (or as decoded, see :class:`EncodeOnce`):
    a leaf is encoded for its signature, in KeyPackages, Commits and tree hashes.
    """

    encryption_key: bytes
    signature_key: bytes
    credential: Credential
    capabilities: Capabilities
    leaf_node_source: int
    lifetime: Lifetime | None = None
    parent_hash: bytes | None = None
    extensions: Extensions = ()
    signature: bytes = b""

    def _write_content(self, w: bytearray) -> None:
        write_opaque(w, self.encryption_key)
        write_opaque(w, self.signature_key)
        self.credential.write(w)
        self.capabilities.write(w)
        w.append(self.leaf_node_source)
        src = self.leaf_node_source
        if src == LeafNodeSource.KEY_PACKAGE:
            if self.lifetime is None:
                raise ValidationError("key_package leaf node without lifetime")
            self.lifetime.write(w)
        elif src == LeafNodeSource.COMMIT:
            write_opaque(w, self.parent_hash or b"")
        elif src != LeafNodeSource.UPDATE:
            raise ValidationError(f"unknown leaf_node_source {src}")
        _EXTS.write(w, self.extensions)

    def write_fields(self, w: bytearray) -> None:
        self._write_content(w)
        write_opaque(w, self.signature)

    @classmethod
    def read_fields(cls, r: Reader) -> LeafNode:
        encryption_key = r.opaque()
        signature_key = r.opaque()
        credential = Credential.read(r)
        capabilities = Capabilities.read_shared(r)
        src = r.uint(1)
        lifetime = parent_hash = None
        if src == LeafNodeSource.KEY_PACKAGE:
            lifetime = Lifetime.read(r)
        elif src == LeafNodeSource.COMMIT:
            parent_hash = r.opaque()
        elif src != LeafNodeSource.UPDATE:
            raise DecodeError(f"unknown leaf_node_source {src}")
        if r.pos < r.end and r.data[r.pos] == 0:  # no extensions, as in most leaves
            r.pos += 1
            extensions: Extensions = ()
        else:
            extensions = _EXTS.read(r)
        signature = r.opaque()
        return cls(encryption_key, signature_key, credential, capabilities, src, lifetime,
                   parent_hash, extensions, signature)

    def tbs(self, group_id: bytes | None = None, leaf_index: int | None = None) -> bytes:
        """LeafNodeTBS (§7.2): group_id and leaf_index only for update/commit leaves."""
        # LeafNodeTBS starts with the encoding minus its trailing signature
        encoded = self.encode()
        n = len(self.signature)
        content = encoded[:len(encoded) - n - varint_size(n)]
        if self.leaf_node_source == LeafNodeSource.KEY_PACKAGE:
            return content
        w = bytearray(content)
        if self.leaf_node_source in (LeafNodeSource.UPDATE, LeafNodeSource.COMMIT):
            if group_id is None or leaf_index is None:
                raise ValidationError("an update/commit leaf node is signed in a group context")
            write_opaque(w, group_id)
            U32.write(w, leaf_index)
        return bytes(w)

    def signed(self, suite: CipherSuite, signature_private_key: bytes,
               group_id: bytes | None = None, leaf_index: int | None = None) -> LeafNode:
        """A copy with ``signature`` = SignWithLabel(., "LeafNodeTBS", LeafNodeTBS)."""
        unsigned = replace(self, signature=b"")
        sig = suite.sign_with_label(signature_private_key, "LeafNodeTBS",
                                    unsigned.tbs(group_id, leaf_index))
        return replace(unsigned, signature=sig)

    def signature_item(self, group_id: bytes | None = None, leaf_index: int | None = None
                       ) -> tuple[bytes, str, bytes, bytes]:
        """``(public key, label, content, signature)`` of VerifyWithLabel for this leaf."""
        return self.signature_key, "LeafNodeTBS", self.tbs(group_id, leaf_index), self.signature

    def verify_signature(self, suite: CipherSuite, group_id: bytes | None = None,
                         leaf_index: int | None = None) -> None:
        """Check the leaf's signature with its own signature_key (§7.3)."""
        suite.verify_with_label(*self.signature_item(group_id, leaf_index))

    def find_extension(self, extension_type: int) -> bytes | None:
        """Data of the leaf extension of ``extension_type``, or ``None``."""
        for e in self.extensions:
            if e.extension_type == extension_type:
                return e.extension_data
        return None
