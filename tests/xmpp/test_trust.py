"""The device trust store (mls_xmpp.xmpp.trust): events, blind trust, decisions, persistence."""

from __future__ import annotations

import pytest

from mls_xmpp.storage import MemoryStore, TrustRecord
from mls_xmpp.xmpp.trust import (
    TrustState,
    TrustStore,
    fingerprint,
    safety_number,
)

A1, A2, A3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


class ListBackend:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], TrustRecord] = {}

    def load_trust(self) -> list[TrustRecord]:
        return list(self.rows.values())

    def save_trust(self, records: list[TrustRecord]) -> None:
        for record in records:
            self.rows[(record.jid, record.fingerprint)] = record


def test_first_key_then_a_key_change_are_events() -> None:
    t = TrustStore(clock=lambda: 100)
    first = t.observe("bob@x", "phone", A1)
    assert first is not None and first.change == "new" and first.state == TrustState.TRUSTED
    assert first.others == ()
    assert t.observe("bob@x", "phone", A1) is None  # known: no news
    changed = t.observe("bob@x", "phone", A2)
    assert changed is not None and changed.change == "changed"
    assert changed.previous == fingerprint(A1)
    assert [r.fingerprint for r in t.devices("bob@x")] == [fingerprint(A2)]
    assert len(t.devices("bob@x", history=True)) == 2


def test_blind_trust_ends_with_the_first_verification() -> None:
    t = TrustStore()
    t.observe("bob@x", "phone", A1)
    t.verify("bob@x", fingerprint(A1).upper().replace(" ", ""))  # typed by a user
    assert t.state("bob@x", fingerprint(A1)) == TrustState.VERIFIED
    laptop = t.observe("bob@x", "laptop", A2)
    assert laptop is not None and laptop.state == TrustState.NEW
    assert laptop.others == (fingerprint(A1),)
    # other accounts are still trusted blindly
    carol = t.observe("carol@x", "", A3)
    assert carol is not None and carol.state == TrustState.TRUSTED
    strict = TrustStore(blind_trust=False)
    ev = strict.observe("bob@x", "phone", A1)
    assert ev is not None and ev.state == TrustState.NEW


def test_blocking_devices() -> None:
    t = TrustStore()
    for k, key in enumerate((A1, A2, A3)):
        t.observe("bob@x", f"d{k}", key)
    t.distrust("bob@x", fingerprint(A1))
    t.verify("bob@x", fingerprint(A2))
    pairs = [("bob@x", fingerprint(k)) for k in (A1, A2, A3)]
    assert t.blocking(pairs, refuse=None) == []
    assert [r.fingerprint for r in t.blocking(pairs, refuse="distrusted")] == [fingerprint(A1)]
    assert {r.fingerprint for r in t.blocking(pairs, refuse="unverified")} == {
        fingerprint(A1), fingerprint(A3)}
    with pytest.raises(KeyError):
        t.verify("bob@x", "00000000")


def test_persisted_and_reloaded() -> None:
    backend = ListBackend()
    t = TrustStore(backend)
    t.observe("bob@x", "phone", A1)
    t.distrust("bob@x", fingerprint(A1))
    again = TrustStore(backend)
    assert again.state("bob@x", fingerprint(A1)) == TrustState.DISTRUSTED
    assert again.observe("bob@x", "phone", A1) is None


def test_safety_number_is_symmetric_and_key_bound() -> None:
    n = safety_number("alice@x", A1, "bob@x", A2)
    assert n == safety_number("bob@x", A2, "alice@x", A1)
    assert len(n.replace(" ", "")) == 60 and n.replace(" ", "").isdigit()
    assert n != safety_number("alice@x", A1, "bob@x", A3)
    assert n != safety_number("alice@x", A1, "mallory@x", A2)


def test_memory_store_is_a_backend() -> None:
    store = MemoryStore()
    TrustStore(store).observe("bob@x", "phone", A1)
    assert TrustStore(store).state("bob@x", fingerprint(A1)) == TrustState.TRUSTED


def test_many_devices_in_one_write() -> None:
    backend = ListBackend()
    calls: list[int] = []
    save = backend.save_trust
    backend.save_trust = lambda rs: (calls.append(len(rs)), save(rs))  # type: ignore[method-assign]
    t = TrustStore(backend)
    news = t.observe_many([(f"u{i}@x", "d", bytes([i % 256, i // 256]) * 16) for i in range(3000)])
    assert len(news) == 3000 and calls == [3000]
    assert t.observe_many([("u1@x", "d", bytes([1, 0]) * 16)]) == [] and calls == [3000]


def test_devices_seen_together_are_not_each_others_news() -> None:
    t = TrustStore()
    both = t.observe_many([("bob@x", "phone", A1), ("bob@x", "laptop", A2)])
    assert [c.others for c in both] == [(), ()]
    later = t.observe("bob@x", "tablet", A3)
    assert later is not None and set(later.others) == {fingerprint(A1), fingerprint(A2)}
