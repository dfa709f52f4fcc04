"""Unit tests of the cipher suites: signatures, HPKE, DeriveKeyPair, AEAD (RFC 9420 §5.1)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from mls_xmpp.core.codec import encode_opaque
from mls_xmpp.core.crypto import SUPPORTED_SUITES, CipherSuite, get_suite
from mls_xmpp.core.crypto.hpke import KEMS, Hpke, _load_private
from mls_xmpp.core.crypto.signature import NIST_CURVES, SignatureScheme, nist_private_key
from mls_xmpp.core.errors import (
    CryptoError,
    DecryptionError,
    InvalidSignatureError,
    LocalUsageError,
    UnsupportedCipherSuiteError,
)
from mls_xmpp.vectors import unhex
from tests.vectors.conftest import load

SUITES = [get_suite(i) for i in SUPPORTED_SUITES]
NATIVE_SUITES = [s for s in SUITES if s.params.kem != "X448"]


def suite_id(s: CipherSuite) -> str:
    return f"suite{s.id}"


def flip(data: bytes, index: int, bit: int = 0x01) -> bytes:
    b = bytearray(data)
    b[index] ^= bit
    return bytes(b)


def counting_rng(seed: int) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def test_all_seven_suites() -> None:
    assert SUPPORTED_SUITES == (1, 2, 3, 4, 5, 6, 7)
    with pytest.raises(UnsupportedCipherSuiteError):
        get_suite(8)


# -- signatures (RFC 9420 §5.1.2) ----------------------------------------------------

_SIG_LENGTHS = {  # (private, public) encodings
    "Ed25519": (32, 32), "Ed448": (57, 57), "P256": (32, 65), "P384": (48, 97), "P521": (66, 133),
}


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_sign_verify_round_trip(cs: CipherSuite) -> None:
    priv, pub = cs.generate_signature_key_pair()
    want_priv, want_pub = _SIG_LENGTHS[cs.params.signature]
    assert (len(priv), len(pub)) == (want_priv, want_pub)
    assert cs.signature_public_key(priv) == pub
    sig = cs.sign_with_label(priv, "Label", b"content")
    cs.verify_with_label(pub, "Label", b"content", sig)
    cs.verify_with_label(pub, b"Label", b"content", sig)
    # the raw scheme agrees with itself too
    raw = cs.signature.sign(priv, b"message")
    cs.signature.verify(pub, b"message", raw)


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_generate_is_driven_by_rng(cs: CipherSuite) -> None:
    a = cs.generate_signature_key_pair(counting_rng(7))
    b = cs.generate_signature_key_pair(counting_rng(7))
    c = cs.generate_signature_key_pair(counting_rng(8))
    assert a == b
    assert a != c


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_tampered_signature_or_message_rejected(cs: CipherSuite) -> None:
    priv, pub = cs.generate_signature_key_pair()
    sig = cs.sign_with_label(priv, "Label", b"content")
    for i in (0, len(sig) // 2, len(sig) - 1):
        with pytest.raises(InvalidSignatureError):
            cs.verify_with_label(pub, "Label", b"content", flip(sig, i))
    with pytest.raises(InvalidSignatureError):
        cs.verify_with_label(pub, "Label", b"contenu", sig)
    with pytest.raises(InvalidSignatureError):
        cs.verify_with_label(pub, "Label", flip(b"content", 0, 0x80), sig)
    with pytest.raises(InvalidSignatureError):
        cs.verify_with_label(pub, "Other", b"content", sig)
    _, other_pub = cs.generate_signature_key_pair()
    with pytest.raises(InvalidSignatureError):
        cs.verify_with_label(other_pub, "Label", b"content", sig)


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_malformed_signature_rejected(cs: CipherSuite) -> None:
    priv, pub = cs.generate_signature_key_pair()
    sig = cs.sign_with_label(priv, "Label", b"content")
    bad = [b"", b"\x00", sig[:-1], sig + b"\x00", bytes(len(sig)), b"\xff" * len(sig),
           b"\x30\x06\x02\x01\x01\x02\x01\x01"]
    for s in bad:
        with pytest.raises(InvalidSignatureError):
            cs.verify_with_label(pub, "Label", b"content", s)


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_malformed_public_key_rejected(cs: CipherSuite) -> None:
    priv, pub = cs.generate_signature_key_pair()
    sig = cs.sign_with_label(priv, "Label", b"content")
    bad = [b"", pub[:-1], pub + b"\x00", b"\xff" * len(pub), flip(pub, len(pub) - 1)]
    if cs.params.signature in NIST_CURVES:
        size = NIST_CURVES[cs.params.signature].size
        bad += [
            bytes([0x02 + (pub[-1] & 1)]) + pub[1 : 1 + size],  # compressed form
            b"\x00",  # point at infinity
            bytes([0x04]) + bytes(2 * size),  # (0, 0) is not on the curve
            flip(pub, 0, 0x02),  # 0x06: hybrid form
        ]
    for p in bad:
        with pytest.raises(InvalidSignatureError):
            cs.verify_with_label(p, "Label", b"content", sig)


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_random_garbage_never_escapes_as_value_error(cs: CipherSuite) -> None:
    priv, pub = cs.generate_signature_key_pair()
    sig = cs.sign_with_label(priv, "Label", b"content")
    r = random.Random(cs.id)
    for _ in range(50):
        with pytest.raises(InvalidSignatureError):
            cs.verify_with_label(r.randbytes(len(pub)), "Label", b"content", sig)
        with pytest.raises(InvalidSignatureError):
            cs.verify_with_label(pub, "Label", b"content", r.randbytes(r.randrange(200)))


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_malformed_signature_private_key_is_local_error(cs: CipherSuite) -> None:
    priv, _ = cs.generate_signature_key_pair()
    bad = [b"", priv + b"\x00", b"\x00" + priv]
    if cs.params.signature not in NIST_CURVES:  # short ECDSA scalars are valid (see below)
        bad.append(priv[:-1])
    for p in bad:
        with pytest.raises(LocalUsageError):
            cs.sign_with_label(p, "Label", b"content")
        with pytest.raises(LocalUsageError):
            cs.signature_public_key(p)


@pytest.mark.parametrize("name", ["P256", "P384", "P521"])
def test_ecdsa_scalar_range(name: str) -> None:
    curve = NIST_CURVES[name]
    scheme = SignatureScheme(name)
    for bad in (0, curve.order, curve.order + 1):
        with pytest.raises(LocalUsageError):
            scheme.public_key(bad.to_bytes(curve.size, "big"))
    # the curve order is right: (n-1)G = -G shares its x-coordinate with G
    g = scheme.public_key((1).to_bytes(curve.size, "big"))
    minus_g = scheme.public_key((curve.order - 1).to_bytes(curve.size, "big"))
    assert g[1 : 1 + curve.size] == minus_g[1 : 1 + curve.size]
    assert g != minus_g
    with pytest.raises(ValueError):
        nist_private_key(curve, curve.order.to_bytes(curve.size, "big"))


@pytest.mark.parametrize("name", ["P256", "P384", "P521"])
def test_ecdsa_generate_rejection_sampling(name: str) -> None:
    curve = NIST_CURVES[name]
    scheme = SignatureScheme(name)
    draws = [bytes(curve.size), b"\xff" * curve.size, b"\x00" * (curve.size - 1) + b"\x05"]

    def rng(n: int) -> bytes:
        assert n == curve.size
        return draws.pop(0)

    # zero is rejected, and so is 0xff..ff (for P-521 masked to 0x01ff..ff, still >= n)
    priv, pub = scheme.generate(rng)
    assert priv == (5).to_bytes(curve.size, "big")
    assert not draws
    assert scheme.public_key(priv) == pub
    with pytest.raises(LocalUsageError):
        scheme.generate(lambda n: bytes(n))


@pytest.mark.parametrize("name", ["P256", "P384", "P521"])
def test_nist_private_keys_without_leading_zeros(name: str) -> None:
    """Short scalars (leading zero bytes dropped) are read; we always write full length."""
    curve = NIST_CURVES[name]
    scheme = SignatureScheme(name)
    cs = next(s for s in SUITES if s.params.kem == name)
    full = (0x1234567).to_bytes(curve.size, "big")
    short = full.lstrip(b"\x00")
    pub = scheme.public_key(full)
    assert scheme.public_key(short) == pub
    scheme.verify(pub, b"m", scheme.sign(short, b"m"))
    assert cs.hpke.public_key(short) == cs.hpke.public_key(full)
    enc, ct = cs.hpke.seal_base(cs.hpke.public_key(full), b"i", b"", b"pt")
    assert cs.hpke.open_base(enc, short, b"i", b"", ct) == b"pt"
    assert cs.hpke._open_own(enc, short, b"i", b"", ct) == b"pt"


def test_mlswg_vectors_short_p521_keys() -> None:
    """message-protection.json carries a 65-byte P-521 signature private key."""
    (case,) = [c for c in load("message-protection") if c["cipher_suite"] == 5]
    priv, pub = unhex(case["signature_priv"]), unhex(case["signature_pub"])
    assert len(priv) == 65
    assert get_suite(5).signature_public_key(priv) == pub


def test_ed_generate_uses_rng_output_as_key() -> None:
    for name, n in (("Ed25519", 32), ("Ed448", 57)):
        priv, _ = SignatureScheme(name).generate(lambda k: b"\x42" * k)
        assert priv == b"\x42" * n


def test_unknown_signature_scheme() -> None:
    with pytest.raises(LocalUsageError):
        SignatureScheme("RSA")


def test_cross_scheme_key_rejected() -> None:
    ed = get_suite(1)
    p256 = get_suite(2)
    priv, pub = p256.generate_signature_key_pair()
    sig = p256.sign_with_label(priv, "L", b"c")
    with pytest.raises(InvalidSignatureError):
        ed.verify_with_label(pub, "L", b"c", sig)


# -- HPKE (RFC 9180, RFC 9420 §5.1.3) -------------------------------------------------


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_hpke_round_trip(cs: CipherSuite) -> None:
    priv, pub = cs.generate_kem_key_pair()
    kem = KEMS[cs.params.kem]
    assert (len(priv), len(pub)) == (kem.n_sk, kem.n_pk)
    assert cs.hpke.public_key_len == kem.n_pk
    assert cs.hpke.secret_len == kem.n_sk
    for pt in (b"", b"x", os.urandom(1000)):
        kem_output, ct = cs.encrypt_with_label(pub, "Label", b"context", pt)
        assert len(kem_output) == kem.n_enc
        assert len(ct) == len(pt) + 16
        assert cs.decrypt_with_label(priv, "Label", b"context", kem_output, ct) == pt
    # non-empty aad takes our own path on every suite
    enc, ct = cs.hpke.seal_base(pub, b"info", b"aad", b"secret")
    assert cs.hpke.open_base(enc, priv, b"info", b"aad", ct) == b"secret"
    with pytest.raises(DecryptionError):
        cs.hpke.open_base(enc, priv, b"info", b"aaD", ct)
    with pytest.raises(DecryptionError):
        cs.hpke.open_base(enc, priv, b"info", b"", ct)


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
@pytest.mark.parametrize("aad", [b"", b"aad"], ids=["noaad", "aad"])
def test_hpke_tampering_rejected(cs: CipherSuite, aad: bytes) -> None:
    h = cs.hpke
    priv, pub = cs.generate_kem_key_pair()
    enc, ct = h.seal_base(pub, b"info", aad, b"plaintext")
    assert h.open_base(enc, priv, b"info", aad, ct) == b"plaintext"
    for i in (0, len(ct) // 2, len(ct) - 1):
        with pytest.raises(DecryptionError):
            h.open_base(enc, priv, b"info", aad, flip(ct, i))
    for i in (1, len(enc) // 2, len(enc) - 1):
        with pytest.raises(DecryptionError):
            h.open_base(flip(enc, i), priv, b"info", aad, ct)
    bad_encs = [b"", enc[:-1], enc + b"\x00", bytes(len(enc)), b"\xff" * len(enc)]
    if cs.params.kem in NIST_CURVES:
        size = NIST_CURVES[cs.params.kem].size
        bad_encs += [
            flip(enc, 0, 0x02),  # hybrid form
            bytes([0x02 + (enc[-1] & 1)]) + enc[1 : 1 + size],  # compressed form
            bytes([0x04]) + bytes(2 * size),  # (0, 0): not on the curve
            enc[: 1 + size] + flip(enc[1 + size :], 0, 0x10),  # y changed: not on the curve
        ]
    for e in bad_encs:
        with pytest.raises(DecryptionError):
            h.open_base(e, priv, b"info", aad, ct)
    with pytest.raises(DecryptionError):
        h.open_base(enc, priv, b"inf0", aad, ct)
    with pytest.raises(DecryptionError):
        h.open_base(enc, priv, b"info", aad, ct[:-1])
    with pytest.raises(DecryptionError):
        h.open_base(enc, priv, b"info", aad, b"")
    other_priv, _ = cs.generate_kem_key_pair()
    with pytest.raises(DecryptionError):
        h.open_base(enc, other_priv, b"info", aad, ct)
    bad_privs = [b"", priv + b"\x00", b"\x00" + priv]
    if cs.params.kem not in NIST_CURVES:
        bad_privs.append(priv[:-1])
    for p in bad_privs:
        with pytest.raises(DecryptionError):
            h.open_base(enc, p, b"info", aad, ct)


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_hpke_invalid_recipient_key(cs: CipherSuite) -> None:
    _, pub = cs.generate_kem_key_pair()
    bad = [b"", pub[:-1], pub + b"\x00"]
    if cs.params.kem in NIST_CURVES:
        bad.append(bytes([0x04]) + bytes(len(pub) - 1))
    else:
        bad.append(bytes(len(pub)))  # small-order point: all-zero DH output
    for p in bad:
        for aad in (b"", b"aad"):
            with pytest.raises(CryptoError):
                cs.hpke.seal_base(p, b"info", aad, b"pt")


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_derive_key_pair(cs: CipherSuite) -> None:
    h = cs.hpke
    ikm = bytes(range(h.secret_len))
    priv, pub = h.derive_key_pair(ikm)
    assert h.derive_key_pair(ikm) == (priv, pub)
    assert h.public_key(priv) == pub
    assert cs.derive_key_pair(ikm) == (priv, pub)
    assert h.derive_key_pair(ikm + b"\x00")[0] != priv
    assert h.derive_key_pair(b"")[1] == h.public_key(h.derive_key_pair(b"")[0])
    if cs.params.kem == "P521":
        assert priv[0] <= 0x01
    enc, ct = h.seal_base(pub, b"", b"", b"m")
    assert h.open_base(enc, priv, b"", b"", ct) == b"m"


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_hpke_malformed_private_key_public_key(cs: CipherSuite) -> None:
    priv, _ = cs.generate_kem_key_pair()
    bad = [b"", priv + b"\x00", b"\x00" + priv]
    if cs.params.kem not in NIST_CURVES:
        bad.append(priv[:-1])
    for p in bad:
        with pytest.raises(LocalUsageError):
            cs.hpke.public_key(p)
    if cs.params.kem in NIST_CURVES:
        curve = NIST_CURVES[cs.params.kem]
        for bad in (0, curve.order):
            with pytest.raises(LocalUsageError):
                cs.hpke.public_key(bad.to_bytes(curve.size, "big"))


@pytest.mark.parametrize("cs", NATIVE_SUITES, ids=suite_id)
def test_own_and_native_hpke_agree(cs: CipherSuite) -> None:
    h = cs.hpke
    assert h._native is not None
    priv, pub = cs.generate_kem_key_pair()
    for info, pt in ((b"", b""), (b"info", b"hello"), (os.urandom(100), os.urandom(3000))):
        enc, ct = h._seal_native(pub, info, pt)
        assert h._open_own(enc, priv, info, b"", ct) == pt
        enc, ct = h._seal_own(pub, info, b"", pt)
        assert h._open_native(enc, priv, info, ct) == pt
        # and the public API (native path) opens what our code sealed
        assert h.open_base(enc, priv, info, b"", ct) == pt


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_seal_with_a_precomputed_info_hash(cs: CipherSuite) -> None:
    """``seal_base_hashed`` is ``SealBase``: the same bytes for the same ephemeral key."""
    h = cs.hpke
    priv, pub = cs.generate_kem_key_pair()
    info, pt = os.urandom(20000), os.urandom(300)
    enc, ct = h.seal_base_hashed(pub, h.info_hash(info), pt)
    assert h.open_base(enc, priv, info, b"", ct) == pt
    assert h._open_own(enc, priv, info, b"", ct) == pt
    with pytest.raises(DecryptionError):
        h.open_base(enc, priv, info[:-1], b"", ct)
    sk_e = _load_private(h.kem.name, cs.generate_kem_key_pair()[0])[0]
    shared, enc = h._encap(pub, sk_e)
    assert h._key_schedule_hashed(shared, h.info_hash(info)) == h._key_schedule_base(shared, info)
    with pytest.raises(CryptoError):
        h.seal_base_hashed(bytes(len(pub)), h.info_hash(info), pt)


def test_rfc9180_a1_info_hash() -> None:
    """The precomputed path reproduces RFC 9180 A.1.1's key and nonce."""
    h = get_suite(1).hpke
    key, nonce = h._key_schedule_hashed(bytes.fromhex(A1_SHARED),
                                        h.info_hash(bytes.fromhex(A1_INFO)))
    assert (key.hex(), nonce.hex()) == (A1_KEY, A1_NONCE)


