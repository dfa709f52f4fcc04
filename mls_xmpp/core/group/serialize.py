"""Versioned binary serialisation of a member's whole group state.

The storage layer persists a :class:`~.group.Group` after every epoch change
and every processed message; :func:`encode_group` / :func:`decode_group` are
the two ends of that. :func:`encode_state` / :func:`decode_state` do the same
for one :class:`~.state.EpochState` (they are the building blocks, and carry
no header of their own: the enclosing group blob versions them).

Format, version 1 (every structure below uses the TLS presentation language
of RFC 9420 §2.1 through :mod:`mls_xmpp.core.codec`; ``<V>`` is a vector with a
variable-length size prefix, ``optional<T>`` a presence byte then ``T``)::

    "MLSX"                      magic, 4 bytes
    uint16 format_version       = 1
    GroupRecord                 the rest, no trailing bytes

    GroupRecord:
        StateRecord state
        PastEpochRecord past<V>                  ascending epoch
        optional<PendingCommitRecord> pending
        PendingUpdateRecord pending_updates<V>   insertion order
        optional<LastOwnCommitRecord> last_own_commit

    StateRecord:
        uint16 cipher_suite
        GroupContext context
        TreeRecord tree
        PrivateKeysRecord keys
        uint32 own_leaf
        opaque signature_private_key<V>
        SecretsRecord secrets
        SecretTreeRecord secret_tree
        opaque interim_transcript_hash<V>
        opaque confirmation_tag<V>
        CachedProposalRecord proposals<V>        arrival order
        ResumptionPskRecord resumption_psks<V>   ascending epoch
        optional<ReInit> reinit
        uint8 active                             0 or 1

    TreeRecord:        uint32 n_leaves; optional<Node> ratchet_tree<V> (§12.4.3.3 encoding)
    PrivateKeysRecord: uint32 leaf_index; {uint32 node; opaque key<V>} keys<V>  ascending node
    SecretsRecord:     the nine secrets of EpochSecrets in declaration order, each
                       opaque<V>, then optional<opaque> joiner_secret, welcome_secret
    SecretTreeRecord:
        uint32 n_leaves
        uint64 max_generation_gap
        uint64 out_of_order_window
        {uint32 node; opaque secret<V>} nodes<V>               ascending node
        {uint32 leaf; optional<RatchetRecord> handshake;
                      optional<RatchetRecord> application} leaves<V>  ascending leaf
    RatchetRecord:
        uint64 generation                 next generation not yet derived
        opaque secret<V>                  ratchet secret of that generation
        {uint32 generation; opaque key<V>; opaque nonce<V>} skipped<V>  ascending
    CachedProposalRecord: opaque ref<V>; Proposal proposal; Sender sender
    ResumptionPskRecord:  uint64 epoch; opaque resumption_psk<V>

    PastEpochRecord:                      (retained epochs ascending in GroupRecord)
        uint64 epoch
        SecretTreeRecord secret_tree
        opaque sender_data_secret<V>
        uint32 n_leaves                   of that epoch's tree
        {uint32 leaf; optional<LeafNode> leaf_node} changed<V>   ascending leaf
        opaque context<V>                 the encoded GroupContext of that epoch

    A retained epoch keeps only its tree's leaves (all that reading a late
    message needs: the sender's signature key), written as the leaves that
    differ from the next newer epoch's tree (the current tree for the newest
    retained epoch): a Commit changes few leaves, so a large group's state
    does not hold its tree four times. Decoded retained trees have those
    leaves and blank parent nodes. (Version 1 wrote each retained tree whole,
    as a TreeRecord in place of ``n_leaves`` and ``changed``; it is still read.)

    PendingCommitRecord:
        opaque message<V>
        optional<opaque> welcome          (per-recipient Welcomes are derived from it)
        opaque group_info<V>
        StateRecord new_state
        {Proposal proposal; Sender sender} proposals<V>
        Proposal by_value<V>
        {uint32 leaf; KeyPackage key_package} added<V>
        {uint32 leaf; LeafNode leaf_node} removed<V>

    PendingUpdateRecord: opaque encryption_key<V>; LeafNode leaf_node; opaque private_key<V>

    LastOwnCommitRecord:                  the last merged own Commit, to recognise its echo
        opaque message<V>
        CommitAppliedRecord event

    CommitAppliedRecord:
        uint64 epoch
        Sender committer
        MemberRecord added<V>; MemberRecord removed<V>; MemberRecord updated<V>
        uint32 psks
        optional<ReInit> reinit
        uint8 own; uint8 self_removed
        Proposal lost<V>

    MemberRecord: uint32 leaf_index; Credential credential; opaque signature_key<V>

The same state in two parts (:func:`encode_group_parts`), so that a store
need not rewrite a large group's tree for every application message::

    base:     "MLSB" uint16 format_version GroupRecord
              (every SecretTreeRecord of ``state`` and ``past`` with empty
              ``nodes`` and ``leaves``: its parameters only)
    ratchets: "MLSR" uint16 format_version
              {uint64 epoch; SecretTreeRecord secret_tree} epochs<V>
              (the retained epochs ascending, then the current epoch)

:func:`decode_group_parts` requires the ratchets' epochs and tree
parameters to be exactly those of the base.

Only what the state holds is written: secret tree node secrets already
consumed, message keys already used and epochs past the retention window are
absent from the runtime objects, hence from the blob (forward secrecy, §9.2).
Encoding is canonical, so ``encode_group(decode_group(x)) == x``.

Decoding is strict: unknown magic or version, truncated or trailing bytes,
vectors out of order or with duplicates, secrets of the wrong length and
inconsistent sizes are all refused with :class:`DecodeError`, and any other
failure while rebuilding the objects is reported as :class:`DecodeError` too.

Coupling: the secret tree has no public API for its raw state, so this module
reads and writes :class:`SecretTree` internals (``_tree``, ``_ratchets`` and
:class:`_Ratchet`) directly; likewise it restores the private attributes
``_past``, ``_pending``, ``_pending_updates`` and ``_last_own_commit`` of
:class:`Group`. A change to those attributes must be mirrored here (and bump
``FORMAT_VERSION`` if the format changes).

The blob is neither encrypted nor authenticated: it holds the member's
private keys and epoch secrets in the clear, and a flipped bit inside a
secret still decodes. Protect it at rest in the storage layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Annotated

from ..codec import U16, U32, U64, Boolean, Opaque, Optional, Reader, Struct, Vec
from ..crypto import CipherSuite, get_suite
from ..errors import DecodeError, LocalUsageError
from ..messages.credentials import Credential
from ..messages.framing import Sender
from ..messages.group_info import GroupContext
from ..messages.key_package import KeyPackage
from ..messages.leaf_node import LeafNode
from ..messages.nodes import RATCHET_TREE, Node
from ..messages.proposals import PROPOSAL, Proposal, ReInit
from ..schedule.key_schedule import EpochSecrets
from ..tree.ratchet_tree import RatchetTree
from ..tree.secret_tree import MAX_GENERATION, RatchetType, SecretTree, _Ratchet
from ..tree.treekem import TreePrivateKeys
from .commit import PendingCommit
from .config import GroupConfig
from .epoch import PskLookup
from .events import CommitApplied, Member
from .group import Group
from .state import CachedProposal, EpochState, PastEpoch

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "decode_group",
    "decode_group_parts",
    "decode_state",
    "encode_group",
    "encode_group_parts",
    "encode_ratchets",
    "encode_state",
]

#: First four bytes of every serialised group.
MAGIC = b"MLSX"
#: First four bytes of a group's base part (:func:`encode_group_parts`).
BASE_MAGIC = b"MLSB"
#: First four bytes of a group's ratchets part (:func:`encode_ratchets`).
RATCHETS_MAGIC = b"MLSR"
#: Version of the layout described in the module docstring.
FORMAT_VERSION = 2
#: Largest tree a stored state may describe (checked before allocating anything).
MAX_STORED_LEAVES = 1 << 20
#: Older versions :func:`decode_group` still reads.
READABLE_VERSIONS = (1, 2)

_OPT_OPAQUE: Optional[bytes] = Optional(Opaque)


# -- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _TreeRecord(Struct):
    """A ratchet tree: its leaf count and its ``ratchet_tree`` node vector."""

    n_leaves: Annotated[int, U32]
    nodes: Annotated[tuple[Node | None, ...], RATCHET_TREE]


@dataclass(frozen=True)
class _NodeKey(Struct):
    """One HPKE private key of a TreePrivateKeys."""

    node: Annotated[int, U32]
    private_key: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class _PrivateKeysRecord(Struct):
    """A TreePrivateKeys."""

    leaf_index: Annotated[int, U32]
    keys: tuple[_NodeKey, ...]


@dataclass(frozen=True)
class _SecretsRecord(Struct):
    """An EpochSecrets, field for field."""

    sender_data_secret: Annotated[bytes, Opaque]
    encryption_secret: Annotated[bytes, Opaque]
    exporter_secret: Annotated[bytes, Opaque]
    external_secret: Annotated[bytes, Opaque]
    confirmation_key: Annotated[bytes, Opaque]
    membership_key: Annotated[bytes, Opaque]
    resumption_psk: Annotated[bytes, Opaque]
    epoch_authenticator: Annotated[bytes, Opaque]
    init_secret: Annotated[bytes, Opaque]
    joiner_secret: Annotated[bytes | None, _OPT_OPAQUE]
    welcome_secret: Annotated[bytes | None, _OPT_OPAQUE]


@dataclass(frozen=True)
class _NodeSecret(Struct):
    """A tree-node secret of a secret tree not consumed yet."""

    node: Annotated[int, U32]
    secret: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class _SkippedKey(Struct):
    """The key and nonce of a skipped, not yet used generation."""

    generation: Annotated[int, U32]
    key: Annotated[bytes, Opaque]
    nonce: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class _RatchetRecord(Struct):
    """One sender ratchet."""

    generation: Annotated[int, U64]
    secret: Annotated[bytes, Opaque]
    skipped: tuple[_SkippedKey, ...]


_OPT_RATCHET: Optional[_RatchetRecord] = Optional(_RatchetRecord.codec())


@dataclass(frozen=True)
class _LeafRatchets(Struct):
    """The two sender ratchets of an expanded leaf."""

    leaf: Annotated[int, U32]
    handshake: Annotated[_RatchetRecord | None, _OPT_RATCHET]
    application: Annotated[_RatchetRecord | None, _OPT_RATCHET]


@dataclass(frozen=True)
class _SecretTreeRecord(Struct):
    """A SecretTree's remaining state."""

    n_leaves: Annotated[int, U32]
    max_generation_gap: Annotated[int, U64]
    out_of_order_window: Annotated[int, U64]
    nodes: tuple[_NodeSecret, ...]
    leaves: tuple[_LeafRatchets, ...]


