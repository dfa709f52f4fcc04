"""The ``treekem`` vectors (RFC 9420 §7.4-§7.6, §7.9, §12.4.2)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..core.crypto import CipherSuite, get_suite
from ..core.messages.commit import UpdatePath
from ..core.messages.common import LeafNodeSource
from ..core.messages.group_info import GroupContext
from ..core.messages.leaf_node import LeafNode
from ..core.tree.ratchet_tree import RatchetTree
from ..core.tree.treekem import (
    ContextForTreeHash,
    SignLeaf,
    TreePrivateKeys,
    create_update_path,
    merge_update_path,
    process_update_path,
)
from ..core.tree.validation import validate_tree
from . import Case, VectorMismatch, expect, unhex


def _context(suite: CipherSuite, case: Case) -> ContextForTreeHash:
    """The GroupContext of the vector with a given tree hash, encoded."""
    group_id = unhex(case["group_id"])
    epoch = int(case["epoch"])
    cth = unhex(case["confirmed_transcript_hash"])

    def build(tree_hash: bytes) -> bytes:
        return GroupContext(1, suite.id, group_id, epoch, tree_hash, cth, ()).encode()

    return build


def _private_states(tree: RatchetTree, case: Case) -> tuple[dict[int, TreePrivateKeys],
                                                              dict[int, bytes]]:
    """``leaf_private[index]`` of every entry, checked against the tree."""
    suite = tree.suite
    states: dict[int, TreePrivateKeys] = {}
    sig_privs: dict[int, bytes] = {}
    for entry in case["leaves_private"]:
        i = int(entry["index"])
        keys = TreePrivateKeys.for_leaf(i, unhex(entry["encryption_priv"]))
        for ps in entry["path_secrets"]:
            keys.set_path_secret(suite, int(ps["node"]), unhex(ps["path_secret"]))
        keys.check(tree)  # every held key sits on a non-blank node with its public key
        states[i] = keys
        sig_privs[i] = unhex(entry["signature_priv"])
    return states, sig_privs


def _signer(suite: CipherSuite, old: LeafNode, sig_priv: bytes, group_id: bytes,
            index: int) -> SignLeaf:
    def sign(encryption_key: bytes, parent_hash: bytes) -> LeafNode:
        leaf = replace(old, encryption_key=encryption_key,
                       leaf_node_source=LeafNodeSource.COMMIT, lifetime=None,
                       parent_hash=parent_hash)
        return leaf.signed(suite, sig_priv, group_id, index)

    return sign


def _check_update_path(tree: RatchetTree, case: Case, entry: dict[str, Any],
                       states: dict[int, TreePrivateKeys], sig_privs: dict[int, bytes]) -> None:
    suite = tree.suite
    group_id = unhex(case["group_id"])
    context = _context(suite, case)
    sender = int(entry["sender"])
    path = UpdatePath.decode(unhex(entry["update_path"]))
    members = [i for i, _ in tree.leaves() if i != sender]
    for j in members:
        if j not in states:
            raise VectorMismatch(f"no private state for non-blank leaf {j}")

    # the given UpdatePath: parent-hash valid, decryptable by every other member
    merged: RatchetTree | None = None
    for j in members:
        receiver = tree.copy()
        out = process_update_path(receiver, sender, path, states[j], context,
                                  group_id=group_id)
        expect(f"path secret of leaf {j}", out.path_secret,
               unhex(entry["path_secrets"][j]))
        expect(f"commit secret at leaf {j}", out.commit_secret, unhex(entry["commit_secret"]))
        out.private_keys.check(receiver)
        merged = receiver
    if merged is None:  # no other member: merge it anyway for the tree hash
        merged = tree.copy()
        merge_update_path(merged, sender, path, group_id=group_id)
    expect("tree_hash_after", merged.tree_hash(), unhex(entry["tree_hash_after"]))
    validate_tree(merged, group_id)  # the whole merged tree is parent-hash valid (§7.9.2)

    # a new UpdatePath from the same sender, processed by every other member
    old_leaf = tree.leaf(sender)
    if old_leaf is None:
        raise VectorMismatch(f"sender leaf {sender} is blank")
    committer = tree.copy()
    created = create_update_path(committer, sender,
                                 _signer(suite, old_leaf, sig_privs[sender], group_id, sender),
                                 context)
    created.private_keys.check(committer)
    new_path = UpdatePath.decode(created.update_path.encode())
    for j in members:
        receiver = tree.copy()
        out = process_update_path(receiver, sender, new_path, states[j], context,
                                  group_id=group_id)
        expect(f"new commit secret at leaf {j}", out.commit_secret, created.commit_secret)
        expect(f"new tree hash at leaf {j}", receiver.tree_hash(), committer.tree_hash())
        expect(f"new path secret at leaf {j}", out.path_secret,
               created.path_secrets[out.common_ancestor])
    validate_tree(committer, group_id)


def check(case: Case) -> None:
    """Private states, then every update path of the case (see the README steps)."""
    suite = get_suite(int(case["cipher_suite"]))
    tree = RatchetTree.decode(suite, unhex(case["ratchet_tree"]))
    validate_tree(tree, unhex(case["group_id"]))
    states, sig_privs = _private_states(tree, case)
    for entry in case["update_paths"]:
        _check_update_path(tree, case, entry, states, sig_privs)
