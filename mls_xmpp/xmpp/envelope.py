"""Typed, strictly validated wrappers of the ``urn:mls-xmpp:0`` protobuf messages.

Every payload of the mapping is one protobuf message (``proto/mls_xmpp/v1``),
base64 in a single namespaced element. This module is the only place that
touches the generated code; the rest of the plugin works with frozen
dataclasses:

* :class:`Envelope` (``envelope.proto``) -- the text of ``<mls/>`` in a stanza:
  mapping version, :class:`Kind`, group id, epoch, and the RFC 9420 MLSMessage
  inline, as one :class:`Fragment` of it, or out of band by :class:`BlobRef`.
  :func:`fragment` splits an envelope that exceeds a stanza budget and a
  :class:`Reassembler` puts the pieces back together with bounded memory.
* :class:`Content` (``content.proto``) -- the application content inside an
  MLS application message, padded by :func:`encode_content` so that its
  length only reveals a multiple of ``pad_to``.
* :class:`KeyPackageItem` (``keypackage.proto``) -- one item of the KeyPackage
  PEP node.

Validation happens in ``__post_init__``, so an invalid value cannot exist:
building one locally raises :class:`~mls_xmpp.core.errors.LocalUsageError`,
while every decoder (``from_base64``, ``from_bytes``, :func:`decode_content`)
turns any problem with a peer's input -- over-long text, non-base64 characters,
non-canonical base64, protobuf that does not parse, a rule below broken -- into
:class:`~mls_xmpp.xmpp.errors.EnvelopeError`. Unknown protobuf fields are
ignored, as protobuf intends, so that version 0 can grow optional fields.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final, TypeVar, cast

from google.protobuf.message import DecodeError as _ProtobufDecodeError
from google.protobuf.message import Message as _ProtobufMessage

from mls_xmpp._proto.mls_xmpp.v1 import content_pb2, envelope_pb2, keypackage_pb2
from mls_xmpp.core.errors import LocalUsageError

from .errors import EnvelopeError

__all__ = [
    "DEFAULT_PAD_TO",
    "FRAGMENT_ID_SIZE",
    "MAPPING_VERSION",
    "MAX_FRAGMENTS",
    "MAX_GROUP_ID_SIZE",
    "MAX_TEXT_SIZE",
    "MIN_FRAGMENTS",
    "Attachment",
    "BlobRef",
    "Content",
    "Envelope",
    "Fragment",
    "KeyPackageItem",
    "Kind",
    "Reassembler",
    "decode_content",
    "encode_content",
    "fragment",
]

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=_ProtobufMessage)

#: The mapping version this implementation speaks (``Envelope.version``).
MAPPING_VERSION: Final = 0
#: Default limit on the base64 text a decoder accepts (characters), checked
#: before anything is decoded.
MAX_TEXT_SIZE: Final = 512 * 1024
#: Longest group_id the mapping accepts (bytes).
MAX_GROUP_ID_SIZE: Final = 255
#: Bounds on ``Fragment.count``.
MIN_FRAGMENTS: Final = 2
MAX_FRAGMENTS: Final = 64
#: Size of the random ``Fragment.message_id`` that :func:`fragment` draws.
FRAGMENT_ID_SIZE: Final = 16
#: Longest ``Fragment.message_id`` accepted (bytes).
MAX_FRAGMENT_ID_SIZE: Final = 32
#: Default ``pad_to`` of :func:`encode_content` (bytes).
DEFAULT_PAD_TO: Final = 256
#: Longest URL in a :class:`BlobRef` or :class:`Attachment` (characters).
MAX_URL_SIZE: Final = 4096
#: Longest room JID (characters; RFC 7622 allows 3 x 1023 bytes plus separators).
MAX_JID_SIZE: Final = 3071
#: Longest id string (stanza-id, message/thread ids, device, file name).
MAX_ID_SIZE: Final = 1024
#: Longest media type of an attachment.
MAX_MEDIA_TYPE_SIZE: Final = 255
#: Most attachments in one :class:`Content`.
MAX_ATTACHMENTS: Final = 64
#: Most parts one :class:`BlobRef` may have.
MAX_BLOB_PARTS: Final = 64
#: Largest KeyPackage in a :class:`KeyPackageItem` (bytes).
MAX_KEY_PACKAGE_SIZE: Final = 128 * 1024

_SHA256_SIZE: Final = 32
_AES256_KEY_SIZE: Final = 32
_GCM_IV_SIZE: Final = 12
_UINT64_MAX: Final = 2**64 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


# --------------------------------------------------------------------------
# Checks shared by the dataclasses. They raise LocalUsageError; decoders turn
# that into EnvelopeError with _from_peer().


def _check_bytes(
    name: str, value: object, *, min_size: int = 0, max_size: int | None = None
) -> None:
    if not isinstance(value, bytes):
        raise LocalUsageError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) < min_size:
        raise LocalUsageError(f"{name} is {len(value)} bytes, fewer than {min_size}")
    if max_size is not None and len(value) > max_size:
        raise LocalUsageError(f"{name} is {len(value)} bytes, more than {max_size}")


def _check_exact(name: str, value: object, size: int) -> None:
    _check_bytes(name, value, min_size=size, max_size=size)


def _check_str(name: str, value: object, *, max_size: int, required: bool = False) -> None:
    if not isinstance(value, str):
        raise LocalUsageError(f"{name} must be str, not {type(value).__name__}")
    if required and not value:
        raise LocalUsageError(f"{name} must not be empty")
    if len(value) > max_size:
        raise LocalUsageError(f"{name} is {len(value)} characters, more than {max_size}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalUsageError(f"{name} must be int, not {type(value).__name__}")
    if not low <= value <= high:
        raise LocalUsageError(f"{name} is {value}, outside [{low}, {high}]")


@contextmanager
def _from_peer(what: str) -> Iterator[None]:
    """Turn validation failures of a peer's input into :class:`EnvelopeError`."""
    try:
        yield
    except LocalUsageError as exc:
        raise EnvelopeError(f"invalid {what}: {exc}") from None


