"""KeyPackage (RFC 9420 §10.1) and LeafNode (§7.3) validation: each rule refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mls_xmpp.core.crypto import SUPPORTED_SUITES, get_suite
from mls_xmpp.core.errors import InvalidSignatureError, MLSError, ValidationError
from mls_xmpp.core.messages.common import CredentialType, LeafNodeSource
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.extensions import Extension, RequiredCapabilities
from mls_xmpp.core.messages.key_package import KeyPackage, build_key_package
from mls_xmpp.core.messages.leaf_node import Capabilities
from mls_xmpp.core.messages.validation import (
    LeafContext,
    validate_key_package,
    validate_leaf_node,
)

NOW = 1_800_000_000
SUITE = get_suite(1)
SIG_PRIV, SIG_PUB = SUITE.generate_signature_key_pair()
ALICE = Credential.basic(b"alice@example.org")


def _kp(**kw: object) -> KeyPackage:
    return build_key_package(SUITE, SIG_PRIV, ALICE, not_before=NOW - 10, not_after=NOW + 10,
                             **kw).key_package  # type: ignore[arg-type]


@pytest.mark.parametrize("suite_id", SUPPORTED_SUITES)
def test_fresh_key_package_validates_in_every_suite(suite_id: int) -> None:
    suite = get_suite(suite_id)
    priv, _ = suite.generate_signature_key_pair()
    bundle = build_key_package(suite, priv, ALICE, not_before=0, not_after=NOW * 2)
    v = validate_key_package(suite, bundle.key_package, now=NOW)
    assert v.ref == bundle.key_package.ref(suite)
    assert KeyPackage.decode(bundle.key_package.encode()) == bundle.key_package


def test_expired_or_not_yet_valid_refused() -> None:
    kp = _kp()
    with pytest.raises(ValidationError, match="lifetime"):
        validate_key_package(SUITE, kp, now=NOW + 11)
    with pytest.raises(ValidationError, match="lifetime"):
        validate_key_package(SUITE, kp, now=NOW - 11)


def test_wrong_suite_refused() -> None:
    with pytest.raises(ValidationError, match="cipher suite"):
        validate_key_package(SUITE, _kp(), now=NOW, ctx=LeafContext(cipher_suite=3))


def test_bad_key_package_signature_refused() -> None:
    kp = _kp()
    bad = replace(kp, signature=bytes([kp.signature[0] ^ 1]) + kp.signature[1:])
    with pytest.raises(InvalidSignatureError):
        validate_key_package(SUITE, bad, now=NOW)


def test_bad_leaf_signature_refused() -> None:
    kp = _kp()
    leaf = replace(kp.leaf_node, signature=bytes(64))
    with pytest.raises(InvalidSignatureError):
        validate_key_package(SUITE, replace(kp, leaf_node=leaf).signed(SUITE, SIG_PRIV), now=NOW)


def test_init_key_equal_to_encryption_key_refused() -> None:
    kp = _kp()
    bad = replace(kp, init_key=kp.leaf_node.encryption_key).signed(SUITE, SIG_PRIV)
    with pytest.raises(ValidationError, match="init_key"):
        validate_key_package(SUITE, bad, now=NOW)


def test_credential_validator_is_consulted() -> None:
    def refuse(cred: Credential, key: bytes) -> None:
        raise ValidationError("unknown identity")

    with pytest.raises(ValidationError, match="unknown identity"):
        validate_key_package(SUITE, _kp(), now=NOW, credential_validator=refuse)


def test_required_capabilities_enforced() -> None:
    ctx = LeafContext(1, required_capabilities=RequiredCapabilities(extension_types=(0xF001,)))
    with pytest.raises(ValidationError, match="required extension"):
        validate_key_package(SUITE, _kp(), now=NOW, ctx=ctx)
    caps = Capabilities((1,), (1,), (0xF001,), (), (1,))
    validate_key_package(SUITE, _kp(capabilities=caps), now=NOW, ctx=ctx)


def test_credential_type_support_rules() -> None:
    ctx = LeafContext(1, member_supported_credentials=frozenset({CredentialType.X509}))
    with pytest.raises(ValidationError, match="not supported by all members"):
        validate_key_package(SUITE, _kp(), now=NOW, ctx=ctx)
    ctx = LeafContext(1, member_credential_types=frozenset({CredentialType.X509}))
    with pytest.raises(ValidationError, match="credential types in use"):
        validate_key_package(SUITE, _kp(), now=NOW, ctx=ctx)


def test_unlisted_leaf_extension_refused_unless_default() -> None:
    with pytest.raises(ValidationError, match="not listed"):
        validate_key_package(SUITE, _kp(leaf_extensions=(Extension(0xF002, b""),)), now=NOW)
    validate_key_package(SUITE, _kp(leaf_extensions=(Extension(1, b"\x00"),)), now=NOW)


def test_duplicate_keys_refused() -> None:
    kp = _kp()
    with pytest.raises(ValidationError, match="signature_key"):
        validate_key_package(SUITE, kp, now=NOW, ctx=LeafContext(
            1, signature_keys={kp.leaf_node.signature_key}))
    with pytest.raises(ValidationError, match="encryption_key"):
        validate_key_package(SUITE, kp, now=NOW, ctx=LeafContext(
            1, encryption_keys={kp.leaf_node.encryption_key}))


def test_wrong_leaf_source_refused() -> None:
    kp = _kp()
    with pytest.raises(ValidationError, match="leaf_node_source"):
        validate_leaf_node(SUITE, kp.leaf_node, source=LeafNodeSource.UPDATE, ctx=LeafContext(1),
                           now=NOW, group_id=b"g", leaf_index=0)


def test_update_must_change_encryption_key() -> None:
    kp = _kp()
    leaf = replace(kp.leaf_node, leaf_node_source=LeafNodeSource.UPDATE,
                   lifetime=None).signed(SUITE, SIG_PRIV, b"g", 0)
    validate_leaf_node(SUITE, leaf, source=LeafNodeSource.UPDATE, ctx=LeafContext(1), now=NOW,
                       group_id=b"g", leaf_index=0)
    with pytest.raises(ValidationError, match="encryption_key"):
        validate_leaf_node(SUITE, leaf, source=LeafNodeSource.UPDATE, ctx=LeafContext(1),
                           now=NOW, group_id=b"g", leaf_index=0, replaced=leaf)
    # signed for another leaf index: the signature does not verify
    with pytest.raises(MLSError):
        validate_leaf_node(SUITE, leaf, source=LeafNodeSource.UPDATE, ctx=LeafContext(1),
                           now=NOW, group_id=b"g", leaf_index=1)


def test_capabilities_may_omit_the_groups_suite_and_version() -> None:
    """§7.3 does not require them (MLSpp's suite-7 leaves omit the suite): accepted."""
    caps = Capabilities(versions=(), cipher_suites=(),
                        credentials=(CredentialType.BASIC,))
    kp = _kp(capabilities=caps)
    assert validate_key_package(SUITE, kp, now=NOW).key_package == kp
    validate_leaf_node(SUITE, kp.leaf_node, source=LeafNodeSource.KEY_PACKAGE,
                       ctx=LeafContext(cipher_suite=1), now=NOW)
