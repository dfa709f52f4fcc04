"""The ``messages`` vectors: every structure decodes and re-encodes byte for byte."""

from __future__ import annotations

from typing import Any

from ..core.codec import Codec, Struct
from ..core.messages.commit import Commit
from ..core.messages.common import ContentType, WireFormat
from ..core.messages.framing import MLSMessage, PublicMessage
from ..core.messages.nodes import RATCHET_TREE
from ..core.messages.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    ReInit,
    Remove,
    Update,
)
from ..core.messages.welcome import GroupSecrets
from . import Case, VectorMismatch, expect, unhex

_STRUCTS: dict[str, type[Struct] | Codec[Any]] = {
    "ratchet_tree": RATCHET_TREE,
    "group_secrets": GroupSecrets,
    "add_proposal": Add,
    "update_proposal": Update,
    "remove_proposal": Remove,
    "pre_shared_key_proposal": PreSharedKey,
    "re_init_proposal": ReInit,
    "external_init_proposal": ExternalInit,
    "group_context_extensions_proposal": GroupContextExtensions,
    "commit": Commit,
}

_MESSAGES: dict[str, tuple[int, int | None]] = {
    "mls_welcome": (WireFormat.WELCOME, None),
    "mls_group_info": (WireFormat.GROUP_INFO, None),
    "mls_key_package": (WireFormat.KEY_PACKAGE, None),
    "public_message_application": (WireFormat.PUBLIC_MESSAGE, ContentType.APPLICATION),
    "public_message_proposal": (WireFormat.PUBLIC_MESSAGE, ContentType.PROPOSAL),
    "public_message_commit": (WireFormat.PUBLIC_MESSAGE, ContentType.COMMIT),
    "private_message": (WireFormat.PRIVATE_MESSAGE, None),
}


def check(case: Case) -> None:
    """Decode every field as its structure and compare the re-encoding."""
    for key, kind in _STRUCTS.items():
        data = unhex(case[key])
        value = kind.decode(data)
        reencoded = kind.encode(value) if isinstance(kind, Codec) else value.encode()
        expect(f"{key} re-encoding", reencoded, data)
    for key, (wire_format, content_type) in _MESSAGES.items():
        data = unhex(case[key])
        msg = MLSMessage.decode(data)
        expect(f"{key} wire format", msg.wire_format, wire_format)
        if content_type is not None:
            if not isinstance(msg.body, PublicMessage):
                raise VectorMismatch(f"{key}: not a PublicMessage")
            expect(f"{key} content type", msg.body.content.content_type, content_type)
        expect(f"{key} re-encoding", msg.encode(), data)
