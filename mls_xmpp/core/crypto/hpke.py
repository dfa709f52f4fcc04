"""HPKE base mode (RFC 9180) for the MLS cipher suites (RFC 9420 §5.1.3, §17.1).

Two implementations sit behind :class:`Hpke`:

* the native HPKE of ``cryptography`` (``hazmat.primitives.hpke``), used for
  single-shot base-mode seal/open whenever it covers the KEM (X25519, P-256,
  P-384, P-521) and the AAD is empty -- which is every MLS use
  (``EncryptWithLabel`` always passes an empty AAD);
* our own DHKEM (RFC 9180 §4.1) plus base-mode key schedule (§5.1) and
  single-shot encryption (§5.2, §6.1) on top of ``cryptography`` primitives.
  It handles every KEM and any AAD, and is the only path for DHKEM(X448,
  HKDF-SHA512) of suites 4 and 6, which the native API lacks.

``DeriveKeyPair`` (§7.1.3) is always our own code.

Key encodings are ``SerializePublicKey``/``SerializePrivateKey`` of §7.1.1 and
§7.1.2: raw for X25519/X448; for the NIST curves an uncompressed point and a
big-endian scalar of ``Nsk`` bytes. NIST private keys with their leading zero
bytes dropped (65-byte P-521 keys occur in the mlswg vectors) are accepted on
input; output is always ``Nsk`` bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hpke as native
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..errors import CryptoError, DecryptionError, LocalUsageError
from .signature import NIST_CURVES, NistCurve, nist_private_key, nist_public_bytes, nist_public_key
from .suite import SuiteParams

_PrivateKey = x25519.X25519PrivateKey | x448.X448PrivateKey | ec.EllipticCurvePrivateKey
_PublicKey = x25519.X25519PublicKey | x448.X448PublicKey | ec.EllipticCurvePublicKey

#: How many parsed public / private key objects are kept per process.
PUBLIC_KEY_CACHE_SIZE = 1024
PRIVATE_KEY_CACHE_SIZE = 64

_VERSION_LABEL = b"HPKE-v1"
_MODE_BASE = 0x00


@dataclass(frozen=True)
class KemInfo:
    """The constants of one DHKEM (RFC 9180 §7.1, Table 2)."""

    name: str  # X25519, X448, P256, P384, P521
    kem_id: int
    hash_name: str  # hash of the KEM's own HKDF
    n_secret: int  # Nsecret: length of the KEM shared secret
    n_enc: int  # Nenc: length of the encapsulated key
    n_pk: int  # Npk: length of an encoded public key
    n_sk: int  # Nsk: length of an encoded private key


KEMS: dict[str, KemInfo] = {
    "P256": KemInfo("P256", 0x0010, "sha256", 32, 65, 65, 32),
    "P384": KemInfo("P384", 0x0011, "sha384", 48, 97, 97, 48),
    "P521": KemInfo("P521", 0x0012, "sha512", 64, 133, 133, 66),
    "X25519": KemInfo("X25519", 0x0020, "sha256", 32, 32, 32, 32),
    "X448": KemInfo("X448", 0x0021, "sha512", 64, 56, 56, 56),
}

# RFC 9180 §7.2 (KDF ids) and §7.3 (AEAD ids: key length Nk; Nn is 12 for all three)
_KDF_HASH = {0x0001: "sha256", 0x0002: "sha384", 0x0003: "sha512"}
_AEAD_KEY_LEN = {0x0001: 16, 0x0002: 32, 0x0003: 32}
_AEAD_NONCE_LEN = 12
_HASH_LEN = {"sha256": 32, "sha384": 48, "sha512": 64}

_NATIVE_KEM = {
    "X25519": native.KEM.X25519,
    "P256": native.KEM.P256,
    "P384": native.KEM.P384,
    "P521": native.KEM.P521,
}
_NATIVE_KDF = {
    0x0001: native.KDF.HKDF_SHA256,
    0x0002: native.KDF.HKDF_SHA384,
    0x0003: native.KDF.HKDF_SHA512,
}
_NATIVE_AEAD = {
    0x0001: native.AEAD.AES_128_GCM,
    0x0002: native.AEAD.AES_256_GCM,
    0x0003: native.AEAD.CHACHA20_POLY1305,
}


# -- HKDF and the labelled variants (RFC 5869; RFC 9180 §4) -----------------------


def _extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2); an empty salt means ``Nh`` zero bytes."""
    if not salt:
        salt = bytes(_HASH_LEN[hash_name])
    return hmac.digest(salt, ikm, hash_name)


