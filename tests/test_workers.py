"""The worker pool for large batches (:mod:`mls_xmpp.workers`), outside the sans-IO core.

The pool has one worker, started and waited for, and a low threshold, so the
batches here really are shared with a worker; every result is compared with
the serial path (:data:`~mls_xmpp.core.crypto.batch.SERIAL`), and errors must
be the serial ones, naming the same KeyPackage or leaf, with nothing changed.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

import mls_xmpp.workers as workers_module
from mls_xmpp.core.crypto import get_suite
from mls_xmpp.core.crypto.batch import (
    PREHASH_INFO_BYTES,
    SERIAL,
    SealBatch,
    SealResult,
    VerifyBatch,
)
from mls_xmpp.core.errors import CryptoError, InvalidSignatureError, LocalUsageError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.messages.common import LeafNodeSource
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.key_package import KeyPackage
from mls_xmpp.core.messages.leaf_node import Capabilities, LeafNode, Lifetime
from mls_xmpp.core.tree.ratchet_tree import RatchetTree
from mls_xmpp.core.tree.validation import validate_tree, verify_leaf_signatures
from mls_xmpp.workers import ENV_WORKERS, WorkerPool, default_workers

from .core.test_group_rules import snapshot

SUITE = get_suite(1)
CONFIG = GroupConfig(ratchet_tree_in_welcome=False)


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    """One worker, ready, used from 8 operations on; shut down afterwards."""
    p = WorkerPool(1, threshold=8)
    assert p.start(wait=60) == 1
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def key_packages() -> list[KeyPackage]:
    """1,000 KeyPackages of distinct clients."""
    return [Client.generate(b"m%d@example.org" % i, config=CONFIG).make_key_package()
            for i in range(1000)]


def _signed(n: int, forged: set[int]) -> VerifyBatch:
    r = random.Random(n)
    items = []
    for i in range(n):
        priv, pub = SUITE.generate_signature_key_pair(r.randbytes)
        msg = r.randbytes(100)
        sig = SUITE.signature.sign(priv, msg)
        if i in forged:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        items.append((pub, msg, sig))
    return VerifyBatch(SUITE.id, tuple(items))


def _worker_procs(p: WorkerPool) -> list[subprocess.Popen[bytes]]:
    assert p._pool is not None
    return [w.proc for w in p._pool.workers]


def _forge(kp: KeyPackage, where: str) -> KeyPackage:
    if where == "leaf":
        leaf = kp.leaf_node
        return replace(kp, leaf_node=replace(leaf, signature=bytes(len(leaf.signature))))
    return replace(kp, signature=bytes(len(kp.signature)))


# -- the batch operations -------------------------------------------------------------------


def test_verify_matches_serial(pool: WorkerPool) -> None:
    forged = {0, 7, 250, 598, 599}
    batch = _signed(600, forged)
    got = pool.verify(batch)
    assert pool.stats()["worker_items"] > 0, "the worker took no part"
    assert pool.stats()["local_items"] > 0, "the caller computed no share"
    assert got == SERIAL.verify(batch)
    assert [i for i, ok in enumerate(got) if not ok] == sorted(forged)


def test_seal_ciphertexts_open(pool: WorkerPool) -> None:
    keys = [SUITE.generate_kem_key_pair() for _ in range(400)]
    items = [(pub, b"secret %d" % i) for i, (_, pub) in enumerate(keys)]
    sealed = SUITE.encrypt_with_label_many("UpdatePathNode", b"context", items, pool)
    assert pool.stats()["worker_items"] > 0
    for (priv, _), (kem_output, ct), (_, plaintext) in zip(keys, sealed, items, strict=True):
        assert SUITE.decrypt_with_label(priv, "UpdatePathNode", b"context", kem_output,
                                        ct) == plaintext


def test_welcome_sized_info_is_hashed_once(pool: WorkerPool) -> None:
    """A large ``info`` (a Welcome with the tree) is hashed once; parts and workers reuse it."""
    info = os.urandom(PREHASH_INFO_BYTES * 4)
    keys = [SUITE.generate_kem_key_pair() for _ in range(400)]
    batch = SealBatch(SUITE.id, info, tuple((pub, b"gs %d" % i)
                                           for i, (_, pub) in enumerate(keys)))
    assert batch.info_hash == SUITE.hpke.info_hash(info)
    assert batch.part(3, 9).info_hash == batch.info_hash
    travelled = pickle.loads(pickle.dumps(batch.part(0, 2)))
    assert travelled.info_hash == batch.info_hash and travelled.info == b""
    assert SealBatch(SUITE.id, info[:100], ()).info_hash is None
    sealed = pool.seal(batch)
    assert pool.stats()["worker_items"] > 0
    for (priv, _), result, (_, pt) in zip(keys, sealed, batch.items, strict=True):
        assert result is not None
        assert SUITE.hpke.open_base(result[0], priv, info, b"", result[1]) == pt


def test_seal_raises_the_serial_error(pool: WorkerPool) -> None:
    keys = [SUITE.generate_kem_key_pair()[1] for _ in range(300)]
    keys[290] = bytes(32)  # a small-order X25519 point: the DH output is zero
    items = [(pk, b"x") for pk in keys]
    with pytest.raises(CryptoError) as serial:
        SUITE.encrypt_with_label(keys[290], "Welcome", b"", b"x")
    with pytest.raises(CryptoError) as batched:
        SUITE.encrypt_with_label_many("Welcome", b"", items, pool)
    assert pool.stats()["worker_items"] > 0
    assert type(batched.value) is type(serial.value)
    assert str(batched.value) == str(serial.value)


def test_a_batch_crypto_with_a_wrong_answer_is_refused() -> None:
    class Short:
        def verify(self, batch: VerifyBatch) -> list[bool]:
            return batch.run()[1:]

        def seal(self, batch: SealBatch) -> list[SealResult]:
            return batch.run()

    items = [(pk, b"label", b"content", sig) for pk, _, sig in _signed(3, set()).items]
    with pytest.raises(LocalUsageError, match="2 results for 3 items"):
        SUITE.verify_with_label_many(items, Short())


# -- where the group layer uses them ----------------------------------------------------------


@pytest.mark.parametrize(("index", "where"), [(3, "leaf"), (537, "kp"), (998, "leaf")])
def test_forged_key_package_in_a_batch_of_1000(pool: WorkerPool,
                                               key_packages: list[KeyPackage],
                                               index: int, where: str) -> None:
    kps = list(key_packages)
    kps[index] = _forge(kps[index], where)
    creator = Client.generate(b"creator@example.org", config=pool.attach(CONFIG))
    assert creator.config.batch_crypto is pool
    group = creator.create_group()
    before = snapshot(group)
    with pytest.raises(InvalidSignatureError, match=f"KeyPackage of Add {index} ") as par:
        group.commit(add=kps)
    assert pool.stats()["worker_items"] > 0, "the worker took no part"
    assert snapshot(group) == before, "a refused Commit changed the group"
    serial_group = Client.generate(b"creator@example.org", config=CONFIG).create_group()
    with pytest.raises(InvalidSignatureError) as serial:
        serial_group.commit(add=kps)
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
def test_tree_with_a_forged_leaf(pool: WorkerPool, forged: int) -> None:
    leaves = _key_package_leaves(300)
    leaves[forged] = replace(leaves[forged], signature=bytes(64))
    tree = RatchetTree.create(SUITE, leaves[0])
    for leaf in leaves[1:]:
        tree.add_leaf(leaf)
    with pytest.raises(InvalidSignatureError, match=f"leaf {forged} ") as par:
        validate_tree(tree, b"group", crypto=pool)
    assert pool.stats()["worker_items"] > 0
    with pytest.raises(InvalidSignatureError) as serial:
        verify_leaf_signatures(tree, b"group")
    assert str(par.value) == str(serial.value)


def test_bulk_add_join_and_update_with_the_pool(pool: WorkerPool,
                                                key_packages: list[KeyPackage]) -> None:
    config = pool.attach(CONFIG)
    creator = Client.generate(b"creator@example.org", config=config)
    joiner = Client.generate(b"joiner@example.org", config=config)
    kps = [joiner.make_key_package(), *key_packages[:300]]
    ga = creator.create_group()
    pending = ga.commit(add=kps)
    ga.merge_pending_commit()
    after_add = pool.stats()
    assert after_add["batches"] >= 2  # the KeyPackage signatures and the Welcome
    gj = joiner.join(pending.welcomes[kps[0].ref(SUITE)], ratchet_tree=ga.ratchet_tree())
    after_join = pool.stats()
    assert after_join["batches"] > after_add["batches"]  # the leaf signatures
    # the joiner's first update encrypts to every other member (a sparse tree)
    update = gj.commit()
    ga.process(update.message)
    gj.merge_pending_commit()
    assert pool.stats()["batches"] > after_join["batches"]
    assert pool.stats()["worker_items"] > 0
    assert ga.epoch_authenticator == gj.epoch_authenticator
    assert len(ga.members) == 302


@pytest.mark.parametrize("with_pool", [True, False], ids=["pool", "serial"])
def test_welcome_with_the_tree_inside_joins(pool: WorkerPool, key_packages: list[KeyPackage],
                                            with_pool: bool) -> None:
    """A Welcome whose info (the encrypted GroupInfo with the tree) is hashed once
    opens for its joiners, with the worker pool and serially."""
    config = GroupConfig(ratchet_tree_in_welcome=True)
    if with_pool:
        config = pool.attach(config)
    creator = Client.generate(b"creator@example.org", config=config)
    joiners = [Client.generate(b"joiner%d@example.org" % i, config=config) for i in range(2)]
    kps = [joiners[0].make_key_package(), *key_packages[:298], joiners[1].make_key_package()]
    ga = creator.create_group()
    pending = ga.commit(add=kps)
    ga.merge_pending_commit()
    assert pending.welcome is not None and len(pending.welcome) > 300 * 150
    for joiner, kp in ((joiners[0], kps[0]), (joiners[1], kps[-1])):
        gj = joiner.join(pending.welcomes[kp.ref(SUITE)])  # the tree from the Welcome
        assert gj.epoch_authenticator == ga.epoch_authenticator
    assert (pool.stats()["worker_items"] > 0) == with_pool


def test_attach_keeps_the_applications_own_batch_crypto() -> None:
    p = WorkerPool(0)
    other = WorkerPool(0)
    mine = GroupConfig(batch_crypto=other)
    assert p.attach(mine) is mine
    assert p.attach(GroupConfig()).batch_crypto is p
    assert GroupConfig().batch_crypto is SERIAL


# -- configuration ------------------------------------------------------------------------------


def test_small_batches_start_no_pool() -> None:
    with WorkerPool(1) as p:
        config = p.attach(CONFIG)
        group = Client.generate(b"b@x", config=config).create_group()
        kps = [Client.generate(b"m%d@x" % i, config=CONFIG).make_key_package()
               for i in range(20)]
        group.commit(add=kps)
        assert p.verify(_signed(p.threshold - 1, set())) == [True] * (p.threshold - 1)
        assert not p.active
        assert p.stats()["batches"] == 0


def test_disabling(monkeypatch: pytest.MonkeyPatch) -> None:
    with WorkerPool(0) as p:
        assert not p.use_workers(10**6)
        assert p.verify(_signed(300, {1})) == SERIAL.verify(_signed(300, {1}))
        assert not p.active and p.start(wait=1) == 0
    monkeypatch.setenv(ENV_WORKERS, "0")
    assert default_workers() == 0 and WorkerPool().workers == 0
    monkeypatch.setenv(ENV_WORKERS, "3")
    assert default_workers() == 3
    assert WorkerPool(1).workers == 1  # an explicit count wins over the variable
    monkeypatch.setenv(ENV_WORKERS, "many")
    assert default_workers() == 0
    monkeypatch.delenv(ENV_WORKERS)
    assert 0 <= default_workers() <= 8
    with pytest.raises(LocalUsageError):
        WorkerPool(-1)
    with pytest.raises(LocalUsageError):
        WorkerPool(1, threshold=0)


def test_a_dead_worker_falls_back_to_serial(pool: WorkerPool) -> None:
    for proc in _worker_procs(pool):
        proc.kill()
        proc.wait()
    batch = _signed(300, {42})
    assert pool.verify(batch) == SERIAL.verify(batch)
    assert pool.broken and not pool.active and not pool.use_workers(300)  # off until reset
    assert pool.verify(batch) == SERIAL.verify(batch)  # serial, and no new worker
    assert not pool.active
    pool.reset()
    assert pool.use_workers(300)
    assert pool.start(wait=60) == 1
    before = pool.stats()["worker_items"]
    assert pool.verify(batch) == SERIAL.verify(batch)
    assert pool.stats()["worker_items"] > before


def test_a_worker_answering_nonsense_falls_back_to_serial(
        pool: WorkerPool, monkeypatch: pytest.MonkeyPatch) -> None:
    real = workers_module.frame

    def short(obj: object) -> bytes:  # the worker gets (and answers) one item too few
        if isinstance(obj, VerifyBatch):
            obj = obj.part(0, len(obj) - 1)
        return real(obj)

    monkeypatch.setattr(workers_module, "frame", short)
    batch = _signed(300, {3, 200})
    assert pool.verify(batch) == SERIAL.verify(batch)
    assert pool.broken and not pool.active


def test_shutdown_leaves_no_process(pool: WorkerPool) -> None:
    procs = _worker_procs(pool)
    pool.shutdown()
    assert not pool.active and not pool.broken
    assert all(p.returncode == 0 for p in procs)  # ended by their input closing
    with pytest.raises(ChildProcessError):
        os.waitpid(procs[0].pid, os.WNOHANG)  # reaped: no zombie left


def test_an_interrupted_batch_leaves_no_stale_answers(
        pool: WorkerPool, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _signed(400, {3, 390})
    calls = 0
    run = VerifyBatch.run

    def failing(self: VerifyBatch) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls == 3:  # chunks are out with the worker by now
            raise RuntimeError("interrupted")
        return run(self)

    monkeypatch.setattr(VerifyBatch, "run", failing)
    with pytest.raises(RuntimeError):
        pool.verify(batch)
    monkeypatch.undo()
    assert not pool.active and not pool.broken  # its answers cannot reach the next batch
    assert pool.start(wait=60) == 1
    before = pool.stats()["worker_items"]
    assert pool.verify(batch) == SERIAL.verify(batch)
    assert pool.stats()["worker_items"] > before


def test_a_forked_child_does_not_keep_the_workers_alive(pool: WorkerPool) -> None:
    proc = _worker_procs(pool)[0]
    batch = _signed(300, {7})
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        ok = not pool.active and pool.verify(batch) == SERIAL.verify(batch)
        pool.shutdown()
        time.sleep(3)  # alive while the parent shuts its workers down
        os._exit(0 if ok else 1)
    pool.shutdown()
    assert proc.returncode == 0, "the worker had to be killed: it never saw its input end"
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
