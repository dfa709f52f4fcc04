"""The public ratchet tree of a group (RFC 9420 §4, §7).

:class:`RatchetTree` is the left-balanced array tree of RFC 9420 Appendix C:
``LeafNode`` values at even indices, ``ParentNode`` values at odd ones and
``None`` for blank nodes, always padded to ``2**(d+1) - 1`` nodes.

Cost model (the target is groups of 50,000 members):

* Tree hashes (§7.8) are cached per node. Changing a node marks it and its
  ancestors dirty; the set of dirty nodes is closed upwards, so marking stops
  at the first ancestor that is already dirty and :meth:`RatchetTree.tree_hash`
  only descends into dirty nodes. A steady-state change costs ``O(log n)``
  hashes.
* Parent hashes (§7.9) are cached per ``(parent, copath child)`` pair and
  dropped on the same walk: an entry is only kept while the copath child's
  tree hash is clean, so a walk that stops early can never leave a stale one.
* Each node keeps the number of non-blank nodes and non-blank leaves in its
  subtree, so "is this resolution empty", "filtered direct path" and "leftmost
  blank leaf" are ``O(1)`` / ``O(log n)`` and the resolution of a node costs
  ``O(|resolution| log n)``.
* An index of encryption keys (all nodes) and signature keys (leaves) answers
  the uniqueness checks of §7.3 and §12.4.2 in ``O(1)``; copies share it and
  keep only their own changes (see :class:`_KeyIndex`).

:meth:`RatchetTree.copy` copies a handful of flat lists of references, so the
group layer can apply a Commit to a copy and keep the original on failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace

from ..codec import Optional, Reader, encode_opaque
from ..crypto import CipherSuite
from ..errors import DecodeError, LocalUsageError, ValidationError
from ..messages.leaf_node import LeafNode
from ..messages.nodes import NODE, RATCHET_TREE, Node, ParentNode
from . import math as tm

__all__ = ["RatchetTree"]


def _level(x: int) -> int:
    return (x ^ (x + 1)).bit_length() - 1


def _opaque(data: bytes) -> bytes:
    """``opaque<V>`` with the one-byte length fast path (hashes, keys)."""
    n = len(data)
    return bytes((n,)) + data if n < 64 else encode_opaque(data)


def _encode_parent(node: ParentNode) -> bytes:
    """ParentNode encoding, inlined for the hashing hot path (§7.1)."""
    um = node.unmerged_leaves
    return (_opaque(node.encryption_key) + _opaque(node.parent_hash)
            + _opaque(b"".join(u.to_bytes(4, "big") for u in um) if um else b""))


def _width(n_leaves: int) -> int:
    return 2 * n_leaves - 1


class _KeyIndex:
    """A map ``key -> node index`` whose copies share one frozen base dict.

    Each instance owns a small overlay (``_added``, ``_removed``); the base is
    never mutated once shared. :meth:`copy` folds the overlay into a new base
    when it has grown to 1/32 of the base, so lookups stay ``O(1)`` and a
    copy costs ``O(changes)`` instead of ``O(n)``.
    """

    __slots__ = ("_base", "_added", "_removed")

    def __init__(self, base: dict[bytes, int] | None = None) -> None:
        self._base: dict[bytes, int] = {} if base is None else base
        self._added: dict[bytes, int] = {}
        self._removed: set[bytes] = set()

    def get(self, key: bytes) -> int | None:
        v = self._added.get(key)
        if v is not None:
            return v
        if key in self._removed:
            return None
        return self._base.get(key)

    def add(self, key: bytes, x: int) -> None:
        if self.get(key) is None:  # keep the first holder of a duplicated key
            self._added[key] = x

    def remove(self, key: bytes, x: int) -> None:
        if self.get(key) != x:  # another holder of a duplicated key
            return
        self._added.pop(key, None)
        if key in self._base:
            self._removed.add(key)

    def copy(self) -> _KeyIndex:
        if len(self._added) + len(self._removed) > len(self._base) // 32:
            base = {k: v for k, v in self._base.items() if k not in self._removed}
            base.update(self._added)
            self._base, self._added, self._removed = base, {}, set()
        new = _KeyIndex(self._base)
        new._added = self._added.copy()
        new._removed = self._removed.copy()
        return new


_OPTIONAL_NODE = Optional(NODE)


class RatchetTree:
    """A ratchet tree of one cipher suite (RFC 9420 §4.1, §7).

    Build one with :meth:`create` (a one-member group), :meth:`decode` (the
    ``ratchet_tree`` extension, §12.4.3.3) or :meth:`from_nodes`. Mutators
    (:meth:`add_leaf`, :meth:`update_leaf`, :meth:`remove_leaf`,
    :meth:`merge_path`, :meth:`set_leaf_node`) change the tree in place; use
    :meth:`copy` first when the change may have to be rolled back.

    Node indices are array indices (leaf ``i`` is node ``2*i``); leaf indices
    are named ``leaf_index`` throughout.
    """

    __slots__ = ("suite", "_n_leaves", "_nodes", "_th", "_ph", "_count", "_leafcount",
                 "_enc", "_sig", "_cred_in_use", "_cred_support")

    def __init__(self, suite: CipherSuite, nodes: Sequence[Node | None]) -> None:
        """Wrap ``nodes`` (already padded to ``2**(d+1) - 1`` and type-checked).

        Prefer :meth:`from_nodes` or :meth:`decode`, which check their input.
        """
        width = len(nodes)
        n_leaves = (width + 1) // 2
        tm.check_n_leaves(n_leaves)
        self.suite = suite
        self._n_leaves = n_leaves
        self._nodes: list[Node | None] = list(nodes)
        self._th: list[bytes | None] = [None] * width
        self._ph: list[bytes | None] = [None] * (2 * width)
        self._build_counts()
        self._build_indexes()

    # -- construction ------------------------------------------------------

    @classmethod
    def create(cls, suite: CipherSuite, leaf_node: LeafNode) -> RatchetTree:
        """The one-leaf tree of a new group (RFC 9420 §11)."""
        return cls(suite, [leaf_node])

    @classmethod
    def from_nodes(cls, suite: CipherSuite, nodes: Sequence[Node | None]) -> RatchetTree:
        """A tree from the entries of a ``ratchet_tree`` vector (§12.4.3.3).

        The last entry must be non-blank; the tree is extended to the right
        with the fewest blank nodes giving ``2**(d+1) - 1`` entries. Leaves
        must sit at even and parent nodes at odd positions. Raises
        :class:`DecodeError` otherwise.
        """
        if not nodes:
            raise DecodeError("§12.4.3.3: a ratchet_tree has at least one node")
        if nodes[-1] is None:
            raise DecodeError("§12.4.3.3: the last node of a ratchet_tree must not be blank")
        for x, node in enumerate(nodes):
            if node is None:
                continue
            if x & 1:
                if not isinstance(node, ParentNode):
                    raise DecodeError(f"§12.4.3.3: node {x} is a parent position, "
                                      "but holds a leaf node")
            elif not isinstance(node, LeafNode):
                raise DecodeError(f"§12.4.3.3: node {x} is a leaf position, "
                                  "but holds a parent node")
        n_leaves = 1
        while _width(n_leaves) < len(nodes):
            n_leaves *= 2
        padded = list(nodes)
        padded.extend([None] * (_width(n_leaves) - len(nodes)))
        return cls(suite, padded)

    @classmethod
    def decode(cls, suite: CipherSuite, data: bytes,
               on_leaf: Callable[[int, LeafNode], None] | None = None) -> RatchetTree:
        """Decode ``optional<Node> ratchet_tree<V>`` (§12.4.3.3); see :meth:`from_nodes`.

        This checks the encoding only; validate a tree received from outside
        with :func:`mls_xmpp.core.tree.validation.validate_tree`. ``on_leaf``
        is called with each leaf at a leaf position as soon as it is decoded
        (leaf index, leaf), e.g. to start verifying its signature
        (:class:`~mls_xmpp.core.tree.validation.LeafSignatures`) while the rest
        is decoded; whether the whole is a valid tree is only known on return.
        """
        if on_leaf is None:
            return cls.from_nodes(suite, RATCHET_TREE.decode(data))
        r = Reader(bytes(data))
        s = r.sub()  # the vector's bytes, as RATCHET_TREE reads them
        read = _OPTIONAL_NODE.read
        nodes: list[Node | None] = []
        while s.pos < s.end:
            node = read(s)
            if isinstance(node, LeafNode) and not len(nodes) & 1:
                on_leaf(len(nodes) >> 1, node)
            nodes.append(node)
        r.finish()
        return cls.from_nodes(suite, nodes)

    def encode(self) -> bytes:
        """The ``ratchet_tree`` encoding, without blank nodes after the last non-blank one."""
        return RATCHET_TREE.encode(self.wire_nodes())

    def wire_nodes(self) -> tuple[Node | None, ...]:
        """The node list as sent in a ``ratchet_tree`` extension (trailing blanks stripped)."""
        nodes = self._nodes
        end = len(nodes)
        while end > 0 and nodes[end - 1] is None:
            end -= 1
        return tuple(nodes[:end])

    def copy(self) -> RatchetTree:
        """An independent copy: flat list copies of node references and caches."""
        new = object.__new__(RatchetTree)
        new.suite = self.suite
        new._n_leaves = self._n_leaves
        new._nodes = self._nodes.copy()
        new._th = self._th.copy()
        new._ph = self._ph.copy()
        new._count = self._count.copy()
        new._leafcount = self._leafcount.copy()
        new._enc = self._enc.copy()
        new._sig = self._sig.copy()
        new._cred_in_use = self._cred_in_use.copy()
        new._cred_support = self._cred_support.copy()
        return new

    def _build_counts(self) -> None:
        nodes = self._nodes
        width = len(nodes)
        count = [0] * width
        leafcount = [0] * width
        for x in range(0, width, 2):
            if nodes[x] is not None:
                count[x] = leafcount[x] = 1
        k = 1
        while (1 << k) <= width:
            half = 1 << (k - 1)
            for x in range((1 << k) - 1, width, 1 << (k + 1)):
                lc, rc = x - half, x + half
                count[x] = count[lc] + count[rc] + (nodes[x] is not None)
                leafcount[x] = leafcount[lc] + leafcount[rc]
            k += 1
        self._count = count
        self._leafcount = leafcount

    def _build_indexes(self) -> None:
        enc: dict[bytes, int] = {}
        sig: dict[bytes, int] = {}
        for x, node in enumerate(self._nodes):
            if node is None:
                continue
            enc.setdefault(node.encryption_key, x)
            if isinstance(node, LeafNode):
                sig.setdefault(node.signature_key, x >> 1)
        self._enc = _KeyIndex(enc)
        self._sig = _KeyIndex(sig)
        self._cred_in_use: Counter[int] = Counter()
        self._cred_support: Counter[int] = Counter()
        for node in self._nodes[::2]:
            if node is not None:
                assert isinstance(node, LeafNode)
                self._count_credentials(node, 1)

    def _count_credentials(self, leaf: LeafNode, delta: int) -> None:
        self._cred_in_use[leaf.credential.credential_type] += delta
        for t in set(leaf.capabilities.credentials):
            self._cred_support[t] += delta

    def credential_types(self, ignore: Collection[int] = ()
                         ) -> tuple[frozenset[int], frozenset[int] | None]:
        """Credential types in use, and those every member supports (§7.3), in O(1).

        Leaves in ``ignore`` (leaf indices) are left out; the second value is
        ``None`` when no member remains.
        """
        in_use = Counter(self._cred_in_use)
        support = Counter(self._cred_support)
        members = self.n_members
        for i in set(ignore):
            leaf = self.leaf(i) if 0 <= i < self._n_leaves else None
            if leaf is not None:
                members -= 1
                in_use[leaf.credential.credential_type] -= 1
                for t in set(leaf.capabilities.credentials):
                    support[t] -= 1
        if members == 0:
            return frozenset(), None
        return (frozenset(t for t, c in in_use.items() if c > 0),
                frozenset(t for t, c in support.items() if c == members))

    # -- shape and access --------------------------------------------------

    @property
    def n_leaves(self) -> int:
        """Number of leaves, blank ones included (a power of two, §4.1)."""
        return self._n_leaves

    @property
    def width(self) -> int:
        """Number of nodes, ``2 * n_leaves - 1``."""
        return len(self._nodes)

    @property
    def root(self) -> int:
        """Node index of the root."""
        return self._n_leaves - 1

    @property
    def n_members(self) -> int:
        """Number of non-blank leaves."""
        return self._leafcount[self._n_leaves - 1]

    def node(self, x: int) -> Node | None:
        """The node at node index ``x`` (``None`` when blank)."""
        if not 0 <= x < len(self._nodes):
            raise LocalUsageError(f"node {x} is outside a tree of {len(self._nodes)} nodes")
        return self._nodes[x]

    def leaf(self, leaf_index: int) -> LeafNode | None:
        """The LeafNode at ``leaf_index`` (``None`` when blank)."""
        if not 0 <= leaf_index < self._n_leaves:
            raise LocalUsageError(f"leaf {leaf_index} is outside a tree of "
                                  f"{self._n_leaves} leaves")
        node = self._nodes[2 * leaf_index]
        assert node is None or isinstance(node, LeafNode)
        return node

    def parent_node(self, x: int) -> ParentNode | None:
        """The ParentNode at odd node index ``x`` (``None`` when blank)."""
        node = self.node(x)
        if x & 1 == 0:
            raise LocalUsageError(f"node {x} is a leaf")
        assert node is None or isinstance(node, ParentNode)
        return node

    def nodes(self) -> Sequence[Node | None]:
        """All ``width`` nodes (a read-only view; do not mutate)."""
        return self._nodes

    def leaves(self) -> Iterator[tuple[int, LeafNode]]:
        """``(leaf_index, leaf_node)`` for every non-blank leaf, left to right."""
        nodes = self._nodes
        for x in range(0, len(nodes), 2):
            node = nodes[x]
            if node is not None:
                assert isinstance(node, LeafNode)
                yield x >> 1, node

    def blank_leaves(self) -> list[int]:
        """Leaf indices of the blank leaves, left to right."""
        nodes = self._nodes
        return [x >> 1 for x in range(0, len(nodes), 2) if nodes[x] is None]

    def leftmost_blank_leaf(self) -> int | None:
        """The leftmost blank leaf (§12.1.1), or ``None`` when every leaf is taken; O(log n)."""
        root = self._n_leaves - 1
        lc = self._leafcount
        if lc[root] == self._n_leaves:
            return None
        x, k = root, _level(root)
        while k > 0:
            left = x - (1 << (k - 1))
            x = left if lc[left] < (1 << (k - 1)) else x + (1 << (k - 1))
            k -= 1
        return x >> 1

    def unmerged_leaves(self, x: int) -> tuple[int, ...]:
        """The unmerged leaves of parent node ``x`` (empty when blank)."""
        node = self.parent_node(x)
        return () if node is None else node.unmerged_leaves

    def is_blank_subtree(self, x: int) -> bool:
        """True when every node of the subtree under ``x`` is blank (empty resolution)."""
        return self._count[x] == 0

    def find_encryption_key(self, key: bytes) -> int | None:
        """Node index of a node whose encryption_key is ``key``, or ``None`` (§7.3)."""
        return self._enc.get(key)

    def find_signature_key(self, key: bytes) -> int | None:
        """Leaf index of a leaf whose signature_key is ``key``, or ``None`` (§7.3)."""
        return self._sig.get(key)

    # -- paths -------------------------------------------------------------

    def _check_leaf(self, leaf_index: int) -> None:
        if not 0 <= leaf_index < self._n_leaves:
            raise LocalUsageError(f"leaf {leaf_index} is outside a tree of "
                                  f"{self._n_leaves} leaves")

    def direct_path(self, leaf_index: int) -> list[int]:
        """Direct path of a leaf, from its parent to the root (§4.1.2)."""
        self._check_leaf(leaf_index)
        return tm.direct_path(2 * leaf_index, self._n_leaves)

    def copath(self, leaf_index: int) -> list[int]:
        """Copath of a leaf, from its sibling up to the root's child (§4.1.2)."""
        self._check_leaf(leaf_index)
        return tm.copath(2 * leaf_index, self._n_leaves)

    def filtered_direct_path(self, leaf_index: int) -> list[tuple[int, int]]:
        """The filtered direct path of a leaf as ``(parent, copath_child)`` pairs (§4.1.2).

        A direct-path node is dropped when its child on the copath has an empty
        resolution (unmerged leaves counting towards it). Ordered leaf to root.
        """
        self._check_leaf(leaf_index)
        count = self._count
        root = self._n_leaves - 1
        out: list[tuple[int, int]] = []
        x, k = 2 * leaf_index, 0
        while x != root:
            s = x ^ (2 << k)
            b = (x >> (k + 1)) & 1
            x = (x | (1 << k)) ^ (b << (k + 1))
            k += 1
            if count[s]:
                out.append((x, s))
        return out

    def resolution(self, x: int, exclude: Collection[int] = ()) -> list[int]:
        """The resolution of node ``x`` as node indices (§4.1.1).

        ``exclude`` holds leaf indices left out of the result, whether they
        appear as leaves or as unmerged leaves (the joiners of §7.6).
        """
        if not 0 <= x < len(self._nodes):
            raise LocalUsageError(f"node {x} is outside a tree of {len(self._nodes)} nodes")
        nodes = self._nodes
        count = self._count
        out: list[int] = []
        stack = [x]
        while stack:
            y = stack.pop()
            node = nodes[y]
            if node is not None:
                if y & 1 == 0:
                    if not exclude or (y >> 1) not in exclude:
                        out.append(y)
                else:
                    out.append(y)
                    assert isinstance(node, ParentNode)
                    for u in node.unmerged_leaves:
                        if not exclude or u not in exclude:
                            out.append(2 * u)
            elif y & 1 and count[y]:
                half = 1 << (_level(y) - 1)
                stack.append(y + half)
                stack.append(y - half)
        return out

    # -- mutation ----------------------------------------------------------

    def _set(self, x: int, node: Node | None) -> None:
        """Store ``node`` at ``x``, keeping indexes, counts and hash caches right."""
        nodes = self._nodes
        old = nodes[x]
        if old is node:
            return
        if old is not None:
            self._enc.remove(old.encryption_key, x)
            if isinstance(old, LeafNode):
                self._sig.remove(old.signature_key, x >> 1)
                self._count_credentials(old, -1)
        if node is not None:
            self._enc.add(node.encryption_key, x)
            if isinstance(node, LeafNode):
                self._sig.add(node.signature_key, x >> 1)
                self._count_credentials(node, 1)
        nodes[x] = node
        dn = (node is not None) - (old is not None)
        dl = dn if x & 1 == 0 else 0
        count, leafcount, th, ph = self._count, self._leafcount, self._th, self._ph
        # Dirty-marking: x and its ancestors up to the first already-dirty one
        # (which is invalidated too, see the module docstring).
        dirty = th[x] is not None
        th[x] = None
        ph[2 * x] = ph[2 * x + 1] = None
        if dn:
            count[x] += dn
            leafcount[x] += dl
        elif not dirty:
            return
        root = self._n_leaves - 1
        y, k = x, _level(x)
        while y != root:
            b = (y >> (k + 1)) & 1
            y = (y | (1 << k)) ^ (b << (k + 1))
            k += 1
            if dn:
                count[y] += dn
                leafcount[y] += dl
            if dirty:
                dirty = th[y] is not None
                th[y] = None
                ph[2 * y] = ph[2 * y + 1] = None
            elif not dn:
                return

    def _extend(self) -> None:
        """Double the number of leaves with a blank right subtree and a blank root (§7.7)."""
        old = len(self._nodes)
        extra = old + 1
        self._nodes.extend([None] * extra)
        self._th.extend([None] * extra)
        self._ph.extend([None] * (2 * extra))
        root = self._n_leaves - 1
        self._count.extend([0] * extra)
        self._leafcount.extend([0] * extra)
        self._n_leaves *= 2
        new_root = self._n_leaves - 1
        self._count[new_root] = self._count[root]
        self._leafcount[new_root] = self._leafcount[root]

    def truncate(self) -> None:
        """Drop the right half while it is entirely blank (§7.7, §12.1.3).

        The root goes with it whether or not it is blank; the tree keeps at
        least one leaf.
        """
        while self._n_leaves > 1:
            root = self._n_leaves - 1
            right = root + (1 << (_level(root) - 1))
            if self._count[right]:
                return
            self._set(root, None)
            self._n_leaves //= 2
            del self._nodes[root:]
            del self._th[root:]
            del self._ph[2 * root:]
            del self._count[root:]
            del self._leafcount[root:]

    def _blank_direct_path(self, leaf_index: int) -> None:
        for p in tm.direct_path(2 * leaf_index, self._n_leaves):
            self._set(p, None)

    def add_leaf(self, leaf_node: LeafNode) -> int:
        """Add a member (§12.1.1) and return its leaf index.

        The leftmost blank leaf is used, or the tree is extended (§7.7). The
        new leaf is appended to ``unmerged_leaves`` of every non-blank parent
        on its direct path.
        """
        i = self.leftmost_blank_leaf()
        if i is None:
            i = self._n_leaves
            self._extend()
        self._set(2 * i, leaf_node)
        nodes = self._nodes
        for p in tm.direct_path(2 * i, self._n_leaves):
            node = nodes[p]
            if node is not None:
                assert isinstance(node, ParentNode)
                um = node.unmerged_leaves
                if i not in um:
                    self._set(p, replace(node, unmerged_leaves=tuple(sorted((*um, i)))))
        return i

    def update_leaf(self, leaf_index: int, leaf_node: LeafNode) -> None:
        """Apply an Update (§12.1.2): replace the leaf and blank its direct path."""
        self._check_leaf(leaf_index)
        if self._nodes[2 * leaf_index] is None:
            raise LocalUsageError(f"leaf {leaf_index} is blank; it cannot be updated")
        self._set(2 * leaf_index, leaf_node)
        self._blank_direct_path(leaf_index)

    def remove_leaf(self, leaf_index: int) -> None:
        """Apply a Remove (§12.1.3): blank the leaf and its direct path, then truncate."""
        self._check_leaf(leaf_index)
        if self._nodes[2 * leaf_index] is None:
            raise ValidationError(f"§12.1.3: Remove of leaf {leaf_index}, which is blank")
        self._set(2 * leaf_index, None)
        self._blank_direct_path(leaf_index)
        self.truncate()

    def set_leaf_node(self, leaf_index: int, leaf_node: LeafNode | None) -> None:
        """Store ``leaf_node`` at ``leaf_index`` without touching any other node.

        The low-level step used after :meth:`merge_path` (and for an external
        joiner's leaf); the Add/Update/Remove semantics are in the other
        mutators.
        """
        self._check_leaf(leaf_index)
        self._set(2 * leaf_index, leaf_node)

    def merge_path(self, leaf_index: int, keys: Sequence[bytes]) -> bytes:
        """Merge new public keys along a filtered direct path (§7.5, §7.9).

        Blanks the direct path of ``leaf_index``, stores ``ParentNode(keys[i])``
        with no unmerged leaves at the i-th node of the filtered direct path,
        and fills in their ``parent_hash`` fields from the root down. Returns
        the parent hash the leaf must carry (the parent hash of the first
        filtered node, or ``b""`` when the filtered path is empty). The leaf
        itself is left alone: set it with :meth:`set_leaf_node`.
        """
        fdp = self.filtered_direct_path(leaf_index)
        if len(keys) != len(fdp):
            raise ValidationError(f"§7.6: UpdatePath has {len(keys)} nodes, the filtered "
                                  f"direct path of leaf {leaf_index} has {len(fdp)}")
        self._blank_direct_path(leaf_index)
        above = b""
        for (p, s), key in zip(reversed(fdp), reversed(keys), strict=True):
            self._set(p, ParentNode(key, above, ()))
            above = self.parent_hash(p, s)
        return above

    # -- hashes ------------------------------------------------------------

    def tree_hash(self) -> bytes:
        """The tree hash of the root (§7.8); only dirty nodes are rehashed."""
        return self.node_tree_hash(self._n_leaves - 1)

    def node_tree_hash(self, x: int) -> bytes:
        """The tree hash of the subtree under node ``x`` (§7.8)."""
        if not 0 <= x < len(self._nodes):
            raise LocalUsageError(f"node {x} is outside a tree of {len(self._nodes)} nodes")
        return self._tree_hash(x)

    def _tree_hash(self, x: int) -> bytes:
        h = self._th[x]
        if h is not None:
            return h
        node = self._nodes[x]
        if x & 1 == 0:
            h = self._leaf_hash(x >> 1, node)
        else:
            half = 1 << (_level(x) - 1)
            h = self._parent_hash_input(node, self._tree_hash(x - half),
                                        self._tree_hash(x + half))
        self._th[x] = h
        return h

    def _leaf_hash(self, leaf_index: int, node: Node | None) -> bytes:
        # TreeHashInput{node_type = leaf, LeafNodeHashInput{leaf_index, optional<LeafNode>}}
        head = b"\x01" + leaf_index.to_bytes(4, "big")
        if node is None:
            return self.suite.hash(head + b"\x00")
        return self.suite.hash(head + b"\x01" + node.encode())

    def _parent_hash_input(self, node: Node | None, left: bytes, right: bytes) -> bytes:
        # TreeHashInput{node_type = parent, ParentNodeHashInput{optional<ParentNode>, l, r}}
        if node is None:
            body = b"\x02\x00"
        else:
            assert isinstance(node, ParentNode)
            body = b"\x02\x01" + _encode_parent(node)
        return self.suite.hash(body + _opaque(left) + _opaque(right))

    def parent_hash(self, p: int, s: int) -> bytes:
        """Parent hash of non-blank parent ``p`` with copath child ``s`` (§7.9).

        ``Hash(ParentHashInput{encryption_key, parent_hash,
        original_sibling_tree_hash})``; cached until ``p`` or the subtree
        under ``s`` changes.
        """
        if not (p & 1) or not 0 <= p < len(self._nodes):
            raise LocalUsageError(f"node {p} is not a parent node of this tree")
        half = 1 << (_level(p) - 1)
        if s == p - half:
            slot = 2 * p
        elif s == p + half:
            slot = 2 * p + 1
        else:
            raise LocalUsageError(f"node {s} is not a child of node {p}")
        cached = self._ph[slot]
        if cached is not None:
            return cached
        node = self._nodes[p]
        if node is None:
            raise LocalUsageError(f"parent node {p} is blank; it has no parent hash")
        assert isinstance(node, ParentNode)
        self._tree_hash(s)  # the cache entry is valid only while s is clean
        osth = self.original_sibling_tree_hash(p, s)
        h = self.suite.hash(_opaque(node.encryption_key) + _opaque(node.parent_hash)
                            + _opaque(osth))
        self._ph[slot] = h
        return h

    def original_sibling_tree_hash(self, p: int, s: int) -> bytes:
        """Tree hash of ``s`` with the unmerged leaves of ``p`` blanked (§7.9).

        Those leaves are also dropped from every ``unmerged_leaves`` list in
        the subtree. Only the paths above the affected leaves are rehashed, so
        this assumes every unmerged leaf is listed only at its own ancestors
        (which :func:`~mls_xmpp.core.tree.validation.validate_tree` checks
        before it checks parent hashes).
        """
        node = self._nodes[p]
        if node is None:
            return self._tree_hash(s)
        assert isinstance(node, ParentNode)
        k = _level(s)
        lo, hi = s - ((1 << k) - 1), s + ((1 << k) - 1)
        removed = frozenset(u for u in node.unmerged_leaves if lo <= 2 * u <= hi)
        if not removed:
            return self._tree_hash(s)
        return self._hash_without(s, removed)

    def _hash_without(self, x: int, removed: frozenset[int]) -> bytes:
        k = _level(x)
        lo, hi = x - ((1 << k) - 1), x + ((1 << k) - 1)
        if not any(lo <= 2 * u <= hi for u in removed):
            return self._tree_hash(x)
        if k == 0:
            return self._leaf_hash(x >> 1, None)
        node = self._nodes[x]
        if node is not None:
            assert isinstance(node, ParentNode)
            kept = tuple(u for u in node.unmerged_leaves if u not in removed)
            if len(kept) != len(node.unmerged_leaves):
                node = replace(node, unmerged_leaves=kept)
        half = 1 << (k - 1)
        return self._parent_hash_input(node, self._hash_without(x - half, removed),
                                       self._hash_without(x + half, removed))

    # -- misc --------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RatchetTree):
            return NotImplemented
        return self.suite.id == other.suite.id and self._nodes == other._nodes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"RatchetTree(suite={self.suite.id}, n_leaves={self._n_leaves}, "
                f"members={self.n_members})")
