"""Every error mls-xmpp raises on purpose, in one tree.

Catch :class:`MLSError` for all of them, or one branch for a kind of failure.
The branches under the root say whose fault a failure is::

    MLSError
    ├── RemoteProtocolError     a peer or the server sent something invalid
    │   ├── DecodeError, CryptoError (InvalidSignatureError, DecryptionError),
    │   │   ValidationError (WrongEpochError, WrongGroupError, PolicyError,
    │   │   IdentityError, CredentialError (UntrustedCredentialError),
    │   │   MissingProposalError), SecretTreeError
    │   ├── EnvelopeError       malformed payload of the XMPP mapping
    │   │   └── BlobRefusedError    a blob URL this device does not fetch from
    │   └── InvitationRefusedError  a Welcome from someone not allowed to invite
    ├── LocalUsageError         the caller misused the API
    │   ├── GroupStateError     the group cannot do this now (pending Commit, ...)
    │   │   └── NotInGroupError this device was removed from the group, or left it
    │   │       └── GroupClosedError  the group moved to a new one by ReInit
    │   │                             (``.successor_room``)
    │   ├── DowngradeError      a move to a cipher suite this device ranks lower
    │   ├── UnknownGroupError   ``xmpp.plugin["mls"].group(x)``: no such group (a LookupError)
    │   ├── UnknownMemberError  a JID that is not a member (a LookupError)
    │   │   └── UnknownDeviceError   a device fingerprint not in the group
    │   ├── RulesError          refused by the group's rules
    │   ├── UntrustedDeviceError  refusing to send to a distrusted device (``.devices``)
    │   ├── TooLargeError       too large even by reference; the message says what to do
    │   └── UnsupportedCipherSuiteError
    ├── TransportError          the XMPP side failed (timeout, error from the server)
    │   ├── NotConnectedError   no XMPP session: connect first (raised at once)
    │   │   ├── AuthenticationError  the server refused the credentials
    │   │   └── ServerFeatureError   the server lacks MUC+MAM or PEP (``.feature``)
    │   ├── NoKeyPackageError   an account has no usable KeyPackage (``.jids``)
    │   │   ├── NoCommonSuiteError  no cipher suite every invited device supports
    │   │   └── CannotFollowError   devices cannot follow a ReInit's new suite
    │   ├── GroupSuspendedError the room refused or dropped this account, or its state
    │   │                       could not be written: the group is kept (rolled back
    │   │                       to its last stored epoch) and retried (``.reason``)
    │   └── ArchiveBudgetError  an archive read took more pages or time than allowed
    └── StorageError            the state store could not be read or written
        └── SentNotStoredError  ``send()``: the message WAS transmitted, only its outbox
                                entry was not written: do not send it again
                                (``.message_ids``)

What each branch means for the caller:

* :class:`RemoteProtocolError` comes from input (it is mostly reported as an
  ``mls_error`` event rather than raised): the input was dropped and the
  group's state is exactly as before.
* :class:`LocalUsageError`: fix the call. Nothing was sent and the group's
  state is unchanged.
* :class:`TransportError`: the call may be retried later. A Commit that timed
  out waiting for the room stays pending and is merged if the room reflects it.
* :class:`~mls_xmpp.storage.StorageError` (importable from
  :mod:`mls_xmpp.storage`): the state store failed (e.g. a full disk); the group is
  rolled back to what the store holds and suspended until it takes writes again.
  From ``send()``: the message was not transmitted -- unless it is a
  :class:`SentNotStoredError`, whose message *was* transmitted: do not re-send it.

Example::

    from mls_xmpp.errors import NoKeyPackageError, NotConnectedError, TooLargeError

    try:
        await group.add("carol@example.org")
    except NoKeyPackageError as e:
        print("no MLS client yet:", ", ".join(e.jids))

    try:
        await group.send(text)
    except TooLargeError:
        await group.send_file(text.encode(), name="message.txt", media_type="text/plain")
"""

from __future__ import annotations

from .core.errors import (
    CredentialError,
    CryptoError,
    DecodeError,
    DecryptionError,
    GroupStateError,
    IdentityError,
    InvalidSignatureError,
    LocalUsageError,
    MissingProposalError,
    MLSError,
    PolicyError,
    RemoteProtocolError,
    SecretTreeError,
    UnsupportedCipherSuiteError,
    UntrustedCredentialError,
    ValidationError,
    WrongEpochError,
    WrongGroupError,
)
from .xmpp.errors import (
    ArchiveBudgetError,
    AuthenticationError,
    BlobRefusedError,
    CannotFollowError,
    DowngradeError,
    EnvelopeError,
    GroupClosedError,
    GroupSuspendedError,
    InvitationRefusedError,
    NoCommonSuiteError,
    NoKeyPackageError,
    NotConnectedError,
    NotInGroupError,
    RulesError,
    SentNotStoredError,
    ServerFeatureError,
    TooLargeError,
    TransportError,
    UnknownDeviceError,
    UnknownGroupError,
    UnknownMemberError,
    UntrustedDeviceError,
)

__all__ = [
    "ArchiveBudgetError",
    "AuthenticationError",
    "BlobRefusedError",
    "CannotFollowError",
    "CredentialError",
    "CryptoError",
    "DecodeError",
    "DecryptionError",
    "DowngradeError",
    "EnvelopeError",
    "GroupClosedError",
    "GroupStateError",
    "GroupSuspendedError",
    "IdentityError",
    "InvalidSignatureError",
    "InvitationRefusedError",
    "LocalUsageError",
    "MLSError",
    "MissingProposalError",
    "NoCommonSuiteError",
    "NoKeyPackageError",
    "NotConnectedError",
    "NotInGroupError",
    "PolicyError",
    "RemoteProtocolError",
    "RulesError",
    "SecretTreeError",
    "SentNotStoredError",
    "ServerFeatureError",
    "TooLargeError",
    "TransportError",
    "UnknownDeviceError",
    "UnknownGroupError",
    "UnknownMemberError",
    "UntrustedDeviceError",
    "UnsupportedCipherSuiteError",
    "UntrustedCredentialError",
    "ValidationError",
    "WrongEpochError",
    "WrongGroupError",
]
