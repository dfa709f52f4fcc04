"""Envelope, fragments, reassembly, content padding, key package items and the <mls/> stanza."""

from __future__ import annotations

import base64
import random
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
import slixmpp
from hypothesis import given, settings
from hypothesis import strategies as st

from mls_xmpp._proto.mls_xmpp.v1 import content_pb2, envelope_pb2, keypackage_pb2
from mls_xmpp.core.errors import LocalUsageError, RemoteProtocolError
from mls_xmpp.xmpp.envelope import (
    MAX_FRAGMENTS,
    MAX_TEXT_SIZE,
    Attachment,
    BlobRef,
    Content,
    Envelope,
    Fragment,
    KeyPackageItem,
    Kind,
    Reassembler,
    decode_content,
    encode_content,
    fragment,
)
from mls_xmpp.xmpp.errors import EnvelopeError, TransportError
from mls_xmpp.xmpp.stanza import MLS, NS, register_stanzas

KIB = 1024
REF = BlobRef(url="https://upload.example/abc/tree.bin", sha256=b"\x11" * 32, size=4096)


def _env(**fields: object) -> Envelope:
    values: dict[str, object] = {
        "kind": Kind.COMMIT,
        "group_id": b"group-1",
        "epoch": 7,
        "mls_message": b"\x00\x01mls-bytes",
    }
    values.update(fields)
    return Envelope(**values)  # type: ignore[arg-type]


def _b64(msg: envelope_pb2.Envelope | bytes) -> str:
    data = msg if isinstance(msg, bytes) else msg.SerializeToString()
    return base64.b64encode(data).decode("ascii")


def _valid_pb(**fields: object) -> envelope_pb2.Envelope:
    msg = envelope_pb2.Envelope(
        version=0, kind=envelope_pb2.KIND_COMMIT, group_id=b"g", epoch=1, mls_message=b"m"
    )
    for name, value in fields.items():
        if isinstance(value, envelope_pb2.Fragment | envelope_pb2.BlobRef):
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


# ---------------------------------------------------------------------------
# errors


def test_error_tree() -> None:
    assert issubclass(EnvelopeError, RemoteProtocolError)
    assert issubclass(TransportError, Exception)
    assert not issubclass(TransportError, RemoteProtocolError)


# ---------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize(
    "env",
    [
        _env(),
        _env(kind=Kind.APPLICATION, epoch=2**64 - 1, group_id=b"\xff" * 255),
        _env(kind=Kind.KEY_PACKAGE, group_id=b"", epoch=0),
        _env(kind=Kind.GROUP_INFO, mls_message=b"", mls_message_ref=REF, ratchet_tree=REF),
        _env(
            kind=Kind.WELCOME,
            ratchet_tree=REF,
            room="group-1@conference.example",
            after_stanza_id="Bx3-9",
        ),
        _env(fragment=Fragment(b"\x01" * 16, 3, 4)),
    ],
)
def test_envelope_round_trips(env: Envelope) -> None:
    text = env.to_base64()
    assert Envelope.from_base64(text) == env
    assert Envelope.from_bytes(env.to_bytes()) == env
    assert env.encoded_size() == len(env.to_bytes())
    assert Envelope.from_base64(f"\n  {text}\n") == env  # XML indentation is fine


def test_kinds_match_the_schema() -> None:
    assert {k.name: int(k) for k in Kind} == {
        name.removeprefix("KIND_"): value
        for name, value in envelope_pb2.Kind.items()
        if name != "KIND_UNSPECIFIED"
    }


def test_repr_does_not_dump_the_message() -> None:
    text = repr(_env(mls_message=b"x" * 100_000))
    assert "<100000 bytes>" in text and len(text) < 200


def test_unknown_fields_are_ignored() -> None:
    data = _valid_pb().SerializeToString() + b"\xa0\x06\x01"  # field 100, varint 1
    assert Envelope.from_bytes(data).mls_message == b"m"


# ---------------------------------------------------------------------------
# malformed input from a peer -> EnvelopeError


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "!!!!",
        "AAA",  # bad padding
        "QQ=",  # bad padding
        "QR==",  # non-canonical: unused bits set
        "CAM=" + "CAM=",  # padding in the middle
        "Q Q==",  # whitespace inside
        "CA-_",  # urlsafe alphabet
        "CAMé",  # non-ASCII
        "\x00\x00\x00\x00",
    ],
)
def test_bad_base64_is_rejected(text: str) -> None:
    with pytest.raises(EnvelopeError, match="base64|empty"):
        Envelope.from_base64(text)


