"""TreeKEM: creating, merging and decrypting UpdatePaths (RFC 9420 §7.4-§7.6, §12.4.2).

Committer side -- :func:`create_update_path`::

    result = create_update_path(
        tree, my_leaf,
        sign_leaf=lambda enc_key, parent_hash: replace(
            my_leaf_node, encryption_key=enc_key, leaf_node_source=LeafNodeSource.COMMIT,
            lifetime=None, parent_hash=parent_hash).signed(suite, sig_priv, group_id, my_leaf),
        group_context=lambda tree_hash: provisional_context(tree_hash).encode(),
        exclude=joiner_leaves)

The new LeafNode can only be signed once the parent hashes of the path are
known (its ``parent_hash`` is the parent hash of the first node of the
filtered direct path), and the HPKE context is the provisional GroupContext,
which holds the tree hash of the tree *with* that signed leaf. So the
function takes two callbacks, called in this order: ``sign_leaf(encryption_key,
parent_hash)`` returns the signed commit LeafNode, then
``group_context(tree_hash)`` returns the encoded provisional GroupContext.

Receiver side -- :func:`process_update_path` (or its two halves
:func:`merge_update_path` and :func:`decrypt_update_path`, for a caller that
needs the merged tree before it can build the context).

Both sides mutate the tree they are given: apply a Commit to
``tree.copy()`` and keep the original if anything raises. Private keys live
in :class:`TreePrivateKeys`; the functions return an updated copy and never
change the one passed in.

Path secrets follow the derivation figure of §7.4: a fresh ``leaf_secret``
yields the leaf key pair (``DeriveKeyPair(DeriveSecret(leaf_secret,
"node"))``) and ``path_secret[0] = DeriveSecret(leaf_secret, "path")``;
``commit_secret = DeriveSecret(path_secret[n], "path")`` (§12.4.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass

from ..crypto import CipherSuite, Rng
from ..crypto.batch import BatchCrypto
from ..errors import DecryptionError, LocalUsageError, ValidationError
from ..messages.commit import HPKECiphertext, UpdatePath, UpdatePathNode
from ..messages.common import LeafNodeSource
from ..messages.leaf_node import LeafNode
from . import math as tm
from .ratchet_tree import RatchetTree

__all__ = [
    "ContextForTreeHash",
    "CreatedUpdatePath",
    "ProcessedUpdatePath",
    "SignLeaf",
    "TreePrivateKeys",
    "create_update_path",
    "decrypt_update_path",
    "merge_update_path",
    "next_path_secret",
    "node_key_pair",
    "process_update_path",
]

#: ``(encryption_key, parent_hash) -> signed LeafNode`` with source ``commit``.
SignLeaf = Callable[[bytes, bytes], LeafNode]
#: ``tree_hash -> encoded provisional GroupContext`` (the HPKE context of §7.6).
ContextForTreeHash = Callable[[bytes], bytes]

_LABEL = "UpdatePathNode"


def next_path_secret(suite: CipherSuite, path_secret: bytes) -> bytes:
    """``path_secret[n+1] = DeriveSecret(path_secret[n], "path")`` (§7.4)."""
    return suite.derive_secret(path_secret, "path")


def node_key_pair(suite: CipherSuite, path_secret: bytes) -> tuple[bytes, bytes]:
    """``(node_priv, node_pub) = DeriveKeyPair(DeriveSecret(path_secret, "node"))`` (§7.4)."""
    return suite.derive_key_pair(suite.derive_secret(path_secret, "node"))


def _below(x: int, leaf_index: int) -> bool:
    """True when leaf ``leaf_index`` is in the subtree under node ``x``."""
    k = (x ^ (x + 1)).bit_length() - 1
    return x - ((1 << k) - 1) <= 2 * leaf_index <= x + ((1 << k) - 1)


class TreePrivateKeys:
    """The HPKE private keys one member holds, by node index (§4.2, §7.4).

    Its own leaf's key and the keys of the parent nodes on its direct path it
    knows. The group layer stores one per epoch; the TreeKEM functions return
    updated copies.
    """

    __slots__ = ("leaf_index", "_keys")

    def __init__(self, leaf_index: int, keys: Mapping[int, bytes] | None = None) -> None:
        self.leaf_index = leaf_index
        self._keys: dict[int, bytes] = dict(keys or {})

    @classmethod
    def for_leaf(cls, leaf_index: int, leaf_private_key: bytes) -> TreePrivateKeys:
        """The keys of a member that knows only its own leaf key."""
        return cls(leaf_index, {2 * leaf_index: leaf_private_key})

    @classmethod
    def for_joiner(cls, tree: RatchetTree, leaf_index: int, leaf_private_key: bytes,
                   signer: int | None = None,
                   path_secret: bytes | None = None) -> TreePrivateKeys:
        """The keys of a member joining by Welcome (§12.4.3.1).

        With a ``path_secret`` from GroupSecrets, it is the secret of the lowest
        common ancestor of ``leaf_index`` and ``signer`` (the committer);
        secrets of the nodes above it on the signer's filtered direct path are
        derived from it and each derived public key must match the tree.
        """
        suite = tree.suite
        leaf = tree.leaf(leaf_index)
        if leaf is None or suite.hpke.public_key(leaf_private_key) != leaf.encryption_key:
            raise ValidationError(f"§12.4.3.1: leaf {leaf_index} does not hold the public key "
                                  "of the joiner's private key")
        keys = cls.for_leaf(leaf_index, leaf_private_key)
        if path_secret is None:
            return keys
        if signer is None or signer == leaf_index:
            raise LocalUsageError("a path secret needs the committer's leaf index")
        ca = tm.common_ancestor(2 * leaf_index, 2 * signer, tree.n_leaves)
        fdp = [p for p, _ in tree.filtered_direct_path(signer)]
        if ca not in fdp:
            raise ValidationError(f"§12.4.3.1: common ancestor {ca} of leaves {leaf_index} "
                                  f"and {signer} is not on the committer's filtered path")
        ps = path_secret
        for p in fdp[fdp.index(ca):]:
            if p != ca:
                ps = next_path_secret(suite, ps)
            keys._set_checked(tree, p, ps)
        return keys

    @property
    def leaf_private_key(self) -> bytes | None:
        """The private key of the member's own leaf."""
        return self._keys.get(2 * self.leaf_index)

    def get(self, x: int) -> bytes | None:
        """The private key of node ``x``, if held."""
        return self._keys.get(x)

    def set(self, x: int, private_key: bytes) -> None:
        """Hold ``private_key`` for node ``x``."""
        self._keys[x] = private_key

    def set_path_secret(self, suite: CipherSuite, x: int, path_secret: bytes) -> bytes:
        """Hold the key pair derived from ``path_secret`` for node ``x``; return its public key."""
        priv, pub = node_key_pair(suite, path_secret)
        self._keys[x] = priv
        return pub

    def _set_checked(self, tree: RatchetTree, x: int, path_secret: bytes) -> None:
        pub = self.set_path_secret(tree.suite, x, path_secret)
        node = tree.node(x)
        if node is None or node.encryption_key != pub:
            raise ValidationError(f"§7.5: the key derived for node {x} does not match the "
                                  "tree")

    def discard(self, x: int) -> None:
        """Forget the key of node ``x`` (no error if not held)."""
        self._keys.pop(x, None)

    def nodes(self) -> list[int]:
        """Node indices whose private keys are held, in increasing order."""
        return sorted(self._keys)

    def items(self) -> Iterator[tuple[int, bytes]]:
        """``(node_index, private_key)`` pairs."""
        return iter(self._keys.items())

    def copy(self) -> TreePrivateKeys:
        """An independent copy."""
        return TreePrivateKeys(self.leaf_index, self._keys)

    def prune(self, tree: RatchetTree) -> None:
        """Forget keys of nodes that are blank or outside ``tree`` (after proposals, §7.7)."""
        width = tree.width
        nodes = tree.nodes()
        for x in [x for x in self._keys if x >= width or nodes[x] is None]:
            del self._keys[x]

    def check(self, tree: RatchetTree) -> None:
        """Check every held key against the tree: the node is non-blank and holds its public key.

        Raises :class:`ValidationError`.
        """
        pub_of = tree.suite.hpke.public_key
        for x, priv in self._keys.items():
            node = tree.node(x) if x < tree.width else None
            if node is None:
                raise ValidationError(f"private key held for node {x}, which is blank")
            if pub_of(priv) != node.encryption_key:
                raise ValidationError(f"private key for node {x} does not match its public key")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TreePrivateKeys):
            return NotImplemented
        return self.leaf_index == other.leaf_index and self._keys == other._keys

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TreePrivateKeys(leaf={self.leaf_index}, nodes={self.nodes()})"


