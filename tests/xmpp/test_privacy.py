"""Unit tests of mls_xmpp.xmpp.privacy: nicks, sealed GroupInfo, registry keys, buckets."""

from __future__ import annotations

import base64
import os

import pytest

from mls_xmpp.xmpp.envelope import Envelope, Kind
from mls_xmpp.xmpp.errors import EnvelopeError
from mls_xmpp.xmpp.privacy import (
    GROUP_INFO_KEY_EXTENSION,
    bucket,
    group_info_key,
    group_info_key_extension,
    is_sealed,
    open_group_info,
    open_registry_key,
    padded_base64,
    room_nick,
    seal_group_info,
    seal_registry_key,
)


def test_nick_is_opaque_stable_and_per_room() -> None:
    private = os.urandom(32)
    a = room_nick(private, "r1@conference.example.org")
    assert a == room_nick(private, "R1@conference.example.org")  # bare JID, any case
    assert a != room_nick(private, "r2@conference.example.org")
    assert a != room_nick(os.urandom(32), "r1@conference.example.org")
    assert len(a) == 16 and a.isalnum() and a == a.lower()
    assert private[:4].hex() not in a


def test_group_info_key_extension() -> None:
    ext = group_info_key_extension()
    assert ext.extension_type == GROUP_INFO_KEY_EXTENSION and len(ext.extension_data) == 32
    assert group_info_key((ext,)) == ext.extension_data
    assert group_info_key(()) is None
    with pytest.raises(ValueError):
        group_info_key_extension(b"short")


def test_sealed_group_info_opens_only_for_its_group_and_epoch() -> None:
    key, gid, info = os.urandom(32), os.urandom(16), b"\x00\x01group info bytes"
    sealed = seal_group_info(key, gid, 7, info)
    assert is_sealed(sealed) and info not in sealed
    assert open_group_info(key, gid, 7, sealed) == info
    for bad in ((os.urandom(32), gid, 7), (key, os.urandom(16), 7), (key, gid, 8), (None, gid, 7)):
        with pytest.raises(EnvelopeError):
            open_group_info(bad[0], bad[1], bad[2], sealed)
    with pytest.raises(EnvelopeError):
        open_group_info(key, gid, 7, sealed[:20])  # truncated
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(EnvelopeError):
        open_group_info(key, gid, 7, flipped)
    assert open_group_info(None, gid, 7, info) == info  # a group made without a key


def test_registry_key_with_and_without_recovery_key() -> None:
    key, room = os.urandom(32), "r@conference.example.org"
    plain = seal_registry_key(None, room, key)
    assert plain == key.hex() and open_registry_key(None, room, plain) == key
    recovery = os.urandom(32)
    sealed = seal_registry_key(recovery, room, key)
    assert sealed.startswith("s:") and key.hex() not in sealed
    assert open_registry_key(recovery, room, sealed) == key
    assert open_registry_key(None, room, sealed) is None
    assert open_registry_key(os.urandom(32), room, sealed) is None
    assert open_registry_key(recovery, "other@conference.example.org", sealed) is None
    assert open_registry_key(None, room, "zz") is None and open_registry_key(None, room, "") is None


def test_buckets() -> None:
    assert [bucket(n) for n in (0, 1, 256, 257, 16384, 16385, 40000)] == \
        [256, 256, 256, 512, 16384, 32768, 49152]


@pytest.mark.parametrize("size", [0, 1, 100, 230, 240, 250, 254, 255, 300, 1000, 16000,
                                  16380, 16384, 20000, 70000])
def test_padded_envelopes_fill_a_bucket_and_decode_unchanged(size: int) -> None:
    env = Envelope(kind=Kind.COMMIT, group_id=os.urandom(16), epoch=5,
                   mls_message=os.urandom(size) or b"x")
    data = base64.b64decode(padded_base64(env))
    assert len(data) == bucket(len(data)) >= len(env.to_bytes())
    assert Envelope.from_bytes(data) == env
