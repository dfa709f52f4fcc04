"""Vector file ``key-schedule.json``: every case."""

import pytest

from mls_xmpp.core.crypto import get_suite
from mls_xmpp.core.errors import LocalUsageError
from mls_xmpp.core.schedule.key_schedule import (
    confirmation_tag,
    epoch_secrets_from_epoch_secret,
    epoch_secrets_from_init,
    mls_exporter,
    welcome_key_nonce,
)
from mls_xmpp.vectors.key_schedule import check

from .conftest import case_id, load

CASES = load("key-schedule")


def test_file_has_cases() -> None:
    assert len(CASES) == 7


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_key_schedule(case: dict) -> None:
    check(case)


def test_absent_commit_and_psk_secrets_are_zero() -> None:
    """RFC 9420 §8, §12.4: a missing commit_secret or psk_secret is KDF.Nh zero bytes."""
    suite = get_suite(1)
    init, ctx, zero = b"\x01" * 32, b"group context", bytes(32)
    assert (epoch_secrets_from_init(suite, init, ctx)
            == epoch_secrets_from_init(suite, init, ctx, zero, zero))
    with pytest.raises(LocalUsageError):
        epoch_secrets_from_init(suite, init, ctx, commit_secret=b"")
    with pytest.raises(LocalUsageError):
        epoch_secrets_from_init(suite, b"short", ctx)


def test_creation_path_and_helpers() -> None:
    suite = get_suite(1)
    s = epoch_secrets_from_epoch_secret(suite, b"\x02" * 32)
    assert s.joiner_secret is None and s.welcome_secret is None
    assert "\\x02" not in repr(s) and s.init_secret.hex() not in repr(s)
    assert confirmation_tag(suite, s.confirmation_key, b"") == suite.mac(s.confirmation_key, b"")
    key, nonce = welcome_key_nonce(suite, b"\x03" * 32)
    assert (len(key), len(nonce)) == (suite.aead_key_len, suite.aead_nonce_len)
    assert len(mls_exporter(suite, s.exporter_secret, "label", b"ctx", 100)) == 100
    with pytest.raises(LocalUsageError):
        mls_exporter(suite, s.exporter_secret, "label", b"ctx", 255 * 32 + 1)
