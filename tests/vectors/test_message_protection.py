"""Vector file ``message-protection.json``: every case, every suite."""

import pytest

from mls_xmpp.vectors.message_protection import check

from .conftest import case_id, load

CASES = load("message-protection")


def test_file_has_cases() -> None:
    assert len(CASES) == 7


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_message_protection(case: dict) -> None:
    check(case)