def test_oversized_text_is_rejected_before_decoding() -> None:
    # not even valid base64: the size check must come first
    with pytest.raises(EnvelopeError, match="more than"):
        Envelope.from_base64("!" * (MAX_TEXT_SIZE + 1))
    text = _env(mls_message=b"x" * 1000).to_base64()
    assert Envelope.from_base64(text, max_size=len(text)).epoch == 7
    with pytest.raises(EnvelopeError, match="more than"):
        Envelope.from_base64(text, max_size=len(text) - 1)
    with pytest.raises(LocalUsageError):
        Envelope.from_base64(text, max_size=0)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff\xff",  # truncated varint tag
        b"\x08",  # version tag without value
        b"\x2a\x05ab",  # mls_message length beyond the end
        b"\x4a\x02\xff\xfe",  # room with invalid UTF-8
        b"\x32\x03\xff\xff\xff",  # fragment submessage that does not parse
    ],
)
def test_protobuf_garbage_is_rejected(data: bytes) -> None:
    with pytest.raises(EnvelopeError, match="protobuf does not parse"):
        Envelope.from_base64(_b64(data))


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (_valid_pb(version=1), "version"),
        (_valid_pb(kind=0), "kind"),
        (_valid_pb(kind=7), "kind"),
        (_valid_pb(kind=1000), "kind"),
        (_valid_pb(group_id=b"g" * 256), "group_id"),
        (_valid_pb(mls_message=b""), "neither"),
        (_valid_pb(mls_message_ref=REF._to_proto()), "both"),
        (_valid_pb(fragment=envelope_pb2.Fragment(message_id=b"i", index=2, count=2)), "index"),
        (_valid_pb(fragment=envelope_pb2.Fragment(message_id=b"i", index=5, count=2)), "index"),
        (_valid_pb(fragment=envelope_pb2.Fragment(message_id=b"i", index=0, count=1)), "count"),
        (_valid_pb(fragment=envelope_pb2.Fragment(message_id=b"i", index=0, count=0)), "count"),
        (_valid_pb(fragment=envelope_pb2.Fragment(message_id=b"i", index=0, count=65)), "count"),
        (_valid_pb(fragment=envelope_pb2.Fragment()), "message_id"),
        (_valid_pb(fragment=envelope_pb2.Fragment(message_id=b"", index=0, count=2)), "message_id"),
        (
            _valid_pb(fragment=envelope_pb2.Fragment(message_id=b"i" * 33, index=0, count=2)),
            "message_id",
        ),
        (
            _valid_pb(
                mls_message=b"",
                mls_message_ref=REF._to_proto(),
                fragment=envelope_pb2.Fragment(message_id=b"i", index=0, count=2),
            ),
            "fragment",
        ),
        (
            _valid_pb(mls_message=b"", mls_message_ref=envelope_pb2.BlobRef(url="u", size=1)),
            "sha256",
        ),
        (
            _valid_pb(ratchet_tree=envelope_pb2.BlobRef(url="u", sha256=b"\0" * 32, size=0)),
            "size",
        ),
        (_valid_pb(ratchet_tree=envelope_pb2.BlobRef(sha256=b"\0" * 32, size=1)), "url"),
        (  # parts that cannot add up to the size
            _valid_pb(ratchet_tree=envelope_pb2.BlobRef(
                url="u", sha256=b"\0" * 32, size=100, more_urls=["v"], part_size=10)),
            "parts",
        ),
        (
            _valid_pb(ratchet_tree=envelope_pb2.BlobRef(
                url="u", sha256=b"\0" * 32, size=100, more_urls=["v"], part_size=0)),
            "parts",
        ),
        (
            _valid_pb(ratchet_tree=envelope_pb2.BlobRef(
                url="u", sha256=b"\0" * 32, size=10**6, more_urls=["v"] * 64, part_size=10**4)),
            "parts",
        ),
        (
            _valid_pb(ratchet_tree=envelope_pb2.BlobRef(
                url="u", sha256=b"\0" * 32, size=20, more_urls=[""], part_size=10)),
            "more_urls",
        ),
        (_valid_pb(room="r" * 3072), "room"),
    ],
)
def test_invalid_envelopes_are_rejected(msg: envelope_pb2.Envelope, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match):
        Envelope.from_base64(_b64(msg))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_envelope_error(data: bytes) -> None:
    try:
        env = Envelope.from_bytes(data)
    except EnvelopeError:
        return
    assert Envelope.from_bytes(env.to_bytes()) == env


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_envelope_error(text: str) -> None:
    try:
        Envelope.from_base64(text)
    except EnvelopeError:
        pass


