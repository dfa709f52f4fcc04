"""Vector file ``welcome.json``: every case, every suite."""

import pytest

from mls_xmpp.vectors.welcome import check

from .conftest import case_id, load

CASES = load("welcome")


def test_file_has_cases() -> None:
    assert len(CASES) == 7


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_welcome(case: dict) -> None:
    check(case)
