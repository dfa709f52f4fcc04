"""X.509 credentials (RFC 9420 §5.3.2): structure for everyone, trust anchors locally.

The structural checks (the chain parses and is ordered, the end-entity key is
the leaf's signature_key, the subjectAltName names exactly one JID) are
validity rules: every member refuses such a leaf alike, with a
:class:`CredentialError`. Whether the chain leads to a trust anchor at the
current time is each device's own judgement (:class:`TrustAnchors`,
:class:`UntrustedCredentialError`) and never enters a Commit's validity.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from cryptography import x509

from mls_xmpp.core.errors import (
    CredentialError,
    IdentityError,
    UntrustedCredentialError,
    ValidationError,
)
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.group import Group
from mls_xmpp.core.group.identity import same_identity
from mls_xmpp.core.messages.common import CredentialType, LeafNodeSource
from mls_xmpp.core.messages.credentials import Credential, credential_identity
from mls_xmpp.core.messages.proposals import Add
from mls_xmpp.core.messages.validation import check_credential, validate_key_package
from mls_xmpp.core.messages.x509 import TrustAnchors, check_x509_credential, load_certificates

from ..x509_pki import NOW, SUITE_KEYS, Cert, Pki, make_cert, xmpp_addr
from .test_group_rules import PUBLIC, assert_rejected, forge_commit

#: every client of these tests lives at NOW (the certificates' and KeyPackages' time)
CONFIG = replace(PUBLIC, clock=lambda: NOW)

JID = "carol@example.org"


@pytest.fixture(scope="module", params=[1, 2], ids=["suite1-ed25519", "suite2-p256"])
def suite_pki(request: pytest.FixtureRequest) -> tuple[int, Pki]:
    return request.param, Pki(SUITE_KEYS[request.param])


def x509_client(suite_id: int, pki: Pki, leaf: Cert, *, chain: tuple[bytes, ...] | None = None,
                key: bytes | None = None) -> Client:
    """A core client with an X.509 credential (the leaf's key unless ``key``)."""
    return Client(Credential.x509(chain or pki.chain(leaf)), suite_id,
                  key if key is not None else leaf.mls_key, CONFIG)


# -- structure: every member alike ----------------------------------------------------------


def test_valid_chain_is_accepted_and_names_its_jid(suite_pki: tuple[int, Pki]) -> None:
    suite_id, pki = suite_pki
    leaf = pki.client(JID)
    carol = x509_client(suite_id, pki, leaf)
    kp = carol.make_key_package()
    validate_key_package(carol.suite, kp, now=NOW)
    cred = kp.leaf_node.credential
    assert credential_identity(cred) == JID.encode()
    chain = TrustAnchors([pki.root.der]).verify(cred.certificates, NOW)
    assert chain.jid == JID
    # the leaf advertises its own credential type
    assert CredentialType.X509 in kp.leaf_node.capabilities.credentials


def test_jid_from_an_xmpp_uri(suite_pki: tuple[int, Pki]) -> None:
    suite_id, pki = suite_pki
    leaf = pki.client(uri="xmpp:carol@example.org")
    assert credential_identity(Credential.x509(pki.chain(leaf))) == JID.encode()
    # percent-encoded (RFC 5122), and named in both forms: still one JID
    enc = pki.client(JID, uri="xmpp:carol%40example.org")
    assert credential_identity(Credential.x509(pki.chain(enc))) == JID.encode()
    # other SAN types are ignored
    mixed = pki.client(JID, san=[x509.DNSName("example.org"),
                                 x509.UniformResourceIdentifier("https://example.org/")])
    assert credential_identity(Credential.x509(pki.chain(mixed))) == JID.encode()


@pytest.mark.parametrize("case", ["no-san", "dns-only", "two-jids", "uri-and-addr-differ",
                                  "full-jid", "uri-query", "no-localpart"])
def test_a_certificate_must_name_exactly_one_bare_jid(case: str) -> None:
    pki = Pki()
    leaf = {
        "no-san": lambda: pki.client(None),
        "dns-only": lambda: pki.client(None, san=[x509.DNSName("example.org")]),
        "two-jids": lambda: pki.client(JID, san=[xmpp_addr("mallory@example.org")]),
        "uri-and-addr-differ": lambda: pki.client(JID, uri="xmpp:mallory@example.org"),
        "full-jid": lambda: pki.client("carol@example.org/phone"),
        "uri-query": lambda: pki.client(uri="xmpp:carol@example.org?message"),
        "no-localpart": lambda: pki.client("example.org"),
    }[case]()
    cred = Credential.x509(pki.chain(leaf))
    with pytest.raises(CredentialError):
        check_credential(cred, leaf.cert.public_key().public_bytes_raw())
    with pytest.raises(CredentialError):
        credential_identity(cred)


def test_certificate_key_must_be_the_signature_key(suite_pki: tuple[int, Pki]) -> None:
    suite_id, pki = suite_pki
    leaf = pki.client(JID)
    other = pki.client(JID)  # same JID, another key
    # a client signing with another key than its certificate's
    carol = x509_client(suite_id, pki, leaf, key=other.mls_key)
    kp = carol.make_key_package()
    with pytest.raises(CredentialError, match="signature_key"):
        validate_key_package(carol.suite, kp, now=NOW)


def test_garbage_and_misordered_chains_are_refused() -> None:
    pki = Pki()
    leaf = pki.client(JID)
    key = leaf.cert.public_key().public_bytes_raw()
    for chain in [(b"not a certificate",), (leaf.der, b"\x30\x03\x02\x01\x01"),
                  (leaf.der, pki.root.der),            # the root did not issue the leaf
                  (pki.intermediate.der, leaf.der),    # end entity not first
                  ()]:
        with pytest.raises(CredentialError):
            check_x509_credential(chain, key)
    # a chain that is right but stops early is structurally fine (trust is local)
    check_x509_credential((leaf.der,), key)


def _x509_group(n: int) -> list[Group]:
    """``n`` basic members that accept x509 (they have anchors), leaf ``i`` for member ``i``."""
    clients = [Client.generate(f"{'abcdefgh'[i]}@example.org".encode(), config=CONFIG)
               for i in range(n)]
    for c in clients:
        c.supported_credentials = (CredentialType.X509,)
    a = clients[0].create_group()
    p = a.commit(add=[c.make_key_package() for c in clients[1:]])
    a.merge_pending_commit()
    assert p.welcome is not None
    return [a] + [c.join(p.welcome) for c in clients[1:]]


@pytest.mark.parametrize("case", ["two-jids", "wrong-key"])
def test_refused_by_every_member_alike(case: str) -> None:
    """An Add whose KeyPackage breaks the structural rules is invalid for all members."""
    pki = Pki()
    a, b, c = _x509_group(3)
    if case == "two-jids":
        mallory = x509_client(1, pki, pki.client(JID, san=[xmpp_addr("mallory@example.org")]))
    else:
        mallory = x509_client(1, pki, pki.client(JID), key=pki.client(JID).mls_key)
    msg = forge_commit(b, (Add(mallory.make_key_package()),))
    for receiver in (a, c):
        assert_rejected(receiver, msg, CredentialError, match="§5.3.2")
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator


# -- capabilities: x509 only where it can be judged --------------------------------------------


def test_capabilities_list_x509_only_when_told() -> None:
    pki = Pki()
    basic = Client.generate(b"alice@example.org", config=CONFIG)
    assert basic.capabilities().credentials == (CredentialType.BASIC,)
    basic.supported_credentials = (CredentialType.X509,)
    assert basic.capabilities().credentials == (CredentialType.BASIC, CredentialType.X509)
    carol = x509_client(1, pki, pki.client(JID))
    assert carol.capabilities().credentials == (CredentialType.BASIC, CredentialType.X509)


def test_no_x509_leaf_in_a_group_with_a_member_that_does_not_accept_x509() -> None:
    """RFC 9420 §7.3 turns one member's lack of anchors into group state."""
    pki = Pki()
    alice = Client.generate(b"alice@example.org", config=CONFIG)
    bob = Client.generate(b"bob@example.org", config=CONFIG)
    alice.supported_credentials = (CredentialType.X509,)   # alice has anchors, bob has none
    a = alice.create_group()
    p = a.commit(add=[bob.make_key_package()])
    a.merge_pending_commit()
    assert p.welcome is not None
    b = bob.join(p.welcome)
    carol = x509_client(1, pki, pki.client(JID))
    with pytest.raises(ValidationError, match="not supported by all members"):
        a.commit(add=[carol.make_key_package()])
    assert a.epoch_authenticator == b.epoch_authenticator


def test_x509_member_joins_sends_and_is_named_by_its_certificate(
        suite_pki: tuple[int, Pki]) -> None:
    suite_id, pki = suite_pki
    alice = Client.generate(b"alice@example.org", suite_id, config=CONFIG)
    alice.supported_credentials = (CredentialType.X509,)
    carol = x509_client(suite_id, pki, pki.client(JID))
    a = alice.create_group()
    p = a.commit(add=[carol.make_key_package()])
    a.merge_pending_commit()
    assert p.welcome is not None
    c = carol.join(p.welcome)
    event = a.process(c.encrypt(b"hello"))
    sender = event.sender  # type: ignore[attr-defined]
    assert credential_identity(sender.credential) == JID.encode()
    # carol updates her keys (UpdatePath with the same certificate): accepted
    pending = c.commit(path=True)
    c.merge_pending_commit()
    a.process(pending.message)
    assert a.epoch_authenticator == c.epoch_authenticator


# -- successors: the same JID, whatever the type, but no downgrade ---------------------------


def _leaf(credential: Credential) -> object:
    from mls_xmpp.core.messages.leaf_node import Capabilities, LeafNode

    return LeafNode(b"e", b"s", credential, Capabilities(), LeafNodeSource.UPDATE)


def test_successor_policy_across_credential_types() -> None:
    pki = Pki()
    cert = Credential.x509(pki.chain(pki.client(JID)))
    renewed = Credential.x509(pki.chain(pki.client(JID)))
    other = Credential.x509(pki.chain(pki.client("mallory@example.org")))
    basic = Credential.basic(JID.encode())
    same_identity(_leaf(basic), _leaf(cert))  # type: ignore[arg-type]   # basic -> x509
    same_identity(_leaf(cert), _leaf(renewed))  # type: ignore[arg-type]  # renewal
    with pytest.raises(IdentityError, match="only be replaced"):
        same_identity(_leaf(cert), _leaf(basic))  # type: ignore[arg-type]  # downgrade
    with pytest.raises(IdentityError, match="another identity"):
        same_identity(_leaf(cert), _leaf(other))  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="another identity"):
        same_identity(_leaf(basic), _leaf(other))  # type: ignore[arg-type]


