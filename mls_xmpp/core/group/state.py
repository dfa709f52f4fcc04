"""The state of a group member in one epoch, and what it keeps of past epochs.

:class:`EpochState` is replaced, never edited, when the epoch changes: a
Commit is applied to copies and the new state is swapped in only when every
check passed (so a message that fails leaves the old state exactly as it
was). The one thing edited in place is the secret tree, and only after a
message decrypted and verified (keys are then deleted for forward secrecy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..messages.common import SenderType
from ..messages.extensions import RequiredCapabilities, find_extension
from ..messages.framing import Sender
from ..messages.group_info import GroupContext
from ..messages.leaf_node import LeafNode
from ..messages.proposals import Proposal
from ..schedule.key_schedule import EpochSecrets
from ..tree.ratchet_tree import RatchetTree
from ..tree.secret_tree import SecretTree
from ..tree.treekem import TreePrivateKeys

if TYPE_CHECKING:
    from ..crypto import CipherSuite


@dataclass(frozen=True)
class CachedProposal:
    """A proposal received (or sent) in the current epoch, by its ProposalRef."""

    ref: bytes
    proposal: Proposal
    sender: Sender


@dataclass
class PastEpoch:
    """What is kept of an earlier epoch to read late application messages (§14)."""

    epoch: int
    secret_tree: SecretTree
    sender_data_secret: bytes
    tree: RatchetTree
    context: bytes


@dataclass
class EpochState:
    """Everything a member holds in the current epoch."""

    suite: CipherSuite
    context: GroupContext
    tree: RatchetTree
    keys: TreePrivateKeys
    own_leaf: int
    signature_private_key: bytes
    secrets: EpochSecrets
    secret_tree: SecretTree
    interim_transcript_hash: bytes
    confirmation_tag: bytes
    #: proposals of this epoch by ProposalRef, in arrival order
    proposals: dict[bytes, CachedProposal] = field(default_factory=dict)
    #: resumption_psk of recent epochs (this one included), for resumption PSKs
    resumption_psks: dict[int, bytes] = field(default_factory=dict)
    #: set once a Commit with a ReInit was applied: the group is closed
    reinit: Proposal | None = None
    #: False once this member has been removed
    active: bool = True

    @property
    def epoch(self) -> int:
        """The epoch number."""
        return self.context.epoch

    @property
    def group_id(self) -> bytes:
        """The group ID."""
        return self.context.group_id

    def context_bytes(self) -> bytes:
        """The encoded GroupContext (used as signing and HPKE context)."""
        return self.context.encode()

    def own_leaf_node(self) -> LeafNode:
        """This member's LeafNode."""
        leaf = self.tree.leaf(self.own_leaf)
        assert leaf is not None
        return leaf

    def required_capabilities(self) -> RequiredCapabilities | None:
        """The group's required_capabilities extension, if any."""
        data = find_extension(self.context.extensions, 3)
        return None if data is None else RequiredCapabilities.decode(data)

    def sender_leaf(self, sender: Sender) -> LeafNode | None:
        """The LeafNode of a member sender, or ``None``."""
        if sender.sender_type != SenderType.MEMBER or sender.index >= self.tree.n_leaves:
            return None
        return self.tree.leaf(sender.index)
