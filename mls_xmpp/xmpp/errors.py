"""Errors of the XMPP layer, in the project's one error tree (:mod:`mls_xmpp.core.errors`).

The whole tree, core and XMPP errors together, is documented (and
importable) in :mod:`mls_xmpp.errors`. Defined here:

* :class:`TransportError` -- XMPP or transport failure (a timeout, an error
  stanza from the server). Neither side broke the protocol.

  * :class:`NotConnectedError` -- there is no XMPP session: not connected,
    authentication failed, or the stream went down.

    * :class:`AuthenticationError` -- the server refused this account's
      credentials (a wrong password): retrying does not help.
    * :class:`ServerFeatureError` -- the server lacks a service MLS groups
      need (MUC rooms with an archive, PEP).
  * :class:`NoKeyPackageError` -- an account has no usable KeyPackage on its
    PEP node, so none of its devices can be added.

    * :class:`NoCommonSuiteError` -- no cipher suite of this device's
      preference is supported by every invited device (``.suites``).
    * :class:`CannotFollowError` -- devices of a group cannot follow it to the
      cipher suite of a ReInit (no KeyPackage, or no support, for it).
  * :class:`GroupSuspendedError` -- the group's room refused this account or
    dropped it, or its state could not be written; the group's MLS state is
    kept (rolled back to the last stored epoch) and the group is retried.
  * :class:`ArchiveBudgetError` -- an archive read ran out of its budget of
    pages or time (a server paging for ever, or an archive too long to follow).

* :class:`SentNotStoredError` -- a
  :class:`~mls_xmpp.storage.StorageError` raised by ``send()`` after the
  message's stanza left: the message *was* transmitted (do not send it again);
  only writing its outbox entry failed.

* :class:`EnvelopeError` -- a peer sent a malformed payload: text that is not
  base64, bytes that are not the expected protobuf message, or an envelope that
  breaks a rule of the mapping. Like every
  :class:`~mls_xmpp.core.errors.RemoteProtocolError` it is always safe to catch
  it and drop the stanza.

  * :class:`BlobRefusedError` -- a blob (ratchet tree, message by reference,
    attachment) would have to be fetched from a URL this device does not
    fetch from; nothing was requested.
* :class:`InvitationRefusedError` -- a Welcome this account does not take: its
  sender is not allowed to invite (option ``invitations``), is over its hourly
  limit, the application declined it, or its GroupInfo is signed by someone else.
* The caller's misuse (:class:`~mls_xmpp.core.errors.LocalUsageError`):
  :class:`NotInGroupError` (this device was removed or left),
  :class:`UnknownGroupError`, :class:`UnknownMemberError`,
  :class:`UnknownDeviceError`, :class:`RulesError`, :class:`UntrustedDeviceError`,
  :class:`TooLargeError`, :class:`GroupClosedError` (the group was moved to a
  new one by ReInit: ``.successor_room``) and :class:`DowngradeError` (a move
  to a cipher suite this device ranks lower, which it did not agree to).
"""

from __future__ import annotations

from mls_xmpp.core.errors import GroupStateError, LocalUsageError, MLSError, RemoteProtocolError
from mls_xmpp.storage.errors import StorageError

__all__ = [
    "ArchiveBudgetError",
    "AuthenticationError",
    "BlobRefusedError",
    "CannotFollowError",
    "DowngradeError",
    "EnvelopeError",
    "GroupClosedError",
    "GroupSuspendedError",
    "InvitationRefusedError",
    "NoCommonSuiteError",
    "NoKeyPackageError",
    "NotConnectedError",
    "NotInGroupError",
    "RulesError",
    "SentNotStoredError",
    "ServerFeatureError",
    "TooLargeError",
    "TransportError",
    "UnknownDeviceError",
    "UnknownGroupError",
    "UnknownMemberError",
    "UntrustedDeviceError",
]


class TransportError(MLSError):
    """The XMPP transport failed: a timeout, or an error from the server."""


class NotConnectedError(TransportError):
    """No XMPP session: not connected, authentication failed, or disconnected.

    Raised at once by every API call that needs the server; connect (and wait
    for ``session_start`` or ``mls_ready``) and call again.
    """


class AuthenticationError(NotConnectedError):
    """The server refused this account's credentials (wrong password, unknown account).

    Raised at once by every API call, and reported as ``mls_error``, until a
    session starts; slixmpp does not try again by itself.
    """


class ServerFeatureError(NotConnectedError):
    """The server lacks a service MLS groups need (``feature`` names it).

    Checked when the plugin starts: group rooms need a MUC service whose rooms
    are archived (XEP-0045 with XEP-0313), KeyPackages need PEP (XEP-0163).
    """

    def __init__(self, message: str, feature: str = "") -> None:
        super().__init__(message)
        #: the missing feature (a disco feature or identity)
        self.feature = feature