def _decode_base64(text: str, max_size: int, what: str) -> bytes:
    """Strict base64: size limit first, standard alphabet, padding, canonical form.

    Only whitespace around the text (XML indentation) is tolerated.
    """
    if not isinstance(text, str):
        raise LocalUsageError(f"{what} text must be str, not {type(text).__name__}")
    if max_size < 1:
        raise LocalUsageError(f"max_size must be positive, not {max_size}")
    if len(text) > max_size:
        raise EnvelopeError(f"{what}: {len(text)} characters of text, more than {max_size}")
    stripped = text.strip(" \t\r\n")
    if not stripped:
        raise EnvelopeError(f"{what}: empty payload")
    try:
        data = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII text
        raise EnvelopeError(f"{what}: not base64 ({exc})") from None
    if base64.b64encode(data) != stripped.encode("ascii"):
        raise EnvelopeError(f"{what}: non-canonical base64")
    return data


def _parse(cls: type[_M], data: bytes, what: str) -> _M:
    if not isinstance(data, bytes):
        raise LocalUsageError(f"{what} data must be bytes, not {type(data).__name__}")
    try:
        return cls.FromString(data)
    except _ProtobufDecodeError as exc:
        raise EnvelopeError(f"{what}: protobuf does not parse ({exc})") from None


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _base64_size(size: int) -> int:
    return 4 * ((size + 2) // 3)


# --------------------------------------------------------------------------
# envelope.proto


class Kind(IntEnum):
    """What an :class:`Envelope` carries (``mls_xmpp.v1.Kind``; 0, unspecified, is invalid)."""

    APPLICATION = 1  #: PrivateMessage with application data
    PROPOSAL = 2  #: PublicMessage or PrivateMessage with a Proposal
    COMMIT = 3  #: PublicMessage or PrivateMessage with a Commit
    WELCOME = 4  #: Welcome, sent to a new member's bare JID
    GROUP_INFO = 5  #: GroupInfo for external joins, sent to the room
    KEY_PACKAGE = 6  #: KeyPackage (PEP items use :class:`KeyPackageItem` instead)


_KIND_VALUES: Final = frozenset(int(k) for k in Kind)


@dataclass(frozen=True)
class BlobRef:
    """Bytes stored out of band (XEP-0363 HTTP File Upload), checked by hash and size.

    A blob over the server's upload limit is stored in parts: ``url`` holds
    the first ``part_size`` bytes, each of ``more_urls`` the next ones (the
    last part may be shorter); ``sha256`` and ``size`` are the whole blob's.
    """

    url: str
    sha256: bytes  #: SHA-256 of the blob; receivers refuse a mismatch
    size: int  #: exact size in bytes, at least 1
    more_urls: tuple[str, ...] = ()  #: the parts after the first, in order
    part_size: int = 0  #: bytes per part but the last; 0 for a blob in one part

    def __post_init__(self) -> None:
        _check_str("BlobRef.url", self.url, max_size=MAX_URL_SIZE, required=True)
        _check_exact("BlobRef.sha256", self.sha256, _SHA256_SIZE)
        _check_int("BlobRef.size", self.size, 1, _UINT64_MAX)
        object.__setattr__(self, "more_urls", tuple(self.more_urls))
        if len(self.more_urls) + 1 > MAX_BLOB_PARTS:
            raise LocalUsageError(f"BlobRef has more than {MAX_BLOB_PARTS} parts")
        for url in self.more_urls:
            _check_str("BlobRef.more_urls", url, max_size=MAX_URL_SIZE, required=True)
        _check_int("BlobRef.part_size", self.part_size, 0, _UINT64_MAX)
        parts = len(self.more_urls) + 1
        if parts == 1:
            if self.part_size not in (0, self.size) and self.part_size < self.size:
                raise LocalUsageError("BlobRef.part_size is smaller than its one part")
        elif not (self.part_size >= 1
                  and (parts - 1) * self.part_size < self.size <= parts * self.part_size):
            raise LocalUsageError(f"BlobRef of {self.size} bytes cannot be {parts} parts "
                                  f"of {self.part_size}")

    @property
    def parts(self) -> list[tuple[str, int]]:
        """``(url, exact size)`` of each part, in order."""
        if not self.more_urls:
            return [(self.url, self.size)]
        urls = [self.url, *self.more_urls]
        last = self.size - (len(urls) - 1) * self.part_size
        return [(u, self.part_size) for u in urls[:-1]] + [(urls[-1], last)]

    def _to_proto(self) -> envelope_pb2.BlobRef:
        return envelope_pb2.BlobRef(url=self.url, sha256=self.sha256, size=self.size,
                                    more_urls=list(self.more_urls),
                                    part_size=self.part_size)

    @classmethod
    def _from_proto(cls, msg: envelope_pb2.BlobRef) -> BlobRef:
        return cls(url=msg.url, sha256=msg.sha256, size=msg.size,
                   more_urls=tuple(msg.more_urls), part_size=msg.part_size)


@dataclass(frozen=True)
class Fragment:
    """Marks an :class:`Envelope` whose ``mls_message`` is piece ``index`` of ``count``."""

    message_id: bytes  #: random, the same for every piece of one message
    index: int  #: 0-based, less than ``count``
    count: int  #: total pieces, between MIN_FRAGMENTS and MAX_FRAGMENTS

    def __post_init__(self) -> None:
        _check_bytes(
            "Fragment.message_id", self.message_id, min_size=1, max_size=MAX_FRAGMENT_ID_SIZE
        )
        _check_int("Fragment.count", self.count, MIN_FRAGMENTS, MAX_FRAGMENTS)
        _check_int("Fragment.index", self.index, 0, self.count - 1)

    def _to_proto(self) -> envelope_pb2.Fragment:
        return envelope_pb2.Fragment(message_id=self.message_id, index=self.index, count=self.count)

    @classmethod
    def _from_proto(cls, msg: envelope_pb2.Fragment) -> Fragment:
        return cls(message_id=msg.message_id, index=msg.index, count=msg.count)


@dataclass(frozen=True, kw_only=True, repr=False)
class Envelope:
    """One ``<mls xmlns='urn:mls-xmpp:0'/>`` payload (``mls_xmpp.v1.Envelope``).

    Exactly one of ``mls_message`` (the RFC 9420 MLSMessage, or one piece of it
    when ``fragment`` is set) and ``mls_message_ref`` (the whole MLSMessage out
    of band) is set. ``ratchet_tree``, ``room`` and ``after_stanza_id`` serve
    Welcomes and GroupInfos; they are accepted on any kind.
    """

    kind: Kind
    group_id: bytes = b""
    epoch: int = 0
    mls_message: bytes = b""
    fragment: Fragment | None = None
    mls_message_ref: BlobRef | None = None
    ratchet_tree: BlobRef | None = None
    room: str = ""
    after_stanza_id: str = ""
    version: int = MAPPING_VERSION

    def __post_init__(self) -> None:
        if self.version != MAPPING_VERSION:
            raise LocalUsageError(
                f"unsupported mapping version {self.version!r} (this is {MAPPING_VERSION})"
            )
        if not isinstance(self.kind, Kind):
            raise LocalUsageError(f"kind must be a Kind, not {self.kind!r}")
        _check_bytes("group_id", self.group_id, max_size=MAX_GROUP_ID_SIZE)
        _check_int("epoch", self.epoch, 0, _UINT64_MAX)
        _check_bytes("mls_message", self.mls_message)
        for name in ("fragment", "mls_message_ref", "ratchet_tree"):
            value = getattr(self, name)
            wanted = Fragment if name == "fragment" else BlobRef
            if value is not None and not isinstance(value, wanted):
                raise LocalUsageError(f"{name} must be a {wanted.__name__} or None")
        _check_str("room", self.room, max_size=MAX_JID_SIZE)
        _check_str("after_stanza_id", self.after_stanza_id, max_size=MAX_ID_SIZE)
        if self.mls_message and self.mls_message_ref is not None:
            raise LocalUsageError("mls_message and mls_message_ref are both set")
        if not self.mls_message and self.mls_message_ref is None:
            raise LocalUsageError("neither mls_message nor mls_message_ref is set")
        if self.fragment is not None and not self.mls_message:
            raise LocalUsageError("a fragment must carry part of mls_message inline")

    def __repr__(self) -> str:
        parts = [f"kind={self.kind.name}", f"group_id={self.group_id.hex()}", f"epoch={self.epoch}"]
        if self.mls_message:
            parts.append(f"mls_message=<{len(self.mls_message)} bytes>")
        for name in ("fragment", "mls_message_ref", "ratchet_tree", "room", "after_stanza_id"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value!r}")
        return f"Envelope({', '.join(parts)})"

    @property
    def is_fragment(self) -> bool:
        """True when ``mls_message`` is one piece of a larger MLSMessage."""
        return self.fragment is not None

    # -- encoding ------------------------------------------------------------

    def _to_proto(self) -> envelope_pb2.Envelope:
        msg = envelope_pb2.Envelope(
            version=self.version,
            kind=cast(envelope_pb2.Kind, int(self.kind)),
            group_id=self.group_id,
            epoch=self.epoch,
            mls_message=self.mls_message,
            room=self.room,
            after_stanza_id=self.after_stanza_id,
        )
        if self.fragment is not None:
            msg.fragment.CopyFrom(self.fragment._to_proto())
        if self.mls_message_ref is not None:
            msg.mls_message_ref.CopyFrom(self.mls_message_ref._to_proto())
        if self.ratchet_tree is not None:
            msg.ratchet_tree.CopyFrom(self.ratchet_tree._to_proto())
        return msg

    def encoded_size(self) -> int:
        """Length of :meth:`to_bytes`, without encoding."""
        return self._to_proto().ByteSize()

    def to_bytes(self) -> bytes:
        """The protobuf encoding (deterministic)."""
        return self._to_proto().SerializeToString(deterministic=True)

    def to_base64(self) -> str:
        """The text of the ``<mls/>`` element: base64 of :meth:`to_bytes`."""
        return base64.b64encode(self.to_bytes()).decode("ascii")

    # -- decoding ------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Parse and validate a peer's protobuf-encoded envelope.

        :raises EnvelopeError: the bytes do not parse or break a rule of the mapping.
        """
        msg = _parse(envelope_pb2.Envelope, data, "envelope")
        if msg.version != MAPPING_VERSION:
            raise EnvelopeError(f"unsupported mapping version {msg.version}")
        if msg.kind not in _KIND_VALUES:
            raise EnvelopeError(f"unknown envelope kind {int(msg.kind)}")
        with _from_peer("envelope"):
            return cls(
                version=msg.version,
                kind=Kind(msg.kind),
                group_id=msg.group_id,
                epoch=msg.epoch,
                mls_message=msg.mls_message,
                fragment=(Fragment._from_proto(msg.fragment) if msg.HasField("fragment") else None),
                mls_message_ref=(
                    BlobRef._from_proto(msg.mls_message_ref)
                    if msg.HasField("mls_message_ref")
                    else None
                ),
                ratchet_tree=(
                    BlobRef._from_proto(msg.ratchet_tree) if msg.HasField("ratchet_tree") else None
                ),
                room=msg.room,
                after_stanza_id=msg.after_stanza_id,
            )

    @classmethod
    def from_base64(cls, text: str, *, max_size: int = MAX_TEXT_SIZE) -> Envelope:
        """Decode the text of a peer's ``<mls/>`` element.

        :param max_size: longest text accepted (characters), checked before decoding.
        :raises EnvelopeError: over-long or non-base64 text, or an invalid envelope.
        """
        return cls.from_bytes(_decode_base64(text, max_size, "envelope"))


def fragment(
    envelope: Envelope, max_payload: int, *, message_id: bytes | None = None
) -> list[Envelope]:
    """Split ``envelope`` so that each piece's :meth:`~Envelope.to_base64` fits ``max_payload``.

    ``max_payload`` is a budget in characters of base64 text (the content of
    ``<mls/>``; leave room for the rest of the stanza). An envelope that
    already fits is returned alone and unchanged. Otherwise ``mls_message`` is
    cut into at most :data:`MAX_FRAGMENTS` pieces of nearly equal size; every
    piece repeats the other fields and carries a :class:`Fragment` with one
    random ``message_id`` (or the given one).

    :raises LocalUsageError: the envelope is already a fragment, carries its
        message by reference, or would need more than MAX_FRAGMENTS pieces
        (send it out of band with ``mls_message_ref`` instead).
    """
    _check_int("max_payload", max_payload, 1, 2**62)
    if _base64_size(envelope.encoded_size()) <= max_payload:
        return [envelope]
    if envelope.fragment is not None:
        raise LocalUsageError("envelope is already a fragment")
    if not envelope.mls_message:
        raise LocalUsageError("envelope does not fit and carries no inline mls_message to split")
    if message_id is None:
        message_id = secrets.token_bytes(FRAGMENT_ID_SIZE)
    # Worst-case size of everything but mls_message: the last piece's header.
    header = envelope._to_proto()
    header.ClearField("mls_message")
    header.fragment.CopyFrom(Fragment(message_id, MAX_FRAGMENTS - 1, MAX_FRAGMENTS)._to_proto())
    budget = (max_payload // 4) * 3  # bytes whose base64 fits max_payload
    # Field 5 costs a one-byte tag plus a varint length of at most varint(budget).
    max_piece = budget - header.ByteSize() - 1 - _varint_size(budget)
    if max_piece < 1:
        raise LocalUsageError(f"max_payload {max_payload} leaves no room for a fragment")
    total = len(envelope.mls_message)
    count = max(MIN_FRAGMENTS, -(-total // max_piece))
    if count > MAX_FRAGMENTS:
        raise LocalUsageError(
            f"{total} bytes need {count} fragments of {max_piece} bytes, more than "
            f"{MAX_FRAGMENTS}: send the message out of band (mls_message_ref)"
        )
    size = -(-total // count)
    return [
        replace(
            envelope,
            mls_message=envelope.mls_message[i * size : (i + 1) * size],
            fragment=Fragment(message_id, i, count),
        )
        for i in range(count)
    ]


@dataclass
class _Partial:
    """The pieces of one fragmented message received so far."""

    template: Envelope  # the first piece that arrived
    born: int  # Reassembler tick of that piece
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


def _disagreement(a: Envelope, b: Envelope) -> str | None:
    """The first field other than the piece itself on which two pieces differ."""
    assert a.fragment is not None and b.fragment is not None
    if a.fragment.count != b.fragment.count:
        return "fragment.count"
    for name in ("version", "kind", "group_id", "epoch", "ratchet_tree", "room", "after_stanza_id"):
        if getattr(a, name) != getattr(b, name):
            return name
    return None


class Reassembler:
    """Collects :class:`Fragment` pieces by (sender, message_id) and returns whole envelopes.

    Memory is bounded: at most ``max_messages`` incomplete messages,
    ``max_pieces`` stored pieces and ``max_bytes`` of stored ``mls_message``
    bytes in all. When a new piece would exceed a bound, the oldest incomplete
    messages are dropped to make room. An incomplete message also expires once
    ``max_age`` further envelopes have been added after its first piece
    (expiry counts envelopes, not time, so it is deterministic and replays from
    an archive behave like live traffic).

    Pieces may arrive in any order; a duplicate piece with the same bytes is
    ignored. The sender is whatever identifies the peer to the caller (a bare
    JID, or a room occupant); message ids of different senders never mix.
    """

    def __init__(
        self,
        *,
        max_messages: int = 16,
        max_pieces: int = 4 * MAX_FRAGMENTS,
        max_bytes: int = 8 * 1024 * 1024,
        max_age: int = 1024,
    ) -> None:
        _check_int("max_messages", max_messages, 1, 2**31)
        _check_int("max_pieces", max_pieces, MIN_FRAGMENTS, 2**31)
        _check_int("max_bytes", max_bytes, 1, 2**62)
        _check_int("max_age", max_age, 1, 2**62)
        self.max_messages = max_messages
        self.max_pieces = max_pieces
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._tick = 0
        self._partials: OrderedDict[tuple[str, bytes], _Partial] = OrderedDict()
        self._pieces = 0
        self._bytes = 0

    def __len__(self) -> int:
        """Number of incomplete messages held."""
        return len(self._partials)

    @property
    def pending_pieces(self) -> int:
        """Pieces held for incomplete messages."""
        return self._pieces

    @property
    def pending_bytes(self) -> int:
        """Bytes of ``mls_message`` held for incomplete messages."""
        return self._bytes

    def clear(self) -> None:
        """Drop every incomplete message."""
        self._partials.clear()
        self._pieces = self._bytes = 0

    def _drop(self, key: tuple[str, bytes]) -> None:
        partial = self._partials.pop(key)
        self._pieces -= len(partial.pieces)
        self._bytes -= partial.size

    def _expire(self) -> None:
        while self._partials:
            key, oldest = next(iter(self._partials.items()))
            if self._tick - oldest.born <= self.max_age:
                break
            log.debug("fragmented message %s from %s expired", key[1].hex(), key[0])
            self._drop(key)

    def _reject(self, key: tuple[str, bytes], reason: str) -> EnvelopeError:
        if key in self._partials:
            self._drop(key)
        return EnvelopeError(f"fragmented message {key[1].hex()} from {key[0]}: {reason}")

    def add(self, sender: str, envelope: Envelope) -> Envelope | None:
        """Add one envelope from ``sender``.

        :returns: ``envelope`` itself if it is not a fragment; the reassembled
            envelope (``fragment`` unset, whole ``mls_message``) when this piece
            completes a message; otherwise None.
        :raises EnvelopeError: the piece contradicts earlier pieces of its
            message (which is then dropped), or the message cannot fit the
            limits.
        """
        self._tick += 1
        self._expire()
        frag = envelope.fragment
        if frag is None:
            return envelope
        key = (sender, frag.message_id)
        piece = envelope.mls_message
        partial = self._partials.get(key)
        if partial is None:
            if frag.count > self.max_pieces:
                raise self._reject(key, f"{frag.count} pieces exceed the limit {self.max_pieces}")
            partial = _Partial(template=envelope, born=self._tick)
        else:
            field_name = _disagreement(partial.template, envelope)
            if field_name is not None:
                raise self._reject(key, f"piece {frag.index} disagrees on {field_name}")
            known = partial.pieces.get(frag.index)
            if known is not None:
                if known != piece:
                    raise self._reject(key, f"piece {frag.index} arrived twice, different")
                return None
        if partial.size + len(piece) > self.max_bytes:
            raise self._reject(key, f"more than the limit of {self.max_bytes} bytes")
        self._make_room(key, new_message=key not in self._partials, size=len(piece))
        partial.pieces[frag.index] = piece
        partial.size += len(piece)
        self._pieces += 1
        self._bytes += len(piece)
        self._partials[key] = partial
        if len(partial.pieces) < frag.count:
            return None
        self._drop(key)
        whole = b"".join(partial.pieces[i] for i in range(frag.count))
        return replace(partial.template, mls_message=whole, fragment=None)

    def _make_room(self, key: tuple[str, bytes], *, new_message: bool, size: int) -> None:
        """Evict the oldest other incomplete messages until one more piece fits."""

        def full() -> bool:
            return (
                self._pieces + 1 > self.max_pieces
                or self._bytes + size > self.max_bytes
                or (new_message and len(self._partials) + 1 > self.max_messages)
            )

        while full():
            victim = next((k for k in self._partials if k != key), None)
            if victim is None:  # only this message left; its own limits were checked
                break
            log.debug("dropping fragmented message %s from %s: reassembly full", *victim[::-1])
            self._drop(victim)


# --------------------------------------------------------------------------
# content.proto


@dataclass(frozen=True, kw_only=True)
class Attachment:
    """A file shared by reference, encrypted with AES-256-GCM (``mls_xmpp.v1.Attachment``)."""

    url: str
    sha256: bytes  #: SHA-256 of the uploaded (encrypted) bytes
    key: bytes  #: 32-byte AES-256-GCM key
    iv: bytes  #: 12-byte GCM nonce
    size: int = 0  #: plaintext size
    media_type: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        _check_str("Attachment.url", self.url, max_size=MAX_URL_SIZE, required=True)
        _check_exact("Attachment.sha256", self.sha256, _SHA256_SIZE)
        _check_exact("Attachment.key", self.key, _AES256_KEY_SIZE)
        _check_exact("Attachment.iv", self.iv, _GCM_IV_SIZE)
        _check_int("Attachment.size", self.size, 0, _UINT64_MAX)
        _check_str("Attachment.media_type", self.media_type, max_size=MAX_MEDIA_TYPE_SIZE)
        _check_str("Attachment.name", self.name, max_size=MAX_ID_SIZE)

    def __repr__(self) -> str:  # never print the key
        return f"Attachment(url={self.url!r}, size={self.size}, media_type={self.media_type!r})"

    def _to_proto(self) -> content_pb2.Attachment:
        return content_pb2.Attachment(
            url=self.url,
            media_type=self.media_type,
            size=self.size,
            sha256=self.sha256,
            key=self.key,
            iv=self.iv,
            name=self.name,
        )

    @classmethod
    def _from_proto(cls, msg: content_pb2.Attachment) -> Attachment:
        return cls(
            url=msg.url,
            sha256=msg.sha256,
            key=msg.key,
            iv=msg.iv,
            size=msg.size,
            media_type=msg.media_type,
            name=msg.name,
        )


@dataclass(frozen=True, kw_only=True)
class Content:
    """The application content of an MLS application message (``mls_xmpp.v1.Content``)."""

    body: str = ""
    attachments: tuple[Attachment, ...] = ()
    message_id: str = ""  #: sender-chosen id, for replies and corrections
    thread_id: str = ""
    reply_to: str = ""  #: message_id this one answers
    timestamp_ms: int = 0  #: sender's clock

    def __post_init__(self) -> None:
        _check_str("body", self.body, max_size=2**31)
        if not isinstance(self.attachments, tuple):
            if isinstance(self.attachments, str | bytes) or not isinstance(
                self.attachments, Iterable
            ):
                raise LocalUsageError("attachments must be a sequence of Attachment")
            object.__setattr__(self, "attachments", tuple(self.attachments))
        if len(self.attachments) > MAX_ATTACHMENTS:
            raise LocalUsageError(
                f"{len(self.attachments)} attachments, more than {MAX_ATTACHMENTS}"
            )
        if not all(isinstance(a, Attachment) for a in self.attachments):
            raise LocalUsageError("attachments must be Attachment instances")
        for name in ("message_id", "thread_id", "reply_to"):
            _check_str(name, getattr(self, name), max_size=MAX_ID_SIZE)
        _check_int("timestamp_ms", self.timestamp_ms, _INT64_MIN, _INT64_MAX)

    def encode(self, *, pad_to: int = DEFAULT_PAD_TO) -> bytes:
        """The protobuf encoding, padded with random bytes to a multiple of ``pad_to``.

        With ``pad_to`` > 1 the ``padding`` field is always present (at least
        one byte), so the result is a non-zero multiple of ``pad_to``;
        ``pad_to=1`` disables padding.
        """
        _check_int("pad_to", pad_to, 1, 2**20)
        msg = content_pb2.Content(
            body=self.body,
            attachments=[a._to_proto() for a in self.attachments],
            message_id=self.message_id,
            thread_id=self.thread_id,
            reply_to=self.reply_to,
            timestamp_ms=self.timestamp_ms,
        )
        if pad_to > 1:
            msg.padding = secrets.token_bytes(_padding_size(msg.ByteSize(), pad_to))
        data = msg.SerializeToString(deterministic=True)
        assert len(data) % pad_to == 0, (len(data), pad_to)
        return data


def _padding_size(size: int, pad_to: int) -> int:
    """Length p >= 1 of the padding bytes so that size + field overhead + p is a multiple.

    The padding field (number 15) costs a one-byte tag, a varint length and p.
    """
    target = -(-(size + 3) // pad_to) * pad_to
    while True:
        room = target - size - 1
        for length_size in range(1, 6):
            p = room - length_size
            if p >= 1 and _varint_size(p) == length_size:
                return p
        target += pad_to  # a varint boundary made this multiple unreachable


def encode_content(
    body: str = "",
    attachments: Iterable[Attachment] = (),
    *,
    message_id: str = "",
    thread_id: str = "",
    reply_to: str = "",
    timestamp_ms: int = 0,
    pad_to: int = DEFAULT_PAD_TO,
) -> bytes:
    """Build a :class:`Content` and encode it padded to a multiple of ``pad_to`` bytes.

    :raises LocalUsageError: a field breaks a limit (see :class:`Content`).
    """
    content = Content(
        body=body,
        attachments=tuple(attachments),
        message_id=message_id,
        thread_id=thread_id,
        reply_to=reply_to,
        timestamp_ms=timestamp_ms,
    )
    return content.encode(pad_to=pad_to)


def decode_content(data: bytes) -> Content:
    """Parse and validate the plaintext of a peer's application message; padding is ignored.

    :raises EnvelopeError: the bytes do not parse or a field breaks a limit.
    """
    msg = _parse(content_pb2.Content, data, "content")
    with _from_peer("content"):
        return Content(
            body=msg.body,
            attachments=tuple(Attachment._from_proto(a) for a in msg.attachments),
            message_id=msg.message_id,
            thread_id=msg.thread_id,
            reply_to=msg.reply_to,
            timestamp_ms=msg.timestamp_ms,
        )


# --------------------------------------------------------------------------
# keypackage.proto


@dataclass(frozen=True, kw_only=True, repr=False)
class KeyPackageItem:
    """One item of the KeyPackage PEP node (``mls_xmpp.v1.KeyPackageItem``).

    The item id is the KeyPackageRef in lower-case hex; the item's payload is
    :meth:`to_base64` in the mapping's namespace.
    """

    key_package: bytes  #: RFC 9420 MLSMessage carrying a KeyPackage
    last_resort: bool = False  #: kept after use (RFC 9420 §16.8)
    device: str = ""  #: the publishing device
    version: int = MAPPING_VERSION

    def __post_init__(self) -> None:
        if self.version != MAPPING_VERSION:
            raise LocalUsageError(
                f"unsupported mapping version {self.version!r} (this is {MAPPING_VERSION})"
            )
        _check_bytes("key_package", self.key_package, min_size=1, max_size=MAX_KEY_PACKAGE_SIZE)
        if not isinstance(self.last_resort, bool):
            raise LocalUsageError("last_resort must be bool")
        _check_str("device", self.device, max_size=MAX_ID_SIZE)

    def __repr__(self) -> str:
        return (
            f"KeyPackageItem(key_package=<{len(self.key_package)} bytes>, "
            f"last_resort={self.last_resort}, device={self.device!r})"
        )

    def to_bytes(self) -> bytes:
        """The protobuf encoding (deterministic)."""
        msg = keypackage_pb2.KeyPackageItem(
            version=self.version,
            key_package=self.key_package,
            last_resort=self.last_resort,
            device=self.device,
        )
        return msg.SerializeToString(deterministic=True)

    def to_base64(self) -> str:
        """Base64 of :meth:`to_bytes`, the text of the PEP item's payload element."""
        return base64.b64encode(self.to_bytes()).decode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyPackageItem:
        """Parse and validate a peer's protobuf-encoded item.

        :raises EnvelopeError: the bytes do not parse or break a rule of the mapping.
        """
        msg = _parse(keypackage_pb2.KeyPackageItem, data, "key package item")
        if msg.version != MAPPING_VERSION:
            raise EnvelopeError(f"unsupported mapping version {msg.version} of key package item")
        with _from_peer("key package item"):
            return cls(
                version=msg.version,
                key_package=msg.key_package,
                last_resort=msg.last_resort,
                device=msg.device,
            )

    @classmethod
    def from_base64(cls, text: str, *, max_size: int = MAX_TEXT_SIZE) -> KeyPackageItem:
        """Decode the text of a peer's PEP item payload.

        :raises EnvelopeError: over-long or non-base64 text, or an invalid item.
        """
        return cls.from_bytes(_decode_base64(text, max_size, "key package item"))
