"""Moving to the next epoch: PSKs, transcript hashes, key schedule (RFC 9420 §8, §12.4).

Shared by the committer (:mod:`.commit`), the receivers (:mod:`.process`) and
the external joiner (:mod:`.external`), so all compute the new epoch alike.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import LocalUsageError, ValidationError
from ..messages.extensions import Extensions
from ..messages.framing import AuthenticatedContent
from ..messages.group_info import GroupContext
from ..messages.proposals import ReInit
from ..schedule.key_schedule import EpochSecrets, epoch_secrets_from_init
from ..schedule.psk import PreSharedKeyID, PSKType, psk_secret
from ..schedule.transcript import confirmed_transcript_hash, interim_transcript_hash
from ..tree.ratchet_tree import RatchetTree
from ..tree.secret_tree import SecretTree
from ..tree.treekem import TreePrivateKeys
from .config import GroupConfig
from .state import EpochState

#: Finds the secret of a PSK the group does not hold itself (external PSKs,
#: resumption PSKs of other groups); ``None`` when unknown.
PskLookup = Callable[[PreSharedKeyID], "bytes | None"]


def no_psks(psk_id: PreSharedKeyID) -> bytes | None:
    """A :data:`PskLookup` that knows no PSK."""
    return None


def resolve_psks(state: EpochState | None, psk_ids: list[PreSharedKeyID], lookup: PskLookup,
                 group_id: bytes) -> bytes | None:
    """``psk_secret`` for the PSKs of a Commit or Welcome (§8.4); ``None`` if none.

    Resumption PSKs of this group come from the retained ``resumption_psk``
    values; everything else from ``lookup``. A missing PSK is an error (§12.4.2).
    """
    if not psk_ids:
        return None
    pairs = []
    for pid in psk_ids:
        secret = None
        if (state is not None and pid.psktype == PSKType.RESUMPTION
                and pid.psk_group_id == group_id and pid.psk_epoch is not None):
            secret = state.resumption_psks.get(pid.psk_epoch)
        if secret is None:
            secret = lookup(pid)
        if secret is None:
            raise ValidationError("a PSK of the Commit is not available (§12.4.2)")
        pairs.append((pid, secret))
    suite = state.suite if state is not None else None
    if suite is None:  # pragma: no cover - callers pass a state
        raise LocalUsageError("resolve_psks needs the suite")
    return psk_secret(suite, pairs)


@dataclass
class NextEpoch:
    """The new epoch computed from a Commit, before anything is swapped in."""

    context: GroupContext
    secrets: EpochSecrets
    confirmation_tag: bytes
    interim_transcript_hash: bytes


def compute_next_epoch(state: EpochState, ac: AuthenticatedContent, tree: RatchetTree,
                       extensions: Extensions, init_secret: bytes, commit_secret: bytes | None,
                       psk_secret_value: bytes | None, *,
                       expected_tag: bytes | None) -> NextEpoch:
    """Transcript hashes, new GroupContext and key schedule for a Commit (§8, §8.2).

    ``ac`` carries the Commit's signature; its confirmation tag is ignored
    here. With ``expected_tag`` (receivers), the computed confirmation tag
    must equal it (§12.4.2).
    """
    suite = state.suite
    confirmed = confirmed_transcript_hash(suite, state.interim_transcript_hash, ac)
    ctx = GroupContext(state.context.version, suite.id, state.group_id, state.epoch + 1,
                       tree.tree_hash(), confirmed, extensions)
    secrets = epoch_secrets_from_init(suite, init_secret, ctx.encode(), commit_secret,
                                      psk_secret_value)
    tag = suite.mac(secrets.confirmation_key, confirmed)
    if expected_tag is not None and not hmac.compare_digest(tag, expected_tag):
        raise ValidationError("the confirmation tag of the Commit does not verify (§12.4.2)")
    return NextEpoch(ctx, secrets, tag, interim_transcript_hash(suite, confirmed, tag))


def build_state(previous: EpochState, config: GroupConfig, nxt: NextEpoch, tree: RatchetTree,
                keys: TreePrivateKeys, own_leaf: int, reinit: ReInit | None) -> EpochState:
    """The member's EpochState for the new epoch."""
    resumption = {e: v for e, v in previous.resumption_psks.items()
                  if e > nxt.context.epoch - config.resumption_psk_epochs}
    resumption[nxt.context.epoch] = nxt.secrets.resumption_psk
    return EpochState(
        suite=previous.suite, context=nxt.context, tree=tree, keys=keys, own_leaf=own_leaf,
        signature_private_key=previous.signature_private_key,
        # forward secrecy: the joiner and welcome secrets are not kept (§8), nor
        # the secret tree's root once the tree holds it (§9)
        secrets=replace(nxt.secrets, joiner_secret=None, welcome_secret=None,
                        encryption_secret=b""),
        secret_tree=SecretTree(previous.suite, nxt.secrets.encryption_secret, tree.n_leaves,
                               max_generation_gap=config.max_generation_gap,
                               out_of_order_window=config.out_of_order_window),
        interim_transcript_hash=nxt.interim_transcript_hash,
        confirmation_tag=nxt.confirmation_tag, resumption_psks=resumption, reinit=reinit)
