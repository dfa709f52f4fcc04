"""Extensions and the extension payloads RFC 9420 defines (§13, §12.1.8.1, §11.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ..codec import U16, Opaque, Struct, Vec
from ..errors import ValidationError
from .common import ExtensionType
from .credentials import Credential


@dataclass(frozen=True)
class Extension(Struct):
    """``Extension``: a type and opaque data; unknown types are carried through."""

    extension_type: Annotated[int, U16]
    extension_data: Annotated[bytes, Opaque]


Extensions = tuple[Extension, ...]


def find_extension(extensions: Extensions, extension_type: int) -> bytes | None:
    """The data of the extension of ``extension_type``, or ``None``."""
    for e in extensions:
        if e.extension_type == extension_type:
            return e.extension_data
    return None


def check_unique(extensions: Extensions, where: str) -> None:
    """Refuse a list that repeats an extension type (RFC 9420 §13.4)."""
    seen: set[int] = set()
    for e in extensions:
        if e.extension_type in seen:
            raise ValidationError(f"{where}: extension type {e.extension_type:#06x} repeated")
        seen.add(e.extension_type)


def replace_extension(extensions: Extensions, ext: Extension) -> Extensions:
    """``extensions`` with ``ext`` replacing any of its type (appended otherwise)."""
    out = [e for e in extensions if e.extension_type != ext.extension_type]
    out.append(ext)
    return tuple(out)


@dataclass(frozen=True)
class RequiredCapabilities(Struct):
    """``required_capabilities`` extension data (RFC 9420 §11.1)."""

    extension_types: Annotated[tuple[int, ...], Vec(U16)] = ()
    proposal_types: Annotated[tuple[int, ...], Vec(U16)] = ()
    credential_types: Annotated[tuple[int, ...], Vec(U16)] = ()

    def to_extension(self) -> Extension:
        """This payload wrapped as a group context extension."""
        return Extension(ExtensionType.REQUIRED_CAPABILITIES, self.encode())


@dataclass(frozen=True)
class ExternalPub(Struct):
    """``external_pub`` extension data of a GroupInfo (RFC 9420 §12.4.3.2)."""

    external_pub: Annotated[bytes, Opaque]

    def to_extension(self) -> Extension:
        """This payload wrapped as a GroupInfo extension."""
        return Extension(ExtensionType.EXTERNAL_PUB, self.encode())


@dataclass(frozen=True)
class ExternalSender(Struct):
    """One entry of the ``external_senders`` extension (RFC 9420 §12.1.8.1)."""

    signature_key: Annotated[bytes, Opaque]
    credential: Credential


EXTERNAL_SENDERS = Vec(ExternalSender.codec())
APPLICATION_ID = Opaque


def external_senders_extension(senders: tuple[ExternalSender, ...]) -> Extension:
    """The ``external_senders`` group context extension listing ``senders``."""
    return Extension(ExtensionType.EXTERNAL_SENDERS, EXTERNAL_SENDERS.encode(senders))
