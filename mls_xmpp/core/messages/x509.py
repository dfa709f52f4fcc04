"""X.509 credentials (RFC 9420 §5.3.2) for XMPP identities.

Two kinds of check, kept apart because they differ in who may rely on them:

* :func:`check_x509_credential` -- the structure, the same for every member:
  each certificate is DER that parses; the chain is ordered, each entry being
  the issuer of the one before (its subject names the issuer and its key
  verifies the signature); the end-entity key is the LeafNode's
  ``signature_key``; and the end-entity subjectAltName names exactly one
  bare JID, as an ``id-on-xmppAddr`` otherName (RFC 6120 §13.7.1.4, OID
  1.3.6.1.5.5.7.8.5, a UTF8String) or as an ``xmpp:`` URI (RFC 5122).
  It looks at the credential and the leaf only, so it is a validity rule:
  every member refuses the same leaves (:class:`CredentialError`).
* :class:`TrustAnchors` -- the path to one of *this device's* trust anchors
  at the current time. The anchors are local configuration, so this never
  decides whether a Commit is valid: the mapping uses it to refuse to add a
  KeyPackage it cannot authenticate and to mark a member it cannot
  authenticate as distrusted (:class:`UntrustedCredentialError`).

What :meth:`TrustAnchors.verify` checks, for the chain plus the anchor that
issued its last certificate (a certificate equal to an anchor ends the path
there): every link's name and signature; every certificate's validity period
(anchor included) contains ``now``; every issuer has basicConstraints with
``cA`` true, keyCertSign in its keyUsage when it has one, and a
pathLenConstraint that the intermediates below it respect; the end entity's
keyUsage, when present, allows digitalSignature; no certificate has a
critical extension other than basicConstraints, keyUsage, extendedKeyUsage,
subjectAltName, subjectKeyIdentifier or authorityKeyIdentifier.

Not checked: revocation (no CRL or OCSP is fetched), name constraints and
certificate policies (a certificate marking either critical is refused, as
RFC 5280 §4.2 asks for extensions one does not process), extendedKeyUsage
(XMPP client certificates carry id-kp-clientAuth or nothing; it is not
required), and key identifiers (issuers are matched by name and signature).
The JID in the certificate is compared byte for byte: certificates must
carry it in canonical form (lower case), as the XMPP layer writes JIDs.

``cryptography``'s own verifier (``x509.verification``) is not used: its Web
PKI profile refuses Ed25519, Ed448 and P-521 keys (MLS suites 1, 3, 4, 5, 6)
and wants server-style extensions (authorityKeyIdentifier, extendedKeyUsage)
that XMPP client certificates need not have.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import CredentialError, LocalUsageError, UntrustedCredentialError

if TYPE_CHECKING:
    from cryptography import x509

# ``cryptography.x509`` is imported where it is used, not here: it loads the
# standard library's ``socket`` (through ``email.utils``), and importing the
# sans-IO core must load no I/O module (tests/core/test_sans_io.py).

__all__ = ["ID_ON_XMPPADDR", "MAX_CHAIN_LENGTH", "TrustAnchors", "X509Chain",
           "check_x509_credential", "load_certificates", "parse_x509_chain"]

#: ``id-on-xmppAddr`` (RFC 6120 §13.7.1.4): an otherName holding a JID as UTF8String.
ID_ON_XMPPADDR = "1.3.6.1.5.5.7.8.5"
#: Longest chain accepted in a credential (end entity and intermediates).
MAX_CHAIN_LENGTH = 8
#: How many parsed chains are kept (the same few credentials are checked again
#: and again: every tree, every Commit, every displayed message).
CHAIN_CACHE_SIZE = 1024

#: Extensions :meth:`TrustAnchors.verify` accepts marked critical: basicConstraints,
#: keyUsage, extendedKeyUsage, subjectAltName, subjectKeyIdentifier,
#: authorityKeyIdentifier.
_KNOWN_CRITICAL = frozenset({"2.5.29.19", "2.5.29.15", "2.5.29.37", "2.5.29.17", "2.5.29.14",
                             "2.5.29.35"})


@dataclass(frozen=True)
class X509Chain:
    """An X.509 credential's chain that passed the structural checks.

    ``jid`` is the bare JID of the end-entity subjectAltName; ``signature_key``
    the end-entity key in the encoding MLS uses for the suite's signature
    scheme (RFC 9420 §5.1.1).
    """

    certificates: tuple[x509.Certificate, ...]
    jid: str
    signature_key: bytes


def mls_public_key(cert: x509.Certificate) -> bytes:
    """A certificate's public key as an MLS ``signature_key`` (RFC 9420 §5.1.1).

    EdDSA: the raw RFC 8032 key; ECDSA: the uncompressed point.

    :raises CredentialError: a key type no MLS cipher suite signs with.
    """
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CredentialError(f"certificate public key does not load: {e} (§5.3.2)") from None
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key.public_bytes_raw()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    raise CredentialError(f"certificate key type {type(key).__name__} is not an MLS "
                          "signature key (§5.3.2)")


def _der_utf8_string(data: bytes) -> str:
    """The text of a DER UTF8String (tag 12), all of ``data``."""
    if len(data) < 2 or data[0] != 0x0C:
        raise CredentialError("xmppAddr is not a UTF8String (RFC 6120 §13.7.1.4)")
    n, pos = data[1], 2
    if n & 0x80:
        size = n & 0x7F
        if size == 0 or size > 3 or len(data) < 2 + size or data[2] == 0:
            raise CredentialError("xmppAddr has a bad DER length")
        n = int.from_bytes(data[2:2 + size], "big")
        if n < 0x80:
            raise CredentialError("xmppAddr has a non-minimal DER length")
        pos = 2 + size
    if len(data) - pos != n:
        raise CredentialError("xmppAddr length does not match its content")
    try:
        return data[pos:].decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError("xmppAddr is not UTF-8") from None


def _bare_jid(text: str, where: str) -> str:
    """``text`` if it is a bare user JID (``local@domain``), else a CredentialError."""
    local, at, domain = text.partition("@")
    if (not at or not local or not domain or "@" in domain or "/" in text
            or len(local.encode()) > 1023 or len(domain.encode()) > 1023
            or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text)):
        raise CredentialError(f"{where} {text!r} is not a bare JID (user@domain)")
    return text


def _uri_jid(uri: str) -> str | None:
    """The JID of an ``xmpp:`` URI (RFC 5122); ``None`` for another scheme."""
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() != "xmpp":
        return None
    if rest.startswith("//") or "?" in rest or "#" in rest:
        raise CredentialError(f"xmpp URI {uri!r} is not a plain account address")
    try:
        text = unquote(rest, errors="strict")
    except UnicodeDecodeError:
        raise CredentialError(f"xmpp URI {uri!r} is not UTF-8") from None
    return _bare_jid(text, "xmpp URI")


def _san_jid(cert: x509.Certificate) -> str:
    """The one JID of the end-entity subjectAltName."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CredentialError("certificate has no subjectAltName, so no JID (§5.3.2)") from None
    found: set[str] = set()
    for name in san:
        if isinstance(name, x509.OtherName) and name.type_id.dotted_string == ID_ON_XMPPADDR:
            found.add(_bare_jid(_der_utf8_string(name.value), "xmppAddr"))
        elif isinstance(name, x509.UniformResourceIdentifier):
            jid = _uri_jid(name.value)
            if jid is not None:
                found.add(jid)
    if not found:
        raise CredentialError("certificate subjectAltName names no JID (xmppAddr or xmpp: "
                              "URI) (§5.3.2)")
    if len(found) > 1:
        raise CredentialError(f"certificate subjectAltName names several JIDs: "
                              f"{sorted(found)} (§5.3.2)")
    return found.pop()


