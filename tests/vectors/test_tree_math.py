"""Vector file ``tree-math.json``: every case."""

import pytest

from mls_xmpp.vectors.tree_math import check

from .conftest import load

CASES = load("tree-math")


def test_file_has_cases() -> None:
    assert len(CASES) == 10


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c['n_leaves']}")
def test_tree_math(case: dict) -> None:
    check(case)
