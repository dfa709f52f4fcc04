"""Vector file ``psk_secret.json``: every case."""

import pytest

from mls_xmpp.core.crypto import get_suite
from mls_xmpp.core.errors import DecodeError, LocalUsageError
from mls_xmpp.core.schedule.psk import PreSharedKeyID, PSKType, ResumptionPSKUsage, psk_secret
from mls_xmpp.vectors.psk_secret import check

from .conftest import load

CASES = load("psk_secret")


def test_file_has_cases() -> None:
    assert len(CASES) == 77


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"suite{c['cipher_suite']}-{len(c['psks'])}psks")
def test_psk_secret(case: dict) -> None:
    check(case)


def test_resumption_psk_id_round_trip() -> None:
    """The resumption variant of PreSharedKeyID (RFC 9420 §8.4), not covered by the file."""
    psk_id = PreSharedKeyID.resumption(ResumptionPSKUsage.REINIT, b"group", 7, b"n" * 32)
    data = psk_id.encode()
    assert data == bytes([2, 2, 5]) + b"group" + (7).to_bytes(8, "big") + bytes([32]) + b"n" * 32
    assert PreSharedKeyID.decode(data) == psk_id
    ext = PreSharedKeyID.external(b"id", b"nonce")
    assert ext.encode() == bytes([1, 2]) + b"id" + bytes([5]) + b"nonce"
    assert PreSharedKeyID.decode(ext.encode()) == ext


@pytest.mark.parametrize("data", ["00", "03", "0102", "02010567726f7570"])
def test_bad_psk_id_encodings(data: str) -> None:
    with pytest.raises(DecodeError):
        PreSharedKeyID.decode(bytes.fromhex(data))


def test_psk_id_variant_fields_are_checked() -> None:
    with pytest.raises(LocalUsageError):
        PreSharedKeyID(PSKType.EXTERNAL, b"nonce")
    with pytest.raises(LocalUsageError):
        PreSharedKeyID(PSKType.RESUMPTION, b"nonce", psk_id=b"id")
    with pytest.raises(LocalUsageError):
        PreSharedKeyID(3, b"nonce", psk_id=b"id")


def test_no_psks_gives_zero_secret() -> None:
    suite = get_suite(1)
    assert psk_secret(suite, []) == bytes(suite.hash_len)
