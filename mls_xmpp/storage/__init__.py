"""Persistent state: a typed store interface, a memory store, and a SQLite store."""

from .base import GroupRecord, OutboxRecord, StateStore, TrustRecord
from .errors import StorageError
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["GroupRecord", "MemoryStore", "OutboxRecord", "SQLiteStore", "StateStore",
           "StorageError", "TrustRecord"]
