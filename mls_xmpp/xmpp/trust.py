"""Device trust: which signature keys this account has seen, and what it thinks of them.

Local data only. It never decides whether a Commit is valid (that follows
from the group state and the message alone, :mod:`.rules`); it makes keys
visible to the user, and it may make this device refuse to *send* to a group
that holds a device the user distrusts. Acting on distrust is an explicit
removal Commit.

Every device is a (bare JID, device name, signature key) triple, the device
name being the leaf's ``application_id`` (empty when the leaf has none). Its
key is shown as a :func:`fingerprint`. States:

* ``new`` -- seen, not trusted: a key that appeared after the user verified
  another device of the same account;
* ``trusted`` -- trusted blindly, before any verification (what XMPP users
  know from OMEMO clients as "blind trust before verification");
* ``verified`` -- the user compared the :func:`safety_number` with its owner;
* ``distrusted`` -- the user said no.

The first key of a device and every key change produce a :class:`TrustChange`
(the ``mls_trust`` event).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from ..storage.base import TrustRecord

__all__ = ["DeviceRecord", "TrustBackend", "TrustChange", "TrustState", "TrustStore",
           "fingerprint", "safety_number"]


class TrustState(StrEnum):
    """What this account thinks of a device's key."""

    NEW = "new"
    TRUSTED = "trusted"
    VERIFIED = "verified"
    DISTRUSTED = "distrusted"


def fingerprint(signature_key: bytes) -> str:
    """A short, comparable fingerprint of a device's signature key (SHA-256, 128 bits shown)."""
    digest = hashlib.sha256(signature_key).hexdigest()
    return " ".join(digest[i:i + 8] for i in range(0, 32, 8))


def safety_number(jid_a: str, key_a: bytes, jid_b: str, key_b: bytes) -> str:
    """A number two people compare to verify each other's device: 60 digits in 12 groups.

    The same for both sides (the pair is sorted). Computed from both bare
    JIDs and both signature keys, so it changes when either key does.
    """
    parts = sorted([(jid_a.encode(), key_a), (jid_b.encode(), key_b)])
    h = hashlib.sha512(b"mls-xmpp safety number v1")
    for jid, key in parts:
        for item in (jid, key):
            h.update(len(item).to_bytes(4, "big"))
            h.update(item)
    digits = str(int.from_bytes(h.digest()[:30], "big") % 10**60).zfill(60)
    return " ".join(digits[i:i + 5] for i in range(0, 60, 5))


@dataclass(frozen=True)
class DeviceRecord:
    """One key of one device, as the trust store keeps it."""

    jid: str
    device: str
    fingerprint: str
    state: TrustState
    first_seen: int
    #: False once the device showed another key (kept for the history)
    current: bool = True


@dataclass(frozen=True)
class TrustChange:
    """``mls_trust``: a device's first key, a key change, or a decision of the user.

    ``change`` is ``"new"`` (the first key of this device), ``"changed"`` (the
    device now has another key; ``previous`` is the old fingerprint), or
    ``"verified"``/``"distrusted"``/``"trusted"`` (the user decided).
    ``group`` is the group in which the key was seen, if any. A ``"new"``
    device of an account already known (``others``) is worth a warning; the
    first device of an account is not.
    """

    jid: str
    device: str
    fingerprint: str
    state: TrustState
    change: str
    previous: str | None = None
    group: object | None = None
    #: for ``"new"``: fingerprints of the account's devices known before this one
    #: (empty for the first device of an account seen)
    others: tuple[str, ...] = ()


class TrustBackend(Protocol):
    """Where the trust store persists (every :class:`~mls_xmpp.storage.StateStore`)."""

    def load_trust(self) -> list[TrustRecord]:
        """Every stored record."""

    def save_trust(self, records: Sequence[TrustRecord]) -> None:
        """Insert or replace these records (by jid and fingerprint) in one write."""