@dataclass(frozen=True)
class CreatedUpdatePath:
    """What :func:`create_update_path` produces.

    Attributes:
        update_path: the UpdatePath to put in the Commit.
        commit_secret: ``DeriveSecret(path_secret[n], "path")`` (§12.4.1).
        path_secrets: path secret of each node of the filtered direct path.
        private_keys: the committer's new private keys (leaf and path).
        leaf_index: the committer's leaf.
    """

    update_path: UpdatePath
    commit_secret: bytes
    path_secrets: dict[int, bytes]
    private_keys: TreePrivateKeys
    leaf_index: int

    def path_secret_for(self, joiner_leaf: int) -> bytes:
        """The path secret for a joiner's GroupSecrets (§12.4.3.1).

        The secret of the lowest common ancestor of the joiner's and the
        committer's leaves.
        """
        x, y = 2 * joiner_leaf, 2 * self.leaf_index
        k = max((x ^ y).bit_length() - 1, 0)
        ca = ((x >> (k + 1)) << (k + 1)) | ((1 << k) - 1)
        secret = self.path_secrets.get(ca)
        if secret is None:
            raise LocalUsageError(f"node {ca} is not on the committer's filtered direct path")
        return secret


@dataclass(frozen=True)
class ProcessedUpdatePath:
    """What a receiver learns from an UpdatePath (§7.5).

    Attributes:
        commit_secret: the commit secret of the new epoch.
        common_ancestor: the node whose path secret was decrypted.
        path_secret: the decrypted path secret of that node.
        private_keys: the receiver's updated private keys.
    """

    commit_secret: bytes
    common_ancestor: int
    path_secret: bytes
    private_keys: TreePrivateKeys


