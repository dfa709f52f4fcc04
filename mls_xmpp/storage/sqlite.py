"""A SQLite :class:`~mls_xmpp.storage.base.StateStore`: durable, atomic, forward-secure.

::

    with SQLiteStore("device.db", key=key32) as store:
        blob = store.load_identity()
        ...
        store.save_group(GroupRecord(group_id, room, encode_group(group), stanza_id))

Schema (version 5)::

    meta     (name TEXT PRIMARY KEY, value BLOB)        encryption mode, key check,
                                                        inbox position (UTF-8)
    identity (id INTEGER PRIMARY KEY CHECK (id = 1),    one row at most
              data BLOB, updated_at INTEGER)
    groups   (group_id BLOB PRIMARY KEY, room TEXT, state BLOB,
              last_stanza_id TEXT,                       unused since version 2
              updated_at INTEGER)
    progress (group_id BLOB PRIMARY KEY,                 one row per groups row
              ratchets BLOB,                             NULL: ``state`` is whole
              last_stanza_id TEXT, updated_at INTEGER)
    trust    (jid TEXT, fingerprint TEXT, device TEXT,  the device trust store
              state TEXT, first_seen INTEGER, current INTEGER)
    outbox   (group_id BLOB, seq INTEGER,               messages send() accepted that
              message_id TEXT, content BLOB,            the room has not reflected yet
              sent_digest BLOB, updated_at INTEGER,     (plaintext Content: sealed)
              sent_epoch INTEGER)                       since version 6
    extra    (owner BLOB, name TEXT, value BLOB,       small records of other modules
              updated_at INTEGER)                       (owner: a group ID, or b"" for
                                                        the account; value sealed)

A group is stored either whole (``state`` from ``encode_group``, ``ratchets``
NULL) or in two parts (``state`` the base from ``encode_group_parts``,
``ratchets`` its secret trees); the plugin stores parts. What changes with
every message (the ratchets and the archive position) lives in its own small
row: SQLite rewrites a whole row when one of its columns changes, and a
large group's state is tens of megabytes, so an application message
(:meth:`SQLiteStore.save_ratchets`) or an echo (:meth:`SQLiteStore.save_position`)
writes a few kilobytes whatever the size of the group.

``updated_at`` is in whole seconds since the Unix epoch. The schema version
is ``PRAGMA user_version``; :data:`_MIGRATIONS` lists one function per
version (index ``i`` takes the database from version ``i`` to ``i + 1``), and
opening a store runs the missing ones, each in its own transaction together
with the version bump, so a crash during a migration leaves the previous
version intact. Version 0 is a database without our tables (a new file, or
one an application created for other tables, which are left alone). A
database of a newer version than this code knows is refused.

Durability and atomicity
    Every write method is one ``BEGIN IMMEDIATE ... COMMIT`` transaction
    (or, inside :meth:`SQLiteStore.transaction`, a savepoint of the one
    transaction of the ``with`` block, which commits them all at once), and
    SQLite's rollback journal makes it atomic: a process killed (or a machine
    losing power) at any point leaves either the old or the new row, never a
    mix. The pragmas set on every open:

    * ``journal_mode=DELETE``: a rollback journal that is unlinked at commit.
      Not WAL: a WAL file keeps copies of old pages (old states, consumed
      keys) until it is overwritten, long after the commit. Not PERSIST, nor
      the exclusive locking mode, which both keep the old pages in a journal
      whose header is merely zeroed.
    * ``synchronous=EXTRA``: ``FULL`` (fsync the journal before writing the
      database, the database before deleting the journal) plus an fsync of
      the directory after the journal is unlinked, so a commit that returned
      survives a power loss. A member that sent a Commit and then lost the
      new epoch would have to rejoin.
    * ``secure_delete=ON``: SQLite overwrites deleted content with zeros, in
      the b-tree pages (a replaced or deleted row) and in freed pages
      (the overflow pages of a large state blob).
    * ``auto_vacuum=FULL``: free pages are moved to the end of the file and
      truncated away at every commit, so the file holds no free pages and
      does not keep growing. (``INCREMENTAL`` would keep free pages until
      ``PRAGMA incremental_vacuum`` runs; with ``secure_delete`` they are zeroed
      either way, and ``FULL`` needs no maintenance call.) ``auto_vacuum`` only
      takes effect when set before the first table is created, so a database
      made without it is converted once with ``VACUUM`` on open.
    * ``temp_store=MEMORY``: statement journals and the ``VACUUM`` copy never
      go to temporary files.

Forward secrecy on disk
    With those settings, a state that :meth:`SQLiteStore.save_group` replaced
    or :meth:`SQLiteStore.delete_group` removed is no longer anywhere in the
    database file once the call returns, and the journal that briefly held
    it is gone. What SQLite cannot reach is below the file system: blocks
    of the unlinked journal and of the truncated file tail, copy-on-write
    snapshots and flash wear levelling may still hold old bytes. Encryption
    at rest (below) turns those into ciphertext, but under the same long-term
    key: it protects against a stolen disk without the key, not against a
    later compromise of the key.

Encryption at rest
    With ``key`` (32 bytes), every BLOB holding secrets (the identity and each
    group state) is stored as::

        0x01 || nonce (12 random bytes) || AES-256-GCM(key, nonce, plaintext, aad)

    where ``aad = b"mls-xmpp sqlite v1" 0x00 table 0x00 primary_key``: the
    table name (``identity``, ``groups``, ``progress`` for the ratchets,
    so they cannot be swapped with a state, or ``outbox``), then the row's
    primary key (the raw group ID, ``b"1"`` for the single identity row, or
    for an outbox entry the group ID and its ``seq`` as 8 big-endian bytes).
    An outbox entry's ``content`` (the plaintext of a message not yet sent)
    is sealed like a state; its ``message_id`` and ``sent_digest`` are not. A blob therefore
    only decrypts in the row it was written for; moving a state to another
    group's row, or into the identity row, fails to decrypt. Random 96-bit
    nonces are safe for about 2**32 writes under one key.

    A key check (the sealed constant ``b"mls-xmpp key check"`` in ``meta``)
    is written when the store is created, so opening it with a wrong key, a
    key for a store that was created without one, or no key for one created
    with one raises :class:`StorageError` at once. The mode is fixed when
    the store is created.

    Not encrypted: ``group_id``, ``room``, ``last_stanza_id``, ``updated_at``,
    the inbox position and the schema. An observer of the file learns which rooms the device
    is in, how far it has read each room's archive and when it last wrote;
    someone who can write to the file can move a room's archive position
    (the MLS layer still refuses replayed messages, and skipped ones are lost
    to this device). They stay in the clear so the plugin can look groups up
    by room and resume archive queries without decrypting every state.

Concurrency
    One store is one SQLite connection, usable from any thread: every method
    holds the store's lock for its whole transaction or read, so calls from
    the event loop and from a worker thread (the plugin writes a large
    group's state in one, :attr:`SQLiteStore.thread_safe`) never interleave
    inside a transaction (``check_same_thread`` is off; the lock does its
    job). Every method runs to completion without yielding, so concurrent
    asyncio tasks cannot interleave inside a transaction either. Other processes opening
    the same file are serialised by SQLite's file locks (waiting up to
    ``timeout`` seconds), but two running clients sharing one identity is
    an error the store does not detect.

Every SQLite failure is reported as :class:`StorageError`. The database file
is created with mode 0600 (its journal inherits that mode).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..core.errors import LocalUsageError
from .base import GroupRecord, OutboxRecord, TrustRecord
from .errors import StorageError

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

#: Length of the encryption-at-rest key.
KEY_LEN = 32
_NONCE_LEN = 12
_BLOB_VERSION = 1
_AAD_PREFIX = b"mls-xmpp sqlite v1\x00"
_KEY_CHECK = b"mls-xmpp key check"
_MODE_PLAIN = b"none"
_MODE_AESGCM = b"aes-256-gcm"
_IDENTITY_PK = b"1"
_RATCHETS = "progress"  #: the AAD "table" of the ratchets
_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run a method of :class:`SQLiteStore` under the store's lock."""
    @functools.wraps(method)
    def wrapper(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


_OUTBOX = "outbox"
_EXTRA = "extra"


def _extra_pk(owner: bytes, name: str) -> bytes:
    """The primary key of an ``extra`` row in the AEAD's associated data."""
    return bytes(owner) + b"\x00" + name.encode("utf-8")


def _outbox_pk(group_id: bytes, seq: int) -> bytes:
    return bytes(group_id) + int(seq).to_bytes(8, "big")


# -- schema migrations ---------------------------------------------------------------------


def _migration_1_initial_schema(db: sqlite3.Connection) -> None:
    """Version 0 -> 1: the meta, identity and groups tables."""
    db.execute("CREATE TABLE meta ("
               " name TEXT PRIMARY KEY NOT NULL,"
               " value BLOB NOT NULL)")
    db.execute("CREATE TABLE identity ("
               " id INTEGER PRIMARY KEY CHECK (id = 1),"
               " data BLOB NOT NULL,"
               " updated_at INTEGER NOT NULL)")
    db.execute("CREATE TABLE groups ("
               " group_id BLOB PRIMARY KEY NOT NULL,"
               " room TEXT NOT NULL,"
               " state BLOB NOT NULL,"
               " last_stanza_id TEXT,"
               " updated_at INTEGER NOT NULL)")


def _migration_2_progress(db: sqlite3.Connection) -> None:
    """Version 1 -> 2: the ratchets and the archive position in a table of their own."""
    db.execute("CREATE TABLE progress ("
               " group_id BLOB PRIMARY KEY NOT NULL,"
               " ratchets BLOB,"
               " last_stanza_id TEXT,"
               " updated_at INTEGER NOT NULL)")
    db.execute("INSERT INTO progress (group_id, ratchets, last_stanza_id, updated_at) "
               "SELECT group_id, NULL, last_stanza_id, updated_at FROM groups")
    db.execute("UPDATE groups SET last_stanza_id = NULL")


def _migration_3_trust(db: sqlite3.Connection) -> None:
    """Version 2 -> 3: the account's device trust store (fingerprints are not secret)."""
    db.execute("CREATE TABLE trust ("
               " jid TEXT NOT NULL,"
               " fingerprint TEXT NOT NULL,"
               " device TEXT NOT NULL,"
               " state TEXT NOT NULL,"
               " first_seen INTEGER NOT NULL,"
               " current INTEGER NOT NULL,"
               " PRIMARY KEY (jid, fingerprint))")


def _migration_4_outbox(db: sqlite3.Connection) -> None:
    """Version 3 -> 4: the outbox of messages accepted and not yet reflected by the room."""
    db.execute("CREATE TABLE outbox ("
               " group_id BLOB NOT NULL,"
               " seq INTEGER NOT NULL,"
               " message_id TEXT NOT NULL,"
               " content BLOB NOT NULL,"
               " sent_digest BLOB,"
               " updated_at INTEGER NOT NULL,"
               " PRIMARY KEY (group_id, seq))")


def _migration_5_extra(db: sqlite3.Connection) -> None:
    """Version 4 -> 5: small records of other modules, per group or for the account."""
    db.execute("CREATE TABLE extra ("
               " owner BLOB NOT NULL,"
               " name TEXT NOT NULL,"
               " value BLOB NOT NULL,"
               " updated_at INTEGER NOT NULL,"
               " PRIMARY KEY (owner, name))")


def _migration_6_outbox_epoch(db: sqlite3.Connection) -> None:
    """Version 5 -> 6: the epoch an outbox entry was sent in (NULL: unknown, as before)."""
    db.execute("ALTER TABLE outbox ADD COLUMN sent_epoch INTEGER")


#: One function per schema version: ``_MIGRATIONS[i]`` turns version ``i`` into ``i + 1``.
#: Append new ones; never edit or reorder a released one.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migration_1_initial_schema,
    _migration_2_progress,
    _migration_3_trust,
    _migration_4_outbox,
    _migration_5_extra,
    _migration_6_outbox_epoch,
]

