"""Payloads of the slixmpp events the plugin raises (``mls_*``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
            ``body``, ``attachments`` (fetch each with ``xmpp.plugin["mls"].download()``),
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
class InvitationEvent:
    """``mls_invitation``: someone who is not a contact invites this device into a group.

    Raised only with the option ``invitations`` set to ``"ask"``, for a
    Welcome meant for this device whose sender is not a roster contact with a
    mutual subscription. Nothing of the Welcome has been decrypted or
    downloaded, and no KeyPackage used. Call :meth:`accept` or
    :meth:`decline`; an invitation left undecided for
    ``invitation_timeout`` seconds is dropped and reported (``mls_error``).
    Pending invitations are kept in memory only: after a restart they are gone.

    ``inviter`` is the stanza's sender, which a server could forge; ``room``
    is the room the Welcome names (not authenticated before it is accepted).

    Attributes:
        inviter: the bare JID that sent the Welcome.
        room: the group's room JID, as the Welcome's envelope names it.
        group_id: the group ID the envelope names.
        expires_in: seconds the invitation waits for a decision.
    """

    inviter: str
    room: str
    group_id: bytes
    expires_in: float
    decide: Callable[[bool], Awaitable[GroupSession | None]] = field(
        repr=False, compare=False)

    async def accept(self) -> GroupSession:
        """Join the group (the Welcome is opened now); ``mls_joined`` follows as usual.

        :raises LocalUsageError: the invitation was decided already, expired, or
            cannot be used any more (its KeyPackage is gone).
        :raises RemoteProtocolError: the Welcome is invalid (also an
            :class:`~mls_xmpp.xmpp.errors.InvitationRefusedError` when its
            GroupInfo is not signed by the inviter).
        :raises TransportError: the ratchet tree could not be downloaded.
        """
        session = await self.decide(True)
        assert session is not None
        return session

    async def decline(self) -> None:
        """Drop the invitation: nothing is joined, the KeyPackage stays usable.

        :raises LocalUsageError: the invitation was decided already, or expired.
        """
        await self.decide(False)


@dataclass(frozen=True)
class ResyncEvent:
    """``mls_resynced``: this device had fallen behind its group and caught up again.

    An epoch gap was noticed (a GroupInfo of a later epoch signed by a member,
    or repeated messages of later epochs, see docs/PROTOCOL.md §12) and healed:
    by reading the room archive again (``how == "archive"``: a Commit the
    device had missed), or by an external Commit that replaced this device's
    leaf (``how == "external commit"``). After an external Commit, messages
    of the epochs in between cannot be read by this device; they were reported
    as ``mls_error``.

    Attributes:
        group: the group.
        from_epoch: the epoch the device was stuck in.
        epoch: the epoch it is in now.
        how: ``"archive"`` or ``"external commit"``.
        reason: a human-readable explanation.
        seconds: how long the healing took (from its start).
    """

    group: GroupSession
    from_epoch: int
    epoch: int
    how: str
    reason: str
    seconds: float = 0.0


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


@dataclass(frozen=True)
class ReInitEvent:
    """``mls_reinit``: a group moves to a new group by ReInit (RFC 9420 §11.2).

    Raised at each stage: ``committed`` (a ReInit Commit closed ``group``;
    ``committer`` made it), ``moved`` (this device made the ReInit and the
    new group, ``new_group``; ``stranded`` lists the ``(jid, fingerprint)`` of
    member devices that cannot follow it -- no KeyPackage of the new suite),
    ``followed`` (this device is in ``new_group``, the successor; the old
    group's state is deleted).

    Attributes:
        group: the old, closed group (its handle raises ``GroupClosedError``).
        stage: ``committed``, ``moved`` or ``followed``.
        group_id: the new group's ID.
        room: the new group's room.
        cipher_suite: the new group's cipher suite.
        version: the new group's MLS protocol version.
        committer: bare JID of the member who committed the ReInit, if known.
        new_group: the new group's handle, once this device is in it.
        stranded: member devices that cannot follow (``moved`` only).
    """

    group: GroupSession
    stage: str
    group_id: bytes
    room: str
    cipher_suite: int
    version: int
    committer: str | None = None
    new_group: GroupSession | None = None
    stranded: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IdleRemovalEvent:
    """``mls_idle_removed``: a Commit removed devices whose keys had not changed for a
    long time (:mod:`.freshness`); raised on every member, the removed devices too.

    The reason comes from the Commit's authenticated_data, which its committer
    wrote; the Commit itself was valid because the group rules allow its
    committer to remove others, whatever the reason says.

    Attributes:
        group: the group.
        epoch: the epoch the Commit began.
        committer: the bare JID of the device that removed them.
        removed: ``(jid, fingerprint, last_update_epoch, idle_seconds)`` of each
            removed device, as the committer recorded them.
        self_removed: this device is one of them (it is out of the group;
            ``mls_removed`` follows).
        disputed: fingerprints of removed devices that this device saw
            updated in a later epoch than the notice says: the committer's
            record (or its honesty) is in doubt. Local knowledge: a warning,
            the removal stands.
    """

    group: GroupSession
    epoch: int
    committer: str | None
    removed: tuple[tuple[str, str, int, int], ...]
    self_removed: bool = False
    disputed: tuple[str, ...] = ()