def _expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3)."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), hash_name)
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(hash_name: str, suite_id: bytes, salt: bytes, label: bytes,
                     ikm: bytes) -> bytes:
    """``LabeledExtract`` (RFC 9180 §4)."""
    return _extract(hash_name, salt, _VERSION_LABEL + suite_id + label + ikm)


def _labeled_expand(hash_name: str, suite_id: bytes, prk: bytes, label: bytes, info: bytes,
                    length: int) -> bytes:
    """``LabeledExpand`` (RFC 9180 §4)."""
    labeled_info = length.to_bytes(2, "big") + _VERSION_LABEL + suite_id + label + info
    return _expand(hash_name, prk, labeled_info, length)


# -- the DH groups (RFC 9180 §4.1, §7.1) -------------------------------------------


@functools.lru_cache(maxsize=PUBLIC_KEY_CACHE_SIZE)
def _load_public(kem: str, data: bytes) -> _PublicKey:
    """``DeserializePublicKey`` (RFC 9180 §7.1.1); raises ``ValueError`` when invalid."""
    if kem == "X25519":
        return x25519.X25519PublicKey.from_public_bytes(data)
    if kem == "X448":
        return x448.X448PublicKey.from_public_bytes(data)
    return nist_public_key(NIST_CURVES[kem], data)


@functools.lru_cache(maxsize=PRIVATE_KEY_CACHE_SIZE)
def _load_private(kem: str, data: bytes) -> tuple[_PrivateKey, bytes]:
    """``DeserializePrivateKey`` (RFC 9180 §7.1.2) and the encoded public key.

    Raises ``ValueError`` when the bytes are not a valid private key.
    """
    if kem == "X25519":
        k = x25519.X25519PrivateKey.from_private_bytes(data)
        return k, k.public_key().public_bytes_raw()
    if kem == "X448":
        k4 = x448.X448PrivateKey.from_private_bytes(data)
        return k4, k4.public_key().public_bytes_raw()
    key = nist_private_key(NIST_CURVES[kem], data)
    return key, nist_public_bytes(key.public_key())


