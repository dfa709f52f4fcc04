"""The benchmarks' synthetic full tree (``benchmarks/_fulltree.py``) and plot detection.

The tree must be what a real group would accept: a valid tree (§12.4.3.1:
signatures, parent hashes, tree hash) whose key holders can decrypt.
"""

from __future__ import annotations

import pytest

from benchmarks._fulltree import FullTree
from benchmarks.plot import detect
from mls_xmpp.core.crypto import get_suite
from mls_xmpp.core.messages.leaf_node import Capabilities
from mls_xmpp.core.tree import math as tm
from mls_xmpp.core.tree.treekem import TreePrivateKeys
from mls_xmpp.core.tree.validation import validate_tree

GROUP_ID = b"full tree test"
CAPS = Capabilities(cipher_suites=(1,), credentials=(1,))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 37])
def test_full_tree_is_valid(n: int) -> None:
    suite = get_suite(1)
    holders = sorted({0, n // 2, n - 1})
    seen: list[int] = []
    full = FullTree(suite, n, GROUP_ID, capabilities=CAPS, key_holders=holders,
                    signers=[0], on_leaf=seen.append)
    root_hash = full.build()
    tree = full.ratchet_tree()
    assert tree.tree_hash() == root_hash
    validate_tree(tree, GROUP_ID, root_hash)
    assert seen == list(range(1, n + 1))
    assert [i for i in range(tree.n_leaves) if tree.leaf(i) is not None] == list(range(n))
    assert set(full.sig_private) == {0}
    for h in holders:
        keys = full.path_keys(h)
        path = tm.direct_path(2 * h, full.n_leaves) if full.n_leaves > 1 else []
        assert 2 * h in keys and set(keys) <= {2 * h, *path}
        TreePrivateKeys(h, keys).check(tree)  # each key matches the public key in the tree


def test_full_tree_parents() -> None:
    """A parent is set exactly when its right subtree holds a member."""
    full = FullTree(get_suite(1), 6, GROUP_ID, capabilities=CAPS)
    full.build()
    parents = {x for x, node in enumerate(full.nodes) if node is not None and x & 1}
    # 8 leaves, members 0..5: 13 (leaves 6, 7) and 11 (leaves 4..7, right child 13) blank
    assert parents == {1, 3, 5, 7, 9}


def test_plot_detects_each_benchmark() -> None:
    assert detect({"benchmark": "bench_tree", "results": {}}) == "tree"
    assert detect({"benchmark": "bench_xmpp", "results": {}}) == "xmpp"
    assert detect({"cipher_suite": 1, "results": {"10": {"n": 10, "add": 0.01}}}) == "group"
    with pytest.raises(ValueError):
        detect({"results": {"10": {"n": 10}}})
