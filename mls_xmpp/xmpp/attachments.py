"""Files shared in a group: encrypted, uploaded by HTTP File Upload, sent by reference.

A file never travels in the MLS message itself. The sender encrypts it with
a fresh AES-256-GCM key and nonce, uploads the ciphertext (XEP-0363), and
sends an application message whose :class:`~.envelope.Content` carries an
:class:`~.envelope.Attachment`: the URL, the SHA-256 and the key of that
ciphertext. The key is as secret as the message and as well protected
(MLS encrypts the Content); the server stores only ciphertext.

Receivers download on request only (:func:`download_attachment`; never
automatically, and only from the hosts :mod:`.blobs` allows), check the
ciphertext's size and SHA-256 before decrypting, and check the plaintext
size after; any mismatch is an :class:`~.errors.EnvelopeError`.

Format: ``ciphertext = AES-256-GCM(key, iv, plaintext, aad="")``, that is
the encrypted file followed by the 16-byte tag. Its SHA-256 is
``Attachment.sha256`` and its length ``Attachment.size + 16``.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .envelope import Attachment, BlobRef
from .errors import EnvelopeError

if TYPE_CHECKING:
    from .delivery import Delivery

__all__ = ["TAG_SIZE", "download_attachment", "open_attachment", "seal_file",
           "upload_attachment"]

#: Bytes the GCM tag adds to every file.
TAG_SIZE = 16


def seal_file(data: bytes, *, name: str = "", media_type: str = "",
              url: str = "pending:") -> tuple[bytes, Attachment]:
    """Encrypt ``data`` under a fresh key; the ciphertext and its Attachment (with ``url``)."""
    key, iv = AESGCM.generate_key(bit_length=256), os.urandom(12)
    ciphertext = AESGCM(key).encrypt(iv, bytes(data), None)
    if not media_type and name:
        media_type = mimetypes.guess_type(name)[0] or ""
    return ciphertext, Attachment(url=url, sha256=hashlib.sha256(ciphertext).digest(),
                                  key=key, iv=iv, size=len(data),
                                  media_type=media_type or "application/octet-stream",
                                  name=name)


def open_attachment(attachment: Attachment, ciphertext: bytes) -> bytes:
    """Check and decrypt a downloaded ciphertext.

    :raises EnvelopeError: the bytes are not the ones the sender described
        (hash, size or authentication tag).
    """
    if hashlib.sha256(ciphertext).digest() != attachment.sha256:
        raise EnvelopeError("attachment does not match its SHA-256")
    try:
        data = AESGCM(attachment.key).decrypt(attachment.iv, ciphertext, None)
    except InvalidTag:
        raise EnvelopeError("attachment does not decrypt with its key") from None
    if len(data) != attachment.size:
        raise EnvelopeError("attachment is not of the size its sender gave")
    return data


async def upload_attachment(delivery: Delivery, data: bytes, *, name: str = "",
                            media_type: str = "") -> Attachment:
    """Encrypt and upload a file; the Attachment to send in a message.

    :raises TransportError: the upload failed (or the server's size limit).
    """
    ciphertext, sealed = seal_file(data, name=name, media_type=media_type)
    ref = await delivery.upload(ciphertext, "attachment", split=False)  # one URL per file
    return Attachment(url=ref.url, sha256=sealed.sha256, key=sealed.key, iv=sealed.iv,
                      size=sealed.size, media_type=sealed.media_type, name=sealed.name)


async def download_attachment(delivery: Delivery, attachment: Attachment, *,
                              domains: Iterable[str] = ()) -> bytes:
    """Download, check and decrypt a file a member shared.

    Only from a host allowed for the XMPP servers ``domains`` (those of the
    sender and the room; see :mod:`.blobs`), within the option ``blob_timeout``.

    :raises BlobRefusedError: the URL is not one files are fetched from.
    :raises TransportError: the download failed.
    :raises EnvelopeError: the file is over the download limit, or not the
        one described (size, SHA-256, tag).
    """
    ref = BlobRef(url=attachment.url, sha256=attachment.sha256, size=attachment.size + TAG_SIZE)
    return open_attachment(attachment, await delivery.download(ref, domains=domains))
