"""The SQLite state store (mls_xmpp.storage.sqlite).

Round trips, atomic replacement, schema versioning and migrations,
encryption at rest, forward secrecy on disk (replaced and deleted states are
not left in the file) and crash safety (a process killed at random moments
always leaves a consistent, decodable database).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mls_xmpp.core.errors import LocalUsageError, MLSError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.client_state import decode_client, encode_client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.serialize import decode_group, encode_group
from mls_xmpp.storage import GroupRecord, SQLiteStore, StateStore, StorageError
from mls_xmpp.storage import sqlite as sqlite_mod

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture(params=[None, KEY], ids=["plain", "encrypted"])
def key(request: pytest.FixtureRequest) -> bytes | None:
    k: bytes | None = request.param
    return k


@pytest.fixture
def store(db_path: Path, key: bytes | None) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db_path, key=key)
    yield s
    s.close()


def rec(gid: bytes, state: bytes, room: str = "room@muc.example.org",
        last: str | None = None) -> GroupRecord:
    return GroupRecord(gid, room, state, last)


def file_bytes(path: Path) -> bytes:
    """The database file and, if one exists, its rollback journal."""
    data = path.read_bytes()
    journal = Path(str(path) + "-journal")
    if journal.exists():
        data += journal.read_bytes()
    return data


def contains_any_piece(data: bytes, secret: bytes, piece: int = 8) -> bool:
    """Whether any ``piece``-byte window of ``secret`` occurs in ``data``.

    A secret inside a large blob may straddle two overflow pages, which are
    not contiguous in the file; looking for every window finds either half.
    """
    return any(secret[i:i + piece] in data for i in range(len(secret) - piece + 1))


def blob_with(marker: bytes, size: int) -> bytes:
    """``size`` random bytes with ``marker`` somewhere in the middle."""
    pad = os.urandom(max(0, size - len(marker)))
    cut = len(pad) // 2
    return pad[:cut] + marker + pad[cut:]


def stored_blob(path: Path, table: str, column: str, where: str, arg: object) -> bytes:
    db = sqlite3.connect(path)
    try:
        row = db.execute(f"SELECT {column} FROM {table} WHERE {where} = ?", (arg,)).fetchone()
    finally:
        db.close()
    assert row is not None and isinstance(row[0], bytes)
    return row[0]


# -- basics ----------------------------------------------------------------------------------


def test_is_a_state_store(store: SQLiteStore) -> None:
    s: StateStore = store
    assert s.load_identity() is None
    assert s.load_groups() == []
    assert issubclass(StorageError, MLSError)


def test_new_store_settings(db_path: Path, store: SQLiteStore) -> None:
    assert store.schema_version == sqlite_mod.SCHEMA_VERSION == 6
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    db = store._db
    assert db is not None
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 3  # EXTRA
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 1  # FULL
    assert db.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "identity", "groups"} <= tables
    store.check_integrity()


def test_identity_round_trip_and_replace(store: SQLiteStore) -> None:
    store.save_identity(b"identity-1")
    assert store.load_identity() == b"identity-1"
    store.save_identity(b"identity-2, longer" * 100)
    assert store.load_identity() == b"identity-2, longer" * 100
    db = store._db
    assert db is not None
    assert db.execute("SELECT count(*) FROM identity").fetchone()[0] == 1


def test_group_round_trip(store: SQLiteStore) -> None:
    a = rec(b"\x00group-a", b"state-a" * 1000, "a@muc", "s1")
    b = rec(b"\xffgroup-b", b"state-b", "b@muc", None)
    c = rec(b"\x10group-c", b"", "c@muc", "")
    for r in (a, b, c):
        store.save_group(r)
    assert store.load_groups() == [a, c, b]  # ordered by group ID


def test_atomic_replace(store: SQLiteStore) -> None:
    store.save_group(rec(b"g", b"old state", "old@muc", "s1"))
    new = rec(b"g", b"new state" * 500, "new@muc", "s2")
    store.save_group(new)
    assert store.load_groups() == [new]
    db = store._db
    assert db is not None
    assert db.execute("SELECT count(*) FROM groups").fetchone()[0] == 1


def test_save_position(store: SQLiteStore) -> None:
    store.save_group(rec(b"g", b"state", last="s1"))
    store.save_position(b"g", "s2")
    assert store.load_groups() == [rec(b"g", b"state", last="s2")]
    store.save_position(b"g", None)
    assert store.load_groups() == [rec(b"g", b"state", last=None)]
    store.save_position(b"unknown", "s3")  # nothing to move
    assert [r.group_id for r in store.load_groups()] == [b"g"]


def test_inbox_position(db_path: Path, key: bytes | None) -> None:
    from mls_xmpp.storage import MemoryStore

    memory = MemoryStore()
    with SQLiteStore(db_path, key=key) as s:
        for one in (s, memory):
            assert one.load_inbox_position() is None
            one.save_inbox_position("a1")
            one.save_inbox_position("b2-\u00e9")
            assert one.load_inbox_position() == "b2-\u00e9"
        s.save_group(rec(b"g", b"state"))
    with SQLiteStore(db_path, key=key) as s:  # it survives a reopen, next to the groups
        assert s.load_inbox_position() == "b2-\u00e9"
        assert [r.group_id for r in s.load_groups()] == [b"g"]
        s.save_inbox_position(None)
        assert s.load_inbox_position() is None
    memory.save_inbox_position(None)
    assert memory.load_inbox_position() is None


def test_ratchets_apart_from_the_state(store: SQLiteStore) -> None:
    store.save_group(rec(b"g", b"base-1", last="s1"))  # stored whole
    with pytest.raises(StorageError, match="stored whole"):
        store.save_ratchets(b"g", b"r", "s2")
    two = GroupRecord(b"g", "room@muc.example.org", b"base-1", "s1", ratchets=b"ratchets-1")
    store.save_group(two)
    assert store.load_groups() == [two]
    store.save_ratchets(b"g", b"ratchets-2", "s2")
    assert store.load_groups() == [replace(two, ratchets=b"ratchets-2", last_stanza_id="s2")]
    store.save_ratchets(b"unknown", b"r", "s3")  # nothing to update
    store.save_group(rec(b"g", b"whole-again"))  # back to whole: the ratchets go
    assert store.load_groups() == [rec(b"g", b"whole-again")]


def test_version_1_store_is_upgraded(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:  # the version-1 schema, and a row as that code wrote it
        m.setattr(sqlite_mod, "_MIGRATIONS", sqlite_mod._MIGRATIONS[:1])
        with SQLiteStore(db_path) as s:
            assert s.schema_version == 1
    db = sqlite3.connect(db_path)
    db.execute("INSERT INTO groups (group_id, room, state, last_stanza_id, updated_at) "
               "VALUES (?, ?, ?, ?, 0)", (b"g", "room@muc.example.org", b"whole state", "s1"))
    db.commit()
    db.close()
    with SQLiteStore(db_path) as s:
        assert s.schema_version == sqlite_mod.SCHEMA_VERSION
        assert s.load_groups() == [rec(b"g", b"whole state", last="s1")]
        s.save_group(replace(rec(b"g", b"base"), ratchets=b"ratchets"))
        assert s.load_groups()[0].ratchets == b"ratchets"


def test_ratchets_cannot_be_swapped_with_the_state(db_path: Path) -> None:
    with SQLiteStore(db_path, key=KEY) as s:
        s.save_group(replace(rec(b"g", b"base"), ratchets=b"ratchets"))
    db = sqlite3.connect(db_path)
    db.execute("UPDATE groups SET state = (SELECT ratchets FROM progress p "
               "WHERE p.group_id = groups.group_id)")
    db.commit()
    db.close()
    with SQLiteStore(db_path, key=KEY) as s, pytest.raises(StorageError, match="decrypt"):
        s.load_groups()


def test_replaced_ratchets_leave_the_file(db_path: Path) -> None:
    old_secret, new_secret = os.urandom(32), os.urandom(32)
    with SQLiteStore(db_path) as s:
        s.save_group(replace(rec(b"g", b"base" * 5000), ratchets=blob_with(old_secret, 3000)))
        assert contains_any_piece(file_bytes(db_path), old_secret)  # control
        s.save_ratchets(b"g", blob_with(new_secret, 3000), "s2")
    data = file_bytes(db_path)
    assert not contains_any_piece(data, old_secret)
    assert contains_any_piece(data, new_secret)


def test_delete_group(store: SQLiteStore) -> None:
    store.save_group(rec(b"g1", b"state-1"))
    store.save_group(rec(b"g2", b"state-2"))
    store.delete_group(b"g1")
    assert [r.group_id for r in store.load_groups()] == [b"g2"]
    store.delete_group(b"g1")  # already gone
    store.delete_group(b"g2")
    assert store.load_groups() == []
    db = store._db
    assert db is not None
    for table in ("groups", "progress"):  # nothing of them is left behind
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0


def test_reopen_keeps_everything(db_path: Path, key: bytes | None) -> None:
    groups = [rec(os.urandom(16), os.urandom(n), f"r{n}@muc", f"s{n}")
              for n in (10, 5000, 70000)]
    with SQLiteStore(db_path, key=key) as s:
        s.save_identity(b"me" * 300)
        for g in groups:
            s.save_group(g)
        s.save_position(groups[0].group_id, "moved")
    with SQLiteStore(db_path, key=key) as s:
        assert s.load_identity() == b"me" * 300
        expected = sorted([replace(groups[0], last_stanza_id="moved"), *groups[1:]],
                          key=lambda r: r.group_id)
        assert s.load_groups() == expected
        assert s.schema_version == sqlite_mod.SCHEMA_VERSION


def test_real_client_and_group_through_the_store(db_path: Path, key: bytes | None) -> None:
    alice = Client.generate(b"alice@example.org")
    group = alice.create_group()
    alice.make_key_package()
    with SQLiteStore(db_path, key=key) as s:
        s.save_identity(encode_client(alice))
        s.save_group(GroupRecord(group.group_id, "room@muc", encode_group(group), "x"))
    with SQLiteStore(db_path, key=key) as s:
        ident = s.load_identity()
        assert ident is not None
        restored = decode_client(ident, GroupConfig())
        [r] = s.load_groups()
        g = decode_group(r.state, restored.config, restored.psk_lookup)
    assert encode_client(restored) == encode_client(alice)
    assert g.epoch_authenticator == group.epoch_authenticator


def test_closed_store_and_context_manager(db_path: Path) -> None:
    with SQLiteStore(db_path) as s:
        s.save_identity(b"x")
    assert s._db is None
    s.close()  # idempotent
    with pytest.raises(StorageError):
        s.load_identity()
    with pytest.raises(StorageError):
        s.save_group(rec(b"g", b"s"))
    with pytest.raises(StorageError):
        s.load_groups()


def test_threads_share_the_store_without_interleaving(store: SQLiteStore) -> None:
    # the plugin writes a large group's state from a worker thread while the event
    # loop writes others: each call holds the store's lock for its whole transaction
    assert store.thread_safe
    errors: list[BaseException] = []

    def write(prefix: bytes) -> None:
        try:
            for i in range(40):
                store.save_group(rec(prefix + bytes([i]), prefix * 1000))
                store.save_position(prefix + bytes([i]), f"{i}")
        except BaseException as e:  # recorded for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(p,)) for p in (b"a", b"b", b"c")]
    for t in threads:
        t.start()
    for _ in range(20):
        store.load_groups()  # reads from this thread meanwhile
    for t in threads:
        t.join()
    assert errors == []
    groups = store.load_groups()
    assert len(groups) == 120
    assert all(g.last_stanza_id == str(g.group_id[1]) for g in groups)


def test_two_stores_on_one_file_see_each_others_writes(db_path: Path) -> None:
    with SQLiteStore(db_path) as a, SQLiteStore(db_path) as b:
        a.save_group(rec(b"g", b"from a"))
        assert b.load_groups() == [rec(b"g", b"from a")]
        b.save_group(rec(b"g", b"from b"))
        assert a.load_groups() == [rec(b"g", b"from b")]


def test_not_a_database(db_path: Path) -> None:
    db_path.write_bytes(b"this is not an SQLite database" * 200)
    with pytest.raises(StorageError):
        SQLiteStore(db_path)


@pytest.mark.parametrize("path", [":memory:", "", "file:state.db"])
def test_non_file_path_is_refused(path: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocalUsageError):
        SQLiteStore(path)
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_unwritable_location(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        SQLiteStore(tmp_path / "missing-dir" / "state.db")


# -- schema versions and migrations ---------------------------------------------------------


def test_migration_from_hand_made_version_0_database(db_path: Path) -> None:
    # An unversioned database an application made (auto_vacuum off, its own table).
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE app_settings (name TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO app_settings VALUES ('theme', 'dark')")
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()

    with SQLiteStore(db_path) as s:
        assert s.schema_version == sqlite_mod.SCHEMA_VERSION
        s.save_group(rec(b"g", b"state"))
        s.check_integrity()
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_mod.SCHEMA_VERSION
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 1  # converted by VACUUM
        assert db.execute("SELECT value FROM app_settings").fetchall() == [("dark",)]
    finally:
        db.close()
    with SQLiteStore(db_path) as s:
        assert s.load_groups() == [rec(b"g", b"state")]


def test_later_migration_runs_once_on_an_existing_store(db_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with SQLiteStore(db_path) as s:
        s.save_group(rec(b"g", b"state", last="s1"))
    runs: list[int] = []

    def migration_3(db: sqlite3.Connection) -> None:
        runs.append(1)
        db.execute("ALTER TABLE groups ADD COLUMN note TEXT")
        db.execute("UPDATE groups SET note = 'migrated'")

    monkeypatch.setattr(sqlite_mod, "_MIGRATIONS", [*sqlite_mod._MIGRATIONS, migration_3])
    with SQLiteStore(db_path) as s:
        assert s.schema_version == sqlite_mod.SCHEMA_VERSION + 1
        assert s.load_groups() == [rec(b"g", b"state", last="s1")]
        db = s._db
        assert db is not None
        assert db.execute("SELECT note FROM groups").fetchall() == [("migrated",)]
    with SQLiteStore(db_path) as s:
        assert s.schema_version == sqlite_mod.SCHEMA_VERSION + 1
    assert runs == [1]


def test_migration_6_keeps_outbox_entries_of_version_5(db_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry written by version 5 loads with no epoch; one saved now keeps it."""
    from mls_xmpp.storage import OutboxRecord

    monkeypatch.setattr(sqlite_mod, "_MIGRATIONS", sqlite_mod._MIGRATIONS[:5])
    with SQLiteStore(db_path) as s:
        assert s.schema_version == 5
        db = s._db
        assert db is not None
        db.execute("INSERT INTO outbox (group_id, seq, message_id, content, sent_digest,"
                   " updated_at) VALUES (?, 0, 'm', ?, ?, 0)",
                   (b"g", s._seal(b"hi", sqlite_mod._OUTBOX, sqlite_mod._outbox_pk(b"g", 0)),
                    b"d" * 32))
    monkeypatch.undo()
    with SQLiteStore(db_path) as s:
        assert s.schema_version == sqlite_mod.SCHEMA_VERSION == 6
        assert s.load_outbox(b"g") == [OutboxRecord(b"g", 0, "m", b"hi", b"d" * 32, None)]
        s.save_outbox(OutboxRecord(b"g", 1, "n", b"yo", b"e" * 32, 9))
    with SQLiteStore(db_path) as s:
        assert [r.sent_epoch for r in s.load_outbox(b"g")] == [None, 9]