def test_x448_has_no_native_path() -> None:
    for sid in (4, 6):
        assert get_suite(sid).hpke._native is None


@pytest.mark.parametrize("case", load("crypto-basics"), ids=lambda c: f"suite{c['cipher_suite']}")
def test_own_hpke_opens_vector_ciphertexts(case: dict) -> None:
    """Our own DHKEM and key schedule open the interop vectors of every suite."""
    cs = get_suite(case["cipher_suite"])
    c = case["encrypt_with_label"]
    # EncryptContext of RFC 9420 §5.1.3
    info = encode_opaque(b"MLS 1.0 " + c["label"].encode()) + encode_opaque(unhex(c["context"]))
    args = (unhex(c["kem_output"]), unhex(c["priv"]), info, b"", unhex(c["ciphertext"]))
    assert cs.hpke.open_base(*args) == unhex(c["plaintext"])
    assert cs.hpke._open_own(*args) == unhex(c["plaintext"])


# -- RFC 9180 Appendix A test vectors ----------------------------------------------------

# A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode (= MLS suite 1)
A1_IKM_E = "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234"
A1_SK_E = "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736"
A1_PK_E = "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431"
A1_IKM_R = "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037"
A1_SK_R = "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8"
A1_INFO = "4f6465206f6e2061204772656369616e2055726e"  # "Ode on a Grecian Urn"
A1_SHARED = "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc"
A1_KEY = "4531685d41d65f03dc48f6b8302c05b0"
A1_NONCE = "56d890e5accaaf011cff4b7d"
A1_PT = "4265617574792069732074727574682c20747275746820626561757479"
A1_AAD0 = "436f756e742d30"  # "Count-0"
A1_CT0 = ("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9"
          "6d8770ac83d07bea87e13c512a")


