"""Joining by external Commit and proposals from outside the group (RFC 9420 §12.1.8, §12.4.3.2).

* :func:`external_join` -- a new device (or one whose state was lost) joins from a
  GroupInfo with ``external_pub``: it commits ExternalInit (and optionally a
  Remove of its old leaf -- a "resync") and is a member at once.
* :func:`external_proposal` -- an ``external`` sender listed in the group's
  external_senders extension, or a would-be member (``new_member_proposal``,
  Add only), signs a proposal the members can commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..crypto import get_suite
from ..errors import ValidationError
from ..messages.commit import Commit
from ..messages.common import ContentType, LeafNodeSource, SenderType, WireFormat
from ..messages.credentials import Credential
from ..messages.extensions import Extensions, ExternalPub, find_extension
from ..messages.framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    Sender,
)
from ..messages.group_info import GroupInfo
from ..messages.leaf_node import Capabilities, LeafNode
from ..messages.proposals import Add, ExternalInit, PreSharedKey, Proposal, Remove
from ..messages.protection import protect_public, sign_content
from ..schedule.key_schedule import epoch_secrets_from_epoch_secret
from ..schedule.psk import PreSharedKeyID
from ..schedule.transcript import interim_transcript_hash
from ..tree.ratchet_tree import RatchetTree
from ..tree.secret_tree import SecretTree
from ..tree.treekem import TreePrivateKeys, create_update_path
from .config import GroupConfig
from .epoch import PskLookup, build_state, compute_next_epoch, resolve_psks
from .join import tree_from_group_info, verify_group_info
from .process import EXTERNAL_INIT_LABEL, reserve_leaf
from .proposals import apply_proposals
from .state import EpochState


@dataclass
class ExternalJoin:
    """The result of :func:`external_join`: the Commit to send and the joiner's new state."""

    message: bytes
    state: EpochState
    leaf_index: int


def _outsider_view(info: GroupInfo, tree: RatchetTree, signature_private_key: bytes,
                   config: GroupConfig) -> EpochState:
    """The epoch being joined, as an outsider knows it: public data, no secrets.

    The secret fields hold throwaway values that are never used; the joiner's
    init_secret comes from the external key exchange instead.
    """
    suite = tree.suite
    ctx = info.group_context
    dummy = epoch_secrets_from_epoch_secret(suite, bytes(suite.hash_len))
    return EpochState(
        suite=suite, context=ctx, tree=tree, keys=TreePrivateKeys(0), own_leaf=0,
        signature_private_key=signature_private_key, secrets=dummy,
        secret_tree=SecretTree(suite, bytes(suite.hash_len), tree.n_leaves),
        interim_transcript_hash=interim_transcript_hash(suite, ctx.confirmed_transcript_hash,
                                                        info.confirmation_tag),
        confirmation_tag=info.confirmation_tag)


