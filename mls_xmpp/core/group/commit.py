"""Creating a Commit and its Welcome (RFC 9420 §12.4.1, §12.4.3).

:func:`create_commit` computes everything but swaps nothing in: it returns a
:class:`PendingCommit` holding the new state, merged only once the caller
knows the Delivery Service accepted the Commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from ..crypto.batch import BatchCrypto
from ..errors import GroupStateError
from ..messages.commit import Commit
from ..messages.common import ContentType, LeafNodeSource, WireFormat
from ..messages.extensions import Extension, ExternalPub
from ..messages.framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    Sender,
)
from ..messages.group_info import GroupInfo
from ..messages.key_package import KeyPackage
from ..messages.leaf_node import LeafNode
from ..messages.nodes import RATCHET_TREE
from ..messages.proposals import Proposal, ProposalOrRef, ProposalRef
from ..messages.protection import protect_private, protect_public, sign_content
from ..messages.welcome import (
    EncryptedGroupSecrets,
    GroupSecrets,
    PathSecret,
    Welcome,
    encrypt_group_info,
    encrypt_group_secrets_many,
)
from ..schedule.key_schedule import EpochSecrets, external_key_pair
from ..schedule.psk import PreSharedKeyID
from ..tree.treekem import CreatedUpdatePath, create_update_path
from .config import GroupConfig
from .epoch import PskLookup, build_state, compute_next_epoch, resolve_psks
from .proposals import apply_proposals
from .state import CachedProposal, EpochState


@dataclass
class PendingCommit:
    """A Commit sent but not yet merged.

    Attributes:
        message: the MLSMessage with the Commit, to hand to the Delivery Service.
        welcome: one Welcome for all new members (``None`` when nobody joins);
            :attr:`welcomes` splits it into one Welcome per new member.
        group_info: the new epoch's signed GroupInfo (MLSMessage), with external_pub.
        new_state: the state to switch to once the Commit is accepted.
        proposals: what the Commit covers, in order.
        by_value: proposals this member put in the Commit by value (what it wanted).
    """

    message: bytes
    welcome: bytes | None
    group_info: bytes
    new_state: EpochState
    proposals: list[tuple[Proposal, Sender]]
    by_value: list[Proposal] = field(default_factory=list)
    added: list[tuple[int, KeyPackage]] = field(default_factory=list)
    removed: list[tuple[int, LeafNode]] = field(default_factory=list)
    #: whether the Commit carries an UpdatePath (fresh keys for the committer's leaf)
    has_path: bool = True
    #: the Commit's authenticated_data
    authenticated_data: bytes = b""

    @property
    def welcomes(self) -> Mapping[bytes, bytes]:
        """One Welcome per new member, by KeyPackageRef, built when asked for.

        They share the encrypted GroupInfo, so they are not all kept in memory.
        """
        return _PerRecipient(self.welcome)


class _PerRecipient(Mapping[bytes, bytes]):
    """KeyPackageRef -> a Welcome holding only that member's secrets."""

    def __init__(self, welcome: bytes | None) -> None:
        body = None if welcome is None else MLSMessage.decode(welcome).body
        self._welcome = body if isinstance(body, Welcome) else None
        self._entries = {} if self._welcome is None else {
            e.new_member: e for e in self._welcome.secrets}

    def __getitem__(self, ref: bytes) -> bytes:
        entry = self._entries[ref]
        assert self._welcome is not None
        return MLSMessage(Welcome(self._welcome.cipher_suite, (entry,),
                                  self._welcome.encrypted_group_info)).encode()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def make_group_info(state: EpochState, *, with_tree: bool, with_external_pub: bool = True
                    ) -> GroupInfo:
    """A signed GroupInfo of ``state`` (§12.4.3), optionally with the tree and external_pub."""
    exts: list[Extension] = []
    if with_tree:
        exts.append(Extension(2, RATCHET_TREE.encode(state.tree.wire_nodes())))
    if with_external_pub:
        _, pub = external_key_pair(state.suite, state.secrets.external_secret)
        exts.append(ExternalPub(pub).to_extension())
    info = GroupInfo(state.context, tuple(exts), state.confirmation_tag, state.own_leaf)
    return info.signed(state.suite, state.signature_private_key)


