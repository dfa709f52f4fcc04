"""Less metadata for the server and the other occupants (RFC 9750 §8.2).

Three measures, each a pure function the plugin applies at one place:

* **Room nicknames** (:func:`room_nick`): a device's nick in a room is 16
  characters of base32 computed with HMAC-SHA-256 from a key derived from the
  device's signature private key and the room's bare JID. It says nothing about
  any key, is the same on every start (nothing new to store: the private key is
  stored already), differs from room to room, and the server cannot link two
  rooms' nicks of one device (without the private key they look random). Its
  fixed length also keeps the stanza's size independent of the sender.
* **Sealed GroupInfo** (:func:`seal_group_info`, :func:`open_group_info`): the
  GroupInfo a member posts to the room after a Commit (for external joins:
  recovery after state loss, healing, a member's new device) is encrypted with
  AES-256-GCM under the group's *GroupInfo key*, 32 random bytes the creator
  puts into the GroupContext as the extension :data:`GROUP_INFO_KEY_EXTENSION`.
  Every member has the GroupContext (Welcome and external join give it), the
  server does not (Welcomes and GroupInfos are encrypted; handshake messages are
  PrivateMessages by default). The additional data binds group_id and epoch.
  A device that lost its state finds the key in its account's private group
  registry (:mod:`.recovery`), sealed there under the option ``recovery_key``
  when the application provides one (then the server learns nothing), else in
  the clear in that whitelisted node (then only the account's server can read
  it, not the room's occupants or archive readers of other servers). The key
  stays the same for the group's life: a former member can still open later
  GroupInfos (member list, public keys), but not join (the rules' external_join),
  nor read messages; a ReInit gives a new group and key.
* **Size buckets** (:func:`padded_base64`): every envelope a device sends is
  padded (protobuf field ``padding``, ignored by readers) so that its encoding
  is one of a few sizes: a power of two from 256 bytes to 16 KiB, above that a
  multiple of 16 KiB. The server sees the bucket and the number of fragments,
  not the size of a message or Commit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..core.messages.extensions import Extension, Extensions, find_extension
from .envelope import Envelope
from .errors import EnvelopeError

__all__ = ["GROUP_INFO_KEY_EXTENSION", "SEALED_PREFIX", "bucket", "group_info_key",
           "group_info_key_extension", "is_sealed", "open_group_info", "padded_base64",
           "room_nick", "seal_group_info", "seal_registry_key", "open_registry_key"]

#: GroupContext extension (private use range, RFC 9420 §17.3) holding the group's
#: 32-byte GroupInfo key.
GROUP_INFO_KEY_EXTENSION = 0xF0E4
#: The first bytes of a sealed GroupInfo (``Envelope.mls_message`` of kind GROUP_INFO).
SEALED_PREFIX = b"MLSXGI1"
#: Smallest size bucket (bytes of the encoded envelope).
MIN_BUCKET = 256
#: Above this, buckets are multiples of it.
LINEAR_BUCKET = 16 * 1024
_NONCE = 12
_KEY = 32
_NICK_LABEL = b"mls-xmpp room nick v1"
_SEAL_LABEL = b"mls-xmpp sealed GroupInfo v1"
_REGISTRY_LABEL = b"mls-xmpp registry key v1"


# -- nicknames -----------------------------------------------------------------------


def room_nick(signature_private_key: bytes, room: str) -> str:
    """This device's nick in ``room`` (a bare room JID): opaque, fixed length, per room."""
    key = hashlib.sha256(_NICK_LABEL + signature_private_key).digest()
    mac = hmac.new(key, room.lower().encode(), hashlib.sha256).digest()
    return base64.b32encode(mac[:10]).decode("ascii").lower()


# -- sealed GroupInfo ----------------------------------------------------------------


def group_info_key_extension(key: bytes | None = None) -> Extension:
    """The GroupContext extension with a GroupInfo key (a fresh random one by default)."""
    key = secrets.token_bytes(_KEY) if key is None else key
    if len(key) != _KEY:
        raise ValueError("a GroupInfo key is 32 bytes")
    return Extension(GROUP_INFO_KEY_EXTENSION, key)


def group_info_key(extensions: Extensions) -> bytes | None:
    """A GroupContext's GroupInfo key; ``None`` for groups made without one."""
    data = find_extension(extensions, GROUP_INFO_KEY_EXTENSION)
    return data if data is not None and len(data) == _KEY else None


