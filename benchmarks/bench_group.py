"""Group-level benchmark (cipher suite 1): bulk add, join, updates, application messages.

Usage::

    python benchmarks/bench_group.py [--sizes 10,100,1000,5000] [--include-50k]
                                     [--reps 3] [--messages 200] [--json PATH]
                                     [--profile STEPS] [--profile-dir DIR]

For each size ``n`` the benchmark drives real :class:`~mls_xmpp.core.group.group.Group`
objects through the public API (``Client``, ``Group.commit``, ``Group.process``,
``Client.join``, ``Group.encrypt``), with ``GroupConfig(ratchet_tree_in_welcome=False)``
everywhere so the Welcome carries no tree and the joiner takes it out of band.
Only three members are full clients (the creator ``A`` at leaf 0, the joiner
``J`` at leaf 1 and ``K`` at the last leaf); the other ``n - 2`` new members exist
only as KeyPackages (their private keys are dropped right after generation).

Steps and figures (see ``benchmarks/README.md`` for the full description):

1. ``gen``: generate the ``n`` clients and KeyPackages (setup, reported apart);
   ``add``: ``A.commit(add=n KeyPackages)`` (the group then has ``n + 1`` members).
2. ``join``: ``J`` joins from its own Welcome (``pending.welcomes[kp_ref]``) with
   the tree out of band (encoded beforehand, ``tree enc``).
3. ``upd1``: the first update after the bulk add: ``J.commit()`` (an empty
   Commit with a path) and ``A.process()`` of it.
4. ``upd2``: the following updates on the same group (``K``, ``A``, ``J`` ... in
   turn; ``--reps`` of them, medians). The tree is still sparse after one
   update (no member but the committers ever filled a parent node), so each of
   these still encrypts to ~n resolution members.
   ``steady``: a steady-state update on a *full* tree, the state a long-lived
   group reaches once every member has committed (every parent node set,
   resolutions of size one). Replaying n commits to get there is infeasible,
   so the tree is built directly (``benchmarks/_fulltree.py``, shared with
   ``bench_tree.py``: real Ed25519 leaves, valid parent hashes,
   real X25519 keys on the paths of three members; checked with
   ``validate_tree`` for n <= 1000) and three Group objects are made on it
   from an EpochState; then ``--reps`` updates in turn, medians.
5. ``msg``: ``A.encrypt(1 KiB)`` and ``J.process()`` of it, medians over
   ``--messages``.

``--profile add,join,upd1,upd2,steady,msg`` runs those steps under cProfile
(their timings are then inflated by the profiler) for every size, prints the
top functions to stderr and, with ``--profile-dir``, writes ``.prof`` files.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._fulltree import FullTree  # noqa: E402
from mls_xmpp.core.crypto import get_suite  # noqa: E402
from mls_xmpp.core.group.client import Client  # noqa: E402
from mls_xmpp.core.group.config import GroupConfig  # noqa: E402
from mls_xmpp.core.group.epoch import no_psks  # noqa: E402
from mls_xmpp.core.group.events import ApplicationMessage  # noqa: E402
from mls_xmpp.core.group.group import Group  # noqa: E402
from mls_xmpp.core.group.state import EpochState  # noqa: E402
from mls_xmpp.core.messages.group_info import GroupContext  # noqa: E402
from mls_xmpp.core.messages.key_package import KeyPackage  # noqa: E402
from mls_xmpp.core.messages.leaf_node import Capabilities  # noqa: E402
from mls_xmpp.core.schedule.key_schedule import epoch_secrets_from_epoch_secret  # noqa: E402
from mls_xmpp.core.schedule.transcript import interim_transcript_hash  # noqa: E402
from mls_xmpp.core.tree.secret_tree import SecretTree  # noqa: E402
from mls_xmpp.core.tree.treekem import TreePrivateKeys  # noqa: E402
from mls_xmpp.core.tree.validation import validate_tree  # noqa: E402
from mls_xmpp.workers import WorkerPool  # noqa: E402

SUITE_ID = 1
#: Every group's config; ``main`` attaches its worker pool (``--workers``).
CONFIG = GroupConfig(ratchet_tree_in_welcome=False)
MESSAGE = b"x" * 1024
#: Capabilities of the leaves of the synthetic full tree (those of a Client's leaf).
FULL_TREE_CAPABILITIES = Capabilities(versions=(1,), cipher_suites=(SUITE_ID,),
                                      extensions=(0x000A,), proposals=(), credentials=(1, 2))
T = TypeVar("T")

#: Targets of the issue, for this 2-core machine: (size, metric, limit in seconds).
TARGETS: list[tuple[int, str, float]] = [
    (5000, "add", 1.5),
    (5000, "join", 0.6),
    (5000, "upd1 create", 0.35),
    (5000, "upd1 process", 0.05),
    (50000, "steady create", 0.030),
    (50000, "steady process", 0.020),
    (0, "msg enc", 0.00025),  # 0: every size
    (0, "msg dec", 0.00025),
    (0, "msg enc+dec", 0.00025),  # the strict reading: both together
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """Progress lines on stderr for a long loop (about every 10 %, at most every 5 s)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.t0 = self.last = time.perf_counter()
        self.step = max(total // 10, 1)

    def tick(self, done: int) -> None:
        now = time.perf_counter()
        if self.total >= 1000 and (done % self.step == 0 or now - self.last > 5) \
                and done < self.total:
            self.last = now
            rate = done / (now - self.t0)
            eta = (self.total - done) / rate if rate else 0.0
            log(f"  {self.label}: {done}/{self.total} ({now - self.t0:.1f} s, ~{eta:.0f} s left)")


class Runner:
    """Times steps; optionally profiles the ones named in ``profile``."""

    def __init__(self, profile: set[str], profile_dir: Path | None, top: int) -> None:
        self.profile, self.profile_dir, self.top = profile, profile_dir, top

    def timed(self, step: str, n: int, fn: Callable[[], T], *,
              collect: bool = True) -> tuple[T, float]:
        """Run ``fn`` once and time it.

        ``collect`` runs a full garbage collection first: right for long steps,
        wrong for sub-millisecond ones (a full collection walks the whole heap
        and leaves the CPU caches cold, which triples the time of a message).
        """
        if collect:
            gc.collect()
        if step not in self.profile:
            t0 = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - t0
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        out = fn()
        prof.disable()
        dt = time.perf_counter() - t0
        self.profile.discard(step)  # one profile per step and size
        self._report(prof, f"{step}-n{n}", dt)
        return out, dt

    def _report(self, prof: cProfile.Profile, name: str, dt: float) -> None:
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            prof.dump_stats(str(self.profile_dir / f"{name}.prof"))
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(self.top)
            log(f"==== profile {name} ({dt:.3f} s under cProfile), by {key} ====")
            log("\n".join(line for line in buf.getvalue().splitlines()[4:] if line.strip()))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def path_ciphertexts(group: Group) -> int:
    """HPKE ciphertexts an UpdatePath from ``group``'s member would carry now (§7.6)."""
    tree = group.state.tree
    return sum(len(tree.resolution(s)) for _, s in tree.filtered_direct_path(group.own_leaf_index))


# -- members --------------------------------------------------------------------------


def make_members(n: int, keep: set[int]) -> tuple[list[KeyPackage], dict[int, Client]]:
    """``n`` fresh clients with one KeyPackage each; only those in ``keep`` are kept."""
    kps: list[KeyPackage] = []
    kept: dict[int, Client] = {}
    prog = Progress("KeyPackages", n)
    for i in range(n):
        c = Client.generate(b"member-%d@example.org" % i, SUITE_ID, config=CONFIG)
        kps.append(c.make_key_package())
        if i in keep:
            kept[i] = c
        prog.tick(i + 1)
    return kps, kept


# -- a full tree (steady state) ---------------------------------------------------------


def full_tree_groups(n: int, holders: list[int], check: bool) -> list[Group]:
    """Groups of the ``holders`` in one epoch of an ``n``-member group with a full tree."""
    suite = get_suite(SUITE_ID)
    group_id = os.urandom(16)
    builder = FullTree(suite, n, group_id, capabilities=FULL_TREE_CAPABILITIES,
                       key_holders=holders, signers=holders,
                       on_leaf=Progress("full tree leaves", n).tick)
    root_hash = builder.build()
    tree = builder.ratchet_tree()
    assert tree.tree_hash() == root_hash
    if check:
        validate_tree(tree, group_id, root_hash)
    confirmed = os.urandom(suite.hash_len)
    ctx = GroupContext(1, SUITE_ID, group_id, 1, root_hash, confirmed, ())
    epoch_secret = os.urandom(suite.hash_len)
    groups = []
    for h in holders:
        secrets = epoch_secrets_from_epoch_secret(suite, epoch_secret)
        tag = suite.mac(secrets.confirmation_key, confirmed)
        keys = TreePrivateKeys(h, builder.path_keys(h))
        keys.check(tree)
        state = EpochState(
            suite=suite, context=ctx, tree=tree.copy(), keys=keys, own_leaf=h,
            signature_private_key=builder.sig_private[h], secrets=secrets,
            secret_tree=SecretTree(suite, secrets.encryption_secret, tree.n_leaves,
                                   max_generation_gap=CONFIG.max_generation_gap,
                                   out_of_order_window=CONFIG.out_of_order_window),
            interim_transcript_hash=interim_transcript_hash(suite, confirmed, tag),
            confirmation_tag=tag, resumption_psks={1: secrets.resumption_psk})
        groups.append(Group(state, CONFIG, no_psks))
    return groups


# -- the benchmark ------------------------------------------------------------------------


def update_round(run: Runner, step: str, n: int, groups: list[Group], committer: int,
                 timed_receiver: int, out: dict[str, list[float]], *,
                 collect: bool = True) -> None:
    """``groups[committer]`` commits an update; every other group processes it."""
    c = groups[committer]
    out["ct"].append(path_ciphertexts(c))
    pending, dt = run.timed(step, n, c.commit, collect=collect)
    out["create"].append(dt)
    epoch = pending.new_state.epoch
    for j, g in enumerate(groups):
        if j == committer:
            continue
        if j == timed_receiver:
            _, dt = run.timed(step + " process", n, partial(g.process, pending.message),
                              collect=collect)
            out["process"].append(dt)
        else:
            g.process(pending.message)
    c.merge_pending_commit()
    auth = {g.epoch_authenticator for g in groups}
    assert all(g.epoch == epoch for g in groups) and len(auth) == 1, "members disagree"


def bench_real_group(n: int, args: argparse.Namespace, run: Runner, r: dict[str, Any]) -> None:
    """Steps 1-3, 4a and 5 on a group built through the public API."""
    suite = get_suite(SUITE_ID)

    # (1) members, then the bulk add ------------------------------------------------------
    log(f"[n={n}] generating {n} clients and KeyPackages")
    t0 = time.perf_counter()
    j_idx, k_idx = 0, n - 1
    kps, kept = make_members(n, {j_idx, k_idx})
    r["gen"] = time.perf_counter() - t0

    creator = Client.generate(b"creator@example.org", SUITE_ID, config=CONFIG)
    ga = creator.create_group()
    log(f"[n={n}] A.commit(add={n} KeyPackages)")
    pending, r["add"] = run.timed("add", n, partial(ga.commit, add=kps))
    r["add msg KiB"] = len(pending.message) / 1024
    assert pending.welcome is not None
    r["welcome KiB"] = len(pending.welcome) / 1024
    _, r["add merge"] = run.timed("add merge", n, ga.merge_pending_commit)

    # (2) join with the tree out of band ----------------------------------------------------
    tree_bytes, r["tree enc"] = run.timed("tree enc", n, ga.ratchet_tree)
    r["tree KiB"] = len(tree_bytes) / 1024
    per_recipient = pending.welcomes  # may be built lazily from pending.welcome: fetch once
    welcomes = {i: per_recipient[kps[i].ref(suite)] for i in (j_idx, k_idx)}
    del per_recipient
    del pending, kps  # the other n - 2 Welcomes and KeyPackages are not needed any more
    log(f"[n={n}] J joins")
    gj, r["join"] = run.timed("join", n, partial(kept[j_idx].join, welcomes[j_idx],
                                                 ratchet_tree=tree_bytes))
    groups = [ga, gj]
    if k_idx != j_idx:
        gk, r["join 2nd"] = run.timed("join 2nd", n, partial(kept[k_idx].join, welcomes[k_idx],
                                                             ratchet_tree=tree_bytes))
        groups.append(gk)
    assert len({g.epoch_authenticator for g in groups}) == 1
    assert gj.own_leaf_index == 1

    # (3) the first update after the bulk add: J creates, A processes -------------------------
    log(f"[n={n}] first update (J commits, A processes)")
    first: dict[str, list[float]] = {"create": [], "process": [], "ct": []}
    update_round(run, "upd1", n, groups, 1, 0, first)
    r["upd1 create"], r["upd1 process"] = first["create"][0], first["process"][0]
    r["upd1 ct"] = first["ct"][0]

    # (4a) the next updates on the same (still sparse) tree ----------------------------------
    order = [2, 0, 1] if len(groups) == 3 else [0, 1]
    nxt: dict[str, list[float]] = {"create": [], "process": [], "ct": []}
    for i in range(args.reps):
        c = order[i % len(order)]
        receiver = order[(i + 1) % len(order)]
        log(f"[n={n}] update {i + 2} (leaf {groups[c].own_leaf_index} commits)")
        update_round(run, "upd2", n, groups, c, receiver, nxt)
    r["upd2 create"], r["upd2 process"] = median(nxt["create"]), median(nxt["process"])
    r["upd2 ct"] = median(nxt["ct"])

    # (5) application messages -------------------------------------------------------------
    log(f"[n={n}] {args.messages} application messages of 1 KiB")
    enc_t, dec_t = [], []
    gc.collect()
    for i in range(args.messages):
        last = i == args.messages - 1  # profile only the last message
        ct, dt = run.timed("msg" if last else "msg*", n, partial(ga.encrypt, MESSAGE),
                           collect=False)
        enc_t.append(dt)
        ev, dt = run.timed("msg process" if last else "msg*", n, partial(gj.process, ct),
                           collect=False)
        dec_t.append(dt)
        assert isinstance(ev, ApplicationMessage) and ev.data == MESSAGE
    r["msg enc"], r["msg dec"] = median(enc_t), median(dec_t)
    r["msg enc+dec"] = median([a + b for a, b in zip(enc_t, dec_t, strict=True)])


def bench_full_tree(n: int, args: argparse.Namespace, run: Runner, r: dict[str, Any]) -> None:
    """Step 4b: steady-state updates on a full tree."""
    holders = sorted({0, n // 2, n - 1})
    log(f"[n={n}] building a full tree of {n} members (holders {holders})")
    t0 = time.perf_counter()
    fgroups = full_tree_groups(n, holders, check=n <= 1000)
    r["steady setup"] = time.perf_counter() - t0
    steady: dict[str, list[float]] = {"create": [], "process": [], "ct": []}
    # one warm-up round, not counted (first-use caches, first epoch change)
    update_round(run, "steady*", n, fgroups, 0, 1, {"create": [], "process": [], "ct": []},
                 collect=False)
    gc.collect()
    for i in range(max(args.reps, 3)):
        c = i % len(fgroups)
        update_round(run, "steady", n, fgroups, c, (c + 1) % len(fgroups), steady,
                     collect=False)
    r["steady create"] = median(steady["create"])
    r["steady process"] = median(steady["process"])
    r["steady ct"] = median(steady["ct"])


def bench(n: int, args: argparse.Namespace, run: Runner) -> dict[str, Any]:
    r: dict[str, Any] = {"n": n, "members": n + 1}
    bench_real_group(n, args, run, r)
    gc.collect()
    if n >= 3:
        bench_full_tree(n, args, run, r)
        gc.collect()
    r["peak RSS MiB"] = peak_rss_mib()
    return r


ROWS: list[tuple[str, str, str]] = [
    # key, label, unit ("s", "ms", "" = plain number)
    ("gen", "gen n KeyPackages", "s"),
    ("add", "add: commit(add=n)", "s"),
    ("add merge", "add: merge", "ms"),
    ("add msg KiB", "  commit message KiB", ""),
    ("welcome KiB", "  Welcome (all) KiB", ""),
    ("tree enc", "tree encode", "ms"),
    ("tree KiB", "  tree KiB", ""),
    ("join", "join (Welcome+tree)", "s"),
    ("join 2nd", "  join, 2nd joiner", "s"),
    ("upd1 create", "upd1 create", "s"),
    ("upd1 process", "upd1 process", "ms"),
    ("upd1 ct", "  upd1 ciphertexts", ""),
    ("upd2 create", "upd2+ create (median)", "s"),
    ("upd2 process", "upd2+ process (median)", "ms"),
    ("upd2 ct", "  upd2+ ciphertexts", ""),
    ("steady setup", "full tree setup", "s"),
    ("steady create", "steady create (full)", "ms"),
    ("steady process", "steady process (full)", "ms"),
    ("steady ct", "  steady ciphertexts", ""),
    ("msg enc", "1 KiB encrypt", "ms"),
    ("msg dec", "1 KiB decrypt", "ms"),
    ("msg enc+dec", "1 KiB enc+dec", "ms"),
    ("peak RSS MiB", "peak RSS MiB", ""),
]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1e3:.3f}" if value < 0.01 else f"{value * 1e3:.1f}"
    if unit == "s":
        return f"{value:.4f}" if value < 1 else f"{value:.2f}"
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


TIMINGS = {key for key, _, unit in ROWS if unit in ("s", "ms")}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from repeated runs: the minimum of every timing, the rest from run 1.

    On a shared machine the minimum is the figure least disturbed by other load.
    """
    out = dict(runs[0])
    for key in TIMINGS:
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = min(values)
    out["peak RSS MiB"] = max(r["peak RSS MiB"] for r in runs)
    out["wall"] = sum(r["wall"] for r in runs)
    return out


def print_table(results: dict[int, dict[str, Any]]) -> None:
    sizes = list(results)
    print(f"{'cipher suite 1':<26}" + "".join(f"{f'n={n}':>12}" for n in sizes))
    for key, label, unit in ROWS:
        if not any(key in results[n] for n in sizes):
            continue
        name = f"{label} ({unit})" if unit else label
        print(f"{name:<26}" + "".join(f"{fmt(results[n].get(key), unit):>12}" for n in sizes))


def check_targets(results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for size, key, limit in TARGETS:
        for n in ([size] if size else list(results)):
            if n not in results or key not in results[n]:
                continue
            v = results[n][key]
            out.append({"n": n, "metric": key, "value": v, "limit": limit, "met": v <= limit})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000,5000",
                   help="comma-separated numbers of added members (default 10,100,1000,5000)")
    p.add_argument("--include-50k", action="store_true", help="also run n = 50000")
    p.add_argument("--reps", type=int, default=3,
                   help="updates measured after the first one, per kind (default 3)")
    p.add_argument("--messages", type=int, default=200,
                   help="1 KiB application messages (default 200)")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat everything per size; timings are the minimum over the runs "
                        "(default 1)")
    p.add_argument("--json", type=Path, help="write the results as JSON to this file")
    p.add_argument("--profile", default="",
                   help="steps to run under cProfile: add,join,upd1,upd2,steady,msg "
                        "(and 'upd1 process', 'upd2 process', 'steady process', 'msg process')")
    p.add_argument("--profile-dir", type=Path, help="write .prof files here")
    p.add_argument("--profile-top", type=int, default=25, help="functions listed per profile")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for large batches (default: $MLS_XMPP_WORKERS, "
                        "else cores - 1; 0: all serial)")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0")
    global CONFIG
    with WorkerPool(args.workers) as pool:
        CONFIG = pool.attach(GroupConfig(ratchet_tree_in_welcome=False))
        log(f"{pool.workers} worker process(es) for batches of >= {pool.threshold} operations")
        return _main(p, args, pool)


def _main(p: argparse.ArgumentParser, args: argparse.Namespace, pool: WorkerPool) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.include_50k and 50000 not in sizes:
        sizes.append(50000)
    wanted = {s.strip() for s in args.profile.split(",") if s.strip()}

    results: dict[int, dict[str, Any]] = {}
    all_runs: dict[int, list[dict[str, Any]]] = {}
    t_all = time.perf_counter()
    for n in sizes:
        if n < 1:
            p.error("sizes must be >= 1")
        all_runs[n] = []
        for k in range(args.runs):
            # profile in the first run only
            run = Runner(set(wanted) if k == 0 else set(), args.profile_dir, args.profile_top)
            t0 = time.perf_counter()
            one = bench(n, args, run)
            one["wall"] = time.perf_counter() - t0
            log(f"[n={n}] run {k + 1}/{args.runs} done in {one['wall']:.1f} s")
            all_runs[n].append(one)
        results[n] = combine(all_runs[n])
        if len(sizes) > 1:
            print_table({n: results[n]})
            sys.stdout.flush()
    print()
    print_table(results)
    targets = check_targets(results)
    if targets:
        print("\ntargets:")
        for t in targets:
            unit = "ms" if t["limit"] < 0.1 else "s"
            print(f"  n={t['n']:<6} {t['metric']:<15} {fmt(t['value'], unit):>9} {unit} "
                  f"<= {fmt(t['limit'], unit)} {unit}: {'met' if t['met'] else 'MISSED'}")
    if args.json:
        doc = {
            "cipher_suite": SUITE_ID,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "profiled_steps": sorted(wanted),
            "total_seconds": time.perf_counter() - t_all,
            "runs": args.runs,
            "workers": pool.workers,
            "results": {str(n): v for n, v in results.items()},
            "all_runs": {str(n): v for n, v in all_runs.items()},
            "targets": targets,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
