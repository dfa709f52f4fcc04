"""Welcome and the secrets it carries (RFC 9420 §12.4.3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from ..codec import U16, Opaque, Optional, Struct
from ..errors import ValidationError
from ..schedule.key_schedule import welcome_key_nonce
from ..schedule.psk import PreSharedKeyID
from .commit import HPKECiphertext
from .group_info import GroupInfo

if TYPE_CHECKING:
    from ..crypto import CipherSuite
    from ..crypto.batch import BatchCrypto


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


def encrypt_group_secrets(suite: CipherSuite, init_key: bytes, encrypted_group_info: bytes,
                          group_secrets: GroupSecrets) -> HPKECiphertext:
    """EncryptWithLabel(init_key, "Welcome", encrypted_group_info, GroupSecrets)."""
    kem_output, ct = suite.encrypt_with_label(init_key, "Welcome", encrypted_group_info,
                                              group_secrets.encode())
    return HPKECiphertext(kem_output, ct)


def encrypt_group_secrets_many(suite: CipherSuite, encrypted_group_info: bytes,
                               items: Sequence[tuple[bytes, GroupSecrets]],
                               crypto: BatchCrypto | None = None) -> list[HPKECiphertext]:
    """:func:`encrypt_group_secrets` for each ``(init_key, group_secrets)``, in order.

    The encryptions are computed as one batch by ``crypto``
    (:mod:`~mls_xmpp.core.crypto.batch`; serially by default).
    """
    encoded: dict[int, bytes] = {}  # by object: the same GroupSecrets is encoded once
    plaintexts = []
    for key, gs in items:
        data = encoded.get(id(gs))
        if data is None:
            data = encoded[id(gs)] = gs.encode()
        plaintexts.append((key, data))
    sealed = suite.encrypt_with_label_many("Welcome", encrypted_group_info, plaintexts, crypto)
    return [HPKECiphertext(kem_output, ct) for kem_output, ct in sealed]


def decrypt_group_secrets(suite: CipherSuite, welcome: Welcome, key_package_ref: bytes,
                          init_private_key: bytes) -> GroupSecrets:
    """Find the entry for ``key_package_ref`` and decrypt its GroupSecrets (§12.4.3.1)."""
    for entry in welcome.secrets:
        if entry.new_member == key_package_ref:
            ct = entry.encrypted_group_secrets
            plaintext = suite.decrypt_with_label(init_private_key, "Welcome",
                                                 welcome.encrypted_group_info,
                                                 ct.kem_output, ct.ciphertext)
            return GroupSecrets.decode(plaintext)
    raise ValidationError("the Welcome has no entry for this KeyPackage (§12.4.3.1)")


def encrypt_group_info(suite: CipherSuite, welcome_secret: bytes, group_info: GroupInfo) -> bytes:
    """The GroupInfo sealed with welcome_key and welcome_nonce (§12.4.3.1)."""
    key, nonce = welcome_key_nonce(suite, welcome_secret)
    return suite.aead_seal(key, nonce, b"", group_info.encode())


def decrypt_group_info(suite: CipherSuite, welcome_secret: bytes,
                       encrypted_group_info: bytes) -> GroupInfo:
    """Open the GroupInfo of a Welcome (§12.4.3.1)."""
    key, nonce = welcome_key_nonce(suite, welcome_secret)
    return GroupInfo.decode(suite.aead_open(key, nonce, b"", encrypted_group_info))
