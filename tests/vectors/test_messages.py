"""Vector file ``messages.json``: every message type decodes and re-encodes exactly."""

import pytest

from mls_xmpp.vectors.messages import check

from .conftest import load

CASES = load("messages")


def test_file_has_cases() -> None:
    assert len(CASES) == 300


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_messages(case: dict) -> None:
    check(case)
