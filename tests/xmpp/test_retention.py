"""Retention and the records of automatic updates, without a server.

The time bounds that need a running device (past epochs, retired last-resort
keys, used KeyPackage keys, idle devices) are tested over Prosody with an
injected clock in tests/integration/test_freshness.py; here: what they are
built on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mls_xmpp.chat.errors import ChatError
from mls_xmpp.chat.storekey import PASSPHRASE_ENV, salt_path, store_key
from mls_xmpp.core.errors import WrongEpochError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.serialize import decode_group_parts, encode_group_parts
from mls_xmpp.storage import GroupRecord, MemoryStore, SQLiteStore, StorageError
from mls_xmpp.xmpp.freshness import (
    GroupFreshness,
    LeafSeen,
    RemovalNotice,
    RemovedLeaf,
)

from ..core.test_sqlite_store import contains_any_piece, file_bytes


def _pair() -> tuple[object, object]:
    a_client = Client.generate(b"a@example.org", config=GroupConfig(past_epochs=3))
    b_client = Client.generate(b"b@example.org", config=GroupConfig(past_epochs=3))
    a = a_client.create_group(b"g" * 16)
    p = a.commit(add=[b_client.make_key_package()])
    a.merge_pending_commit()
    assert p.welcome is not None
    return a, b_client.join(p.welcome)


def test_forget_past_epochs_deletes_keys_for_late_messages() -> None:
    a, b = _pair()
    late = a.encrypt(b"late")  # type: ignore[attr-defined]
    for _ in range(2):
        p = a.commit()  # type: ignore[attr-defined]
        a.merge_pending_commit()  # type: ignore[attr-defined]
        b.process(p.message)  # type: ignore[attr-defined]
    kept = b.retained_epochs  # type: ignore[attr-defined]
    assert kept == [1, 2]
    assert b.forget_past_epochs([1, 7]) == [1]  # type: ignore[attr-defined]
    with pytest.raises(WrongEpochError):
        b.process(late)  # type: ignore[attr-defined]
    # gone from the stored form too
    base, ratchets = encode_group_parts(b)  # type: ignore[arg-type]
    again = decode_group_parts(base, ratchets, GroupConfig(past_epochs=3), lambda _: None)
    assert again.retained_epochs == [2]


def test_removal_notice_round_trip_and_foreign_data() -> None:
    notice = RemovalNotice(leaves=(RemovedLeaf(2, 5, 91 * 86400),))
    data = notice.encode()
    assert RemovalNotice.parse(data) == notice
    assert RemovalNotice.parse(b"") is None
    assert RemovalNotice.parse(b"something else entirely") is None
    assert RemovalNotice.parse(data[:-1]) is None  # truncated: not a notice
    assert RemovalNotice.parse(data + b"x") is None  # trailing bytes refused
    other = RemovalNotice(version=2).encode()
    assert RemovalNotice.parse(other) is None


def test_group_freshness_record_round_trip() -> None:
    rec = GroupFreshness({0: LeafSeen(3, 1.5, b"a" * 8), 4: LeafSeen(7, 2.0, b"c" * 8)},
                         9.0, None, {5: 10.0})
    data = rec.encode()
    assert GroupFreshness.decode(data) == rec
    assert GroupFreshness.decode(GroupFreshness().encode()) == GroupFreshness()
    for bad in (b"", b"{}", data[:-1], data + b"x", b"MXF2" + data[4:]):
        with pytest.raises(ValueError):
            GroupFreshness.decode(bad)


@pytest.mark.parametrize("key", [None, os.urandom(32)])
def test_extra_records_sealed_and_deleted_with_their_group(tmp_path: Path,
                                                           key: bytes | None) -> None:
    path = tmp_path / "s.db"
    secret = os.urandom(48)
    gid = b"\x01" * 16
    with SQLiteStore(path, key=key) as store:
        store.save_group(GroupRecord(gid, "r@muc", b"state", None, b"ratchets"))
        store.save_extra(gid, "freshness", secret)
        store.save_extra(b"", "retired", b"account-wide")
        assert store.load_extra(gid, "freshness") == secret
        assert store.load_extra(gid, "other") is None
        if key is not None:  # sealed: not in the file in the clear
            assert not contains_any_piece(file_bytes(path), secret)
        store.delete_group(gid)
        assert store.load_extra(gid, "freshness") is None
        assert store.load_extra(b"", "retired") == b"account-wide"
        store.save_extra(b"", "retired", None)
        assert store.load_extra(b"", "retired") is None
    # forward secrecy on disk: the deleted record is nowhere in the file
    assert not contains_any_piece(file_bytes(path), secret)


def test_extra_record_bound_to_its_row(tmp_path: Path) -> None:
    """A sealed record moved to another group's row does not decrypt."""
    import sqlite3

    path = tmp_path / "s.db"
    key = os.urandom(32)
    with SQLiteStore(path, key=key) as store:
        store.save_extra(b"\x01", "freshness", b"one")
        store.save_extra(b"\x02", "freshness", b"two")
    db = sqlite3.connect(path)
    one = db.execute("SELECT value FROM extra WHERE owner = ?", (b"\x01",)).fetchone()[0]
    db.execute("UPDATE extra SET value = ? WHERE owner = ?", (one, b"\x02"))
    db.commit()
    db.close()
    with SQLiteStore(path, key=key) as store, pytest.raises(StorageError):
        store.load_extra(b"\x02", "freshness")


