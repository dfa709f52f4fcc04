"""Vector file ``transcript-hashes.json``: every case, every suite."""

import pytest

from mls_xmpp.vectors.transcript_hashes import check

from .conftest import case_id, load

CASES = load("transcript-hashes")


def test_file_has_cases() -> None:
    assert len(CASES) == 7


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_transcript_hashes(case: dict) -> None:
    check(case)
