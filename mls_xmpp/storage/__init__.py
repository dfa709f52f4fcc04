"""Persistent state: a typed store interface, a memory store, and (later) SQLite."""

from .base import GroupRecord, StateStore
from .memory import MemoryStore

__all__ = ["GroupRecord", "MemoryStore", "StateStore"]