def test_memory_store_extra_records() -> None:
    store = MemoryStore()
    store.save_extra(b"g", "x", b"1")
    store.save_group(GroupRecord(b"g", "r@muc", b"s"))
    store.delete_group(b"g")
    assert store.load_extra(b"g", "x") is None


def test_chat_store_encrypted_by_default(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    store = tmp_path / "sub" / "alice.db"
    key = store_key(store, "password")
    assert key is not None and len(key) == 32
    assert salt_path(store).stat().st_mode & 0o777 == 0o600
    with SQLiteStore(store, key=key) as s:
        s.save_identity(b"identity secret")
    assert store_key(store, "password") == key  # the same key next time
    with pytest.raises(StorageError):
        SQLiteStore(store)  # no key: refused
    with pytest.raises(StorageError):
        SQLiteStore(store, key=store_key(store, "another password"))
    monkeypatch.setenv(PASSPHRASE_ENV, "password")  # after a password change
    assert store_key(store, "new password") == key
    # a store of an earlier version (no salt file) opens unencrypted, as it was made
    legacy = tmp_path / "legacy.db"
    SQLiteStore(legacy).close()
    assert store_key(legacy, "password") is None
    # asked for explicitly: a new store without encryption
    assert store_key(tmp_path / "plain.db", "password", encrypt=False) is None
    salt_path(tmp_path / "bad.db").write_bytes(b"short")
    with pytest.raises(ChatError):
        store_key(tmp_path / "bad.db", "password")


# -- the records and decisions of mls_xmpp.xmpp.freshness, on real core groups --------


class _Plugin:
    """What :class:`Freshness` uses of the plugin: its options, store and events."""

    def __init__(self, clock: list[float], **config: object) -> None:
        from mls_xmpp.xmpp.plugin import XEP_MLS

        self.config = {**XEP_MLS.default_config, "clock": lambda: clock[0], **config}
        self.state_store = MemoryStore()
        self.sessions: dict[str, object] = {}
        self.identity = None
        self.events: list[tuple[str, object]] = []
        self.errors: list[object] = []
        self.xmpp = self
        self.connected = True

    def event(self, name: str, payload: object) -> None:
        self.events.append((name, payload))

    def error(self, event: object) -> None:
        self.errors.append(event)


class _Session:
    def __init__(self, group: object) -> None:
        self.group = group
        self.room = "g@muc"
        self.removed = False

    @property
    def group_id(self) -> bytes:
        return self.group.group_id  # type: ignore[attr-defined, no-any-return]

    @property
    def epoch(self) -> int:
        return self.group.epoch  # type: ignore[attr-defined, no-any-return]


def _three(admins: tuple[str, ...]) -> tuple[list[object], list[_Session]]:
    from mls_xmpp.xmpp.rules import DEFAULT_RULES, RULES_EXTENSION, rules_extension

    clients = []
    for name in ("a", "b", "c"):
        c = Client.generate(f"{name}@x".encode())
        c.supported_extensions = (RULES_EXTENSION,)
        clients.append(c)
    rules = DEFAULT_RULES.with_admins(*admins)
    a = clients[0].create_group(b"G" * 16, extensions=(rules_extension(rules),))
    p = a.commit(add=[c.make_key_package() for c in clients[1:]])
    a.merge_pending_commit()
    groups = [a] + [c.join(p.welcome) for c in clients[1:]]  # type: ignore[arg-type]
    return clients, [_Session(g) for g in groups]


def test_idle_leaves_and_the_designated_remover() -> None:
    from mls_xmpp.xmpp.freshness import Freshness

    clock = [1000.0]
    _, sessions = _three(admins=("a@x", "b@x"))
    plugins = [_Plugin(clock, idle_timeout=100.0) for _ in sessions]
    fresh = [Freshness(p) for p in plugins]  # type: ignore[arg-type]
    for f, s in zip(fresh, sessions, strict=True):
        f.created(s)  # type: ignore[arg-type]
    clock[0] += 50
    a, b, c = sessions
    # b updates (a Commit with a path): every member notes it
    p = b.group.commit()  # type: ignore[attr-defined]
    ev_b = b.group.merge_pending_commit()  # type: ignore[attr-defined]
    assert ev_b.path
    fresh[1].commit_applied(b, ev_b)  # type: ignore[arg-type]
    for f, s in ((fresh[0], a), (fresh[2], c)):
        ev = s.group.process(p.message)  # type: ignore[attr-defined]
        assert ev.path and not ev.own
        f.commit_applied(s, ev)  # type: ignore[arg-type]
    clock[0] += 60  # a and c idle for 110 s, b for 60 s
    assert set(fresh[1].idle_leaves(b)) == {0, 2}  # type: ignore[arg-type]
    assert fresh[0].idle_leaves(a) == fresh[1].idle_leaves(b)  # type: ignore[arg-type]
    # admin a has the lowest leaf but is idle: admin b removes; a and c (no admin) do not
    idle = fresh[1].idle_leaves(b)  # type: ignore[arg-type]
    assert fresh[1].is_designated_remover(b, idle)  # type: ignore[arg-type]
    assert not fresh[0].is_designated_remover(a, idle)  # type: ignore[arg-type]
    assert not fresh[2].is_designated_remover(c, idle)  # type: ignore[arg-type]
    assert fresh[1].record(b).own_updated_at == 1050.0  # type: ignore[arg-type]
    # without idle leaves, the lowest admin leaf (a) would be the one
    assert fresh[0].is_designated_remover(a, {})  # type: ignore[arg-type]


def test_idle_notice_reported_on_every_member_and_disputed() -> None:
    from mls_xmpp.xmpp.freshness import Freshness

    clock = [1000.0]
    _, sessions = _three(admins=("a@x",))
    a, b, c = sessions
    plugins = [_Plugin(clock) for _ in sessions]
    fresh = [Freshness(p) for p in plugins]  # type: ignore[arg-type]
    for f, s in zip(fresh, sessions, strict=True):
        f.created(s)  # type: ignore[arg-type]
    c_key = [m.signature_key for m in c.group.members  # type: ignore[attr-defined]
             if m.leaf_index == 2][0]
    # the notice claims c's last update was in epoch 0; every member recorded epoch 1
    notice = RemovalNotice(leaves=(RemovedLeaf(2, 0, 123),)).encode()
    p = a.group.commit(remove=[2], authenticated_data=notice)  # type: ignore[attr-defined]
    fresh[0].commit_applied(a, a.group.merge_pending_commit())  # type: ignore[arg-type, attr-defined]
    for f, s in ((fresh[1], b), (fresh[2], c)):
        ev = s.group.process(p.message)  # type: ignore[attr-defined]
        assert ev.authenticated_data == notice
        f.commit_applied(s, ev)  # type: ignore[arg-type]
    for plugin, self_removed in zip(plugins, (False, False, True), strict=True):
        ((name, event),) = [(n, e) for n, e in plugin.events if n == "mls_idle_removed"]
        assert event.committer == "a@x" and event.self_removed == self_removed
        ((jid, fp, last_epoch, seconds),) = event.removed
        assert jid == "c@x" and last_epoch == 0 and seconds == 123
        assert event.disputed == (fp,)  # each saw c's leaf come in epoch 1
        from mls_xmpp.xmpp.trust import fingerprint
        assert fp == fingerprint(c_key)
    # an ordinary removal (no notice) raises no such event
    before = len(plugins[1].events)
    plain = a.group.commit(remove=[1])  # type: ignore[attr-defined]
    fresh[0].commit_applied(a, a.group.merge_pending_commit())  # type: ignore[arg-type, attr-defined]
    fresh[1].commit_applied(b, b.group.process(plain.message))  # type: ignore[arg-type, attr-defined]
    assert not [n for n, _ in plugins[1].events[before:] if n == "mls_idle_removed"]
