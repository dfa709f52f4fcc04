"""Versioned serialisation of a client identity (mls_xmpp.core.group.client_state).

Checks that the encoding is canonical (``encode(decode(x)) == x``), that a
restored client still owns its KeyPackages (it can join from a Welcome for a
KeyPackage made before the save), that malformed data raises DecodeError
only, and that a consumed KeyPackage's private keys leave the encoding.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from mls_xmpp.core.codec import U16
from mls_xmpp.core.errors import DecodeError, LocalUsageError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.client_state import (
    CLIENT_FORMAT_VERSION,
    CLIENT_MAGIC,
    _ClientRecord,
    decode_client,
    encode_client,
)
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.events import ApplicationMessage
from mls_xmpp.core.group.serialize import decode_group, encode_group
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.key_package import KeyPackageBundle

# -- helpers -------------------------------------------------------------------------------


def restore(client: Client, config: GroupConfig | None = None) -> Client:
    """Serialise, decode and check the encoding is reproduced byte for byte."""
    blob = encode_client(client)
    assert blob[:4] == CLIENT_MAGIC
    assert blob[4:6] == CLIENT_FORMAT_VERSION.to_bytes(2, "big")
    restored = decode_client(blob, config or client.config)
    assert encode_client(restored) == blob
    return restored


def same_identity(a: Client, b: Client) -> None:
    assert a.credential == b.credential
    assert a.suite_id == b.suite_id
    assert a.signature_private_key == b.signature_private_key
    assert list(a.key_packages) == list(b.key_packages)
    for ref, bundle in a.key_packages.items():
        other = b.key_packages[ref]
        assert bundle.key_package == other.key_package
        assert bundle.init_private_key == other.init_private_key
        assert bundle.encryption_private_key == other.encryption_private_key
    assert a.last_resort == b.last_resort
    assert a.external_psks == b.external_psks
    assert a.resumption_psks == b.resumption_psks


def rich_client(suite_id: int = 1) -> Client:
    """A client with KeyPackages (one last resort), external and resumption PSKs."""
    c = Client.generate(b"bob@example.org", suite_id)
    for _ in range(3):
        c.make_key_package()
    c.make_key_package(last_resort=True)
    c.external_psks[b"psk-b"] = b"\x02" * 32
    c.external_psks[b"psk-a"] = b"\x01" * 32
    c.resumption_psks[(b"old-group", 7)] = b"\x07" * 32
    c.resumption_psks[(b"old-group", 3)] = b"\x03" * 32
    c.resumption_psks[(b"another", 1)] = b"\x09" * 48
    return c


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite_id", [1, 2, 3, 5, 7])
def test_fresh_client_round_trip(suite_id: int) -> None:
    c = Client.generate(b"alice@example.org", suite_id)
    r = restore(c)
    same_identity(c, r)
    assert r.groups == {}
    assert r.signature_public_key == c.signature_public_key


@pytest.mark.parametrize("suite_id", [1, 2, 3])
def test_rich_client_round_trip(suite_id: int) -> None:
    c = rich_client(suite_id)
    r = restore(c)
    same_identity(c, r)
    assert len(r.key_packages) == 4 and len(r.last_resort) == 1
    # KeyPackage insertion order (oldest first) is kept
    assert list(r.key_packages) == list(c.key_packages)


def test_x509_credential_round_trip() -> None:
    c = Client.generate(b"", 1)
    c = replace(c, credential=Credential.x509((b"leaf-der", b"ca-der")))
    c.make_key_package()
    same_identity(c, restore(c))


def test_groups_are_not_serialised() -> None:
    c = Client.generate(b"alice")
    c.create_group(b"group-id-that-is-long-enough")
    blob = encode_client(c)
    assert b"group-id-that-is-long-enough" not in blob
    assert decode_client(blob, c.config).groups == {}


def test_config_is_supplied_on_decode() -> None:
    c = Client.generate(b"alice")
    config = GroupConfig(past_epochs=9)
    assert restore(c, config).config is config


# -- a restored client keeps working -------------------------------------------------------


def test_restored_client_joins_from_welcome_for_earlier_key_package() -> None:
    alice = Client.generate(b"alice")
    bob = Client.generate(b"bob")
    kp = bob.make_key_package()
    bob_blob = encode_client(bob)
    del bob  # the process restarts

    group = alice.create_group()
    pending = group.commit(add=[kp])
    group.merge_pending_commit()
    assert pending.welcome is not None

    bob2 = decode_client(bob_blob, GroupConfig())
    joined = bob2.join(pending.welcome)
    assert joined.epoch == group.epoch
    assert joined.epoch_authenticator == group.epoch_authenticator
    # messages flow both ways
    got = joined.process(group.encrypt(b"hello bob"))
    assert isinstance(got, ApplicationMessage) and got.data == b"hello bob"
    got = group.process(joined.encrypt(b"hello alice"))
    assert isinstance(got, ApplicationMessage) and got.data == b"hello alice"


def test_restored_client_with_restored_group_continues() -> None:
    alice = Client.generate(b"alice")
    bob = Client.generate(b"bob")
    group = alice.create_group()
    pending = group.commit(add=[bob.make_key_package()])
    group.merge_pending_commit()
    assert pending.welcome is not None
    bob_group = bob.join(pending.welcome)

    # restart bob: identity and group come back from separate blobs
    bob2 = decode_client(encode_client(bob), bob.config)
    g2 = decode_group(encode_group(bob_group), bob2.config, bob2.psk_lookup)
    bob2.groups[g2.group_id] = g2
    commit = g2.commit()
    g2.merge_pending_commit()
    group.process(commit.message)
    assert group.epoch_authenticator == g2.epoch_authenticator


def test_last_resort_key_package_survives_join_and_restore() -> None:
    alice = Client.generate(b"alice")
    bob = Client.generate(b"bob")
    kp = bob.make_key_package(last_resort=True)
    bob = decode_client(encode_client(bob), bob.config)
    group = alice.create_group()
    pending = group.commit(add=[kp])
    group.merge_pending_commit()
    assert pending.welcome is not None
    bob.join(pending.welcome)
    r = restore(bob)
    ref = kp.ref(bob.suite)
    assert ref in r.key_packages and ref in r.last_resort


def test_psk_lookup_of_restored_client() -> None:
    from mls_xmpp.core.schedule.psk import PreSharedKeyID, PSKType

    c = rich_client()
    r = restore(c)
    found = r.psk_lookup(PreSharedKeyID(PSKType.EXTERNAL, b"n", psk_id=b"psk-a"))
    assert found == b"\x01" * 32


# -- forward secrecy: consumed KeyPackages leave the encoding ------------------------------


def test_consumed_key_package_private_keys_not_encoded_after_join() -> None:
    alice = Client.generate(b"alice")
    bob = Client.generate(b"bob")
    kp = bob.make_key_package()
    other = bob.make_key_package()
    bundle = bob.key_packages[kp.ref(bob.suite)]
    before = encode_client(bob)
    assert bundle.init_private_key in before
    assert bundle.encryption_private_key in before

    group = alice.create_group()
    pending = group.commit(add=[kp])
    group.merge_pending_commit()
    assert pending.welcome is not None
    bob.join(pending.welcome)

    after = encode_client(bob)
    assert bundle.init_private_key not in after
    assert bundle.encryption_private_key not in after
    assert kp.encode() not in after
    # the unused KeyPackage stays
    other_bundle = bob.key_packages[other.ref(bob.suite)]
    assert other_bundle.init_private_key in after
    assert list(decode_client(after, bob.config).key_packages) == [other.ref(bob.suite)]


def test_forgotten_key_package_and_stale_last_resort_ref() -> None:
    c = rich_client()
    ref = next(iter(c.key_packages))
    c.forget_key_package(ref)
    c.last_resort.add(b"\x00" * 32)  # a ref without a held KeyPackage: nothing to store
    r = decode_client(encode_client(c), c.config)
    assert ref not in r.key_packages
    assert b"\x00" * 32 not in r.last_resort


def test_key_package_under_a_wrong_ref_is_refused_on_encode() -> None:
    c = Client.generate(b"alice")
    c.make_key_package()
    ref, bundle = next(iter(c.key_packages.items()))
    c.key_packages = {b"\x01" * len(ref): bundle}
    with pytest.raises(LocalUsageError):
        encode_client(c)


# -- malformed data ------------------------------------------------------------------------


def test_bad_magic_and_version() -> None:
    c = rich_client()
    blob = encode_client(c)
    for bad in (b"", b"MLS", b"MLSX" + blob[4:], b"mlsc" + blob[4:],
                blob[:4] + U16.encode(CLIENT_FORMAT_VERSION + 1) + blob[6:],
                blob[:4] + U16.encode(0) + blob[6:], blob[:4], blob[:5]):
        with pytest.raises(DecodeError):
            decode_client(bad, c.config)


def test_truncated_and_extended_data() -> None:
    c = rich_client()
    blob = encode_client(c)
    for n in range(0, len(blob), max(1, len(blob) // 400)):
        with pytest.raises(DecodeError):
            decode_client(blob[:n], c.config)
    with pytest.raises(DecodeError):
        decode_client(blob + b"\x00", c.config)


def test_garbage_raises_only_decode_error() -> None:
    c = rich_client()
    blob = encode_client(c)
    rng = random.Random(9420)
    failures = 0
    for _ in range(300):
        data = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            r = decode_client(bytes(data), c.config)
        except DecodeError:
            failures += 1
            continue
        assert encode_client(r) == bytes(data)  # canonical: what decodes re-encodes
    assert failures > 0
    for _ in range(200):
        junk = rng.randbytes(rng.randrange(200))
        with pytest.raises(DecodeError):
            decode_client(junk, c.config)
        with pytest.raises(DecodeError):
            decode_client(CLIENT_MAGIC + U16.encode(CLIENT_FORMAT_VERSION) + junk, c.config)


def _reencode(rec: _ClientRecord) -> bytes:
    return CLIENT_MAGIC + U16.encode(CLIENT_FORMAT_VERSION) + rec.encode()


def test_inconsistent_records_raise_decode_error() -> None:
    c = rich_client()
    stranger = Client.generate(b"mallory")
    stranger.make_key_package()
    foreign = next(iter(stranger.key_packages.values()))
    rec = _ClientRecord.decode(encode_client(c)[6:])
    k0, k1 = rec.key_packages[0], rec.key_packages[1]
    e0, e1 = rec.external_psks
    r0, r1 = rec.resumption_psks[0], rec.resumption_psks[1]
    suite2 = Client.generate(b"x", 2)
    suite2.make_key_package()
    other_suite = next(iter(suite2.key_packages.values()))
    cases = [
        replace(rec, cipher_suite=0x7777),
        replace(rec, signature_private_key=b"short"),
        replace(rec, key_packages=(k0, k0)),
        replace(rec, key_packages=(replace(k0, init_private_key=k1.init_private_key),)),
        replace(rec, key_packages=(replace(k0, encryption_private_key=b"\x01" * 5),)),
        replace(rec, key_packages=(replace(k0, key_package=replace(k0.key_package,
                                                                   signature=b"\x00" * 64)),)),
        replace(rec, key_packages=(replace(k0, key_package=foreign.key_package,
                                           init_private_key=foreign.init_private_key,
                                           encryption_private_key=foreign
                                           .encryption_private_key),)),
        replace(rec, key_packages=(replace(k0, key_package=other_suite.key_package),)),
        replace(rec, external_psks=(e1, e0)),
        replace(rec, external_psks=(e0, e0)),
        replace(rec, resumption_psks=(r1, r0)),
        replace(rec, resumption_psks=(r0, r0)),
    ]
    assert _reencode(rec) == encode_client(c)
    for bad in cases:
        with pytest.raises(DecodeError):
            decode_client(_reencode(bad), c.config)


def test_bundle_repr_does_not_leak_private_keys() -> None:
    c = rich_client()
    r = restore(c)
    bundle: KeyPackageBundle = next(iter(r.key_packages.values()))
    assert bundle.init_private_key.hex() not in repr(bundle)
