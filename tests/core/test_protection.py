"""Negative tests for message protection (RFC 9420 §6): every tampering is refused."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from mls_xmpp.core.crypto import get_suite
from mls_xmpp.core.errors import (
    DecodeError,
    DecryptionError,
    InvalidSignatureError,
    RemoteProtocolError,
    SecretTreeError,
    ValidationError,
)
from mls_xmpp.core.messages.commit import Commit
from mls_xmpp.core.messages.common import ContentType, WireFormat
from mls_xmpp.core.messages.framing import (
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
)
from mls_xmpp.core.messages.group_info import GroupContext
from mls_xmpp.core.messages.proposals import Remove
from mls_xmpp.core.messages.protection import (
    protect_private,
    protect_public,
    sign_content,
    unprotect_private,
    unprotect_public,
    verify_content,
)
from mls_xmpp.core.tree.secret_tree import SecretTree

SUITE = get_suite(1)
GROUP = b"group-id"
CTX = GroupContext(1, 1, GROUP, 5, b"t" * 32, b"c" * 32).encode()
SIG_PRIV, SIG_PUB = SUITE.generate_signature_key_pair()
ENC = os.urandom(32)
SDS = os.urandom(32)
MKEY = os.urandom(32)


def _content(ctype: int = ContentType.PROPOSAL, body: object = None) -> FramedContent:
    return FramedContent(GROUP, 5, Sender.member(1), b"ad", ctype,
                         Remove(0) if body is None else body)  # type: ignore[arg-type]


def _flip(data: bytes, i: int = -1) -> bytes:
    b = bytearray(data)
    b[i] ^= 1
    return bytes(b)


def _public() -> PublicMessage:
    ac = sign_content(SUITE, SIG_PRIV, WireFormat.PUBLIC_MESSAGE, _content(), CTX)
    return protect_public(SUITE, ac, MKEY, CTX)


def _private(tree: SecretTree, ctype: int = ContentType.APPLICATION) -> PrivateMessage:
    body = b"hello" if ctype == ContentType.APPLICATION else None
    ac = sign_content(SUITE, SIG_PRIV, WireFormat.PRIVATE_MESSAGE, _content(ctype, body), CTX)
    return protect_private(SUITE, ac, tree, SDS, pad_to=32)


def test_public_round_trip() -> None:
    ac = unprotect_public(SUITE, _public(), MKEY, CTX)
    verify_content(SUITE, SIG_PUB, ac, CTX)


def test_flipped_signature_bit_rejected() -> None:
    msg = _public()
    bad = replace(msg, auth=replace(msg.auth, signature=_flip(msg.auth.signature)))
    # the membership tag covers the signature, so it fails first
    with pytest.raises(ValidationError, match="membership tag"):
        unprotect_public(SUITE, bad, MKEY, CTX)
    with pytest.raises(InvalidSignatureError):
        verify_content(SUITE, SIG_PUB, bad.authenticated_content(), CTX)


def test_flipped_membership_tag_rejected() -> None:
    msg = _public()
    assert msg.membership_tag is not None
    with pytest.raises(ValidationError, match="membership tag"):
        unprotect_public(SUITE, replace(msg, membership_tag=_flip(msg.membership_tag)), MKEY,
                         CTX)


def test_flipped_confirmation_tag_rejected_by_membership_tag() -> None:
    commit_content = FramedContent(GROUP, 5, Sender.member(1), b"", ContentType.COMMIT,
                                   Commit())
    ac = sign_content(SUITE, SIG_PRIV, WireFormat.PUBLIC_MESSAGE, commit_content, CTX,
                      confirmation_tag=b"k" * 32)
    msg = protect_public(SUITE, ac, MKEY, CTX)
    assert msg.auth.confirmation_tag is not None
    bad = replace(msg, auth=FramedContentAuthData(msg.auth.signature,
                                                  _flip(msg.auth.confirmation_tag)))
    with pytest.raises(ValidationError):
        unprotect_public(SUITE, bad, MKEY, CTX)


def test_wrong_group_context_rejected() -> None:
    other = GroupContext(1, 1, GROUP, 6, b"t" * 32, b"c" * 32).encode()
    with pytest.raises(ValidationError):
        unprotect_public(SUITE, _public(), MKEY, other)
    ac = _public().authenticated_content()
    with pytest.raises(InvalidSignatureError):
        verify_content(SUITE, SIG_PUB, ac, other)


def test_application_as_public_message_refused() -> None:
    content = _content(ContentType.APPLICATION, b"x")
    ac = sign_content(SUITE, SIG_PRIV, WireFormat.PUBLIC_MESSAGE, content, CTX)
    with pytest.raises(Exception, match="PublicMessage"):
        protect_public(SUITE, ac, MKEY, CTX)
    forged = PublicMessage(content, ac.auth, b"x" * 32)
    with pytest.raises(ValidationError):
        unprotect_public(SUITE, forged, MKEY, CTX)


def test_private_round_trip_and_replay_refused() -> None:
    sender, receiver = SecretTree(SUITE, ENC, 2), SecretTree(SUITE, ENC, 2)
    msg = _private(sender)
    ac = unprotect_private(SUITE, msg, receiver, SDS)
    verify_content(SUITE, SIG_PUB, ac, CTX)
    assert ac.content.content == b"hello"
    with pytest.raises(SecretTreeError):
        unprotect_private(SUITE, msg, receiver, SDS)


@pytest.mark.parametrize("field", ["ciphertext", "encrypted_sender_data", "authenticated_data",
                                   "epoch", "group_id", "content_type"])
def test_tampered_private_message_rejected_and_tree_unchanged(field: str) -> None:
    sender, receiver = SecretTree(SUITE, ENC, 2), SecretTree(SUITE, ENC, 2)
    msg = _private(sender)
    value = getattr(msg, field)
    if isinstance(value, bytes):
        bad = replace(msg, **{field: _flip(value, 0) if value else b"x"})
    elif field == "content_type":
        bad = replace(msg, content_type=ContentType.PROPOSAL)
    else:
        bad = replace(msg, **{field: value + 1})
    with pytest.raises(RemoteProtocolError):
        unprotect_private(SUITE, bad, receiver, SDS)
    # the genuine message still decrypts: nothing was consumed by the forgery
    assert unprotect_private(SUITE, msg, receiver, SDS).content.content == b"hello"


def test_sender_data_pointing_outside_tree_rejected() -> None:
    sender, receiver = SecretTree(SUITE, ENC, 4), SecretTree(SUITE, ENC, 2)
    ac = sign_content(SUITE, SIG_PRIV, WireFormat.PRIVATE_MESSAGE,
                      replace(_content(ContentType.APPLICATION, b"x"), sender=Sender.member(3)),
                      CTX)
    msg = protect_private(SUITE, ac, sender, SDS)
    with pytest.raises(ValidationError):
        unprotect_private(SUITE, msg, receiver, SDS)


def test_wrong_sender_data_secret_rejected() -> None:
    msg = _private(SecretTree(SUITE, ENC, 2))
    with pytest.raises(DecryptionError):
        unprotect_private(SUITE, msg, SecretTree(SUITE, ENC, 2), os.urandom(32))


def test_nonzero_padding_rejected() -> None:
    from mls_xmpp.core.messages.framing import decode_private_message_content

    with pytest.raises(DecodeError, match="padding"):
        decode_private_message_content(b"\x01x\x00\x00\x01", ContentType.APPLICATION)


def test_private_message_encodes_in_mls_message() -> None:
    msg = _private(SecretTree(SUITE, ENC, 2))
    assert MLSMessage.decode(MLSMessage(msg).encode()).body == msg


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 500])
def test_padding_hides_the_exact_length(size: int) -> None:
    tree = SecretTree(SUITE, ENC, 2)
    ac = sign_content(SUITE, SIG_PRIV, WireFormat.PRIVATE_MESSAGE,
                      _content(ContentType.APPLICATION, bytes(size)), CTX)
    msg = protect_private(SUITE, ac, tree, SDS, pad_to=64)
    assert (len(msg.ciphertext) - 16) % 64 == 0  # AES-GCM tag is 16 bytes
    got = unprotect_private(SUITE, msg, SecretTree(SUITE, ENC, 2), SDS)
    assert got.content.content == bytes(size)