# ---------------------------------------------------------------------------
# invalid local construction -> LocalUsageError


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": 3},  # int, not Kind
        {"version": 1},
        {"group_id": b"g" * 256},
        {"group_id": "text"},
        {"epoch": -1},
        {"epoch": 2**64},
        {"mls_message": b""},
        {"mls_message_ref": REF},
        {"fragment": Fragment(b"i", 0, 2), "mls_message": b"", "mls_message_ref": REF},
        {"ratchet_tree": b"not a ref"},
    ],
)
def test_invalid_local_envelopes_raise_local_usage_error(fields: dict[str, object]) -> None:
    with pytest.raises(LocalUsageError):
        _env(**fields)


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (Fragment, (b"i", 0, 1)),
        (Fragment, (b"i", 2, 2)),
        (Fragment, (b"i", -1, 2)),
        (Fragment, (b"", 0, 2)),
        (Fragment, (b"i", 0, MAX_FRAGMENTS + 1)),
        (BlobRef, ("", b"\0" * 32, 1)),
        (BlobRef, ("u", b"\0" * 31, 1)),
        (BlobRef, ("u", b"\0" * 32, 0)),
    ],
)
def test_invalid_parts_raise_local_usage_error(cls: type, args: tuple[object, ...]) -> None:
    with pytest.raises(LocalUsageError):
        cls(*args)


# ---------------------------------------------------------------------------
# fragmentation and reassembly


def test_600_kib_message_fragments_into_200_kib_pieces_and_reassembles_out_of_order() -> None:
    message = random.Random(1).randbytes(600 * KIB)
    env = _env(kind=Kind.COMMIT, mls_message=message, ratchet_tree=REF)
    budget = 200 * KIB
    pieces = fragment(env, budget)
    assert 5 <= len(pieces) <= MAX_FRAGMENTS
    assert all(len(p.to_base64()) <= budget for p in pieces)
    ids = {p.fragment.message_id for p in pieces if p.fragment is not None}
    assert len(ids) == 1 and len(ids.pop()) == 16
    assert [p.fragment.index for p in pieces if p.fragment is not None] == list(range(len(pieces)))
    assert b"".join(p.mls_message for p in pieces) == message

    wire = [p.to_base64() for p in pieces]
    random.Random(2).shuffle(wire)
    reassembler = Reassembler()
    results = [reassembler.add("alice@example", Envelope.from_base64(t)) for t in wire]
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == env
    assert len(reassembler) == 0
    assert reassembler.pending_pieces == 0 and reassembler.pending_bytes == 0


def test_small_envelope_is_not_fragmented() -> None:
    env = _env()
    assert fragment(env, len(env.to_base64())) == [env]


