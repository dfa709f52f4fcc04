"""The plugin's X.509 options: trust anchors and this device's certificate.

``x509_trust_anchors`` -- the CA certificates (or pinned end-entity
certificates) this device judges others' X.509 credentials by: a path to a
PEM bundle, PEM text or bytes, one DER certificate, or a list of those.
Without anchors the device does not advertise ``x509`` in its leaves'
capabilities, so (RFC 9420 §7.3) no group it is in can hold an X.509 leaf,
and it adds no KeyPackage with an X.509 credential.

``x509_credential`` -- ``(certificates, private_key)``: this device's chain,
end entity first (a path to a PEM file, PEM text or bytes, or a list of DER
certificates), and the end entity's private key (a path to a PEM or DER
PKCS#8 file, its bytes, or a ``cryptography`` private key object). The key is
the device's MLS signature key, so it must be of the ``suite`` option's
signature scheme (Ed25519 for suites 1 and 3, P-256 for 2, ...).

Reading files is done here, at start-up; the core only sees bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
)

from ..core.crypto import get_suite
from ..core.errors import LocalUsageError, MLSError
from ..core.messages.credentials import Credential
from ..core.messages.x509 import TrustAnchors, load_certificates, parse_x509_chain

__all__ = ["load_trust_anchors", "load_x509_credential"]


def _read(value: bytes | str | os.PathLike[str], what: str) -> bytes:
    """Bytes as given, PEM text as given, or the contents of a file."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode()
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise LocalUsageError(f"cannot read {what} from {value!s}: {e}") from None


def _certificates(value: Any, what: str) -> tuple[bytes, ...]:
    if isinstance(value, (bytes, str, os.PathLike)):
        return load_certificates(_read(value, what))
    if isinstance(value, Sequence):
        out: list[bytes] = []
        for item in value:
            out += _certificates(item, what)
        return tuple(out)
    raise LocalUsageError(f"{what}: expected a path, PEM or DER certificates, or a list of "
                          f"them, not {type(value).__name__}")


def load_trust_anchors(value: Any) -> TrustAnchors | None:
    """The ``x509_trust_anchors`` option as :class:`TrustAnchors`; ``None`` for ``None``.

    :raises LocalUsageError: unreadable, or no certificate in it.
    """
    if value is None:
        return None
    if isinstance(value, TrustAnchors):
        return value
    return TrustAnchors(_certificates(value, "x509_trust_anchors"))


def _private_key(value: Any) -> Any:
    if isinstance(value, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey,
                          ec.EllipticCurvePrivateKey)):
        return value
    if not isinstance(value, (bytes, str, os.PathLike)):
        raise LocalUsageError("x509_credential: the private key must be a path, PEM or DER "
                              f"bytes, or a private key object, not {type(value).__name__}")
    data = _read(value, "the x509_credential private key")
    try:
        if b"-----BEGIN" in data:
            return load_pem_private_key(data, password=None)
        return load_der_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise LocalUsageError(f"x509_credential: the private key does not load (it must be "
                              f"unencrypted): {e}") from None


def _mls_private_key(key: Any) -> bytes:
    """A private key in the encoding the core's suites use (RFC 9420 §5.1.1)."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return key.private_bytes_raw()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        return key.private_numbers().private_value.to_bytes(size, "big")
    raise LocalUsageError(f"x509_credential: a {type(key).__name__} is not an MLS signature "
                          "key (Ed25519, Ed448, ECDSA P-256/384/521)")


def load_x509_credential(value: Any, suite_id: int, jid: str) -> tuple[Credential, bytes]:
    """The ``x509_credential`` option as an x509 Credential and an MLS signature private key.

    :raises LocalUsageError: unreadable; the chain fails the structural checks
        (RFC 9420 §5.3.2); its JID is not ``jid``; or the key does not match
        the end-entity certificate or the cipher suite.
    """
    try:
        certificates, key = value
    except (TypeError, ValueError):
        raise LocalUsageError("x509_credential must be a pair (certificates, private_key)"
                              ) from None
    chain_der = _certificates(certificates, "x509_credential certificates")
    try:
        chain = parse_x509_chain(chain_der)
    except MLSError as e:
        raise LocalUsageError(f"x509_credential: {e}") from None
    if chain.jid != jid:
        raise LocalUsageError(f"x509_credential names {chain.jid!r}, but this account is "
                              f"{jid!r}")
    private = _mls_private_key(_private_key(key))
    try:
        public = get_suite(suite_id).signature_public_key(private)
    except (MLSError, ValueError) as e:
        raise LocalUsageError(f"x509_credential: the key is not a signature key of cipher "
                              f"suite {suite_id}: {e}") from None
    if public != chain.signature_key:
        raise LocalUsageError(f"x509_credential: the private key does not belong to the "
                              f"certificate, or is not of cipher suite {suite_id}'s scheme")
    return Credential.x509(chain_der), private
