"""Signature checks started ahead of the serial work they overlap.

:func:`mls_xmpp.core.crypto.ahead.start_verify` with the worker pool (items
streamed to a worker while the caller carries on) and with the core's serial
default; the join that verifies leaves while it decodes the tree; the bulk add
that verifies KeyPackages while it runs their other checks. Every answer and
every error is compared with the serial path: which Add or leaf fails, and
with what message, must not depend on the batch crypto.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from mls_xmpp.core.codec import Reader, encode_opaque
from mls_xmpp.core.crypto import get_suite
from mls_xmpp.core.crypto.ahead import start_verify
from mls_xmpp.core.crypto.batch import SERIAL, VerifyBatch
from mls_xmpp.core.errors import (
    DecodeError,
    InvalidSignatureError,
    LocalUsageError,
    MLSError,
    ValidationError,
)
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.key_package import KeyPackage
from mls_xmpp.core.messages.leaf_node import Capabilities
from mls_xmpp.core.tree.ratchet_tree import RatchetTree
from mls_xmpp.core.tree.validation import LeafSignatures, verify_leaf_signatures
from mls_xmpp.workers import WorkerPool

from .core.test_group_rules import snapshot
from .test_workers import _forge, _key_package_leaves, _signed

SUITE = get_suite(1)
CONFIG = GroupConfig(ratchet_tree_in_welcome=True)


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    """One worker, ready, used from 64 operations on; shut down afterwards."""
    p = WorkerPool(1, threshold=64)
    assert p.start(wait=60) == 1
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def key_packages() -> list[KeyPackage]:
    """400 KeyPackages of distinct clients."""
    return [Client.generate(b"m%d@example.org" % i, config=CONFIG).make_key_package()
            for i in range(400)]


# -- start_verify -------------------------------------------------------------------------


def test_stream_matches_serial_and_uses_the_worker(pool: WorkerPool) -> None:
    batch = _signed(700, {0, 63, 64, 350, 699})
    with start_verify(pool, SUITE.id) as pending:
        for item in batch.items:
            pending.add(item)
        pending.poll()
        got = pending.result()
    assert got == batch.run()
    assert got.count(False) == 5
    assert pool.stats()["worker_items"] > 0, "the worker took no part"
    assert not pool.broken
    # the workers are free again: a plain batch is shared with them
    before = pool.stats()["worker_items"]
    assert pool.verify(batch) == got
    assert pool.stats()["worker_items"] > before


def test_stream_below_the_threshold_starts_no_worker() -> None:
    p = WorkerPool(1, threshold=256)
    try:
        batch = _signed(100, {7})
        with start_verify(p, SUITE.id) as pending:
            for item in batch.items:
                pending.add(item)
            assert pending.result() == batch.run()
        assert not p.active
    finally:
        p.shutdown()


def test_stream_closed_without_result_gives_the_workers_back(pool: WorkerPool) -> None:
    batch = _signed(600, {10})
    with pytest.raises(ValidationError), start_verify(pool, SUITE.id) as pending:
        for item in batch.items:
            pending.add(item)
        raise ValidationError("the caller's own check failed")
    assert pool.active and not pool.broken
    assert pool._lock.acquire(blocking=False), "the stream kept the workers"
    pool._lock.release()
    assert pool.verify(batch) == batch.run()


def test_stream_result_once(pool: WorkerPool) -> None:
    batch = _signed(200, set())
    pending = start_verify(pool, SUITE.id)
    for item in batch.items:
        pending.add(item)
    assert all(pending.result())
    with pytest.raises(LocalUsageError):
        pending.result()
    pending.close()


def test_serial_start_verify_computes_in_result() -> None:
    batch = _signed(20, {3})
    pending = start_verify(SERIAL, SUITE.id)
    for item in batch.items:
        pending.add(item)
    assert pending.result() == batch.run()


class _Short:
    """A batch crypto whose ``start_verify`` answers one result too few."""

    def verify(self, batch: VerifyBatch) -> list[bool]:
        return batch.run()[:-1]

    def seal(self, batch: object) -> list[object]:
        raise AssertionError

    def start_verify(self, suite_id: int) -> object:
        from mls_xmpp.core.crypto.ahead import _Deferred

        return _Deferred(self, suite_id)  # type: ignore[arg-type]


def test_injected_stream_with_the_wrong_number_of_results_is_refused() -> None:
    batch = _signed(5, set())
    pending = start_verify(_Short(), SUITE.id)  # type: ignore[arg-type]
    for item in batch.items:
        pending.add(item)
    with pytest.raises(LocalUsageError):
        pending.result()


# -- the tree: leaves verified while decoding ----------------------------------------------


def _tree(n: int, forged: set[int]) -> RatchetTree:
    leaves = _key_package_leaves(n)
    for i in forged:
        leaves[i] = replace(leaves[i], signature=bytes(64))
    tree = RatchetTree.create(SUITE, leaves[0])
    for leaf in leaves[1:]:
        tree.add_leaf(leaf)
    return tree


def test_decode_hands_over_each_leaf_in_order() -> None:
    tree = _tree(37, set())
    seen: list[int] = []
    decoded = RatchetTree.decode(SUITE, tree.encode(), lambda i, leaf: seen.append(i))
    assert seen == [i for i, _ in tree.leaves()]
    assert decoded.encode() == tree.encode()
    assert decoded.tree_hash() == RatchetTree.decode(SUITE, tree.encode()).tree_hash()


@pytest.mark.parametrize("data", [b"\x05\x01\x00", b"\x01\x02", b"\x00\x00"])
def test_decode_with_on_leaf_refuses_what_decode_refuses(data: bytes) -> None:
    with pytest.raises(DecodeError):
        RatchetTree.decode(SUITE, data)
    with pytest.raises(DecodeError):
        RatchetTree.decode(SUITE, data, lambda i, leaf: None)


@pytest.mark.parametrize("forged", [{5}, {200, 299}])
def test_leaves_verified_while_decoding(pool: WorkerPool, forged: set[int]) -> None:
    data = _tree(300, forged).encode()
    with pytest.raises(InvalidSignatureError, match=f"leaf {min(forged)} ") as par:
        with LeafSignatures(SUITE, b"group", pool) as sigs:
            RatchetTree.decode(SUITE, data, sigs.add)
            sigs.check()
    assert pool.stats()["worker_items"] > 0
    with pytest.raises(InvalidSignatureError) as serial:
        verify_leaf_signatures(RatchetTree.decode(SUITE, data), b"group")
    assert str(par.value) == str(serial.value)


def test_join_with_the_pool_from_the_tree_in_the_welcome(pool: WorkerPool,
                                                         key_packages: list[KeyPackage]
                                                         ) -> None:
    config = pool.attach(CONFIG)
    joiner = Client.generate(b"joiner@example.org", config=config)
    ga = Client.generate(b"creator@example.org", config=config).create_group()
    kps = [joiner.make_key_package(), *key_packages[:300]]
    pending = ga.commit(add=kps)
    ga.merge_pending_commit()
    before = pool.stats()["worker_items"]
    gj = joiner.join(pending.welcomes[kps[0].ref(SUITE)])
    assert pool.stats()["worker_items"] > before, "the worker verified no leaf"
    assert gj.epoch_authenticator == ga.epoch_authenticator


# -- the bulk add: KeyPackages verified while their other checks run -------------------------


def _refuse(identity: bytes) -> object:
    def validator(credential: Credential, signature_key: bytes) -> None:
        if credential.identity == identity:
            raise ValidationError(f"credential {identity!r} refused")
    return validator


def _add_error(kps: list[KeyPackage], config: GroupConfig) -> MLSError:
    group = Client.generate(b"creator@example.org", config=config).create_group()
    before = snapshot(group)
    with pytest.raises(MLSError) as err:
        group.commit(add=kps)
    assert snapshot(group) == before, "a refused Commit changed the group"
    return err.value


@pytest.mark.parametrize(("forge", "other", "refuse"), [
    ((100, "kp"), (250, "dup"), None),      # a bad signature before a later error
    ((250, "leaf"), (100, "dup"), None),    # a later bad signature after an error
    ((150, "leaf"), None, 150),             # the credential is checked before the signature
    ((120, "kp"), None, 200),               # a bad signature before a refused credential
    ((220, "kp"), None, 80),                # a refused credential before a bad signature
    ((0, "leaf"), (399, "dup"), None),
])
def test_bulk_add_errors_are_those_of_the_serial_order(
        pool: WorkerPool, key_packages: list[KeyPackage], forge: tuple[int, str],
        other: tuple[int, str] | None, refuse: int | None) -> None:
    kps = list(key_packages)
    kps[forge[0]] = _forge(kps[forge[0]], forge[1])
    if other is not None:
        kps[other[0]] = kps[3]  # two Adds for the same client
    config = CONFIG if refuse is None else replace(
        CONFIG, credential_validator=_refuse(b"m%d@example.org" % refuse))  # type: ignore[arg-type]
    par = _add_error(kps, pool.attach(config))
    assert pool.stats()["worker_items"] > 0
    serial = _add_error(kps, config)
    assert type(par) is type(serial)
    assert str(par) == str(serial)


# -- decoding: Capabilities shared by encoding -------------------------------------------------


def test_capabilities_shared_by_encoding() -> None:
    caps = Capabilities(cipher_suites=(1, 3), extensions=(0xff00,), credentials=(1,))
    data = caps.encode() + b"tail"
    r1, r2 = Reader(data), Reader(data)
    a, b = Capabilities.read_shared(r1), Capabilities.read_shared(r2)
    assert a == caps and a is b
    assert r1.pos == len(caps.encode())
    assert Capabilities.read(Reader(caps.encode())) == a


@pytest.mark.parametrize("data", [
    b"\x02\x00\x01" + b"\x03\x00\x01\x00" + b"\x00\x00\x00",   # odd length of a uint16 vector
    b"\x02\x00\x01\x00\x00\x00",                                # one vector short
    b"\x02\x00\x01\x00\x00\x00\x04\x00\x01",                    # the last one runs past the end
])
def test_capabilities_shared_refuses_bad_encodings(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Capabilities.read(Reader(data))
    with pytest.raises(DecodeError):
        Capabilities.read_shared(Reader(data))


def test_leaf_signature_items_are_the_labelled_content() -> None:
    leaf = _key_package_leaves(1)[0]
    pk, label, content, sig = leaf.signature_item()
    SUITE.signature.verify(pk, SUITE.labelled(label) + encode_opaque(content), sig)


def test_stream_add_looks_at_the_workers_once_per_chunk(pool: WorkerPool) -> None:
    """The caller's ``add`` hands chunks out at most once per chunk of items it adds
    (the feeder thread tops the worker up as it answers); it used to look at the
    pipes on every item once the worker was behind, a ``select`` per leaf."""
    from mls_xmpp.workers import _STREAM_CHUNK

    batch = _signed(2000, {5, 1999})
    with start_verify(pool, SUITE.id) as pending:
        for item in batch.items:
            pending.add(item)
        got = pending.result()
    assert got == batch.run()
    assert pool.stats()["worker_items"] > 0, "the worker took no part"
    dispatches = pool.stats()["stream_dispatches"]
    assert 0 < dispatches <= len(batch.items) // _STREAM_CHUNK
