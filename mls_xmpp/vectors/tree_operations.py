"""The ``tree-operations`` vectors (RFC 9420 §12.1.1-§12.1.3, §7.7, §7.8)."""

from __future__ import annotations

from ..core.crypto import get_suite
from ..core.messages.proposals import PROPOSAL, Add, Remove, Update
from ..core.tree.ratchet_tree import RatchetTree
from . import Case, VectorMismatch, expect, unhex


def check(case: Case) -> None:
    """Apply the Add, Update or Remove to ``tree_before``; compare encoding and hashes."""
    suite = get_suite(int(case["cipher_suite"]))
    tree = RatchetTree.decode(suite, unhex(case["tree_before"]))
    expect("tree_hash_before", tree.tree_hash(), unhex(case["tree_hash_before"]))
    proposal = PROPOSAL.decode(unhex(case["proposal"]))
    sender = int(case["proposal_sender"])
    if isinstance(proposal, Add):
        tree.add_leaf(proposal.key_package.leaf_node)
    elif isinstance(proposal, Update):
        tree.update_leaf(sender, proposal.leaf_node)
    elif isinstance(proposal, Remove):
        tree.remove_leaf(proposal.removed)
    else:
        raise VectorMismatch(f"unexpected proposal type {type(proposal).__name__}")
    expect("tree_after", tree.encode(), unhex(case["tree_after"]))
    expect("tree_hash_after", tree.tree_hash(), unhex(case["tree_hash_after"]))
    # the incremental hashes must agree with a tree hashed from scratch
    fresh = RatchetTree.decode(suite, unhex(case["tree_after"]))
    expect("tree_hash_after (fresh)", fresh.tree_hash(), unhex(case["tree_hash_after"]))
