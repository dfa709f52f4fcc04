"""Signature schemes of the MLS cipher suites (RFC 9420 §5.1.1, §5.1.2, §17.1).

Suites 1 and 3 sign with Ed25519, suites 4 and 6 with Ed448 (both RFC 8032);
suites 2, 7 and 5 use ECDSA over P-256/SHA-256, P-384/SHA-384 and
P-521/SHA-512.

Encodings (RFC 9420 §5.1.1, §5.1.2):

* EdDSA keys and signatures are the raw RFC 8032 byte strings.
* ECDSA public keys are the uncompressed point ``0x04 || X || Y``
  (``UncompressedPointRepresentation`` of RFC 8446 §4.2.8.2); private keys are
  the scalar as a big-endian integer of the curve's byte size (32/48/66);
  signatures are DER ``Ecdsa-Sig-Value``. Shorter private keys (leading zero
  bytes dropped, as some implementations write them) are accepted on input.

Parsing a key from bytes costs far more than most of the work done with it,
and the same few keys are used over and over (every leaf of a ratchet tree is
verified with its member's key), so parsed key objects are kept in bounded
LRU caches keyed by their encoding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import InvalidSignatureError, LocalUsageError

Rng = Callable[[int], bytes]

_PrivateKey = ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey
_PublicKey = ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey

#: How many parsed public / private key objects are kept per process.
PUBLIC_KEY_CACHE_SIZE = 4096
PRIVATE_KEY_CACHE_SIZE = 64

# Give up on rejection sampling after this many draws: an rng that keeps
# returning out-of-range values is broken (the chance of a real failure is
# below 2^-1000 for every curve).
_MAX_SAMPLING_ATTEMPTS = 1000


@dataclass(frozen=True)
class NistCurve:
    """Parameters of one NIST prime curve as MLS and HPKE use it."""

    name: str  # P256, P384, P521
    curve: type[ec.EllipticCurve]
    order: int  # order n of the base point (SEC 2 / FIPS 186-4 D.1.2)
    size: int  # bytes of a field element and of a scalar: 32, 48, 66
    top_mask: int  # mask for the leading byte of a ``size``-byte scalar candidate
    hash: type[hashes.HashAlgorithm]  # the ECDSA hash of the MLS suite

    @property
    def point_len(self) -> int:
        """Length of an uncompressed point: ``1 + 2 * size``."""
        return 1 + 2 * self.size


NIST_CURVES: dict[str, NistCurve] = {
    "P256": NistCurve(
        "P256", ec.SECP256R1,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        32, 0xFF, hashes.SHA256),
    "P384": NistCurve(
        "P384", ec.SECP384R1,
        int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
            "581A0DB248B0A77AECEC196ACCC52973", 16),
        48, 0xFF, hashes.SHA384),
    "P521": NistCurve(
        "P521", ec.SECP521R1,
        int("01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
            "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16),
        66, 0x01, hashes.SHA512),
}


def nist_private_key(curve: NistCurve, data: bytes) -> ec.EllipticCurvePrivateKey:
    """A private key from its big-endian scalar encoding.

    This is ``DeserializePrivateKey`` of RFC 9180 §7.1.2 for the NIST curves
    and the ECDSA private key encoding used here. We always *write*
    ``curve.size`` bytes, but on input leading zero bytes may be missing: other
    implementations drop them (the mlswg vectors contain 65-byte P-521 keys,
    both HPKE and ECDSA). Raises ``ValueError`` unless ``1 <= len(data) <=
    curve.size`` and ``1 <= d < n``.
    """
    if not 0 < len(data) <= curve.size:
        raise ValueError(f"{curve.name} private key must be at most {curve.size} bytes, "
                         f"got {len(data)}")
    d = int.from_bytes(data, "big")
    if not 0 < d < curve.order:
        raise ValueError(f"{curve.name} private scalar out of range")
    return ec.derive_private_key(d, curve.curve())


def nist_public_key(curve: NistCurve, data: bytes) -> ec.EllipticCurvePublicKey:
    """A public key from an uncompressed point (RFC 8446 §4.2.8.2, RFC 9180 §7.1.1).

    Compressed points, the point at infinity and points off the curve raise
    ``ValueError``.
    """
    if len(data) != curve.point_len or data[0] != 0x04:
        raise ValueError(f"{curve.name} public key is not an uncompressed point")
    return ec.EllipticCurvePublicKey.from_encoded_point(curve.curve(), data)


def nist_public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed point encoding of a NIST public key."""
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


