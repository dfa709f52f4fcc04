"""Versioned binary serialisation of a client identity (everything but its groups).

The storage layer keeps one identity blob per device
(:meth:`~mls_xmpp.storage.base.StateStore.save_identity`) and one blob per
group (:func:`~.serialize.encode_group`); :func:`encode_client` /
:func:`decode_client` are the two ends of the first. Groups are *not* part of
it: they change far more often and are stored, and replaced, one by one.

Format, version 1 (TLS presentation language of RFC 9420 §2.1 through
:mod:`mls_xmpp.core.codec`; ``<V>`` is a vector with a variable-length size
prefix)::

    "MLSC"                      magic, 4 bytes
    uint16 format_version       = 1
    ClientRecord                the rest, no trailing bytes

    ClientRecord:
        uint16 cipher_suite
        Credential credential
        opaque signature_private_key<V>
        KeyPackageRecord key_packages<V>        insertion order (oldest first)
        ExternalPskRecord external_psks<V>      ascending psk_id
        ResumptionPskRecord resumption_psks<V>  ascending (group_id, epoch)

    KeyPackageRecord:
        KeyPackage key_package
        opaque init_private_key<V>
        opaque encryption_private_key<V>
        uint8 last_resort                        0 or 1

    ExternalPskRecord:   opaque psk_id<V>; opaque psk<V>
    ResumptionPskRecord: opaque group_id<V>; uint64 epoch; opaque psk<V>

The KeyPackageRef that keys :attr:`Client.key_packages` is not stored: it is
recomputed from the KeyPackage (RFC 9420 §5.2), so it cannot disagree with it.
Refs in :attr:`Client.last_resort` whose KeyPackage is no longer held carry no
private key and are not written. Only what the client still holds is
written: a KeyPackage consumed by :meth:`Client.join` has its private keys
deleted from the client, hence from the blob (forward secrecy, RFC 9420 §16.8).
Encoding is canonical, so ``encode_client(decode_client(x, c)) == x``.

Decoding is strict: unknown magic or version, truncated or trailing bytes,
duplicate KeyPackages or PSK IDs, unordered PSK vectors, a KeyPackage of
another cipher suite, not signed by the client's signature key or whose
private keys do not match its public keys, and a signature private key the
suite cannot load are all refused with
:class:`DecodeError`; any other failure while rebuilding the objects is
reported as :class:`DecodeError` too.

The blob is neither encrypted nor authenticated: it holds the signature
private key and the KeyPackage private keys in the clear. Protect it at rest
in the storage layer (:class:`~mls_xmpp.storage.sqlite.SQLiteStore` can).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from ..codec import U16, U64, Boolean, Opaque, Reader, Struct
from ..crypto import CipherSuite, get_suite
from ..errors import DecodeError, LocalUsageError
from ..messages.credentials import Credential
from ..messages.key_package import KeyPackage, KeyPackageBundle
from .client import Client
from .config import GroupConfig

__all__ = [
    "CLIENT_FORMAT_VERSION",
    "CLIENT_MAGIC",
    "decode_client",
    "encode_client",
]

#: First four bytes of every serialised client.
CLIENT_MAGIC = b"MLSC"
#: Version of the layout described in the module docstring.
CLIENT_FORMAT_VERSION = 1


# -- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyPackageRecord(Struct):
    """A KeyPackageBundle and whether it is a last-resort KeyPackage."""

    key_package: KeyPackage
    init_private_key: Annotated[bytes, Opaque]
    encryption_private_key: Annotated[bytes, Opaque]
    last_resort: Annotated[bool, Boolean]


@dataclass(frozen=True)
class _ExternalPskRecord(Struct):
    """An external PSK."""

    psk_id: Annotated[bytes, Opaque]
    psk: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class _ResumptionPskRecord(Struct):
    """A resumption PSK of a group this client no longer holds."""

    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    psk: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class _ClientRecord(Struct):
    """Everything a Client holds but its groups."""

    cipher_suite: Annotated[int, U16]
    credential: Credential
    signature_private_key: Annotated[bytes, Opaque]
    key_packages: tuple[_KeyPackageRecord, ...]
    external_psks: tuple[_ExternalPskRecord, ...]
    resumption_psks: tuple[_ResumptionPskRecord, ...]


# -- errors and checks -------------------------------------------------------------------


@contextlib.contextmanager
def _as_decode_error(what: str) -> Iterator[None]:
    """Report every failure inside the block as :class:`DecodeError`."""
    try:
        yield
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"malformed {what}: {exc}") from exc


def _check_bundle(suite: CipherSuite, signature_key: bytes, rec: _KeyPackageRecord) -> None:
    """The bundle is this client's, signed, and its private keys fit its public keys."""
    kp = rec.key_package
    if kp.cipher_suite != suite.id:
        raise DecodeError(f"a KeyPackage of suite {kp.cipher_suite} in a client of suite "
                          f"{suite.id}")
    if kp.leaf_node.signature_key != signature_key:
        raise DecodeError("a KeyPackage is not signed with the client's signature key")
    kp.verify_signature(suite)
    if suite.hpke.public_key(rec.init_private_key) != kp.init_key:
        raise DecodeError("a KeyPackage's init private key does not match its init_key")
    if suite.hpke.public_key(rec.encryption_private_key) != kp.leaf_node.encryption_key:
        raise DecodeError("a KeyPackage's encryption private key does not match its leaf")