def test_rfc9180_a1_base_mode() -> None:
    h = get_suite(1).hpke
    sk_e, pk_e = h.derive_key_pair(bytes.fromhex(A1_IKM_E))
    assert (sk_e.hex(), pk_e.hex()) == (A1_SK_E, A1_PK_E)
    sk_r, pk_r = h.derive_key_pair(bytes.fromhex(A1_IKM_R))
    assert sk_r.hex() == A1_SK_R
    shared, enc = h._encap(pk_r, _load_private("X25519", sk_e)[0])
    assert enc == pk_e
    assert shared.hex() == A1_SHARED
    key, nonce = h._key_schedule_base(shared, bytes.fromhex(A1_INFO))
    assert (key.hex(), nonce.hex()) == (A1_KEY, A1_NONCE)
    enc, ct = h._seal_own(pk_r, bytes.fromhex(A1_INFO), bytes.fromhex(A1_AAD0),
                          bytes.fromhex(A1_PT), _load_private("X25519", sk_e)[0])
    assert ct.hex() == A1_CT0
    assert h.open_base(enc, sk_r, bytes.fromhex(A1_INFO), bytes.fromhex(A1_AAD0),
                       ct) == bytes.fromhex(A1_PT)


def test_rfc9180_a3_p256_derive_key_pair() -> None:
    """A.3: DHKEM(P-256, HKDF-SHA256) DeriveKeyPair of ikmE and ikmR."""
    h = get_suite(2).hpke
    sk_e, pk_e = h.derive_key_pair(
        bytes.fromhex("4270e54ffd08d79d5928020af4686d8f6b7d35dbe470265f1f5aa22816ce860e"))
    assert sk_e.hex() == "4995788ef4b9d6132b249ce59a77281493eb39af373d236a1fe415cb0c2d7beb"
    assert pk_e.hex() == (
        "04a92719c6195d5085104f469a8b9814d5838ff72b60501e2c4466e5e67b325ac9"
        "8536d7b61a1af4b78e5b7f951c0900be863c403ce65c9bfcb9382657222d18c4")
    sk_r, _ = h.derive_key_pair(
        bytes.fromhex("668b37171f1072f3cf12ea8a236a45df23fc13b82af3609ad1e354f6ef817550"))
    assert sk_r.hex() == "f3ce7fdae57e1a310d87f1ebbde6f328be0a99cdbcadf4d6589cf29de4b8ffd2"


