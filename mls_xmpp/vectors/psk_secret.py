"""The ``psk_secret`` vectors: chaining external PSKs (RFC 9420 §8.4)."""

from __future__ import annotations

from ..core.crypto import get_suite
from ..core.schedule.psk import PreSharedKeyID, psk_secret
from . import Case, expect, unhex


def check(case: Case) -> None:
    """Build external PreSharedKeyIDs from the vector and compare ``psk_secret``."""
    suite = get_suite(int(case["cipher_suite"]))
    psks = []
    for p in case["psks"]:
        psk_id = PreSharedKeyID.external(unhex(p["psk_id"]), unhex(p["psk_nonce"]))
        expect("PreSharedKeyID round trip", PreSharedKeyID.decode(psk_id.encode()), psk_id)
        psks.append((psk_id, unhex(p["psk"])))
    expect("psk_secret", psk_secret(suite, psks), unhex(case["psk_secret"]))