def create_update_path(tree: RatchetTree, leaf_index: int, sign_leaf: SignLeaf,
                       group_context: ContextForTreeHash, *,
                       exclude: Collection[int] = (), rng: Rng = os.urandom,
                       leaf_secret: bytes | None = None,
                       crypto: BatchCrypto | None = None) -> CreatedUpdatePath:
    """Refresh the committer's direct path and encrypt it to the group (§7.4-§7.6).

    Mutates ``tree``: the direct path of ``leaf_index`` is replaced with the
    new keys and parent hashes and the leaf with ``sign_leaf``'s result.
    ``exclude`` lists the leaves added by the same Commit, left out of every
    resolution (§7.6, §12.4.2). ``leaf_secret`` fixes the fresh secret (for
    tests); by default it is ``rng(Nh)``. The HPKE encryptions of the path
    are computed as one batch by ``crypto`` (:mod:`~mls_xmpp.core.crypto.batch`;
    serially by default).
    """
    suite = tree.suite
    fdp = tree.filtered_direct_path(leaf_index)
    secret = rng(suite.hash_len) if leaf_secret is None else leaf_secret
    leaf_priv, leaf_pub = node_key_pair(suite, secret)
    keys = TreePrivateKeys.for_leaf(leaf_index, leaf_priv)
    path_secrets: dict[int, bytes] = {}
    secrets: list[bytes] = []
    pubs: list[bytes] = []
    ps = secret
    for p, _ in fdp:
        ps = next_path_secret(suite, ps)
        path_secrets[p] = ps
        secrets.append(ps)
        pubs.append(keys.set_path_secret(suite, p, ps))
    commit_secret = next_path_secret(suite, ps)

    parent_hash = tree.merge_path(leaf_index, pubs)
    leaf = sign_leaf(leaf_pub, parent_hash)
    if (leaf.encryption_key != leaf_pub or leaf.leaf_node_source != LeafNodeSource.COMMIT
            or leaf.parent_hash != parent_hash):
        raise LocalUsageError("sign_leaf must return a commit LeafNode with the given "
                              "encryption key and parent hash")
    tree.set_leaf_node(leaf_index, leaf)

    context = group_context(tree.tree_hash())
    # one EncryptWithLabel per resolution member of each copath node, as one batch
    sizes: list[int] = []
    items: list[tuple[bytes, bytes]] = []
    for (_, s), ps in zip(fdp, secrets, strict=True):
        resolution = tree.resolution(s, exclude)
        sizes.append(len(resolution))
        for r in resolution:
            target = tree.node(r)
            assert target is not None
            items.append((target.encryption_key, ps))
    sealed = iter(suite.encrypt_with_label_many(_LABEL, context, items, crypto))
    nodes = [UpdatePathNode(pub, tuple(HPKECiphertext(*next(sealed)) for _ in range(size)))
             for pub, size in zip(pubs, sizes, strict=True)]
    return CreatedUpdatePath(UpdatePath(leaf, tuple(nodes)), commit_secret, path_secrets, keys,
                             leaf_index)


