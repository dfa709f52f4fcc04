"""Validation of a ratchet tree received from outside (RFC 9420 §12.4.3.1).

:func:`validate_tree` runs every check a joiner must make before using a tree
("verify the integrity of the ratchet tree"), each failure raising
:class:`ValidationError` (or :class:`InvalidSignatureError` for a leaf
signature) with the section it enforces:

1. unmerged leaves are sorted, below their parent, non-blank, and listed at
   every non-blank node in between (§7.1, §12.4.3.1);
2. the root tree hash equals the expected one (§12.4.3.1, §7.8);
3. every non-blank parent node is parent-hash valid (§7.9.2);
4. every non-blank leaf passes the time-independent LeafNode checks of §7.3
   (signature, extensions and credential type in its capabilities, the
   credential types in use supported by everyone, required capabilities);
5. encryption keys are unique across all nodes and signature keys across
   leaves (§7.3, §12.4.3.1).

Credential validation against an Authentication Service and the lifetime
check depend on the application and the clock; they are the caller's job.
The cost is linear in the size of the tree with a small constant; leaf
signatures dominate.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from ..codec import encode_opaque as _opaque
from ..crypto.ahead import PendingVerify, start_verify
from ..crypto.batch import SERIAL, BatchCrypto
from ..errors import InvalidSignatureError, MLSError, ValidationError
from ..messages.common import LeafNodeSource
from ..messages.extensions import RequiredCapabilities
from ..messages.leaf_node import LeafNode
from ..messages.nodes import ParentNode
from .ratchet_tree import RatchetTree

if TYPE_CHECKING:
    from ..crypto import CipherSuite

__all__ = [
    "check_leaf_node_capabilities",
    "check_parent_hashes",
    "check_unique_keys",
    "check_unmerged_leaves",
    "LeafSignatures",
    "validate_tree",
    "verify_leaf_signatures",
]

# Extension types that are "default" and never listed in capabilities (§7.2).
_DEFAULT_EXTENSIONS = frozenset({1, 2, 3, 4, 5})


def validate_tree(tree: RatchetTree, group_id: bytes, tree_hash: bytes | None = None, *,
                  required_capabilities: RequiredCapabilities | None = None,
                  verify_signatures: bool = True, crypto: BatchCrypto | None = None,
                  signatures: LeafSignatures | None = None) -> None:
    """Run all the checks of the module docstring on ``tree``.

    ``tree_hash`` is the expected root tree hash (``GroupContext.tree_hash``);
    ``None`` skips that comparison. ``group_id`` is the signing context of
    update/commit leaves. ``required_capabilities`` is the group's
    ``required_capabilities`` extension, if any. ``crypto`` computes the
    batch of leaf signatures (serially by default); it is started before the
    other checks and its answers looked at after them, so that a ``crypto``
    with other cores verifies while this thread checks. ``signatures``: the
    leaves' signatures already started (every leaf of ``tree``, in order, see
    :class:`LeafSignatures`), e.g. while the tree was decoded.
    """
    if signatures is None and verify_signatures:
        signatures = LeafSignatures(tree.suite, group_id, crypto)
        for i, leaf in tree.leaves():
            signatures.add(i, leaf)
    with signatures if signatures is not None else _NoSignatures() as sigs:
        check_unmerged_leaves(tree)
        sigs.poll()
        if tree_hash is not None and tree.tree_hash() != tree_hash:
            raise ValidationError("§12.4.3.1: the tree hash of the ratchet tree does not "
                                  "match the group context")
        sigs.poll()
        check_parent_hashes(tree)
        sigs.poll()
        check_unique_keys(tree)
        sigs.poll()
        check_leaf_node_capabilities(tree, required_capabilities)
        if verify_signatures:
            sigs.check()


class LeafSignatures:
    """The signatures of a tree's leaves (§7.3), handed over as the leaves become known.

    :meth:`add` every non-blank leaf in increasing leaf index; :meth:`check`
    raises :class:`InvalidSignatureError` for the leftmost leaf whose
    signature does not verify, as :func:`verify_leaf_signatures` does. The
    verifications run on ``crypto`` (:func:`~mls_xmpp.core.crypto.ahead.start_verify`:
    with a worker pool, while the caller carries on; serially, in :meth:`check`).
    Use it as a context manager, or :meth:`close` it.
    """

    def __init__(self, suite: CipherSuite, group_id: bytes,
                 crypto: BatchCrypto | None = None) -> None:
        self._suite = suite
        self._group_id = group_id
        self._pending: PendingVerify = start_verify(crypto or SERIAL, suite.id)
        self._leaves: list[tuple[int, LeafNode, bytes | None]] = []
        self._index: list[int] = []  # positions in _leaves of the items added, in order

    def add(self, leaf_index: int, leaf: LeafNode) -> None:
        """Hand over the signature of ``leaf`` at ``leaf_index``."""
        gid = None if leaf.leaf_node_source == LeafNodeSource.KEY_PACKAGE else self._group_id
        k = len(self._leaves)
        self._leaves.append((leaf_index, leaf, gid))
        try:
            pk, label, content, sig = leaf.signature_item(gid, None if gid is None
                                                          else leaf_index)
        except MLSError:
            return  # left to the serial check in check()
        self._index.append(k)
        self._pending.add((pk, self._suite.labelled(label) + _opaque(content), sig))

    def poll(self) -> None:
        """Let the batch crypto move along (see :meth:`PendingVerify.poll`)."""
        self._pending.poll()

    def check(self) -> None:
        """Raise for the leftmost leaf whose signature does not verify (§7.3)."""
        verified = [False] * len(self._leaves)
        for k, ok in zip(self._index, self._pending.result(), strict=True):
            verified[k] = ok
        for k, (i, leaf, gid) in enumerate(self._leaves):
            if verified[k]:
                continue
            try:
                leaf.verify_signature(self._suite, gid, None if gid is None else i)
            except InvalidSignatureError as e:
                raise InvalidSignatureError(f"§7.3: the signature of leaf {i} does not "
                                            f"verify ({e})") from e

    def close(self) -> None:
        """Give up the verifications not answered yet."""
        self._pending.close()

    def __enter__(self) -> LeafSignatures:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _NoSignatures:
    """Stands in for :class:`LeafSignatures` when they are not verified."""

    def poll(self) -> None:
        pass

    def check(self) -> None:
        pass

    def __enter__(self) -> _NoSignatures:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass


def check_unmerged_leaves(tree: RatchetTree) -> None:
    """Check every ``unmerged_leaves`` list (§7.1, §12.4.3.1).

    Each list is strictly increasing; each entry is a non-blank leaf below the
    parent, and every non-blank node between that leaf and the parent lists it
    too.
    """
    nodes = tree.nodes()
    n_leaves = tree.n_leaves
    for p in range(1, len(nodes), 2):
        node = nodes[p]
        if node is None:
            continue
        assert isinstance(node, ParentNode)
        um = node.unmerged_leaves
        if not um:
            continue
        if any(a >= b for a, b in zip(um, um[1:], strict=False)):
            raise ValidationError(f"§7.1: unmerged_leaves of node {p} are not sorted "
                                  "in increasing order")
        k = (p ^ (p + 1)).bit_length() - 1
        lo, hi = p - ((1 << k) - 1), p + ((1 << k) - 1)
        for u in um:
            x = 2 * u
            if u >= n_leaves or not lo <= x <= hi:
                raise ValidationError(f"§12.4.3.1: unmerged leaf {u} of node {p} is not "
                                      "below it")
            if nodes[x] is None:
                raise ValidationError(f"§12.4.3.1: unmerged leaf {u} of node {p} is blank")
            # every non-blank intermediate node between x and p lists u
            y, j = x, 0
            while True:
                b = (y >> (j + 1)) & 1
                y = (y | (1 << j)) ^ (b << (j + 1))
                j += 1
                if y == p:
                    break
                mid = nodes[y]
                if mid is not None:
                    assert isinstance(mid, ParentNode)
                    if u not in mid.unmerged_leaves:
                        raise ValidationError(
                            f"§12.4.3.1: leaf {u} is unmerged at node {p} but not at the "
                            f"non-blank node {y} between them")


def _resolution_sizes(tree: RatchetTree) -> list[int]:
    """``len(resolution(x))`` for every node, bottom-up in linear time (§4.1.1)."""
    nodes = tree.nodes()
    width = len(nodes)
    size = [0] * width
    for x in range(0, width, 2):
        if nodes[x] is not None:
            size[x] = 1
    k = 1
    while (1 << k) <= width:
        half = 1 << (k - 1)
        for x in range((1 << k) - 1, width, 1 << (k + 1)):
            node = nodes[x]
            if node is None:
                size[x] = size[x - half] + size[x + half]
            else:
                assert isinstance(node, ParentNode)
                size[x] = 1 + len(node.unmerged_leaves)
        k += 1
    return size


def check_parent_hashes(tree: RatchetTree) -> None:
    """Check that every non-blank parent node is parent-hash valid (§7.9.2).

    Top-down form: for a non-blank parent P with children C and S, a node D is
    a valid link when D is in the resolution of C, the resolution of C minus
    D equals P's unmerged leaves under C, and ``D.parent_hash`` is the parent
    hash of P with copath child S. Each non-blank parent must have exactly one
    such D. Since every D lies strictly below its P and is itself either a
    leaf or a parent with its own valid link, every chain ends at a leaf.

    Requires consistent unmerged leaves (:func:`check_unmerged_leaves`).
    """
    nodes = tree.nodes()
    sizes = _resolution_sizes(tree)
    for p in range(1, len(nodes), 2):
        node = nodes[p]
        if node is None:
            continue
        assert isinstance(node, ParentNode)
        half = 1 << (((p ^ (p + 1)).bit_length() - 1) - 1)
        links = 0
        for c, s in ((p - half, p + half), (p + half, p - half)):
            if _is_link(tree, node, p, c, s, sizes):
                links += 1
        if links != 1:
            raise ValidationError(
                f"§7.9.2: parent node {p} is not parent-hash valid "
                f"({'no' if links == 0 else 'more than one'} child links to it)")


def _is_link(tree: RatchetTree, node: ParentNode, p: int, c: int, s: int,
             sizes: list[int]) -> bool:
    """Whether some D under child ``c`` is a valid parent-hash link to ``p`` (§7.9.2)."""
    k = (c ^ (c + 1)).bit_length() - 1
    lo, hi = c - ((1 << k) - 1), c + ((1 << k) - 1)
    unmerged = {2 * u for u in node.unmerged_leaves if lo <= 2 * u <= hi}
    if sizes[c] != len(unmerged) + 1:
        return False
    others = [r for r in tree.resolution(c) if r not in unmerged]
    if len(others) != 1:
        return False
    d = tree.nodes()[others[0]]
    if isinstance(d, ParentNode):
        ph = d.parent_hash
    elif isinstance(d, LeafNode) and d.leaf_node_source == LeafNodeSource.COMMIT:
        ph = d.parent_hash or b""
    else:
        return False
    return ph == tree.parent_hash(p, s)


def verify_leaf_signatures(tree: RatchetTree, group_id: bytes,
                           crypto: BatchCrypto | None = None) -> None:
    """Verify the signature of every non-blank leaf (§7.3).

    Leaves from an update or a commit are verified with ``group_id`` and their
    leaf index as context (§7.2). Raises :class:`InvalidSignatureError` naming
    the leftmost leaf whose signature does not verify. The signatures are
    verified as one batch by ``crypto`` (:mod:`~mls_xmpp.core.crypto.batch`;
    serially by default); a leaf that fails there is verified again serially,
    so errors are the serial ones.
    """
    with LeafSignatures(tree.suite, group_id, crypto) as signatures:
        for i, leaf in tree.leaves():
            signatures.add(i, leaf)
        signatures.check()


def check_leaf_node_capabilities(tree: RatchetTree,
                                 required: RequiredCapabilities | None = None) -> None:
    """The time-independent LeafNode checks of §7.3 on every leaf of the tree.

    * every non-default extension of the leaf is listed in its capabilities;
    * its credential type is listed in its capabilities (§7.2);
    * it supports every credential type in use in the tree;
    * it supports the group's required capabilities (§11.1), if given.
    """
    in_use: set[int] = set()
    leaves = list(tree.leaves())
    for _, leaf in leaves:
        in_use.add(leaf.credential.credential_type)
    for i, leaf in leaves:
        caps = leaf.capabilities
        for e in leaf.extensions:
            if e.extension_type not in _DEFAULT_EXTENSIONS and \
                    e.extension_type not in caps.extensions:
                raise ValidationError(f"§7.3: leaf {i} uses extension {e.extension_type:#06x} "
                                      "without listing it in its capabilities")
        creds = set(caps.credentials)
        missing = in_use - creds
        if missing:
            raise ValidationError(f"§7.3: leaf {i} does not support the credential types "
                                  f"{sorted(missing)} used in the group")
        if required is not None:
            _check_required(i, leaf, required)


def _check_required(i: int, leaf: LeafNode, required: RequiredCapabilities) -> None:
    caps = leaf.capabilities
    for t in required.extension_types:
        if t not in _DEFAULT_EXTENSIONS and t not in caps.extensions:
            raise ValidationError(f"§7.3/§11.1: leaf {i} lacks required extension {t:#06x}")
    for t in required.proposal_types:
        if t > 7 and t not in caps.proposals:
            raise ValidationError(f"§7.3/§11.1: leaf {i} lacks required proposal {t:#06x}")
    for t in required.credential_types:
        if t not in caps.credentials:
            raise ValidationError(f"§7.3/§11.1: leaf {i} lacks required credential {t:#06x}")


def check_unique_keys(tree: RatchetTree) -> None:
    """Encryption keys unique over all nodes, signature keys over leaves (§7.3, §12.4.3.1)."""
    enc: set[bytes] = set()
    sig: set[bytes] = set()
    for x, node in enumerate(tree.nodes()):
        if node is None:
            continue
        key = node.encryption_key
        if key in enc:
            raise ValidationError(f"§7.3/§12.4.3.1: encryption key of node {x} appears in "
                                  "another node of the tree")
        enc.add(key)
        if isinstance(node, LeafNode):
            if node.signature_key in sig:
                raise ValidationError(f"§7.3: signature key of leaf {x >> 1} appears in "
                                      "another leaf of the tree")
            sig.add(node.signature_key)
