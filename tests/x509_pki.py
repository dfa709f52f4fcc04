"""A small X.509 PKI for tests: CAs, intermediates and XMPP client certificates.

Keys are Ed25519 (MLS suite 1) or P-256 (suite 2). A :class:`Cert` holds the
certificate and its private key; :func:`mls_private_key` gives the key in the
encoding the core's suites use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

#: ``id-on-xmppAddr`` (RFC 6120 §13.7.1.4)
XMPP_ADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
#: certificates are valid from BEGIN to END
BEGIN = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2034, 1, 1, tzinfo=dt.UTC)
#: a time inside every default validity period (seconds since the epoch)
NOW = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp())

SUITE_KEYS = {1: "ed25519", 2: "p256"}


def new_key(kind: str) -> Any:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(kind)


def _hash(key: Any) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def mls_private_key(key: Any) -> bytes:
    """A private key as the core's suites encode it (RFC 9420 §5.1.1)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes_raw()
    return int(key.private_numbers().private_value).to_bytes(32, "big")


def xmpp_addr(jid: str) -> x509.OtherName:
    """An otherName id-on-xmppAddr holding ``jid`` as a DER UTF8String."""
    data = jid.encode()
    assert len(data) < 128
    return x509.OtherName(XMPP_ADDR, bytes([0x0C, len(data)]) + data)


@dataclass
class Cert:
    cert: x509.Certificate
    key: Any

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    @property
    def mls_key(self) -> bytes:
        return mls_private_key(self.key)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(subject: str, *, issuer: Cert | None, kind: str = "ed25519", ca: bool = False,
              key: Any = None, san: Sequence[x509.GeneralName] = (),
              not_before: dt.datetime = BEGIN, not_after: dt.datetime = END,
              basic_constraints: bool = True, path_length: int | None = None,
              key_usage: str | None = "default", eku: bool = True,
              critical_unknown: bool = False) -> Cert:
    """A certificate for ``subject`` signed by ``issuer`` (self-signed when ``None``).

    ``key_usage``: ``"default"`` (keyCertSign for a CA, digitalSignature for an
    end entity), ``"none"`` (no extension), ``"wrong"`` (the other one).
    """
    key = key if key is not None else new_key(kind)
    signer_key = issuer.key if issuer is not None else key
    issuer_name = issuer.cert.subject if issuer is not None else _name(subject)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after))
    if basic_constraints:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                            critical=True)
    if key_usage != "none":
        sign_certs = ca if key_usage == "default" else not ca
        b = b.add_extension(x509.KeyUsage(
            digital_signature=not sign_certs, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=sign_certs,
            crl_sign=sign_certs, encipher_only=False, decipher_only=False), critical=True)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if eku and not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
    if critical_unknown:
        b = b.add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                                       b"\x05\x00"), critical=True)
    return Cert(b.sign(signer_key, _hash(signer_key)), key)


@dataclass
class Pki:
    """A root CA and an intermediate CA, of one key type."""

    kind: str = "ed25519"

    def __post_init__(self) -> None:
        self.root = make_cert(f"Test Root {self.kind}", issuer=None, kind=self.kind, ca=True)
        self.intermediate = make_cert(f"Test Intermediate {self.kind}", issuer=self.root,
                                      kind=self.kind, ca=True)

    def client(self, jid: str | None = None, *, uri: str | None = None,
               issuer: Cert | None = None, **kw: Any) -> Cert:
        """An end-entity certificate naming ``jid`` (xmppAddr) and/or ``uri``."""
        san: list[x509.GeneralName] = list(kw.pop("san", ()))
        if jid is not None:
            san.append(xmpp_addr(jid))
        if uri is not None:
            san.append(x509.UniformResourceIdentifier(uri))
        return make_cert(jid or uri or "client", issuer=issuer or self.intermediate,
                         kind=self.kind, san=san, **kw)

    def chain(self, leaf: Cert) -> tuple[bytes, ...]:
        """``leaf`` and the intermediate, DER, end entity first (as in a credential)."""
        return (leaf.der, self.intermediate.der)