def merge_update_path(tree: RatchetTree, sender: int, path: UpdatePath, *,
                      group_id: bytes | None = None, exclude: Collection[int] = ()) -> None:
    """Validate an UpdatePath against ``tree`` and merge it in (§7.5, §7.6, §12.4.2).

    Checks, in order: the leaf's ``leaf_node_source`` is ``commit``; its
    signature with ``group_id`` and ``sender`` (when ``group_id`` is given);
    no key of the path is already in the tree or repeated (which also makes
    the leaf key differ from the old one); the signature key is not another
    member's; one path node per filtered direct-path node, each with one
    ciphertext per resolution member (``exclude`` left out); after the merge,
    the leaf's ``parent_hash`` is the parent hash of its first filtered node.
    Credential and capability checks of the leaf are the group layer's.

    Mutates ``tree`` (use a copy).
    """
    leaf = path.leaf_node
    if leaf.leaf_node_source != LeafNodeSource.COMMIT:
        raise ValidationError("§12.4.2: the UpdatePath leaf node must have source commit")
    if group_id is not None:
        leaf.verify_signature(tree.suite, group_id, sender)
    keys = [leaf.encryption_key] + [n.encryption_key for n in path.nodes]
    if len(set(keys)) != len(keys):
        raise ValidationError("§12.4.2: the UpdatePath repeats a public key")
    for key in keys:
        x = tree.find_encryption_key(key)
        if x is not None:
            raise ValidationError(f"§12.4.2: a public key of the UpdatePath is already used "
                                  f"by node {x}")
    holder = tree.find_signature_key(leaf.signature_key)
    if holder is not None and holder != sender:
        raise ValidationError(f"§7.3: the signature key of the UpdatePath leaf is used by "
                              f"leaf {holder}")
    fdp = tree.filtered_direct_path(sender)
    if len(path.nodes) != len(fdp):
        raise ValidationError(f"§7.6: UpdatePath has {len(path.nodes)} nodes, the filtered "
                              f"direct path of leaf {sender} has {len(fdp)}")
    for (p, s), node in zip(fdp, path.nodes, strict=True):
        want = len(tree.resolution(s, exclude))
        if len(node.encrypted_path_secret) != want:
            raise ValidationError(f"§7.6: UpdatePath node for {p} has "
                                  f"{len(node.encrypted_path_secret)} ciphertexts, the "
                                  f"resolution of {s} has {want} members")
    parent_hash = tree.merge_path(sender, keys[1:])
    if (leaf.parent_hash or b"") != parent_hash:
        raise ValidationError("§7.9.2: the parent_hash of the UpdatePath leaf does not match "
                              "the parent hash of its first filtered direct-path node")
    tree.set_leaf_node(sender, leaf)


