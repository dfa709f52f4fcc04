"""Message framing (RFC 9420 §6): content, authentication data and the two wire forms.

Only the wire structures live here; signing, tagging and encryption are in
:mod:`mls_xmpp.core.messages.protection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from ..codec import U8, U16, U32, U64, Fixed, Opaque, Reader, Struct, write_opaque
from ..errors import DecodeError, LocalUsageError
from .commit import Commit
from .common import ContentType, SenderType, WireFormat
from .group_info import GroupInfo
from .key_package import KeyPackage
from .proposals import PROPOSAL, Proposal
from .welcome import Welcome

if TYPE_CHECKING:
    from ..crypto import CipherSuite


@dataclass(frozen=True)
class Sender(Struct):
    """Who sent a message: ``index`` is the leaf index of a member or the
    index into external_senders of an external sender (§6)."""

    sender_type: int
    index: int = 0

    @classmethod
    def member(cls, leaf_index: int) -> Sender:
        """A member at ``leaf_index``."""
        return cls(SenderType.MEMBER, leaf_index)

    def write(self, w: bytearray) -> None:
        w.append(self.sender_type)
        if self.sender_type in (SenderType.MEMBER, SenderType.EXTERNAL):
            U32.write(w, self.index)
        elif self.sender_type not in (SenderType.NEW_MEMBER_COMMIT,
                                      SenderType.NEW_MEMBER_PROPOSAL):
            raise LocalUsageError(f"cannot encode unknown sender type {self.sender_type}")

    @classmethod
    def read(cls, r: Reader) -> Sender:
        t = r.uint(1)
        if t in (SenderType.MEMBER, SenderType.EXTERNAL):
            return cls(t, r.uint(4))
        if t in (SenderType.NEW_MEMBER_COMMIT, SenderType.NEW_MEMBER_PROPOSAL):
            return cls(t)
        raise DecodeError(f"unknown sender type {t}")


Content = bytes | Proposal | Commit


def _check_auth(content_type: int, auth: FramedContentAuthData) -> None:
    if (content_type == ContentType.COMMIT) != (auth.confirmation_tag is not None):
        raise LocalUsageError("a confirmation tag goes with commits and only commits (§6.1)")


def _write_body(w: bytearray, content_type: int, content: Content) -> None:
    if content_type == ContentType.APPLICATION:
        assert isinstance(content, bytes)
        write_opaque(w, content)
    elif content_type == ContentType.PROPOSAL:
        assert not isinstance(content, (bytes, Commit))
        PROPOSAL.write(w, content)
    elif content_type == ContentType.COMMIT:
        assert isinstance(content, Commit)
        content.write(w)
    else:
        raise DecodeError(f"unknown content type {content_type}")


def _read_body(r: Reader, content_type: int) -> Content:
    if content_type == ContentType.APPLICATION:
        return r.opaque()
    if content_type == ContentType.PROPOSAL:
        return PROPOSAL.read(r)
    if content_type == ContentType.COMMIT:
        return Commit.read(r)
    raise DecodeError(f"unknown content type {content_type}")


@dataclass(frozen=True)
class FramedContent(Struct):
    """The content of a message with its group, epoch and sender (§6)."""

    group_id: bytes
    epoch: int
    sender: Sender
    authenticated_data: bytes
    content_type: int
    content: Content

    def write(self, w: bytearray) -> None:
        write_opaque(w, self.group_id)
        U64.write(w, self.epoch)
        self.sender.write(w)
        write_opaque(w, self.authenticated_data)
        w.append(self.content_type)
        _write_body(w, self.content_type, self.content)

    @classmethod
    def read(cls, r: Reader) -> FramedContent:
        group_id = r.opaque()
        epoch = r.uint(8)
        sender = Sender.read(r)
        authenticated_data = r.opaque()
        content_type = r.uint(1)
        return cls(group_id, epoch, sender, authenticated_data, content_type,
                   _read_body(r, content_type))


@dataclass(frozen=True)
class FramedContentAuthData(Struct):
    """Signature, and for commits the confirmation tag (§6.1)."""

    signature: bytes
    confirmation_tag: bytes | None = None

    def write(self, w: bytearray) -> None:
        write_opaque(w, self.signature)
        if self.confirmation_tag is not None:
            write_opaque(w, self.confirmation_tag)

    @classmethod
    def read(cls, r: Reader) -> FramedContentAuthData:  # pragma: no cover - needs a type
        raise DecodeError("FramedContentAuthData depends on the content type")

    @classmethod
    def read_for(cls, r: Reader, content_type: int) -> FramedContentAuthData:
        """Read the auth data of content of ``content_type``."""
        signature = r.opaque()
        tag = r.opaque() if content_type == ContentType.COMMIT else None
        return cls(signature, tag)


@dataclass(frozen=True)
class AuthenticatedContent(Struct):
    """Content plus its authentication: the unit proposals are referenced by (§6.1)."""

    wire_format: int
    content: FramedContent
    auth: FramedContentAuthData

    def write(self, w: bytearray) -> None:
        U16.write(w, self.wire_format)
        self.content.write(w)
        _check_auth(self.content.content_type, self.auth)
        self.auth.write(w)

    def proposal_ref(self, suite: CipherSuite) -> bytes:
        """ProposalRef = RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent) (§5.2)."""
        return suite.ref_hash("MLS 1.0 Proposal Reference", self.encode())

    @classmethod
    def read(cls, r: Reader) -> AuthenticatedContent:
        wf = r.uint(2)
        content = FramedContent.read(r)
        return cls(wf, content, FramedContentAuthData.read_for(r, content.content_type))


def framed_content_tbs(wire_format: int, content: FramedContent,
                       group_context: bytes | None) -> bytes:
    """FramedContentTBS (§6.1); ``group_context`` is the encoded GroupContext,
    included for member and new_member_commit senders."""
    w = bytearray()
    U16.write(w, 1)
    U16.write(w, wire_format)
    content.write(w)
    if content.sender.sender_type in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        if group_context is None:
            raise DecodeError("member content is signed over the group context")
        w += group_context
    return bytes(w)


@dataclass(frozen=True)
class PublicMessage(Struct):
    """A signed, unencrypted handshake message (§6.2)."""

    content: FramedContent
    auth: FramedContentAuthData
    membership_tag: bytes | None = None

    def write(self, w: bytearray) -> None:
        self.content.write(w)
        _check_auth(self.content.content_type, self.auth)
        self.auth.write(w)
        if self.content.sender.sender_type == SenderType.MEMBER:
            write_opaque(w, self.membership_tag or b"")

    @classmethod
    def read(cls, r: Reader) -> PublicMessage:
        content = FramedContent.read(r)
        auth = FramedContentAuthData.read_for(r, content.content_type)
        tag = r.opaque() if content.sender.sender_type == SenderType.MEMBER else None
        return cls(content, auth, tag)

    def authenticated_content(self) -> AuthenticatedContent:
        """The AuthenticatedContent this message carries."""
        return AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, self.content, self.auth)


_REUSE_GUARD = Fixed(4)


def _write_aad_head(w: bytearray, group_id: bytes, epoch: int, content_type: int) -> None:
    """group_id, epoch and content_type: how PrivateMessage and both AADs start (§6.3)."""
    write_opaque(w, group_id)
    U64.write(w, epoch)
    U8.write(w, content_type)


@dataclass(frozen=True)
class PrivateMessage(Struct):
    """An encrypted message (§6.3)."""

    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    content_type: Annotated[int, U8]
    authenticated_data: Annotated[bytes, Opaque] = b""
    encrypted_sender_data: Annotated[bytes, Opaque] = b""
    ciphertext: Annotated[bytes, Opaque] = b""

    # write/read spelled out: this is on the path of every application message
    def write(self, w: bytearray) -> None:
        _write_aad_head(w, self.group_id, self.epoch, self.content_type)
        write_opaque(w, self.authenticated_data)
        write_opaque(w, self.encrypted_sender_data)
        write_opaque(w, self.ciphertext)

    @classmethod
    def read(cls, r: Reader) -> PrivateMessage:
        return cls(r.opaque(), r.uint(8), r.uint(1), r.opaque(), r.opaque(), r.opaque())


@dataclass(frozen=True)
class SenderData(Struct):
    """The encrypted part of a PrivateMessage's sender information (§6.3.2)."""

    leaf_index: Annotated[int, U32]
    generation: Annotated[int, U32]
    reuse_guard: Annotated[bytes, Fixed(4)]

    def write(self, w: bytearray) -> None:
        U32.write(w, self.leaf_index)
        U32.write(w, self.generation)
        _REUSE_GUARD.write(w, self.reuse_guard)

    @classmethod
    def read(cls, r: Reader) -> SenderData:
        return cls(r.uint(4), r.uint(4), r.read(4))


