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
  client: the same credential type, and for a basic credential the same
  identity; for any other type the same credential.
* :func:`same_identity_and_device`: also keeps the leaf's ``application_id``
  (§5.3.3), which the XMPP mapping uses to name the device.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import IdentityError
from ..messages.common import CredentialType, ExtensionType
from ..messages.extensions import find_extension
from ..messages.leaf_node import LeafNode

__all__ = ["SuccessorValidator", "same_identity", "same_identity_and_device"]

#: ``validator(old_leaf, new_leaf)`` raises :class:`IdentityError` when
#: ``new_leaf`` may not replace ``old_leaf``.
SuccessorValidator = Callable[[LeafNode, LeafNode], None]


def same_identity(old: LeafNode, new: LeafNode) -> None:
    """The new leaf's credential names the same client as the old one's (§5.3.1)."""
    a, b = old.credential, new.credential
    if a.credential_type != b.credential_type:
        raise IdentityError(f"a leaf with a {a.credential_type} credential cannot be replaced "
                            f"by one with a {b.credential_type} credential (§5.3.1)")
    if a.credential_type == CredentialType.BASIC:
        if a.identity != b.identity:
            raise IdentityError("the new credential names another identity than the leaf "
                                "it replaces (§5.3.1)")
    elif a != b:
        raise IdentityError("the new credential differs from the one it replaces (§5.3.1)")


def same_identity_and_device(old: LeafNode, new: LeafNode) -> None:
    """:func:`same_identity`, and the same ``application_id`` (device name, §5.3.3)."""
    same_identity(old, new)
    if (find_extension(old.extensions, ExtensionType.APPLICATION_ID)
            != find_extension(new.extensions, ExtensionType.APPLICATION_ID)):
        raise IdentityError("the new leaf names another device (application_id) than the "
                            "leaf it replaces (§5.3.1, §5.3.3)")