def test_rfc9180_a6_p521_derive_key_pair() -> None:
    """A.6: DHKEM(P-521, HKDF-SHA512) DeriveKeyPair of ikmE (bitmask 0x01)."""
    h = get_suite(5).hpke
    sk_e, _ = h.derive_key_pair(bytes.fromhex(
        "7f06ab8215105fc46aceeb2e3dc5028b44364f960426eb0d8e4026c2f8b5d7e7"
        "a986688f1591abf5ab753c357a5d6f0440414b4ed4ede71317772ac98d9239f70904"))
    assert sk_e.hex() == (
        "014784c692da35df6ecde98ee43ac425dbdd0969c0c72b42f2e708ab9d535415a8"
        "569bdacfcc0a114c85b8e3f26acf4d68115f8c91a66178cdbd03b7bcc5291e374b")


def test_hpke_rejects_mismatched_params() -> None:
    p = get_suite(1).params
    with pytest.raises(LocalUsageError):
        Hpke(replace(p, kem="X25519", kem_id=0x0021))
    with pytest.raises(LocalUsageError):
        Hpke(replace(p, aead_id=0x0009))


# -- AEAD (RFC 9420 §5.1) ------------------------------------------------------------


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
def test_aead_bad_tag(cs: CipherSuite) -> None:
    key = os.urandom(cs.aead_key_len)
    nonce = os.urandom(cs.aead_nonce_len)
    ct = cs.aead_seal(key, nonce, b"aad", b"plaintext")
    assert cs.aead_open(key, nonce, b"aad", ct) == b"plaintext"
    with pytest.raises(DecryptionError):
        cs.aead_open(key, nonce, b"aad", flip(ct, len(ct) - 1))
    with pytest.raises(DecryptionError):
        cs.aead_open(key, nonce, b"aaD", ct)
    with pytest.raises(DecryptionError):
        cs.aead_open(key, nonce[:-1], b"aad", ct)
    with pytest.raises(DecryptionError):
        cs.aead_open(key, nonce, b"aad", ct[:10])


