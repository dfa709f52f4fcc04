"""Credentials (RFC 9420 §5.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ..codec import U16, Opaque, Reader, Struct, Vec, write_opaque
from ..errors import DecodeError, LocalUsageError
from .common import CredentialType

_CERTS = Vec(Opaque)


@dataclass(frozen=True)
class Credential(Struct):
    """A Credential: a ``basic`` identity or an ``x509`` certificate chain.

    ``identity`` is set for basic credentials, ``certificates`` (the
    ``cert_data`` of each Certificate, leaf first) for x509 ones.
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