def create_commit(state: EpochState, config: GroupConfig, psk_lookup: PskLookup, *,
                  by_value: list[Proposal] | None = None,
                  by_reference: list[CachedProposal] | None = None,
                  force_path: bool = True, authenticated_data: bytes = b"",
                  reinitialising: bool = False) -> PendingCommit:
    """Build a Commit covering ``by_reference`` (default: every cached proposal) and
    ``by_value``; compute the next epoch, the Welcome and the GroupInfo (§12.4.1)."""
    if not state.active or state.reinit is not None:
        raise GroupStateError("this member can no longer commit in this group")
    suite = state.suite
    me = Sender.member(state.own_leaf)
    refs = list(state.proposals.values()) if by_reference is None else by_reference
    values = list(by_value or [])
    proposals: list[tuple[Proposal, Sender]] = [(c.proposal, c.sender) for c in refs]
    proposals += [(p, me) for p in values]
    outcome = apply_proposals(state, config, proposals, me, reinitialising=reinitialising)

    tree = outcome.tree
    added_leaves = frozenset(i for i, _ in outcome.added)
    path = None
    commit_secret = None
    path_secrets = None
    keys = state.keys.copy()
    if outcome.path_required or force_path:
        old_leaf = state.own_leaf_node()
        group_id, leaf_index = state.group_id, state.own_leaf

        def sign_leaf(encryption_key: bytes, parent_hash: bytes) -> LeafNode:
            return replace(old_leaf, encryption_key=encryption_key,
                           leaf_node_source=LeafNodeSource.COMMIT, lifetime=None,
                           parent_hash=parent_hash).signed(suite, state.signature_private_key,
                                                           group_id, leaf_index)

        def provisional(tree_hash: bytes) -> bytes:
            return replace(state.context, epoch=state.epoch + 1, tree_hash=tree_hash,
                           extensions=outcome.extensions).encode()

        created = create_update_path(tree, state.own_leaf, sign_leaf, provisional,
                                     exclude=added_leaves, rng=config.rng,
                                     crypto=config.batch_crypto)
        path = created.update_path
        commit_secret = created.commit_secret
        keys = created.private_keys
        path_secrets = created
    keys.prune(tree)

    ors: list[ProposalOrRef] = [ProposalRef(c.ref) for c in refs]
    ors += values
    commit = Commit(tuple(ors), path)
    content = FramedContent(state.group_id, state.epoch, me, authenticated_data,
                            ContentType.COMMIT, commit)
    wire_format = WireFormat.PRIVATE_MESSAGE if config.handshake_private \
        else WireFormat.PUBLIC_MESSAGE
    ctx_bytes = state.context_bytes()
    signed = sign_content(suite, state.signature_private_key, wire_format, content, ctx_bytes,
                          confirmation_tag=b"")
    psk_value = resolve_psks(state, outcome.psks, psk_lookup, state.group_id)
    nxt = compute_next_epoch(state, signed, tree, outcome.extensions,
                             state.secrets.init_secret, commit_secret, psk_value,
                             expected_tag=None)
    ac = AuthenticatedContent(wire_format, content,
                              FramedContentAuthData(signed.auth.signature, nxt.confirmation_tag))
    if wire_format == WireFormat.PRIVATE_MESSAGE:
        body = protect_private(suite, ac, state.secret_tree, state.secrets.sender_data_secret,
                               pad_to=config.pad_to, rng=config.rng)
        message = MLSMessage(body).encode()
    else:
        message = MLSMessage(protect_public(suite, ac, state.secrets.membership_key,
                                            ctx_bytes)).encode()

    new_state = build_state(state, config, nxt, tree, keys, state.own_leaf, outcome.reinit)
    welcome = None
    if outcome.added:
        info = make_group_info(new_state, with_tree=config.ratchet_tree_in_welcome)
        welcome = _welcome(new_state, nxt.secrets, info, outcome.added, outcome.psks,
                           path_secrets, config.batch_crypto)
    public_info = make_group_info(new_state, with_tree=False)
    return PendingCommit(message, welcome, MLSMessage(public_info).encode(), new_state,
                         proposals, values, outcome.added, outcome.removed,
                         has_path=path is not None, authenticated_data=authenticated_data)


def _welcome(state: EpochState, secrets: EpochSecrets, info: GroupInfo,
              added: list[tuple[int, KeyPackage]], psks: list[PreSharedKeyID],
              path: CreatedUpdatePath | None, crypto: BatchCrypto) -> bytes:
    """One Welcome for every new member (§12.4.3.1); ``crypto`` seals the GroupSecrets."""
    suite = state.suite
    assert secrets.joiner_secret is not None and secrets.welcome_secret is not None
    encrypted_info = encrypt_group_info(suite, secrets.welcome_secret, info)
    items = []
    # one GroupSecrets per distinct path secret (a few dozen for thousands of joiners),
    # each encoded once by encrypt_group_secrets_many
    shared: dict[bytes | None, GroupSecrets] = {}
    for leaf, kp in added:
        secret = None if path is None else path.path_secret_for(leaf)
        gs = shared.get(secret)
        if gs is None:
            gs = shared[secret] = GroupSecrets(secrets.joiner_secret, None if secret is None
                                               else PathSecret(secret), tuple(psks))
        items.append((kp.init_key, gs))
    sealed = encrypt_group_secrets_many(suite, encrypted_info, items, crypto)
    entries = tuple(EncryptedGroupSecrets(kp.ref(suite), ct)
                    for (_, kp), ct in zip(added, sealed, strict=True))
    return MLSMessage(Welcome(suite.id, entries, encrypted_info)).encode()

