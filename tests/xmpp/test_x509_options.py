"""The plugin's X.509 options: loading anchors and this device's credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from mls_xmpp.core.crypto import get_suite
from mls_xmpp.core.errors import LocalUsageError
from mls_xmpp.core.messages.common import CredentialType
from mls_xmpp.core.messages.credentials import credential_identity
from mls_xmpp.xmpp.x509 import load_trust_anchors, load_x509_credential

from ..x509_pki import NOW, Pki

JID = "carol@example.org"


@pytest.mark.parametrize("suite_id,kind", [(1, "ed25519"), (2, "p256")])
def test_credential_from_files_and_bytes(tmp_path: Path, suite_id: int, kind: str) -> None:
    pki = Pki(kind)
    cert = pki.client(JID)
    (tmp_path / "chain.pem").write_bytes(cert.pem + pki.intermediate.pem)
    (tmp_path / "key.pem").write_bytes(cert.key_pem)
    for value in [(str(tmp_path / "chain.pem"), str(tmp_path / "key.pem")),
                  (tmp_path / "chain.pem", cert.key_pem),
                  ([cert.der, pki.intermediate.der], cert.key)]:
        credential, private = load_x509_credential(value, suite_id, JID)
        assert credential.credential_type == CredentialType.X509
        assert credential.certificates == pki.chain(cert)
        assert credential_identity(credential) == JID.encode()
        assert get_suite(suite_id).signature_public_key(private) == \
            load_trust_anchors(pki.root.pem).verify(credential.certificates, NOW).signature_key


def test_credential_mistakes_are_local_usage_errors(tmp_path: Path) -> None:
    pki = Pki()
    cert = pki.client(JID)
    other = pki.client(JID)
    with pytest.raises(LocalUsageError, match="names"):
        load_x509_credential((cert.pem, cert.key_pem), 1, "dave@example.org")
    with pytest.raises(LocalUsageError, match="does not belong"):
        load_x509_credential((cert.pem, other.key_pem), 1, JID)
    with pytest.raises(LocalUsageError):  # an Ed25519 key for the P-256 suite
        load_x509_credential((cert.pem, cert.key_pem), 2, JID)
    with pytest.raises(LocalUsageError, match="pair"):
        load_x509_credential(cert.pem, 1, JID)
    with pytest.raises(LocalUsageError, match="cannot read"):
        load_x509_credential((str(tmp_path / "missing.pem"), cert.key_pem), 1, JID)
    with pytest.raises(LocalUsageError):
        load_x509_credential((b"garbage", cert.key_pem), 1, JID)


def test_trust_anchor_forms(tmp_path: Path) -> None:
    pki = Pki()
    assert load_trust_anchors(None) is None
    (tmp_path / "ca.pem").write_bytes(pki.root.pem + pki.intermediate.pem)
    assert len(load_trust_anchors(str(tmp_path / "ca.pem"))) == 2  # type: ignore[arg-type]
    assert len(load_trust_anchors([pki.root.der, pki.intermediate.pem])) == 2  # type: ignore[arg-type]
    anchors = load_trust_anchors(pki.root.pem)
    assert load_trust_anchors(anchors) is anchors
    with pytest.raises(LocalUsageError):
        load_trust_anchors([])
    with pytest.raises(LocalUsageError):
        load_trust_anchors(42)