def _serialize_public(key: _PrivateKey) -> bytes:
    """``SerializePublicKey(pk(sk))`` (RFC 9180 §7.1.1)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return nist_public_bytes(key.public_key())
    return key.public_key().public_bytes_raw()


def _dh(sk: _PrivateKey, pk: _PublicKey) -> bytes:
    """``DH(skX, pkY)`` (RFC 9180 §4.1, §7.1.4).

    For the NIST curves the result is the x-coordinate of the shared point as
    ``Ndh`` bytes; for X25519/X448 the RFC 7748 output, and an all-zero output
    (a small-order peer key) is rejected with ``ValueError``.
    """
    if isinstance(sk, ec.EllipticCurvePrivateKey):
        if not isinstance(pk, ec.EllipticCurvePublicKey):
            raise ValueError("key types do not match")
        return sk.exchange(ec.ECDH(), pk)
    if isinstance(sk, x25519.X25519PrivateKey):
        if not isinstance(pk, x25519.X25519PublicKey):
            raise ValueError("key types do not match")
        shared = sk.exchange(pk)
    else:
        if not isinstance(pk, x448.X448PublicKey):
            raise ValueError("key types do not match")
        shared = sk.exchange(pk)
    if not any(shared):
        raise ValueError("DH output is all zero")
    return shared


def _generate(kem: str) -> _PrivateKey:
    """``GenerateKeyPair`` (RFC 9180 §4) for an ephemeral key, from the OS CSPRNG."""
    if kem == "X25519":
        return x25519.X25519PrivateKey.generate()
    if kem == "X448":
        return x448.X448PrivateKey.generate()
    return ec.generate_private_key(NIST_CURVES[kem].curve())


class Hpke:
    """HPKE (RFC 9180) in base mode for one MLS cipher suite (RFC 9420 §5.1.3).

    Attributes:
        secret_len: length of the ``ikm`` to feed :meth:`derive_key_pair` when
            generating a fresh key pair. It is ``Nsk`` of the KEM, following
            RFC 9180 §7.1.3 ("the ikm parameter given to DeriveKeyPair() SHOULD
            have length at least Nsk, and SHOULD have at least Nsk bytes of
            entropy"): 32, 56, 32, 48 and 66 bytes for X25519, X448, P-256,
            P-384 and P-521.
        public_key_len: ``Npk``, the length of an encoded public key.
        enc_len: ``Nenc``, the length of the encapsulated key (``kem_output``).
    """

    def __init__(self, params: SuiteParams) -> None:
        kem = KEMS.get(params.kem)
        if kem is None or kem.kem_id != params.kem_id:
            raise LocalUsageError(f"unsupported HPKE KEM {params.kem} ({params.kem_id:#06x})")
        if params.kdf_id not in _KDF_HASH or params.aead_id not in _AEAD_KEY_LEN:
            raise LocalUsageError("unsupported HPKE KDF or AEAD")
        self.params = params
        self.kem = kem
        self.secret_len: int = kem.n_sk
        self.public_key_len: int = kem.n_pk
        self.enc_len: int = kem.n_enc
        self._curve: NistCurve | None = NIST_CURVES.get(kem.name)
        # suite_id of the KEM (RFC 9180 §4.1) and of the whole HPKE suite (§5.1)
        self._kem_suite_id = b"KEM" + kem.kem_id.to_bytes(2, "big")
        self._hpke_suite_id = (b"HPKE" + kem.kem_id.to_bytes(2, "big")
                               + params.kdf_id.to_bytes(2, "big")
                               + params.aead_id.to_bytes(2, "big"))
        self._kdf_hash = _KDF_HASH[params.kdf_id]
        self._aead_key_len = _AEAD_KEY_LEN[params.aead_id]
        self._aead_cls = ChaCha20Poly1305 if params.aead_id == 0x0003 else AESGCM
        native_kem = _NATIVE_KEM.get(kem.name)
        self._native: native.Suite | None = (
            native.Suite(native_kem, _NATIVE_KDF[params.kdf_id], _NATIVE_AEAD[params.aead_id])
            if native_kem is not None else None)
        # psk_id_hash does not depend on the message: compute it once (§5.1)
        self._psk_id_hash = self._labeled_extract(b"", b"psk_id_hash", b"")

    def __repr__(self) -> str:
        return f"Hpke({self.params.name})"

    # -- KEM (RFC 9180 §4.1, §7.1) ------------------------------------------

    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        """``DeriveKeyPair(ikm)`` (RFC 9180 §7.1.3) as encoded ``(private, public)``.

        X25519/X448: ``sk = LabeledExpand(dkp_prk, "sk", "", Nsk)``. NIST
        curves: rejection sampling over ``"candidate"`` expansions with a
        one-byte counter, the first byte masked with 0xff (P-256, P-384) or
        0x01 (P-521), until ``0 < sk < order``. Every KDF call uses the KEM's
        own hash, not the suite's.
        """
        kem = self.kem
        h = kem.hash_name
        sid = self._kem_suite_id
        dkp_prk = _labeled_extract(h, sid, b"", b"dkp_prk", ikm)
        curve = self._curve
        if curve is None:
            sk = _labeled_expand(h, sid, dkp_prk, b"sk", b"", kem.n_sk)
        else:
            for counter in range(256):
                candidate = bytearray(
                    _labeled_expand(h, sid, dkp_prk, b"candidate", bytes((counter,)), kem.n_sk))
                candidate[0] &= curve.top_mask
                if 0 < int.from_bytes(candidate, "big") < curve.order:
                    sk = bytes(candidate)
                    break
            else:  # probability below 2^-256 for every curve
                raise CryptoError("DeriveKeyPairError: no valid scalar after 256 candidates")
        return sk, _load_private(kem.name, sk)[1]

    def public_key(self, private_key: bytes) -> bytes:
        """``SerializePublicKey(pk(sk))`` for an encoded private key (RFC 9180 §7.1).

        Raises :class:`LocalUsageError` when the private key is malformed.
        """
        try:
            return _load_private(self.kem.name, bytes(private_key))[1]
        except ValueError as e:
            raise LocalUsageError(f"invalid {self.kem.name} private key: {e}") from e

    def _public(self, public_key: bytes) -> _PublicKey:
        try:
            return _load_public(self.kem.name, bytes(public_key))
        except ValueError as e:
            raise CryptoError(f"invalid {self.kem.name} public key: {e}") from e

    def _extract_and_expand(self, dh: bytes, kem_context: bytes) -> bytes:
        """``ExtractAndExpand`` of DHKEM (RFC 9180 §4.1)."""
        h = self.kem.hash_name
        sid = self._kem_suite_id
        eae_prk = _labeled_extract(h, sid, b"", b"eae_prk", dh)
        return _labeled_expand(h, sid, eae_prk, b"shared_secret", kem_context,
                               self.kem.n_secret)

    def _encap(self, pk_r: bytes, sk_e: _PrivateKey | None = None) -> tuple[bytes, bytes]:
        """DHKEM ``Encap(pkR)`` (RFC 9180 §4.1) as ``(shared_secret, enc)``.

        ``sk_e`` fixes the ephemeral key (for tests); normally it is fresh.
        """
        pk = self._public(pk_r)
        if sk_e is None:
            sk_e = _generate(self.kem.name)
        try:
            dh = _dh(sk_e, pk)
        except ValueError as e:
            raise CryptoError(f"HPKE encapsulation failed: {e}") from e
        enc = _serialize_public(sk_e)
        return self._extract_and_expand(dh, enc + bytes(pk_r)), enc

    def _decap(self, enc: bytes, sk_r: bytes) -> bytes:
        """DHKEM ``Decap(enc, skR)`` (RFC 9180 §4.1); any failure is ``ValueError``."""
        pk_e = _load_public(self.kem.name, enc)
        key, pk_rm = _load_private(self.kem.name, sk_r)
        return self._extract_and_expand(_dh(key, pk_e), enc + pk_rm)

    # -- key schedule and single-shot AEAD (RFC 9180 §5.1, §5.2, §6.1) -------------

    def _labeled_extract(self, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return _labeled_extract(self._kdf_hash, self._hpke_suite_id, salt, label, ikm)

    def _key_schedule_base(self, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
        """``KeyScheduleS/R(mode_base, shared_secret, info, "", "")`` (RFC 9180 §5.1).

        Returns ``(key, base_nonce)``; the exporter secret is not needed.
        """
        return self._key_schedule_hashed(shared_secret, self.info_hash(info))

    def _key_schedule_hashed(self, shared_secret: bytes, info_hash: bytes) -> tuple[bytes, bytes]:
        """:meth:`_key_schedule_base` from ``info_hash`` (see :meth:`info_hash`)."""
        context = bytes((_MODE_BASE,)) + self._psk_id_hash + info_hash
        secret = self._labeled_extract(shared_secret, b"secret", b"")
        h = self._kdf_hash
        sid = self._hpke_suite_id
        key = _labeled_expand(h, sid, secret, b"key", context, self._aead_key_len)
        base_nonce = _labeled_expand(h, sid, secret, b"base_nonce", context, _AEAD_NONCE_LEN)
        return key, base_nonce

    def _seal_own(self, public_key: bytes, info: bytes, aad: bytes, plaintext: bytes,
                  sk_e: _PrivateKey | None = None) -> tuple[bytes, bytes]:
        """``SealBase`` (RFC 9180 §6.1) by our own DHKEM and key schedule.

        The first (and only) message uses sequence number 0, so the nonce is
        ``base_nonce`` itself (§5.2).
        """
        shared_secret, enc = self._encap(public_key, sk_e)
        key, nonce = self._key_schedule_base(shared_secret, info)
        return enc, self._aead_cls(key).encrypt(nonce, plaintext, aad)

    def info_hash(self, info: bytes) -> bytes:
        """``LabeledExtract("", "info_hash", info)`` of the key schedule (RFC 9180 §5.1).

        It depends on ``info`` alone, not on the shared secret, so seals to many
        recipients under one ``info`` (the GroupSecrets of a Welcome, whose
        ``info`` holds the whole encrypted GroupInfo) compute it once and pass it
        to :meth:`seal_base_hashed`.
        """
        return self._labeled_extract(b"", b"info_hash", info)

    def seal_base_hashed(self, public_key: bytes, info_hash: bytes,
                         plaintext: bytes) -> tuple[bytes, bytes]:
        """``SealBase(pkR, info, "", pt)`` (RFC 9180 §6.1) given ``info_hash(info)``.

        Our own DHKEM and key schedule (the native API takes only ``info``
        itself); the output is exactly that of :meth:`seal_base` for the same
        ephemeral key. Raises :class:`CryptoError` like :meth:`seal_base`.
        """
        shared_secret, enc = self._encap(public_key)
        key, nonce = self._key_schedule_hashed(shared_secret, info_hash)
        return enc, self._aead_cls(key).encrypt(nonce, plaintext, None)

    def _open_own(self, enc: bytes, private_key: bytes, info: bytes, aad: bytes,
                  ciphertext: bytes) -> bytes:
        """``OpenBase`` (RFC 9180 §6.1) by our own DHKEM and key schedule."""
        try:
            shared_secret = self._decap(bytes(enc), bytes(private_key))
            key, nonce = self._key_schedule_base(shared_secret, info)
            return self._aead_cls(key).decrypt(nonce, ciphertext, aad)
        except Exception as e:  # malformed enc or key, DH failure, bad tag
            raise DecryptionError(f"HPKE open failed ({type(e).__name__})") from e

    def _seal_native(self, public_key: bytes, info: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        """``SealBase`` with empty AAD (RFC 9180 §6.1) by ``cryptography``'s HPKE."""
        assert self._native is not None
        pk = self._public(public_key)
        if isinstance(pk, x448.X448PublicKey):  # not reached: X448 has no native suite
            raise LocalUsageError("X448 has no native HPKE")
        try:
            out = self._native.encrypt(plaintext, pk, info)
        except ValueError as e:
            raise CryptoError(f"HPKE encapsulation failed: {e}") from e
        n = self.kem.n_enc
        return out[:n], out[n:]

    def _open_native(self, enc: bytes, private_key: bytes, info: bytes,
                     ciphertext: bytes) -> bytes:
        """``OpenBase`` with empty AAD (RFC 9180 §6.1) by ``cryptography``'s HPKE."""
        assert self._native is not None
        try:
            enc = bytes(enc)
            # the native API takes enc || ct, so enc must be exactly Nenc bytes
            if len(enc) != self.kem.n_enc:
                raise ValueError("enc has the wrong length")
            if self._curve is not None:
                nist_public_key(self._curve, enc)  # validate the point ourselves (§7.1.4)
            key = _load_private(self.kem.name, bytes(private_key))[0]
            if isinstance(key, x448.X448PrivateKey):  # not reached
                raise ValueError("X448 has no native HPKE")
            return self._native.decrypt(enc + bytes(ciphertext), key, info)
        except Exception as e:  # malformed enc or key, DH failure, bad tag
            raise DecryptionError(f"HPKE open failed ({type(e).__name__})") from e

    def _exporter_secret(self, shared_secret: bytes, info: bytes) -> bytes:
        """``exporter_secret`` of the base-mode key schedule (RFC 9180 §5.1)."""
        info_hash = self._labeled_extract(b"", b"info_hash", info)
        context = bytes((_MODE_BASE,)) + self._psk_id_hash + info_hash
        secret = self._labeled_extract(shared_secret, b"secret", b"")
        n_h = hashlib.new(self._kdf_hash).digest_size
        return _labeled_expand(self._kdf_hash, self._hpke_suite_id, secret, b"exp", context,
                               n_h)

    def _export(self, exporter_secret: bytes, exporter_context: bytes, length: int) -> bytes:
        """``Context.Export(exporter_context, L)`` (RFC 9180 §5.3)."""
        return _labeled_expand(self._kdf_hash, self._hpke_suite_id, exporter_secret, b"sec",
                               exporter_context, length)

    # -- public API ---------------------------------------------------------

    def export_sender(self, public_key: bytes, info: bytes, exporter_context: bytes,
                      length: int) -> tuple[bytes, bytes]:
        """``SetupBaseS(pkR, info)`` then ``Export(exporter_context, length)``.

        Returns ``(enc, exported_secret)`` (RFC 9180 §5.3, §6.1); used by
        external commits (RFC 9420 §8.3).
        """
        shared_secret, enc = self._encap(public_key)
        return enc, self._export(self._exporter_secret(shared_secret, info), exporter_context,
                                 length)

    def export_receiver(self, enc: bytes, private_key: bytes, info: bytes,
                        exporter_context: bytes, length: int) -> bytes:
        """``SetupBaseR(enc, skR, info)`` then ``Export(exporter_context, length)``.

        Raises :class:`DecryptionError` when ``enc`` or the key is malformed.
        """
        try:
            shared_secret = self._decap(bytes(enc), bytes(private_key))
        except Exception as e:  # malformed enc or key, DH failure
            raise DecryptionError(f"HPKE decapsulation failed ({type(e).__name__})") from e
        return self._export(self._exporter_secret(shared_secret, info), exporter_context,
                            length)

    def seal_base(self, public_key: bytes, info: bytes, aad: bytes,
                  plaintext: bytes) -> tuple[bytes, bytes]:
        """``SealBase(pkR, info, aad, pt)`` (RFC 9180 §6.1) as ``(enc, ciphertext)``.

        Raises :class:`CryptoError` when ``public_key`` is not a valid key of
        the KEM (or yields an all-zero DH output).
        """
        if self._native is not None and not aad:
            return self._seal_native(public_key, info, plaintext)
        return self._seal_own(public_key, info, aad, plaintext)

    def open_base(self, enc: bytes, private_key: bytes, info: bytes, aad: bytes,
                  ciphertext: bytes) -> bytes:
        """``OpenBase(enc, skR, info, aad, ct)`` (RFC 9180 §6.1).

        Raises :class:`DecryptionError` on any failure: malformed ``enc`` or
        private key, a DH failure, or a wrong tag.
        """
        if self._native is not None and not aad:
            return self._open_native(enc, private_key, info, ciphertext)
        return self._open_own(enc, private_key, info, aad, ciphertext)
