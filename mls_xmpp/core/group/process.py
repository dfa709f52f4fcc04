"""Processing incoming messages (RFC 9420 §6, §12.1, §12.4.2).

Every function here reads the current state and returns a *new* one (or an
event); nothing is swapped in until every check passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import (
    DecodeError,
    IdentityError,
    MissingProposalError,
    ValidationError,
    WrongEpochError,
    WrongGroupError,
)
from ..messages.commit import Commit
from ..messages.common import ContentType, LeafNodeSource, SenderType, WireFormat
from ..messages.credentials import Credential
from ..messages.framing import (
    AuthenticatedContent,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
)
from ..messages.leaf_node import Capabilities, LeafNode
from ..messages.proposals import Add, ExternalInit, PreSharedKey, Proposal, ProposalRef, Update
from ..messages.protection import open_private_message, unprotect_public, verify_content
from ..messages.validation import validate_key_package, validate_leaf_node
from ..schedule.key_schedule import external_key_pair
from ..tree.ratchet_tree import RatchetTree
from ..tree.secret_tree import ratchet_type_for_content_type
from ..tree.treekem import decrypt_update_path, merge_update_path
from .config import GroupConfig
from .epoch import PskLookup, build_state, compute_next_epoch, resolve_psks
from .events import ApplicationMessage, CommitApplied, Member, ProposalReceived
from .proposals import (
    apply_proposals,
    check_proposal_sender,
    check_psk_id,
    external_senders,
    leaf_context,
)
from .state import CachedProposal, EpochState, PastEpoch

EXTERNAL_INIT_LABEL = b"MLS 1.0 external init secret"


def decode_message(data: bytes) -> PublicMessage | PrivateMessage:
    """Decode an MLSMessage that must be a PublicMessage or a PrivateMessage."""
    msg = MLSMessage.decode(data)
    if not isinstance(msg.body, (PublicMessage, PrivateMessage)):
        raise DecodeError(f"expected a group message, got wire format {msg.wire_format}")
    return msg.body


def member(tree: RatchetTree, leaf_index: int) -> Member:
    """The roster entry of a leaf."""
    leaf = tree.leaf(leaf_index)
    assert leaf is not None
    return Member(leaf_index, leaf.credential, leaf.signature_key)


def _signature_key(state: EpochState, ac: AuthenticatedContent) -> bytes:
    sender = ac.content.sender
    st = sender.sender_type
    if st == SenderType.MEMBER:
        if sender.index >= state.tree.n_leaves:
            raise ValidationError(f"sender leaf {sender.index} is outside the tree (§6.1)")
        leaf = state.tree.leaf(sender.index)
        if leaf is None:
            raise ValidationError(f"sender leaf {sender.index} is blank (§6.1)")
        return leaf.signature_key
    if st == SenderType.EXTERNAL:
        senders = external_senders(state.context.extensions)
        if sender.index >= len(senders):
            raise ValidationError(f"unknown external sender {sender.index} (§6.1)")
        return senders[sender.index].signature_key
    if st == SenderType.NEW_MEMBER_PROPOSAL:
        prop = ac.content.content
        if not isinstance(prop, Add):
            raise ValidationError("new_member_proposal must carry an Add (§12.1.8)")
        return prop.key_package.leaf_node.signature_key
    # new_member_commit: signed with the key of the UpdatePath's leaf (§12.4.3.2)
    commit = ac.content.content
    if not isinstance(commit, Commit) or commit.path is None:
        raise ValidationError("an external Commit must carry an UpdatePath (§12.4.3.2)")
    return commit.path.leaf_node.signature_key


@dataclass
class Unprotected:
    """A handshake or application message after decryption and authentication."""

    ac: AuthenticatedContent
    past: PastEpoch | None = None
    #: deletes the message key; called once the message was fully accepted
    consume: Callable[[], None] = lambda: None


def unprotect(state: EpochState, past: dict[int, PastEpoch],
              msg: PublicMessage | PrivateMessage) -> Unprotected:
    """Check group and epoch, decrypt or check the membership tag, verify the signature.

    The secret tree key is consumed only after the signature verified.
    """
    if isinstance(msg, PublicMessage):
        group_id, epoch = msg.content.group_id, msg.content.epoch
    else:
        group_id, epoch = msg.group_id, msg.epoch
    if group_id != state.group_id:
        raise WrongGroupError("the message is for another group (§6)")
    suite = state.suite
    if isinstance(msg, PublicMessage):
        if epoch != state.epoch:
            raise WrongEpochError(f"PublicMessage for epoch {epoch}, the group is in "
                                  f"{state.epoch} (§6)")
        ctx = state.context_bytes()
        ac = unprotect_public(suite, msg, state.secrets.membership_key, ctx)
        verify_content(suite, _signature_key(state, ac), ac, ctx)
        return Unprotected(ac)
    if epoch == state.epoch:
        st, sds, tree, ctx, old = (state.secret_tree, state.secrets.sender_data_secret,
                                   state.tree, state.context_bytes(), None)
    elif epoch in past and msg.content_type == ContentType.APPLICATION:
        old = past[epoch]
        st, sds, tree, ctx = old.secret_tree, old.sender_data_secret, old.tree, old.context
    else:
        raise WrongEpochError(f"PrivateMessage for epoch {epoch}, the group is in "
                              f"{state.epoch} (§6)")
    ac, sd = open_private_message(suite, msg, st, sds)
    leaf_index = ac.content.sender.index
    leaf = tree.leaf(leaf_index)
    if leaf is None:
        raise ValidationError(f"sender leaf {leaf_index} is blank (§6.3.2)")
    verify_content(suite, leaf.signature_key, ac, ctx)
    rtype = ratchet_type_for_content_type(msg.content_type)

    def consume() -> None:  # the key is used: delete it (forward secrecy, §9.2)
        st.consume(leaf_index, rtype, sd.generation)

    return Unprotected(ac, old, consume)


def check_single_proposal(state: EpochState, config: GroupConfig, proposal: Proposal,
                          sender: Sender) -> None:
    """Checks a proposal gets on arrival (or before sending), before it is cached (§12.1)."""
    check_proposal_sender(state, proposal, sender)
    if isinstance(proposal, Update):
        if sender.sender_type != SenderType.MEMBER:
            raise ValidationError("Update from a non-member (§12.1.2)")
        old = state.tree.leaf(sender.index)
        validate_leaf_node(state.suite, proposal.leaf_node, source=LeafNodeSource.UPDATE,
                           ctx=leaf_context(state, state.tree, state.context.extensions,
                                            frozenset({sender.index})),
                           now=None, group_id=state.group_id, leaf_index=sender.index,
                           credential_validator=config.credential_validator, replaced=old)
        if old is not None:
            config.successor_validator(old, proposal.leaf_node)  # §5.3.1
    elif isinstance(proposal, Add):
        validate_key_package(state.suite, proposal.key_package, now=config.clock(),
                             ctx=leaf_context(state, state.tree, state.context.extensions),
                             credential_validator=config.credential_validator)
    elif isinstance(proposal, ExternalInit):
        raise ValidationError("ExternalInit sent as a proposal (§12.1.6)")
    if isinstance(proposal, PreSharedKey):
        check_psk_id(state, proposal.psk)
    config.policy.check_proposal(state, proposal, sender)


def handle_proposal(state: EpochState, config: GroupConfig, ac: AuthenticatedContent
                    ) -> ProposalReceived:
    """Validate and cache a proposal of this epoch (§12.1)."""
    proposal = ac.content.content
    assert not isinstance(proposal, (bytes, Commit))
    check_single_proposal(state, config, proposal, ac.content.sender)
    ref = ac.proposal_ref(state.suite)
    state.proposals[ref] = CachedProposal(ref, proposal, ac.content.sender)
    return ProposalReceived(state.epoch, ac.content.sender, proposal, ref)


def handle_application(unprotected: Unprotected, state: EpochState) -> ApplicationMessage:
    """Turn decrypted application data into an event (§6.3)."""
    ac = unprotected.ac
    tree = unprotected.past.tree if unprotected.past is not None else state.tree
    data = ac.content.content
    assert isinstance(data, bytes)
    return ApplicationMessage(ac.content.epoch, member(tree, ac.content.sender.index), data,
                              ac.content.authenticated_data)


def reserve_leaf(tree: RatchetTree) -> int:
    """The leaf an external joiner takes: leftmost blank, else a new one (§12.4.2).

    The tree grows if needed; the leaf stays blank until the UpdatePath is merged.
    """
    index = tree.leftmost_blank_leaf()
    if index is not None:
        return index
    placeholder = LeafNode(b"", b"", Credential.basic(b""), Capabilities(),
                           LeafNodeSource.UPDATE)
    index = tree.add_leaf(placeholder)  # extends the tree by one level
    tree.set_leaf_node(index, None)
    return index


def process_commit(state: EpochState, config: GroupConfig, psk_lookup: PskLookup,
                   ac: AuthenticatedContent, *, own_update_keys: dict[bytes, bytes] | None = None
                   ) -> tuple[EpochState, CommitApplied]:
    """Apply another member's (or an external joiner's) Commit (§12.4.2).

    ``own_update_keys`` maps the encryption keys of Updates this member
    proposed to their private keys, needed when the Commit includes one.
    """
    commit = ac.content.content
    assert isinstance(commit, Commit)
    sender = ac.content.sender
    external = sender.sender_type == SenderType.NEW_MEMBER_COMMIT
    if sender.sender_type not in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        raise ValidationError("a Commit comes from a member or a new member (§12.4)")
    if external and ac.wire_format != WireFormat.PUBLIC_MESSAGE:
        raise ValidationError("an external Commit is a PublicMessage (§12.4.3.2)")
    if sender.sender_type == SenderType.MEMBER and sender.index == state.own_leaf:
        raise ValidationError("a Commit of this member that is not its pending one (§12.4)")
    if ac.auth.confirmation_tag is None:  # pragma: no cover - codec guarantees it
        raise ValidationError("a Commit without confirmation tag")

    proposals: list[tuple[Proposal, object]] = []
    for por in commit.proposals:
        if isinstance(por, ProposalRef):
            if external:
                raise ValidationError("an external Commit has proposals by reference (§12.4.3.2)")
            cached = state.proposals.get(por.reference)
            if cached is None:
                raise MissingProposalError("the Commit refers to an unknown proposal (§12.4.2)")
            proposals.append((cached.proposal, cached.sender))
        else:
            if sender.sender_type == SenderType.MEMBER:
                check_proposal_sender(state, por, sender)
            proposals.append((por, sender))
    outcome = apply_proposals(state, config, proposals, sender,  # type: ignore[arg-type]
                              external=external)
    if outcome.path_required and commit.path is None:
        raise ValidationError("this Commit needs an UpdatePath (§12.4)")
    if external and outcome.removed and commit.path is not None:
        # §12.2: a resync's new leaf must stand for the same participant
        if outcome.removed[0][1].credential != commit.path.leaf_node.credential:
            raise IdentityError("an external resync must keep the removed member's "
                                "credential (§12.2)")
        config.successor_validator(outcome.removed[0][1], commit.path.leaf_node)  # §5.3.1

    tree = outcome.tree
    added_leaves = frozenset(i for i, _ in outcome.added)
    removed_leaves = {i for i, _ in outcome.removed}
    self_removed = state.own_leaf in removed_leaves
    committer = sender.index
    commit_secret = None
    keys = state.keys.copy()
    own_leaf = tree.leaf(state.own_leaf) if not self_removed else None
    if own_leaf is not None and own_update_keys and own_leaf.encryption_key in own_update_keys:
        keys.set(2 * state.own_leaf, own_update_keys[own_leaf.encryption_key])
    if commit.path is not None:
        if external:
            committer = reserve_leaf(tree)
        ctx_ln = leaf_context(state, tree, outcome.extensions, frozenset({committer}))
        validate_leaf_node(state.suite, commit.path.leaf_node, source=LeafNodeSource.COMMIT,
                           ctx=replace(ctx_ln, encryption_keys=frozenset()), now=None,
                           group_id=state.group_id, leaf_index=committer,
                           credential_validator=config.credential_validator)
        if not external:  # the committer's new leaf replaces its old one (§5.3.1)
            old_leaf = state.tree.leaf(sender.index)
            if old_leaf is not None:
                config.successor_validator(old_leaf, commit.path.leaf_node)
        else:  # the application's rules on who may join from outside (§12.2)
            config.policy.check_external_join(state, commit.path.leaf_node)
        merge_update_path(tree, committer, commit.path, group_id=None, exclude=added_leaves)
        if not self_removed:
            provisional = replace(state.context, epoch=state.epoch + 1,
                                  tree_hash=tree.tree_hash(),
                                  extensions=outcome.extensions).encode()
            keys.prune(tree)
            processed = decrypt_update_path(tree, committer, commit.path, keys, provisional,
                                            exclude=added_leaves)
            commit_secret = processed.commit_secret
            keys = processed.private_keys
    elif external:  # pragma: no cover - path_required covers it
        raise ValidationError("an external Commit needs an UpdatePath (§12.4.3.2)")
    keys.prune(tree)

    init_secret = state.secrets.init_secret
    if outcome.external_init is not None:
        ext_priv, _ = external_key_pair(state.suite, state.secrets.external_secret)
        init_secret = state.suite.hpke.export_receiver(
            outcome.external_init.kem_output, ext_priv, b"", EXTERNAL_INIT_LABEL,
            state.suite.hash_len)
    psk_value = resolve_psks(state, outcome.psks, psk_lookup, state.group_id)
    if self_removed:
        event = CommitApplied(state.epoch + 1, sender,
                              removed=tuple(Member(i, leaf.credential, leaf.signature_key)
                                            for i, leaf in outcome.removed),
                              self_removed=True, proposals=tuple(p for p, _ in proposals),
                              authenticated_data=ac.content.authenticated_data,
                              path=commit.path is not None)
        gone = replace(state, active=False)
        return gone, event
    nxt = compute_next_epoch(state, ac, tree, outcome.extensions, init_secret, commit_secret,
                             psk_value, expected_tag=ac.auth.confirmation_tag)
    new_state = build_state(state, config, nxt, tree, keys, state.own_leaf, outcome.reinit)
    event = CommitApplied(
        nxt.context.epoch, sender,
        added=tuple(member(tree, i) for i in sorted(added_leaves))
        + ((member(tree, committer),) if external else ()),
        removed=tuple(Member(i, leaf.credential, leaf.signature_key)
                      for i, leaf in outcome.removed),
        updated=tuple(member(tree, i) for i in outcome.updated),
        psks=len(outcome.psks), reinit=outcome.reinit,
        proposals=tuple(p for p, _ in proposals),
        authenticated_data=ac.content.authenticated_data, path=commit.path is not None)
    return new_state, event
