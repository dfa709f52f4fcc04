"""The ``crypto-basics`` vectors: the labelled helpers of RFC 9420 §5.1-§5.2, §8, §9."""

from __future__ import annotations

from ..core.crypto import get_suite
from . import Case, expect, unhex


def check(case: Case) -> None:
    """Check RefHash, ExpandWithLabel, DeriveSecret, DeriveTreeSecret, SignWithLabel and
    EncryptWithLabel of one cipher suite, including a round trip of our own for the last two.
    """
    cs = get_suite(int(case["cipher_suite"]))

    # RefHash (RFC 9420 §5.2)
    c = case["ref_hash"]
    expect("ref_hash", cs.ref_hash(c["label"], unhex(c["value"])), unhex(c["out"]))

    # ExpandWithLabel (RFC 9420 §8)
    c = case["expand_with_label"]
    expect("expand_with_label",
           cs.expand_with_label(unhex(c["secret"]), c["label"], unhex(c["context"]),
                                int(c["length"])),
           unhex(c["out"]))

    # DeriveSecret (RFC 9420 §8)
    c = case["derive_secret"]
    expect("derive_secret", cs.derive_secret(unhex(c["secret"]), c["label"]), unhex(c["out"]))

    # DeriveTreeSecret (RFC 9420 §9)
    c = case["derive_tree_secret"]
    expect("derive_tree_secret",
           cs.derive_tree_secret(unhex(c["secret"]), c["label"], int(c["generation"]),
                                 int(c["length"])),
           unhex(c["out"]))

    # SignWithLabel / VerifyWithLabel (RFC 9420 §5.1.2); failures raise
    # InvalidSignatureError
    c = case["sign_with_label"]
    priv, pub = unhex(c["priv"]), unhex(c["pub"])
    label, content = c["label"], unhex(c["content"])
    expect("sign_with_label public key", cs.signature_public_key(priv), pub)
    cs.verify_with_label(pub, label, content, unhex(c["signature"]))
    cs.verify_with_label(pub, label, content, cs.sign_with_label(priv, label, content))

    # EncryptWithLabel / DecryptWithLabel (RFC 9420 §5.1.3); failures raise
    # DecryptionError
    c = case["encrypt_with_label"]
    priv, pub = unhex(c["priv"]), unhex(c["pub"])
    label, context, plaintext = c["label"], unhex(c["context"]), unhex(c["plaintext"])
    expect("encrypt_with_label public key", cs.hpke.public_key(priv), pub)
    expect("decrypt_with_label",
           cs.decrypt_with_label(priv, label, context, unhex(c["kem_output"]),
                                 unhex(c["ciphertext"])),
           plaintext)
    kem_output, ciphertext = cs.encrypt_with_label(pub, label, context, plaintext)
    expect("decrypt_with_label of our own ciphertext",
           cs.decrypt_with_label(priv, label, context, kem_output, ciphertext),
           plaintext)