#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)


# -- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _sql_errors(what: str) -> Iterator[None]:
    """Report SQLite failures as :class:`StorageError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"{what}: {exc}") from exc


def _aad(table: str, primary_key: bytes) -> bytes:
    return _AAD_PREFIX + table.encode() + b"\x00" + primary_key


def _pragma(db: sqlite3.Connection, name: str) -> object:
    row = db.execute(f"PRAGMA {name}").fetchone()
    return None if row is None else row[0]


def _create_private_file(path: str) -> None:
    """Create ``path`` empty and readable by its owner only, unless it exists."""
    if os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create the store {path!r}: {exc}") from exc
    os.close(fd)


# -- the store -----------------------------------------------------------------------------------


class SQLiteStore:
    """A :class:`~mls_xmpp.storage.base.StateStore` in one SQLite file.

    Args:
        path: the database file (created, mode 0600, if missing; not
            ``":memory:"``, ``""`` or a ``file:`` URI).
        key: 32 bytes to encrypt the identity and group states at rest with
            AES-256-GCM, or ``None`` to store them in the clear. Fixed when
            the store is created.
        timeout: seconds to wait for another process's lock before failing.

    Raises:
        StorageError: the file is not a usable store (not a database, of a
            newer schema, encrypted with another key, or encrypted while no
            key was given, or the reverse).
        LocalUsageError: ``key`` is not 32 bytes, or ``path`` is not a file path.

    See the module docstring for the schema, the pragmas and the encryption
    format. The store may be used from several threads (see the module
    docstring); it is a context manager that closes it.
    """

    #: calls from several threads are safe (each one holds the store's lock)
    thread_safe = True

    def __init__(self, path: str | os.PathLike[str], *, key: bytes | None = None,
                 timeout: float = 5.0) -> None:
        if key is not None and (not isinstance(key, bytes | bytearray | memoryview)
                                or len(key) != KEY_LEN):
            raise LocalUsageError(f"the storage key must be {KEY_LEN} bytes")
        self._aead = None if key is None else AESGCM(bytes(key))
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            raise LocalUsageError("SQLiteStore needs a file path (a temporary or in-memory "
                                  "database has no durable rollback journal)")
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._depth = 0  #: nesting of the open transaction (0: none), under the lock
        #: inside ``transaction(parts=False)``: write methods open no savepoint of their own
        self._whole = False
        #: a write method failed inside such a block (the block must not commit it)
        self._spoilt = False
        with _sql_errors(f"cannot open the store {self._path!r}"):
            _create_private_file(self._path)
            db = sqlite3.connect(self._path, timeout=timeout, isolation_level=None,
                                 check_same_thread=False)
            try:
                self._db = db
                self._configure(db)
                self._migrate(db)
                self._ensure_auto_vacuum(db)
                self._check_encryption()
            except BaseException:
                self._db = None
                db.close()
                raise

    # -- opening --------------------------------------------------------------------------

    @staticmethod
    def _configure(db: sqlite3.Connection) -> None:
        """Set the pragmas of the module docstring (auto_vacuum first)."""
        db.execute("PRAGMA auto_vacuum = FULL")  # effective only before the first table
        mode = _pragma(db, "journal_mode = DELETE")
        if not isinstance(mode, str) or mode.lower() != "delete":
            raise StorageError(f"cannot switch the journal to DELETE mode (it is {mode!r})")
        db.execute("PRAGMA synchronous = EXTRA")
        if _pragma(db, "secure_delete = ON") != 1:
            raise StorageError("this SQLite cannot turn secure_delete on")
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("PRAGMA trusted_schema = OFF")

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Run the missing migrations, one transaction per version."""
        while True:
            db.execute("BEGIN IMMEDIATE")
            try:
                version = _pragma(db, "user_version")
                if not isinstance(version, int):
                    raise StorageError("cannot read the schema version")
                target = len(_MIGRATIONS)
                if version > target:
                    raise StorageError(f"the store has schema version {version}; this code "
                                       f"knows versions up to {target}")
                if version == target:
                    db.execute("COMMIT")
                    return
                _MIGRATIONS[version](db)
                db.execute(f"PRAGMA user_version = {version + 1:d}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    @staticmethod
    def _ensure_auto_vacuum(db: sqlite3.Connection) -> None:
        """Convert, once, a database whose tables predate ``auto_vacuum=FULL``."""
        if _pragma(db, "auto_vacuum") != 1:
            db.execute("PRAGMA auto_vacuum = FULL")
            db.execute("VACUUM")
            if _pragma(db, "auto_vacuum") != 1:
                raise StorageError("cannot turn auto_vacuum on")

    def _check_encryption(self) -> None:
        """Record the encryption mode of a new store, or check the key against it."""
        with self._transaction("cannot check the storage key") as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'encryption'").fetchone()
            if row is None:
                mode = _MODE_PLAIN if self._aead is None else _MODE_AESGCM
                db.execute("INSERT INTO meta (name, value) VALUES ('encryption', ?)", (mode,))
                if self._aead is not None:
                    db.execute("INSERT INTO meta (name, value) VALUES ('key_check', ?)",
                               (self._seal(_KEY_CHECK, "meta", b"key_check"),))
                return
            mode = row[0]
            if mode == _MODE_PLAIN:
                if self._aead is not None:
                    raise StorageError("the store is not encrypted, but a key was given")
            elif mode == _MODE_AESGCM:
                if self._aead is None:
                    raise StorageError("the store is encrypted and no key was given")
                check = db.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
                if check is None:
                    raise StorageError("the store's key check is missing")
                try:
                    ok = self._open(check[0], "meta", b"key_check") == _KEY_CHECK
                except StorageError:
                    ok = False
                if not ok:
                    raise StorageError("wrong storage key (the key check does not decrypt)")
            else:
                raise StorageError(f"unknown store encryption mode {mode!r}")

    # -- encryption ---------------------------------------------------------------------------

    def _seal(self, plaintext: bytes, table: str, primary_key: bytes) -> bytes:
        """The stored form of a secret BLOB (unchanged when the store is not encrypted)."""
        if self._aead is None:
            return bytes(plaintext)
        nonce = os.urandom(_NONCE_LEN)
        ct = self._aead.encrypt(nonce, bytes(plaintext), _aad(table, primary_key))
        return bytes((_BLOB_VERSION,)) + nonce + ct

    def _open(self, stored: object, table: str, primary_key: bytes) -> bytes:
        """The plaintext of a stored secret BLOB; :class:`StorageError` if it fails."""
        if not isinstance(stored, bytes):
            raise StorageError(f"a {table} row holds a {type(stored).__name__}, not a BLOB")
        if self._aead is None:
            return stored
        if len(stored) < 1 + _NONCE_LEN + 16 or stored[0] != _BLOB_VERSION:
            raise StorageError(f"a {table} row is not an encrypted blob of version "
                               f"{_BLOB_VERSION}")
        nonce = stored[1:1 + _NONCE_LEN]
        try:
            return self._aead.decrypt(nonce, stored[1 + _NONCE_LEN:],
                                      _aad(table, primary_key))
        except InvalidTag:
            raise StorageError(f"a {table} row does not decrypt: wrong key, or the data "
                               "was altered or moved") from None

    # -- transactions -----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError("the store is closed")
        return self._db

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE ... COMMIT``; rolled back if anything fails.

        Inside :meth:`transaction` it is a savepoint of the enclosing
        transaction instead: rolled back alone if it fails, committed with
        the enclosing one otherwise.
        """
        with self._lock, _sql_errors(what):
            db = self._conn()
            if self._depth and self._whole:  # the enclosing block rolls back as a whole
                try:
                    yield db
                except BaseException:
                    self._spoilt = True
                    raise
                return
            if self._depth:
                yield from self._savepoint(db)
                return
            db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def _savepoint(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A nested part of the open transaction (the caller holds the lock)."""
        if not db.in_transaction:  # SQLite rolled the enclosing one back (e.g. a full disk)
            raise StorageError("the enclosing transaction was rolled back")
        name = f"part{self._depth}"
        db.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield db
            db.execute(f"RELEASE {name}")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute(f"ROLLBACK TO {name}")
                    db.execute(f"RELEASE {name}")
            raise
        finally:
            self._depth -= 1

    @contextlib.contextmanager
    def transaction(self, *, parts: bool = True) -> Iterator[None]:
        """Make the writes of the ``with`` block one transaction: one commit (one
        set of fsyncs) for all of them, all or none of them after a crash.

        A write method called in the block that fails is rolled back alone
        and raises as usual; an exception leaving the block rolls every write
        of the block back. Blocks nest. The block holds the store's lock: it
        must not wait (no ``await``, no other thread's store call), and calls
        from other threads wait until it ends.

        ``parts=False``: the block is all or nothing -- its write methods open no
        savepoint of their own (two SQLite calls fewer each; the store writer's
        jobs), and once one of them failed the block keeps nothing, even if the
        error was caught inside it: it raises :class:`StorageError` at its end.

        :raises StorageError: the commit failed (nothing of the block is kept).
        """
        with self._transaction("cannot commit to the store"):
            whole, spoilt = self._whole, self._spoilt
            self._whole, self._spoilt = not parts or whole, False
            try:
                yield
                if self._spoilt:
                    raise StorageError("a write of the transaction failed: nothing of it "
                                       "is kept")
            finally:
                self._whole, self._spoilt = whole, spoilt

    # -- StateStore -----------------------------------------------------------------------------

    @_locked
    def load_identity(self) -> bytes | None:
        """The stored identity, or ``None`` if none was saved."""
        db = self._conn()
        with _sql_errors("cannot read the identity"):
            row = db.execute("SELECT data FROM identity WHERE id = 1").fetchone()
        if row is None:
            return None
        return self._open(row[0], "identity", _IDENTITY_PK)

    def save_identity(self, data: bytes) -> None:
        """Replace the identity, atomically."""
        blob = self._seal(data, "identity", _IDENTITY_PK)
        with self._transaction("cannot save the identity") as db:
            db.execute("INSERT INTO identity (id, data, updated_at) VALUES (1, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET data = excluded.data, "
                       "updated_at = excluded.updated_at", (blob, int(time.time())))

    @_locked
    def load_groups(self, on_error: Callable[[bytes, str, StorageError], None] | None = None
                    ) -> list[GroupRecord]:
        """Every stored group, ordered by group ID.

        A row that cannot be read (wrong types, does not decrypt) raises
        :class:`StorageError`; with ``on_error`` it is reported to it instead,
        as ``(group_id, room, error)``, and the other groups are returned.
        """
        db = self._conn()
        with _sql_errors("cannot read the groups"):
            rows = db.execute("SELECT g.group_id, g.room, g.state, p.last_stanza_id, "
                              "p.ratchets FROM groups g LEFT JOIN progress p "
                              "ON p.group_id = g.group_id ORDER BY g.group_id").fetchall()
        out = []
        for gid, room, state, last, ratchets in rows:
            try:
                if not isinstance(gid, bytes) or not isinstance(room, str) or not (
                        last is None or isinstance(last, str)):
                    raise StorageError("a groups row has columns of the wrong type")
                out.append(GroupRecord(
                    gid, room, self._open(state, "groups", gid), last,
                    None if ratchets is None else self._open(ratchets, _RATCHETS, gid)))
            except StorageError as e:
                if on_error is None:
                    raise
                on_error(gid if isinstance(gid, bytes) else b"",
                         room if isinstance(room, str) else "", e)
        return out

    def save_group(self, record: GroupRecord) -> None:
        """Insert or replace a group's record (state, ratchets, position), atomically."""
        gid = bytes(record.group_id)
        blob = self._seal(record.state, "groups", gid)
        ratchets = (None if record.ratchets is None
                    else self._seal(record.ratchets, _RATCHETS, gid))
        now = int(time.time())
        with self._transaction("cannot save the group") as db:
            db.execute("INSERT INTO groups (group_id, room, state, updated_at) "
                       "VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (group_id) DO UPDATE SET room = excluded.room, "
                       "state = excluded.state, updated_at = excluded.updated_at",
                       (gid, record.room, blob, now))
            self._set_progress(db, gid, ratchets, record.last_stanza_id, now)

    @staticmethod
    def _set_progress(db: sqlite3.Connection, gid: bytes, ratchets: bytes | None,
                      last_stanza_id: str | None, now: int) -> None:
        db.execute("INSERT INTO progress (group_id, ratchets, last_stanza_id, updated_at) "
                   "VALUES (?, ?, ?, ?) ON CONFLICT (group_id) DO UPDATE SET "
                   "ratchets = excluded.ratchets, last_stanza_id = excluded.last_stanza_id, "
                   "updated_at = excluded.updated_at", (gid, ratchets, last_stanza_id, now))

    def save_ratchets(self, group_id: bytes, ratchets: bytes,
                      last_stanza_id: str | None) -> None:
        """Replace a group's ratchets and archive position in one small transaction.

        Only for a group stored in two parts; nothing happens for an unknown group.
        """
        gid = bytes(group_id)
        blob = self._seal(ratchets, _RATCHETS, gid)
        with self._transaction("cannot save the ratchets") as db:
            if db.execute("UPDATE progress SET ratchets = ?, last_stanza_id = ?, updated_at = ? "
                          "WHERE group_id = ? AND ratchets IS NOT NULL",
                          (blob, last_stanza_id, int(time.time()), gid)).rowcount:
                return
            row = db.execute("SELECT ratchets IS NULL FROM progress WHERE group_id = ?",
                             (gid,)).fetchone()
            if row is not None:
                raise StorageError("the group is stored whole: save it with its ratchets first")

    def save_position(self, group_id: bytes, last_stanza_id: str | None) -> None:
        """Move a stored group's archive position; nothing happens for an unknown group."""
        with self._transaction("cannot save the archive position") as db:
            db.execute("UPDATE progress SET last_stanza_id = ?, updated_at = ? "
                       "WHERE group_id = ?", (last_stanza_id, int(time.time()), bytes(group_id)))

    def delete_group(self, group_id: bytes) -> None:
        """Forget a group and its outbox; its state is overwritten with zeros in the file."""
        with self._transaction("cannot delete the group") as db:
            db.execute("DELETE FROM groups WHERE group_id = ?", (bytes(group_id),))
            db.execute("DELETE FROM progress WHERE group_id = ?", (bytes(group_id),))
            db.execute("DELETE FROM outbox WHERE group_id = ?", (bytes(group_id),))
            db.execute("DELETE FROM extra WHERE owner = ?", (bytes(group_id),))

    @_locked
    def load_outbox(self, group_id: bytes) -> list[OutboxRecord]:
        """A group's outbox entries, in ``seq`` order.

        :raises StorageError: a row cannot be read (wrong types, does not decrypt).
        """
        gid = bytes(group_id)
        with _sql_errors("cannot read the outbox"):
            rows = self._conn().execute(
                "SELECT seq, message_id, content, sent_digest, sent_epoch FROM outbox "
                "WHERE group_id = ? ORDER BY seq", (gid,)).fetchall()
        out = []
        for seq, message_id, content, digest, epoch in rows:
            if not (isinstance(seq, int) and isinstance(message_id, str)
                    and (digest is None or isinstance(digest, bytes))
                    and (epoch is None or isinstance(epoch, int))):
                raise StorageError("an outbox row has columns of the wrong type")
            out.append(OutboxRecord(gid, seq, message_id,
                                    self._open(content, _OUTBOX, _outbox_pk(gid, seq)),
                                    digest, epoch))
        return out

    def save_outbox(self, record: OutboxRecord) -> None:
        """Insert or replace one outbox entry, atomically (its content sealed)."""
        gid = bytes(record.group_id)
        blob = self._seal(record.content, _OUTBOX, _outbox_pk(gid, record.seq))
        with self._transaction("cannot save the outbox entry") as db:
            db.execute("INSERT INTO outbox (group_id, seq, message_id, content, sent_digest,"
                       " updated_at, sent_epoch) VALUES (?, ?, ?, ?, ?, ?, ?)"
                       " ON CONFLICT (group_id, seq)"
                       " DO UPDATE SET message_id = excluded.message_id,"
                       " content = excluded.content, sent_digest = excluded.sent_digest,"
                       " updated_at = excluded.updated_at, sent_epoch = excluded.sent_epoch",
                       (gid, int(record.seq), record.message_id, blob,
                        None if record.sent_digest is None else bytes(record.sent_digest),
                        int(time.time()),
                        None if record.sent_epoch is None else int(record.sent_epoch)))

    def delete_outbox(self, group_id: bytes, seq: int) -> None:
        """Forget one outbox entry (its content is overwritten with zeros in the file)."""
        with self._transaction("cannot delete the outbox entry") as db:
            db.execute("DELETE FROM outbox WHERE group_id = ? AND seq = ?",
                       (bytes(group_id), int(seq)))

    @_locked
    def load_extra(self, owner: bytes, name: str) -> bytes | None:
        """A small record of another module (see :meth:`StateStore.load_extra`)."""
        with _sql_errors("cannot read a record"):
            row = self._conn().execute("SELECT value FROM extra WHERE owner = ? AND name = ?",
                                       (bytes(owner), name)).fetchone()
        if row is None:
            return None
        return self._open(row[0], _EXTRA, _extra_pk(owner, name))

    def save_extra(self, owner: bytes, name: str, value: bytes | None) -> None:
        """Insert, replace or (``None``) delete a small record, its value sealed."""
        with self._transaction("cannot save a record") as db:
            if value is None:
                db.execute("DELETE FROM extra WHERE owner = ? AND name = ?",
                           (bytes(owner), name))
                return
            db.execute("INSERT INTO extra (owner, name, value, updated_at) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT (owner, name) DO UPDATE SET value = excluded.value,"
                       " updated_at = excluded.updated_at",
                       (bytes(owner), name, self._seal(value, _EXTRA, _extra_pk(owner, name)),
                        int(time.time())))

    @_locked
    def load_inbox_position(self) -> str | None:
        """How far the account's own archive was read for Welcomes, or ``None``."""
        db = self._conn()
        with _sql_errors("cannot read the inbox position"):
            row = db.execute("SELECT value FROM meta WHERE name = 'inbox_position'").fetchone()
        if row is None:
            return None
        if not isinstance(row[0], bytes):
            raise StorageError("the inbox position is not a BLOB")
        try:
            return row[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError("the inbox position is not UTF-8") from exc

    def save_inbox_position(self, archive_id: str | None) -> None:
        """Record (or, with ``None``, forget) how far the account's archive was read."""
        with self._transaction("cannot save the inbox position") as db:
            if archive_id is None:
                db.execute("DELETE FROM meta WHERE name = 'inbox_position'")
            else:
                db.execute("INSERT INTO meta (name, value) VALUES ('inbox_position', ?) "
                           "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                           (archive_id.encode("utf-8"),))

    @_locked
    def load_trust(self) -> list[TrustRecord]:
        """Every record of the device trust store."""
        db = self._conn()
        with _sql_errors("cannot read the trust store"):
            rows = db.execute("SELECT jid, fingerprint, device, state, first_seen, current "
                              "FROM trust").fetchall()
        out = []
        for jid, fp, device, state, first_seen, current in rows:
            if not (isinstance(jid, str) and isinstance(fp, str) and isinstance(device, str)
                    and isinstance(state, str) and isinstance(first_seen, int)):
                raise StorageError("a trust record has columns of the wrong type")
            out.append(TrustRecord(jid, fp, device, state, first_seen, bool(current)))
        return out

    def save_trust(self, records: Sequence[TrustRecord]) -> None:
        """Insert or replace trust records, all in one transaction."""
        with self._transaction("cannot save trust records") as db:
            db.executemany(
                "INSERT INTO trust (jid, fingerprint, device, state, first_seen, current)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (jid, fingerprint) DO UPDATE SET"
                " device = excluded.device, state = excluded.state,"
                " current = excluded.current",
                [(r.jid, r.fingerprint, r.device, r.state, int(r.first_seen), int(r.current))
                 for r in records])

    @_locked
    def close(self) -> None:
        """Close the connection; later calls raise :class:`StorageError`. Idempotent."""
        db, self._db = self._db, None
        if db is not None:
            with _sql_errors("cannot close the store"):
                db.close()

    # -- extras ------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    @_locked
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the open database."""
        with _sql_errors("cannot read the schema version"):
            version = _pragma(self._conn(), "user_version")
        if not isinstance(version, int):
            raise StorageError("cannot read the schema version")
        return version

    @_locked
    def check_integrity(self) -> None:
        """Run ``PRAGMA integrity_check``; :class:`StorageError` unless it says ``ok``."""
        with _sql_errors("cannot check the store's integrity"):
            rows = self._conn().execute("PRAGMA integrity_check").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            raise StorageError("integrity check failed: "
                               + "; ".join(str(r[0]) for r in rows[:10]))

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
