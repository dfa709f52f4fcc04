"""Array-based tree arithmetic (RFC 9420 §4.1 and Appendix C).

Every MLS tree is a perfect binary tree with ``2**d`` leaves (RFC 9420 §4.1).
Nodes are numbered left to right: leaf ``i`` is node ``2*i`` and parent nodes
sit at the odd indices. The level of a node (leaves are level 0) is the number
of trailing one bits of its index, and a node at level ``k`` covers exactly the
indices that agree with it above bit ``k``.

All functions work on plain ``int`` indices in constant or ``O(log n)`` time.
Functions that depend on the size of the tree take ``n_leaves``, which must be
a positive power of two; invalid arguments raise :class:`LocalUsageError`.
"""

from __future__ import annotations

from ..errors import LocalUsageError

__all__ = [
    "check_n_leaves",
    "common_ancestor",
    "copath",
    "direct_path",
    "is_leaf",
    "leaf_to_node",
    "left",
    "level",
    "node_to_leaf",
    "node_width",
    "parent",
    "right",
    "root",
    "sibling",
]


def check_n_leaves(n_leaves: int) -> None:
    """Refuse a leaf count that is not a positive power of two (RFC 9420 §4.1)."""
    if n_leaves <= 0 or n_leaves & (n_leaves - 1):
        raise LocalUsageError(f"a tree has a positive power-of-two leaf count, not {n_leaves}")


def _check_node(x: int, n_leaves: int) -> None:
    check_n_leaves(n_leaves)
    if not 0 <= x < 2 * n_leaves - 1:
        raise LocalUsageError(f"node {x} is outside a tree of {n_leaves} leaves")


def node_width(n_leaves: int) -> int:
    """Number of nodes of a tree with ``n_leaves`` leaves (RFC 9420 Appendix C).

    ``node_width(0) == 0``; otherwise ``2*(n_leaves - 1) + 1``.
    """
    if n_leaves < 0:
        raise LocalUsageError(f"negative leaf count {n_leaves}")
    return 0 if n_leaves == 0 else 2 * n_leaves - 1


def level(x: int) -> int:
    """Level of node ``x``: 0 for leaves, the number of trailing one bits otherwise.

    RFC 9420 Appendix C.
    """
    if x < 0:
        raise LocalUsageError(f"negative node index {x}")
    # x ^ (x + 1) sets exactly the trailing ones of x plus the next bit.
    return (x ^ (x + 1)).bit_length() - 1


def is_leaf(x: int) -> bool:
    """True when node ``x`` is a leaf, i.e. has an even index (RFC 9420 Appendix C)."""
    if x < 0:
        raise LocalUsageError(f"negative node index {x}")
    return x & 1 == 0


def leaf_to_node(leaf_index: int) -> int:
    """Node index of leaf ``leaf_index``: ``2 * leaf_index`` (RFC 9420 Appendix C)."""
    if leaf_index < 0:
        raise LocalUsageError(f"negative leaf index {leaf_index}")
    return 2 * leaf_index


def node_to_leaf(x: int) -> int:
    """Leaf index of leaf node ``x``; parent nodes are refused (RFC 9420 Appendix C)."""
    if x < 0 or x & 1:
        raise LocalUsageError(f"node {x} is not a leaf")
    return x >> 1


def root(n_leaves: int) -> int:
    """Index of the root of a tree with ``n_leaves`` leaves (RFC 9420 Appendix C)."""
    check_n_leaves(n_leaves)
    return n_leaves - 1


def left(x: int) -> int:
    """Left child of parent node ``x`` (RFC 9420 Appendix C); leaves have none."""
    k = level(x)
    if k == 0:
        raise LocalUsageError(f"leaf node {x} has no children")
    return x ^ (1 << (k - 1))


def right(x: int) -> int:
    """Right child of parent node ``x`` (RFC 9420 Appendix C); leaves have none."""
    k = level(x)
    if k == 0:
        raise LocalUsageError(f"leaf node {x} has no children")
    return x ^ (3 << (k - 1))


def parent(x: int, n_leaves: int) -> int:
    """Parent of node ``x`` in a tree of ``n_leaves`` leaves (RFC 9420 Appendix C).

    The root has no parent.
    """
    _check_node(x, n_leaves)
    if x == n_leaves - 1:
        raise LocalUsageError(f"root node {x} has no parent")
    k = level(x)
    b = (x >> (k + 1)) & 1
    return (x | (1 << k)) ^ (b << (k + 1))


def sibling(x: int, n_leaves: int) -> int:
    """The other child of the parent of node ``x`` (RFC 9420 Appendix C)."""
    _check_node(x, n_leaves)
    if x == n_leaves - 1:
        raise LocalUsageError(f"root node {x} has no sibling")
    # The two children of a node at level k+1 differ exactly in bit k+1.
    return x ^ (2 << level(x))


def direct_path(x: int, n_leaves: int) -> list[int]:
    """Direct path of node ``x``, ordered from its parent up to the root (RFC 9420 §4.1.2).

    The direct path of the root is empty.
    """
    _check_node(x, n_leaves)
    r = n_leaves - 1
    out: list[int] = []
    k = level(x)
    while x != r:
        b = (x >> (k + 1)) & 1
        x = (x | (1 << k)) ^ (b << (k + 1))
        k += 1
        out.append(x)
    return out


def copath(x: int, n_leaves: int) -> list[int]:
    """Copath of node ``x``, ordered from leaf to root (RFC 9420 §4.1.2).

    The sibling of ``x`` followed by the siblings of its direct-path nodes,
    the root excluded. The copath of the root is empty.
    """
    _check_node(x, n_leaves)
    r = n_leaves - 1
    out: list[int] = []
    k = level(x)
    while x != r:
        out.append(x ^ (2 << k))
        b = (x >> (k + 1)) & 1
        x = (x | (1 << k)) ^ (b << (k + 1))
        k += 1
    return out


def common_ancestor(x: int, y: int, n_leaves: int) -> int:
    """The lowest node in the direct paths of both ``x`` and ``y``, themselves included.

    RFC 9420 Appendix C (``common_ancestor_direct``). A node at level ``k``
    heads the indices that agree with it above bit ``k``, so the answer is the
    node at the lowest level ``k >= level(x), level(y)`` for which ``x`` and
    ``y`` agree above bit ``k``.
    """
    _check_node(x, n_leaves)
    _check_node(y, n_leaves)
    k = max(level(x), level(y), (x ^ y).bit_length() - 1)
    return ((x >> (k + 1)) << (k + 1)) | ((1 << k) - 1)