@functools.lru_cache(maxsize=PUBLIC_KEY_CACHE_SIZE)
def _load_public(scheme: str, data: bytes) -> _PublicKey:
    """A signature public key from its RFC 9420 §5.1.1 encoding; ``ValueError`` if invalid."""
    if scheme == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(data)
    if scheme == "Ed448":
        return ed448.Ed448PublicKey.from_public_bytes(data)
    return nist_public_key(NIST_CURVES[scheme], data)


@functools.lru_cache(maxsize=PRIVATE_KEY_CACHE_SIZE)
def _load_private(scheme: str, data: bytes) -> tuple[_PrivateKey, bytes]:
    """A signature private key and its encoded public key (RFC 9420 §5.1.1, RFC 8032 §5.1.5)."""
    if scheme == "Ed25519":
        ed = ed25519.Ed25519PrivateKey.from_private_bytes(data)
        return ed, ed.public_key().public_bytes_raw()
    if scheme == "Ed448":
        ed4 = ed448.Ed448PrivateKey.from_private_bytes(data)
        return ed4, ed4.public_key().public_bytes_raw()
    key = nist_private_key(NIST_CURVES[scheme], data)
    return key, nist_public_bytes(key.public_key())


class SignatureScheme:
    """One signature scheme of RFC 9420 §17.1: Ed25519, Ed448, or ECDSA on P256/P384/P521.

    All keys and signatures are bytes in the encodings of RFC 9420 §5.1.1 and
    §5.1.2 (see the module docstring).
    """

    _ED_PRIVATE_LEN = {"Ed25519": 32, "Ed448": 57}

    def __init__(self, name: str) -> None:
        if name not in self._ED_PRIVATE_LEN and name not in NIST_CURVES:
            raise LocalUsageError(f"unknown signature scheme {name!r}")
        self.name = name
        self._curve: NistCurve | None = NIST_CURVES.get(name)
        self._ecdsa: ec.ECDSA | None = (
            ec.ECDSA(self._curve.hash()) if self._curve is not None else None)

    def __repr__(self) -> str:
        return f"SignatureScheme({self.name!r})"

    def generate(self, rng: Rng) -> tuple[bytes, bytes]:
        """A new key pair ``(private, public)`` derived from ``rng`` output.

        EdDSA: the private key is ``rng(32)`` (Ed25519) or ``rng(57)`` (Ed448),
        RFC 8032 §5.1.5/§5.2.5. ECDSA: a scalar in ``[1, n-1]`` drawn by
        rejection sampling from ``rng`` output (FIPS 186-4 B.4.2 style), with
        the leading byte masked to the bit length of ``n``.
        """
        curve = self._curve
        if curve is None:
            private = bytes(rng(self._ED_PRIVATE_LEN[self.name]))
        else:
            for _ in range(_MAX_SAMPLING_ATTEMPTS):
                candidate = bytearray(rng(curve.size))
                if len(candidate) != curve.size:
                    raise LocalUsageError("rng returned the wrong number of bytes")
                candidate[0] &= curve.top_mask
                if 0 < int.from_bytes(candidate, "big") < curve.order:
                    private = bytes(candidate)
                    break
            else:
                raise LocalUsageError("rng output never produced a valid ECDSA scalar")
        return private, self.public_key(private)

    def _private(self, private_key: bytes) -> tuple[_PrivateKey, bytes]:
        try:
            return _load_private(self.name, bytes(private_key))
        except ValueError as e:
            raise LocalUsageError(f"invalid {self.name} private key: {e}") from e

    def public_key(self, private_key: bytes) -> bytes:
        """The encoded public key belonging to an encoded private key (RFC 9420 §5.1.1).

        Raises :class:`LocalUsageError` for a malformed private key.
        """
        return self._private(private_key)[1]

    def sign(self, private_key: bytes, message: bytes) -> bytes:
        """``Signature.Sign`` (RFC 9420 §5.1.2): EdDSA per RFC 8032, ECDSA as DER.

        ECDSA signatures are randomised (OpenSSL's nonce generation).
        """
        key = self._private(private_key)[0]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            assert self._ecdsa is not None
            return key.sign(message, self._ecdsa)
        return key.sign(message)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """``Signature.Verify`` (RFC 9420 §5.1.2).

        Raises :class:`InvalidSignatureError` on any failure: a wrong signature,
        a malformed signature or a malformed public key.
        """
        try:
            key = _load_public(self.name, bytes(public_key))
            if isinstance(key, ec.EllipticCurvePublicKey):
                assert self._ecdsa is not None
                key.verify(bytes(signature), message, self._ecdsa)
            else:
                key.verify(bytes(signature), message)
        except Exception as e:  # any failure at all means "does not verify"
            raise InvalidSignatureError(f"{self.name} signature does not verify") from e
