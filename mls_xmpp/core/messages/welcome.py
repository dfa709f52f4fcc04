"""Welcome and the secrets it carries (RFC 9420 §12.4.3.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ..codec import U16, Opaque, Optional, Struct
from ..schedule.psk import PreSharedKeyID
from .commit import HPKECiphertext


@dataclass(frozen=True)
class PathSecret(Struct):
    """The path secret of the common ancestor of committer and joiner."""

    path_secret: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class GroupSecrets(Struct):
    """Encrypted to each joiner's init_key inside a Welcome."""

    joiner_secret: Annotated[bytes, Opaque]
    path_secret: Annotated[PathSecret | None, Optional(PathSecret.codec())] = None
    psks: tuple[PreSharedKeyID, ...] = ()


@dataclass(frozen=True)
class EncryptedGroupSecrets(Struct):
    """GroupSecrets for the member whose KeyPackageRef is ``new_member``."""

    new_member: Annotated[bytes, Opaque]
    encrypted_group_secrets: HPKECiphertext


@dataclass(frozen=True)
class Welcome(Struct):
    """The Welcome message: per-joiner secrets and the encrypted GroupInfo."""

    cipher_suite: Annotated[int, U16]
    secrets: tuple[EncryptedGroupSecrets, ...]
    encrypted_group_info: Annotated[bytes, Opaque]