@dataclass(frozen=True)
class _CachedProposalRecord(Struct):
    """A cached proposal of the current epoch."""

    ref: Annotated[bytes, Opaque]
    proposal: Annotated[Proposal, PROPOSAL]
    sender: Sender


@dataclass(frozen=True)
class _ResumptionPskRecord(Struct):
    """A retained resumption_psk."""

    epoch: Annotated[int, U64]
    psk: Annotated[bytes, Opaque]


_OPT_REINIT: Optional[ReInit] = Optional(ReInit.codec())


@dataclass(frozen=True)
class _StateRecord(Struct):
    """An EpochState."""

    cipher_suite: Annotated[int, U16]
    context: GroupContext
    tree: _TreeRecord
    keys: _PrivateKeysRecord
    own_leaf: Annotated[int, U32]
    signature_private_key: Annotated[bytes, Opaque]
    secrets: _SecretsRecord
    secret_tree: _SecretTreeRecord
    interim_transcript_hash: Annotated[bytes, Opaque]
    confirmation_tag: Annotated[bytes, Opaque]
    proposals: tuple[_CachedProposalRecord, ...]
    resumption_psks: tuple[_ResumptionPskRecord, ...]
    reinit: Annotated[ReInit | None, _OPT_REINIT]
    active: Annotated[bool, Boolean]


