from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class KeyPackageItem(_message.Message):
    __slots__ = ("version", "key_package", "last_resort", "device")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_PACKAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_RESORT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    version: int
    key_package: bytes
    last_resort: bool
    device: str
    def __init__(self, version: _Optional[int] = ..., key_package: _Optional[bytes] = ..., last_resort: _Optional[bool] = ..., device: _Optional[str] = ...) -> None: ...
