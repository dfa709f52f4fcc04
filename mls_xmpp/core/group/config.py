"""Group configuration and the application's policy hook (RFC 9420 §12.2, §16.11)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..crypto.batch import SERIAL, BatchCrypto
from ..messages.validation import CredentialValidator, accept_any_credential
from .identity import SuccessorValidator, same_identity

if TYPE_CHECKING:
    from ..messages.framing import Sender
    from ..messages.leaf_node import LeafNode
    from ..messages.proposals import Proposal
    from .state import EpochState


class Policy:
    """Application policy, applied identically by every member.

    Override the methods and raise :class:`~mls_xmpp.core.errors.PolicyError`
    to refuse. The default allows everything RFC 9420 allows.
    """

    def check_proposal(self, state: EpochState, proposal: Proposal, sender: Sender) -> None:
        """Called for each proposal received or committed (read ``state`` only)."""

    def check_commit(self, state: EpochState, committer: Sender,
                     proposals: list[tuple[Proposal, Sender]]) -> None:
        """Called for each Commit before it is applied (read ``state`` only)."""

    def check_external_join(self, state: EpochState, leaf_node: LeafNode) -> None:
        """Called for an external Commit with the joiner's new leaf (read ``state`` only)."""


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class GroupConfig:
    """How a member runs a group. Defaults are the safe ones.

    Attributes:
        handshake_private: send proposals and commits as PrivateMessage.
        pad_to: pad PrivateMessage content to a multiple of this many bytes.
        past_epochs: how many earlier epochs keep their secret tree to read
            late application messages (older secrets are deleted).
        out_of_order_window: skipped message keys kept per sender ratchet.
        max_generation_gap: how far ahead of a ratchet a message may be.
        resumption_psk_epochs: how many recent epochs keep their resumption_psk
            (for resumption PSKs, RFC 9420 §8.6).
        ratchet_tree_in_welcome: put the ratchet_tree extension in GroupInfo
            inside Welcome messages (turn off to supply the tree out of band).
        policy: the application's rules for proposals and commits.
        credential_validator: the Authentication Service (RFC 9420 §5.3.1).
        successor_validator: the Authentication Service's check that a leaf
            replacing another (Update, UpdatePath, external resync) names
            the same client (§5.3.1); it must be the same on every member.
        clock: seconds since the Unix epoch (lifetime checks).
        rng: random bytes.
        batch_crypto: computes the large batches of signature verifications and
            HPKE encryptions (bulk adds, joins, the first update after a bulk
            add). The default computes them serially in the calling thread; an
            application that wants more cores passes its own, for example a
            :class:`mls_xmpp.workers.WorkerPool` (see
            :mod:`mls_xmpp.core.crypto.batch`). Results never depend on it.
    """

    handshake_private: bool = True
    pad_to: int = 32
    past_epochs: int = 3
    out_of_order_window: int = 128
    max_generation_gap: int = 1000
    resumption_psk_epochs: int = 100
    ratchet_tree_in_welcome: bool = True
    policy: Policy = field(default_factory=Policy)
    credential_validator: CredentialValidator = accept_any_credential
    successor_validator: SuccessorValidator = same_identity
    clock: Callable[[], int] = _now
    rng: Callable[[int], bytes] = os.urandom
    batch_crypto: BatchCrypto = SERIAL