def _aad(group_id: bytes, epoch: int) -> bytes:
    return _SEAL_LABEL + len(group_id).to_bytes(2, "big") + group_id + epoch.to_bytes(8, "big")


def seal_group_info(key: bytes, group_id: bytes, epoch: int, group_info: bytes) -> bytes:
    """``group_info`` (an MLSMessage) encrypted for the room: prefix, nonce, ciphertext."""
    nonce = secrets.token_bytes(_NONCE)
    return SEALED_PREFIX + nonce + AESGCM(key).encrypt(nonce, group_info,
                                                       _aad(group_id, epoch))


def is_sealed(data: bytes) -> bool:
    """Whether a GROUP_INFO envelope's payload is sealed."""
    return data.startswith(SEALED_PREFIX)


def open_group_info(key: bytes | None, group_id: bytes, epoch: int, data: bytes) -> bytes:
    """The MLSMessage of a GROUP_INFO envelope's payload (``group_id`` and ``epoch``: the
    envelope's). A payload that is not sealed (a group made without a GroupInfo key)
    is returned as it is.

    :raises EnvelopeError: sealed, and no key or not this key / group / epoch.
    """
    if not is_sealed(data):
        return data
    if key is None:
        raise EnvelopeError("a sealed GroupInfo, and no GroupInfo key to open it")
    body = data[len(SEALED_PREFIX):]
    if len(body) < _NONCE + 16:
        raise EnvelopeError("a sealed GroupInfo too short to hold anything")
    try:
        return AESGCM(key).decrypt(body[:_NONCE], body[_NONCE:], _aad(group_id, epoch))
    except InvalidTag:
        raise EnvelopeError("the sealed GroupInfo does not open with this group's key "
                            "(another group, epoch or key)") from None


def _registry_cipher(recovery_key: bytes) -> AESGCM:
    return AESGCM(hmac.new(recovery_key, _REGISTRY_LABEL, hashlib.sha256).digest())


def seal_registry_key(recovery_key: bytes | None, room: str, key: bytes) -> str:
    """How the account's private registry keeps a group's GroupInfo key: hex, sealed
    under ``recovery_key`` (``s:`` + nonce + ciphertext) when there is one."""
    if recovery_key is None:
        return key.hex()
    nonce = secrets.token_bytes(_NONCE)
    sealed = _registry_cipher(recovery_key).encrypt(nonce, key, room.encode())
    return "s:" + (nonce + sealed).hex()


def open_registry_key(recovery_key: bytes | None, room: str, text: str) -> bytes | None:
    """The GroupInfo key of a registry item (see :func:`seal_registry_key`); ``None``
    when it is absent, malformed, or sealed under another (or no) recovery key."""
    try:
        if not text.startswith("s:"):
            key = bytes.fromhex(text)
            return key if len(key) == _KEY else None
        if recovery_key is None:
            return None
        raw = bytes.fromhex(text[2:])
        key = _registry_cipher(recovery_key).decrypt(raw[:_NONCE], raw[_NONCE:], room.encode())
        return key if len(key) == _KEY else None
    except (ValueError, InvalidTag):
        return None


# -- size buckets --------------------------------------------------------------------


def bucket(size: int) -> int:
    """The bucket of an encoding of ``size`` bytes (see the module documentation)."""
    if size <= LINEAR_BUCKET:
        target = MIN_BUCKET
        while target < size:
            target *= 2
        return target
    return -(-size // LINEAR_BUCKET) * LINEAR_BUCKET


def _varint_len(n: int) -> int:
    length = 1
    while n >= 0x80:
        n >>= 7
        length += 1
    return length


def padded_base64(env: Envelope) -> str:
    """The text of ``<mls/>`` for ``env``, padded so that its bytes fill a bucket."""
    msg = env._to_proto()  # noqa: SLF001 - the padding field lives only on the wire
    size = msg.ByteSize()
    target = bucket(size + 2)  # the padding field needs two bytes at least
    while True:
        # field 15 (tag: one byte), a varint length of L bytes, and the padding bytes
        fits = [target - size - 1 - n for n in (1, 2, 3, 4)
                if target - size - 1 - n >= 0 and _varint_len(target - size - 1 - n) == n]
        if fits:
            pad = fits[0]
            break
        target = bucket(target + 1)
    msg.padding = secrets.token_bytes(pad)
    data = msg.SerializeToString(deterministic=True)
    return base64.b64encode(data).decode("ascii")
