"""Successor checks of the Authentication Service (RFC 9420 §5.3.1).

When a member's leaf is replaced -- by an Update proposal, by the LeafNode of
its own Commit's UpdatePath, or by an external Commit that resyncs it -- "the
AS MUST also verify that the set of presented identifiers in the new
credential is valid as a successor to the set of presented identifiers in the
old credential, according to the application's policy" (§5.3.1).

A :data:`SuccessorValidator` is that policy. It is part of the group's
configuration and, like every validity rule, must be the same on every
member: it looks at the two leaves only, never at local data.

* :func:`same_identity` (the default): the new credential names the same
  JID (:func:`~..messages.credentials.credential_identity`), whatever its
  type, with one exception: a leaf with an X.509 credential is succeeded
  only by another X.509 credential (no downgrade).
* :func:`same_identity_and_device`: also keeps the leaf's ``application_id``
  (§5.3.3), which the XMPP mapping uses to name the device.

The policy on credential types ("valid as a successor according to the
application's policy", §5.3.1): a basic and an X.509 credential naming the
same JID name the same account, so a device may move from a basic credential
to an X.509 one (an Update, or a resync after it got a certificate). The way
back is refused: whether a certificate is trusted is each member's local
judgement, but the type of the leaf being replaced is group state, so every
member refuses alike an external resync that would put a basic credential,
which anyone who controls the account's server can make, in place of a
certified one. Another X.509 credential for the same JID may succeed one
(certificate renewal); whether its chain is trusted is again each device's
local judgement.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import IdentityError, MLSError
from ..messages.common import CredentialType, ExtensionType
from ..messages.credentials import credential_identity
from ..messages.extensions import find_extension
from ..messages.leaf_node import LeafNode

__all__ = ["SuccessorValidator", "same_identity", "same_identity_and_device"]

#: ``validator(old_leaf, new_leaf)`` raises :class:`IdentityError` when
#: ``new_leaf`` may not replace ``old_leaf``.
SuccessorValidator = Callable[[LeafNode, LeafNode], None]


def same_identity(old: LeafNode, new: LeafNode) -> None:
    """The new leaf's credential names the same client as the old one's (§5.3.1)."""
    a, b = old.credential, new.credential
    known = (CredentialType.BASIC, CredentialType.X509)
    if a.credential_type not in known or b.credential_type not in known:
        if a != b:
            raise IdentityError("the new credential differs from the one it replaces (§5.3.1)")
        return
    if a.credential_type == CredentialType.X509 and b.credential_type != CredentialType.X509:
        raise IdentityError("a leaf with an X.509 credential can only be replaced by one "
                            "with an X.509 credential (§5.3.1)")
    try:
        same = credential_identity(a) == credential_identity(b)
    except MLSError as e:
        raise IdentityError(f"the credentials do not name an identity: {e} (§5.3.1)") from e
    if not same:
        raise IdentityError("the new credential names another identity than the leaf "
                            "it replaces (§5.3.1)")


def same_identity_and_device(old: LeafNode, new: LeafNode) -> None:
    """:func:`same_identity`, and the same ``application_id`` (device name, §5.3.3)."""
    same_identity(old, new)
    if (find_extension(old.extensions, ExtensionType.APPLICATION_ID)
            != find_extension(new.extensions, ExtensionType.APPLICATION_ID)):
        raise IdentityError("the new leaf names another device (application_id) than the "
                            "leaf it replaces (§5.3.1, §5.3.3)")
