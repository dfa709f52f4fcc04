"""Vector file ``crypto-basics.json``: every case (cipher suites 1-7)."""

import pytest

from mls_xmpp.vectors.crypto_basics import check

from .conftest import case_id, load

CASES = load("crypto-basics")


def test_file_has_cases() -> None:
    assert len(CASES) == 7
    assert sorted(c["cipher_suite"] for c in CASES) == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_crypto_basics(case: dict) -> None:
    check(case)