class NoKeyPackageError(TransportError):
    """An account has no usable KeyPackage on its PEP node (``jids`` names them).

    Nothing was added. The account may never have used an MLS client, or its
    devices' KeyPackages all expired or failed validation.
    """

    def __init__(self, message: str, jids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: the bare JIDs without a usable KeyPackage
        self.jids = jids


class NoCommonSuiteError(NoKeyPackageError):
    """No cipher suite of this device's ``suites`` is supported by every invited device.

    ``jids`` names the accounts that keep each suite out; ``suites`` the suites
    tried, in preference order. Nothing was created.
    """

    def __init__(self, message: str, jids: tuple[str, ...] = (),
                 suites: tuple[int, ...] = ()) -> None:
        super().__init__(message, jids)
        #: the cipher suites tried, best first
        self.suites = suites


class CannotFollowError(NoKeyPackageError):
    """Devices cannot follow their group to a ReInit's cipher suite.

    ``jids`` names the accounts (``devices``: ``(jid, fingerprint)`` of each
    device) with no KeyPackage of the new suite, or -- reported by the device
    itself -- this device, which does not support it. They stay behind in the
    closed old group: reported, never dropped silently.
    """

    def __init__(self, message: str, jids: tuple[str, ...] = (),
                 devices: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message, jids)
        #: ``(jid, fingerprint)`` of each device that cannot follow
        self.devices = devices


class GroupSuspendedError(TransportError):
    """The group is suspended: its room refused this account or dropped it.

    The room is transport, not the group: the device keeps its MLS state and
    stays a member, re-enters the room with backoff, and resumes (reading the
    archive) when the room takes it again. ``reason`` says what the room did.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        #: what the room did (e.g. ``registration-required``, ``affiliation lost``)
        self.reason = reason


class SentNotStoredError(StorageError):
    """``send()`` raised this: the message **was transmitted** -- its stanza left
    for the room, which gives it to every member -- but writing its outbox entry
    afterwards failed (e.g. a full disk). Do not send it again: the members read
    it once. ``message_ids`` names it (``send()`` did not return its id).

    The group was rolled back to its stored state and suspended like after any
    failed write (:class:`GroupSuspendedError`); when the store takes writes again
    it resumes, reads the room archive, and the message's state
    (``message_state(id)``) becomes ``reflected`` when its reflection is read (or,
    if the room never took it, it is sent again then, once). A plain
    :class:`~mls_xmpp.storage.StorageError` from ``send()`` means the message was
    not transmitted.
    """

    #: always true: what tells this error from a StorageError before transmission
    transmitted = True

    def __init__(self, message: str, message_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: the messages transmitted whose outbox entry was not written
        self.message_ids = message_ids


class ArchiveBudgetError(TransportError):
    """An archive read stopped: it took more pages or time than its budget.

    Options ``archive_max_pages`` and ``archive_timeout``. The archive may be
    endless (a hostile server answering every page with a fresh cursor) or just
    longer than the device follows at once; a group that cannot catch up this
    way is healed from the room's latest GroupInfo (docs/PROTOCOL.md §12).
    """


class EnvelopeError(RemoteProtocolError):
    """A peer's payload is malformed: bad base64, bad protobuf, or an invalid envelope."""


class BlobRefusedError(EnvelopeError):
    """A blob's URL is not one this device fetches from, so nothing was requested.

    Blobs are fetched only over HTTPS (plain HTTP only from loopback) from the
    servers of the room, of this account and of the sender, or from an origin
    in the plugin option ``blob_origins``; see docs/PROTOCOL.md §11.2.
    """


class InvitationRefusedError(RemoteProtocolError):
    """A Welcome was refused before use: its sender may not invite this device.

    Its sender is no contact (option ``invitations``), is over the hourly
    limit (``invitation_limit``), the invitation was declined or expired, or
    the member who signed its GroupInfo is not the sender. Nothing was joined
    and no KeyPackage used.
    """


class NotInGroupError(GroupStateError):
    """This device is no longer in the group: it was removed, or it left."""


class GroupClosedError(NotInGroupError):
    """The group was closed by a ReInit (RFC 9420 §11.2): nothing more is sent in it.

    ``successor_room`` and ``successor_group_id`` name the group that replaces
    it (``xmpp.plugin["mls"].group(e.successor_room)`` once this device is in it).
    """

    def __init__(self, message: str, successor_room: str = "",
                 successor_group_id: bytes = b"") -> None:
        super().__init__(message)
        #: the room of the group that replaces this one
        self.successor_room = successor_room
        #: the MLS group ID of the group that replaces this one
        self.successor_group_id = successor_group_id


class DowngradeError(LocalUsageError):
    """A move to a cipher suite this device ranks below the group's current one
    (option ``suites``), which it did not agree to: refused.

    Raised by :meth:`GroupSession.reinit` without ``allow_downgrade``; reported
    (``mls_error``) for another member's ReInit or a Welcome into such a group
    unless the option ``accept_downgrade`` is set.
    """


class UnknownGroupError(LocalUsageError, LookupError):
    """No group of this device has that room JID or group ID (``plugin.group(x)``)."""


class UnknownMemberError(LocalUsageError, LookupError):
    """A JID named in a call (e.g. ``remove``) is not a member of the group."""


class UnknownDeviceError(UnknownMemberError):
    """A device fingerprint named in ``remove_device`` is not in the group."""


class RulesError(LocalUsageError):
    """The group's rules refuse this change (e.g. this member's role may not make it)."""


class UntrustedDeviceError(LocalUsageError):
    """This device refuses to send to a group holding a device the user does not trust.

    Only with the ``refuse_send_to`` option (``"distrusted"`` or
    ``"unverified"``). ``devices`` lists them (``(jid, device, fingerprint,
    state)``); verify them, or remove them with an explicit Commit.
    """

    def __init__(self, message: str,
                 devices: tuple[tuple[str, str, str, str], ...] = ()) -> None:
        super().__init__(message)
        #: the devices that stop the message: (jid, device name, fingerprint, trust state)
        self.devices = devices


class TooLargeError(LocalUsageError):
    """A payload is too large to send, even by reference; the message says what to do."""
