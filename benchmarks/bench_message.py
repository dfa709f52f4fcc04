"""CPU per application message in the core: ``Group.encrypt`` and ``Group.process``.

Usage::

    python benchmarks/bench_message.py [--sizes 2,100] [--suites 1] [--messages 2000]
                                       [--payload-bytes 200] [--rounds 5] [--json PATH]
                                       [--profile]

For each cipher suite and group size ``n`` a group is built through the public API
(``Client.create_group``, ``Group.commit(add=...)``, ``Client.join`` with the tree in the
Welcome; only the creator ``A`` at leaf 0 and the joiner ``J`` at leaf 1 are full
clients, the other members exist as KeyPackages). Then, ``--rounds`` times, A encrypts
``--messages`` application messages of ``--payload-bytes`` bytes (200 is about what
the plugin's envelope of a short chat line takes) and J processes them in order; both
are timed one call at a time with ``time.perf_counter_ns``. The figures are the
median per call of each round, and the minimum of those medians over the rounds
(the least disturbed by other load on a shared machine), in microseconds:

* ``encrypt_us``: ``A.encrypt(payload)`` (sign, ratchet key, AEAD, sender data, encode);
* ``process_us``: ``J.process(message)`` (decode, sender data, ratchet key, AEAD,
  signature check, the event);
* ``sign_us`` / ``verify_us``: one ``SignWithLabel`` / ``VerifyWithLabel`` of the suite
  on a message of that size, the floor of both operations.

``--cold`` evicts the CPU caches between calls (it walks ~6 MB of Python objects), as
the rest of a client (slixmpp's XML, the event loop) does between two messages: inside
``bench_xmpp.py`` the same calls took 2-3x their time in this tight loop, and code with
fewer Python calls and objects loses less of it.

``--profile`` runs one extra round under cProfile and prints the top functions.
``--json PATH`` writes every round's medians, the options, the load average.
To compare two checkouts, run it with ``PYTHONPATH`` set to each, interleaved.
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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mls_xmpp.core.crypto import get_suite  # noqa: E402
from mls_xmpp.core.group.client import Client  # noqa: E402
from mls_xmpp.core.group.config import GroupConfig  # noqa: E402
from mls_xmpp.core.group.events import ApplicationMessage  # noqa: E402
from mls_xmpp.core.group.group import Group  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(suite_id: int, n: int) -> tuple[Group, Group]:
    """A and J in an ``n``-member group of ``suite_id`` (A at leaf 0, J at leaf 1)."""
    config = GroupConfig()
    creator = Client.generate(b"creator@example.org", suite_id, config=config)
    joiner = Client.generate(b"joiner@example.org", suite_id, config=config)
    kps = [joiner.make_key_package()]
    for i in range(n - 2):
        kps.append(Client.generate(b"m%d@example.org" % i, suite_id,
                                   config=config).make_key_package())
    ga = creator.create_group()
    pending = ga.commit(add=kps)
    ga.merge_pending_commit()
    assert pending.welcome is not None
    gj = joiner.join(pending.welcome)
    assert gj.own_leaf_index == 1 and gj.epoch_authenticator == ga.epoch_authenticator
    return ga, gj


class Evictor:
    """Walks enough Python objects to push a message's working set out of the caches."""

    def __init__(self, enabled: bool) -> None:
        self.junk = [bytearray(64) for _ in range(60000)] if enabled else []

    def __call__(self) -> None:
        for b in self.junk[::3]:
            b[0] ^= 1


def one_round(ga: Group, gj: Group, payload: bytes, count: int,
              evict: Evictor) -> tuple[float, float]:
    """Median microseconds of ``count`` encrypts, then of their ``count`` processes."""
    enc: list[int] = []
    dec: list[int] = []
    msgs: list[bytes] = []
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for _ in range(count):
            evict()
            t0 = clock()
            m = ga.encrypt(payload)
            enc.append(clock() - t0)
            msgs.append(m)
        for m in msgs:
            evict()
            t0 = clock()
            ev = gj.process(m)
            dec.append(clock() - t0)
            if not isinstance(ev, ApplicationMessage) or ev.data != payload:
                raise AssertionError("wrong event")
    finally:
        gc.enable()
    return statistics.median(enc) / 1000, statistics.median(dec) / 1000


