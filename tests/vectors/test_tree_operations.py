"""Vector file ``tree-operations.json``: every case, every suite."""

import pytest

from mls_xmpp.vectors.tree_operations import check

from .conftest import case_id, load

CASES = load("tree-operations")


def test_file_has_cases() -> None:
    assert len(CASES) == 5


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tree_operations(case: dict) -> None:
    check(case)