_OPT_LEAF: Optional[LeafNode] = Optional(LeafNode.codec())


@dataclass(frozen=True)
class _LeafChange(Struct):
    """A leaf of a retained epoch's tree that differs from the next newer tree."""

    leaf: Annotated[int, U32]
    leaf_node: Annotated[LeafNode | None, _OPT_LEAF]


@dataclass(frozen=True)
class _PastEpochRecord(Struct):
    """A PastEpoch, its tree as leaf changes against the next newer epoch's tree."""

    epoch: Annotated[int, U64]
    secret_tree: _SecretTreeRecord
    sender_data_secret: Annotated[bytes, Opaque]
    n_leaves: Annotated[int, U32]
    changed: tuple[_LeafChange, ...]
    context: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class _PastEpochRecordV1(Struct):
    """A PastEpoch in format version 1: its whole tree."""

    epoch: Annotated[int, U64]
    secret_tree: _SecretTreeRecord
    sender_data_secret: Annotated[bytes, Opaque]
    tree: _TreeRecord
    context: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class _ProposalWithSender(Struct):
    """A proposal a pending commit covers, with its sender."""

    proposal: Annotated[Proposal, PROPOSAL]
    sender: Sender


@dataclass(frozen=True)
class _AddedRecord(Struct):
    """A member a pending commit adds."""

    leaf: Annotated[int, U32]
    key_package: KeyPackage


@dataclass(frozen=True)
class _RemovedRecord(Struct):
    """A member a pending commit removes."""

    leaf: Annotated[int, U32]
    leaf_node: LeafNode


@dataclass(frozen=True)
class _PendingCommitRecord(Struct):
    """A PendingCommit."""

    message: Annotated[bytes, Opaque]
    welcome: Annotated[bytes | None, _OPT_OPAQUE]
    group_info: Annotated[bytes, Opaque]
    new_state: _StateRecord
    proposals: tuple[_ProposalWithSender, ...]
    by_value: Annotated[tuple[Proposal, ...], Vec(PROPOSAL)]
    added: tuple[_AddedRecord, ...]
    removed: tuple[_RemovedRecord, ...]


@dataclass(frozen=True)
class _PendingUpdateRecord(Struct):
    """A leaf node this member proposed in an Update, with its HPKE private key."""

    encryption_key: Annotated[bytes, Opaque]
    leaf_node: LeafNode
    private_key: Annotated[bytes, Opaque]


_OPT_PENDING: Optional[_PendingCommitRecord] = Optional(_PendingCommitRecord.codec())


@dataclass(frozen=True)
class _MemberRecord(Struct):
    """A roster entry of an event."""

    leaf_index: Annotated[int, U32]
    credential: Credential
    signature_key: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class _CommitAppliedRecord(Struct):
    """A CommitApplied event."""

    epoch: Annotated[int, U64]
    committer: Sender
    added: tuple[_MemberRecord, ...]
    removed: tuple[_MemberRecord, ...]
    updated: tuple[_MemberRecord, ...]
    psks: Annotated[int, U32]
    reinit: Annotated[ReInit | None, _OPT_REINIT]
    own: Annotated[bool, Boolean]
    self_removed: Annotated[bool, Boolean]
    lost: Annotated[tuple[Proposal, ...], Vec(PROPOSAL)]


