"""The ``deserialization`` vectors: variable-length vector headers (RFC 9420 §2.1.2)."""

from __future__ import annotations

from ..core.codec import Reader, encode_varint
from . import Case, expect, unhex


def check(case: Case) -> None:
    """Decode the header, compare the length, and re-encode it byte for byte."""
    header = unhex(case["vlbytes_header"])
    r = Reader(header)
    length = r.varint()
    r.finish()
    expect("length", length, int(case["length"]))
    expect("re-encoded header", encode_varint(length), header)
