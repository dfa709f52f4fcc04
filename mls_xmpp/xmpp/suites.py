"""Cipher suites and versions a device supports: identities, choice, downgrades.

A device may support several cipher suites (option ``suites``, best first).
RFC 9420 §5.1 binds a signature key to one suite, so the device holds one
identity -- a core :class:`~mls_xmpp.core.group.client.Client` with its own
signature key and KeyPackages -- per suite, and publishes KeyPackages of each
on its account's PEP node. Every leaf lists all of the device's suites in its
capabilities (RFC 9420 §7.2), and the device advertises one disco feature per
suite (:func:`suite_feature`).

* A new group takes the first suite of the creator's preference that every
  invited device supports (:func:`choose_suite`).
* A ReInit (RFC 9420 §11.2) moves a group to another suite. Moving to a suite
  this device ranks *lower* than the group's current one is a downgrade
  (:func:`check_move`): refused with :class:`DowngradeError` unless agreed to
  (``allow_downgrade`` of the committer's call, the option
  ``accept_downgrade`` of the others).

This module decides; the plugin and :mod:`.reinit` act.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..core.codec import Opaque, Vec
from ..core.crypto import get_suite
from ..core.errors import DecodeError, LocalUsageError
from ..core.group.client import Client
from ..core.group.client_state import decode_client, encode_client
from ..core.group.config import GroupConfig
from ..core.messages.key_package import KeyPackage
from .errors import DowngradeError, NoCommonSuiteError
from .stanza import NS

__all__ = ["IDENTITIES_MAGIC", "check_move", "choose_suite", "decode_identities",
           "encode_identities", "preference", "suite_feature", "suite_of_feature"]

#: The stored identity of a device with more than one suite begins with this.
IDENTITIES_MAGIC = b"MLSX-IDS\x01"


def suite_feature(suite_id: int) -> str:
    """The disco feature (XEP-0030) a device advertises for a cipher suite it supports."""
    return f"{NS}:suite:{int(suite_id)}"


def suite_of_feature(feature: str) -> int | None:
    """The cipher suite a :func:`suite_feature` names, ``None`` for other features."""
    prefix = f"{NS}:suite:"
    if not feature.startswith(prefix) or not feature[len(prefix):].isdigit():
        return None
    return int(feature[len(prefix):])


def preference(suites: Iterable[int] | None, primary: int) -> tuple[int, ...]:
    """The option ``suites`` checked: known suites, no repeats, ``primary`` among them.

    ``None`` means ``(primary,)``.

    :raises LocalUsageError: an unknown suite, or ``primary`` (the option
        ``suite``: the suite of the device's first identity) missing.
    """
    order = tuple(dict.fromkeys(int(s) for s in (suites or (primary,))))
    for s in order:
        get_suite(s)  # UnsupportedCipherSuiteError (a LocalUsageError) if unknown
    if primary not in order:
        raise LocalUsageError(f"the option suites {order} must include the option suite "
                              f"({primary}), the suite of this device's identity")
    return order


def encode_identities(clients: Sequence[Client]) -> bytes:
    """The stored identity of a device: one client as before, several in a bundle.

    With one suite the format is the core's ``encode_client`` unchanged (older
    versions read it); with more, :data:`IDENTITIES_MAGIC` and a vector of
    encoded clients, the primary one first.
    """
    if len(clients) == 1:
        return encode_client(clients[0])
    w = bytearray(IDENTITIES_MAGIC)
    Vec(Opaque).write(w, tuple(encode_client(c) for c in clients))
    return bytes(w)


def decode_identities(data: bytes, config: GroupConfig) -> list[Client]:
    """The clients of :func:`encode_identities` (the primary one first).

    :raises MLSError: the data does not decode.
    """
    if not data.startswith(IDENTITIES_MAGIC):
        return [decode_client(data, config)]
    parts = Vec(Opaque).decode(data[len(IDENTITIES_MAGIC):])  # trailing bytes refused
    if not parts:
        raise DecodeError("a stored identity bundle without identities")
    clients = [decode_client(p, config) for p in parts]
    _check(clients)
    return clients


def check_move(order: Sequence[int], current: int, new: int, *, agreed: bool) -> None:
    """Refuse moving a group from suite ``current`` to ``new`` when this device
    ranks ``new`` lower (later in ``order``, its option ``suites``), unless ``agreed``.

    A suite missing from ``order`` ranks below every listed one.

    :raises DowngradeError: a downgrade not agreed to.
    """
    def rank(s: int) -> int:
        return order.index(s) if s in order else len(order)

    if rank(new) > rank(current) and not agreed:
        raise DowngradeError(
            f"cipher suite {new} ranks below the group's suite {current} in this device's "
            f"preference {tuple(order)}: a downgrade it did not agree to")


def choose_suite(order: Sequence[int],
                 offers: Mapping[int, Mapping[str, Sequence[KeyPackage]]],
                 jids: Sequence[str]) -> int:
    """The best suite (first of ``order``) that every invited device supports.

    ``offers[s][jid]`` are the KeyPackages of suite ``s`` fetched from ``jid``'s
    node (each one checked by the key store). A suite qualifies when every
    account in ``jids`` has a KeyPackage of it and every KeyPackage fetched, of
    any suite, lists it in its capabilities (a device that offers only other
    suites keeps it out).

    :raises NoCommonSuiteError: no suite qualifies.
    """
    every = [kp for by_jid in offers.values() for kps in by_jid.values() for kp in kps]
    blocking: dict[str, None] = {}
    for s in order:
        missing = [j for j in jids if not offers.get(s, {}).get(j)]
        lacking = [kp for kp in every if s not in kp.leaf_node.capabilities.cipher_suites]
        if not missing and not lacking:
            return s
        for j in missing:
            blocking[j] = None
        for j, kps in ((j, kps) for by_jid in offers.values() for j, kps in by_jid.items()):
            if any(kp in lacking for kp in kps):
                blocking[j] = None
    raise NoCommonSuiteError(
        f"no cipher suite of {tuple(order)} is supported by every invited device "
        f"(kept out by {', '.join(blocking) or '-'})", tuple(blocking), tuple(order))


def _check(clients: Sequence[Client]) -> None:
    """One client per suite, all naming the same identity."""
    seen = set()
    for c in clients:
        if c.suite_id in seen:
            raise DecodeError(f"two stored identities of cipher suite {c.suite_id}")
        seen.add(c.suite_id)
