"""Ratchet tree benchmark (cipher suite 1): build, validate, create and apply an UpdatePath.

Usage::

    python benchmarks/bench_tree.py [--sizes 1000,10000,50000]

For each size ``n`` it builds a realistic "full" tree of ``n`` members: leaves
``0 .. n-1`` occupied, every parent node whose two subtrees both hold a member
set, and all parent-hash chains valid -- the state a group reaches when every
member has committed once, left to right (each parent then holds the keys of
the rightmost member below it). The tree is built directly in that state
instead of by replaying ``n`` commits.

Leaf generation uses real Ed25519 keys and signatures (it is reported on its
own line). Encryption keys are random 32-byte X25519 public keys, except for
the receiving member, whose leaf and direct-path keys are real key pairs so
that it can decrypt.

Reported figures (milliseconds unless stated):

* ``gen leaves``  -- key generation and signing of the n commit leaves;
* ``build``       -- RatchetTree from the node list plus the root tree hash;
* ``encode``      -- ``ratchet_tree`` encoding (size in MiB alongside);
* ``validate``    -- decode + full §12.4.3.1 validation (tree hash, parent
  hashes, unmerged leaves, key uniqueness, leaf checks and all n signatures);
* ``  decode`` ... ``  signatures`` -- the same validation step by step on a
  fresh decode: decoding, unmerged leaves + tree hash from scratch, parent
  hashes, key uniqueness + leaf capability checks, leaf signatures;
* ``copy``        -- ``RatchetTree.copy()``, median of 5;
* ``create path`` -- committer: ``create_update_path`` on a copy (leaf 0),
  median of 5;
* ``apply path``  -- receiver: ``process_update_path`` on a copy (leaf n-1),
  median of 5;
* ``next hash``   -- root tree hash after a single leaf update (steady state);
* ``peak MiB``    -- tracemalloc peak while decoding the tree and hashing it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mls_xmpp.core.codec import encode_opaque  # noqa: E402
from mls_xmpp.core.crypto import CipherSuite, get_suite  # noqa: E402
from mls_xmpp.core.messages.common import LeafNodeSource  # noqa: E402
from mls_xmpp.core.messages.credentials import Credential  # noqa: E402
from mls_xmpp.core.messages.group_info import GroupContext  # noqa: E402
from mls_xmpp.core.messages.leaf_node import Capabilities, LeafNode  # noqa: E402
from mls_xmpp.core.messages.nodes import Node, ParentNode  # noqa: E402
from mls_xmpp.core.tree import math as tm  # noqa: E402
from mls_xmpp.core.tree.ratchet_tree import RatchetTree  # noqa: E402
from mls_xmpp.core.tree.treekem import (  # noqa: E402
    TreePrivateKeys,
    create_update_path,
    process_update_path,
)
from mls_xmpp.core.tree.validation import (  # noqa: E402
    check_leaf_node_capabilities,
    check_parent_hashes,
    check_unique_keys,
    check_unmerged_leaves,
    validate_tree,
    verify_leaf_signatures,
)

GROUP_ID = b"benchmark group"
REPEAT = 5  # create/apply are repeated on fresh copies; the median is reported


class FullTreeBuilder:
    """Builds the node list of a full n-member tree with valid parent hashes."""

    def __init__(self, suite: CipherSuite, n: int, receiver: int) -> None:
        self.suite = suite
        self.n = n
        self.n_leaves = 1 << max(n - 1, 0).bit_length()
        self.nodes: list[Node | None] = [None] * (2 * self.n_leaves - 1)
        self.receiver = receiver
        self.receiver_path = set(tm.direct_path(2 * receiver, self.n_leaves)) \
            if self.n_leaves > 1 else set()
        self.private: dict[int, bytes] = {}
        self.sig_privs: list[bytes] = []
        self.sig_pubs: list[bytes] = []
        self.sign_time = 0.0

    def make_signature_keys(self) -> None:
        for _ in range(self.n):
            priv, pub = self.suite.generate_signature_key_pair()
            self.sig_privs.append(priv)
            self.sig_pubs.append(pub)

    def _enc_key(self, x: int) -> bytes:
        if x == 2 * self.receiver or x in self.receiver_path:
            priv, pub = self.suite.generate_kem_key_pair()
            self.private[x] = priv
            return pub
        return os.urandom(32)  # every 32-byte string is an X25519 public key

    def _occupied(self, x: int) -> bool:
        k = tm.level(x)
        return (x - ((1 << k) - 1)) // 2 < self.n  # leftmost leaf under x is a member

    def build(self) -> bytes:
        """Fill ``nodes``; return the root tree hash as computed here."""
        return self._build(self.n_leaves - 1, b"")

    def _build(self, x: int, ph_in: bytes) -> bytes:
        h = self.suite.hash
        if x & 1 == 0:
            i = x >> 1
            if i >= self.n:
                return h(b"\x01" + i.to_bytes(4, "big") + b"\x00")
            t0 = time.perf_counter()
            leaf = LeafNode(self._enc_key(x), self.sig_pubs[i],
                            Credential.basic(b"member-%d@example.org" % i),
                            Capabilities(cipher_suites=(1,), credentials=(1,)),
                            LeafNodeSource.COMMIT, parent_hash=ph_in)
            leaf = leaf.signed(self.suite, self.sig_privs[i], GROUP_ID, i)
            self.sign_time += time.perf_counter() - t0
            self.nodes[x] = leaf
            return h(b"\x01" + i.to_bytes(4, "big") + b"\x01" + leaf.encode())
        half = 1 << (tm.level(x) - 1)
        left, right = x - half, x + half
        node: ParentNode | None = None
        if not self._occupied(right):
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


def context(tree_hash: bytes) -> bytes:
    return GroupContext(1, 1, GROUP_ID, 42, tree_hash, b"\x00" * 32, ()).encode()


def bench(n: int) -> dict[str, float]:
    suite = get_suite(1)
    out: dict[str, float] = {}
    receiver = n - 1
    builder = FullTreeBuilder(suite, n, receiver)

    t0 = time.perf_counter()
    builder.make_signature_keys()
    root_hash = builder.build()
    out["gen leaves"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    nodes = builder.nodes
    tree = RatchetTree.from_nodes(suite, nodes[:max(x for x, v in enumerate(nodes) if v) + 1])
    got = tree.tree_hash()
    out["build"] = time.perf_counter() - t0
    assert got == root_hash, "builder and RatchetTree disagree on the tree hash"

    t0 = time.perf_counter()
    data = tree.encode()
    out["encode"] = time.perf_counter() - t0
    out["size MiB"] = len(data) / 2**20

    t0 = time.perf_counter()
    received = RatchetTree.decode(suite, data)
    validate_tree(received, GROUP_ID, root_hash)
    out["validate"] = time.perf_counter() - t0
    # the same steps one by one, on a fresh decode
    t0 = time.perf_counter()
    fresh = RatchetTree.decode(suite, data)
    t1 = time.perf_counter()
    check_unmerged_leaves(fresh)
    assert fresh.tree_hash() == root_hash
    t2 = time.perf_counter()
    check_parent_hashes(fresh)
    t3 = time.perf_counter()
    check_unique_keys(fresh)
    check_leaf_node_capabilities(fresh)
    t4 = time.perf_counter()
    verify_leaf_signatures(fresh, GROUP_ID)
    t5 = time.perf_counter()
    out["  decode"] = t1 - t0
    out["  tree hash"] = t2 - t1
    out["  parent hashes"] = t3 - t2
    out["  keys, leaves"] = t4 - t3
    out["  signatures"] = t5 - t4
    del fresh

    copy_times = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        tree.copy()
        copy_times.append(time.perf_counter() - t0)
    out["copy"] = statistics.median(copy_times)

    sender = 0
    old = tree.leaf(sender)
    assert old is not None
    sig_priv = builder.sig_privs[sender]

    def sign(enc: bytes, ph: bytes) -> LeafNode:
        return replace(old, encryption_key=enc, parent_hash=ph).signed(
            suite, sig_priv, GROUP_ID, sender)

    keys = TreePrivateKeys(receiver, builder.private)
    create_times, apply_times = [], []
    for _ in range(REPEAT):
        committer = tree.copy()
        t0 = time.perf_counter()
        created = create_update_path(committer, sender, sign, context)
        create_times.append(time.perf_counter() - t0)
        receiving = tree.copy()
        t0 = time.perf_counter()
        result = process_update_path(receiving, sender, created.update_path, keys, context,
                                     group_id=GROUP_ID)
        apply_times.append(time.perf_counter() - t0)
        assert result.commit_secret == created.commit_secret
        assert receiving.tree_hash() == committer.tree_hash()
    out["create path"] = statistics.median(create_times)
    out["apply path"] = statistics.median(apply_times)

    # steady state: one more leaf change, then the root hash
    leaf = receiving.leaf(n // 2)
    assert leaf is not None
    receiving.update_leaf(n // 2, replace(leaf, encryption_key=os.urandom(32)))
    t0 = time.perf_counter()
    receiving.tree_hash()
    out["next hash"] = time.perf_counter() - t0

    del received, committer, receiving, tree
    tracemalloc.start()
    tracemalloc.reset_peak()
    measured = RatchetTree.decode(suite, data)
    measured.tree_hash()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["peak MiB"] = peak / 2**20
    del measured
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,50000",
                   help="comma-separated member counts (default 1000,10000,50000)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[int, dict[str, float]] = {}
    for n in sizes:
        print(f"n = {n} ...", file=sys.stderr, flush=True)
        results[n] = bench(n)
    rows = list(next(iter(results.values())))
    print(f"{'cipher suite 1':<20}" + "".join(f"{f'n={n}':>12}" for n in sizes))
    for row in rows:
        if row.endswith("MiB"):
            cells = "".join(f"{results[n][row]:>12.2f}" for n in sizes)
            print(f"{row:<20}" + cells)
        else:
            cells = "".join(f"{results[n][row] * 1000:>12.3f}" for n in sizes)
            print(f"{row + ' ms':<20}" + cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