@dataclass(frozen=True)
class _LastOwnCommitRecord(Struct):
    """This member's last merged Commit and the event it gave."""

    message: Annotated[bytes, Opaque]
    event: _CommitAppliedRecord


_OPT_LAST_OWN: Optional[_LastOwnCommitRecord] = Optional(_LastOwnCommitRecord.codec())


@dataclass(frozen=True)
class _GroupRecord(Struct):
    """Everything a Group holds."""

    state: _StateRecord
    past: tuple[_PastEpochRecord, ...]
    pending: Annotated[_PendingCommitRecord | None, _OPT_PENDING]
    pending_updates: tuple[_PendingUpdateRecord, ...]
    last_own_commit: Annotated[_LastOwnCommitRecord | None, _OPT_LAST_OWN]


@dataclass(frozen=True)
class _GroupRecordV1(Struct):
    """Everything a Group holds, in format version 1."""

    state: _StateRecord
    past: tuple[_PastEpochRecordV1, ...]
    pending: Annotated[_PendingCommitRecord | None, _OPT_PENDING]
    pending_updates: tuple[_PendingUpdateRecord, ...]
    last_own_commit: Annotated[_LastOwnCommitRecord | None, _OPT_LAST_OWN]


@dataclass(frozen=True)
class _EpochRatchetsRecord(Struct):
    """The secret tree of one epoch (current or retained), for the ratchets blob."""

    epoch: Annotated[int, U64]
    secret_tree: _SecretTreeRecord


@dataclass(frozen=True)
class _RatchetsRecord(Struct):
    """Every secret tree a Group holds: retained epochs ascending, the current one last."""

    epochs: tuple[_EpochRatchetsRecord, ...]


# -- errors ------------------------------------------------------------------------------


@contextlib.contextmanager
def _as_decode_error(what: str) -> Iterator[None]:
    """Report every failure inside the block as :class:`DecodeError`.

    Rebuilding objects from stored bytes may trip checks of other modules
    (an unsupported suite, a leaf count that is not a power of two, ...);
    for the caller they all mean the same thing: the data is malformed.
    """
    try:
        yield
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"malformed {what}: {exc}") from exc


def _ascending(values: list[int], what: str) -> None:
    """Refuse values that are not strictly increasing (unsorted or duplicated)."""
    for a, b in zip(values, values[1:], strict=False):
        if a >= b:
            raise DecodeError(f"{what} must be strictly ascending")


def _unique(values: list[bytes], what: str) -> None:
    if len(set(values)) != len(values):
        raise DecodeError(f"duplicate {what}")


def _check_len(value: bytes, n: int, what: str) -> None:
    if len(value) != n:
        raise DecodeError(f"{what} must be {n} bytes, not {len(value)}")


# -- ratchet tree ----------------------------------------------------------------------


def _tree_record(tree: RatchetTree) -> _TreeRecord:
    return _TreeRecord(tree.n_leaves, tree.wire_nodes())


def _tree_from(suite: CipherSuite, rec: _TreeRecord) -> RatchetTree:
    tree = RatchetTree.from_nodes(suite, rec.nodes)
    n = rec.n_leaves
    if n != tree.n_leaves:
        # A tree whose right part is blank but was not truncated: pad it back.
        if n < tree.n_leaves or n & (n - 1) or n > MAX_STORED_LEAVES:
            raise DecodeError(f"ratchet tree of {len(rec.nodes)} nodes cannot have "
                              f"{n} leaves")
        nodes: list[Node | None] = list(tree.nodes())
        nodes.extend([None] * (2 * n - 1 - len(nodes)))
        tree = RatchetTree(suite, nodes)
    return tree


# -- private keys ----------------------------------------------------------------------


def _keys_record(keys: TreePrivateKeys) -> _PrivateKeysRecord:
    return _PrivateKeysRecord(keys.leaf_index,
                              tuple(_NodeKey(x, k) for x, k in sorted(keys.items())))


def _keys_from(rec: _PrivateKeysRecord, tree: RatchetTree) -> TreePrivateKeys:
    _ascending([k.node for k in rec.keys], "private key nodes")
    if rec.keys and rec.keys[-1].node >= tree.width:
        raise DecodeError(f"private key for node {rec.keys[-1].node}, outside the tree")
    return TreePrivateKeys(rec.leaf_index, {k.node: k.private_key for k in rec.keys})


# -- epoch secrets ---------------------------------------------------------------------


def _secrets_record(s: EpochSecrets) -> _SecretsRecord:
    return _SecretsRecord(s.sender_data_secret, s.encryption_secret, s.exporter_secret,
                          s.external_secret, s.confirmation_key, s.membership_key,
                          s.resumption_psk, s.epoch_authenticator, s.init_secret,
                          s.joiner_secret, s.welcome_secret)


