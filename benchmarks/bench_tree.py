"""Ratchet tree benchmark (cipher suite 1): build, validate, create and apply an UpdatePath.

Usage::

    python benchmarks/bench_tree.py [--sizes 1000,10000,50000] [--json PATH]

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

The tree is built by :class:`benchmarks._fulltree.FullTree` (shared with
``bench_group.py``). ``--json PATH`` also writes every figure per size, in
seconds (MiB for the sizes), with the single timings behind the medians;
``benchmarks/plot.py`` draws it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._fulltree import FullTree  # noqa: E402
from mls_xmpp.core.crypto import get_suite  # noqa: E402
from mls_xmpp.core.messages.group_info import GroupContext  # noqa: E402
from mls_xmpp.core.messages.leaf_node import Capabilities, LeafNode  # noqa: E402
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
from mls_xmpp.workers import WorkerPool  # noqa: E402

GROUP_ID = b"benchmark group"
REPEAT = 5  # create/apply are repeated on fresh copies; the median is reported
CAPABILITIES = Capabilities(cipher_suites=(1,), credentials=(1,))


def context(tree_hash: bytes) -> bytes:
    return GroupContext(1, 1, GROUP_ID, 42, tree_hash, b"\x00" * 32, ()).encode()


def bench(n: int, crypto: WorkerPool) -> tuple[dict[str, float], dict[str, list[float]]]:
    """All figures for one size (seconds, or MiB for keys ending in MiB).

    ``crypto`` verifies the leaf signatures (with worker processes, unless it has none).

    Also returns the single timings behind the medians (``copy``,
    ``create path``, ``apply path``).
    """
    suite = get_suite(1)
    out: dict[str, float] = {}
    receiver = n - 1
    sender = 0
    builder = FullTree(suite, n, GROUP_ID, capabilities=CAPABILITIES,
                       key_holders=[receiver], signers=[sender])

    t0 = time.perf_counter()
    root_hash = builder.build()
    out["gen leaves"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tree = builder.ratchet_tree()
    got = tree.tree_hash()
    out["build"] = time.perf_counter() - t0
    assert got == root_hash, "builder and RatchetTree disagree on the tree hash"

    t0 = time.perf_counter()
    data = tree.encode()
    out["encode"] = time.perf_counter() - t0
    out["size MiB"] = len(data) / 2**20

    t0 = time.perf_counter()
    received = RatchetTree.decode(suite, data)
    validate_tree(received, GROUP_ID, root_hash, crypto=crypto)
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
    verify_leaf_signatures(fresh, GROUP_ID, crypto)
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

    old = tree.leaf(sender)
    assert old is not None
    sig_priv = builder.sig_private[sender]

    def sign(enc: bytes, ph: bytes) -> LeafNode:
        return replace(old, encryption_key=enc, parent_hash=ph).signed(
            suite, sig_priv, GROUP_ID, sender)

    keys = TreePrivateKeys(receiver, builder.path_keys(receiver))
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
    samples = {"copy": copy_times, "create path": create_times, "apply path": apply_times}
    return out, samples


def print_table(results: dict[int, dict[str, float]]) -> None:
    """The figures of every size, one column per size (times in ms)."""
    sizes = list(results)
    rows = list(next(iter(results.values())))
    print(f"{'cipher suite 1':<20}" + "".join(f"{f'n={n}':>12}" for n in sizes))
    for row in rows:
        if row.endswith("MiB"):
            cells = "".join(f"{results[n][row]:>12.2f}" for n in sizes)
            print(f"{row:<20}" + cells)
        else:
            cells = "".join(f"{results[n][row] * 1000:>12.3f}" for n in sizes)
            print(f"{row + ' ms':<20}" + cells)


def json_document(results: dict[int, dict[str, float]],
                  samples: dict[int, dict[str, list[float]]],
                  walls: dict[int, float], load_before: tuple[float, float, float],
                  total: float) -> dict[str, Any]:
    """What ``--json`` writes: every figure per size, with the run's environment.

    Keys are the table's row names without their indentation; values are
    seconds, or MiB for keys ending in ``MiB``.
    """
    per_size: dict[str, dict[str, Any]] = {}
    for n, figures in results.items():
        entry: dict[str, Any] = {"n": n}
        entry.update({key.strip(): value for key, value in figures.items()})
        entry["samples"] = samples[n]
        entry["wall"] = walls[n]
        per_size[str(n)] = entry
    return {
        "benchmark": "bench_tree",
        "cipher_suite": 1,
        "units": "seconds; keys ending in MiB: mebibytes",
        "repeat": REPEAT,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load_before,
        "loadavg_at_end": os.getloadavg(),
        "total_seconds": total,
        "results": per_size,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,50000",
                   help="comma-separated member counts (default 1000,10000,50000)")
    p.add_argument("--json", type=Path,
                   help="also write every figure per size (and the single timings behind "
                        "the medians) as JSON to this file")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for the leaf signatures (default: $MLS_XMPP_WORKERS, "
                        "else cores - 1; 0: serial)")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0")
    with WorkerPool(args.workers) as pool:
        return _main(args, pool)


def _main(args: argparse.Namespace, pool: WorkerPool) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[int, dict[str, float]] = {}
    samples: dict[int, dict[str, list[float]]] = {}
    walls: dict[int, float] = {}
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    for n in sizes:
        print(f"n = {n} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results[n], samples[n] = bench(n, pool)
        walls[n] = time.perf_counter() - t0
    print_table(results)
    if args.json:
        doc = json_document(results, samples, walls, load_before, time.perf_counter() - t_all)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
