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
    """``mls_error``: input that was dropped, and why; group state is unchanged."""

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
