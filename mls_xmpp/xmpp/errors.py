"""Errors of the XMPP layer, in the project's one error tree (:mod:`mls_xmpp.core.errors`).

The whole tree, core and XMPP errors together, is documented (and
importable) in :mod:`mls_xmpp.errors`. Defined here:

* :class:`TransportError` -- XMPP or transport failure (a timeout, an error
  stanza from the server). Neither side broke the protocol.

  * :class:`NotConnectedError` -- there is no XMPP session: not connected,
    authentication failed, or the stream went down.
  * :class:`NoKeyPackageError` -- an account has no usable KeyPackage on its
    PEP node, so none of its devices can be added.

* :class:`EnvelopeError` -- a peer sent a malformed payload: text that is not
  base64, bytes that are not the expected protobuf message, or an envelope that
  breaks a rule of the mapping. Like every
  :class:`~mls_xmpp.core.errors.RemoteProtocolError` it is always safe to catch
  it and drop the stanza.
* :class:`InvitationRefusedError` -- a Welcome this account does not take: its
  sender is not allowed to invite (option ``invitations``), is over its hourly
  limit, the application declined it, or its GroupInfo is signed by someone else.
* The caller's misuse (:class:`~mls_xmpp.core.errors.LocalUsageError`):
  :class:`NotInGroupError` (this device was removed or left),
  :class:`UnknownGroupError`, :class:`UnknownMemberError`,
  :class:`UnknownDeviceError`, :class:`RulesError` and :class:`TooLargeError`.
"""

from __future__ import annotations

from mls_xmpp.core.errors import GroupStateError, LocalUsageError, MLSError, RemoteProtocolError

__all__ = [
    "EnvelopeError",
    "InvitationRefusedError",
    "NoKeyPackageError",
    "NotConnectedError",
    "NotInGroupError",
    "RulesError",
    "TooLargeError",
    "TransportError",
    "UnknownDeviceError",
    "UnknownGroupError",
    "UnknownMemberError",
]


class TransportError(MLSError):
    """The XMPP transport failed: a timeout, or an error from the server."""


class NotConnectedError(TransportError):
    """No XMPP session: not connected, authentication failed, or disconnected.

    Raised at once by every API call that needs the server; connect (and wait
    for ``session_start`` or ``mls_ready``) and call again.
    """


class NoKeyPackageError(TransportError):
    """An account has no usable KeyPackage on its PEP node (``jids`` names them).

    Nothing was added. The account may never have used an MLS client, or its
    devices' KeyPackages all expired or failed validation.
    """

    def __init__(self, message: str, jids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: the bare JIDs without a usable KeyPackage
        self.jids = jids


class EnvelopeError(RemoteProtocolError):
    """A peer's payload is malformed: bad base64, bad protobuf, or an invalid envelope."""


class InvitationRefusedError(RemoteProtocolError):
    """A Welcome was refused before use: its sender may not invite this device.

    Its sender is no contact (option ``invitations``), is over the hourly
    limit (``invitation_limit``), the invitation was declined or expired, or
    the member who signed its GroupInfo is not the sender. Nothing was joined
    and no KeyPackage used.
    """


class NotInGroupError(GroupStateError):
    """This device is no longer in the group: it was removed, or it left."""


class UnknownGroupError(LocalUsageError, LookupError):
    """No group of this device has that room JID or group ID (``plugin.group(x)``)."""


class UnknownMemberError(LocalUsageError, LookupError):
    """A JID named in a call (e.g. ``remove``) is not a member of the group."""


class UnknownDeviceError(UnknownMemberError):
    """A device fingerprint named in ``remove_device`` is not in the group."""


class RulesError(LocalUsageError):
    """The group's rules refuse this change (e.g. this member's role may not make it)."""


class TooLargeError(LocalUsageError):
    """A payload is too large to send, even by reference; the message says what to do."""
