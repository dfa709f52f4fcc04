"""Message protection (RFC 9420 §6.1-§6.3): signatures, membership tags, encryption.

Sending::

    ac = sign_content(suite, sig_priv, WireFormat.PUBLIC_MESSAGE, content, ctx)
    msg = protect_public(suite, ac, membership_key, ctx)
    # or, encrypted
    ac = sign_content(suite, sig_priv, WireFormat.PRIVATE_MESSAGE, content, ctx)
    msg = protect_private(suite, ac, secret_tree, sender_data_secret, pad_to=64)

Receiving: :func:`unprotect_public` checks the membership tag and
:func:`unprotect_private` decrypts; both return the AuthenticatedContent,
whose signature the caller then checks with :func:`verify_content` using the
sender's key from its tree. :func:`unprotect_private` never consumes a key of
the secret tree unless decryption succeeds, so a forged message changes nothing.
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING

from ..errors import DecodeError, LocalUsageError, ValidationError
from ..tree.secret_tree import RatchetType, sender_data_key_nonce
from .common import ContentType, SenderType, WireFormat
from .framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    PrivateMessage,
    PublicMessage,
    Sender,
    SenderData,
    decode_private_message_content,
    encode_private_message_content,
    framed_content_tbs,
    private_message_aads,
)

if TYPE_CHECKING:
    from ..crypto import CipherSuite, Rng
    from ..tree.secret_tree import SecretTree

#: The sender ratchet of each content type a PrivateMessage carries (§6.3.1, §9.1).
_RATCHETS: dict[int, RatchetType] = {ContentType.APPLICATION: RatchetType.APPLICATION,
                                     ContentType.PROPOSAL: RatchetType.HANDSHAKE,
                                     ContentType.COMMIT: RatchetType.HANDSHAKE}


def sign_content(suite: CipherSuite, signature_private_key: bytes, wire_format: int,
                 content: FramedContent, group_context: bytes | None,
                 confirmation_tag: bytes | None = None) -> AuthenticatedContent:
    """Sign ``content`` for ``wire_format`` (§6.1).

    ``group_context`` is the encoded GroupContext (needed for member and
    new_member_commit senders); commits need their ``confirmation_tag``.
    """
    if (content.content_type == ContentType.COMMIT) != (confirmation_tag is not None):
        raise LocalUsageError("a confirmation tag goes with commits and only commits")
    tbs = framed_content_tbs(wire_format, content, group_context)
    signature = suite.sign_with_label(signature_private_key, "FramedContentTBS", tbs)
    return AuthenticatedContent(wire_format, content,
                                FramedContentAuthData(signature, confirmation_tag))


def verify_content(suite: CipherSuite, signature_public_key: bytes, ac: AuthenticatedContent,
                   group_context: bytes | None) -> None:
    """Check the signature of ``ac`` with the sender's key (§6.1)."""
    tbs = framed_content_tbs(ac.wire_format, ac.content, group_context)
    suite.verify_with_label(signature_public_key, "FramedContentTBS", tbs, ac.auth.signature)


def membership_tag(suite: CipherSuite, membership_key: bytes, ac: AuthenticatedContent,
                   group_context: bytes) -> bytes:
    """MAC(membership_key, AuthenticatedContentTBM) (§6.2)."""
    w = bytearray(framed_content_tbs(WireFormat.PUBLIC_MESSAGE, ac.content, group_context))
    ac.auth.write(w)
    return suite.mac(membership_key, bytes(w))


def protect_public(suite: CipherSuite, ac: AuthenticatedContent, membership_key: bytes | None,
                   group_context: bytes | None) -> PublicMessage:
    """Wrap signed content as a PublicMessage, tagged when the sender is a member (§6.2).

    Application data is never sent as a PublicMessage (§6.2).
    """
    if ac.wire_format != WireFormat.PUBLIC_MESSAGE:
        raise LocalUsageError("content was signed for another wire format")
    if ac.content.content_type == ContentType.APPLICATION:
        raise LocalUsageError("application data must not be sent as a PublicMessage (§6.2)")
    tag = None
    if ac.content.sender.sender_type == SenderType.MEMBER:
        if membership_key is None or group_context is None:
            raise LocalUsageError("a member's PublicMessage needs the membership key")
        tag = membership_tag(suite, membership_key, ac, group_context)
    return PublicMessage(ac.content, ac.auth, tag)


def unprotect_public(suite: CipherSuite, msg: PublicMessage, membership_key: bytes | None,
                     group_context: bytes | None) -> AuthenticatedContent:
    """Check a PublicMessage's membership tag (member senders) and return its content.

    The signature is left to :func:`verify_content` (the key comes from the tree).
    """
    if msg.content.content_type == ContentType.APPLICATION:
        raise ValidationError("application data received as a PublicMessage (§6.2)")
    ac = msg.authenticated_content()
    if msg.content.sender.sender_type == SenderType.MEMBER:
        if membership_key is None or group_context is None or msg.membership_tag is None:
            raise ValidationError("a member's PublicMessage must carry a membership tag")
        want = membership_tag(suite, membership_key, ac, group_context)
        if not hmac.compare_digest(want, msg.membership_tag):
            raise ValidationError("membership tag does not verify (§6.2)")
    return ac