def _secrets_from(suite: CipherSuite, rec: _SecretsRecord) -> EpochSecrets:
    nh = suite.hash_len
    for name in ("sender_data_secret", "encryption_secret", "exporter_secret",
                 "external_secret", "confirmation_key", "membership_key", "resumption_psk",
                 "epoch_authenticator", "init_secret", "joiner_secret", "welcome_secret"):
        value = getattr(rec, name)
        # encryption_secret may be blanked once the secret tree holds it (§9.2)
        if value is not None and not (name == "encryption_secret" and value == b""):
            _check_len(value, nh, name)
    return EpochSecrets(rec.sender_data_secret, rec.encryption_secret, rec.exporter_secret,
                        rec.external_secret, rec.confirmation_key, rec.membership_key,
                        rec.resumption_psk, rec.epoch_authenticator, rec.init_secret,
                        rec.joiner_secret, rec.welcome_secret)


# -- secret tree (reads and writes SecretTree internals, see the module docstring) -------


def _ratchet_record(r: _Ratchet | None, reserved: tuple[int, bytes] | None = None
                    ) -> _RatchetRecord | None:
    """A ratchet as stored; with a sending reservation ``(M, secret_M)``
    (:meth:`SecretTree.reserve`), as if it had advanced to ``M`` (no keys kept
    for the generations in between: they are this device's own)."""
    if r is None:
        return None
    if reserved is not None:
        generation, secret = reserved
        return _RatchetRecord(generation, secret,
                              tuple(_SkippedKey(g, k, n) for g, (k, n) in sorted(r.keys.items())))
    return _RatchetRecord(r.generation, r.secret,
                          tuple(_SkippedKey(g, k, n) for g, (k, n) in sorted(r.keys.items())))


def _secret_tree_record(st: SecretTree) -> _SecretTreeRecord:
    hs = st._ratchets[RatchetType.HANDSHAKE]
    app = st._ratchets[RatchetType.APPLICATION]
    leaves = tuple(_LeafRatchets(i, _ratchet_record(hs.get(i)),
                                 _ratchet_record(app.get(i), st.reserved_ratchet(i)))
                   for i in sorted(set(hs) | set(app)))
    nodes = tuple(_NodeSecret(x, s) for x, s in sorted(st._tree.items()))
    return _SecretTreeRecord(st.n_leaves, st.max_generation_gap, st.out_of_order_window,
                             nodes, leaves)


def _ratchet_from(suite: CipherSuite, rec: _RatchetRecord) -> _Ratchet:
    if rec.generation > MAX_GENERATION + 1:
        raise DecodeError(f"ratchet generation {rec.generation} is past the uint32 range")
    _check_len(rec.secret, suite.hash_len, "ratchet secret")
    gens = [k.generation for k in rec.skipped]
    _ascending(gens, "skipped generations")
    if gens and gens[-1] >= rec.generation:
        raise DecodeError("a skipped generation is not older than the ratchet")
    keys: dict[int, tuple[bytes, bytes]] = {}
    for k in rec.skipped:
        _check_len(k.key, suite.aead_key_len, "message key")
        _check_len(k.nonce, suite.aead_nonce_len, "message nonce")
        keys[k.generation] = (k.key, k.nonce)
    return _Ratchet(rec.generation, rec.secret, keys)


def _secret_tree_from(suite: CipherSuite, rec: _SecretTreeRecord) -> SecretTree:
    n = rec.n_leaves
    # The constructor checks the parameters; its root secret is replaced below.
    st = SecretTree(suite, bytes(suite.hash_len), n, max_generation_gap=rec.max_generation_gap,
                    out_of_order_window=rec.out_of_order_window)
    _ascending([x.node for x in rec.nodes], "secret tree nodes")
    if rec.nodes and rec.nodes[-1].node >= 2 * n - 1:
        raise DecodeError(f"secret tree node {rec.nodes[-1].node} is outside the tree")
    for x in rec.nodes:
        _check_len(x.secret, suite.hash_len, "secret tree node secret")
    _ascending([r.leaf for r in rec.leaves], "secret tree leaves")
    if rec.leaves and rec.leaves[-1].leaf >= n:
        raise DecodeError(f"secret tree leaf {rec.leaves[-1].leaf} is outside the tree")
    hs: dict[int, _Ratchet] = {}
    app: dict[int, _Ratchet] = {}
    for lr in rec.leaves:
        if lr.handshake is None and lr.application is None:
            raise DecodeError(f"secret tree leaf {lr.leaf} has no ratchet")
        if lr.handshake is not None:
            hs[lr.leaf] = _ratchet_from(suite, lr.handshake)
        if lr.application is not None:
            app[lr.leaf] = _ratchet_from(suite, lr.application)
    st._tree = {x.node: x.secret for x in rec.nodes}
    st._ratchets = {RatchetType.HANDSHAKE: hs, RatchetType.APPLICATION: app}
    return st


# -- epoch state ---------------------------------------------------------------------------


