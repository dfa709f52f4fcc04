"""The ``secret-tree`` vectors: sender-data keys and sender ratchets (RFC 9420 §6.3.2, §9)."""

from __future__ import annotations

from ..core.crypto import get_suite
from ..core.tree.secret_tree import RatchetType, SecretTree, sender_data_key_nonce
from . import Case, expect, unhex


def check(case: Case) -> None:
    """Check the sender-data key and nonce, then every listed generation of every leaf.

    Each leaf is checked twice: on the receive side (:meth:`SecretTree.peek`
    then :meth:`SecretTree.key_for`, generations in the listed order, skipping
    ahead) and on the send side (:meth:`SecretTree.next_key` run up to each
    listed generation).
    """
    suite = get_suite(int(case["cipher_suite"]))
    sd = case["sender_data"]
    key, nonce = sender_data_key_nonce(suite, unhex(sd["sender_data_secret"]),
                                       unhex(sd["ciphertext"]))
    expect("sender_data key", key, unhex(sd["key"]))
    expect("sender_data nonce", nonce, unhex(sd["nonce"]))

    leaves = case["leaves"]
    encryption_secret = unhex(case["encryption_secret"])
    receiver = SecretTree(suite, encryption_secret, len(leaves))
    sender = SecretTree(suite, encryption_secret, len(leaves))
    for leaf, entries in enumerate(leaves):
        for entry in entries:
            g = int(entry["generation"])
            for rt in RatchetType:
                want_key = unhex(entry[f"{rt.value}_key"])
                want_nonce = unhex(entry[f"{rt.value}_nonce"])
                what = f"leaf {leaf} generation {g} {rt.value}"
                expect(f"{what} key (peek)", receiver.peek(leaf, rt, g)[0], want_key)
                got_key, got_nonce = receiver.key_for(leaf, rt, g)
                expect(f"{what} key", got_key, want_key)
                expect(f"{what} nonce", got_nonce, want_nonce)
                while sender.next_generation(leaf, rt) < g:
                    sender.next_key(leaf, rt)
                sent_g, sent_key, sent_nonce = sender.next_key(leaf, rt)
                expect(f"{what} generation (send side)", sent_g, g)
                expect(f"{what} key (send side)", sent_key, want_key)
                expect(f"{what} nonce (send side)", sent_nonce, want_nonce)
