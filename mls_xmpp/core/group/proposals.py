"""Proposal validation (RFC 9420 §12.1, §12.2) and application (§12.3).

:func:`apply_proposals` checks a committed list of proposals and applies it
to a copy of the tree; the caller's state is never touched. Creating and
processing a Commit both go through it, so committer and receivers apply
exactly the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PolicyError, ValidationError
from ..messages.common import LeafNodeSource, ProtocolVersion, SenderType
from ..messages.extensions import (
    EXTERNAL_SENDERS,
    Extensions,
    ExternalSender,
    RequiredCapabilities,
    check_unique,
    find_extension,
)
from ..messages.framing import Sender
from ..messages.key_package import KeyPackage
from ..messages.leaf_node import LeafNode
from ..messages.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ReInit,
    Remove,
    Update,
)
from ..messages.validation import (
    LeafContext,
    validate_leaf_node,
)
from ..schedule.psk import PreSharedKeyID, PSKType, ResumptionPSKUsage
from ..tree.ratchet_tree import RatchetTree
from .adds import add_key_packages
from .config import GroupConfig
from .state import EpochState

#: Proposal types that need an UpdatePath in the Commit (§12.4).
PATH_REQUIRED = (Update, Remove, ExternalInit, GroupContextExtensions)
#: Proposal types an ``external`` sender may send (§12.1.8).
EXTERNAL_SENDER_TYPES = (Add, Remove, PreSharedKey, ReInit, GroupContextExtensions)


class _TreeSignatureKeys:
    """``key in ...`` against the signature keys of a tree, minus some leaves."""

    def __init__(self, tree: RatchetTree, ignore: frozenset[int] = frozenset()) -> None:
        self.tree, self.ignore = tree, ignore

    def __contains__(self, key: object) -> bool:
        i = self.tree.find_signature_key(key) if isinstance(key, bytes) else None
        return i is not None and i not in self.ignore


class _TreeEncryptionKeys:
    """``key in ...`` against every encryption key of a tree, minus some nodes."""

    def __init__(self, tree: RatchetTree, ignore: frozenset[int] = frozenset()) -> None:
        self.tree, self.ignore = tree, ignore

    def __contains__(self, key: object) -> bool:
        x = self.tree.find_encryption_key(key) if isinstance(key, bytes) else None
        return x is not None and x not in self.ignore


def leaf_context(state: EpochState, tree: RatchetTree, extensions: Extensions,
                 ignore_leaves: frozenset[int] = frozenset()) -> LeafContext:
    """The LeafContext for checking a leaf against ``tree`` (§7.3)."""
    rc_data = find_extension(extensions, 3)
    in_use, supported = tree.credential_types(ignore_leaves)
    return LeafContext(
        cipher_suite=state.suite.id,
        required_capabilities=None if rc_data is None else RequiredCapabilities.decode(rc_data),
        member_credential_types=in_use,
        member_supported_credentials=supported,
        signature_keys=_TreeSignatureKeys(tree, ignore_leaves),
        encryption_keys=_TreeEncryptionKeys(tree, frozenset(2 * i for i in ignore_leaves)))


def external_senders(extensions: Extensions) -> tuple[ExternalSender, ...]:
    """The group's external_senders extension (§12.1.8.1), or ``()``."""
    data = find_extension(extensions, 5)
    return () if data is None else EXTERNAL_SENDERS.decode(data)


def check_proposal_sender(state: EpochState, proposal: Proposal, sender: Sender) -> None:
    """Who may send which proposal (§12.1.8, §12.4.3.2)."""
    st = sender.sender_type
    if st == SenderType.MEMBER:
        if state.tree.n_leaves <= sender.index or state.tree.leaf(sender.index) is None:
            raise ValidationError(f"proposal from blank or unknown leaf {sender.index} (§12.1)")
        if isinstance(proposal, ExternalInit):
            raise ValidationError("ExternalInit is only valid in an external Commit (§12.1.6)")
    elif st == SenderType.EXTERNAL:
        if sender.index >= len(external_senders(state.context.extensions)):
            raise ValidationError(f"unknown external sender {sender.index} (§12.1.8.1)")
        if not isinstance(proposal, EXTERNAL_SENDER_TYPES):
            raise ValidationError(f"an external sender may not send {type(proposal).__name__}"
                                  " (§12.1.8)")
    elif st == SenderType.NEW_MEMBER_PROPOSAL:
        if not isinstance(proposal, Add):
            raise ValidationError("new_member_proposal senders may only propose Add (§12.1.8)")
    else:
        raise ValidationError("new_member_commit senders do not send proposals (§12.1.8)")


