"""Vector file ``deserialization.json``: every case."""

import pytest

from mls_xmpp.vectors.deserialization import check

from .conftest import load

CASES = load("deserialization")


def test_file_has_cases() -> None:
    assert len(CASES) == 14


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"len{c['length']}")
def test_deserialization(case: dict) -> None:
    check(case)
