"""Errors of the storage layer."""

from __future__ import annotations

from ..core.errors import MLSError


class StorageError(MLSError):
    """The persistent store cannot be read or written as asked.

    Raised for a wrong encryption key, a store encrypted with a key when none
    was given (or the reverse), a corrupted or tampered record, a database
    written by a newer version of this code, and any underlying SQLite
    failure (disk full, locked, not a database).
    """
