"""Vector file ``tree-validation.json``: every case, every suite."""

import pytest

from mls_xmpp.vectors.tree_validation import check

from .conftest import case_id, load

CASES = load("tree-validation")


def test_file_has_cases() -> None:
    assert len(CASES) == 98


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tree_validation(case: dict) -> None:
    check(case)