def _content_key(suite: CipherSuite, key: bytes, nonce: bytes, reuse_guard: bytes
                 ) -> tuple[bytes, bytes]:
    """The content key, and the nonce with its first four bytes XORed with ``reuse_guard``."""
    if len(reuse_guard) != 4:
        raise LocalUsageError("reuse_guard must be 4 bytes")
    head = int.from_bytes(reuse_guard, "big") ^ int.from_bytes(nonce[:4], "big")
    return key, head.to_bytes(4, "big") + nonce[4:]


def protect_private(suite: CipherSuite, ac: AuthenticatedContent, secret_tree: SecretTree,
                    sender_data_secret: bytes, *, pad_to: int = 0,
                    rng: Rng = os.urandom) -> PrivateMessage:
    """Encrypt signed content as a PrivateMessage (§6.3), consuming one ratchet key.

    With ``pad_to`` > 0, zero padding makes the PrivateMessageContent a multiple
    of ``pad_to`` bytes, so ciphertext sizes reveal less about the content.
    """
    content = ac.content
    if ac.wire_format != WireFormat.PRIVATE_MESSAGE:
        raise LocalUsageError("content was signed for another wire format")
    if content.sender.sender_type != SenderType.MEMBER:
        raise LocalUsageError("only members send PrivateMessages (§6.3)")
    if pad_to < 0:
        raise LocalUsageError("pad_to must be >= 0")
    ctype = content.content_type
    rtype = _RATCHETS.get(ctype)
    if rtype is None:
        raise LocalUsageError(f"content type {ctype} has no sender ratchet")
    plaintext = encode_private_message_content(ctype, content.content, ac.auth, 0)
    if pad_to:
        plaintext += bytes(-len(plaintext) % pad_to)
    sender_data_aad, aad = private_message_aads(content.group_id, content.epoch, ctype,
                                                content.authenticated_data)
    leaf = content.sender.index
    generation, key, nonce = secret_tree.next_key(leaf, rtype)
    reuse_guard = rng(4)
    key, nonce = _content_key(suite, key, nonce, reuse_guard)
    ciphertext = suite.aead_seal(key, nonce, aad, plaintext)
    sd_key, sd_nonce = sender_data_key_nonce(suite, sender_data_secret, ciphertext)
    encrypted_sender_data = suite.aead_seal(sd_key, sd_nonce, sender_data_aad,
                                            SenderData(leaf, generation, reuse_guard).encode())
    return PrivateMessage(content.group_id, content.epoch, ctype, content.authenticated_data,
                          encrypted_sender_data, ciphertext)


def decrypt_sender_data(suite: CipherSuite, msg: PrivateMessage,
                        sender_data_secret: bytes) -> SenderData:
    """Decrypt and parse the SenderData of a PrivateMessage (§6.3.2)."""
    sender_data_aad, _ = private_message_aads(msg.group_id, msg.epoch, msg.content_type,
                                              msg.authenticated_data)
    return _open_sender_data(suite, msg, sender_data_secret, sender_data_aad)


def _open_sender_data(suite: CipherSuite, msg: PrivateMessage, sender_data_secret: bytes,
                      sender_data_aad: bytes) -> SenderData:
    key, nonce = sender_data_key_nonce(suite, sender_data_secret, msg.ciphertext)
    return SenderData.decode(suite.aead_open(key, nonce, sender_data_aad,
                                             msg.encrypted_sender_data))


def unprotect_private(suite: CipherSuite, msg: PrivateMessage, secret_tree: SecretTree,
                      sender_data_secret: bytes, *, consume: bool = True
                      ) -> AuthenticatedContent:
    """Decrypt a PrivateMessage (§6.3) and return its AuthenticatedContent.

    The ratchet key is consumed only after the content decrypted and parsed,
    so a failed or forged message leaves the secret tree as it was. The caller
    verifies the signature with :func:`verify_content`; with ``consume=False``
    see :func:`open_private_message`.
    """
    ac, sd = open_private_message(suite, msg, secret_tree, sender_data_secret)
    if consume:
        secret_tree.consume(sd.leaf_index, _RATCHETS[msg.content_type], sd.generation)
    return ac


def open_private_message(suite: CipherSuite, msg: PrivateMessage, secret_tree: SecretTree,
                         sender_data_secret: bytes
                         ) -> tuple[AuthenticatedContent, SenderData]:
    """Decrypt a PrivateMessage without consuming its key (§6.3).

    Returns the content and the SenderData; the caller checks the signature
    and then calls ``secret_tree.consume(leaf, ratchet, sender_data.generation)``.
    """
    ctype = msg.content_type
    rtype = _RATCHETS.get(ctype)
    if rtype is None:
        raise DecodeError(f"unknown content type {ctype}")
    sender_data_aad, aad = private_message_aads(msg.group_id, msg.epoch, ctype,
                                                msg.authenticated_data)
    sd = _open_sender_data(suite, msg, sender_data_secret, sender_data_aad)
    leaf = sd.leaf_index
    if leaf >= secret_tree.n_leaves:
        raise ValidationError(f"sender leaf {leaf} is outside the tree (§6.3.2)")
    key, nonce = secret_tree.peek(leaf, rtype, sd.generation)
    key, nonce = _content_key(suite, key, nonce, sd.reuse_guard)
    plaintext = suite.aead_open(key, nonce, aad, msg.ciphertext)
    body, auth = decode_private_message_content(plaintext, ctype)
    content = FramedContent(msg.group_id, msg.epoch, Sender(SenderType.MEMBER, leaf),
                            msg.authenticated_data, ctype, body)
    return AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, content, auth), sd