# -- trust anchors: local judgement -------------------------------------------------------------


def _verify(pki: Pki, leaf: Cert, anchors: list[bytes] | None = None,
            now: int = NOW, chain: tuple[bytes, ...] | None = None) -> None:
    TrustAnchors(anchors or [pki.root.der]).verify(chain or pki.chain(leaf), now)


def test_anchor_paths(suite_pki: tuple[int, Pki]) -> None:
    _, pki = suite_pki
    leaf = pki.client(JID)
    _verify(pki, leaf)                                            # via the intermediate
    _verify(pki, leaf, chain=(leaf.der, pki.intermediate.der, pki.root.der))  # root included
    _verify(pki, leaf, anchors=[pki.intermediate.der])           # intermediate as anchor
    _verify(pki, leaf, anchors=[leaf.der], chain=(leaf.der,))    # pinned end entity
    direct = pki.client(JID, issuer=pki.root)
    _verify(pki, direct, chain=(direct.der,))                    # issued by the root


def test_unknown_ca_is_untrusted(suite_pki: tuple[int, Pki]) -> None:
    _, pki = suite_pki
    leaf = pki.client(JID)
    other = Pki(pki.kind)
    with pytest.raises(UntrustedCredentialError, match="trust anchor"):
        _verify(pki, leaf, anchors=[other.root.der])
    # a self-signed certificate for the same JID
    forged = make_cert(JID, issuer=None, kind=pki.kind, san=[xmpp_addr(JID)])
    with pytest.raises(UntrustedCredentialError, match="trust anchor"):
        _verify(pki, forged, chain=(forged.der,))
    # the chain stops short of the anchor
    with pytest.raises(UntrustedCredentialError):
        _verify(pki, leaf, chain=(leaf.der,))