def _state_record(state: EpochState) -> _StateRecord:
    reinit = state.reinit
    if reinit is not None and not isinstance(reinit, ReInit):
        raise LocalUsageError(f"EpochState.reinit holds a {type(reinit).__name__}, "
                              "not a ReInit")
    return _StateRecord(
        cipher_suite=state.suite.id,
        context=state.context,
        tree=_tree_record(state.tree),
        keys=_keys_record(state.keys),
        own_leaf=state.own_leaf,
        signature_private_key=state.signature_private_key,
        secrets=_secrets_record(state.secrets),
        secret_tree=_secret_tree_record(state.secret_tree),
        interim_transcript_hash=state.interim_transcript_hash,
        confirmation_tag=state.confirmation_tag,
        proposals=tuple(_CachedProposalRecord(c.ref, c.proposal, c.sender)
                        for c in state.proposals.values()),
        resumption_psks=tuple(_ResumptionPskRecord(e, v)
                              for e, v in sorted(state.resumption_psks.items())),
        reinit=reinit,
        active=state.active,
    )


def _state_from(rec: _StateRecord) -> EpochState:
    suite = get_suite(rec.cipher_suite)
    if rec.context.cipher_suite != rec.cipher_suite:
        raise DecodeError(f"state of suite {rec.cipher_suite} with a GroupContext of suite "
                          f"{rec.context.cipher_suite}")
    tree = _tree_from(suite, rec.tree)
    if rec.own_leaf >= tree.n_leaves:
        raise DecodeError(f"own leaf {rec.own_leaf} is outside a tree of {tree.n_leaves} "
                          "leaves")
    secret_tree = _secret_tree_from(suite, rec.secret_tree)
    if secret_tree.n_leaves != tree.n_leaves:
        raise DecodeError("the secret tree and the ratchet tree differ in size")
    _unique([p.ref for p in rec.proposals], "proposal refs")
    _ascending([p.epoch for p in rec.resumption_psks], "resumption PSK epochs")
    for p in rec.resumption_psks:
        _check_len(p.psk, suite.hash_len, "resumption_psk")
    return EpochState(
        suite=suite,
        context=rec.context,
        tree=tree,
        keys=_keys_from(rec.keys, tree),
        own_leaf=rec.own_leaf,
        signature_private_key=rec.signature_private_key,
        secrets=_secrets_from(suite, rec.secrets),
        secret_tree=secret_tree,
        interim_transcript_hash=rec.interim_transcript_hash,
        confirmation_tag=rec.confirmation_tag,
        proposals={p.ref: CachedProposal(p.ref, p.proposal, p.sender) for p in rec.proposals},
        resumption_psks={p.epoch: p.psk for p in rec.resumption_psks},
        reinit=rec.reinit,
        active=rec.active,
    )


def encode_state(state: EpochState) -> bytes:
    """The ``StateRecord`` encoding of ``state`` (no magic or version header)."""
    return _state_record(state).encode()


def decode_state(data: bytes) -> EpochState:
    """Rebuild an :class:`EpochState` from :func:`encode_state` output.

    Raises :class:`DecodeError` for malformed data.
    """
    with _as_decode_error("epoch state"):
        return _state_from(_StateRecord.decode(data))


# -- group -----------------------------------------------------------------------------


def _leaf_changes(tree: RatchetTree, newer: RatchetTree) -> tuple[_LeafChange, ...]:
    """The leaves of ``tree`` that differ from ``newer``'s at the same index."""
    out = []
    n_newer = newer.n_leaves
    for i in range(tree.n_leaves):
        leaf = tree.leaf(i)
        other = newer.leaf(i) if i < n_newer else None
        if leaf is not other and leaf != other:
            out.append(_LeafChange(i, leaf))
    return tuple(out)


def _past_records(group: Group) -> tuple[_PastEpochRecord, ...]:
    """The retained epochs, ascending, each tree against the next newer one."""
    records = []
    newer = group._state.tree
    for e in sorted(group._past, reverse=True):
        p = group._past[e]
        records.append(_PastEpochRecord(p.epoch, _secret_tree_record(p.secret_tree),
                                        p.sender_data_secret, p.tree.n_leaves,
                                        _leaf_changes(p.tree, newer), p.context))
        newer = p.tree
    return tuple(reversed(records))


def _leaves_tree(suite: CipherSuite, n_leaves: int, changed: tuple[_LeafChange, ...],
                 newer: RatchetTree) -> RatchetTree:
    """A retained epoch's tree: ``newer``'s leaves with ``changed`` applied, blank parents."""
    if n_leaves < 1 or n_leaves & (n_leaves - 1) or n_leaves > MAX_STORED_LEAVES:
        # checked before anything is allocated
        raise DecodeError(f"a retained tree cannot have {n_leaves} leaves")
    _ascending([c.leaf for c in changed], "changed leaves of a retained tree")
    if changed and changed[-1].leaf >= n_leaves:
        raise DecodeError(f"changed leaf {changed[-1].leaf} is outside a tree of {n_leaves}")
    nodes: list[Node | None] = [None] * (2 * n_leaves - 1)
    for i in range(min(n_leaves, newer.n_leaves)):
        nodes[2 * i] = newer.leaf(i)
    for c in changed:
        nodes[2 * c.leaf] = c.leaf_node
    return RatchetTree(suite, nodes)


