"""Vector file ``secret-tree.json``: every case."""

import pytest

from mls_xmpp.vectors.secret_tree import check

from .conftest import load

CASES = load("secret-tree")


def test_file_has_cases() -> None:
    assert len(CASES) == 21


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"suite{c['cipher_suite']}-n{len(c['leaves'])}")
def test_secret_tree(case: dict) -> None:
    check(case)