def test_fragment_refuses_what_it_cannot_split() -> None:
    with pytest.raises(LocalUsageError, match="reference|inline"):
        fragment(_env(mls_message=b"", mls_message_ref=REF, room="r" * 3000), 1000)
    with pytest.raises(LocalUsageError, match="already"):
        fragment(_env(mls_message=b"x" * 5000, fragment=Fragment(b"i", 0, 2)), 1000)
    with pytest.raises(LocalUsageError, match="out of band"):
        fragment(_env(mls_message=b"x" * 100_000), 1000)
    with pytest.raises(LocalUsageError, match="no room"):
        fragment(_env(mls_message=b"x" * 100), 40)
    with pytest.raises(LocalUsageError):
        fragment(_env(), 0)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=40_000),
    budget=st.integers(min_value=120, max_value=50_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_fragments_always_fit_and_reassemble(size: int, budget: int, seed: int) -> None:
    rng = random.Random(seed)
    env = _env(mls_message=rng.randbytes(size), room="room@conference.example")
    try:
        pieces = fragment(env, budget)
    except LocalUsageError as exc:
        # only when it truly cannot fit (the header of these pieces is < 100 bytes)
        assert "out of band" in str(exc) or "no room" in str(exc)
        assert size > MAX_FRAGMENTS * (budget * 3 // 4 - 100)
        return
    assert all(len(p.to_base64()) <= budget for p in pieces)
    if len(pieces) > 1 and budget * 3 // 4 > 100:  # no more pieces than needed
        assert len(pieces) <= -(-size // (budget * 3 // 4 - 100))
    rng.shuffle(pieces)
    reassembler = Reassembler()
    out = [reassembler.add("s", p) for p in pieces]
    assert out[-1] == env and all(o is None for o in out[:-1])


def _pieces(
    n: int = 4, *, size: int = 100, message_id: bytes = b"m" * 16, **fields: object
) -> list[Envelope]:
    env = _env(mls_message=bytes(range(256)) * (size * n // 256 + 1), **fields)
    env = replace(env, mls_message=env.mls_message[: size * n])
    return [
        replace(
            env,
            mls_message=env.mls_message[i * size : (i + 1) * size],
            fragment=Fragment(message_id, i, n),
        )
        for i in range(n)
    ]


def test_reassembler_passes_whole_envelopes_through() -> None:
    env = _env()
    assert Reassembler().add("s", env) is env


def test_reassembler_ignores_identical_duplicates() -> None:
    p = _pieces(3)
    r = Reassembler()
    assert r.add("s", p[1]) is None
    assert r.add("s", p[1]) is None
    assert r.pending_pieces == 1
    assert r.add("s", p[0]) is None
    whole = r.add("s", p[2])
    assert whole is not None and whole.fragment is None
    assert whole.mls_message == b"".join(x.mls_message for x in p)


def test_reassembler_keeps_senders_apart() -> None:
    p = _pieces(2)
    r = Reassembler()
    assert r.add("alice", p[0]) is None
    assert r.add("bob", p[1]) is None
    assert len(r) == 2
    assert r.add("alice", p[1]) is not None
    assert r.add("bob", p[0]) is not None


@pytest.mark.parametrize(
    "change",
    [
        {"epoch": 8},
        {"kind": Kind.APPLICATION},
        {"group_id": b"other"},
        {"room": "elsewhere@conference.example"},
        {"ratchet_tree": REF},
        {"fragment": Fragment(b"m" * 16, 1, 5)},
        {"mls_message": b"different bytes"},  # same index, different bytes
    ],
)
def test_reassembler_rejects_inconsistent_pieces(change: dict[str, object]) -> None:
    p = _pieces(4)
    r = Reassembler()
    assert r.add("s", p[0]) is None
    assert r.add("s", p[1]) is None
    with pytest.raises(EnvelopeError, match="s"):
        r.add("s", replace(p[1], **change))  # type: ignore[arg-type]
    assert len(r) == 0 and r.pending_pieces == 0 and r.pending_bytes == 0
    # the message starts over cleanly
    for piece in p[:-1]:
        assert r.add("s", piece) is None
    assert r.add("s", p[-1]) is not None


def test_reassembler_evicts_oldest_message_when_full() -> None:
    r = Reassembler(max_messages=2)
    a, b, c = (_pieces(2, message_id=bytes([i]) * 16) for i in range(3))
    assert r.add("s", a[0]) is None
    assert r.add("s", b[0]) is None
    assert r.add("s", c[0]) is None  # evicts a
    assert len(r) == 2
    assert r.add("s", a[1]) is None  # a starts over (and evicts b)
    assert r.add("s", c[1]) is not None
    assert len(r) == 1


def test_reassembler_bounds_pieces() -> None:
    r = Reassembler(max_pieces=4)
    with pytest.raises(EnvelopeError, match="pieces"):
        r.add("s", _pieces(5)[0])
    a, b = _pieces(4, message_id=b"a" * 16), _pieces(4, message_id=b"b" * 16)
    for piece in a[:3]:
        r.add("s", piece)
    r.add("s", b[0])
    r.add("s", b[1])  # 5 pieces would be held: a is dropped
    assert r.pending_pieces == 2 and len(r) == 1


def test_reassembler_bounds_bytes() -> None:
    r = Reassembler(max_bytes=350)
    pieces = _pieces(4, size=100)  # 400 bytes in all
    for piece in pieces[:3]:
        assert r.add("s", piece) is None
    with pytest.raises(EnvelopeError, match="350 bytes"):
        r.add("s", pieces[3])
    assert r.pending_bytes == 0

    r = Reassembler(max_bytes=300)
    a = _pieces(2, size=100, message_id=b"a" * 16)
    b = _pieces(2, size=100, message_id=b"b" * 16)
    r.add("s", a[0])
    r.add("s", b[0])
    r.add("s", b[1])  # completes b, held bytes never exceed the limit
    assert r.pending_bytes == 100
    c = _pieces(3, size=100, message_id=b"c" * 16)
    for piece in c[:2]:
        r.add("s", piece)
    assert r.pending_bytes <= 300
    assert r.add("s", c[2]) is not None  # a was evicted to make room for c


def test_reassembler_expires_by_count() -> None:
    r = Reassembler(max_age=3)
    p = _pieces(2)
    assert r.add("s", p[0]) is None
    for _ in range(3):
        r.add("other", _env())
    assert len(r) == 1  # 3 more envelopes: still within max_age
    r.add("other", _env())
    assert len(r) == 0  # expired
    assert r.add("s", p[1]) is None  # a late piece starts a new, incomplete message


def test_reassembler_rejects_bad_limits() -> None:
    with pytest.raises(LocalUsageError):
        Reassembler(max_messages=0)
    with pytest.raises(LocalUsageError):
        Reassembler(max_pieces=1)


# ---------------------------------------------------------------------------
# content.proto


ATTACHMENT = Attachment(
    url="https://upload.example/x/photo.jpg.enc",
    sha256=b"\x22" * 32,
    key=b"\x33" * 32,
    iv=b"\x44" * 12,
    size=123_456,
    media_type="image/jpeg",
    name="photo.jpg",
)


def test_content_round_trips() -> None:
    data = encode_content(
        "hello 🌍",
        [ATTACHMENT],
        message_id="m1",
        thread_id="t1",
        reply_to="m0",
        timestamp_ms=1_700_000_000_000,
    )
    content = decode_content(data)
    assert content == Content(
        body="hello 🌍",
        attachments=(ATTACHMENT,),
        message_id="m1",
        thread_id="t1",
        reply_to="m0",
        timestamp_ms=1_700_000_000_000,
    )
    assert decode_content(content.encode(pad_to=1)) == content
    assert decode_content(Content().encode()) == Content()


@pytest.mark.parametrize("pad_to", [1, 2, 16, 128, 256, 1000])
def test_padding_hides_length(pad_to: int) -> None:
    sizes = set()
    for n in range(0, 700, 7):
        data = encode_content("x" * n, pad_to=pad_to)
        assert len(data) % pad_to == 0
        assert decode_content(data).body == "x" * n
        sizes.add(len(data))
    if pad_to == 256:
        assert len(sizes) <= 4  # 700 different lengths, a handful of sizes


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=20_000), pad_to=st.integers(min_value=1, max_value=4096)
)
def test_padding_is_exact_for_any_size(n: int, pad_to: int) -> None:
    data = encode_content("y" * n, pad_to=pad_to)
    assert len(data) % pad_to == 0
    if pad_to > 1:
        assert content_pb2.Content.FromString(data).padding  # always present, random
    assert len(data) < n + 3 + 2 * pad_to + 8


def test_padding_is_random() -> None:
    a = encode_content("same", pad_to=256)
    b = encode_content("same", pad_to=256)
    assert len(a) == len(b) and a != b


@pytest.mark.parametrize(
    "msg",
    [
        content_pb2.Content(attachments=[content_pb2.Attachment(url="u", sha256=b"\0" * 32)]),
        content_pb2.Content(
            attachments=[
                content_pb2.Attachment(url="u", sha256=b"\0" * 32, key=b"\0" * 16, iv=b"\0" * 12)
            ]
        ),
        content_pb2.Content(message_id="i" * 5000),
        content_pb2.Content(attachments=[ATTACHMENT._to_proto()] * 65),
    ],
)
def test_invalid_content_is_rejected(msg: content_pb2.Content) -> None:
    with pytest.raises(EnvelopeError):
        decode_content(msg.SerializeToString())


def test_content_garbage_is_rejected() -> None:
    with pytest.raises(EnvelopeError):
        decode_content(b"\x0a\x05ab")


def test_attachment_validation_and_repr() -> None:
    with pytest.raises(LocalUsageError):
        replace(ATTACHMENT, key=b"short")
    with pytest.raises(LocalUsageError):
        replace(ATTACHMENT, iv=b"\0" * 16)
    with pytest.raises(LocalUsageError):
        encode_content("x", pad_to=0)
    assert "33" not in repr(ATTACHMENT) and "photo.jpg.enc" in repr(ATTACHMENT)
    assert Content(attachments=[ATTACHMENT]).attachments == (ATTACHMENT,)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# keypackage.proto


def test_key_package_item_round_trips() -> None:
    item = KeyPackageItem(key_package=b"\x00\x01\x00\x05kp", last_resort=True, device="phone")
    assert KeyPackageItem.from_base64(item.to_base64()) == item
    assert KeyPackageItem.from_bytes(item.to_bytes()) == item
    assert "kp" not in repr(item)


@pytest.mark.parametrize(
    "msg",
    [
        keypackage_pb2.KeyPackageItem(version=1, key_package=b"kp"),
        keypackage_pb2.KeyPackageItem(version=0),
        keypackage_pb2.KeyPackageItem(key_package=b"kp", device="d" * 2000),
    ],
)
def test_invalid_key_package_items_are_rejected(msg: keypackage_pb2.KeyPackageItem) -> None:
    with pytest.raises(EnvelopeError):
        KeyPackageItem.from_base64(_b64(msg.SerializeToString()))


def test_key_package_item_garbage_is_rejected() -> None:
    with pytest.raises(EnvelopeError):
        KeyPackageItem.from_base64("not base64!")
    with pytest.raises(EnvelopeError):
        KeyPackageItem.from_bytes(b"\x12\x09short")
    with pytest.raises(LocalUsageError):
        KeyPackageItem(key_package=b"")


# ---------------------------------------------------------------------------
# the <mls/> stanza element


def test_stanza_round_trips_in_a_message() -> None:
    register_stanzas()
    register_stanzas()  # idempotent
    env = _env(kind=Kind.APPLICATION, mls_message=b"\x00" * 300)
    msg = slixmpp.Message()  # type: ignore[no-untyped-call]
    msg["to"] = "room@conference.example"
    msg["type"] = "groupchat"
    msg["mls"]["payload"] = env.to_base64()

    wire = str(msg)
    assert f'<mls xmlns="{NS}">' in wire
    element = ET.fromstring(wire)
    mls = element.find(f"{{{NS}}}mls")
    assert mls is not None and mls.text == env.to_base64()

    parsed = slixmpp.Message(xml=element)  # type: ignore[no-untyped-call]
    assert isinstance(parsed["mls"], MLS)
    assert Envelope.from_base64(parsed["mls"]["payload"]) == env
    assert slixmpp.xmlstream.tostring(parsed.xml) == slixmpp.xmlstream.tostring(msg.xml)

    del parsed["mls"]["payload"]
    assert parsed["mls"]["payload"] == ""


def test_stanza_plugin_attributes() -> None:
    assert (MLS.name, MLS.namespace, MLS.plugin_attrib) == ("mls", "urn:mls-xmpp:0", "mls")
    assert MLS.interfaces == {"payload"}


def test_blob_in_parts_round_trips_and_names_each_part() -> None:
    ref = BlobRef(url="https://h/a", sha256=b"\1" * 32, size=25, more_urls=("https://h/b",
                                                                          "https://h/c"),
                  part_size=10)
    assert ref.parts == [("https://h/a", 10), ("https://h/b", 10), ("https://h/c", 5)]
    env = _env(kind=Kind.WELCOME, mls_message=b"w", ratchet_tree=ref)
    assert Envelope.from_base64(env.to_base64()).ratchet_tree == ref
    assert REF.parts == [(REF.url, REF.size)] and REF.part_size == 0
    for size in (20, 31):  # two parts of 10 cannot hold 31 bytes, nor need three for 20
        with pytest.raises(LocalUsageError, match="parts"):
            BlobRef(url="u", sha256=b"\1" * 32, size=size, more_urls=("v", "w"), part_size=10)
