"""Core operations against the cryptography they cannot avoid, measured in the same run.

Usage::

    python benchmarks/bench_floor.py [--sizes 1000,5000] [--include-50k] [--runs 3]
                                     [--modes pool,serial] [--tree in,out]
                                     [--no-prehash] [--json PATH]
    python benchmarks/bench_floor.py --batches 16,64,256,1024 [--runs 7] [--json PATH]

For each size ``n``, each worker mode (``pool``: a :class:`~mls_xmpp.workers.WorkerPool`
with its default workers; ``serial``: one core, no worker) and each place of the
ratchet tree (``in`` the Welcome, the core's default, or ``out`` of band) it times,
through the public API, on a fresh group each run:

* ``add``: ``A.commit(add=n KeyPackages)``;
* ``join``: one new member's ``Client.join`` from its Welcome (with the tree from
  the Welcome, or passed out of band);
* ``upd1``: that member's first update after the bulk add, ``commit()``;

and, right after each operation with the same batch crypto, its floor: the
public-key operations the RFC requires and no implementation can skip, on the
same keys and signed contents (built beforehand, so encoding is not part of it):

* ``add``: 2n Ed25519 verifications (leaf node and KeyPackage, RFC 9420 §10.1),
  n HPKE seals (the GroupSecrets) and, with the tree in the Welcome, hashing the
  Welcome's ``info`` once (the encrypted GroupInfo, RFC 9180 §5.1);
* ``join``: n + 1 leaf signatures (§7.3) and one HPKE open of the GroupSecrets
  (with the tree in the Welcome, its ``info`` hashed once within it);
* ``upd1``: one HPKE seal per ciphertext of the UpdatePath (the whole copath
  resolution: every other member, §7.6) and one signature.

The ratio ``op / floor`` is reported per run; tables show the median over
``--runs``. Each also has its CPU time in this process (``"add cpu"``, ...) and
``"add cpu ratio"``: on one core (``serial``) that ratio holds on a loaded
machine where wall-clock ratios do not; with the pool it leaves out the workers'
CPU, so it is only the parent's share. ``--batches`` measures instead the
pool's fixed costs: one batch of each size (signature verifications, HPKE
seals) with the worker pool (its threshold set to 1) against serially,
alternated ``--runs`` times.
``--no-prehash`` turns off the single hashing of a large Welcome
``info`` (:data:`mls_xmpp.core.crypto.batch.PREHASH_INFO_BYTES`), to measure what it
saves: every seal then hashes the whole encrypted GroupInfo again.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mls_xmpp.core.crypto.batch as batch_module  # noqa: E402
from mls_xmpp.core.codec import encode_opaque as _opaque  # noqa: E402
from mls_xmpp.core.crypto import get_suite  # noqa: E402
from mls_xmpp.core.crypto.batch import SERIAL, BatchCrypto, SealBatch, VerifyBatch  # noqa: E402
from mls_xmpp.core.group.client import Client  # noqa: E402
from mls_xmpp.core.group.config import GroupConfig  # noqa: E402
from mls_xmpp.core.messages.common import LeafNodeSource  # noqa: E402
from mls_xmpp.core.messages.key_package import KeyPackage  # noqa: E402
from mls_xmpp.workers import WorkerPool  # noqa: E402

SUITE_ID = 1
T = TypeVar("T")
#: The target of issue 17: each operation within this factor of its floor.
TARGET = 1.3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: CPU seconds of this process (all its threads) taken by the last call of :func:`timed`.
last_cpu = 0.0


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    global last_cpu
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    last_cpu = time.process_time() - c0
    return out, elapsed


def timed_into(r: dict[str, Any], key: str, fn: Callable[[], T]) -> T:
    """:func:`timed`, its wall time stored as ``r[key]`` and this process's CPU time
    as ``r[key + " cpu"]`` (on one core, the CPU ratio does not depend on the load
    of a shared machine as the wall-clock one does)."""
    out, r[key] = timed(fn)
    r[key + " cpu"] = last_cpu
    return out


def make_key_packages(n: int, config: GroupConfig) -> list[KeyPackage]:
    """``n`` KeyPackages of throw-away clients (their private keys are dropped)."""
    return [Client.generate(b"m%d@example.org" % i, SUITE_ID, config=config).make_key_package()
            for i in range(n)]


class NoAhead:
    """The worker pool without ``start_verify``: mode ``pool-noahead``.

    Each batch is then computed where the serial code looks at its answers, as
    before signatures were handed over ahead (issue 17, round 5): the A/B of
    that overlap alone, in the same process and run by run.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def verify(self, batch: VerifyBatch) -> list[bool]:
        return self.pool.verify(batch)

    def seal(self, batch: SealBatch) -> list[Any]:
        return self.pool.seal(batch)