def decrypt_update_path(tree: RatchetTree, sender: int, path: UpdatePath,
                        private_keys: TreePrivateKeys, group_context: bytes, *,
                        exclude: Collection[int] = ()) -> ProcessedUpdatePath:
    """Decrypt the path secret meant for this member and derive the rest (§7.5).

    ``tree`` is the tree after :func:`merge_update_path`; ``group_context`` the
    encoded provisional GroupContext. Finds the filtered direct-path node
    whose copath child holds the receiver, the entry of that child's
    resolution the receiver has a private key for, decrypts, derives the
    secrets above and checks each derived public key against the path.

    Raises :class:`DecryptionError` when no usable key or ciphertext exists,
    :class:`ValidationError` when a derived key does not match.
    """
    suite = tree.suite
    me = private_keys.leaf_index
    if me == sender:
        raise LocalUsageError("the committer does not process its own UpdatePath")
    if me in exclude:
        raise LocalUsageError(f"leaf {me} joins in this Commit; it learns the path from "
                              "the Welcome")
    fdp = tree.filtered_direct_path(sender)
    if len(path.nodes) != len(fdp):
        raise ValidationError(f"§7.6: UpdatePath has {len(path.nodes)} nodes, the filtered "
                              f"direct path of leaf {sender} has {len(fdp)}")
    ca = tm.common_ancestor(2 * sender, 2 * me, tree.n_leaves)
    index = next((i for i, (p, _) in enumerate(fdp) if p == ca), None)
    if index is None:
        raise DecryptionError(f"§7.5: leaf {me} is not below the filtered direct path of "
                              f"leaf {sender}")
    s = fdp[index][1]
    resolution = tree.resolution(s, exclude)
    cts = path.nodes[index].encrypted_path_secret
    if len(cts) != len(resolution):
        raise ValidationError(f"§7.6: UpdatePath node for {ca} has {len(cts)} ciphertexts, "
                              f"the resolution of {s} has {len(resolution)} members")
    found = None
    for j, r in enumerate(resolution):
        priv = private_keys.get(r)
        if priv is not None and _below(r, me):
            found = (priv, cts[j])
            break
    if found is None:
        raise DecryptionError(f"§7.5: leaf {me} holds no private key for the resolution "
                              f"of node {s}")
    priv, ct = found
    path_secret = suite.decrypt_with_label(priv, _LABEL, group_context, ct.kem_output,
                                           ct.ciphertext)
    keys = private_keys.copy()
    for x in tm.direct_path(2 * sender, tree.n_leaves):
        keys.discard(x)
    ps = path_secret
    for i in range(index, len(fdp)):
        if i > index:
            ps = next_path_secret(suite, ps)
        pub = keys.set_path_secret(suite, fdp[i][0], ps)
        if pub != path.nodes[i].encryption_key:
            raise ValidationError(f"§7.5: the public key derived for node {fdp[i][0]} does "
                                  "not match the UpdatePath")
    return ProcessedUpdatePath(next_path_secret(suite, ps), ca, path_secret, keys)


def process_update_path(tree: RatchetTree, sender: int, path: UpdatePath,
                        private_keys: TreePrivateKeys, group_context: ContextForTreeHash, *,
                        group_id: bytes | None = None,
                        exclude: Collection[int] = ()) -> ProcessedUpdatePath:
    """:func:`merge_update_path` then :func:`decrypt_update_path` (§7.5, §12.4.2).

    ``group_context(tree_hash)`` builds the encoded provisional GroupContext
    from the tree hash of the merged tree. Mutates ``tree`` (use a copy).
    """
    merge_update_path(tree, sender, path, group_id=group_id, exclude=exclude)
    context = group_context(tree.tree_hash())
    return decrypt_update_path(tree, sender, path, private_keys, context, exclude=exclude)
