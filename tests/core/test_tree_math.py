"""Array-based tree arithmetic (RFC 9420 §4.1, Appendix C): properties and errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mls_xmpp.core.errors import LocalUsageError
from mls_xmpp.core.tree import math as tm


@st.composite
def tree_and_node(draw: st.DrawFn, max_depth: int = 20) -> tuple[int, int]:
    """A leaf count 2**d (d <= 20, so up to 2**20 leaves) and a node of that tree."""
    n = 1 << draw(st.integers(0, max_depth))
    return n, draw(st.integers(0, tm.node_width(n) - 1))


def _ref_level(x: int) -> int:
    """Level by counting trailing ones one at a time (the RFC's loop)."""
    k = 0
    while (x >> k) & 1:
        k += 1
    return k


def _ref_subtree(x: int) -> range:
    """The node indices of the subtree headed by x in a perfect tree."""
    k = _ref_level(x)
    return range(x - (1 << k) + 1, x + (1 << k))


@given(tree_and_node())
def test_level_matches_reference(tn: tuple[int, int]) -> None:
    _, x = tn
    assert tm.level(x) == _ref_level(x)
    assert tm.is_leaf(x) == (tm.level(x) == 0)


@given(st.integers(0, 20))
def test_width_and_root(d: int) -> None:
    n = 1 << d
    assert tm.node_width(n) == 2 * n - 1
    r = tm.root(n)
    assert tm.level(r) == d
    assert _ref_subtree(r) == range(tm.node_width(n))


@given(tree_and_node())
def test_children_and_parent(tn: tuple[int, int]) -> None:
    n, x = tn
    if tm.is_leaf(x):
        with pytest.raises(LocalUsageError):
            tm.left(x)
        with pytest.raises(LocalUsageError):
            tm.right(x)
        return
    lc, rc = tm.left(x), tm.right(x)
    assert lc < x < rc
    assert tm.level(lc) == tm.level(rc) == tm.level(x) - 1
    assert tm.parent(lc, n) == x
    assert tm.parent(rc, n) == x
    assert tm.sibling(lc, n) == rc
    assert tm.sibling(rc, n) == lc


@given(tree_and_node())
def test_parent_and_sibling(tn: tuple[int, int]) -> None:
    n, x = tn
    if x == tm.root(n):
        with pytest.raises(LocalUsageError):
            tm.parent(x, n)
        with pytest.raises(LocalUsageError):
            tm.sibling(x, n)
        return
    p = tm.parent(x, n)
    assert tm.level(p) == tm.level(x) + 1
    assert x in _ref_subtree(p)
    assert x in (tm.left(p), tm.right(p))
    s = tm.sibling(x, n)
    assert s != x
    assert tm.parent(s, n) == p
    assert tm.sibling(s, n) == x


@given(tree_and_node())
def test_direct_path_and_copath(tn: tuple[int, int]) -> None:
    n, x = tn
    dp = tm.direct_path(x, n)
    cp = tm.copath(x, n)
    depth = tm.level(tm.root(n))
    assert len(dp) == len(cp) == depth - tm.level(x)
    chain = [x, *dp]
    for child, par in zip(chain[:-1], dp, strict=True):
        assert tm.parent(child, n) == par
    if dp:
        assert dp[-1] == tm.root(n)
    assert cp == [tm.sibling(y, n) for y in chain[:-1]]


@given(tree_and_node(), st.data())
def test_common_ancestor_is_lowest_shared_node(tn: tuple[int, int], data: st.DataObject) -> None:
    n, x = tn
    y = data.draw(st.integers(0, tm.node_width(n) - 1))
    shared = ({x, *tm.direct_path(x, n)}) & ({y, *tm.direct_path(y, n)})
    assert tm.common_ancestor(x, y, n) == min(shared, key=tm.level)
    assert tm.common_ancestor(y, x, n) == tm.common_ancestor(x, y, n)


@given(st.integers(0, (1 << 31) - 1))
def test_leaf_node_round_trip(leaf: int) -> None:
    x = tm.leaf_to_node(leaf)
    assert tm.is_leaf(x)
    assert tm.node_to_leaf(x) == leaf


def test_rfc_example_paths() -> None:
    """The five-member example tree of RFC 9420 §4.1.2 (leaves A=0 ... H=7)."""
    n = 8
    a, b, e, f, g = (tm.leaf_to_node(i) for i in (0, 1, 4, 5, 6))
    t, u, w, v, x_, y, z = 1, 3, 7, 5, 9, 11, 13
    assert tm.direct_path(a, n) == [t, u, w]
    assert tm.copath(a, n) == [b, v, y]
    assert tm.copath(b, n) == [a, v, y]
    assert tm.direct_path(e, n) == [x_, y, w]
    assert tm.copath(e, n) == [f, z, u]
    assert tm.copath(f, n) == [e, z, u]
    assert tm.direct_path(g, n) == [z, y, w]
    assert tm.copath(g, n) == [tm.leaf_to_node(7), x_, u]


def test_single_leaf_tree() -> None:
    assert tm.node_width(1) == 1
    assert tm.root(1) == 0
    assert tm.direct_path(0, 1) == []
    assert tm.copath(0, 1) == []
    assert tm.common_ancestor(0, 0, 1) == 0
    assert tm.node_width(0) == 0


@pytest.mark.parametrize("n", [0, -1, 3, 5, 6, 12, 1000])
def test_leaf_count_must_be_power_of_two(n: int) -> None:
    with pytest.raises(LocalUsageError):
        tm.root(n)
    with pytest.raises(LocalUsageError):
        tm.direct_path(0, n)


@pytest.mark.parametrize("x", [-1, 15, 16, 100])
def test_node_outside_tree(x: int) -> None:
    with pytest.raises(LocalUsageError):
        tm.parent(x, 8)
    with pytest.raises(LocalUsageError):
        tm.direct_path(x, 8)
    with pytest.raises(LocalUsageError):
        tm.common_ancestor(0, x, 8)


def test_invalid_leaf_conversions() -> None:
    with pytest.raises(LocalUsageError):
        tm.node_to_leaf(3)
    with pytest.raises(LocalUsageError):
        tm.node_to_leaf(-2)
    with pytest.raises(LocalUsageError):
        tm.leaf_to_node(-1)
    with pytest.raises(LocalUsageError):
        tm.level(-1)
    with pytest.raises(LocalUsageError):
        tm.node_width(-1)
