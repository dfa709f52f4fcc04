"""The ``tree-validation`` vectors (RFC 9420 §4.1.1, §7.8, §7.9.2, §12.4.3.1)."""

from __future__ import annotations

from ..core.crypto import get_suite
from ..core.tree.ratchet_tree import RatchetTree
from ..core.tree.validation import validate_tree
from . import Case, expect, unhex


def check(case: Case) -> None:
    """Resolutions and tree hashes of every node, then the full tree validation.

    The validation covers the parent hashes (§7.9.2) and the leaf signatures
    with ``group_id`` as context, as the vector asks, plus the other joiner
    checks of §12.4.3.1.
    """
    suite = get_suite(int(case["cipher_suite"]))
    tree = RatchetTree.decode(suite, unhex(case["tree"]))
    expect("node count", tree.width, len(case["resolutions"]))
    expect("tree hash count", tree.width, len(case["tree_hashes"]))
    for x in range(tree.width):
        expect(f"resolution of node {x}", tree.resolution(x), list(case["resolutions"][x]))
        expect(f"tree hash of node {x}", tree.node_tree_hash(x), unhex(case["tree_hashes"][x]))
    validate_tree(tree, unhex(case["group_id"]), unhex(case["tree_hashes"][tree.root]))
    expect("re-encoding", tree.encode(), unhex(case["tree"]))
