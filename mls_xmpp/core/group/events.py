"""What processing a message yields: typed, frozen events."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..messages.credentials import Credential
from ..messages.framing import Sender
from ..messages.proposals import Proposal, ReInit


@dataclass(frozen=True)
class Member:
    """A member of the group as the roster shows it."""

    leaf_index: int
    credential: Credential
    signature_key: bytes


@dataclass(frozen=True)
class ApplicationMessage:
    """Application data from a member, decrypted and authenticated."""

    epoch: int
    sender: Member
    data: bytes
    authenticated_data: bytes = b""


@dataclass(frozen=True)
class ProposalReceived:
    """A valid proposal, cached for a later Commit of this epoch."""

    epoch: int
    sender: Sender
    proposal: Proposal
    ref: bytes


@dataclass(frozen=True)
class CommitApplied:
    """A Commit moved the group to ``epoch``.

    ``own`` is true when it was this member's pending commit; ``lost`` holds
    what this member had proposed or wanted to commit and that the winning
    Commit did not include (for the caller to propose again).
    """

    epoch: int
    committer: Sender
    added: tuple[Member, ...] = ()
    removed: tuple[Member, ...] = ()
    updated: tuple[Member, ...] = ()
    psks: int = 0
    reinit: ReInit | None = None
    own: bool = False
    self_removed: bool = False
    lost: tuple[Proposal, ...] = field(default_factory=tuple)
    #: every proposal the Commit applied, in order
    proposals: tuple[Proposal, ...] = field(default_factory=tuple)
    #: the Commit's authenticated_data (RFC 9420 §6): the committer's, unencrypted
    #: in a PublicMessage, authenticated either way. Informative (not compared; an
    #: own Commit restored from storage before its echo has ``b""``)
    authenticated_data: bytes = field(default=b"", compare=False)
    #: whether the Commit carried an UpdatePath: the committer's leaf got fresh keys
    #: (informative, not compared; ``False`` for an own Commit restored from storage)
    path: bool = field(default=False, compare=False)


Event = ApplicationMessage | ProposalReceived | CommitApplied