def one_run(n: int, kps: list[KeyPackage], crypto: BatchCrypto, tree_in: bool) -> dict[str, Any]:
    """One add / join / first update and their floors on a fresh group."""
    suite = get_suite(SUITE_ID)
    config = GroupConfig(ratchet_tree_in_welcome=tree_in, batch_crypto=crypto)
    joiner = Client.generate(b"joiner@example.org", SUITE_ID, config=config)
    members = [joiner.make_key_package()] + kps[1:]
    creator = Client.generate(b"creator@example.org", SUITE_ID, config=config)
    ga = creator.create_group()
    r: dict[str, Any] = {}

    # floors' inputs, built beforehand (encoding is not cryptography)
    kp_items = VerifyBatch(SUITE_ID, tuple(
        (pk, suite.labelled(label) + _opaque(content), sig)
        for kp in members for pk, label, content, sig in (kp.leaf_node.signature_item(),
                                                           kp.signature_item())))
    seal_items = tuple((kp.init_key, os.urandom(66)) for kp in members)  # GroupSecrets ~66 B

    pending = timed_into(r, "add", lambda: ga.commit(add=members))
    welcome_info_len = 0
    welcome = pending.welcomes[members[0].ref(suite)]
    if tree_in:
        welcome_info_len = len(welcome) + 32  # ~ the encrypted GroupInfo, the Welcome's bulk
    ga.merge_pending_commit()

    def add_floor() -> None:
        crypto.verify(kp_items)
        crypto.seal(SealBatch(SUITE_ID, b"\0" * 100, seal_items))
        if tree_in:
            suite.hpke.info_hash(bytes(welcome_info_len))
    timed_into(r, "add floor", add_floor)

    tree = None if tree_in else ga.ratchet_tree()
    gj = timed_into(r, "join", lambda: joiner.join(welcome, ratchet_tree=tree))
    leaf_items = VerifyBatch(SUITE_ID, tuple(
        (pk, suite.labelled(label) + _opaque(content), sig)
        for i, leaf in gj.state.tree.leaves()
        for pk, label, content, sig in (
            leaf.signature_item() if leaf.leaf_node_source == LeafNodeSource.KEY_PACKAGE
            else leaf.signature_item(gj.group_id, i),)))
    # one HPKE open with an info as long as the Welcome's: the joiner's own GroupSecrets
    sk, pk = suite.generate_kem_key_pair()
    info = bytes(welcome_info_len or 100)
    enc, ct = suite.hpke.seal_base(pk, info, b"", os.urandom(66))

    def join_floor() -> None:
        crypto.verify(leaf_items)
        suite.hpke.open_base(enc, sk, info, b"", ct)
    timed_into(r, "join floor", join_floor)

    timed_into(r, "upd1", gj.commit)
    n_ct = sum(len(gj.state.tree.resolution(s))
               for _, s in gj.state.tree.filtered_direct_path(gj.own_leaf_index))
    r["upd1 ciphertexts"] = n_ct
    upd_items = tuple((kp.init_key, os.urandom(32)) for kp in (members * 2)[:n_ct])
    sig_key = suite.generate_signature_key_pair()[0]

    def upd_floor() -> None:
        crypto.seal(SealBatch(SUITE_ID, b"\0" * 120, upd_items))
        suite.signature.sign(sig_key, b"\0" * 200)
    timed_into(r, "upd1 floor", upd_floor)
    for op in ("add", "join", "upd1"):
        r[f"{op} ratio"] = r[op] / r[f"{op} floor"]
        r[f"{op} cpu ratio"] = r[f"{op} cpu"] / r[f"{op} floor cpu"]
    return r


