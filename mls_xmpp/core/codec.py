"""The TLS presentation language as RFC 9420 uses it (§2.1).

One declaration per structure: a wire structure is a frozen dataclass that
derives from :class:`Struct` and annotates each field with its codec::

    @dataclass(frozen=True)
    class Lifetime(Struct):
        not_before: Annotated[int, U64]
        not_after: Annotated[int, U64]

``Lifetime.decode(data)`` and ``lifetime.encode()`` are then derived from that
one list of fields, so encode and decode cannot drift apart. Fields whose type
is itself a ``Struct`` (or ``tuple[SomeStruct, ...]`` for a vector of them)
need no annotation. Structures with a ``select`` (RFC 9420's variants)
override :meth:`Struct.write` and :meth:`Struct.read` as a pair.

Decoding is strict: vector lengths use the variable-length prefix of
RFC 9420 §2.1.2 with minimal encoding required, the 11 prefix is refused,
lengths past the end of the data are refused, and :meth:`Struct.decode`
refuses trailing bytes. Every failure raises :class:`DecodeError`.

Structures that are encoded many times over (a LeafNode is part of a
KeyPackage, of a Commit, of a tree hash input and of its own signature input)
derive from :class:`EncodeOnce` instead: they keep their encoding once it has
been computed, or the bytes they were decoded from.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from .errors import DecodeError, LocalUsageError

T = TypeVar("T")
S = TypeVar("S", bound="Struct")
E = TypeVar("E", bound="EncodeOnce")

MAX_VARINT = (1 << 30) - 1


class Reader:
    """A cursor over bytes being decoded; every read checks the bounds."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        """Number of bytes not yet read."""
        return self.end - self.pos

    def at_end(self) -> bool:
        """True when every byte has been read."""
        return self.pos >= self.end

    def read(self, n: int) -> bytes:
        """Read exactly ``n`` bytes."""
        p = self.pos
        q = p + n
        if n < 0 or q > self.end:
            raise DecodeError(f"need {n} bytes at offset {p}, only {self.end - p} left")
        self.pos = q
        return self.data[p:q]

    def uint(self, n: int) -> int:
        """Read a big-endian unsigned integer of ``n`` bytes."""
        p = self.pos
        q = p + n
        if q > self.end:
            raise DecodeError(f"need {n} bytes at offset {p}, only {self.end - p} left")
        self.pos = q
        return int.from_bytes(self.data[p:q], "big")

    def varint(self) -> int:
        """Read a variable-length integer (RFC 9420 §2.1.2), minimal encoding only."""
        p = self.pos
        if p >= self.end:
            raise DecodeError(f"need a length prefix at offset {p}, no bytes left")
        first = self.data[p]
        prefix = first >> 6
        if prefix == 0:
            self.pos = p + 1
            return first
        if prefix == 3:
            raise DecodeError(f"invalid variable-length integer prefix 0b11 at offset {p}")
        size = 2 if prefix == 1 else 4
        if p + size > self.end:
            raise DecodeError(f"truncated variable-length integer at offset {p}")
        value = int.from_bytes(self.data[p : p + size], "big") & ((1 << (8 * size - 2)) - 1)
        minimum = 64 if size == 2 else 16384
        if value < minimum:
            raise DecodeError(f"non-minimal variable-length integer at offset {p}")
        self.pos = p + size
        return value

    def opaque(self) -> bytes:
        """Read ``opaque data<V>``: a varint length then that many bytes."""
        p = self.pos
        if p < self.end and self.data[p] < 64:  # a one-byte length, without two calls
            q = p + 1 + self.data[p]
            if q > self.end:
                raise DecodeError(f"need {q - p - 1} bytes at offset {p + 1}, "
                                  f"only {self.end - p - 1} left")
            self.pos = q
            return self.data[p + 1:q]
        n = self.varint()
        return self.read(n)

    def sub(self) -> Reader:
        """Read a varint length and return a reader bounded to that many bytes."""
        n = self.varint()
        p = self.pos
        if p + n > self.end:
            raise DecodeError(f"vector of {n} bytes at offset {p} runs past the end")
        self.pos = p + n
        return Reader(self.data, p, p + n)

    def finish(self) -> None:
        """Refuse trailing bytes."""
        if self.pos != self.end:
            raise DecodeError(f"{self.end - self.pos} trailing bytes after the structure")


def write_varint(w: bytearray, n: int) -> None:
    """Append the minimal variable-length encoding of ``n`` (RFC 9420 §2.1.2)."""
    if n < 64:
        w.append(n)
    elif n < 16384:
        w += (0x4000 | n).to_bytes(2, "big")
    elif n <= MAX_VARINT:
        w += (0x80000000 | n).to_bytes(4, "big")
    else:
        raise LocalUsageError(f"length {n} exceeds the 30-bit limit of RFC 9420 §2.1.2")


def varint_size(n: int) -> int:
    """Length of the minimal variable-length encoding of ``n`` (RFC 9420 §2.1.2)."""
    return 1 if n < 64 else 2 if n < 16384 else 4


def encode_varint(n: int) -> bytes:
    """The minimal variable-length encoding of ``n`` as bytes."""
    w = bytearray()
    write_varint(w, n)
    return bytes(w)


def write_opaque(w: bytearray, data: bytes) -> None:
    """Append ``opaque data<V>``."""
    n = len(data)
    if n < 64:  # the one-byte length of most fields, without a call
        w.append(n)
    else:
        write_varint(w, n)
    w += data


def encode_opaque(data: bytes) -> bytes:
    """``opaque data<V>`` as bytes."""
    n = len(data)
    if n < 64:
        return bytes((n,)) + data
    w = bytearray()
    write_opaque(w, data)
    return bytes(w)


class Codec(Generic[T]):
    """Encodes and decodes one kind of field; subclasses are pairs of write/read."""

    def write(self, w: bytearray, value: T) -> None:
        raise NotImplementedError

    def read(self, r: Reader) -> T:
        raise NotImplementedError

    def encode(self, value: T) -> bytes:
        """Encode a single value."""
        w = bytearray()
        self.write(w, value)
        return bytes(w)

    def decode(self, data: bytes) -> T:
        """Decode a single value, refusing trailing bytes."""
        r = Reader(bytes(data))
        v = self.read(r)
        r.finish()
        return v


class UInt(Codec[int]):
    """``uintN`` for N in 8, 16, 32, 64."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.limit = 1 << (8 * size)
        self.fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]  # big-endian with ">"

    def write(self, w: bytearray, value: int) -> None:
        if not 0 <= value < self.limit:
            raise LocalUsageError(f"{value} does not fit in uint{8 * self.size}")
        w += value.to_bytes(self.size, "big")

    def read(self, r: Reader) -> int:
        return r.uint(self.size)

    def __repr__(self) -> str:
        return f"U{8 * self.size}"


