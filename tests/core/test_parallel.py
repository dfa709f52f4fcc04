"""The worker-process path for large batches (:mod:`mls_xmpp.core.crypto.parallel`).

The pool is forced on with a low threshold and its workers are waited for, so
the batches here really are shared with a worker; every result is compared
with the serial path, and errors must be the serial ones, naming the same
KeyPackage or leaf, with nothing changed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import replace

import pytest

from mls_xmpp.core.crypto import get_suite, parallel
from mls_xmpp.core.errors import CryptoError, InvalidSignatureError, LocalUsageError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.messages.common import LeafNodeSource
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.key_package import KeyPackage
from mls_xmpp.core.messages.leaf_node import Capabilities, LeafNode, Lifetime
from mls_xmpp.core.tree.ratchet_tree import RatchetTree
from mls_xmpp.core.tree.validation import validate_tree, verify_leaf_signatures

from .test_group_rules import snapshot

SUITE = get_suite(1)
CONFIG = GroupConfig(ratchet_tree_in_welcome=False)


@pytest.fixture
def pool() -> Iterator[None]:
    """One worker, ready, used from 8 operations on; back to the defaults afterwards."""
    parallel.set_workers(1)
    parallel.set_threshold(8)
    assert parallel.start(wait=60) == 1
    yield
    parallel.set_threshold(parallel.DEFAULT_THRESHOLD)
    parallel.set_workers(None)


@pytest.fixture(scope="module")
def key_packages() -> list[KeyPackage]:
    """1,000 KeyPackages of distinct clients."""
    return [Client.generate(b"m%d@example.org" % i, config=CONFIG).make_key_package()
            for i in range(1000)]


def _worker_items() -> int:
    return parallel.stats()["worker_items"]


def _signed_items(n: int, forged: set[int]) -> list[tuple[bytes, bytes, bytes]]:
    r = random.Random(n)
    items = []
    for i in range(n):
        priv, pub = SUITE.generate_signature_key_pair(r.randbytes)
        msg = r.randbytes(100)
        sig = SUITE.signature.sign(priv, msg)
        if i in forged:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        items.append((pub, msg, sig))
    return items


def _forge(kp: KeyPackage, where: str) -> KeyPackage:
    if where == "leaf":
        leaf = kp.leaf_node
        return replace(kp, leaf_node=replace(leaf, signature=bytes(len(leaf.signature))))
    return replace(kp, signature=bytes(len(kp.signature)))


# -- the batch functions ------------------------------------------------------------------


def test_verify_many_matches_serial(pool: None) -> None:
    forged = {0, 7, 250, 598, 599}
    items = _signed_items(600, forged)
    before = _worker_items()
    got = parallel.verify_many(SUITE.signature.name, items)
    assert _worker_items() > before, "the worker took no part"
    assert got == parallel.verify_many(SUITE.signature.name, items, parallel=False)
    assert [i for i, ok in enumerate(got) if not ok] == sorted(forged)


def test_seal_many_ciphertexts_open(pool: None) -> None:
    keys = [SUITE.generate_kem_key_pair() for _ in range(400)]
    items = [(pub, b"secret %d" % i) for i, (_, pub) in enumerate(keys)]
    before = _worker_items()
    sealed = SUITE.encrypt_with_label_many("UpdatePathNode", b"context", items)
    assert _worker_items() > before
    for (priv, _), (kem_output, ct), (_, plaintext) in zip(keys, sealed, items, strict=True):
        assert SUITE.decrypt_with_label(priv, "UpdatePathNode", b"context", kem_output,
                                        ct) == plaintext


def test_seal_many_raises_the_serial_error(pool: None) -> None:
    keys = [SUITE.generate_kem_key_pair()[1] for _ in range(300)]
    keys[290] = bytes(32)  # a small-order X25519 point: the DH output is zero
    items = [(pk, b"x") for pk in keys]
    with pytest.raises(CryptoError) as serial:
        SUITE.encrypt_with_label(keys[290], "Welcome", b"", b"x")
    with pytest.raises(CryptoError) as batched:
        SUITE.encrypt_with_label_many("Welcome", b"", items)
    assert type(batched.value) is type(serial.value)
    assert str(batched.value) == str(serial.value)


# -- where the group layer uses them --------------------------------------------------------


@pytest.mark.parametrize(("index", "where"), [(3, "leaf"), (537, "kp"), (998, "leaf")])
def test_forged_key_package_in_a_batch_of_1000(pool: None, key_packages: list[KeyPackage],
                                               index: int, where: str) -> None:
    kps = list(key_packages)
    kps[index] = _forge(kps[index], where)
    group = Client.generate(b"creator@example.org", config=CONFIG).create_group()
    before = snapshot(group)
    items = _worker_items()
    with pytest.raises(InvalidSignatureError, match=f"KeyPackage of Add {index} ") as par:
        group.commit(add=kps)
    assert _worker_items() > items, "the worker took no part"
    assert snapshot(group) == before, "a refused Commit changed the group"
    parallel.set_workers(0)
    with pytest.raises(InvalidSignatureError) as serial:
        group.commit(add=kps)
    assert str(par.value) == str(serial.value)
    assert snapshot(group) == before


def _key_package_leaves(n: int) -> list[LeafNode]:
    out = []
    r = random.Random(n)
    for i in range(n):
        sig_priv, sig_pub = SUITE.generate_signature_key_pair(r.randbytes)
        leaf = LeafNode(SUITE.generate_kem_key_pair(r.randbytes)[1], sig_pub,
                        Credential.basic(b"leaf%d" % i),
                        Capabilities(cipher_suites=(SUITE.id,), credentials=(1,)),
                        LeafNodeSource.KEY_PACKAGE, Lifetime(0, 2**64 - 1))
        out.append(leaf.signed(SUITE, sig_priv))
    return out


@pytest.mark.parametrize("forged", [5, 299])
def test_tree_with_a_forged_leaf(pool: None, forged: int) -> None:
    leaves = _key_package_leaves(300)
    leaves[forged] = replace(leaves[forged], signature=bytes(64))
    tree = RatchetTree.create(SUITE, leaves[0])
    for leaf in leaves[1:]:
        tree.add_leaf(leaf)
    items = _worker_items()
    with pytest.raises(InvalidSignatureError, match=f"leaf {forged} ") as par:
        validate_tree(tree, b"group")
    assert _worker_items() > items
    parallel.set_workers(0)
    with pytest.raises(InvalidSignatureError) as serial:
        verify_leaf_signatures(tree, b"group")
    assert str(par.value) == str(serial.value)


def test_bulk_add_join_and_update_with_the_pool(pool: None,
                                                key_packages: list[KeyPackage]) -> None:
    creator = Client.generate(b"creator@example.org", config=CONFIG)
    joiner = Client.generate(b"joiner@example.org", config=CONFIG)
    kps = [joiner.make_key_package(), *key_packages[:300]]
    ga = creator.create_group()
    items = _worker_items()
    pending = ga.commit(add=kps)
    ga.merge_pending_commit()
    gj = joiner.join(pending.welcomes[kps[0].ref(SUITE)], ratchet_tree=ga.ratchet_tree())
    # the joiner's first update encrypts to every other member (a sparse tree)
    update = gj.commit()
    ga.process(update.message)
    gj.merge_pending_commit()
    assert _worker_items() > items
    assert ga.epoch_authenticator == gj.epoch_authenticator
    assert len(ga.members) == 302


def test_an_injected_rng_keeps_the_seals_serial(pool: None, key_packages: list[KeyPackage],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    r = random.Random(1)
    config = GroupConfig(ratchet_tree_in_welcome=False, rng=r.randbytes)
    ops: list[str] = []
    run = parallel._run

    def spy(op: str, *args: object) -> object:
        ops.append(op)
        return run(op, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(parallel, "_run", spy)
    group = Client.generate(b"creator@example.org", config=config).create_group()
    group.commit(add=list(key_packages[:100]))
    assert "verify" in ops and "seal" not in ops


# -- configuration ----------------------------------------------------------------------------


def test_small_batches_start_no_pool() -> None:
    parallel.shutdown()
    parallel.set_workers(1)
    try:
        group = Client.generate(b"b@x", config=CONFIG).create_group()
        kps = [Client.generate(b"m%d@x" % i, config=CONFIG).make_key_package()
               for i in range(20)]
        group.commit(add=kps)
        parallel.verify_many(SUITE.signature.name, _signed_items(50, set()))
        assert not parallel.active()
    finally:
        parallel.set_workers(None)


def test_disabling(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        parallel.set_workers(0)
        assert not parallel.use_pool(10**6)
        parallel.verify_many(SUITE.signature.name, _signed_items(300, set()))
        assert not parallel.active()
        monkeypatch.setenv(parallel.ENV_WORKERS, "0")
        parallel.set_workers(None)
        assert parallel.workers() == 0 and not parallel.use_pool(10**6)
        monkeypatch.setenv(parallel.ENV_WORKERS, "3")
        assert parallel.workers() == 3
        monkeypatch.setenv(parallel.ENV_WORKERS, "many")
        assert parallel.workers() == 0
        with pytest.raises(LocalUsageError):
            parallel.set_workers(-1)
        with pytest.raises(LocalUsageError):
            parallel.set_threshold(0)
    finally:
        monkeypatch.delenv(parallel.ENV_WORKERS)
        parallel.set_workers(None)


def test_a_dead_worker_falls_back_to_serial(pool: None) -> None:
    assert parallel._pool is not None
    proc = parallel._pool.workers[0].proc
    proc.kill()
    proc.wait()
    items = _signed_items(300, {42})
    assert parallel.verify_many(SUITE.signature.name, items) == \
        parallel.verify_many(SUITE.signature.name, items, parallel=False)
    assert not parallel.active() and not parallel.use_pool(300)  # off until set_workers
    parallel.set_workers(1)
    assert parallel.use_pool(300)


def test_shutdown_leaves_no_process(pool: None) -> None:
    assert parallel._pool is not None
    procs = [w.proc for w in parallel._pool.workers]
    parallel.shutdown()
    assert not parallel.active()
    assert all(p.returncode is not None for p in procs)
    with pytest.raises(ChildProcessError):
        os.waitpid(procs[0].pid, os.WNOHANG)  # reaped: no zombie left


def test_an_interrupted_batch_ends_the_workers(pool: None) -> None:
    items = _signed_items(400, {3})
    calls = 0

    def failing(scheme: str, chunk: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls == 3:  # chunks are out with the worker by now
            raise RuntimeError("interrupted")
        return parallel.verify_many(scheme, chunk, parallel=False)

    with pytest.raises(RuntimeError):
        parallel._run("verify", (SUITE.signature.name,), items, failing)
    assert not parallel.active()  # no stale answers can reach the next batch
    assert parallel.verify_many(SUITE.signature.name, items) == \
        parallel.verify_many(SUITE.signature.name, items, parallel=False)


def test_a_forked_child_does_not_keep_the_workers_alive(pool: None) -> None:
    assert parallel._pool is not None
    proc = parallel._pool.workers[0].proc
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        ok = not parallel.active()
        import time

        time.sleep(3)  # alive while the parent shuts its workers down
        os._exit(0 if ok else 1)
    parallel.shutdown()
    assert proc.returncode == 0, "the worker had to be killed: it never saw its input end"
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