def test_validity_period_at_the_injected_time() -> None:
    pki = Pki()
    leaf = pki.client(JID, not_before=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                      not_after=dt.datetime(2025, 2, 1, tzinfo=dt.UTC))
    _verify(pki, leaf, now=int(dt.datetime(2025, 1, 15, tzinfo=dt.UTC).timestamp()))
    with pytest.raises(UntrustedCredentialError, match="not valid now"):
        _verify(pki, leaf, now=int(dt.datetime(2025, 3, 1, tzinfo=dt.UTC).timestamp()))
    with pytest.raises(UntrustedCredentialError, match="not valid now"):
        _verify(pki, leaf, now=int(dt.datetime(2024, 12, 1, tzinfo=dt.UTC).timestamp()))
    # an expired intermediate breaks the path too
    old = make_cert("Old Intermediate", issuer=pki.root, ca=True,
                    not_after=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    under = pki.client(JID, issuer=old)
    with pytest.raises(UntrustedCredentialError, match="not valid now"):
        _verify(pki, under, chain=(under.der, old.der))
    # expiry is local judgement only: the structure is still fine for everyone
    check_x509_credential((under.der, old.der), under.cert.public_key().public_bytes_raw())


@pytest.mark.parametrize("case", ["not-ca", "no-basic-constraints", "no-keycertsign",
                                  "path-length", "leaf-no-digital-signature",
                                  "critical-unknown"])
def test_issuer_constraints(case: str) -> None:
    pki = Pki()
    if case == "leaf-no-digital-signature":
        leaf = pki.client(JID, key_usage="wrong")
        chain = pki.chain(leaf)
    elif case == "critical-unknown":
        leaf = pki.client(JID, critical_unknown=True)
        chain = pki.chain(leaf)
    elif case == "path-length":
        capped = make_cert("Capped", issuer=pki.root, ca=True, path_length=0)
        sub = make_cert("Sub", issuer=capped, ca=True)
        leaf = pki.client(JID, issuer=sub)
        chain = (leaf.der, sub.der, capped.der)
    else:
        bad = make_cert("Bad Intermediate", issuer=pki.root, ca=case != "not-ca",
                        basic_constraints=case != "no-basic-constraints",
                        key_usage="wrong" if case == "no-keycertsign" else "default")
        leaf = pki.client(JID, issuer=bad)
        chain = (leaf.der, bad.der)
    with pytest.raises(UntrustedCredentialError):
        _verify(pki, leaf, chain=chain)
    # none of these is a structural fault
    check_x509_credential(chain, leaf.cert.public_key().public_bytes_raw())


def test_anchor_loading() -> None:
    pki = Pki()
    bundle = pki.root.pem + pki.intermediate.pem
    assert load_certificates(bundle) == (pki.root.der, pki.intermediate.der)
    assert load_certificates(pki.root.der) == (pki.root.der,)
    assert len(TrustAnchors.from_pem(bundle)) == 2