U8 = UInt(1)
U16 = UInt(2)
U32 = UInt(4)
U64 = UInt(8)


class OpaqueV(Codec[bytes]):
    """``opaque data<V>``: variable-length bytes."""

    def write(self, w: bytearray, value: bytes) -> None:
        write_varint(w, len(value))
        w += value

    def read(self, r: Reader) -> bytes:
        return r.opaque()


Opaque = OpaqueV()


class Fixed(Codec[bytes]):
    """``opaque data[N]``: exactly N bytes."""

    def __init__(self, size: int) -> None:
        self.size = size

    def write(self, w: bytearray, value: bytes) -> None:
        if len(value) != self.size:
            raise LocalUsageError(f"expected {self.size} bytes, got {len(value)}")
        w += value

    def read(self, r: Reader) -> bytes:
        return r.read(self.size)


class Vec(Codec[tuple[T, ...]]):
    """``T items<V>``: a varint byte length followed by the encoded items."""

    def __init__(self, item: Codec[T]) -> None:
        self.item = item

    def write(self, w: bytearray, value: tuple[T, ...]) -> None:
        body = bytearray()
        item = self.item
        for v in value:
            item.write(body, v)
        write_varint(w, len(body))
        w += body

    def read(self, r: Reader) -> tuple[T, ...]:
        item = self.item
        if isinstance(item, UInt):  # fixed-size integers: unpack them in one go
            n = r.varint()
            p = r.pos
            if p + n > r.end:
                raise DecodeError(f"vector of {n} bytes at offset {p} runs past the end")
            if n % item.size:
                raise DecodeError(f"vector of uint{8 * item.size} has a length of {n} bytes, "
                                  f"not a multiple of {item.size}")
            r.pos = p + n
            values = struct.unpack_from(f">{n // item.size}{item.fmt}", r.data, p)
            return values  # T is int here
        s = r.sub()
        out = []
        while s.pos < s.end:
            out.append(item.read(s))
        return tuple(out)


class Optional(Codec["T | None"]):
    """``optional<T>``: a presence byte (0 or 1) then the value if present."""

    def __init__(self, item: Codec[T]) -> None:
        self.item = item

    def write(self, w: bytearray, value: T | None) -> None:
        if value is None:
            w.append(0)
        else:
            w.append(1)
            self.item.write(w, value)

    def read(self, r: Reader) -> T | None:
        flag = r.uint(1)
        if flag == 0:
            return None
        if flag != 1:
            raise DecodeError(f"optional presence byte must be 0 or 1, got {flag}")
        return self.item.read(r)


class Bool(Codec[bool]):
    """A ``uint8`` restricted to 0 and 1."""

    def write(self, w: bytearray, value: bool) -> None:
        w.append(1 if value else 0)

    def read(self, r: Reader) -> bool:
        v = r.uint(1)
        if v > 1:
            raise DecodeError(f"boolean must be 0 or 1, got {v}")
        return v == 1


Boolean = Bool()