def check_psk_id(state: EpochState, psk: PreSharedKeyID, *, reinit_ok: bool = False) -> None:
    """A PreSharedKey proposal's own rules (§12.1.4)."""
    if len(psk.psk_nonce) != state.suite.hash_len:
        raise ValidationError("psk_nonce must be KDF.Nh bytes (§12.1.4)")
    if psk.psktype == PSKType.RESUMPTION:
        if psk.usage == ResumptionPSKUsage.REINIT and not reinit_ok:
            raise ValidationError("resumption PSK with usage reinit outside ReInit (§12.1.4)")
        if psk.usage == ResumptionPSKUsage.BRANCH:
            raise ValidationError("resumption PSK with usage branch outside branching (§12.1.4)")
        if psk.usage != ResumptionPSKUsage.APPLICATION and not reinit_ok:
            raise ValidationError(f"resumption PSK usage {psk.usage} (§8.4)")


@dataclass
class ProposalOutcome:
    """A proposal list applied to a copy of the tree (§12.3)."""

    tree: RatchetTree
    extensions: Extensions
    added: list[tuple[int, KeyPackage]] = field(default_factory=list)
    removed: list[tuple[int, LeafNode]] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    psks: list[PreSharedKeyID] = field(default_factory=list)
    external_init: ExternalInit | None = None
    reinit: ReInit | None = None
    path_required: bool = False


