"""The secret tree (RFC 9420 §9): ratchet windows, replay, deletion of used secrets."""

from __future__ import annotations

import pytest

from mls_xmpp.core.crypto import CipherSuite, get_suite
from mls_xmpp.core.errors import LocalUsageError, SecretTreeError
from mls_xmpp.core.tree import math as tm
from mls_xmpp.core.tree.secret_tree import (
    RatchetType,
    SecretTree,
    ratchet_type_for_content_type,
    sender_data_key_nonce,
)

APP = RatchetType.APPLICATION
HS = RatchetType.HANDSHAKE


@pytest.fixture
def suite() -> CipherSuite:
    return get_suite(1)


def _secret(suite: CipherSuite, tag: int = 1) -> bytes:
    return bytes([tag]) * suite.hash_len


def _sent_keys(suite: CipherSuite, n_leaves: int, leaf: int, rt: RatchetType,
               count: int) -> list[tuple[bytes, bytes]]:
    """The first ``count`` (key, nonce) pairs a sender at ``leaf`` uses."""
    sender = SecretTree(suite, _secret(suite), n_leaves)
    out = []
    for g in range(count):
        gen, key, nonce = sender.next_key(leaf, rt)
        assert gen == g
        out.append((key, nonce))
    return out


def _all_held_bytes(tree: SecretTree) -> list[bytes]:
    """Every secret, key and nonce held in the tree's internal state."""
    held = list(tree._tree.values())
    for ratchets in tree._ratchets.values():
        for r in ratchets.values():
            held.append(r.secret)
            for key, nonce in r.keys.values():
                held += [key, nonce]
    return held


def test_in_order_receive_matches_sender(suite: CipherSuite) -> None:
    sent = _sent_keys(suite, 4, 3, APP, 5)
    receiver = SecretTree(suite, _secret(suite), 4)
    for g, kn in enumerate(sent):
        assert receiver.key_for(3, APP, g) == kn
    assert receiver.next_generation(3, APP) == 5
    assert receiver.held_generations(3, APP) == frozenset()


def test_out_of_order_within_window(suite: CipherSuite) -> None:
    sent = _sent_keys(suite, 4, 1, APP, 8)
    receiver = SecretTree(suite, _secret(suite), 4)
    for g in (5, 2, 0, 7, 4, 6, 1, 3):
        assert receiver.key_for(1, APP, g) == sent[g]
    assert receiver.held_generations(1, APP) == frozenset()


def test_replay_of_consumed_generation_raises(suite: CipherSuite) -> None:
    receiver = SecretTree(suite, _secret(suite), 2)
    receiver.key_for(0, HS, 3)
    with pytest.raises(SecretTreeError):
        receiver.key_for(0, HS, 3)
    receiver.key_for(0, HS, 1)  # skipped, still held
    with pytest.raises(SecretTreeError):
        receiver.key_for(0, HS, 1)
    with pytest.raises(SecretTreeError):
        receiver.peek(0, HS, 1)


def test_sent_keys_are_not_reissued(suite: CipherSuite) -> None:
    tree = SecretTree(suite, _secret(suite), 2)
    gens = [tree.next_key(1, APP)[0] for _ in range(3)]
    assert gens == [0, 1, 2]
    for g in gens:
        with pytest.raises(SecretTreeError):
            tree.key_for(1, APP, g)


def test_generation_too_far_ahead_raises(suite: CipherSuite) -> None:
    sent = _sent_keys(suite, 2, 0, APP, 11)
    receiver = SecretTree(suite, _secret(suite), 2, max_generation_gap=10)
    with pytest.raises(SecretTreeError):
        receiver.peek(0, APP, 11)
    with pytest.raises(SecretTreeError):
        receiver.key_for(0, APP, 11)
    assert receiver.next_generation(0, APP) == 0
    assert receiver.key_for(0, APP, 10) == sent[10]  # exactly the gap is allowed
    # The gap is measured from the ratchet's next generation, not from zero.
    receiver.key_for(0, APP, 21)
    with pytest.raises(SecretTreeError):
        receiver.key_for(0, APP, 33)