class StructCodec(Codec[S]):
    """The codec of a :class:`Struct` subclass, used for nested fields."""

    def __init__(self, cls: type[S]) -> None:
        self.cls = cls

    def write(self, w: bytearray, value: S) -> None:
        value.write(w)

    def read(self, r: Reader) -> S:
        return self.cls.read(r)


class Struct:
    """Base of every wire structure; see the module docstring."""

    _fields_: ClassVar[tuple[tuple[str, Codec[Any]], ...] | None] = None

    @classmethod
    def codec(cls: type[S]) -> StructCodec[S]:
        """This structure as a codec for use inside others (``Vec(X.codec())``)."""
        return StructCodec(cls)

    @classmethod
    def _wire_fields(cls) -> tuple[tuple[str, Codec[Any]], ...]:
        fields = cls.__dict__.get("_fields_")
        if fields is None:
            fields = _resolve_fields(cls)
            cls._fields_ = fields
        return fields

    def write(self, w: bytearray) -> None:
        """Append the encoding of this structure to ``w``."""
        for name, c in self._wire_fields():
            c.write(w, getattr(self, name))

    @classmethod
    def read(cls: type[S], r: Reader) -> S:
        """Read one structure from ``r``."""
        values = [c.read(r) for _, c in cls._wire_fields()]
        return cls(*values)

    def encode(self) -> bytes:
        """The RFC 9420 wire encoding of this structure."""
        w = bytearray()
        self.write(w)
        return bytes(w)

    @classmethod
    def decode(cls: type[S], data: bytes) -> S:
        """Decode exactly one structure from ``data``; trailing bytes are an error."""
        r = Reader(bytes(data))
        v = cls.read(r)
        r.finish()
        return v

    @classmethod
    def decode_prefix(cls: type[S], data: bytes) -> tuple[S, int]:
        """Decode one structure from the start of ``data``; return it and its length."""
        r = Reader(bytes(data))
        v = cls.read(r)
        return v, r.pos


#: Instance attribute (not a dataclass field) holding an :class:`EncodeOnce`'s encoding.
_ENCODING = "_encoding_"


class EncodeOnce(Struct):
    """A :class:`Struct` that keeps its encoding (computed once, or as decoded).

    Only for frozen dataclasses whose fields hold immutable values (bytes,
    ints, tuples, other frozen structures): such an instance cannot change, so
    its encoding cannot either. ``dataclasses.replace`` builds a new instance,
    which starts without one. The bytes are kept in the instance's
    ``__dict__``, outside the dataclass fields, so equality, hashing and
    ``repr`` ignore them. Decoding is strict (one encoding per value), so the
    bytes a structure was decoded from are its encoding.

    Subclasses with their own wire format override :meth:`write_fields` and
    :meth:`read_fields` instead of ``write`` and ``read``.
    """

    def write_fields(self, w: bytearray) -> None:
        """Append the encoding, computed field by field (what ``Struct.write`` does)."""
        Struct.write(self, w)

    @classmethod
    def read_fields(cls: type[E], r: Reader) -> E:
        """Read the fields (what ``Struct.read`` does); the caller keeps the bytes."""
        values = [c.read(r) for _, c in cls._wire_fields()]
        return cls(*values)

    def encode(self) -> bytes:
        """The wire encoding, computed on first use only."""
        data: bytes | None = self.__dict__.get(_ENCODING)
        if data is None:
            w = bytearray()
            self.write_fields(w)
            data = bytes(w)
            object.__setattr__(self, _ENCODING, data)
        return data

    def write(self, w: bytearray) -> None:
        w += self.encode()

    @classmethod
    def read(cls: type[E], r: Reader) -> E:
        start = r.pos
        value = cls.read_fields(r)
        object.__setattr__(value, _ENCODING, bytes(r.data[start:r.pos]))
        return value


def _codec_for(hint: Any, owner: type) -> Codec[Any]:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, Codec):
                return meta
            if isinstance(meta, type) and issubclass(meta, Struct):
                return StructCodec(meta)
        hint = hint.__origin__
        origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, Struct):
        return StructCodec(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return Vec(_codec_for(args[0], owner))
    raise TypeError(f"{owner.__name__}: no wire codec for field type {hint!r}")


def _resolve_fields(cls: type) -> tuple[tuple[str, Codec[Any]], ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to derive its wire format")
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("wire") is False:
            continue
        out.append((f.name, _codec_for(hints[f.name], cls)))
    return tuple(out)


class Lazy(Codec[T]):
    """A codec resolved on first use, for structures that refer to later ones."""

    def __init__(self, factory: Callable[[], Codec[T]]) -> None:
        self.factory = factory
        self._codec: Codec[T] | None = None

    def _get(self) -> Codec[T]:
        if self._codec is None:
            self._codec = self.factory()
        return self._codec

    def write(self, w: bytearray, value: T) -> None:
        self._get().write(w, value)

    def read(self, r: Reader) -> T:
        return self._get().read(r)