# -- ExpandWithLabel fast paths (RFC 9420 §8) ------------------------------------------


def _expand_with_label_reference(cs: CipherSuite, secret: bytes, label: bytes, context: bytes,
                                 length: int) -> bytes:
    """ExpandWithLabel spelled out: HKDF-Expand over the KDFLabel, no caches."""
    info = length.to_bytes(2, "big") + encode_opaque(b"MLS 1.0 " + label) + encode_opaque(context)
    return cs.expand(secret, info, length)


@pytest.mark.parametrize("cs", SUITES, ids=suite_id)
@pytest.mark.parametrize("context_len", [0, 4, 32, 63, 64, 200])
def test_expand_with_label_paths_agree(cs: CipherSuite, context_len: int) -> None:
    rng = counting_rng(context_len + cs.id)
    secret, context = rng(cs.hash_len), rng(context_len)
    lengths = [cs.aead_key_len, cs.aead_nonce_len, cs.hash_len, 2 * cs.hash_len + 3]
    for length in lengths:
        want = _expand_with_label_reference(cs, secret, b"key", context, length)
        for label in ("key", b"key", bytearray(b"key")):
            assert cs.expand_with_label(secret, label, context, length) == want
            assert cs.expand_with_label(secret, label, context, length) == want  # cached
    pairs: list[tuple[str | bytes, int]] = [("key", cs.aead_key_len), ("nonce", cs.aead_nonce_len),
                                            ("secret", cs.hash_len)]
    assert cs.expand_with_labels(secret, context, pairs) == [
        _expand_with_label_reference(cs, secret, str(label).encode(), context, n)
        for label, n in pairs]
    longer = pairs + [("long", 2 * cs.hash_len + 3)]  # more than one HKDF block
    assert cs.expand_with_labels(secret, context, longer)[-1] == _expand_with_label_reference(
        cs, secret, b"long", context, 2 * cs.hash_len + 3)
    assert cs.derive_tree_secrets(secret, 7, pairs) == [
        cs.derive_tree_secret(secret, label, 7, n) for label, n in pairs]
