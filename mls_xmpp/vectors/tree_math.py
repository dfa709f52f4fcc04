"""The ``tree-math`` vectors: array-based tree arithmetic (RFC 9420 Appendix C)."""

from __future__ import annotations

from collections.abc import Callable

from ..core.errors import LocalUsageError
from ..core.tree import math as tm
from . import Case, expect


def _optional(fn: Callable[..., int], *args: int) -> int | None:
    """``fn(*args)``, or ``None`` where the relation does not exist (leaf child, root parent)."""
    try:
        return fn(*args)
    except LocalUsageError:
        return None


def check(case: Case) -> None:
    """Compare n_nodes, root and every node's left, right, parent and sibling."""
    n = int(case["n_leaves"])
    width = tm.node_width(n)
    expect("n_nodes", width, int(case["n_nodes"]))
    expect("root", tm.root(n), int(case["root"]))
    for name in ("left", "right", "parent", "sibling"):
        expect(f"{name} array length", len(case[name]), width)
    for x in range(width):
        expect(f"left[{x}]", _optional(tm.left, x), case["left"][x])
        expect(f"right[{x}]", _optional(tm.right, x), case["right"][x])
        expect(f"parent[{x}]", _optional(tm.parent, x, n), case["parent"][x])
        expect(f"sibling[{x}]", _optional(tm.sibling, x, n), case["sibling"][x])
