"""Payloads of the slixmpp events the plugin raises (``mls_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import GroupSession


@dataclass(frozen=True)
class MLSMessageEvent:
    """``mls_message``: decrypted application content from a group member.

    ``sender`` is the bare JID from the sender's MLS credential (not from
    the stanza, which the server could forge); ``device`` is the sender's
    signature-key fingerprint.

    Attributes:
        group: the group the message came through.
        sender: the sender's bare JID, from its MLS credential.
        device: the sender device's fingerprint (the first 16 bytes of the
            SHA-256 of its signature key, hex in groups of 8), as in
            :attr:`.GroupSession.members`.
        body: the text (``content.body``).
        epoch: the epoch the message was encrypted in.
        content: the whole decrypted :class:`~mls_xmpp.xmpp.envelope.Content`:
            ``body``, ``attachments`` (fetch each with ``xmpp["mls"].download()``),
            ``message_id``, ``thread_id``, ``reply_to``, ``timestamp_ms``.
        stanza_id: the room's stanza-id of the message (XEP-0359), if any.
    """

    group: GroupSession
    sender: str
    device: str
    body: str
    epoch: int
    content: Any = None
    stanza_id: str | None = None


@dataclass(frozen=True)
class MembershipEvent:
    """``mls_membership``: a Commit changed the roster (or just the keys).

    ``added``, ``removed`` and ``updated`` are bare JIDs; ``added_devices``
    and ``removed_devices`` the ``(jid, fingerprint)`` of each device (leaf),
    so an application can tell a user's *new device* from a new user.

    Attributes:
        group: the group whose epoch changed.
        epoch: the new epoch.
        committer: bare JID of the member who committed (of the joiner, for
            an external Commit); ``None`` when unknown.
        added: bare JIDs with a device added.
        removed: bare JIDs with a device removed.
        updated: bare JIDs whose device updated its keys.
        own: the Commit was this device's.
        added_devices: ``(jid, fingerprint)`` of every added device.
        removed_devices: ``(jid, fingerprint)`` of every removed device.
    """

    group: GroupSession
    epoch: int
    committer: str | None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    own: bool = False
    added_devices: tuple[tuple[str, str], ...] = ()
    removed_devices: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MLSErrorEvent:
    """``mls_error``: input that was dropped, and why; group state is unchanged.

    Also raised when a background task failed (resuming a group at start-up,
    KeyPackage upkeep, a Welcome or an affiliation after a Commit).

    Attributes:
        reason: a human-readable explanation.
        group: the group concerned, if any.
        sender: who sent the dropped input (a JID as the server gave it), if known.
        stanza_id: the dropped stanza's stanza-id, if any.
        error: the exception, usually an :class:`~mls_xmpp.core.errors.MLSError`.
    """

    reason: str
    group: GroupSession | None = None
    sender: str | None = None
    stanza_id: str | None = None
    error: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ProgressEvent:
    """``mls_progress``: how far a long operation (adding many members) has come.

    ``operation`` is ``"add"`` (also for a group created with members);
    ``stage`` one of :data:`STAGES`, in that order. Each stage reports
    ``done == 0`` when it starts and ``done == total`` when it ends, with at
    most about a hundred reports in between. Many additions are made in
    several Commits (``batches``); the stages after "key packages" then run
    once per Commit, ``batch`` counting from 1.

    Attributes:
        group: the group (``None`` while a new group's members are fetched).
        operation: ``"add"``.
        stage: one of :data:`STAGES`.
        done: how much of this stage is done.
        total: how much there is of it.
        batch: the Commit this report belongs to, from 1.
        batches: how many Commits the addition takes.
    """

    group: GroupSession | None
    operation: str
    stage: str
    done: int
    total: int
    batch: int = 1
    batches: int = 1


#: The stages of adding members, in order.
STAGES = ("key packages", "commit", "room", "affiliations", "welcomes")


@dataclass(frozen=True)
class OutboxEvent:
    """``mls_outbox``: a message ``send()`` accepted changed state (:mod:`.outbox`).

    Attributes:
        group: the group it is for.
        message_id: the id ``send()`` returned.
        state: ``queued`` (stored, waiting for the stream or the group),
            ``sent`` (encrypted and handed to the stream), ``reflected`` (the
            room sent it back: delivered to the group, in the room's order) or
            ``failed`` (given up; ``error`` says why).
        stanza_id: the room's stanza-id, for ``reflected``.
        error: why it failed, for ``failed``.
    """

    group: GroupSession
    message_id: str
    state: str
    stanza_id: str | None = None
    error: BaseException | None = field(default=None, compare=False)
