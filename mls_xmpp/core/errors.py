"""The one small error tree of the MLS core.

``MLSError`` is the root. Its children say whose fault a failure is:

* :class:`RemoteProtocolError` -- the peer (or the Delivery Service) sent
  something invalid: malformed bytes, a bad signature, a wrong epoch.
  Catching it and dropping the message is always safe; group state is left
  exactly as it was.
* :class:`LocalUsageError` -- the caller misused the API (asked for an unknown
  cipher suite, passed a key of the wrong size, ...).

Transport failures belong to the XMPP layer and derive from ``MLSError`` there.
"""

from __future__ import annotations


class MLSError(Exception):
    """Root of every error the project raises on purpose."""


class RemoteProtocolError(MLSError):
    """Input from a peer violates RFC 9420; the input is rejected."""


class LocalUsageError(MLSError):
    """The local caller used the API in a way it does not allow."""


class DecodeError(RemoteProtocolError):
    """Bytes do not decode as the expected structure (RFC 9420 §2.1)."""


class CryptoError(RemoteProtocolError):
    """A cryptographic check failed: bad signature, tag, or undecryptable data."""


class InvalidSignatureError(CryptoError):
    """A signature does not verify (SignWithLabel/VerifyWithLabel, RFC 9420 §5.1.2)."""


class DecryptionError(CryptoError):
    """AEAD or HPKE decryption failed (RFC 9420 §5.1.3, §6.3)."""


class ValidationError(RemoteProtocolError):
    """A structure decoded but breaks a validation rule of RFC 9420."""


class UnsupportedCipherSuiteError(LocalUsageError):
    """The requested cipher suite is not one of suites 1-7 (RFC 9420 §17.1)."""


class SecretTreeError(RemoteProtocolError):
    """A message refers to a key the secret tree cannot provide (RFC 9420 §9).

    Raised for a generation that was already consumed (replay), is too far in
    the past to be kept, or too far ahead of the ratchet.
    """


class WrongEpochError(ValidationError):
    """A message is for an epoch this member does not hold keys for (RFC 9420 §6, §14)."""


class WrongGroupError(ValidationError):
    """A message names another group (RFC 9420 §6)."""


class PolicyError(ValidationError):
    """The application's policy refused a proposal or commit (RFC 9420 §12.2)."""


class IdentityError(ValidationError):
    """A leaf that replaces another names a different client (RFC 9420 §5.3.1).

    Raised when the credential of an Update proposal, of a Commit's UpdatePath
    leaf or of an external resync is not a valid successor of the credential
    it replaces, so one member cannot take another member's name.
    """


class CredentialError(ValidationError):
    """A credential breaks RFC 9420 §5.3 or this mapping's identity rules.

    For an X.509 credential (§5.3.2): a certificate that does not parse, a
    chain whose entries do not each issue the one before, an end-entity key
    other than the leaf's ``signature_key``, or a subjectAltName naming no
    JID or several. These checks look at the credential and the leaf only,
    so every member decides them alike.
    """


class UntrustedCredentialError(CredentialError):
    """An X.509 chain does not lead to one of this device's trust anchors.

    A local judgement (the anchors are local configuration): it keeps this
    device from adding such a KeyPackage, and marks a member holding such a
    credential as distrusted, but never makes a Commit invalid.
    """


class MissingProposalError(ValidationError):
    """A Commit refers to a proposal this member has not received (RFC 9420 §12.4)."""


class GroupStateError(LocalUsageError):
    """The group cannot do this now: removed, reinitialised, or a commit is pending."""
