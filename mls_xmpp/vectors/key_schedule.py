"""The ``key-schedule`` vectors: a chain of epochs (RFC 9420 §8, §8.1, §8.5)."""

from __future__ import annotations

from dataclasses import astuple

from ..core.codec import encode_opaque
from ..core.crypto import get_suite
from ..core.schedule.key_schedule import (
    epoch_secrets_from_init,
    epoch_secrets_from_joiner,
    external_key_pair,
    mls_exporter,
    welcome_secret,
)
from . import Case, expect, unhex


def encode_group_context(cipher_suite: int, group_id: bytes, epoch: int, tree_hash: bytes,
                         confirmed_transcript_hash: bytes, extensions: bytes = b"") -> bytes:
    """GroupContext (RFC 9420 §8.1) with version mls10; ``extensions`` is the encoded list.

    The vector file checks this encoding; the real GroupContext structure
    lives with the messages.
    """
    return (
        (1).to_bytes(2, "big")
        + cipher_suite.to_bytes(2, "big")
        + encode_opaque(group_id)
        + epoch.to_bytes(8, "big")
        + encode_opaque(tree_hash)
        + encode_opaque(confirmed_transcript_hash)
        + encode_opaque(extensions)
    )


def check(case: Case) -> None:
    """Run the epochs in order, each from the previous epoch's ``init_secret``."""
    suite_id = int(case["cipher_suite"])
    suite = get_suite(suite_id)
    group_id = unhex(case["group_id"])
    init_secret = unhex(case["initial_init_secret"])
    for epoch, e in enumerate(case["epochs"]):
        ctx = encode_group_context(suite_id, group_id, epoch, unhex(e["tree_hash"]),
                                   unhex(e["confirmed_transcript_hash"]))
        expect(f"epoch {epoch} group_context", ctx, unhex(e["group_context"]))
        psk = unhex(e.get("psk_secret")) or None  # absent: KDF.Nh zero bytes
        s = epoch_secrets_from_init(suite, init_secret, ctx, unhex(e["commit_secret"]), psk)
        for name in ("joiner_secret", "welcome_secret", "init_secret", "sender_data_secret",
                     "encryption_secret", "exporter_secret", "epoch_authenticator",
                     "external_secret", "confirmation_key", "membership_key",
                     "resumption_psk"):
            expect(f"epoch {epoch} {name}", getattr(s, name), unhex(e[name]))
        # The Welcome path (RFC 9420 §12.4.3.1) reaches the same epoch from joiner_secret.
        assert s.joiner_secret is not None
        joined = epoch_secrets_from_joiner(suite, s.joiner_secret, ctx, psk)
        expect(f"epoch {epoch} secrets via joiner_secret", astuple(joined), astuple(s))
        expect(f"epoch {epoch} welcome_secret()", welcome_secret(suite, s.joiner_secret, psk),
               unhex(e["welcome_secret"]))
        _, external_pub = external_key_pair(suite, s.external_secret)
        expect(f"epoch {epoch} external_pub", external_pub, unhex(e["external_pub"]))
        x = e["exporter"]
        # The label is a string (README-upstream.md); its characters merely look like hex.
        exported = mls_exporter(suite, s.exporter_secret, x["label"], unhex(x["context"]),
                                int(x["length"]))
        expect(f"epoch {epoch} exporter secret", exported, unhex(x["secret"]))
        init_secret = s.init_secret