def small_batches(sizes: list[int], runs: int) -> dict[str, Any]:
    """Pool against serial for single batches of ``sizes`` (median seconds per batch)."""
    suite = get_suite(SUITE_ID)
    n = max(sizes)
    items = []
    for _ in range(n):
        sk, pk = suite.generate_signature_key_pair()
        content = os.urandom(200)
        items.append((pk, content, suite.signature.sign(sk, content)))
    keys = [suite.generate_kem_key_pair()[1] for _ in range(n)]
    out: dict[str, Any] = {}
    with WorkerPool(threshold=1) as pool:
        pool.start(wait=5)
        for size in sizes:
            vb = VerifyBatch(SUITE_ID, tuple(items[:size]))
            sb = SealBatch(SUITE_ID, b"\0" * 100, tuple((k, b"\1" * 66) for k in keys[:size]))
            t: dict[str, list[float]] = {"verify serial": [], "verify pool": [],
                                         "seal serial": [], "seal pool": []}
            for _ in range(runs):
                t["verify serial"].append(timed(vb.run)[1])
                t["verify pool"].append(timed(lambda vb=vb: pool.verify(vb))[1])
                t["seal serial"].append(timed(sb.run)[1])
                t["seal pool"].append(timed(lambda sb=sb: pool.seal(sb))[1])
            med = {k: statistics.median(v) for k, v in t.items()}
            out[str(size)] = {"median": med, "runs": t}
            log(f"[batch {size}] verify {med['verify pool'] / med['verify serial']:.2f}x serial, "
                f"seal {med['seal pool'] / med['seal serial']:.2f}x serial")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000")
    p.add_argument("--include-50k", action="store_true")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--modes", default="pool,serial",
                   help="pool, serial, pool-noahead (the pool without start_verify)")
    p.add_argument("--tree", default="in,out",
                   help="in, out, or both (in,out): the tree in the Welcome or out of band")
    p.add_argument("--no-prehash", action="store_true",
                   help="hash a Welcome's info once per recipient (the code of before)")
    p.add_argument("--json", type=Path)
    p.add_argument("--batches", help="sizes of single batches: the pool against serial")
    args = p.parse_args(argv)
    if args.batches:
        t0 = time.perf_counter()
        small = small_batches([int(x) for x in args.batches.split(",") if x], args.runs)
        if args.json:
            args.json.write_text(json.dumps({
                "benchmark": "floor-batches", "cipher_suite": SUITE_ID,
                "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
                "runs": args.runs, "total_seconds": time.perf_counter() - t0,
                "batches": small}, indent=2) + "\n")
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.include_50k and 50000 not in sizes:
        sizes.append(50000)
    modes = [m for m in args.modes.split(",") if m]
    names = ["in", "out"] if args.tree == "both" else [t for t in args.tree.split(",") if t]
    if set(names) - {"in", "out"}:
        p.error(f"--tree: {args.tree!r} (in, out, both)")
    trees = [t == "in" for t in names]
    if args.no_prehash:
        batch_module.PREHASH_INFO_BYTES = 1 << 62
    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    with WorkerPool() as pool:
        ready = pool.start(wait=10)  # their start-up is not part of the first operation
        log(f"{pool.workers} worker process(es) in mode 'pool', {ready} ready")
        for n in sizes:
            log(f"[n={n}] generating {n} KeyPackages")
            kps = make_key_packages(n, GroupConfig())
            cryptos: dict[str, BatchCrypto] = {"pool": pool, "serial": SERIAL,
                                               "pool-noahead": NoAhead(pool)}
            for tree_in in trees:
                keys = {mode: f"{n}/{mode}/tree-{'in' if tree_in else 'out'}" for mode in modes}
                by_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
                for k in range(args.runs):  # the modes alternate, run by run
                    for mode in modes:
                        key, runs = keys[mode], by_mode[mode]
                        r = one_run(n, kps, cryptos[mode], tree_in)
                        runs.append(r)
                        log(f"[{key}] run {k + 1}: " + ", ".join(
                            f"{op} {r[op]:.3f} s / floor {r[op + ' floor']:.3f} s"
                            f" = {r[op + ' ratio']:.2f}x (cpu {r[op + ' cpu ratio']:.2f}x)"
                            for op in ("add", "join", "upd1")))
                for mode in modes:
                    runs = by_mode[mode]
                    med = {f: statistics.median(r[f] for r in runs) for f in runs[0]}
                    results[keys[mode]] = {"n": n, "mode": mode, "tree_in_welcome": tree_in,
                                           "median": med, "runs": runs}
            del kps
    print(f"{'n/mode/tree':<24} " + " ".join(f"{op:>22}" for op in ("add", "join", "upd1")))
    for key, v in results.items():
        m = v["median"]
        print(f"{key:<24} " + " ".join(
            f"{m[op]:8.3f}/{m[op + ' floor']:6.3f} {m[op + ' ratio']:4.2f}x"
            for op in ("add", "join", "upd1")))
    if args.json:
        doc = {
            "benchmark": "floor",
            "cipher_suite": SUITE_ID,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "runs": args.runs,
            "prehash": not args.no_prehash,
            "target_ratio": TARGET,
            "total_seconds": time.perf_counter() - t_all,
            "results": results,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
