"""A synthetic "full" ratchet tree, shared by ``bench_tree.py`` and ``bench_group.py``.

A full tree is the state a group reaches when every member has committed once,
left to right: leaves ``0 .. n-1`` are commit leaves, every parent node whose
right subtree holds a member is set (with the key of the last committer below
it, and the parent-hash chain running down its right side), the others are
blank. Replaying ``n`` commits to get there is infeasible for large ``n``, so
:class:`FullTree` writes the node list directly, computing parent hashes and
tree hashes (RFC 9420 §7.8, §7.9) on the way down and up.

Every leaf has a real Ed25519 key pair and a valid signature. Encryption keys
are random 32-byte strings (every such string is an X25519 public key), except
for the ``key_holders``: their leaf and every non-blank node of their direct
path get real X25519 key pairs, so that they can decrypt an UpdatePath.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from mls_xmpp.core.codec import encode_opaque
from mls_xmpp.core.crypto import CipherSuite
from mls_xmpp.core.messages.common import LeafNodeSource
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.leaf_node import Capabilities, LeafNode
from mls_xmpp.core.messages.nodes import Node, ParentNode
from mls_xmpp.core.tree import math as tm
from mls_xmpp.core.tree.ratchet_tree import RatchetTree


class FullTree:
    """The node list of a full tree of ``n`` members with valid parent hashes.

    ``key_holders``: leaves whose leaf and direct-path nodes get real X25519
    key pairs (private keys in :attr:`private`, see :meth:`path_keys`).
    ``signers``: leaves whose Ed25519 private key is kept in
    :attr:`sig_private` (the others are dropped as soon as the leaf is signed).
    ``on_leaf``: called with the number of member leaves done so far, after
    each one (for progress reports).
    """

    def __init__(self, suite: CipherSuite, n: int, group_id: bytes, *,
                 capabilities: Capabilities, key_holders: Iterable[int] = (),
                 signers: Iterable[int] = (),
                 on_leaf: Callable[[int], None] | None = None) -> None:
        if n < 1:
            raise ValueError("a tree needs at least one member")
        self.suite, self.n, self.group_id = suite, n, group_id
        self.capabilities = capabilities
        self.n_leaves = 1 << max(n - 1, 0).bit_length()
        self.nodes: list[Node | None] = [None] * (2 * self.n_leaves - 1)
        self.real: set[int] = set()  # nodes that get a real X25519 key pair
        for leaf in key_holders:
            self.real.add(2 * leaf)
            self.real.update(self._direct_path(leaf))
        self.signers = set(signers)
        self.private: dict[int, bytes] = {}  # node index -> X25519 private key
        self.sig_private: dict[int, bytes] = {}  # leaf index -> Ed25519 private key
        self.on_leaf = on_leaf
        self.leaves_done = 0

    def _direct_path(self, leaf: int) -> list[int]:
        return tm.direct_path(2 * leaf, self.n_leaves) if self.n_leaves > 1 else []

    def build(self) -> bytes:
        """Fill :attr:`nodes`; return the root tree hash as computed here."""
        return self._build(self.n_leaves - 1, b"")

    def ratchet_tree(self) -> RatchetTree:
        """A :class:`RatchetTree` of the built nodes (trailing blank nodes cut off)."""
        last = max(x for x, node in enumerate(self.nodes) if node is not None)
        return RatchetTree.from_nodes(self.suite, self.nodes[:last + 1])

    def path_keys(self, leaf: int) -> dict[int, bytes]:
        """The private keys ``leaf`` holds: its own and those of its direct path."""
        mine = {2 * leaf, *self._direct_path(leaf)}
        return {x: key for x, key in self.private.items() if x in mine}

    def _enc_key(self, x: int) -> bytes:
        if x in self.real:
            priv, pub = self.suite.generate_kem_key_pair()
            self.private[x] = priv
            return pub
        return os.urandom(32)

    def _leaf(self, i: int, parent_hash: bytes) -> LeafNode:
        """Member ``i``'s signed commit leaf."""
        sig_priv, sig_pub = self.suite.generate_signature_key_pair()
        if i in self.signers:
            self.sig_private[i] = sig_priv
        leaf = LeafNode(self._enc_key(2 * i), sig_pub,
                        Credential.basic(b"member-%d@example.org" % i), self.capabilities,
                        LeafNodeSource.COMMIT, parent_hash=parent_hash)
        return leaf.signed(self.suite, sig_priv, self.group_id, i)

    def _build(self, x: int, ph_in: bytes) -> bytes:
        """Fill the subtree under node ``x``; return its tree hash.

        ``ph_in`` is the parent hash the node at ``x`` must carry (its parent's
        link in the chain), or a random value where no chain passes.
        """
        h = self.suite.hash
        if x & 1 == 0:  # a leaf
            i = x >> 1
            if i >= self.n:
                return h(b"\x01" + i.to_bytes(4, "big") + b"\x00")
            leaf = self._leaf(i, ph_in)
            self.nodes[x] = leaf
            self.leaves_done += 1
            if self.on_leaf is not None:
                self.on_leaf(self.leaves_done)
            return h(b"\x01" + i.to_bytes(4, "big") + b"\x01" + leaf.encode())
        k = tm.level(x)
        half = 1 << (k - 1)
        left, right = x - half, x + half
        node: ParentNode | None = None
        if (right - (half - 1)) // 2 >= self.n:  # the leftmost leaf on the right is empty
            # x is filtered out of its members' paths: blank, the chain passes through
            th_l = self._build(left, ph_in)
            th_r = self._build(right, b"")
        else:
            key = self._enc_key(x)
            node = ParentNode(key, ph_in, ())
            self.nodes[x] = node
            th_l = self._build(left, os.urandom(self.suite.hash_len))  # a stale link
            ph_x = h(encode_opaque(key) + encode_opaque(ph_in) + encode_opaque(th_l))
            th_r = self._build(right, ph_x)
        body = b"\x02\x00" if node is None else b"\x02\x01" + node.encode()
        return h(body + encode_opaque(th_l) + encode_opaque(th_r))