def test_failing_migration_leaves_previous_version(db_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with SQLiteStore(db_path) as s:
        s.save_group(rec(b"g", b"state"))

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x INTEGER)")
        db.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(sqlite_mod, "_MIGRATIONS", [*sqlite_mod._MIGRATIONS, broken])
    with pytest.raises(StorageError):
        SQLiteStore(db_path)
    monkeypatch.undo()
    with SQLiteStore(db_path) as s:
        assert s.schema_version == sqlite_mod.SCHEMA_VERSION
        assert s.load_groups() == [rec(b"g", b"state")]
        db = s._db
        assert db is not None
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in names


def test_newer_schema_is_refused(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StorageError, match="99"):
        SQLiteStore(db_path)


# -- encryption at rest ----------------------------------------------------------------------


def test_encrypted_blobs_are_not_plaintext(db_path: Path) -> None:
    marker = os.urandom(32)
    identity = blob_with(marker[:16] + b"identity" + marker[16:], 200)
    state = blob_with(marker, 30000)
    with SQLiteStore(db_path, key=KEY) as s:
        s.save_identity(identity)
        s.save_group(rec(b"group-one", state, "visible-room@muc", "visible-stanza"))
    data = file_bytes(db_path)
    assert not contains_any_piece(data, marker)
    assert not contains_any_piece(data, identity[:64])
    # documented: room and archive position stay in the clear
    assert b"visible-room@muc" in data and b"visible-stanza" in data
    blob = stored_blob(db_path, "groups", "state", "group_id", b"group-one")
    assert blob[0] == 1 and len(blob) == 1 + 12 + len(state) + 16
    other = stored_blob(db_path, "identity", "data", "id", 1)
    assert len(other) == 1 + 12 + len(identity) + 16
    with SQLiteStore(db_path, key=KEY) as s:
        assert s.load_identity() == identity
        assert s.load_groups() == [rec(b"group-one", state, "visible-room@muc",
                                       "visible-stanza")]


