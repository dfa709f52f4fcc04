"""Vector file ``treekem.json``: every case, every suite."""

import pytest

from mls_xmpp.vectors.treekem import check

from .conftest import case_id, load

CASES = load("treekem")


def test_file_has_cases() -> None:
    assert len(CASES) == 77


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_treekem(case: dict) -> None:
    check(case)