@pytest.mark.parametrize("bad", [-1, 1 << 32])
def test_generation_must_be_uint32(suite: CipherSuite, bad: int) -> None:
    tree = SecretTree(suite, _secret(suite), 2)
    with pytest.raises(SecretTreeError):
        tree.peek(0, APP, bad)
    with pytest.raises(SecretTreeError):
        tree.key_for(0, APP, bad)


def test_too_old_beyond_window_raises(suite: CipherSuite) -> None:
    sent = _sent_keys(suite, 2, 1, APP, 11)
    receiver = SecretTree(suite, _secret(suite), 2, out_of_order_window=4)
    receiver.key_for(1, APP, 10)
    # next generation 11: generations >= 11 - 4 = 7 are kept, older ones deleted
    assert receiver.held_generations(1, APP) == frozenset({7, 8, 9})
    for g in range(7):
        with pytest.raises(SecretTreeError):
            receiver.key_for(1, APP, g)
    assert receiver.key_for(1, APP, 7) == sent[7]
    # moving on pushes the rest out of the window
    receiver.key_for(1, APP, 13)
    assert receiver.held_generations(1, APP) == frozenset({11, 12})
    with pytest.raises(SecretTreeError):
        receiver.key_for(1, APP, 9)


def test_zero_window_keeps_no_skipped_keys(suite: CipherSuite) -> None:
    receiver = SecretTree(suite, _secret(suite), 2, out_of_order_window=0)
    receiver.key_for(0, APP, 5)
    assert receiver.held_generations(0, APP) == frozenset()
    with pytest.raises(SecretTreeError):
        receiver.key_for(0, APP, 4)


def test_keys_deleted_from_internal_state_after_use(suite: CipherSuite) -> None:
    receiver = SecretTree(suite, _secret(suite), 2)
    receiver.key_for(0, APP, 3)
    ratchet = receiver._ratchets[APP][0]
    assert set(ratchet.keys) == {0, 1, 2}
    key1, nonce1 = receiver.key_for(0, APP, 1)
    assert set(ratchet.keys) == {0, 2}
    held = _all_held_bytes(receiver)
    assert key1 not in held and nonce1 not in held
    # the key of the newest generation is never stored at all
    key4, nonce4 = receiver.key_for(0, APP, 4)
    held = _all_held_bytes(receiver)
    assert key4 not in held and nonce4 not in held
    # the send side keeps nothing of what it handed out
    gen, key, nonce = receiver.next_key(1, HS)
    held = _all_held_bytes(receiver)
    assert key not in held and nonce not in held


def test_used_ratchet_secrets_are_replaced(suite: CipherSuite) -> None:
    tree = SecretTree(suite, _secret(suite), 1)
    tree.next_key(0, APP)
    first = tree._ratchets[APP][0].secret
    tree.next_key(0, APP)
    assert tree._ratchets[APP][0].secret != first
    assert first not in _all_held_bytes(tree)


def test_parent_secrets_deleted_after_both_children_derived(suite: CipherSuite) -> None:
    encryption_secret = _secret(suite, 7)
    tree = SecretTree(suite, encryption_secret, 8)
    assert tree.held_tree_nodes() == {7}
    tree.key_for(0, APP, 0)  # leaf 0 = node 0: path 7 -> 3 -> 1 -> 0
    assert tree.held_tree_nodes() == {2, 5, 11}
    assert encryption_secret not in _all_held_bytes(tree)
    tree.next_key(1, HS)  # node 2, held since the first expansion
    assert tree.held_tree_nodes() == {5, 11}
    tree.peek(2, APP, 0)  # peeking derives nothing into the state
    assert tree.held_tree_nodes() == {5, 11}
    tree.key_for(2, APP, 0)  # node 4: 5 -> 4, keeps 6
    assert tree.held_tree_nodes() == {6, 11}
    tree.key_for(7, HS, 0)  # node 14: 11 -> 13 -> 14, keeps 9 and 12
    assert tree.held_tree_nodes() == {6, 9, 12}