# -- encode / decode -----------------------------------------------------------------------


def encode_client(client: Client) -> bytes:
    """The identity of ``client`` (not its groups) in the format of the module docstring.

    The result holds the signature private key and the private keys of every
    unused KeyPackage; store it as such. Raises :class:`LocalUsageError` if
    :attr:`Client.key_packages` maps a KeyPackage under a ref that is not its
    own (the client was edited by hand).
    """
    suite = client.suite
    kps: list[_KeyPackageRecord] = []
    # a snapshot: a join in a worker thread (mls_xmpp.xmpp.inbox) may drop one meanwhile
    for ref, bundle in list(client.key_packages.items()):
        if bundle.key_package.ref(suite) != ref:
            raise LocalUsageError("Client.key_packages holds a KeyPackage under a ref that "
                                  "is not its KeyPackageRef")
        kps.append(_KeyPackageRecord(bundle.key_package, bundle.init_private_key,
                                     bundle.encryption_private_key, ref in client.last_resort))
    record = _ClientRecord(
        cipher_suite=client.suite_id,
        credential=client.credential,
        signature_private_key=client.signature_private_key,
        key_packages=tuple(kps),
        external_psks=tuple(_ExternalPskRecord(i, v)
                            for i, v in sorted(client.external_psks.items())),
        resumption_psks=tuple(_ResumptionPskRecord(g, e, v)
                              for (g, e), v in sorted(client.resumption_psks.items())),
    )
    w = bytearray(CLIENT_MAGIC)
    U16.write(w, CLIENT_FORMAT_VERSION)
    record.write(w)
    return bytes(w)


def decode_client(data: bytes, config: GroupConfig) -> Client:
    """Rebuild a :class:`Client` (with no groups) from :func:`encode_client` output.

    ``config`` is not stored and is supplied again. Add the groups afterwards
    (decode each with :func:`~.serialize.decode_group`, passing the restored
    client's :meth:`~Client.psk_lookup`, and put it in :attr:`Client.groups`).
    Raises :class:`DecodeError` for unknown magic or version and for
    malformed data.
    """
    with _as_decode_error("client state"):
        r = Reader(bytes(data))
        if r.remaining() < len(CLIENT_MAGIC) or r.read(len(CLIENT_MAGIC)) != CLIENT_MAGIC:
            raise DecodeError("not a serialised MLS client (bad magic)")
        version = r.uint(2)
        if version != CLIENT_FORMAT_VERSION:
            raise DecodeError(f"unsupported client state format version {version}")
        rec = _ClientRecord.read(r)
        r.finish()

        suite = get_suite(rec.cipher_suite)
        signature_key = suite.signature_public_key(rec.signature_private_key)

        key_packages: dict[bytes, KeyPackageBundle] = {}
        last_resort: set[bytes] = set()
        for k in rec.key_packages:
            _check_bundle(suite, signature_key, k)
            ref = k.key_package.ref(suite)
            if ref in key_packages:
                raise DecodeError("duplicate KeyPackage")
            key_packages[ref] = KeyPackageBundle(k.key_package, k.init_private_key,
                                                 k.encryption_private_key)
            if k.last_resort:
                last_resort.add(ref)

        ext_ids = [p.psk_id for p in rec.external_psks]
        if any(a >= b for a, b in zip(ext_ids, ext_ids[1:], strict=False)):
            raise DecodeError("external PSK IDs must be strictly ascending")
        res_ids = [(p.group_id, p.epoch) for p in rec.resumption_psks]
        if any(a >= b for a, b in zip(res_ids, res_ids[1:], strict=False)):
            raise DecodeError("resumption PSKs must be strictly ascending by (group, epoch)")

        return Client(
            credential=rec.credential,
            suite_id=rec.cipher_suite,
            signature_private_key=rec.signature_private_key,
            config=config,
            key_packages=key_packages,
            last_resort=last_resort,
            external_psks={p.psk_id: p.psk for p in rec.external_psks},
            resumption_psks={(p.group_id, p.epoch): p.psk for p in rec.resumption_psks},
        )
