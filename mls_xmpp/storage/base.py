"""The storage seam between the XMPP plugin and a persistent store.

The plugin writes through this interface after every change that must
survive a restart: one :meth:`StateStore.save_group` per processed message or
epoch change, carrying the serialised group *and* the position in the room
archive, so that both move together (atomically, in stores that can).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import StorageError


@dataclass(frozen=True)
class GroupRecord:
    """What is stored per group.

    Attributes:
        group_id: the MLS group ID.
        room: the MUC room JID that carries the group.
        state: the serialised :class:`~mls_xmpp.core.group.group.Group`:
            the whole state (``encode_group``) when ``ratchets`` is ``None``,
            else its base part (``encode_group_parts``).
        last_stanza_id: stanza-id of the last room message processed.
        ratchets: the secret trees (``encode_ratchets``) that go with a base
            ``state``, or ``None``.
    """

    group_id: bytes
    room: str
    state: bytes
    last_stanza_id: str | None = None
    ratchets: bytes | None = None


@dataclass(frozen=True)
class TrustRecord:
    """One signature key of one device, as the account's trust store keeps it.

    Attributes:
        jid: the device's bare JID.
        fingerprint: the key's fingerprint (:func:`mls_xmpp.xmpp.trust.fingerprint`).
        device: the device name (its leaves' application_id), ``""`` when none.
        state: ``new``, ``trusted``, ``verified`` or ``distrusted``.
        first_seen: when the key was first seen (seconds since the Unix epoch).
        current: ``False`` once the device showed another key.
    """

    jid: str
    fingerprint: str
    device: str
    state: str
    first_seen: int
    current: bool = True


@dataclass(frozen=True)
class OutboxRecord:
    """A message :meth:`~mls_xmpp.xmpp.session.GroupSession.send` accepted and the
    room has not reflected yet (see :mod:`mls_xmpp.xmpp.outbox`).

    Attributes:
        group_id: the group it is for.
        seq: its place in the group's outbox (sent in this order).
        message_id: the id ``send`` returned (``Content.message_id``).
        content: the encoded application ``Content`` -- the plaintext, encrypted
            only when it is sent, in the epoch of that moment.
        sent_digest: SHA-256 of the MLSMessage of the last attempt to send it,
            ``None`` while it is queued; the room's reflection of that message
            ends the entry.
        sent_epoch: the epoch that attempt was encrypted in (``None`` while
            queued): a reflection the room took too late to be read -- even
            after a restart -- is told by it (:mod:`mls_xmpp.xmpp.late`).
    """

    group_id: bytes
    seq: int
    message_id: str
    content: bytes
    sent_digest: bytes | None = None
    sent_epoch: int | None = None


class StateStore(Protocol):
    """A device's persistent state: its identity and its groups.

    A store may also have ``transaction()``, a context manager making the
    writes of its block one atomic commit (as :class:`SQLiteStore
    <mls_xmpp.storage.sqlite.SQLiteStore>` and :class:`MemoryStore
    <mls_xmpp.storage.memory.MemoryStore>` do): the plugin then groups the
    writes made for one message. Without it, each write is its own.
    """

    def load_identity(self) -> bytes | None:
        """The serialised client identity, or ``None`` for a new device."""

    def save_identity(self, data: bytes) -> None:
        """Replace the serialised client identity."""

    def load_groups(self, on_error: Callable[[bytes, str, StorageError], None] | None = None
                    ) -> list[GroupRecord]:
        """Every stored group.

        A group that cannot be read raises :class:`StorageError`, unless
        ``on_error`` is given: then it is reported to it (group ID, room,
        error) and skipped, and the others are returned.
        """

    def save_group(self, record: GroupRecord) -> None:
        """Insert or replace one group's record in a single atomic write."""

    def save_position(self, group_id: bytes, last_stanza_id: str | None) -> None:
        """Record only a group's archive position (its state did not change)."""

    def save_ratchets(self, group_id: bytes, ratchets: bytes,
                      last_stanza_id: str | None) -> None:
        """Replace a stored group's ratchets and position together (the base is unchanged).

        Only for a group saved with ``ratchets``; nothing happens for an unknown group.
        """

    def delete_group(self, group_id: bytes) -> None:
        """Forget a group (left, removed, or replaced by a rejoin), its outbox and its
        extra records."""

    def load_extra(self, owner: bytes, name: str) -> bytes | None:
        """A small record another module keeps (``owner``: a group ID, whose records
        :meth:`delete_group` deletes, or ``b""`` for the account), or ``None``."""

    def save_extra(self, owner: bytes, name: str, value: bytes | None) -> None:
        """Insert or replace a small record; ``None`` deletes it (from the file too)."""

    def load_inbox_position(self) -> str | None:
        """The last message of the account's own archive read for Welcomes, or ``None``."""

    def save_inbox_position(self, archive_id: str | None) -> None:
        """Record how far the account's own archive was read for Welcomes."""

    def load_trust(self) -> list[TrustRecord]:
        """Every record of the account's device trust store."""

    def save_trust(self, records: Sequence[TrustRecord]) -> None:
        """Insert or replace these records (by ``(jid, fingerprint)``) in one write."""

    def load_outbox(self, group_id: bytes) -> list[OutboxRecord]:
        """A group's outbox, in ``seq`` order."""

    def save_outbox(self, record: OutboxRecord) -> None:
        """Insert or replace one outbox entry (by ``(group_id, seq)``)."""

    def delete_outbox(self, group_id: bytes, seq: int) -> None:
        """Forget one outbox entry (reflected by the room, or given up)."""

    def close(self) -> None:
        """Release the store."""