def apply_proposals(state: EpochState, config: GroupConfig,
                    proposals: list[tuple[Proposal, Sender]], committer: Sender, *,
                    external: bool = False, reinitialising: bool = False) -> ProposalOutcome:
    """Validate a committed proposal list (§12.2) and apply it to a tree copy (§12.3).

    ``committer`` is the Commit's sender; for an external Commit it has type
    new_member_commit and the list follows the external rules of §12.2.
    ``reinitialising`` allows the reinit resumption PSK of the first Commit of
    a group that replaces a reinitialised one (§11.2, §12.1.4).
    """
    now = config.clock()
    suite = state.suite
    for p, s in proposals:
        config.policy.check_proposal(state, p, s)
    config.policy.check_commit(state, committer, proposals)

    gces = [p for p, _ in proposals if isinstance(p, GroupContextExtensions)]
    updates = [(p, s) for p, s in proposals if isinstance(p, Update)]
    removes = [(p, s) for p, s in proposals if isinstance(p, Remove)]
    adds = [(p, s) for p, s in proposals if isinstance(p, Add)]
    psks = [p for p, _ in proposals if isinstance(p, PreSharedKey)]
    inits = [p for p, _ in proposals if isinstance(p, ExternalInit)]
    reinits = [p for p, _ in proposals if isinstance(p, ReInit)]

    if external:
        # §12.2: exactly one ExternalInit, at most one Remove, PSKs, nothing else
        if len(inits) != 1:
            raise ValidationError("an external Commit has exactly one ExternalInit (§12.2)")
        if len(removes) > 1 or gces or updates or adds or reinits:
            raise ValidationError("an external Commit may only add one Remove and PSKs (§12.2)")
    else:
        if inits:
            raise ValidationError("ExternalInit in a regular Commit (§12.2)")
        if reinits and len(proposals) > 1:
            raise ValidationError("ReInit must be the only proposal of its Commit (§12.2)")
        if len(gces) > 1:
            raise ValidationError("more than one GroupContextExtensions (§12.2)")

    extensions = state.context.extensions
    if gces:
        extensions = gces[0].extensions
        check_unique(extensions, "GroupContextExtensions")
    tree = state.tree.copy()
    out = ProposalOutcome(tree, extensions)

    touched: set[int] = set()
    committer_leaf = committer.index if committer.sender_type == SenderType.MEMBER else None
    for upd, sender in updates:
        if sender.sender_type != SenderType.MEMBER:
            raise ValidationError("Update from a non-member (§12.1.2)")
        if sender.index == committer_leaf:
            raise ValidationError("a Commit may not include the committer's own Update (§12.2)")
        if sender.index in touched:
            raise ValidationError(f"two Updates/Removes for leaf {sender.index} (§12.2)")
        touched.add(sender.index)
        old = state.tree.leaf(sender.index)
        if old is None:
            raise ValidationError(f"Update for blank leaf {sender.index} (§12.1.2)")
        validate_leaf_node(suite, upd.leaf_node, source=LeafNodeSource.UPDATE,
                           ctx=leaf_context(state, state.tree, extensions,
                                            frozenset({sender.index})),
                           now=None, group_id=state.group_id, leaf_index=sender.index,
                           credential_validator=config.credential_validator, replaced=old)
        config.successor_validator(old, upd.leaf_node)  # §5.3.1
        tree.update_leaf(sender.index, upd.leaf_node)
        out.updated.append(sender.index)

    for rem, _sender in removes:
        if rem.removed == committer_leaf:
            raise ValidationError("a Commit may not remove the committer (§12.2)")
        if rem.removed in touched:
            raise ValidationError(f"two Updates/Removes for leaf {rem.removed} (§12.2)")
        touched.add(rem.removed)
        if rem.removed >= state.tree.n_leaves:
            raise ValidationError(f"Remove of leaf {rem.removed}, outside the tree (§12.1.3)")
        old = state.tree.leaf(rem.removed)
        if old is None:
            raise ValidationError(f"Remove of blank leaf {rem.removed} (§12.1.3)")
        out.removed.append((rem.removed, old))
    for index, _ in out.removed:
        tree.remove_leaf(index)

    if adds:
        # the signatures are verified by config.batch_crypto while the other checks run
        out.added += add_key_packages(tree, [a.key_package for a, _ in adds],
                                      leaf_context(state, tree, extensions), now, config)

    psk_ids: set[bytes] = set()
    for psk in psks:
        check_psk_id(state, psk.psk, reinit_ok=reinitialising)
        enc = psk.psk.encode()
        if enc in psk_ids:
            raise ValidationError("the same PreSharedKeyID proposed twice (§12.2)")
        psk_ids.add(enc)
        out.psks.append(psk.psk)

    for reinit in reinits:
        if reinit.version < ProtocolVersion.MLS10:
            raise ValidationError("ReInit to an older protocol version (§12.1.5)")
        out.reinit = reinit
    if inits:
        out.external_init = inits[0]

    if gces:
        # §12.1.7: every member (after this Commit) supports required_capabilities
        rc_data = find_extension(extensions, 3)
        if rc_data is not None:
            rc = RequiredCapabilities.decode(rc_data)
            for i, leaf in tree.leaves():
                caps = leaf.capabilities
                for e in rc.extension_types:
                    if e not in caps.extensions and e > 5:
                        raise ValidationError(f"leaf {i} lacks required extension {e} (§12.1.7)")
                for pt in rc.proposal_types:
                    if pt not in caps.proposals and pt > 7:
                        raise ValidationError(f"leaf {i} lacks required proposal {pt} (§12.1.7)")
                for ct in rc.credential_types:
                    if ct not in caps.credentials:
                        raise ValidationError(f"leaf {i} lacks credential type {ct} (§12.1.7)")
        external_senders(extensions)  # must decode (§12.1.8.1)

    out.path_required = (not proposals) or any(isinstance(p, PATH_REQUIRED)
                                               for p, _ in proposals)
    return out


def refuse(reason: str) -> None:
    """Raise the error a policy uses to refuse (a convenience for Policy subclasses)."""
    raise PolicyError(reason)