@dataclass(frozen=True)
class SenderDataAAD(Struct):
    """Associated data of the sender data encryption (§6.3.2)."""

    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    content_type: Annotated[int, U8]

    def write(self, w: bytearray) -> None:
        _write_aad_head(w, self.group_id, self.epoch, self.content_type)


@dataclass(frozen=True)
class PrivateContentAAD(Struct):
    """Associated data of the content encryption (§6.3.1)."""

    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    content_type: Annotated[int, U8]
    authenticated_data: Annotated[bytes, Opaque]

    def write(self, w: bytearray) -> None:
        _write_aad_head(w, self.group_id, self.epoch, self.content_type)
        write_opaque(w, self.authenticated_data)


def private_message_aads(group_id: bytes, epoch: int, content_type: int,
                         authenticated_data: bytes) -> tuple[bytes, bytes]:
    """The encodings of :class:`SenderDataAAD` and :class:`PrivateContentAAD` (§6.3.1,
    §6.3.2) of one PrivateMessage, written at once: the second extends the first."""
    w = bytearray()
    _write_aad_head(w, group_id, epoch, content_type)
    sender_data_aad = bytes(w)
    write_opaque(w, authenticated_data)
    return sender_data_aad, bytes(w)


def encode_private_message_content(content_type: int, content: Content,
                                   auth: FramedContentAuthData, padding: int) -> bytes:
    """PrivateMessageContent (§6.3.1) with ``padding`` zero bytes at the end."""
    w = bytearray()
    _write_body(w, content_type, content)
    _check_auth(content_type, auth)
    auth.write(w)
    w += bytes(padding)
    return bytes(w)


