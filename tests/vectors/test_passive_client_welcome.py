"""Vector file ``passive-client-welcome.json``: join, then follow every epoch."""

import pytest

from mls_xmpp.vectors.passive_client import check

from .conftest import case_id, load

CASES = load("passive-client-welcome")


def test_file_has_cases() -> None:
    assert len(CASES) == 56


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_passive_client_welcome(case: dict) -> None:
    check(case)