def test_only_the_path_is_derived(suite: CipherSuite) -> None:
    n = 1 << 12
    tree = SecretTree(suite, _secret(suite), n)
    tree.key_for(1234, APP, 0)
    held = tree.held_tree_nodes()
    assert held == set(tm.copath(tm.leaf_to_node(1234), n))
    assert len(held) == 12
    assert set(tree._ratchets[APP]) == {1234}
    assert set(tree._ratchets[HS]) == {1234}


def test_peek_does_not_mutate_then_consume(suite: CipherSuite) -> None:
    sent = _sent_keys(suite, 4, 2, APP, 6)
    tree = SecretTree(suite, _secret(suite), 4)
    assert tree.peek(2, APP, 5) == sent[5]
    assert tree.peek(2, APP, 5) == sent[5]
    assert tree.next_generation(2, APP) == 0
    assert tree.held_tree_nodes() == {3}
    tree.consume(2, APP, 5)
    assert tree.next_generation(2, APP) == 5 + 1
    assert tree.held_generations(2, APP) == frozenset(range(5))
    assert tree.peek(2, APP, 3) == sent[3]
    assert tree.held_generations(2, APP) == frozenset(range(5))
    tree.consume(2, APP, 3)
    with pytest.raises(SecretTreeError):
        tree.peek(2, APP, 3)
    with pytest.raises(SecretTreeError):
        tree.consume(2, APP, 5)


def test_ratchets_are_independent(suite: CipherSuite) -> None:
    tree = SecretTree(suite, _secret(suite), 2)
    hs = tree.next_key(0, HS)
    app = tree.next_key(0, APP)
    assert hs[0] == app[0] == 0
    assert hs[1:] != app[1:]
    assert tree.next_generation(0, HS) == 1
    assert tree.next_generation(1, HS) == 0
    other = SecretTree(suite, _secret(suite), 2)
    assert other.key_for(0, HS, 0) == hs[1:]
    assert other.key_for(0, APP, 0) == app[1:]


def test_key_and_nonce_sizes() -> None:
    for suite_id in (1, 4, 7):
        suite = get_suite(suite_id)
        _, key, nonce = SecretTree(suite, _secret(suite), 1).next_key(0, APP)
        assert len(key) == suite.aead_key_len
        assert len(nonce) == suite.aead_nonce_len


def test_invalid_construction_and_leaves(suite: CipherSuite) -> None:
    with pytest.raises(LocalUsageError):
        SecretTree(suite, _secret(suite), 3)
    with pytest.raises(LocalUsageError):
        SecretTree(suite, b"short", 2)
    with pytest.raises(LocalUsageError):
        SecretTree(suite, _secret(suite), 2, out_of_order_window=-1)
    tree = SecretTree(suite, _secret(suite), 2)
    for bad in (-1, 2):
        with pytest.raises(LocalUsageError):
            tree.next_key(bad, APP)
        with pytest.raises(LocalUsageError):
            tree.peek(bad, APP, 0)
        with pytest.raises(LocalUsageError):
            tree.key_for(bad, APP, 0)


def test_ratchet_type_for_content_type() -> None:
    assert ratchet_type_for_content_type(1) is APP
    assert ratchet_type_for_content_type(2) is HS
    assert ratchet_type_for_content_type(3) is HS
    with pytest.raises(LocalUsageError):
        ratchet_type_for_content_type(0)


def test_sender_data_sample_is_at_most_nh_bytes(suite: CipherSuite) -> None:
    secret = _secret(suite, 9)
    long_ct = bytes(range(100))
    assert (sender_data_key_nonce(suite, secret, long_ct)
            == sender_data_key_nonce(suite, secret, long_ct[: suite.hash_len] + b"tail"))
    short_ct = bytes(range(10))
    key, nonce = sender_data_key_nonce(suite, secret, short_ct)
    assert key == suite.expand_with_label(secret, "key", short_ct, suite.aead_key_len)
    assert nonce == suite.expand_with_label(secret, "nonce", short_ct, suite.aead_nonce_len)