def _past_from(suite: CipherSuite, rec: _PastEpochRecord | _PastEpochRecordV1,
               newer: RatchetTree) -> PastEpoch:
    _check_len(rec.sender_data_secret, suite.hash_len, "sender_data_secret")
    if isinstance(rec, _PastEpochRecordV1):
        tree = _tree_from(suite, rec.tree)
    else:
        tree = _leaves_tree(suite, rec.n_leaves, rec.changed, newer)
    st = _secret_tree_from(suite, rec.secret_tree)
    if st.n_leaves != tree.n_leaves:
        raise DecodeError(f"past epoch {rec.epoch}: secret tree and ratchet tree differ")
    return PastEpoch(rec.epoch, st, rec.sender_data_secret, tree, rec.context)


def _pending_record(p: PendingCommit) -> _PendingCommitRecord:
    return _PendingCommitRecord(
        message=p.message,
        welcome=p.welcome,
        group_info=p.group_info,
        new_state=_state_record(p.new_state),
        proposals=tuple(_ProposalWithSender(x, s) for x, s in p.proposals),
        by_value=tuple(p.by_value),
        added=tuple(_AddedRecord(i, kp) for i, kp in p.added),
        removed=tuple(_RemovedRecord(i, leaf) for i, leaf in p.removed),
    )


def _pending_from(rec: _PendingCommitRecord) -> PendingCommit:
    return PendingCommit(
        message=rec.message,
        welcome=rec.welcome,
        group_info=rec.group_info,
        new_state=_state_from(rec.new_state),
        proposals=[(x.proposal, x.sender) for x in rec.proposals],
        by_value=list(rec.by_value),
        added=[(a.leaf, a.key_package) for a in rec.added],
        removed=[(r.leaf, r.leaf_node) for r in rec.removed],
    )


def _members_record(members: tuple[Member, ...]) -> tuple[_MemberRecord, ...]:
    return tuple(_MemberRecord(m.leaf_index, m.credential, m.signature_key) for m in members)


def _members_from(records: tuple[_MemberRecord, ...]) -> tuple[Member, ...]:
    return tuple(Member(m.leaf_index, m.credential, m.signature_key) for m in records)


def _last_own_record(last: tuple[bytes, CommitApplied] | None) -> _LastOwnCommitRecord | None:
    if last is None:
        return None
    message, e = last
    return _LastOwnCommitRecord(message, _CommitAppliedRecord(
        e.epoch, e.committer, _members_record(e.added), _members_record(e.removed),
        _members_record(e.updated), e.psks, e.reinit, e.own, e.self_removed, tuple(e.lost)))


def _last_own_from(rec: _LastOwnCommitRecord | None) -> tuple[bytes, CommitApplied] | None:
    if rec is None:
        return None
    e = rec.event
    return rec.message, CommitApplied(
        e.epoch, e.committer, added=_members_from(e.added), removed=_members_from(e.removed),
        updated=_members_from(e.updated), psks=e.psks, reinit=e.reinit, own=e.own,
        self_removed=e.self_removed, lost=e.lost)


def _group_record(group: Group) -> _GroupRecord:
    return _GroupRecord(
        state=_state_record(group._state),
        past=_past_records(group),
        pending=None if group._pending is None else _pending_record(group._pending),
        pending_updates=tuple(_PendingUpdateRecord(k, leaf, priv)
                              for k, (leaf, priv) in group._pending_updates.items()),
        last_own_commit=_last_own_record(group._last_own_commit),
    )


def _with_header(magic: bytes, record: Struct) -> bytes:
    w = bytearray(magic)
    U16.write(w, FORMAT_VERSION)
    record.write(w)
    return bytes(w)


def _read_header(r: Reader, magic: bytes, what: str,
                 readable: tuple[int, ...] = (FORMAT_VERSION,)) -> int:
    if r.remaining() < len(magic) or r.read(len(magic)) != magic:
        raise DecodeError(f"not {what} (bad magic)")
    version = r.uint(2)
    if version not in readable:
        raise DecodeError(f"unsupported {what} format version {version}")
    return version


def encode_group(group: Group) -> bytes:
    """The whole state of ``group`` in the versioned format of the module docstring.

    The result holds every secret the member still keeps; store it as such.
    """
    return _with_header(MAGIC, _group_record(group))


def decode_group(data: bytes, config: GroupConfig, psk_lookup: PskLookup) -> Group:
    """Rebuild a :class:`Group` from :func:`encode_group` output.

    ``config`` and ``psk_lookup`` are not stored and are supplied again (the
    secret trees keep the window and gap limits they were created with).
    Raises :class:`DecodeError` for unknown magic or version and for
    malformed data.
    """
    with _as_decode_error("group state"):
        r = Reader(bytes(data))
        version = _read_header(r, MAGIC, "a serialised MLS group", READABLE_VERSIONS)
        rec: _GroupRecord | _GroupRecordV1 = (
            _GroupRecordV1.read(r) if version == 1 else _GroupRecord.read(r))
        r.finish()
        return _group_from(rec, config, psk_lookup)


# -- the state in two parts: what changes per epoch, and the secret trees ------------------


