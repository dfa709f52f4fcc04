"""Attachment sealing and opening (no server): every mismatch is refused."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from mls_xmpp.xmpp.attachments import TAG_SIZE, open_attachment, seal_file
from mls_xmpp.xmpp.errors import EnvelopeError


@pytest.mark.parametrize("size", [0, 1, 1000, 70_000])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    ciphertext, att = seal_file(data, name="photo.png")
    assert len(ciphertext) == size + TAG_SIZE and att.size == size
    assert att.media_type == "image/png" and att.name == "photo.png"
    if size >= 16:
        assert data[:16] not in ciphertext
    assert open_attachment(att, ciphertext) == data


def test_fresh_key_and_nonce_per_file() -> None:
    a = seal_file(b"same bytes")[1]
    b = seal_file(b"same bytes")[1]
    assert a.key != b.key and a.iv != b.iv and a.sha256 != b.sha256
    assert "key" not in repr(a) and a.key.hex() not in repr(a)


def test_every_mismatch_is_refused() -> None:
    data = os.urandom(500)
    ciphertext, att = seal_file(data, media_type="text/plain")
    assert att.media_type == "text/plain"
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(EnvelopeError, match="SHA-256"):
        open_attachment(att, flipped)
    with pytest.raises(EnvelopeError, match="SHA-256"):
        open_attachment(att, ciphertext[:-1])
    # the hash fits (a sender lying about the rest): key, nonce, size are still checked
    with pytest.raises(EnvelopeError, match="decrypt"):
        open_attachment(replace(att, key=os.urandom(32)), ciphertext)
    with pytest.raises(EnvelopeError, match="decrypt"):
        open_attachment(replace(att, iv=os.urandom(12)), ciphertext)
    with pytest.raises(EnvelopeError, match="size"):
        open_attachment(replace(att, size=499), ciphertext)
