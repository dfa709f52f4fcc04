"""Time to heal a fork: detect the gap, rejoin by external Commit, the others process it.

Core only (no XMPP): a group of N members is built with real KeyPackages; the
victim joins from its Welcome. The creator then commits with the victim's path
secret corrupted, so that only the victim cannot process the Commit (the fork
of issue 13, fault 4). Timed, with the code the plugin runs:

* ``detect``: :meth:`mls_xmpp.xmpp.healing.Healer.verify` of the creator's
  GroupInfo for the new epoch (decode, tree, signer known, signature and tree
  validation, own leaf found) -- the proof that starts a resync;
* ``rejoin``: ``Client.join_external`` with ``resync_leaf`` (what
  :meth:`GroupSession.resync` calls);
* ``process``: another member processing that external Commit.

The archive re-read and the room round trips come on top; the integration
test ``test_commit_one_member_cannot_decrypt_is_healed_by_external_commit``
reports them for a three-member group over a real Prosody (see
docs/PERFORMANCE.md). Run: ``python benchmarks/bench_heal.py [--sizes 100 1000]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mls_xmpp.core.crypto.suite import CipherSuite  # noqa: E402
from mls_xmpp.core.errors import MLSError  # noqa: E402
from mls_xmpp.core.group.client import Client  # noqa: E402
from mls_xmpp.core.messages.framing import MLSMessage  # noqa: E402
from mls_xmpp.xmpp.healing import Healer  # noqa: E402


def _forked(n: int) -> tuple[Any, Any, Any, Any, bytes]:
    """A group of ``n``: (creator, victim client, victim's group, another member's
    group, the Commit only the victim cannot process)."""
    creator = Client.generate(b"m0@example.org")
    clients = [Client.generate(f"m{i}@example.org".encode()) for i in range(1, n)]
    group = creator.create_group(b"bench-heal-group")
    pending = group.commit(add=[c.make_key_package() for c in clients])
    group.merge_pending_commit()
    tree = group.ratchet_tree()
    victim, other = clients[0], clients[-1]
    welcomes = list(pending.welcomes.values())
    suite = group.state.suite
    refs = {kp.ref(suite): kp for _, kp in pending.added}
    by_key = {kp.leaf_node.signature_key: ref for ref, kp in refs.items()}
    vg = victim.join(pending.welcomes[by_key[victim.signature_public_key]], ratchet_tree=tree)
    og = other.join(pending.welcomes[by_key[other.signature_public_key]], ratchet_tree=tree)
    del welcomes
    # the creator's next Commit: the victim's path secret is corrupted
    leaf = vg.own_leaf_index
    keys = {n.encryption_key for i in (2 * leaf, 2 * leaf + 1)
            if (n := group.state.tree.node(i)) is not None}
    original = CipherSuite.encrypt_with_label_many

    def corrupting(self: CipherSuite, label: Any, context: bytes, items: Any,
                   crypto: Any = None) -> list[tuple[bytes, bytes]]:
        out = original(self, label, context, items, crypto)
        return [(k, c[:-1] + bytes([c[-1] ^ 1])) if pk in keys else (k, c)
                for (pk, _), (k, c) in zip(items, out, strict=True)]

    CipherSuite.encrypt_with_label_many = corrupting  # type: ignore[method-assign]
    try:
        commit = group.commit()
    finally:
        CipherSuite.encrypt_with_label_many = original  # type: ignore[method-assign]
    group.merge_pending_commit()
    og.process(commit.message)
    try:
        vg.process(commit.message)
        raise AssertionError("the victim processed the corrupted Commit")
    except MLSError:
        pass  # the fork
    return group, victim, vg, og, commit.message


def run(n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    group, victim, vg, og, _ = _forked(n)
    setup = time.perf_counter() - t0
    info = group.group_info(with_tree=True)
    session: Any = SimpleNamespace(group=vg, group_id=vg.group_id, epoch=vg.epoch)
    healer = Healer(session)
    t = time.perf_counter()
    proof = healer.verify(info, None, "stanza")
    detect = time.perf_counter() - t
    assert proof is not None and proof.epoch == group.epoch
    t = time.perf_counter()
    joined, external = victim.join_external(MLSMessage(proof.info).encode(),
                                            resync_leaf=proof.own_leaf)
    rejoin = time.perf_counter() - t
    t = time.perf_counter()
    og.process(external)
    process = time.perf_counter() - t
    group.process(external)
    assert joined.epoch_authenticator == og.epoch_authenticator == group.epoch_authenticator
    return {"members": n, "setup_s": round(setup, 2), "detect_s": round(detect, 3),
            "rejoin_s": round(rejoin, 3), "process_s": round(process, 3),
            "heal_s": round(detect + rejoin + process, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [run(n) for n in args.sizes]
    for r in rows:
        print(f"{r['members']:>6} members: detect {r['detect_s']:.3f} s, rejoin "
              f"{r['rejoin_s']:.3f} s, others process {r['process_s']:.3f} s, heal "
              f"{r['heal_s']:.3f} s (setup {r['setup_s']:.1f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": platform.platform(),
                                         "python": platform.python_version(),
                                         "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