def _blank(st: _SecretTreeRecord) -> _SecretTreeRecord:
    """A secret tree record with its parameters and no secrets (a base blob's placeholder)."""
    return replace(st, nodes=(), leaves=())


def encode_group_parts(group: Group) -> tuple[bytes, bytes]:
    """``(base, ratchets)``: the group's state split by how often it changes.

    ``base`` (magic ``MLSB``) is the layout of :func:`encode_group` with every
    secret tree of the current and retained epochs left empty; it changes
    only with the epoch (a processed or created Commit or proposal).
    ``ratchets`` (magic ``MLSR``, :func:`encode_ratchets`) holds those secret
    trees, the only part that sending or reading an application message
    changes. A store writes both after a handshake message and only
    ``ratchets`` after an application message, which stays small however
    large the group's tree is. The pending Commit's next-epoch secret tree
    is untouched until the Commit is merged and stays in ``base``.
    """
    rec = _group_record(group)
    base = replace(rec, state=replace(rec.state, secret_tree=_blank(rec.state.secret_tree)),
                   past=tuple(replace(p, secret_tree=_blank(p.secret_tree)) for p in rec.past))
    return _with_header(BASE_MAGIC, base), _ratchets_blob(rec)


def encode_ratchets(group: Group) -> bytes:
    """The ``ratchets`` part of :func:`encode_group_parts` alone (see there)."""
    epochs = [_EpochRatchetsRecord(e, _secret_tree_record(group._past[e].secret_tree))
              for e in sorted(group._past)]
    epochs.append(_EpochRatchetsRecord(group._state.epoch,
                                       _secret_tree_record(group._state.secret_tree)))
    return _with_header(RATCHETS_MAGIC, _RatchetsRecord(tuple(epochs)))


def _ratchets_blob(rec: _GroupRecord) -> bytes:
    epochs = [_EpochRatchetsRecord(p.epoch, p.secret_tree) for p in rec.past]
    epochs.append(_EpochRatchetsRecord(rec.state.context.epoch, rec.state.secret_tree))
    return _with_header(RATCHETS_MAGIC, _RatchetsRecord(tuple(epochs)))


def decode_group_parts(base: bytes, ratchets: bytes, config: GroupConfig,
                       psk_lookup: PskLookup) -> Group:
    """Rebuild a :class:`Group` from the two parts of :func:`encode_group_parts`.

    The ratchets must be for exactly the epochs of the base (the retained
    ones and the current one) and for secret trees of the same size and
    limits. Raises :class:`DecodeError` otherwise and for malformed data.
    """
    with _as_decode_error("group state"):
        r = Reader(bytes(base))
        _read_header(r, BASE_MAGIC, "the base of a serialised MLS group")
        rec = _GroupRecord.read(r)
        r.finish()
        r = Reader(bytes(ratchets))
        _read_header(r, RATCHETS_MAGIC, "the ratchets of a serialised MLS group")
        trees = _RatchetsRecord.read(r)
        r.finish()

        slots = [p.secret_tree for p in rec.past] + [rec.state.secret_tree]
        epochs = [p.epoch for p in rec.past] + [rec.state.context.epoch]
        if [e.epoch for e in trees.epochs] != epochs:
            raise DecodeError("the ratchets are for other epochs than the group state")
        for slot, tree in zip(slots, trees.epochs, strict=True):
            if slot.nodes or slot.leaves:
                raise DecodeError("the base of a group state holds secret tree secrets")
            if _blank(tree.secret_tree) != slot:
                raise DecodeError(f"the ratchets of epoch {tree.epoch} are for another tree")
        filled = [t.secret_tree for t in trees.epochs]
        rec = replace(rec, state=replace(rec.state, secret_tree=filled[-1]),
                      past=tuple(replace(p, secret_tree=t)
                                 for p, t in zip(rec.past, filled, strict=False)))
        return _group_from(rec, config, psk_lookup)


def _group_from(rec: _GroupRecord | _GroupRecordV1, config: GroupConfig,
                psk_lookup: PskLookup) -> Group:
    state = _state_from(rec.state)
    suite = state.suite
    _ascending([p.epoch for p in rec.past], "past epochs")
    if rec.past and rec.past[-1].epoch >= state.epoch:
        raise DecodeError("a retained past epoch is not older than the current one")
    past: dict[int, PastEpoch] = {}
    newer = state.tree
    records: tuple[_PastEpochRecord | _PastEpochRecordV1, ...] = rec.past
    for p in reversed(records):  # newest first: each tree is built on the next newer one
        past[p.epoch] = _past_from(suite, p, newer)
        newer = past[p.epoch].tree
    past = dict(sorted(past.items()))
    pending = None if rec.pending is None else _pending_from(rec.pending)
    if pending is not None and pending.new_state.suite.id != suite.id:
        raise DecodeError("the pending commit is for another cipher suite")
    _unique([u.encryption_key for u in rec.pending_updates], "pending update keys")

    group = Group(state, config, psk_lookup)
    group._past = past
    group._pending = pending
    group._pending_updates = {u.encryption_key: (u.leaf_node, u.private_key)
                              for u in rec.pending_updates}
    group._last_own_commit = _last_own_from(rec.last_own_commit)
    return group
