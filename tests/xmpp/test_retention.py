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
    rec = GroupFreshness({0: LeafSeen(3, 1.5, "ab"), 4: LeafSeen(7, 2.0, "cd")}, 9.0, None,
                         {5: 10.0})
    assert GroupFreshness.decode(rec.encode()) == rec
    with pytest.raises((ValueError, KeyError)):
        GroupFreshness.decode(b"{}")


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
