"""MLS cipher suites 1-7 (RFC 9420 §5.1, §17.1) and the labelled helpers.

A :class:`CipherSuite` bundles everything one suite needs: the hash, HKDF, the
AEAD, the HPKE KEM and the signature scheme, plus the RFC 9420 constructions on
top of them (ExpandWithLabel, DeriveSecret, DeriveTreeSecret, RefHash,
SignWithLabel, EncryptWithLabel).

Keys cross this API as bytes in their RFC 9420 encodings:

* HPKE keys: ``SerializePublicKey`` / ``SerializePrivateKey`` of RFC 9180 §7.1
  (X25519/X448 raw, NIST curves: uncompressed point and big-endian scalar).
* Signature keys: Ed25519/Ed448 raw (RFC 8032); ECDSA public keys as an
  uncompressed point, private keys as a big-endian scalar of the curve's size.
* Signatures: EdDSA ``R || S``; ECDSA DER (RFC 9420 §5.1.2).

Randomness is injected: functions that need it take ``rng``, a callable that
returns that many random bytes (``os.urandom`` by default).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..codec import encode_opaque
from ..errors import DecryptionError, LocalUsageError, UnsupportedCipherSuiteError

try:  # OpenSSL's HMAC without hmac.py's wrappers around it: 15-30 % less per call
    import _hashlib

    _hmac_digest = _hashlib.hmac_digest
    _hmac_new = _hashlib.hmac_new
except ImportError:  # pragma: no cover - a Python built without OpenSSL's hashlib
    _hmac_digest = hmac.digest  # type: ignore[assignment]
    _hmac_new = hmac.new  # type: ignore[assignment]

if TYPE_CHECKING:
    from .batch import BatchCrypto

Rng = Callable[[int], bytes]

LABEL_PREFIX = b"MLS 1.0 "


#: Labels whose encodings a suite keeps (more would only come from an
#: application calling the exporter with ever new labels).
_LABEL_CACHE_SIZE = 256
#: Label types that may key those caches (a bytearray could change afterwards).
_HASHABLE = (str, bytes)


def _label(label: str | bytes) -> bytes:
    return label.encode() if isinstance(label, str) else label


def _opaque(data: bytes) -> bytes:
    """``opaque<V>``, with the one-byte length fast path."""
    n = len(data)
    return bytes((n,)) + data if n < 64 else encode_opaque(data)


@dataclass(frozen=True)
class SuiteParams:
    """The algorithm choices of one cipher suite (RFC 9420 §17.1)."""

    id: int
    name: str
    hash_name: str  # hashlib name: sha256, sha384, sha512
    kem: str  # X25519, X448, P256, P384, P521
    kem_id: int  # RFC 9180 KEM identifier
    kdf_id: int  # RFC 9180 KDF identifier
    aead: str  # AES128GCM, AES256GCM, CHACHA20POLY1305
    aead_id: int  # RFC 9180 AEAD identifier
    signature: str  # Ed25519, Ed448, P256, P384, P521 (ECDSA)


SUITE_PARAMS: dict[int, SuiteParams] = {
    1: SuiteParams(1, "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
                   "sha256", "X25519", 0x0020, 0x0001, "AES128GCM", 0x0001, "Ed25519"),
    2: SuiteParams(2, "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
                   "sha256", "P256", 0x0010, 0x0001, "AES128GCM", 0x0001, "P256"),
    3: SuiteParams(3, "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
                   "sha256", "X25519", 0x0020, 0x0001, "CHACHA20POLY1305", 0x0003, "Ed25519"),
    4: SuiteParams(4, "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448",
                   "sha512", "X448", 0x0021, 0x0003, "AES256GCM", 0x0002, "Ed448"),
    5: SuiteParams(5, "MLS_256_DHKEMP521_AES256GCM_SHA512_P521",
                   "sha512", "P521", 0x0012, 0x0003, "AES256GCM", 0x0002, "P521"),
    6: SuiteParams(6, "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448",
                   "sha512", "X448", 0x0021, 0x0003, "CHACHA20POLY1305", 0x0003, "Ed448"),
    7: SuiteParams(7, "MLS_256_DHKEMP384_AES256GCM_SHA384_P384",
                   "sha384", "P384", 0x0011, 0x0002, "AES256GCM", 0x0002, "P384"),
}

_AEAD_KEY_LEN = {"AES128GCM": 16, "AES256GCM": 32, "CHACHA20POLY1305": 32}


class CipherSuite:
    """One MLS cipher suite; obtain instances with :func:`get_suite`."""

    def __init__(self, params: SuiteParams) -> None:
        from .hpke import Hpke
        from .signature import SignatureScheme

        self.params = params
        self.id = params.id
        self.name = params.name
        self._hash_name = params.hash_name
        self._hash_ctor = getattr(hashlib, params.hash_name)
        #: Output size of the hash and the KDF (RFC 9420: ``KDF.Nh``).
        self.hash_len: int = self._hash_ctor().digest_size
        #: AEAD key size (``AEAD.Nk``).
        self.aead_key_len: int = _AEAD_KEY_LEN[params.aead]
        #: AEAD nonce size (``AEAD.Nn``).
        self.aead_nonce_len: int = 12
        self._aead_cls = ChaCha20Poly1305 if params.aead == "CHACHA20POLY1305" else AESGCM
        self.hpke = Hpke(params)
        self.signature = SignatureScheme(params.signature)
        # encodings of labels, computed once: (label, length) -> the KDFLabel
        # head of ExpandWithLabel; label -> opaque("MLS 1.0 " + label)
        self._kdf_heads: dict[tuple[str | bytes, int], bytes] = {}
        self._labels: dict[str | bytes, bytes] = {}

    def __repr__(self) -> str:
        return f"CipherSuite({self.id}, {self.name})"

    # -- hash and KDF ------------------------------------------------------

    def hash(self, data: bytes) -> bytes:
        """``Hash(data)`` of the suite."""
        digest: bytes = self._hash_ctor(data).digest()
        return digest

    def mac(self, key: bytes, data: bytes) -> bytes:
        """``MAC(key, data)``: HMAC with the suite's hash (RFC 9420 §5.1)."""
        return _hmac_digest(key, data, self._hash_name)

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        """``KDF.Extract(salt, ikm)``: HKDF-Extract (RFC 5869)."""
        return _hmac_digest(salt or bytes(self.hash_len), ikm, self._hash_name)

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        """``KDF.Expand(prk, info, length)``: HKDF-Expand (RFC 5869)."""
        if 0 < length <= self.hash_len:  # one block: T(1) = HMAC(prk, info || 0x01)
            return _hmac_digest(prk, info + b"\x01", self._hash_name)[:length]
        if length > 255 * self.hash_len:
            raise LocalUsageError(f"HKDF-Expand length {length} too large")
        out = bytearray()
        block = b""
        counter = 1
        name = self._hash_name
        while len(out) < length:
            block = _hmac_digest(prk, block + info + bytes((counter,)), name)
            out += block
            counter += 1
        return bytes(out[:length])

    def _kdf_head(self, label: str | bytes, length: int) -> bytes:
        """The KDFLabel up to its context: uint16 length, opaque("MLS 1.0 " + label)."""
        key = (label, length)
        head = self._kdf_heads.get(key) if isinstance(label, _HASHABLE) else None
        if head is None:
            head = length.to_bytes(2, "big") + encode_opaque(LABEL_PREFIX + _label(label))
            if isinstance(label, _HASHABLE) and len(self._kdf_heads) < _LABEL_CACHE_SIZE:
                self._kdf_heads[key] = head
        return head

    def expand_with_label(self, secret: bytes, label: str | bytes, context: bytes,
                          length: int) -> bytes:
        """``ExpandWithLabel`` (RFC 9420 §8): KDFLabel = length, "MLS 1.0 "+label, context."""
        try:  # the path of every message: the cached head, one HMAC block
            head = self._kdf_heads[label, length]
        except (KeyError, TypeError):  # not cached yet, or an unhashable label
            head = self._kdf_head(label, length)
        if 0 < length <= self.hash_len and len(context) < 64:
            return _hmac_digest(secret, b"".join((head, bytes((len(context),)), context,
                                                  b"\x01")), self._hash_name)[:length]
        return self.expand(secret, head + _opaque(context), length)

    def expand_with_labels(self, secret: bytes, context: bytes,
                           labels: Sequence[tuple[str | bytes, int]]) -> list[bytes]:
        """``ExpandWithLabel(secret, label, context, length)`` for each ``(label, length)``.

        The same bytes as one :meth:`expand_with_label` per item, with the HMAC key
        set up once for all of them (e.g. a key and a nonce from one secret).
        """
        hash_len = self.hash_len
        for _, length in labels:
            if not 0 < length <= hash_len:  # more than one HKDF block: one by one
                return [self.expand_with_label(secret, label, context, n) for label, n in labels]
        if len(context) >= 64:
            return [self.expand_with_label(secret, label, context, n) for label, n in labels]
        mac = _hmac_new(secret, digestmod=self._hash_name)
        tail = bytes((len(context),)) + context + b"\x01"
        heads = self._kdf_heads
        out = []
        for label, length in labels:
            try:
                head = heads[label, length]
            except (KeyError, TypeError):  # not cached yet, or an unhashable label
                head = self._kdf_head(label, length)
            one = mac.copy()
            one.update(head + tail)
            out.append(one.digest()[:length])
        return out

    def labelled(self, label: str | bytes) -> bytes:
        """``opaque("MLS 1.0 " + label)``: the head of SignContent and EncryptContext (§5.1)."""
        encoded = self._labels.get(label) if isinstance(label, _HASHABLE) else None
        if encoded is None:
            encoded = encode_opaque(LABEL_PREFIX + _label(label))
            if isinstance(label, _HASHABLE) and len(self._labels) < _LABEL_CACHE_SIZE:
                self._labels[label] = encoded
        return encoded

    def derive_secret(self, secret: bytes, label: str | bytes) -> bytes:
        """``DeriveSecret(secret, label)`` (RFC 9420 §8)."""
        return self.expand_with_label(secret, label, b"", self.hash_len)

    def derive_tree_secret(self, secret: bytes, label: str | bytes, generation: int,
                           length: int) -> bytes:
        """``DeriveTreeSecret(secret, label, generation, length)`` (RFC 9420 §9)."""
        return self.expand_with_label(secret, label, generation.to_bytes(4, "big"), length)

    def derive_tree_secrets(self, secret: bytes, generation: int,
                            labels: Sequence[tuple[str | bytes, int]]) -> list[bytes]:
        """:meth:`derive_tree_secret` for each ``(label, length)``, the HMAC key set up once."""
        return self.expand_with_labels(secret, generation.to_bytes(4, "big"), labels)

    def ref_hash(self, label: str | bytes, value: bytes) -> bytes:
        """``RefHash(label, value)`` (RFC 9420 §5.2); the label is used as given."""
        return self.hash(encode_opaque(_label(label)) + encode_opaque(value))

    # -- AEAD --------------------------------------------------------------

    def aead_seal(self, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """AEAD encryption; the result is ciphertext || tag."""
        return self._aead_cls(key).encrypt(nonce, plaintext, aad)

    def aead_open(self, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        """AEAD decryption; raises :class:`DecryptionError` when the tag is wrong."""
        try:
            return self._aead_cls(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag as e:
            raise DecryptionError("AEAD authentication failed") from e
        except ValueError as e:  # wrong key or nonce size from a hostile peer
            raise DecryptionError(f"AEAD input rejected: {e}") from e

    # -- signatures (RFC 9420 §5.1.2) ---------------------------------------

    def generate_signature_key_pair(self, rng: Rng = os.urandom) -> tuple[bytes, bytes]:
        """A new signature key pair as ``(private, public)`` bytes."""
        return self.signature.generate(rng)

    def signature_public_key(self, private_key: bytes) -> bytes:
        """The public key that belongs to a signature private key."""
        return self.signature.public_key(private_key)

    def sign_with_label(self, private_key: bytes, label: str | bytes, content: bytes) -> bytes:
        """``SignWithLabel``: sign SignContent{"MLS 1.0 "+label, content}."""
        return self.signature.sign(private_key, self.labelled(label) + _opaque(content))

    def verify_with_label(self, public_key: bytes, label: str | bytes, content: bytes,
                          signature: bytes) -> None:
        """``VerifyWithLabel``; raises :class:`InvalidSignatureError` on failure."""
        self.signature.verify(public_key, self.labelled(label) + _opaque(content), signature)

    def verify_with_label_many(self, items: Sequence[tuple[bytes, str | bytes, bytes, bytes]],
                               crypto: BatchCrypto | None = None) -> list[bool]:
        """Whether each ``(public_key, label, content, signature)`` passes ``VerifyWithLabel``.

        The batch is computed by ``crypto`` (default: serially here; see
        :mod:`.batch`). Never raises for a bad signature: a caller that needs
        the error redoes the failed item with :meth:`verify_with_label`.
        """
        from .batch import SERIAL, VerifyBatch, check_results

        batch = VerifyBatch(self.id, tuple(
            (pk, self.labelled(label) + _opaque(content), sig)
            for pk, label, content, sig in items))
        out = (crypto or SERIAL).verify(batch)
        check_results(out, len(batch))
        return out

    # -- HPKE (RFC 9420 §5.1.3, RFC 9180) -------------------------------------

    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        """KEM ``DeriveKeyPair(ikm)`` (RFC 9180 §7.1.3) as ``(private, public)``."""
        return self.hpke.derive_key_pair(ikm)

    def generate_kem_key_pair(self, rng: Rng = os.urandom) -> tuple[bytes, bytes]:
        """A fresh HPKE key pair, derived from ``rng`` output."""
        return self.hpke.derive_key_pair(rng(self.hpke.secret_len))

    def encrypt_with_label(self, public_key: bytes, label: str | bytes, context: bytes,
                           plaintext: bytes) -> tuple[bytes, bytes]:
        """``EncryptWithLabel``; returns ``(kem_output, ciphertext)``."""
        info = self.labelled(label) + _opaque(context)
        return self.hpke.seal_base(public_key, info, b"", plaintext)

    def encrypt_with_label_many(self, label: str | bytes, context: bytes,
                                items: Sequence[tuple[bytes, bytes]],
                                crypto: BatchCrypto | None = None) -> list[tuple[bytes, bytes]]:
        """:meth:`encrypt_with_label` of each ``(public_key, plaintext)``, in order.

        The batch is computed by ``crypto`` (default: serially here; see
        :mod:`.batch`). Raises the error :meth:`encrypt_with_label` raises for
        the first item it fails on.
        """
        from .batch import SERIAL, SealBatch, check_results

        batch = SealBatch(self.id, self.labelled(label) + _opaque(context), tuple(items))
        sealed = (crypto or SERIAL).seal(batch)
        check_results(sealed, len(batch))
        out = []
        for (pk, plaintext), result in zip(items, sealed, strict=True):
            if result is None:  # raises the serial error (or, if it now works, carry on)
                result = self.encrypt_with_label(pk, label, context, plaintext)
            out.append(result)
        return out

    def decrypt_with_label(self, private_key: bytes, label: str | bytes, context: bytes,
                           kem_output: bytes, ciphertext: bytes) -> bytes:
        """``DecryptWithLabel``; raises :class:`DecryptionError` on failure."""
        info = self.labelled(label) + _opaque(context)
        return self.hpke.open_base(kem_output, private_key, info, b"", ciphertext)


_SUITES: dict[int, CipherSuite] = {}


def get_suite(suite_id: int) -> CipherSuite:
    """The :class:`CipherSuite` for an RFC 9420 cipher suite number (1-7)."""
    s = _SUITES.get(suite_id)
    if s is None:
        params = SUITE_PARAMS.get(suite_id)
        if params is None:
            raise UnsupportedCipherSuiteError(f"cipher suite {suite_id} is not supported")
        s = _SUITES[suite_id] = CipherSuite(params)
    return s


SUPPORTED_SUITES: tuple[int, ...] = tuple(sorted(SUITE_PARAMS))