def test_same_state_encrypts_differently(db_path: Path) -> None:
    with SQLiteStore(db_path, key=KEY) as s:
        s.save_group(rec(b"g", b"same"))
        first = stored_blob(db_path, "groups", "state", "group_id", b"g")
        s.save_group(rec(b"g", b"same"))
        second = stored_blob(db_path, "groups", "state", "group_id", b"g")
    assert first != second and first[1:13] != second[1:13]  # fresh nonce


def test_wrong_key_raises_storage_error(db_path: Path) -> None:
    with SQLiteStore(db_path, key=KEY) as s:
        s.save_group(rec(b"g", b"state"))
    with pytest.raises(StorageError, match="wrong storage key"):
        SQLiteStore(db_path, key=bytes(32))
    with pytest.raises(StorageError, match="no key"):
        SQLiteStore(db_path)
    with SQLiteStore(db_path, key=KEY) as s:  # the right key still works
        assert s.load_groups() == [rec(b"g", b"state")]


def test_key_given_for_plaintext_store(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    with pytest.raises(StorageError, match="not encrypted"):
        SQLiteStore(db_path, key=KEY)


@pytest.mark.parametrize("bad", [b"", b"short", bytes(31), bytes(33), "k" * 32])
def test_bad_key_length(db_path: Path, bad: object) -> None:
    with pytest.raises(LocalUsageError):
        SQLiteStore(db_path, key=bad)  # type: ignore[arg-type]


def test_tampered_or_moved_blob_raises_storage_error(db_path: Path) -> None:
    with SQLiteStore(db_path, key=KEY) as s:
        s.save_identity(b"identity")
        s.save_group(rec(b"g1", b"state one"))
        s.save_group(rec(b"g2", b"state two"))
    blob1 = stored_blob(db_path, "groups", "state", "group_id", b"g1")

    def raw(sql: str, *args: object) -> None:
        db = sqlite3.connect(db_path)
        db.execute(sql, args)
        db.commit()
        db.close()

    # a state moved into another group's row does not decrypt (primary key is the AAD)
    raw("UPDATE groups SET state = ? WHERE group_id = ?", blob1, b"g2")
    with SQLiteStore(db_path, key=KEY) as s, pytest.raises(StorageError):
        s.load_groups()
    # ... nor in the identity row
    raw("UPDATE identity SET data = ?", blob1)
    with SQLiteStore(db_path, key=KEY) as s, pytest.raises(StorageError):
        s.load_identity()
    # a flipped bit, a truncated blob, an unknown blob version, a non-BLOB value
    flipped = bytearray(blob1)
    flipped[-1] ^= 1
    for bad in (bytes(flipped), blob1[:20], b"\x02" + blob1[1:], "text"):
        raw("UPDATE groups SET state = ? WHERE group_id = ?", bad, b"g1")
        raw("DELETE FROM groups WHERE group_id = ?", b"g2")
        with SQLiteStore(db_path, key=KEY) as s, pytest.raises(StorageError):
            s.load_groups()


# -- forward secrecy on disk -------------------------------------------------------------------

SIZES = [64, 3000, 60000]  # in the b-tree page, one overflow page, many overflow pages


@pytest.mark.parametrize("size", SIZES)
def test_replaced_state_is_gone_from_the_file(db_path: Path, key: bytes | None,
                                              size: int) -> None:
    marker = os.urandom(32)
    with SQLiteStore(db_path, key=key) as s:
        s.save_group(rec(b"keep", os.urandom(size)))  # a neighbour on the same pages
        s.save_group(rec(b"g", blob_with(marker, size)))
        old = stored_blob(db_path, "groups", "state", "group_id", b"g")
        s.save_group(rec(b"g", os.urandom(size)))
        assert not Path(str(db_path) + "-journal").exists()  # unlinked at commit
        s.save_group(rec(b"g", os.urandom(size // 2 + 1)))
    data = file_bytes(db_path)
    assert not contains_any_piece(data, marker)
    assert not contains_any_piece(data, old[-32:])  # the stored form too (ciphertext)
    with SQLiteStore(db_path, key=key) as s:
        assert len(s.load_groups()) == 2


@pytest.mark.parametrize("size", SIZES)
def test_deleted_group_is_gone_from_the_file(db_path: Path, key: bytes | None,
                                             size: int) -> None:
    marker = os.urandom(32)
    with SQLiteStore(db_path, key=key) as s:
        s.save_group(rec(b"keep", os.urandom(size)))
        s.save_group(rec(b"doomed", blob_with(marker, size)))
        old = stored_blob(db_path, "groups", "state", "group_id", b"doomed")
        s.delete_group(b"doomed")
    data = file_bytes(db_path)
    assert not contains_any_piece(data, marker)
    assert not contains_any_piece(data, old[-32:])
    assert not Path(str(db_path) + "-journal").exists()


def test_replaced_identity_is_gone_from_the_file(db_path: Path) -> None:
    marker = os.urandom(32)
    with SQLiteStore(db_path) as s:
        s.save_identity(blob_with(marker, 4000))
        s.save_identity(os.urandom(1000))
    assert not contains_any_piece(file_bytes(db_path), marker)


def test_consumed_key_package_keys_are_gone_from_the_file(db_path: Path) -> None:
    alice = Client.generate(b"alice")
    bob = Client.generate(b"bob")
    kp = bob.make_key_package()
    bundle = bob.key_packages[kp.ref(bob.suite)]
    with SQLiteStore(db_path) as s:
        s.save_identity(encode_client(bob))
        assert contains_any_piece(file_bytes(db_path), bundle.init_private_key)
        group = alice.create_group()
        pending = group.commit(add=[kp])
        group.merge_pending_commit()
        assert pending.welcome is not None
        joined = bob.join(pending.welcome)
        s.save_identity(encode_client(bob))
        s.save_group(GroupRecord(joined.group_id, "room@muc", encode_group(joined)))
        # the init key is consumed by the join; the encryption key is now bob's leaf key
        data = file_bytes(db_path)
        assert not contains_any_piece(data, bundle.init_private_key)
        assert contains_any_piece(data, bundle.encryption_private_key)
        # bob's own Commit replaces his leaf key: the old one leaves the file too
        joined.commit()
        joined.merge_pending_commit()
        s.save_group(GroupRecord(joined.group_id, "room@muc", encode_group(joined)))
    data = file_bytes(db_path)
    assert not contains_any_piece(data, bundle.init_private_key)
    assert not contains_any_piece(data, bundle.encryption_private_key)


def test_used_message_keys_are_gone_from_the_file(db_path: Path) -> None:
    from mls_xmpp.core.tree.secret_tree import RatchetType

    alice, bob = Client.generate(b"alice"), Client.generate(b"bob")
    group = alice.create_group()
    pending = group.commit(add=[bob.make_key_package()])
    group.merge_pending_commit()
    assert pending.welcome is not None
    joined = bob.join(pending.welcome)
    first, second = group.encrypt(b"first"), group.encrypt(b"second")
    joined.process(second)  # out of order: the key of "first" is kept, skipped
    app = RatchetType.APPLICATION
    key0, nonce0 = joined.state.secret_tree.peek(0, app, 0)
    with SQLiteStore(db_path) as s:
        s.save_group(GroupRecord(joined.group_id, "room@muc", encode_group(joined)))
        assert contains_any_piece(file_bytes(db_path), key0)  # positive control
        joined.process(first)  # the key is used, then deleted
        s.save_group(GroupRecord(joined.group_id, "room@muc", encode_group(joined)))
    data = file_bytes(db_path)
    assert not contains_any_piece(data, key0)
    assert not contains_any_piece(data, nonce0)


def test_old_epoch_secrets_are_gone_from_the_file(db_path: Path) -> None:
    config = GroupConfig(past_epochs=0, resumption_psk_epochs=1)
    alice = Client.generate(b"alice", config=config)
    group = alice.create_group()
    old_secrets = group.state.secrets
    with SQLiteStore(db_path) as s:
        s.save_group(GroupRecord(group.group_id, "room@muc", encode_group(group)))
        assert contains_any_piece(file_bytes(db_path), old_secrets.init_secret)
        for _ in range(3):
            group.commit()
            group.merge_pending_commit()
            s.save_group(GroupRecord(group.group_id, "room@muc", encode_group(group)))
    data = file_bytes(db_path)
    for secret in (old_secrets.init_secret, old_secrets.exporter_secret,
                   old_secrets.resumption_psk, old_secrets.sender_data_secret):
        assert not contains_any_piece(data, secret)


def test_scan_detects_leftovers_without_secure_delete(db_path: Path) -> None:
    """Control: the same scan finds the old state when SQLite keeps free pages as they are."""
    marker = os.urandom(32)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA secure_delete = OFF")
    db.execute("PRAGMA journal_mode = DELETE")
    db.execute("CREATE TABLE groups (group_id BLOB PRIMARY KEY, state BLOB)")
    db.execute("INSERT INTO groups VALUES (?, ?)", (b"keep", os.urandom(60000)))
    db.execute("INSERT INTO groups VALUES (?, ?)", (b"g", blob_with(marker, 60000)))
    db.execute("UPDATE groups SET state = ? WHERE group_id = ?", (os.urandom(30001), b"g"))
    db.close()
    assert contains_any_piece(file_bytes(db_path), marker)


# -- crash safety ------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import hashlib, os, random, struct, sys
    from mls_xmpp.core.group.client import Client
    from mls_xmpp.core.group.client_state import decode_client, encode_client
    from mls_xmpp.core.group.config import GroupConfig
    from mls_xmpp.core.group.serialize import decode_group, encode_group
    from mls_xmpp.storage import GroupRecord, SQLiteStore

    store = SQLiteStore(sys.argv[1], key=bytes.fromhex(sys.argv[2]))
    ident = store.load_identity()
    if ident is None:
        client = Client.generate(b"crash@example.org")
        client.make_key_package()
        store.save_identity(encode_client(client))  # before any group refers to it
    else:
        client = decode_client(ident, GroupConfig())
    rows = {r.group_id: r for r in store.load_groups()}
    if b"real" in rows:
        group = decode_group(rows[b"real"].state, client.config, client.psk_lookup)
    else:
        group = client.create_group(b"real")
    n = struct.unpack(">Q", rows[b"synthetic"].state[:8])[0] if b"synthetic" in rows else 0
    print("ready", flush=True)
    rng = random.Random()
    while True:
        n += 1
        payload = os.urandom(rng.randrange(1, 200000))
        blob = struct.pack(">Q", n) + hashlib.sha256(payload).digest() + payload
        store.save_group(GroupRecord(b"synthetic", "s@muc", blob, f"stanza-{n}"))
        store.save_position(b"synthetic", f"pos-{n}")
        if n % 4 == 0:
            group.commit()
            group.merge_pending_commit()
            store.save_group(GroupRecord(b"real", "r@muc", encode_group(group), f"e{n}"))
            client.make_key_package()
            if len(client.key_packages) > 3:
                client.forget_key_package(next(iter(client.key_packages)))
            store.save_identity(encode_client(client))
""")


def test_crash_safety_under_sigkill(db_path: Path) -> None:
    rng = random.Random(9420)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    last_n = 0
    hot_journals = 0
    for _ in range(20):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(db_path), KEY.hex()],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            if line != b"ready\n":
                child.kill()
                _, err = child.communicate(timeout=30)
                pytest.fail(f"child did not start: {line!r} {err.decode()[-2000:]}")
            time.sleep(rng.uniform(0.0, 0.4))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.communicate()
        assert child.returncode == -signal.SIGKILL

        hot_journals += Path(str(db_path) + "-journal").exists()
        raw = sqlite3.connect(db_path)  # rolls a hot journal back
        try:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            raw.close()
        with SQLiteStore(db_path, key=KEY) as s:
            s.check_integrity()
            rows = {r.group_id: r for r in s.load_groups()}
            ident = s.load_identity()
        if b"synthetic" not in rows:
            continue  # killed before the first commit
        synthetic = rows[b"synthetic"]
        blob = synthetic.state
        n = int.from_bytes(blob[:8], "big")
        assert hashlib.sha256(blob[40:]).digest() == blob[8:40]  # complete, not torn
        assert synthetic.last_stanza_id in (f"stanza-{n}", f"pos-{n}")  # moved with it
        assert n >= last_n  # nothing committed is lost
        last_n = n
        if b"real" in rows:
            assert ident is not None
            client = decode_client(ident, GroupConfig())
            group = decode_group(rows[b"real"].state, client.config, client.psk_lookup)
            assert group.group_id == b"real"
    assert last_n > 0
    print(f"final counter {last_n}, hot journals seen after kill: {hot_journals}/20")



def test_trust_records_persist(db_path: Path) -> None:
    from mls_xmpp.storage import TrustRecord

    one = TrustRecord("bob@example.org", "aa bb", "phone", "trusted", 100)
    with SQLiteStore(db_path) as s:
        assert s.load_trust() == []
        s.save_trust([one])
        s.save_trust([replace(one, state="verified"),
                      TrustRecord("bob@example.org", "cc dd", "phone", "new", 200)])
    with SQLiteStore(db_path) as s:
        got = sorted(s.load_trust(), key=lambda r: r.fingerprint)
    assert got == [replace(one, state="verified"),
                   TrustRecord("bob@example.org", "cc dd", "phone", "new", 200)]


def test_one_unreadable_group_does_not_hide_the_others(db_path: Path) -> None:
    with SQLiteStore(db_path, key=KEY) as s:
        for name in (b"a", b"b", b"c"):
            s.save_group(replace(rec(name, b"state-" + name), ratchets=b"r-" + name))
    db = sqlite3.connect(db_path)
    db.execute("UPDATE groups SET state = ? WHERE group_id = ?", (b"\x01" + b"x" * 40, b"b"))
    db.commit()
    db.close()
    with SQLiteStore(db_path, key=KEY) as s:
        with pytest.raises(StorageError):
            s.load_groups()
        bad: list[tuple[bytes, str, StorageError]] = []
        good = s.load_groups(on_error=lambda g, r, e: bad.append((g, r, e)))
    assert [g.group_id for g in good] == [b"a", b"c"]
    assert [(g, r) for g, r, _ in bad] == [(b"b", rec(b"b", b"").room)]
    assert "does not decrypt" in str(bad[0][2])


# -- several writes in one transaction ---------------------------------------------------------


def _commits(store: SQLiteStore) -> list[str]:
    """Record the COMMIT statements the store's connection runs from now on."""
    seen: list[str] = []
    db = store._db
    assert db is not None
    db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip() == "COMMIT" else None)
    return seen


def test_transaction_commits_its_writes_at_once(store: SQLiteStore, db_path: Path) -> None:
    from mls_xmpp.storage import OutboxRecord

    store.save_group(GroupRecord(b"g1", "r@muc.example.org", b"base", "s0", b"rat0"))
    commits = _commits(store)
    other = sqlite3.connect(db_path)
    try:
        with store.transaction():
            store.save_ratchets(b"g1", b"rat1", "s1")
            store.save_outbox(OutboxRecord(b"g1", 0, "m0", b"hello", b"d" * 32))
            # nothing is committed before the block ends: another reader sees the old row
            assert other.execute("SELECT last_stanza_id FROM progress").fetchone() == ("s0",)
            assert other.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
        assert other.execute("SELECT last_stanza_id FROM progress").fetchone() == ("s1",)
        assert other.execute("SELECT COUNT(*) FROM outbox").fetchone() == (1,)
    finally:
        other.close()
    assert commits == ["COMMIT"]
    (g,) = store.load_groups()
    assert g.ratchets == b"rat1" and g.last_stanza_id == "s1"
    assert [o.message_id for o in store.load_outbox(b"g1")] == ["m0"]


def test_transaction_rolls_everything_back_on_an_exception(store: SQLiteStore) -> None:
    from mls_xmpp.storage import OutboxRecord

    store.save_group(GroupRecord(b"g1", "r@muc.example.org", b"base", "s0", b"rat0"))
    with pytest.raises(RuntimeError), store.transaction():
        store.save_ratchets(b"g1", b"rat1", "s1")
        store.save_outbox(OutboxRecord(b"g1", 0, "m0", b"hello"))
        raise RuntimeError("crash in the middle")
    (g,) = store.load_groups()
    assert g.ratchets == b"rat0" and g.last_stanza_id == "s0"
    assert store.load_outbox(b"g1") == []
    store.save_position(b"g1", "s2")  # the store goes on
    assert store.load_groups()[0].last_stanza_id == "s2"


def test_failed_write_inside_a_transaction_is_rolled_back_alone(store: SQLiteStore) -> None:
    store.save_group(GroupRecord(b"g1", "r@muc.example.org", b"whole", "s0"))
    store.save_group(GroupRecord(b"g2", "r2@muc.example.org", b"base", "t0", b"rat0"))
    with store.transaction():
        store.save_position(b"g2", "t1")
        with pytest.raises(StorageError):  # g1 is stored whole: refused
            store.save_ratchets(b"g1", b"rat", "s1")
        with store.transaction():  # blocks nest
            store.save_position(b"g1", "s2")
    groups = {g.group_id: g for g in store.load_groups()}
    assert groups[b"g1"].last_stanza_id == "s2" and groups[b"g1"].ratchets is None
    assert groups[b"g2"].last_stanza_id == "t1"


def test_transaction_survives_reopening(db_path: Path, key: bytes | None) -> None:
    with SQLiteStore(db_path, key=key) as s:
        s.save_group(GroupRecord(b"g1", "r@muc.example.org", b"base", "s0", b"rat0"))
        with s.transaction():
            s.save_ratchets(b"g1", b"rat1", "s1")
            s.save_extra(b"g1", "x", b"value")
    with SQLiteStore(db_path, key=key) as s:
        assert s.load_groups()[0].ratchets == b"rat1"
        assert s.load_extra(b"g1", "x") == b"value"


def _statements(store: SQLiteStore) -> list[str]:
    """Record every statement the store's connection runs from now on."""
    seen: list[str] = []
    db = store._db
    assert db is not None
    db.set_trace_callback(lambda sql: seen.append(sql.split()[0].upper()))
    return seen


def test_whole_transaction_opens_no_savepoint_per_write(store: SQLiteStore) -> None:
    from mls_xmpp.storage import OutboxRecord

    store.save_group(GroupRecord(b"g1", "r@muc.example.org", b"base", "s0", b"rat0"))
    seen = _statements(store)
    with store.transaction(parts=False):
        store.save_ratchets(b"g1", b"rat1", "s1")
        store.save_outbox(OutboxRecord(b"g1", 0, "m0", b"hello", b"d" * 32))
    # BEGIN, one UPDATE of the ratchets (no SELECT first), one INSERT, COMMIT
    assert seen == ["BEGIN", "UPDATE", "INSERT", "COMMIT"]
    (g,) = store.load_groups()
    assert g.ratchets == b"rat1" and g.last_stanza_id == "s1"
    assert [o.message_id for o in store.load_outbox(b"g1")] == ["m0"]
    seen.clear()
    with store.transaction():  # with parts: a savepoint around each write
        store.save_position(b"g1", "s2")
    assert seen == ["BEGIN", "SAVEPOINT", "UPDATE", "RELEASE", "COMMIT"]


def test_whole_transaction_keeps_nothing_after_a_failed_write(store: SQLiteStore) -> None:
    store.save_group(GroupRecord(b"g1", "r@muc.example.org", b"whole", "s0"))
    store.save_group(GroupRecord(b"g2", "r2@muc.example.org", b"base", "t0", b"rat0"))
    with pytest.raises(StorageError, match="nothing of it"), store.transaction(parts=False):
        store.save_position(b"g2", "t1")
        with pytest.raises(StorageError):  # g1 is stored whole: refused, and caught here
            store.save_ratchets(b"g1", b"rat", "s1")
        store.save_position(b"g1", "s2")
    groups = {g.group_id: g for g in store.load_groups()}
    assert groups[b"g1"].last_stanza_id == "s0" and groups[b"g2"].last_stanza_id == "t0"
    # nested in a transaction with parts: rolled back alone, the outer block commits
    with store.transaction():
        store.save_position(b"g2", "t3")
        with pytest.raises(StorageError), store.transaction(parts=False):
            store.save_position(b"g1", "s4")
            store.save_ratchets(b"g1", b"rat", "s5")
    groups = {g.group_id: g for g in store.load_groups()}
    assert groups[b"g1"].last_stanza_id == "s0" and groups[b"g2"].last_stanza_id == "t3"
    # an unknown group's ratchets: nothing happens, as with parts
    with store.transaction(parts=False):
        store.save_ratchets(b"nope", b"rat", "x")
    assert {g.group_id for g in store.load_groups()} == {b"g1", b"g2"}