def decode_private_message_content(data: bytes, content_type: int
                                   ) -> tuple[Content, FramedContentAuthData]:
    """Parse PrivateMessageContent; the padding must be all zero bytes (§6.3.1)."""
    r = Reader(data)
    content = _read_body(r, content_type)
    auth = FramedContentAuthData.read_for(r, content_type)
    if any(data[r.pos:]):
        raise DecodeError("PrivateMessageContent padding is not all zero")
    return content, auth


MessageBody = PublicMessage | PrivateMessage | Welcome | GroupInfo | KeyPackage

_BODY_CLASSES: dict[int, type[MessageBody]] = {
    WireFormat.PUBLIC_MESSAGE: PublicMessage,
    WireFormat.PRIVATE_MESSAGE: PrivateMessage,
    WireFormat.WELCOME: Welcome,
    WireFormat.GROUP_INFO: GroupInfo,
    WireFormat.KEY_PACKAGE: KeyPackage,
}
_WIRE_FORMATS = {cls: wf for wf, cls in _BODY_CLASSES.items()}


@dataclass(frozen=True)
class MLSMessage(Struct):
    """The top-level MLS message: version, wire format and body (§6)."""

    body: MessageBody
    version: int = 1

    @property
    def wire_format(self) -> int:
        """The WireFormat that matches the body's type."""
        return _WIRE_FORMATS[type(self.body)]

    def write(self, w: bytearray) -> None:
        U16.write(w, self.version)
        U16.write(w, self.wire_format)
        self.body.write(w)

    @classmethod
    def read(cls, r: Reader) -> MLSMessage:
        version = r.uint(2)
        if version != 1:
            raise DecodeError(f"unsupported protocol version {version}")
        wf = r.uint(2)
        body_cls = _BODY_CLASSES.get(wf)
        if body_cls is None:
            raise DecodeError(f"unknown wire format {wf:#06x}")
        return cls(body_cls.read(r), version)
