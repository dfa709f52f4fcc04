from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_APPLICATION: _ClassVar[Kind]
    KIND_PROPOSAL: _ClassVar[Kind]
    KIND_COMMIT: _ClassVar[Kind]
    KIND_WELCOME: _ClassVar[Kind]
    KIND_GROUP_INFO: _ClassVar[Kind]
    KIND_KEY_PACKAGE: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
KIND_APPLICATION: Kind
KIND_PROPOSAL: Kind
KIND_COMMIT: Kind
KIND_WELCOME: Kind
KIND_GROUP_INFO: Kind
KIND_KEY_PACKAGE: Kind

class BlobRef(_message.Message):
    __slots__ = ("url", "sha256", "size", "more_urls", "part_size")
    URL_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MORE_URLS_FIELD_NUMBER: _ClassVar[int]
    PART_SIZE_FIELD_NUMBER: _ClassVar[int]
    url: str
    sha256: bytes
    size: int
    more_urls: _containers.RepeatedScalarFieldContainer[str]
    part_size: int
    def __init__(self, url: _Optional[str] = ..., sha256: _Optional[bytes] = ..., size: _Optional[int] = ..., more_urls: _Optional[_Iterable[str]] = ..., part_size: _Optional[int] = ...) -> None: ...

class Fragment(_message.Message):
    __slots__ = ("message_id", "index", "count")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    index: int
    count: int
    def __init__(self, message_id: _Optional[bytes] = ..., index: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("version", "kind", "group_id", "epoch", "mls_message", "fragment", "mls_message_ref", "ratchet_tree", "room", "after_stanza_id", "padding")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MLS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    MLS_MESSAGE_REF_FIELD_NUMBER: _ClassVar[int]
    RATCHET_TREE_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    AFTER_STANZA_ID_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: Kind
    group_id: bytes
    epoch: int
    mls_message: bytes
    fragment: Fragment
    mls_message_ref: BlobRef
    ratchet_tree: BlobRef
    room: str
    after_stanza_id: str
    padding: bytes
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., group_id: _Optional[bytes] = ..., epoch: _Optional[int] = ..., mls_message: _Optional[bytes] = ..., fragment: _Optional[_Union[Fragment, _Mapping]] = ..., mls_message_ref: _Optional[_Union[BlobRef, _Mapping]] = ..., ratchet_tree: _Optional[_Union[BlobRef, _Mapping]] = ..., room: _Optional[str] = ..., after_stanza_id: _Optional[str] = ..., padding: _Optional[bytes] = ...) -> None: ...
