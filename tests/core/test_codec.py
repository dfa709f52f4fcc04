"""The TLS presentation language codec (RFC 9420 §2.1): round trips and bad input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mls_xmpp.core.codec import (
    U8,
    U16,
    U32,
    U64,
    Boolean,
    Fixed,
    Opaque,
    Optional,
    Reader,
    Struct,
    Vec,
    encode_varint,
)
from mls_xmpp.core.errors import DecodeError, LocalUsageError


@dataclass(frozen=True)
class Inner(Struct):
    tag: Annotated[int, U8]
    data: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class Outer(Struct):
    a: Annotated[int, U16]
    b: Annotated[int, U32]
    c: Annotated[int, U64]
    fixed: Annotated[bytes, Fixed(4)]
    items: tuple[Inner, ...]
    maybe: Annotated[Inner | None, Optional(Inner.codec())]
    flag: Annotated[bool, Boolean]
    numbers: Annotated[tuple[int, ...], Vec(U16)]


inner_st = st.builds(Inner, st.integers(0, 255), st.binary(max_size=300))
outer_st = st.builds(
    Outer,
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=4, max_size=4),
    st.lists(inner_st, max_size=5).map(tuple),
    st.none() | inner_st,
    st.booleans(),
    st.lists(st.integers(0, 2**16 - 1), max_size=40).map(tuple),
)


@given(outer_st)
def test_struct_round_trip(value: Outer) -> None:
    data = value.encode()
    assert Outer.decode(data) == value
    assert Outer.decode(data).encode() == data


@given(st.integers(0, 2**30 - 1))
def test_varint_round_trip_and_minimal(n: int) -> None:
    enc = encode_varint(n)
    assert len(enc) == (1 if n < 64 else 2 if n < 16384 else 4)
    r = Reader(enc)
    assert r.varint() == n
    r.finish()


@pytest.mark.parametrize("n,hexed", [(0, "00"), (63, "3f"), (64, "4040"), (16383, "7fff"),
                                     (16384, "80004000"), (2**30 - 1, "bfffffff")])
def test_varint_boundaries(n: int, hexed: str) -> None:
    assert encode_varint(n).hex() == hexed


def test_varint_30_bit_limit() -> None:
    with pytest.raises(LocalUsageError):
        encode_varint(2**30)


@pytest.mark.parametrize("data", ["4000", "403f", "80000000", "80003fff", "40"])
def test_non_minimal_or_short_varint_rejected(data: str) -> None:
    with pytest.raises(DecodeError):
        Reader(bytes.fromhex(data)).varint()


@pytest.mark.parametrize("data", ["c0", "c0000000", "ffffffffffffffff"])
def test_varint_prefix_11_rejected(data: str) -> None:
    with pytest.raises(DecodeError, match="0b11"):
        Reader(bytes.fromhex(data)).varint()


def _sample() -> bytes:
    return Outer(1, 2, 3, b"abcd", (Inner(7, b"xyz"),), Inner(8, b""), True, (1, 2)).encode()


def test_truncated_data_rejected_at_every_length() -> None:
    data = _sample()
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            Outer.decode(data[:cut])


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        Outer.decode(_sample() + b"\x00")
    value, used = Outer.decode_prefix(_sample() + b"\x00")
    assert used == len(_sample())


def test_length_past_the_end_rejected() -> None:
    with pytest.raises(DecodeError, match="past the end|only"):
        Inner.decode(bytes([1]) + encode_varint(10) + b"abc")
    with pytest.raises(DecodeError):
        Vec(U16).decode(encode_varint(100) + b"\x00\x01")


def test_vector_with_partial_item_rejected() -> None:
    # a vector of uint16 whose byte length is odd leaves half an item behind
    with pytest.raises(DecodeError):
        Vec(U16).decode(encode_varint(3) + b"\x00\x01\x02")


def test_optional_and_bool_reject_other_values() -> None:
    with pytest.raises(DecodeError):
        Optional(U8).decode(b"\x02\x00")
    with pytest.raises(DecodeError):
        Boolean.decode(b"\x02")


def test_encode_refuses_out_of_range() -> None:
    with pytest.raises(LocalUsageError):
        U8.encode(256)
    with pytest.raises(LocalUsageError):
        U16.encode(-1)
    with pytest.raises(LocalUsageError):
        Fixed(4).encode(b"abc")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    try:
        Outer.decode(data)
    except DecodeError:
        pass
