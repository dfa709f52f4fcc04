"""Registry values of RFC 9420 §17 used across the wire structures.

Wire structures store these as plain ``int`` so that unknown (for example
GREASE) values survive a decode/encode round trip; the ``IntEnum`` classes
give them names and compare equal to the ints.
"""

from __future__ import annotations

from enum import IntEnum


class ProtocolVersion(IntEnum):
    """ProtocolVersion (RFC 9420 §6)."""

    MLS10 = 1


class ContentType(IntEnum):
    """ContentType (RFC 9420 §6)."""

    APPLICATION = 1
    PROPOSAL = 2
    COMMIT = 3


class SenderType(IntEnum):
    """SenderType (RFC 9420 §6)."""

    MEMBER = 1
    EXTERNAL = 2
    NEW_MEMBER_PROPOSAL = 3
    NEW_MEMBER_COMMIT = 4


class WireFormat(IntEnum):
    """WireFormat (RFC 9420 §17.2)."""

    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2
    WELCOME = 3
    GROUP_INFO = 4
    KEY_PACKAGE = 5


class ExtensionType(IntEnum):
    """ExtensionType (RFC 9420 §17.3), plus last_resort from the MLS extensions draft."""

    APPLICATION_ID = 1
    RATCHET_TREE = 2
    REQUIRED_CAPABILITIES = 3
    EXTERNAL_PUB = 4
    EXTERNAL_SENDERS = 5
    LAST_RESORT = 0x000A


class ProposalType(IntEnum):
    """ProposalType (RFC 9420 §17.4)."""

    ADD = 1
    UPDATE = 2
    REMOVE = 3
    PSK = 4
    REINIT = 5
    EXTERNAL_INIT = 6
    GROUP_CONTEXT_EXTENSIONS = 7


class CredentialType(IntEnum):
    """CredentialType (RFC 9420 §17.5)."""

    BASIC = 1
    X509 = 2


class LeafNodeSource(IntEnum):
    """LeafNodeSource (RFC 9420 §7.2)."""

    KEY_PACKAGE = 1
    UPDATE = 2
    COMMIT = 3


class NodeType(IntEnum):
    """NodeType (RFC 9420 §7.8)."""

    LEAF = 1
    PARENT = 2


def is_grease(value: int) -> bool:
    """True for the GREASE values 0x0A0A, 0x1A1A, ..., 0xEAEA (RFC 9420 §13.5)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 12) == ((value >> 4) & 0x0F)


#: Proposal types this implementation understands (RFC 9420 §12.1).
DEFAULT_PROPOSAL_TYPES = frozenset(int(p) for p in ProposalType)
#: Extension types this implementation understands.
DEFAULT_EXTENSION_TYPES = frozenset(int(e) for e in ExtensionType)
#: Credential types this implementation understands.
DEFAULT_CREDENTIAL_TYPES = frozenset(int(c) for c in CredentialType)