def external_join(group_info: bytes | GroupInfo, credential: Credential, suite_id: int,
                  signature_private_key: bytes, capabilities: Capabilities,
                  config: GroupConfig, psk_lookup: PskLookup, *,
                  ratchet_tree: bytes | None = None, resync_leaf: int | None = None,
                  psks: tuple[PreSharedKeyID, ...] = (),
                  leaf_extensions: Extensions = ()) -> ExternalJoin:
    """Build an external Commit that adds this client to the group (§12.4.3.2).

    With ``resync_leaf`` the Commit also removes that leaf (this client's
    previous appearance, e.g. after losing its state); the new leaf must carry
    the same credential. The new state is valid once the Delivery Service
    accepted the Commit; if another Commit won the race, join again from the
    newer GroupInfo.
    """
    if isinstance(group_info, bytes):
        msg = MLSMessage.decode(group_info)
        if not isinstance(msg.body, GroupInfo):
            raise ValidationError("not a GroupInfo message")
        group_info = msg.body
    info = group_info
    suite = get_suite(suite_id)
    if info.group_context.cipher_suite != suite_id:
        raise ValidationError("the GroupInfo is for another cipher suite")
    tree = tree_from_group_info(info, ratchet_tree, suite_id)
    verify_group_info(info, tree, config)
    ext_pub_data = find_extension(info.extensions, 4)
    if ext_pub_data is None:
        raise ValidationError("the GroupInfo has no external_pub (§12.4.3.2)")
    external_pub = ExternalPub.decode(ext_pub_data).external_pub
    kem_output, init_secret = suite.hpke.export_sender(external_pub, b"", EXTERNAL_INIT_LABEL,
                                                       suite.hash_len)
    view = _outsider_view(info, tree, signature_private_key, config)
    me = Sender(SenderType.NEW_MEMBER_COMMIT)
    values: list[Proposal] = [ExternalInit(kem_output)]
    if resync_leaf is not None:
        values.append(Remove(resync_leaf))
    values += [PreSharedKey(p) for p in psks]
    outcome = apply_proposals(view, config, [(p, me) for p in values], me, external=True)
    new_tree = outcome.tree
    leaf_index = reserve_leaf(new_tree)
    sig_pub = suite.signature_public_key(signature_private_key)
    gid = info.group_context.group_id

    def sign_leaf(encryption_key: bytes, parent_hash: bytes) -> LeafNode:
        return LeafNode(encryption_key, sig_pub, credential, capabilities,
                        LeafNodeSource.COMMIT, parent_hash=parent_hash,
                        extensions=leaf_extensions
                        ).signed(suite, signature_private_key, gid, leaf_index)

    def provisional(tree_hash: bytes) -> bytes:
        c = info.group_context
        return type(c)(c.version, c.cipher_suite, c.group_id, c.epoch + 1, tree_hash,
                       c.confirmed_transcript_hash, outcome.extensions).encode()

    created = create_update_path(new_tree, leaf_index, sign_leaf, provisional, rng=config.rng,
                                 crypto=config.batch_crypto)
    commit = Commit(tuple(values), created.update_path)
    content = FramedContent(gid, info.group_context.epoch, me, b"", ContentType.COMMIT, commit)
    ctx = view.context_bytes()
    signed = sign_content(suite, signature_private_key, WireFormat.PUBLIC_MESSAGE, content, ctx,
                          confirmation_tag=b"")
    psk_value = resolve_psks(view, outcome.psks, psk_lookup, gid)
    nxt = compute_next_epoch(view, signed, new_tree, outcome.extensions, init_secret,
                             created.commit_secret, psk_value, expected_tag=None)
    ac = AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, content,
                              FramedContentAuthData(signed.auth.signature, nxt.confirmation_tag))
    message = MLSMessage(protect_public(suite, ac, None, None)).encode()
    keys = created.private_keys
    keys.prune(new_tree)
    state = build_state(view, config, nxt, new_tree, keys, leaf_index, None)
    state.resumption_psks = {nxt.context.epoch: nxt.secrets.resumption_psk}
    return ExternalJoin(message, state, leaf_index)


def external_proposal(proposal: Proposal, *, group_id: bytes, epoch: int, suite_id: int,
                      signature_private_key: bytes, sender_index: int | None) -> bytes:
    """A proposal from outside the group, as a PublicMessage (§12.1.8).

    ``sender_index`` is the signer's index in the group's external_senders
    extension; ``None`` makes it a ``new_member_proposal`` (an Add of the
    signer's own KeyPackage).
    """
    suite = get_suite(suite_id)
    if sender_index is None:
        if not isinstance(proposal, Add):
            raise ValidationError("a new_member_proposal is an Add (§12.1.8)")
        sender = Sender(SenderType.NEW_MEMBER_PROPOSAL)
    else:
        sender = Sender(SenderType.EXTERNAL, sender_index)
    content = FramedContent(group_id, epoch, sender, b"", ContentType.PROPOSAL, proposal)
    ac = sign_content(suite, signature_private_key, WireFormat.PUBLIC_MESSAGE, content, None)
    return MLSMessage(protect_public(suite, ac, None, None)).encode()