@functools.lru_cache(maxsize=CHAIN_CACHE_SIZE)
def _parse(certificates: tuple[bytes, ...]) -> X509Chain | CredentialError:
    # errors are cached too: a bad credential costs its parse once
    try:
        return _parse_uncached(certificates)
    except CredentialError as e:
        return e


def _parse_uncached(certificates: tuple[bytes, ...]) -> X509Chain:
    from cryptography import x509

    if not certificates:
        raise CredentialError("x509 credential without certificates (§5.3.2)")
    if len(certificates) > MAX_CHAIN_LENGTH:
        raise CredentialError(f"x509 chain of {len(certificates)} certificates; at most "
                              f"{MAX_CHAIN_LENGTH} are accepted")
    certs: list[x509.Certificate] = []
    for k, der in enumerate(certificates):
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError as e:
            raise CredentialError(f"certificate {k} is not DER X.509: {e} (§5.3.2)") from None
    try:
        # §5.3.2: "Each subsequent certificate in the chain MUST be the issuer of
        # the previous certificate."
        for k in range(len(certs) - 1):
            try:
                certs[k].verify_directly_issued_by(certs[k + 1])
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as e:
                raise CredentialError(f"certificate {k + 1} did not issue certificate {k}: "
                                      f"{e or type(e).__name__} (§5.3.2)") from None
        jid = _san_jid(certs[0])
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise CredentialError(f"certificate extensions do not parse: {e}") from None
    return X509Chain(tuple(certs), jid, mls_public_key(certs[0]))


def parse_x509_chain(certificates: Sequence[bytes]) -> X509Chain:
    """The structural checks of an x509 credential's chain, without the leaf's key.

    :raises CredentialError: see the module documentation.
    """
    result = _parse(tuple(certificates))
    if isinstance(result, CredentialError):
        raise CredentialError(str(result))
    return result


def check_x509_credential(certificates: Sequence[bytes], signature_key: bytes) -> X509Chain:
    """Every check of an x509 credential that all members apply alike (§5.3.2).

    :raises CredentialError: the chain fails :func:`parse_x509_chain`, or "the
        public key encoded in the subjectPublicKeyInfo of the end-entity
        certificate" is not "identical to the signature_key in the LeafNode".
    """
    chain = parse_x509_chain(certificates)
    if chain.signature_key != signature_key:
        raise CredentialError("the end-entity certificate's key is not the leaf's "
                              "signature_key (§5.3.2)")
    return chain


