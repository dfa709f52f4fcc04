"""The chat client's store is encrypted at rest by default (RFC 9750 §8.4).

The key of :class:`~mls_xmpp.storage.SQLiteStore` (AES-256-GCM over every
secret it holds) is derived with scrypt from a passphrase -- the environment
variable :data:`PASSPHRASE_ENV` when set, else the account's password -- and a
random salt kept next to the store (``<store>.salt``, mode 0600). A stolen
store file without the passphrase reveals no key material, messages waiting
in the outbox, or group state.

After a change of the account's password, set :data:`PASSPHRASE_ENV` to the
old one (the store stays encrypted under it). A store made before encryption
was the default (a store file without a salt file) is opened unencrypted,
and the client says so; ``--unencrypted-store`` makes a new store without
encryption.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import ChatError

#: The environment variable holding the store's passphrase (default: the password).
PASSPHRASE_ENV = "MLS_XMPP_STORE_PASSPHRASE"
#: scrypt cost parameters (RFC 7914): 16 MiB of memory, about 50 ms.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SALT_LEN = 16


def salt_path(store: Path) -> Path:
    """Where the salt of ``store`` is kept."""
    return store.with_name(store.name + ".salt")


def store_key(store: Path, password: str, *, encrypt: bool = True) -> bytes | None:
    """The 32-byte key to open ``store`` with, or ``None`` for an unencrypted one.

    A new store gets a new salt (unless ``encrypt`` is off); an existing store
    without a salt file is an unencrypted one of an earlier version.

    :raises ChatError: the salt file cannot be read or written, or is malformed.
    """
    salt_file = salt_path(store)
    try:
        if not salt_file.exists():
            if store.exists() or not encrypt:
                return None
            store.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(SALT_LEN))
        salt = salt_file.read_bytes()
    except OSError as e:
        raise ChatError(f"cannot use the store's salt file {salt_file}: {e}") from None
    if len(salt) != SALT_LEN:
        raise ChatError(f"the store's salt file {salt_file} is malformed")
    secret = os.environ.get(PASSPHRASE_ENV) or password
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                          p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32)
