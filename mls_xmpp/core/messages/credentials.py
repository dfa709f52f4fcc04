"""Credentials (RFC 9420 §5.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ..codec import U16, Opaque, Reader, Struct, Vec, write_opaque
from ..errors import DecodeError, LocalUsageError
from .common import CredentialType
from .x509 import parse_x509_chain

__all__ = ["Credential", "credential_identity"]

_CERTS = Vec(Opaque)


@dataclass(frozen=True)
class Credential(Struct):
    """A Credential: a ``basic`` identity or an ``x509`` certificate chain.

    ``identity`` is set for basic credentials, ``certificates`` (the
    ``cert_data`` of each Certificate, leaf first) for x509 ones. The JID a
    credential of either type names is :func:`credential_identity`.
    """

    credential_type: Annotated[int, U16]
    identity: bytes = b""
    certificates: tuple[bytes, ...] = ()

    @classmethod
    def basic(cls, identity: bytes) -> Credential:
        """A basic credential carrying ``identity`` (here: a bare JID, UTF-8)."""
        return cls(CredentialType.BASIC, identity=identity)

    @classmethod
    def x509(cls, certificates: tuple[bytes, ...]) -> Credential:
        """An x509 credential from DER certificates, the end-entity one first."""
        return cls(CredentialType.X509, certificates=certificates)

    def write(self, w: bytearray) -> None:
        U16.write(w, self.credential_type)
        if self.credential_type == CredentialType.BASIC:
            write_opaque(w, self.identity)
        elif self.credential_type == CredentialType.X509:
            _CERTS.write(w, self.certificates)
        else:
            raise LocalUsageError(f"cannot encode unknown credential type {self.credential_type}")

    @classmethod
    def read(cls, r: Reader) -> Credential:
        ctype = r.uint(2)
        if ctype == CredentialType.BASIC:
            return cls(ctype, identity=r.opaque())
        if ctype == CredentialType.X509:
            return cls(ctype, certificates=_CERTS.read(r))
        raise DecodeError(f"unknown credential type {ctype:#06x}")


def credential_identity(credential: Credential) -> bytes:
    """The identity a credential presents: here, a bare JID in UTF-8.

    A basic credential's ``identity``; for an x509 credential, the one JID in
    the end-entity certificate's subjectAltName (xmppAddr or ``xmpp:`` URI,
    :mod:`.x509`). Use this, never ``credential.identity``, wherever a
    member's account is derived: a basic and an x509 credential naming the
    same JID name the same account.

    :raises CredentialError: an x509 chain that fails the structural checks
        (leaves in a group passed them already, so this does not happen there).
    :raises LocalUsageError: an unknown credential type.
    """
    if credential.credential_type == CredentialType.BASIC:
        return credential.identity
    if credential.credential_type == CredentialType.X509:
        return parse_x509_chain(credential.certificates).jid.encode()
    raise LocalUsageError(f"credential type {credential.credential_type} names no identity")