def load_certificates(data: bytes | str) -> tuple[bytes, ...]:
    """DER certificates from PEM (any number, in order) or from one DER certificate.

    :raises LocalUsageError: nothing that parses as a certificate.
    """
    from cryptography import x509

    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if b"-----BEGIN" in raw:
            certs = x509.load_pem_x509_certificates(raw)
        else:
            certs = [x509.load_der_x509_certificate(raw)]
    except ValueError as e:
        raise LocalUsageError(f"not a PEM or DER certificate: {e}") from None
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def _utc(now: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, dt.UTC)


class TrustAnchors:
    """This device's X.509 trust anchors: CA certificates (or pinned end entities).

    Local configuration: see the module documentation for what
    :meth:`verify` checks and why it never decides a Commit's validity.
    """

    def __init__(self, certificates: Iterable[bytes]) -> None:
        from cryptography import x509

        self._anchors: list[x509.Certificate] = []
        for der in certificates:
            try:
                self._anchors.append(x509.load_der_x509_certificate(der))
            except ValueError as e:
                raise LocalUsageError(f"a trust anchor is not a DER certificate: {e}") from None
        if not self._anchors:
            raise LocalUsageError("no trust anchors given")
        self._der = {a.public_bytes(Encoding.DER) for a in self._anchors}

    @classmethod
    def from_pem(cls, data: bytes | str) -> TrustAnchors:
        """Anchors from a PEM bundle (or one DER certificate)."""
        return cls(load_certificates(data))

    def __len__(self) -> int:
        return len(self._anchors)

    def verify(self, certificates: Sequence[bytes], now: int) -> X509Chain:
        """The chain leads to an anchor and every certificate on the path is valid at ``now``.

        :raises CredentialError: the structural checks fail (:func:`parse_x509_chain`).
        :raises UntrustedCredentialError: no path to an anchor, or a certificate
            on it is expired, not yet valid, or not allowed to issue.
        """
        from cryptography import x509

        chain = parse_x509_chain(certificates)
        path = list(chain.certificates)
        # a certificate that is itself an anchor ends the path (a chain may carry
        # its root; an end entity may be pinned)
        for k, c in enumerate(path):
            if c.public_bytes(Encoding.DER) in self._der:
                del path[k + 1:]
                break
        else:
            last = path[-1]
            issuer = next((a for a in self._anchors if _issued_by(last, a)), None)
            if issuer is None:
                raise UntrustedCredentialError(
                    f"the certificate chain of {chain.jid} does not lead to a trust anchor "
                    f"(last issuer: {last.issuer.rfc4514_string()})")
            path.append(issuer)
        when = _utc(now)
        try:
            for k, c in enumerate(path):
                if not c.not_valid_before_utc <= when <= c.not_valid_after_utc:
                    raise UntrustedCredentialError(
                        f"certificate {k} of {chain.jid} ({c.subject.rfc4514_string()}) is "
                        f"not valid now: {c.not_valid_before_utc} to {c.not_valid_after_utc}")
                _check_critical(c, k, chain.jid)
            _check_end_entity(path[0], chain.jid)
            for k in range(1, len(path)):
                _check_issuer(path[k], k, chain.jid)
        except (ValueError, x509.DuplicateExtension) as e:
            raise UntrustedCredentialError(f"a certificate in the chain of {chain.jid} has "
                                           f"extensions that do not parse: {e}") from None
        return chain


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_critical(cert: x509.Certificate, k: int, jid: str) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid.dotted_string not in _KNOWN_CRITICAL:
            raise UntrustedCredentialError(
                f"certificate {k} of {jid} has a critical extension this implementation "
                f"does not process ({ext.oid.dotted_string}, RFC 5280 §4.2)")


def _check_end_entity(cert: x509.Certificate, jid: str) -> None:
    from cryptography import x509

    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.digital_signature:
        raise UntrustedCredentialError(f"the certificate of {jid} does not allow "
                                       "digitalSignature (RFC 5280 §4.2.1.3)")


def _check_issuer(cert: x509.Certificate, k: int, jid: str) -> None:
    """Certificate ``k`` (k >= 1) of the path issued certificate ``k - 1``."""
    from cryptography import x509

    name = cert.subject.rfc4514_string()
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise UntrustedCredentialError(f"{name}, issuer in the chain of {jid}, is not a CA "
                                       "(basicConstraints, RFC 5280 §4.2.1.9)")
    # intermediates below this issuer, the end entity not counted
    if bc.path_length is not None and k - 1 > bc.path_length:
        raise UntrustedCredentialError(f"{name} allows {bc.path_length} intermediates below "
                                       f"it, the chain of {jid} has {k - 1}")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise UntrustedCredentialError(f"{name}, issuer in the chain of {jid}, may not sign "
                                       "certificates (keyUsage, RFC 5280 §4.2.1.3)")