class TrustStore:
    """This account's view of every device it has seen.

    ``blind_trust`` (default on): a device's first key is ``trusted`` unless
    the user verified some device of that account, then ``new``.
    """

    def __init__(self, backend: TrustBackend | None = None, *, blind_trust: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        self.blind_trust = blind_trust
        self._clock = clock
        self._records: dict[tuple[str, str], DeviceRecord] = {}
        #: (jid, device) -> records that were current when indexed (checked on use)
        self._current: dict[tuple[str, str], list[DeviceRecord]] = {}
        #: jid -> records that were current when indexed (checked on use)
        self._by_jid: dict[str, list[DeviceRecord]] = {}
        #: accounts with at least one verified device (ends blind trust for them)
        self._verified: set[str] = set()
        if backend is not None:
            for t in backend.load_trust():
                try:
                    state = TrustState(t.state)
                except ValueError:
                    state = TrustState.NEW  # an unknown state is treated as unverified
                self._index(DeviceRecord(t.jid, t.device, t.fingerprint, state,
                                         t.first_seen, t.current))

    def _index(self, r: DeviceRecord) -> None:
        self._records[(r.jid, r.fingerprint)] = r
        if r.current:
            self._current.setdefault((r.jid, r.device), []).append(r)
            self._by_jid.setdefault(r.jid, []).append(r)
        if r.state == TrustState.VERIFIED:
            self._verified.add(r.jid)

    def _save(self, *records: DeviceRecord) -> None:
        for r in records:
            self._index(r)
        if self._backend is not None and records:
            self._backend.save_trust([
                TrustRecord(r.jid, r.fingerprint, r.device, r.state.value, r.first_seen,
                            r.current) for r in records])

    def record(self, jid: str, fp: str) -> DeviceRecord | None:
        """The record of this key, or ``None`` when never seen."""
        return self._records.get((jid, fp))

    def state(self, jid: str, fp: str) -> TrustState | None:
        """The state of this key, or ``None`` when never seen."""
        r = self._records.get((jid, fp))
        return None if r is None else r.state

    def devices(self, jid: str | None = None, *, history: bool = False) -> list[DeviceRecord]:
        """The records (of ``jid``), current keys only unless ``history``."""
        return sorted((r for r in self._records.values()
                       if (jid is None or r.jid == jid) and (history or r.current)),
                      key=lambda r: (r.jid, r.device, r.first_seen, r.fingerprint))

    def observe(self, jid: str, device: str, signature_key: bytes,
                group: object | None = None) -> TrustChange | None:
        """Note a key seen in a group; a :class:`TrustChange` when it is news."""
        changes = self.observe_many([(jid, device, signature_key)], group)
        return changes[0] if changes else None

    def observe_many(self, devices: Iterable[tuple[str, str, bytes]],
                     group: object | None = None) -> list[TrustChange]:
        """Note ``(jid, device, signature_key)`` triples seen in a group, in one write.

        A key already known (for this account) is no news, whatever device
        name it now carries. A device that shows a new key is a change; its
        old key stays in the history with ``current=False``. Returns the news,
        in order.
        """
        now = int(self._clock())
        changed: dict[tuple[str, str], DeviceRecord] = {}
        out: list[TrustChange] = []
        for jid, device, signature_key in devices:
            fp = fingerprint(signature_key)
            known = changed.get((jid, fp)) or self._records.get((jid, fp))
            if known is not None:
                if not known.current:
                    changed[(jid, fp)] = replace(known, current=True)
                    self._index(changed[(jid, fp)])
                continue
            previous = [r for r in self._current.get((jid, device), ()) if device
                        and r.current and self._records.get((r.jid, r.fingerprint)) == r]
            any_verified = jid in self._verified
            state = (TrustState.TRUSTED if self.blind_trust and not any_verified
                     else TrustState.NEW)
            for old in previous:
                changed[(old.jid, old.fingerprint)] = replace(old, current=False)
                self._index(changed[(old.jid, old.fingerprint)])
            others = tuple(dict.fromkeys(
                r.fingerprint for r in self._by_jid.get(jid, ())
                if r.current and (r.jid, r.fingerprint) not in changed
                and self._records.get((r.jid, r.fingerprint)) == r))
            changed[(jid, fp)] = DeviceRecord(jid, device, fp, state, now)
            self._index(changed[(jid, fp)])
            out.append(TrustChange(jid, device, fp, state, "changed" if previous else "new",
                                   previous[0].fingerprint if previous else None, group,
                                   () if previous else others))
        if changed and self._backend is not None:
            self._backend.save_trust([
                TrustRecord(r.jid, r.fingerprint, r.device, r.state.value, r.first_seen,
                            r.current) for r in changed.values()])
        return out

    def _set(self, jid: str, fp: str, state: TrustState) -> TrustChange:
        r = self._records.get((jid, _normalise(fp)))
        if r is None:
            raise KeyError(f"no device of {jid} with fingerprint {fp}")
        self._save(replace(r, state=state))
        return TrustChange(jid, r.device, r.fingerprint, state, state.value)

    def verify(self, jid: str, fp: str) -> TrustChange:
        """The user compared the safety number: this key is ``verified``."""
        return self._set(jid, fp, TrustState.VERIFIED)

    def distrust(self, jid: str, fp: str) -> TrustChange:
        """The user distrusts this key."""
        return self._set(jid, fp, TrustState.DISTRUSTED)

    def trust(self, jid: str, fp: str) -> TrustChange:
        """The user trusts this key without verifying it."""
        return self._set(jid, fp, TrustState.TRUSTED)

    def blocking(self, devices: Iterable[tuple[str, str]], *, refuse: str | None
                 ) -> list[DeviceRecord]:
        """Of ``(jid, fingerprint)`` pairs, those a strict device refuses to send to.

        ``refuse`` is ``None`` (send to everyone), ``"distrusted"`` or
        ``"unverified"`` (everything but ``verified`` blocks).
        """
        if refuse is None:
            return []
        out = []
        for jid, fp in devices:
            r = self._records.get((jid, fp))
            if r is None:
                continue
            if r.state == TrustState.DISTRUSTED or (
                    refuse == "unverified" and r.state != TrustState.VERIFIED):
                out.append(r)
        return out


def _normalise(fp: str) -> str:
    """A fingerprint as typed by a user (any spacing or case) in the canonical form."""
    raw = "".join(fp.split()).lower()
    return " ".join(raw[i:i + 8] for i in range(0, len(raw), 8))
