"""An in-memory :class:`~mls_xmpp.storage.base.StateStore` (tests, ephemeral bots)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from .base import GroupRecord, OutboxRecord, TrustRecord
from .errors import StorageError


class MemoryStore:
    """Keeps everything in dictionaries; nothing survives the process."""

    def __init__(self) -> None:
        self._identity: bytes | None = None
        self._groups: dict[bytes, GroupRecord] = {}
        self._inbox: str | None = None
        self._trust: dict[tuple[str, str], TrustRecord] = {}
        self._outbox: dict[tuple[bytes, int], OutboxRecord] = {}
        self._extra: dict[tuple[bytes, str], bytes] = {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes of the block (as :meth:`SQLiteStore.transaction
        <mls_xmpp.storage.sqlite.SQLiteStore.transaction>`); nothing to commit here."""
        yield

    def load_identity(self) -> bytes | None:
        """The stored identity, if any."""
        return self._identity

    def save_identity(self, data: bytes) -> None:
        """Replace the identity."""
        self._identity = data

    def load_groups(self, on_error: Callable[[bytes, str, StorageError], None] | None = None
                    ) -> list[GroupRecord]:
        """Every stored group (none is ever unreadable here; ``on_error`` is not called)."""
        return list(self._groups.values())

    def save_group(self, record: GroupRecord) -> None:
        """Insert or replace a group's record."""
        self._groups[record.group_id] = record

    def save_position(self, group_id: bytes, last_stanza_id: str | None) -> None:
        """Move a stored group's archive position."""
        from dataclasses import replace

        record = self._groups.get(group_id)
        if record is not None:
            self._groups[group_id] = replace(record, last_stanza_id=last_stanza_id)

    def save_ratchets(self, group_id: bytes, ratchets: bytes,
                      last_stanza_id: str | None) -> None:
        """Replace a stored group's ratchets and position."""
        from dataclasses import replace

        record = self._groups.get(group_id)
        if record is not None:
            if record.ratchets is None:
                raise StorageError("the group was stored whole, without ratchets")
            self._groups[group_id] = replace(record, ratchets=ratchets,
                                             last_stanza_id=last_stanza_id)

    def delete_group(self, group_id: bytes) -> None:
        """Forget a group and its outbox."""
        self._groups.pop(group_id, None)
        for key in [k for k in self._outbox if k[0] == group_id]:
            del self._outbox[key]
        for xkey in [k for k in self._extra if k[0] == group_id]:
            del self._extra[xkey]

    def load_extra(self, owner: bytes, name: str) -> bytes | None:
        """A small record of another module, or ``None``."""
        return self._extra.get((bytes(owner), name))

    def save_extra(self, owner: bytes, name: str, value: bytes | None) -> None:
        """Insert, replace or (``None``) delete a small record."""
        if value is None:
            self._extra.pop((bytes(owner), name), None)
        else:
            self._extra[(bytes(owner), name)] = bytes(value)

    def load_inbox_position(self) -> str | None:
        """How far the account's archive was read for Welcomes."""
        return self._inbox

    def save_inbox_position(self, archive_id: str | None) -> None:
        """Record how far the account's archive was read for Welcomes."""
        self._inbox = archive_id

    def load_trust(self) -> list[TrustRecord]:
        """Every trust record."""
        return list(self._trust.values())

    def save_trust(self, records: Sequence[TrustRecord]) -> None:
        """Insert or replace trust records."""
        for record in records:
            self._trust[(record.jid, record.fingerprint)] = record

    def load_outbox(self, group_id: bytes) -> list[OutboxRecord]:
        """A group's outbox, in ``seq`` order."""
        return sorted((r for (g, _), r in self._outbox.items() if g == group_id),
                      key=lambda r: r.seq)

    def save_outbox(self, record: OutboxRecord) -> None:
        """Insert or replace an outbox entry."""
        self._outbox[(record.group_id, record.seq)] = record

    def delete_outbox(self, group_id: bytes, seq: int) -> None:
        """Forget an outbox entry."""
        self._outbox.pop((group_id, seq), None)

    def close(self) -> None:
        """Nothing to release."""
