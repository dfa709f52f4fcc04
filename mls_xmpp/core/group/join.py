"""Joining a group from a Welcome (RFC 9420 §12.4.3.1)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import ValidationError
from ..messages.extensions import RequiredCapabilities, find_extension
from ..messages.framing import MLSMessage
from ..messages.group_info import GroupContext, GroupInfo
from ..messages.key_package import KeyPackageBundle
from ..messages.leaf_node import LeafNode
from ..messages.validation import check_credential
from ..messages.welcome import Welcome, decrypt_group_info, decrypt_group_secrets
from ..schedule.key_schedule import EpochSecrets, epoch_secrets_from_joiner, welcome_secret
from ..schedule.psk import PreSharedKeyID, PSKType, ResumptionPSKUsage, psk_secret
from ..schedule.transcript import interim_transcript_hash
from ..tree.ratchet_tree import RatchetTree
from ..tree.secret_tree import SecretTree
from ..tree.treekem import TreePrivateKeys
from ..tree.validation import LeafSignatures, validate_tree
from .config import GroupConfig
from .epoch import PskLookup
from .state import EpochState


def tree_from_group_info(info: GroupInfo, ratchet_tree: RatchetTree | bytes | None,
                         suite_id: int, signatures: LeafSignatures | None = None
                         ) -> RatchetTree:
    """The ratchet tree: supplied out of band, or from the ratchet_tree extension (§12.4.3.3).

    ``signatures``: every leaf is handed to it as soon as it is known (while
    decoding), for :func:`verify_group_info`.
    """
    from ..crypto import get_suite

    suite = get_suite(suite_id)
    on_leaf = None if signatures is None else signatures.add
    if isinstance(ratchet_tree, RatchetTree):
        tree = ratchet_tree.copy()
        if on_leaf is not None:
            for i, leaf in tree.leaves():
                on_leaf(i, leaf)
        return tree
    if ratchet_tree is not None:
        return RatchetTree.decode(suite, ratchet_tree, on_leaf)
    data = find_extension(info.extensions, 2)
    if data is None:
        raise ValidationError("no ratchet tree: neither supplied nor in the GroupInfo "
                              "(§12.4.3.1)")
    return RatchetTree.decode(suite, data, on_leaf)


def verify_group_info(info: GroupInfo, tree: RatchetTree, config: GroupConfig,
                      signatures: LeafSignatures | None = None) -> None:
    """Signature of the GroupInfo by its signer and the integrity of the tree (§12.4.3.1).

    ``signatures``: the leaves' signatures started by :func:`tree_from_group_info`.
    """
    suite = tree.suite
    if info.signer >= tree.n_leaves or tree.leaf(info.signer) is None:
        raise ValidationError("the GroupInfo signer is not a member (§12.4.3.1)")
    signer = tree.leaf(info.signer)
    assert signer is not None
    info.verify_signature(suite, signer.signature_key)
    ctx = info.group_context
    if ctx.cipher_suite != suite.id:
        raise ValidationError("GroupInfo cipher suite differs from the tree's (§12.4.3.1)")
    rc_data = find_extension(ctx.extensions, 3)
    validate_tree(tree, ctx.group_id, ctx.tree_hash,
                  required_capabilities=None if rc_data is None
                  else RequiredCapabilities.decode(rc_data), crypto=config.batch_crypto,
                  signatures=signatures)
    for _, leaf in tree.leaves():
        check_credential(leaf.credential, leaf.signature_key)
        config.credential_validator(leaf.credential, leaf.signature_key)


@dataclass(frozen=True)
class OpenedWelcome:
    """A Welcome decrypted with this device's KeyPackage, before its tree is known.

    Decoding and decryption only: ``group_info`` is authenticated by the
    Welcome's AEAD and its confirmation tag (both under secrets encrypted to
    this KeyPackage), but its signature is not checked yet: that needs the
    signer's leaf, in the ratchet tree (§12.4.3.1).
    """

    welcome: Welcome
    group_info: GroupInfo
    #: the path secret for the joiner's common ancestor with the committer, if any
    path_secret: bytes | None
    #: the new epoch's secrets (from the joiner secret and the GroupContext)
    epoch_secrets: EpochSecrets


def open_welcome(welcome: Welcome | bytes, bundle: KeyPackageBundle, psk_lookup: PskLookup,
                 reinit_check: Callable[[PreSharedKeyID, GroupContext], None] | None = None
                 ) -> OpenedWelcome:
    """Decrypt a Welcome's group secrets and GroupInfo and check what needs no tree
    (§12.4.3.1): cipher suites, PSKs, the reinit/branch epoch, the confirmation tag.

    A caller that must fetch the tree out of band does so after this succeeded:
    the Welcome was then made for this KeyPackage by someone who held it.
    """
    from ..crypto import get_suite

    if isinstance(welcome, bytes):
        msg = MLSMessage.decode(welcome)
        if not isinstance(msg.body, Welcome):
            raise ValidationError("not a Welcome message")
        welcome = msg.body
    kp = bundle.key_package
    if welcome.cipher_suite != kp.cipher_suite:
        raise ValidationError("the Welcome's cipher suite differs from the KeyPackage's "
                              "(§12.4.3.1)")
    suite = get_suite(kp.cipher_suite)
    secrets = decrypt_group_secrets(suite, welcome, kp.ref(suite), bundle.init_private_key)
    psk_value = None
    if secrets.psks:
        special = [p for p in secrets.psks if p.psktype == PSKType.RESUMPTION
                   and p.usage in (ResumptionPSKUsage.REINIT, ResumptionPSKUsage.BRANCH)]
        if len(special) > 1:
            raise ValidationError("more than one reinit/branch PSK (§12.4.3.1)")
        pairs = []
        for pid in secrets.psks:
            value = psk_lookup(pid)
            if value is None:
                raise ValidationError("a PSK of the Welcome is not available (§12.4.3.1)")
            pairs.append((pid, value))
        psk_value = psk_secret(suite, pairs)
    info = decrypt_group_info(suite, welcome_secret(suite, secrets.joiner_secret, psk_value),
                              welcome.encrypted_group_info)
    special = [p for p in secrets.psks if p.psktype == PSKType.RESUMPTION
               and p.usage in (ResumptionPSKUsage.REINIT, ResumptionPSKUsage.BRANCH)]
    if special and info.group_context.epoch != 1:
        raise ValidationError("a group joined with a reinit/branch PSK must be in epoch 1 "
                              "(§12.4.3.1)")
    if special and reinit_check is not None:
        reinit_check(special[0], info.group_context)
    ctx = info.group_context
    if ctx.cipher_suite != kp.cipher_suite:
        raise ValidationError("GroupInfo cipher suite differs from the KeyPackage's "
                              "(§12.4.3.1)")
    epoch = epoch_secrets_from_joiner(suite, secrets.joiner_secret, ctx.encode(), psk_value)
    tag = suite.mac(epoch.confirmation_key, ctx.confirmed_transcript_hash)
    if not hmac.compare_digest(tag, info.confirmation_tag):
        raise ValidationError("the GroupInfo confirmation tag does not verify (§12.4.3.1)")
    path_secret = secrets.path_secret.path_secret if secrets.path_secret else None
    return OpenedWelcome(welcome, info, path_secret, epoch)


def join_from_welcome(welcome: Welcome | bytes | OpenedWelcome, bundle: KeyPackageBundle,
                      signature_private_key: bytes, config: GroupConfig, psk_lookup: PskLookup,
                      ratchet_tree: RatchetTree | bytes | None = None,
                      reinit_check: Callable[[PreSharedKeyID, GroupContext], None] | None = None,
                      signer_check: Callable[[LeafNode], None] | None = None
                      ) -> EpochState:
    """The new member's state from a Welcome and the KeyPackage it answers (§12.4.3.1).

    ``reinit_check`` verifies a reinit PSK against the old group (§12.4.3.1).
    ``welcome`` may be one :func:`open_welcome` already decrypted with ``bundle``.
    ``signer_check`` is the application's look at the leaf of the member who
    signed the GroupInfo (who added this client), once that signature is
    verified; it raises to refuse the Welcome.
    """
    from ..crypto import get_suite

    opened = welcome if isinstance(welcome, OpenedWelcome) else open_welcome(
        welcome, bundle, psk_lookup, reinit_check)
    kp = bundle.key_package
    suite = get_suite(kp.cipher_suite)
    info = opened.group_info
    ctx = info.group_context
    epoch = opened.epoch_secrets
    # the leaves' signatures are verified by the batch crypto while this thread
    # decodes and checks the rest of the tree (answers looked at in validate_tree)
    with LeafSignatures(suite, ctx.group_id, config.batch_crypto) as signatures:
        tree = tree_from_group_info(info, ratchet_tree, suite.id, signatures)
        verify_group_info(info, tree, config, signatures)
    if signer_check is not None:
        signer = tree.leaf(info.signer)
        assert signer is not None  # verify_group_info checked it
        signer_check(signer)

    own_leaf = next((i for i, leaf in tree.leaves() if leaf == kp.leaf_node), None)
    if own_leaf is None:
        raise ValidationError("this KeyPackage's leaf is not in the tree (§12.4.3.1)")

    keys = TreePrivateKeys.for_joiner(tree, own_leaf, bundle.encryption_private_key,
                                      info.signer, opened.path_secret)
    return EpochState(
        suite=suite, context=ctx, tree=tree, keys=keys, own_leaf=own_leaf,
        signature_private_key=signature_private_key,
        secrets=replace(epoch, joiner_secret=None, welcome_secret=None, encryption_secret=b""),
        secret_tree=SecretTree(suite, epoch.encryption_secret, tree.n_leaves,
                               max_generation_gap=config.max_generation_gap,
                               out_of_order_window=config.out_of_order_window),
        interim_transcript_hash=interim_transcript_hash(suite, ctx.confirmed_transcript_hash,
                                                        info.confirmation_tag),
        confirmation_tag=info.confirmation_tag,
        resumption_psks={ctx.epoch: epoch.resumption_psk})

