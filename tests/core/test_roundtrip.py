"""Property tests of every RFC 9420 wire structure: round trips and strict decoding.

For each structure (a :class:`Struct` subclass or a codec such as ``PROPOSAL``):

* ``decode(encode(x)) == x`` and encoding the decoded value gives the same bytes;
* every proper prefix of a valid encoding is refused with :class:`DecodeError`;
* a valid encoding with one byte appended is refused with :class:`DecodeError`;
* arbitrary bytes, and valid encodings with one byte changed, inserted or
  removed, either decode to a value that re-encodes to exactly those bytes
  (the encoding is canonical) or are refused with :class:`DecodeError` --
  never with ``IndexError``, ``ValueError``, ``AssertionError``, ...

PrivateMessageContent (§6.3.1), which is not a self-delimiting structure,
is checked separately.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mls_xmpp.core.codec import Reader, Struct
from mls_xmpp.core.errors import DecodeError
from mls_xmpp.core.messages.commit import Commit, HPKECiphertext, UpdatePath, UpdatePathNode
from mls_xmpp.core.messages.common import ContentType
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.extensions import (
    EXTERNAL_SENDERS,
    Extension,
    ExternalPub,
    ExternalSender,
    RequiredCapabilities,
)
from mls_xmpp.core.messages.framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateContentAAD,
    PrivateMessage,
    PublicMessage,
    Sender,
    SenderData,
    SenderDataAAD,
    decode_private_message_content,
    encode_private_message_content,
    private_message_aads,
)
from mls_xmpp.core.messages.group_info import GroupContext, GroupInfo
from mls_xmpp.core.messages.key_package import KeyPackage
from mls_xmpp.core.messages.leaf_node import Capabilities, LeafNode, Lifetime
from mls_xmpp.core.messages.nodes import NODE, RATCHET_TREE, ParentNode
from mls_xmpp.core.messages.proposals import (
    PROPOSAL,
    PROPOSAL_OR_REF,
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    ProposalRef,
    ReInit,
    Remove,
    Update,
)
from mls_xmpp.core.messages.welcome import (
    EncryptedGroupSecrets,
    GroupSecrets,
    PathSecret,
    Welcome,
)
from mls_xmpp.core.schedule.psk import PreSharedKeyID, PSKLabel

from . import strategies as S

#: Examples per property; raise ROUNDTRIP_MAX_EXAMPLES for a longer fuzzing run.
MAX_EXAMPLES = int(os.environ.get("ROUNDTRIP_MAX_EXAMPLES", "30"))
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class Case:
    """One wire structure: how to build, encode and decode it."""

    name: str
    strategy: st.SearchStrategy[Any]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]

    def __repr__(self) -> str:
        return self.name


def _struct(cls: type[Struct], strategy: st.SearchStrategy[Any], name: str = "") -> Case:
    return Case(name or cls.__name__, strategy, lambda x: x.encode(), cls.decode)


def _codec(name: str, codec: Any, strategy: st.SearchStrategy[Any]) -> Case:
    return Case(name, strategy, codec.encode, codec.decode)


def _auth_decoder(content_type: int) -> Callable[[bytes], FramedContentAuthData]:
    def decode(data: bytes) -> FramedContentAuthData:
        r = Reader(data)
        value = FramedContentAuthData.read_for(r, content_type)
        r.finish()
        return value
    return decode


def _auth_case(content_type: ContentType) -> Case:
    return Case(f"FramedContentAuthData[{content_type.name.lower()}]", S.auth_data(content_type),
                lambda x: x.encode(), _auth_decoder(content_type))


CASES: list[Case] = [
    # credentials and extensions
    _struct(Credential, S.basic_credentials, "Credential[basic]"),
    _struct(Credential, S.x509_credentials, "Credential[x509]"),
    _struct(Extension, S.extensions),
    _struct(RequiredCapabilities, S.required_capabilities),
    _struct(ExternalPub, S.external_pubs),
    _struct(ExternalSender, S.external_senders),
    _codec("external_senders", EXTERNAL_SENDERS, S.vec(S.external_senders)),
    # leaf nodes and key packages
    _struct(Capabilities, S.capabilities),
    _struct(Lifetime, S.lifetimes),
    _struct(LeafNode, S.key_package_leaf_nodes, "LeafNode[key_package]"),
    _struct(LeafNode, S.update_leaf_nodes, "LeafNode[update]"),
    _struct(LeafNode, S.commit_leaf_nodes, "LeafNode[commit]"),
    _struct(KeyPackage, S.key_packages),
    # ratchet tree
    _struct(ParentNode, S.parent_nodes),
    _codec("Node", NODE, S.nodes),
    _codec("ratchet_tree", RATCHET_TREE, S.ratchet_trees),
    # PSKs
    _struct(PreSharedKeyID, S.external_psk_ids, "PreSharedKeyID[external]"),
    _struct(PreSharedKeyID, S.resumption_psk_ids, "PreSharedKeyID[resumption]"),
    _struct(PSKLabel, S.psk_labels),
    # proposals: bodies alone, then with their type, then as ProposalOrRef
    _struct(Add, S.adds),
    _struct(Update, S.updates),
    _struct(Remove, S.removes),
    _struct(PreSharedKey, S.pre_shared_keys),
    _struct(ReInit, S.reinits),
    _struct(ExternalInit, S.external_inits),
    _struct(GroupContextExtensions, S.group_context_extensions),
    _codec("Proposal", PROPOSAL, S.proposals),
    _struct(ProposalRef, S.proposal_refs),
    _codec("ProposalOrRef", PROPOSAL_OR_REF, S.proposal_or_refs),
    # commit
    _struct(HPKECiphertext, S.hpke_ciphertexts),
    _struct(UpdatePathNode, S.update_path_nodes),
    _struct(UpdatePath, S.update_paths),
    _struct(Commit, S.commits),
    # group info and welcome
    _struct(GroupContext, S.group_contexts),
    _struct(GroupInfo, S.group_infos),
    _struct(PathSecret, S.path_secrets),
    _struct(GroupSecrets, S.group_secrets),
    _struct(EncryptedGroupSecrets, S.encrypted_group_secrets),
    _struct(Welcome, S.welcomes),
    # framing
    _struct(Sender, S.senders),
    *(_struct(FramedContent, S.framed_contents(t), f"FramedContent[{t.name.lower()}]")
      for t in ContentType),
    *(_auth_case(t) for t in ContentType),
    _struct(AuthenticatedContent, S.authenticated_contents()),
    _struct(PublicMessage, S.public_messages()),
    _struct(PrivateMessage, S.private_messages),
    _struct(SenderData, S.sender_datas),
    _struct(SenderDataAAD, S.sender_data_aads),
    _struct(PrivateContentAAD, S.private_content_aads),
    _struct(MLSMessage, S.mls_messages),
]

cases = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def _decode_strictly(case: Case, data: bytes) -> Any:
    """Decode ``data``; ``None`` if refused. Any error but DecodeError propagates."""
    try:
        return case.decode(data)
    except DecodeError:
        return None


def _refused(case: Case, data: bytes) -> None:
    with pytest.raises(DecodeError):
        case.decode(data)


# --------------------------------------------------------------------------- round trips


@cases
@SETTINGS
@given(data=st.data())
def test_round_trip(case: Case, data: st.DataObject) -> None:
    value = data.draw(case.strategy, label=case.name)
    encoded = case.encode(value)
    decoded = case.decode(encoded)
    assert decoded == value
    assert case.encode(decoded) == encoded


def test_every_variant_is_covered() -> None:
    """The cases cover all proposal types, all sender types and all five bodies."""
    names = {c.name for c in CASES}
    assert {"Add", "Update", "Remove", "PreSharedKey", "ReInit", "ExternalInit",
            "GroupContextExtensions"} <= names
    assert {"FramedContent[application]", "FramedContent[proposal]",
            "FramedContent[commit]"} <= names


@SETTINGS
@given(S.mls_messages)
def test_mls_message_wire_format_matches_body(message: MLSMessage) -> None:
    encoded = message.encode()
    assert int.from_bytes(encoded[:2], "big") == 1
    assert int.from_bytes(encoded[2:4], "big") == message.wire_format
    assert encoded[4:] == message.body.encode()


@SETTINGS
@given(S.private_content_aads)
def test_private_message_aads_are_the_two_structs(aad: PrivateContentAAD) -> None:
    # written at once on the path of every message: the same bytes as the structs
    sender_data_aad, content_aad = private_message_aads(
        aad.group_id, aad.epoch, aad.content_type, aad.authenticated_data)
    assert sender_data_aad == SenderDataAAD(aad.group_id, aad.epoch, aad.content_type).encode()
    assert content_aad == aad.encode()


# --------------------------------------------------------------------------- strict decoding


@cases
@SETTINGS
@given(data=st.data())
def test_truncated_encoding_refused(case: Case, data: st.DataObject) -> None:
    encoded = case.encode(data.draw(case.strategy, label=case.name))
    for cut in range(len(encoded)):
        _refused(case, encoded[:cut])


@cases
@SETTINGS
@given(data=st.data())
def test_appended_byte_refused(case: Case, data: st.DataObject) -> None:
    encoded = case.encode(data.draw(case.strategy, label=case.name))
    extra = data.draw(st.binary(min_size=1, max_size=3), label="extra")
    _refused(case, encoded + extra)


@cases
@SETTINGS
@given(data=st.data())
def test_arbitrary_bytes_only_raise_decode_error(case: Case, data: st.DataObject) -> None:
    raw = data.draw(st.binary(max_size=200), label="raw")
    value = _decode_strictly(case, raw)
    if value is not None:
        assert case.encode(value) == raw


@st.composite
def _mutations(draw: st.DrawFn, encoded: bytes) -> bytes:
    """``encoded`` with one byte replaced, inserted or removed."""
    kind = draw(st.sampled_from(["replace", "insert", "delete"]))
    if kind == "insert" or not encoded:
        pos = draw(st.integers(0, len(encoded)))
        return encoded[:pos] + bytes([draw(S.u8)]) + encoded[pos:]
    pos = draw(st.integers(0, len(encoded) - 1))
    if kind == "delete":
        return encoded[:pos] + encoded[pos + 1:]
    new = draw(S.u8.filter(lambda b: b != encoded[pos]))
    return encoded[:pos] + bytes([new]) + encoded[pos + 1:]


@cases
@SETTINGS
@given(data=st.data())
def test_mutated_encoding_only_raises_decode_error(case: Case, data: st.DataObject) -> None:
    encoded = case.encode(data.draw(case.strategy, label=case.name))
    mutated = data.draw(_mutations(encoded), label="mutated")
    value = _decode_strictly(case, mutated)
    if value is not None:
        assert case.encode(value) == mutated


def test_framed_content_auth_data_needs_a_content_type() -> None:
    with pytest.raises(DecodeError):
        FramedContentAuthData.decode(b"\x00")


# --------------------------------------------------------------------------- PrivateMessageContent


@st.composite
def _private_contents(draw: st.DrawFn) -> tuple[int, Any, FramedContentAuthData]:
    content_type = draw(S.content_types)
    return content_type, draw(S.contents(content_type)), draw(S.auth_data(content_type))


@pytest.mark.parametrize("content_type", list(ContentType), ids=lambda t: t.name.lower())
@SETTINGS
@given(data=st.data(), padding=st.integers(0, 64))
def test_private_message_content_round_trip(content_type: ContentType, data: st.DataObject,
                                            padding: int) -> None:
    content = data.draw(S.contents(content_type), label="content")
    auth = data.draw(S.auth_data(content_type), label="auth")
    encoded = encode_private_message_content(content_type, content, auth, padding)
    unpadded = encode_private_message_content(content_type, content, auth, 0)
    assert encoded == unpadded + bytes(padding)
    assert decode_private_message_content(encoded, content_type) == (content, auth)


@SETTINGS
@given(parts=_private_contents(), padding=st.integers(1, 64), data=st.data())
def test_private_message_content_nonzero_padding_refused(
        parts: tuple[int, Any, FramedContentAuthData], padding: int,
        data: st.DataObject) -> None:
    content_type, content, auth = parts
    encoded = bytearray(encode_private_message_content(content_type, content, auth, padding))
    pos = data.draw(st.integers(len(encoded) - padding, len(encoded) - 1), label="pos")
    encoded[pos] = data.draw(st.integers(1, 255), label="byte")
    with pytest.raises(DecodeError):
        decode_private_message_content(bytes(encoded), content_type)


@SETTINGS
@given(parts=_private_contents())
def test_private_message_content_truncated_refused(
        parts: tuple[int, Any, FramedContentAuthData]) -> None:
    content_type, content, auth = parts
    encoded = encode_private_message_content(content_type, content, auth, 0)
    for cut in range(len(encoded)):
        with pytest.raises(DecodeError):
            decode_private_message_content(encoded[:cut], content_type)


@SETTINGS
@given(content_type=S.u8, raw=st.binary(max_size=200))
def test_private_message_content_arbitrary_bytes(content_type: int, raw: bytes) -> None:
    try:
        decode_private_message_content(raw, content_type)
    except DecodeError:
        pass