def floor_round(suite_id: int, payload: bytes, count: int) -> tuple[float, float]:
    """Median microseconds of one sign and one verify of a message of that size."""
    suite = get_suite(suite_id)
    priv, pub = suite.generate_signature_key_pair()
    content = payload + bytes(100)  # about the FramedContentTBS around the payload
    sig = suite.sign_with_label(priv, "FramedContentTBS", content)
    s: list[int] = []
    v: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        suite.sign_with_label(priv, "FramedContentTBS", content)
        s.append(clock() - t0)
        t0 = clock()
        suite.verify_with_label(pub, "FramedContentTBS", content, sig)
        v.append(clock() - t0)
    return statistics.median(s) / 1000, statistics.median(v) / 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2,100", help="group sizes (default 2,100)")
    p.add_argument("--suites", default="1", help="cipher suites (default 1)")
    p.add_argument("--messages", type=int, default=2000, help="messages per round (default 2000)")
    p.add_argument("--payload-bytes", type=int, default=200, help="payload size (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the minimum counts (default 5)")
    p.add_argument("--cold", action="store_true",
                   help="evict the CPU caches before every call (see above)")
    p.add_argument("--json", type=Path, help="write the results as JSON to this file")
    p.add_argument("--profile", action="store_true", help="one more round under cProfile")
    p.add_argument("--profile-top", type=int, default=30, help="functions listed")
    args = p.parse_args(argv)
    payload = os.urandom(args.payload_bytes)
    evict = Evictor(args.cold)
    load_at_start = os.getloadavg()
    results: list[dict[str, Any]] = []
    for suite_id in [int(s) for s in args.suites.split(",") if s]:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            if n < 2:
                p.error("sizes must be >= 2")
            ga, gj = build(suite_id, n)
            rounds = []
            for _ in range(args.rounds):
                e, d = one_round(ga, gj, payload, args.messages, evict)
                s, v = floor_round(suite_id, payload, max(args.messages // 10, 50))
                rounds.append({"encrypt_us": e, "process_us": d, "sign_us": s, "verify_us": v})
            best = {k: min(r[k] for r in rounds) for k in rounds[0]}
            log(f"suite {suite_id} n={n}: encrypt {best['encrypt_us']:.1f} us, "
                f"process {best['process_us']:.1f} us (sign {best['sign_us']:.1f}, "
                f"verify {best['verify_us']:.1f})  load {os.getloadavg()[0]:.2f}")
            results.append({"suite": suite_id, "n": n, **best, "rounds": rounds})
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                one_round(ga, gj, payload, args.messages, evict)
                prof.disable()
                out = io.StringIO()
                st = pstats.Stats(prof, stream=out)
                st.sort_stats("tottime").print_stats(args.profile_top)
                st.sort_stats("cumulative").print_stats(args.profile_top)
                log(out.getvalue())
    print(f"{'suite':>5} {'n':>5} {'encrypt us':>11} {'process us':>11} {'sign us':>8} "
          f"{'verify us':>9}")
    for r in results:
        print(f"{r['suite']:>5} {r['n']:>5} {r['encrypt_us']:>11.1f} {r['process_us']:>11.1f} "
              f"{r['sign_us']:>8.1f} {r['verify_us']:>9.1f}")
    if args.json:
        doc = {"benchmark": "bench_message", "options": vars(args) | {"json": str(args.json)},
               "loadavg_at_start": load_at_start,
               "python": platform.python_version(), "machine": platform.machine(),
               "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
               "results": results}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
