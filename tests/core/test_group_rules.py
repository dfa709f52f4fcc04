"""Negative tests: RFC 9420 §12 rules, message protection and Welcome validation.

Every case builds a bad message (most by constructing the Commit or proposal
directly and signing it with the sender's real keys from ``group.state``),
checks that the receiver raises a typed :class:`MLSError` and that its group is
exactly as before -- and, where it makes sense, that the genuine message is
still accepted afterwards.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mls_xmpp.core.errors import (
    DecodeError,
    DecryptionError,
    GroupStateError,
    InvalidSignatureError,
    MissingProposalError,
    MLSError,
    PolicyError,
    SecretTreeError,
    ValidationError,
    WrongEpochError,
    WrongGroupError,
)
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig, Policy
from mls_xmpp.core.group.events import ApplicationMessage, CommitApplied, ProposalReceived
from mls_xmpp.core.group.group import Group
from mls_xmpp.core.messages.commit import Commit, UpdatePath
from mls_xmpp.core.messages.common import ContentType, SenderType, WireFormat
from mls_xmpp.core.messages.framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
)
from mls_xmpp.core.messages.group_info import GroupInfo
from mls_xmpp.core.messages.key_package import KeyPackage
from mls_xmpp.core.messages.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ProposalOrRef,
    ProposalRef,
    ReInit,
    Remove,
    Update,
)
from mls_xmpp.core.messages.protection import (
    membership_tag,
    open_private_message,
    protect_private,
    protect_public,
    sign_content,
)
from mls_xmpp.core.messages.welcome import (
    EncryptedGroupSecrets,
    Welcome,
    decrypt_group_info,
    decrypt_group_secrets,
    encrypt_group_info,
    encrypt_group_secrets,
)
from mls_xmpp.core.schedule.key_schedule import welcome_secret
from mls_xmpp.core.schedule.psk import PreSharedKeyID
from mls_xmpp.core.tree.secret_tree import RatchetType

from . import strategies as S


def _find_encode_group() -> Callable[[Group], bytes] | None:
    """``serialize.encode_group`` when that module exists (it is written concurrently)."""
    try:
        module = importlib.import_module("mls_xmpp.core.group.serialize")
    except ImportError:  # pragma: no cover - depends on the checkout
        return None
    found: Callable[[Group], bytes] | None = getattr(module, "encode_group", None)
    return found


_encode_group = _find_encode_group()

PUBLIC = GroupConfig(handshake_private=False)
PRIVATE = GroupConfig(handshake_private=True)


# -- helpers ----------------------------------------------------------------------------


def snapshot(g: Group) -> Any:
    """Everything observable about a member's group, to compare before and after."""
    s = g.state
    st_ = s.secret_tree
    ratchets = tuple(
        (leaf, rt, st_.next_generation(leaf, rt), st_.held_generations(leaf, rt))
        for leaf in range(st_.n_leaves) for rt in RatchetType)
    n_nodes = 2 * s.tree.n_leaves - 1
    fallback = (
        s.epoch, g.epoch_authenticator, s.context.encode(), s.tree.encode(),
        dict(s.proposals), tuple(s.keys.get(x) for x in range(n_nodes)),
        st_.held_tree_nodes(), ratchets, s.interim_transcript_hash, s.confirmation_tag,
        dict(s.resumption_psks), s.reinit, s.active, g.active, g.own_leaf_index,
        g.pending_commit, tuple(g.retained_epochs), g.export_secret(b"snap", b"", 32),
    )
    if _encode_group is None:
        return fallback
    return fallback, _encode_group(g)


def assert_rejected(g: Group, data: bytes, exc: type[MLSError] | tuple[type[MLSError], ...],
                    match: str | None = None) -> pytest.ExceptionInfo[MLSError]:
    """``g.process(data)`` raises ``exc`` and leaves ``g`` exactly as it was."""
    before = snapshot(g)
    with pytest.raises(exc, match=match) as info:
        g.process(data)
    assert snapshot(g) == before, "a rejected message changed the group"
    return info


def make_group(n: int, config: GroupConfig = PUBLIC, *, names: str = "abcdefgh"
               ) -> tuple[list[Client], list[Group], list[KeyPackage]]:
    """``n`` members; member ``i`` sits at leaf ``i``. Returns clients, groups, KeyPackages."""
    clients = [Client.generate(f"{names[i]}@example.org".encode(), config=config)
               for i in range(n)]
    groups = [clients[0].create_group()]
    kps = [c.make_key_package() for c in clients[1:]]
    if kps:
        p = groups[0].commit(add=kps)
        groups[0].merge_pending_commit()
        assert p.welcome is not None
        groups += [c.join(p.welcome) for c in clients[1:]]
    for i, g in enumerate(groups):
        assert g.own_leaf_index == i
    return clients, groups, kps


def deliver(groups: list[Group], data: bytes, *, skip: Group | None = None) -> None:
    """Every member (but ``skip``) processes ``data`` successfully."""
    for g in groups:
        if g is not skip:
            g.process(data)


def frame(sender: Group, content_type: int, body: Any, *, private: bool = False,
          epoch: int | None = None, group_id: bytes | None = None,
          sender_obj: Sender | None = None, tag: bytes | None = None,
          authenticated_data: bytes = b"") -> bytes:
    """Sign ``body`` with ``sender``'s real keys and protect it as a member would.

    Commits get a random confirmation tag unless ``tag`` is given (the rules
    under test are checked before the confirmation tag).
    """
    s = sender.state
    content = FramedContent(group_id if group_id is not None else s.group_id,
                            s.epoch if epoch is None else epoch,
                            sender_obj or Sender.member(s.own_leaf),
                            authenticated_data, content_type, body)
    wf = WireFormat.PRIVATE_MESSAGE if private else WireFormat.PUBLIC_MESSAGE
    ctx = s.context_bytes()
    if content_type == ContentType.COMMIT:
        tag = tag if tag is not None else os.urandom(s.suite.hash_len)
    ac = sign_content(s.suite, s.signature_private_key, wf, content, ctx, confirmation_tag=tag)
    if private:
        return MLSMessage(protect_private(s.suite, ac, s.secret_tree,
                                          s.secrets.sender_data_secret)).encode()
    return MLSMessage(protect_public(s.suite, ac, s.secrets.membership_key, ctx)).encode()


def forge_commit(sender: Group, proposals: tuple[ProposalOrRef, ...],
                 path: UpdatePath | None = None, **kw: Any) -> bytes:
    """A Commit with exactly these proposals, signed by ``sender``."""
    return frame(sender, ContentType.COMMIT, Commit(proposals, path), **kw)


def retag_public(signer: Group, pm: PublicMessage, content: FramedContent | None = None,
                 auth: FramedContentAuthData | None = None, *, resign: bool = False) -> bytes:
    """Rebuild a member's PublicMessage with new content/auth and a valid membership tag.

    ``signer`` must still be in the epoch of the message (e.g. before merging).
    """
    s = signer.state
    ctx = s.context_bytes()
    content = content or pm.content
    auth = auth or pm.auth
    if resign:
        signed = sign_content(s.suite, s.signature_private_key, WireFormat.PUBLIC_MESSAGE,
                              content, ctx, confirmation_tag=auth.confirmation_tag)
        auth = replace(auth, signature=signed.auth.signature)
    ac = AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, content, auth)
    tag = membership_tag(s.suite, s.secrets.membership_key, ac, ctx)
    return MLSMessage(PublicMessage(content, auth, tag)).encode()


def public_body(data: bytes) -> PublicMessage:
    body = MLSMessage.decode(data).body
    assert isinstance(body, PublicMessage)
    return body


def flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]


def nonce(g: Group) -> bytes:
    return os.urandom(g.state.suite.hash_len)


# -- framing: group, epoch, garbage ------------------------------------------------------


@pytest.mark.parametrize("private", [False, True], ids=["public", "private"])
@pytest.mark.parametrize("delta", [1, -1])
def test_commit_for_wrong_epoch(private: bool, delta: int) -> None:
    _, (a, b, c), _ = make_group(3)
    # a later epoch for the receiver needs an earlier epoch to exist
    p = a.commit()
    a.merge_pending_commit()
    deliver([b, c], p.message)
    msg = forge_commit(a, (), epoch=a.epoch + delta, private=private)
    assert_rejected(b, msg, WrongEpochError)


@pytest.mark.parametrize("config", [PUBLIC, PRIVATE], ids=["public", "private"])
def test_replayed_commit_of_an_earlier_epoch(config: GroupConfig) -> None:
    _, (a, b, c), _ = make_group(3, config)
    p = a.commit()
    deliver([a, b, c], p.message)
    q = b.commit()
    deliver([a, b, c], q.message)
    assert_rejected(c, p.message, WrongEpochError)
    assert_rejected(b, p.message, WrongEpochError)


@pytest.mark.parametrize("config", [PUBLIC, PRIVATE], ids=["public", "private"])
def test_replayed_own_commit_of_an_earlier_epoch(config: GroupConfig) -> None:
    _, (a, b, c), _ = make_group(3, config)
    p = a.commit()
    deliver([a, b, c], p.message)
    q = b.commit()
    deliver([a, b, c], q.message)
    assert_rejected(a, p.message, WrongEpochError)  # a's own old commit, no longer pending


@pytest.mark.parametrize("private", [False, True], ids=["public", "private"])
def test_commit_for_another_group(private: bool) -> None:
    _, (a, b, _c), _ = make_group(3)
    msg = forge_commit(a, (), group_id=b"some other group", private=private)
    assert_rejected(b, msg, WrongGroupError)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x00\x01", b"\x00\x01\x00\x01", b"\xff" * 40,
    b"\x00\x01\x00\x09" + b"\x00" * 30, b"\x00\x02\x00\x01" + b"\x00" * 10,
], ids=repr)
def test_garbage_bytes(data: bytes) -> None:
    _, (_a, b), _ = make_group(2)
    assert_rejected(b, data, DecodeError)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    _, (_a, b), _ = make_group(2)
    assert_rejected(b, data, MLSError)


def test_welcome_key_package_and_group_info_are_not_group_messages() -> None:
    clients, (a, b), kps = make_group(2)
    kp = Client.generate(b"x").make_key_package()
    for data in (MLSMessage(kp).encode(), a.group_info()):
        assert_rejected(b, data, DecodeError)
    c = Client.generate(b"c@example.org")
    p = a.commit(add=[c.make_key_package()])
    assert p.welcome is not None
    assert_rejected(b, p.welcome, DecodeError)


def test_trailing_bytes_after_a_valid_message() -> None:
    _, (a, b), _ = make_group(2)
    m = a.encrypt(b"hi")
    assert_rejected(b, m + b"\x00", DecodeError)
    assert b.process(m).data == b"hi"  # type: ignore[union-attr]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["commit-public", "commit-private", "application", "proposal"]),
       where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_bit_flip_is_rejected(kind: str, where: float, bit: int) -> None:
    config = PRIVATE if kind in ("commit-private", "application", "proposal") else PUBLIC
    _, (a, b, c), _ = make_group(3, config)
    if kind.startswith("commit"):
        msg = a.commit().message
    elif kind == "application":
        msg = a.encrypt(b"application data")
    else:
        msg = a.propose_update()
    i = int(where * len(msg))
    bad = msg[:i] + bytes([msg[i] ^ (1 << bit)]) + msg[i + 1:]
    assert_rejected(b, bad, MLSError)
    # the genuine message still goes through
    ev = b.process(msg)
    expected = {"application": ApplicationMessage, "proposal": ProposalReceived}
    assert isinstance(ev, expected.get(kind, CommitApplied))


# -- protection: tags, signatures, replays ---------------------------------------------------


def test_confirmation_tag_flipped_public() -> None:
    _, (a, b, c), _ = make_group(3)
    p = a.commit()
    pm = public_body(p.message)
    assert pm.auth.confirmation_tag is not None
    bad_auth = replace(pm.auth, confirmation_tag=flip(pm.auth.confirmation_tag))
    bad = retag_public(a, pm, auth=bad_auth)
    assert_rejected(b, bad, ValidationError, match="confirmation tag")
    a.merge_pending_commit()
    deliver([b, c], p.message)
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator


def test_signature_flipped_public() -> None:
    _, (a, b, c), _ = make_group(3)
    p = a.commit()
    pm = public_body(p.message)
    bad_auth = replace(pm.auth, signature=flip(pm.auth.signature, 5))
    # with a valid membership tag the signature check is what fails
    assert_rejected(b, retag_public(a, pm, auth=bad_auth), InvalidSignatureError)
    # without, the membership tag catches it first
    bad = MLSMessage(replace(pm, auth=bad_auth)).encode()
    assert_rejected(b, bad, ValidationError, match="membership tag")
    deliver([b, c], p.message)
    a.merge_pending_commit()
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator


def test_membership_tag_flipped_public_handshake() -> None:
    _, (a, b, c), _ = make_group(3)
    p = a.commit()
    pm = public_body(p.message)
    assert pm.membership_tag is not None
    bad = MLSMessage(replace(pm, membership_tag=flip(pm.membership_tag, 3))).encode()
    assert_rejected(b, bad, ValidationError, match="membership tag")
    u = c.propose_update()  # a public proposal as well
    pu = public_body(u)
    assert pu.membership_tag is not None
    assert_rejected(b, MLSMessage(replace(pu, membership_tag=flip(pu.membership_tag))).encode(),
                    ValidationError, match="membership tag")
    missing = MLSMessage(replace(pm, membership_tag=b"")).encode()
    assert_rejected(b, missing, ValidationError)


def _reencrypt_private(receiver: Group, sender: Group, data: bytes,
                       change: Any) -> bytes:
    """Decrypt ``data`` as ``receiver`` (consuming nothing), change the AuthenticatedContent
    and encrypt it again with the sender's next handshake key."""
    msg = MLSMessage.decode(data).body
    assert isinstance(msg, PrivateMessage)
    rs = receiver.state
    ac, _ = open_private_message(rs.suite, msg, rs.secret_tree, rs.secrets.sender_data_secret)
    ac = change(ac)
    s = sender.state
    return MLSMessage(protect_private(s.suite, ac, s.secret_tree,
                                      s.secrets.sender_data_secret)).encode()


def test_signature_flipped_private() -> None:
    _, (a, b, c), _ = make_group(3, PRIVATE)
    p = a.commit()
    bad = _reencrypt_private(b, a, p.message, lambda ac: replace(
        ac, auth=replace(ac.auth, signature=flip(ac.auth.signature, 7))))
    assert_rejected(b, bad, InvalidSignatureError)
    deliver([b, c], p.message)
    a.merge_pending_commit()
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator
    m = a.encrypt(b"x")
    bad = _reencrypt_private(b, a, m, lambda ac: replace(
        ac, auth=replace(ac.auth, signature=flip(ac.auth.signature))))
    assert_rejected(b, bad, InvalidSignatureError)
    assert b.process(m).data == b"x"  # type: ignore[union-attr]


def test_ciphertext_of_private_message_flipped() -> None:
    _, (a, b), _ = make_group(2, PRIVATE)
    m = a.encrypt(b"x")
    pm = MLSMessage.decode(m).body
    assert isinstance(pm, PrivateMessage)
    assert_rejected(b, MLSMessage(replace(pm, ciphertext=flip(pm.ciphertext, 9))).encode(),
                    DecryptionError)
    assert_rejected(b, MLSMessage(replace(pm, encrypted_sender_data=flip(
        pm.encrypted_sender_data))).encode(), DecryptionError)
    assert_rejected(b, MLSMessage(replace(pm, authenticated_data=b"extra")).encode(),
                    DecryptionError)
    assert b.process(m).data == b"x"  # type: ignore[union-attr]


def test_replayed_application_message() -> None:
    _, (a, b, c), _ = make_group(3, PRIVATE)
    m = a.encrypt(b"once")
    assert b.process(m).data == b"once"  # type: ignore[union-attr]
    assert_rejected(b, m, SecretTreeError)
    m2 = a.encrypt(b"twice")
    assert b.process(m2).data == b"twice"  # type: ignore[union-attr]
    assert c.process(m).data == b"once"  # type: ignore[union-attr]


def test_replayed_proposal() -> None:
    _, (a, b, _c), _ = make_group(3, PRIVATE)
    u = a.propose_update()
    b.process(u)
    assert_rejected(b, u, SecretTreeError)


def test_application_message_as_public_message() -> None:
    _, (a, b), _ = make_group(2)
    s = a.state
    ctx = s.context_bytes()
    content = FramedContent(s.group_id, s.epoch, Sender.member(0), b"",
                            ContentType.APPLICATION, b"in the clear")
    ac = sign_content(s.suite, s.signature_private_key, WireFormat.PUBLIC_MESSAGE, content, ctx)
    tag = membership_tag(s.suite, s.secrets.membership_key, ac, ctx)
    data = MLSMessage(PublicMessage(content, ac.auth, tag)).encode()
    assert_rejected(b, data, ValidationError, match="PublicMessage")


def test_message_from_blank_or_unknown_leaf() -> None:
    _, (a, b, c, d), _ = make_group(4)
    p = a.commit(remove=[2])
    a.merge_pending_commit()
    deliver([b, d], p.message)
    assert c.process(p.message).self_removed  # type: ignore[union-attr]
    for leaf in (2, 7):
        msg = forge_commit(a, (), sender_obj=Sender.member(leaf))
        assert_rejected(b, msg, ValidationError, match=f"leaf {leaf}")


# -- §12.2: what a Commit may contain ------------------------------------------------------------


def test_commit_removing_the_committer() -> None:
    _, (a, b, _c), _ = make_group(3)
    assert_rejected(b, forge_commit(a, (Remove(0),)), ValidationError, match="committer")


def test_commit_with_committers_own_update_by_reference() -> None:
    _, (a, b, c), _ = make_group(3)
    u = b.propose_update()
    a.process(u)
    ev = c.process(u)
    assert isinstance(ev, ProposalReceived)
    msg = forge_commit(b, (ProposalRef(ev.ref),))
    assert_rejected(c, msg, ValidationError, match="own Update")
    assert_rejected(a, msg, ValidationError, match="own Update")


def test_two_removes_of_the_same_leaf() -> None:
    _, (a, b, _c), _ = make_group(3)
    assert_rejected(b, forge_commit(a, (Remove(2), Remove(2))), ValidationError,
                    match="two Updates/Removes")


def test_remove_by_reference_and_by_value_of_the_same_leaf() -> None:
    _, (a, b, c), _ = make_group(3)
    r = c.propose_leave()
    a.process(r)
    ev = b.process(r)
    assert isinstance(ev, ProposalReceived)
    msg = forge_commit(a, (ProposalRef(ev.ref), Remove(2)))
    assert_rejected(b, msg, ValidationError, match="two Updates/Removes")


def test_remove_of_blank_leaf() -> None:
    _, (a, b, c, d), _ = make_group(4)
    p = a.commit(remove=[2])
    a.merge_pending_commit()
    deliver([b, d], p.message)
    c.process(p.message)
    assert a.state.tree.n_leaves == 4 and a.state.tree.leaf(2) is None
    assert_rejected(b, forge_commit(a, (Remove(2),)), ValidationError, match="blank")
    assert_rejected(b, forge_commit(a, (Remove(9),)), ValidationError, match="outside")


def test_add_of_key_package_already_in_group() -> None:
    clients, (a, b, _c), kps = make_group(3)
    # the very KeyPackage bob joined with
    assert_rejected(b, forge_commit(a, (Add(kps[1]),)), ValidationError)
    # a fresh KeyPackage of a member: same signature key
    fresh = clients[2].make_key_package()
    assert_rejected(b, forge_commit(a, (Add(fresh),)), ValidationError)
    # and the committer's own check refuses it too
    with pytest.raises(ValidationError):
        a.commit(add=[fresh])
    assert a.pending_commit is None


def test_two_adds_of_the_same_client() -> None:
    _, (a, b), _ = make_group(2)
    d = Client.generate(b"d@example.org")
    kp1, kp2 = d.make_key_package(), d.make_key_package()
    assert_rejected(b, forge_commit(a, (Add(kp1), Add(kp2))), ValidationError)


def test_two_group_context_extensions() -> None:
    _, (a, b), _ = make_group(2)
    msg = forge_commit(a, (GroupContextExtensions(()), GroupContextExtensions(())))
    assert_rejected(b, msg, ValidationError, match="GroupContextExtensions")


def test_reinit_with_another_proposal() -> None:
    _, (a, b, _c), _ = make_group(3)
    reinit = ReInit(os.urandom(16), 1, 1, ())
    for others in ((Remove(2),), (PreSharedKey(PreSharedKeyID.external(b"k", nonce(a))),)):
        msg = forge_commit(a, (reinit, *others))
        assert_rejected(b, msg, ValidationError, match="ReInit")


def test_external_init_in_regular_commit() -> None:
    _, (a, b), _ = make_group(2)
    assert_rejected(b, forge_commit(a, (ExternalInit(os.urandom(32)),)), ValidationError,
                    match="ExternalInit")


def test_external_init_as_a_proposal() -> None:
    _, (a, b), _ = make_group(2)
    msg = frame(a, ContentType.PROPOSAL, ExternalInit(os.urandom(32)))
    assert_rejected(b, msg, ValidationError, match="ExternalInit")


@pytest.mark.parametrize("what", ["remove", "update", "empty", "gce"])
def test_commit_without_required_path(what: str) -> None:
    _, (a, b, c), _ = make_group(3)
    proposals: tuple[ProposalOrRef, ...]
    if what == "remove":
        proposals = (Remove(2),)
    elif what == "update":
        u = c.propose_update()
        a.process(u)
        ev = b.process(u)
        assert isinstance(ev, ProposalReceived)
        proposals = (ProposalRef(ev.ref),)
    elif what == "gce":
        proposals = (GroupContextExtensions(()),)
    else:
        proposals = ()
    assert_rejected(b, forge_commit(a, proposals), ValidationError, match="UpdatePath")


def test_commit_with_unknown_proposal_ref() -> None:
    _, (a, b, c), _ = make_group(3)
    ref = ProposalRef(os.urandom(a.state.suite.hash_len))
    assert_rejected(b, forge_commit(a, (ref,)), MissingProposalError)
    # a real proposal b has not seen yet
    u = c.propose_update()
    ev = a.process(u)
    assert isinstance(ev, ProposalReceived)
    p = a.commit()
    assert_rejected(b, p.message, MissingProposalError)
    b.process(u)  # it arrives late: now the same Commit is accepted
    b.process(p.message)
    c.process(p.message)
    a.merge_pending_commit()
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator


def test_private_commit_missing_proposal_can_be_retried() -> None:
    _, (a, b, c), _ = make_group(3, PRIVATE)
    u = c.propose_update()
    a.process(u)
    p = a.commit()
    with pytest.raises(MissingProposalError):
        b.process(p.message)
    b.process(u)  # the proposal arrives late
    b.process(p.message)  # raises SecretTreeError: the handshake key was used up
    c.process(p.message)
    a.merge_pending_commit()
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator


def test_private_commit_with_bad_confirmation_tag_changes_nothing() -> None:
    _, (a, b, c), _ = make_group(3, PRIVATE)
    p = a.commit()
    bad = _reencrypt_private(b, a, p.message, lambda ac: replace(
        ac, auth=replace(ac.auth, confirmation_tag=flip(ac.auth.confirmation_tag))))
    assert_rejected(b, bad, ValidationError, match="confirmation tag")


def test_private_commit_with_bad_confirmation_tag_is_rejected() -> None:
    """The part of the previous test that holds: rejected, epoch and keys unchanged."""
    _, (a, b, c), _ = make_group(3, PRIVATE)
    p = a.commit()
    bad = _reencrypt_private(b, a, p.message, lambda ac: replace(
        ac, auth=replace(ac.auth, confirmation_tag=flip(ac.auth.confirmation_tag))))
    before = (b.epoch, b.epoch_authenticator, b.state.tree.encode(), dict(b.state.proposals))
    with pytest.raises(ValidationError, match="confirmation tag"):
        b.process(bad)
    assert (b.epoch, b.epoch_authenticator, b.state.tree.encode(),
            dict(b.state.proposals)) == before
    deliver([b, c], p.message)
    a.merge_pending_commit()
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator


@pytest.mark.parametrize("change", ["drop", "duplicate"])
def test_update_path_with_wrong_number_of_nodes(change: str) -> None:
    _, (a, b, c, d), _ = make_group(4)
    p = a.commit()
    pm = public_body(p.message)
    commit = pm.content.content
    assert isinstance(commit, Commit) and commit.path is not None
    nodes = commit.path.nodes
    assert len(nodes) == 2
    extra = replace(nodes[-1], encryption_key=a.state.suite.generate_kem_key_pair()[1])
    new_nodes = nodes[:-1] if change == "drop" else (*nodes, extra)
    bad_commit = replace(commit, path=replace(commit.path, nodes=new_nodes))
    bad = retag_public(a, pm, content=replace(pm.content, content=bad_commit), resign=True)
    assert_rejected(b, bad, ValidationError, match="nodes")
    deliver([b, c, d], p.message)
    a.merge_pending_commit()
    assert a.epoch_authenticator == b.epoch_authenticator == d.epoch_authenticator


def test_psk_not_available() -> None:
    _, (a, b), _ = make_group(2)
    psk = PreSharedKey(PreSharedKeyID.external(b"unknown psk", nonce(a)))
    assert_rejected(b, forge_commit(a, (psk,)), ValidationError, match="PSK")


def test_psk_with_wrong_nonce_length() -> None:
    clients, (a, b), _ = make_group(2)
    for c in clients:
        c.external_psks[b"k"] = b"s" * 32
    psk = PreSharedKey(PreSharedKeyID.external(b"k", b"short"))
    assert_rejected(b, forge_commit(a, (psk,)), ValidationError, match="psk_nonce")
    assert_rejected(b, frame(a, ContentType.PROPOSAL, psk), ValidationError, match="psk_nonce")
    with pytest.raises(ValidationError):
        a.propose_psk(psk.psk)


def test_commit_by_a_removed_member_is_refused_locally() -> None:
    _, (a, b, c), _ = make_group(3)
    p = a.commit(remove=[2])
    a.merge_pending_commit()
    b.process(p.message)
    assert c.process(p.message).self_removed  # type: ignore[union-attr]
    for call in (c.commit, c.propose_update, lambda: c.encrypt(b"x")):
        with pytest.raises(GroupStateError):
            call()
    assert_rejected(c, a.encrypt(b"after"), GroupStateError)
    assert_rejected(c, a.commit().message, GroupStateError)


# -- Welcome validation ------------------------------------------------------------------------


def _welcome_body(data: bytes) -> Welcome:
    w = MLSMessage.decode(data).body
    assert isinstance(w, Welcome)
    return w


def _client_snapshot(c: Client) -> Any:
    return dict(c.key_packages), set(c.last_resort), dict(c.groups)


def test_welcome_for_unknown_key_package() -> None:
    _, (a, _b), _ = make_group(2)
    carol = Client.generate(b"carol@example.org")
    dave = Client.generate(b"dave@example.org")
    dave.make_key_package()
    p = a.commit(add=[carol.make_key_package()])
    assert p.welcome is not None
    before = _client_snapshot(dave)
    with pytest.raises(ValidationError, match="KeyPackage"):
        dave.join(p.welcome)
    assert _client_snapshot(dave) == before
    with pytest.raises(MLSError):
        dave.join(b"garbage")


def test_welcome_with_tampered_group_info_ciphertext() -> None:
    _, (a, _b), _ = make_group(2)
    carol = Client.generate(b"carol@example.org")
    p = a.commit(add=[carol.make_key_package()])
    assert p.welcome is not None
    w = _welcome_body(p.welcome)
    bad = MLSMessage(replace(w, encrypted_group_info=flip(w.encrypted_group_info, 11))).encode()
    before = _client_snapshot(carol)
    with pytest.raises(DecryptionError):
        carol.join(bad)
    assert _client_snapshot(carol) == before
    bad_secrets = replace(w, secrets=tuple(
        replace(e, encrypted_group_secrets=replace(
            e.encrypted_group_secrets,
            ciphertext=flip(e.encrypted_group_secrets.ciphertext)))
        for e in w.secrets))
    with pytest.raises(DecryptionError):
        carol.join(MLSMessage(bad_secrets).encode())
    assert _client_snapshot(carol) == before
    a.merge_pending_commit()
    g = carol.join(p.welcome)  # the KeyPackage was not used up by the failures
    assert g.epoch_authenticator == a.epoch_authenticator


def _rewrap_welcome(joiner: Client, welcome: bytes, change: Any) -> bytes:
    """Open the Welcome as ``joiner``, change its GroupInfo, and seal it again."""
    w = _welcome_body(welcome)
    (ref,) = [r for r in joiner.key_packages if r in {e.new_member for e in w.secrets}]
    bundle = joiner.key_packages[ref]
    suite = joiner.suite
    gs = decrypt_group_secrets(suite, w, ref, bundle.init_private_key)
    ws = welcome_secret(suite, gs.joiner_secret, None)
    info = decrypt_group_info(suite, ws, w.encrypted_group_info)
    new_info: GroupInfo = change(info)
    egi = encrypt_group_info(suite, ws, new_info)
    entry = EncryptedGroupSecrets(ref, encrypt_group_secrets(
        suite, bundle.key_package.init_key, egi, gs))
    return MLSMessage(Welcome(w.cipher_suite, (entry,), egi)).encode()


def test_welcome_with_tampered_group_info_signature() -> None:
    _, (a, _b), _ = make_group(2)
    carol = Client.generate(b"carol@example.org")
    p = a.commit(add=[carol.make_key_package()])
    assert p.welcome is not None
    bad = _rewrap_welcome(carol, p.welcome, lambda gi: replace(gi, signature=flip(gi.signature)))
    before = _client_snapshot(carol)
    with pytest.raises(InvalidSignatureError):
        carol.join(bad)
    assert _client_snapshot(carol) == before
    # signed by the wrong member
    bad = _rewrap_welcome(carol, p.welcome, lambda gi: replace(gi, signer=1).signed(
        a.state.suite, a.state.signature_private_key))
    with pytest.raises(InvalidSignatureError):
        carol.join(bad)
    assert _client_snapshot(carol) == before


def test_welcome_with_re_signed_but_wrong_group_context() -> None:
    """A GroupInfo re-signed by the committer whose context lies: the tag must catch it."""
    _, (a, _b), _ = make_group(2)
    carol = Client.generate(b"carol@example.org")
    p = a.commit(add=[carol.make_key_package()])
    assert p.welcome is not None
    key = a.state.signature_private_key
    suite = a.state.suite
    bad = _rewrap_welcome(carol, p.welcome, lambda gi: replace(
        gi, group_context=replace(gi.group_context, confirmed_transcript_hash=flip(
            gi.group_context.confirmed_transcript_hash))).signed(suite, key))
    with pytest.raises(ValidationError, match="confirmation tag"):
        carol.join(bad)
    bad = _rewrap_welcome(carol, p.welcome, lambda gi: replace(
        gi, group_context=replace(gi.group_context, epoch=gi.group_context.epoch + 1)
    ).signed(suite, key))
    with pytest.raises(ValidationError):
        carol.join(bad)
    assert carol.join(p.welcome).epoch == 2


def test_welcome_whose_tree_does_not_match_tree_hash() -> None:
    config = GroupConfig(handshake_private=False, ratchet_tree_in_welcome=False)
    alice = Client.generate(b"alice@example.org", config=config)
    bob = Client.generate(b"bob@example.org")
    carol = Client.generate(b"carol@example.org")
    a = alice.create_group()
    p = a.commit(add=[bob.make_key_package()])
    a.merge_pending_commit()
    old_tree = a.ratchet_tree()
    assert p.welcome is not None
    b = bob.join(p.welcome, ratchet_tree=a.ratchet_tree())
    p = a.commit(add=[carol.make_key_package()])
    assert p.welcome is not None
    before = _client_snapshot(carol)
    with pytest.raises(ValidationError, match="tree"):
        carol.join(p.welcome)  # no tree at all
    with pytest.raises(ValidationError):
        carol.join(p.welcome, ratchet_tree=old_tree)  # the tree of an earlier epoch
    with pytest.raises(ValidationError):
        carol.join(p.welcome, ratchet_tree=a.ratchet_tree())  # current, not the new one
    assert _client_snapshot(carol) == before
    a.merge_pending_commit()
    b.process(p.message)
    g = carol.join(p.welcome, ratchet_tree=a.ratchet_tree())
    assert g.epoch_authenticator == a.epoch_authenticator == b.epoch_authenticator


# -- external commits ----------------------------------------------------------------------------


def _rebuild_external(receiver: Group, joiner: Client, message: bytes,
                      proposals: tuple[ProposalOrRef, ...]) -> bytes:
    """The joiner's external Commit with another proposal list, re-signed by the joiner."""
    pm = public_body(message)
    commit = pm.content.content
    assert isinstance(commit, Commit)
    assert pm.content.sender.sender_type == SenderType.NEW_MEMBER_COMMIT
    content = replace(pm.content, content=replace(commit, proposals=proposals))
    ac = sign_content(joiner.suite, joiner.signature_private_key, WireFormat.PUBLIC_MESSAGE,
                      content, receiver.state.context_bytes(),
                      confirmation_tag=pm.auth.confirmation_tag)
    return MLSMessage(PublicMessage(content, ac.auth, None)).encode()


def _ext_init(message: bytes) -> ExternalInit:
    commit = public_body(message).content.content
    assert isinstance(commit, Commit)
    (init,) = [p for p in commit.proposals if isinstance(p, ExternalInit)]
    return init


def test_external_commit_without_external_init() -> None:
    _, (a, b, c), _ = make_group(3)
    dave = Client.generate(b"dave@example.org")
    _, msg = dave.join_external(a.group_info())
    assert_rejected(b, _rebuild_external(b, dave, msg, ()), ValidationError,
                    match="ExternalInit")
    assert_rejected(b, _rebuild_external(b, dave, msg, (Remove(2),)), ValidationError,
                    match="ExternalInit")
    deliver([a, b, c], msg)  # the genuine one still works


def test_external_commit_with_two_removes() -> None:
    _, (a, b, c), _ = make_group(3)
    dave = Client.generate(b"dave@example.org")
    _, msg = dave.join_external(a.group_info())
    bad = _rebuild_external(b, dave, msg, (_ext_init(msg), Remove(1), Remove(2)))
    assert_rejected(b, bad, ValidationError, match="Remove")
    deliver([a, b, c], msg)


@pytest.mark.parametrize("extra", ["add", "update-ref", "two-inits", "gce"])
def test_external_commit_with_forbidden_proposals(extra: str) -> None:
    _, (a, b, c), _ = make_group(3)
    dave = Client.generate(b"dave@example.org")
    _, msg = dave.join_external(a.group_info())
    init = _ext_init(msg)
    props: tuple[ProposalOrRef, ...]
    if extra == "add":
        props = (init, Add(Client.generate(b"e").make_key_package()))
    elif extra == "update-ref":
        u = c.propose_update()
        ev = b.process(u)
        assert isinstance(ev, ProposalReceived)
        props = (init, ProposalRef(ev.ref))
    elif extra == "two-inits":
        props = (init, init)
    else:
        props = (init, GroupContextExtensions(()))
    assert_rejected(b, _rebuild_external(b, dave, msg, props), ValidationError)


def test_external_commit_as_private_message_or_with_bad_signature() -> None:
    _, (a, b, c), _ = make_group(3)
    dave = Client.generate(b"dave@example.org")
    _, msg = dave.join_external(a.group_info())
    pm = public_body(msg)
    bad = MLSMessage(replace(pm, auth=replace(pm.auth, signature=flip(pm.auth.signature))))
    assert_rejected(b, bad.encode(), InvalidSignatureError)
    bad_tag = replace(pm.auth, confirmation_tag=flip(pm.auth.confirmation_tag or b"\x00"))
    assert_rejected(b, MLSMessage(replace(pm, auth=bad_tag)).encode(), ValidationError,
                    match="confirmation tag")
    deliver([a, b, c], msg)


def test_external_resync_must_keep_the_credential() -> None:
    _, (a, b, c), _ = make_group(3)
    dave = Client.generate(b"dave@example.org")
    try:
        _, msg = dave.join_external(a.group_info(), resync_leaf=1)
    except ValidationError:
        return  # refusing on the joiner's side is fine as well
    assert_rejected(b, msg, ValidationError, match="credential")
    assert_rejected(a, msg, ValidationError, match="credential")


def test_external_commit_from_stale_group_info() -> None:
    _, (a, b, c), _ = make_group(3)
    gi = a.group_info()
    p = b.commit()
    deliver([a, b, c], p.message)
    dave = Client.generate(b"dave@example.org")
    _, msg = dave.join_external(gi)
    assert_rejected(a, msg, WrongEpochError)


# -- policy --------------------------------------------------------------------------------------


class NoAdds(Policy):
    """Refuses every Add."""

    def check_proposal(self, state: Any, proposal: Proposal, sender: Sender) -> None:
        if isinstance(proposal, Add):
            raise PolicyError("no new members")


def test_policy_refusing_adds() -> None:
    strict = GroupConfig(handshake_private=False, policy=NoAdds())
    alice = Client.generate(b"alice@example.org", config=PUBLIC)
    bob = Client.generate(b"bob@example.org", config=strict)
    a = alice.create_group()
    p = a.commit(add=[bob.make_key_package()])
    a.merge_pending_commit()
    assert p.welcome is not None
    b = bob.join(p.welcome)  # joining is not an Add this member judges
    carol = Client.generate(b"carol@example.org")

    # the committer with the policy refuses to commit (and to propose) an Add
    before = snapshot(b)
    with pytest.raises(PolicyError):
        b.commit(add=[carol.make_key_package()])
    with pytest.raises(PolicyError):
        b.propose_add(carol.make_key_package())
    assert b.pending_commit is None
    assert snapshot(b) == before

    # a receiver with the policy refuses a Commit with an Add, and an Add proposal
    prop = a.propose_add(carol.make_key_package())
    assert_rejected(b, prop, PolicyError)
    p = a.commit(add=[carol.make_key_package()], include_pending=False)
    assert_rejected(b, p.message, PolicyError)

    # other commits still go through
    a.discard_pending_commit()
    p = a.commit(include_pending=False)
    a.merge_pending_commit()
    b.process(p.message)
    assert a.epoch_authenticator == b.epoch_authenticator


# -- more §12.1/§12.2 rules and impersonation --------------------------------------------------


def test_update_by_value_in_a_commit() -> None:
    """By value, an Update would be the committer's own: the path does that (§12.2)."""
    _, (a, b, _c), _ = make_group(3)
    s = a.state
    leaf = replace(s.own_leaf_node(), encryption_key=s.suite.generate_kem_key_pair()[1],
                   leaf_node_source=2, lifetime=None, parent_hash=None).signed(
        s.suite, s.signature_private_key, s.group_id, s.own_leaf)
    assert_rejected(b, forge_commit(a, (Update(leaf),)), ValidationError, match="own Update")


def test_update_and_remove_of_the_same_leaf() -> None:
    _, (a, b, c), _ = make_group(3)
    u = c.propose_update()
    a.process(u)
    ev = b.process(u)
    assert isinstance(ev, ProposalReceived)
    msg = forge_commit(a, (ProposalRef(ev.ref), Remove(2)))
    assert_rejected(b, msg, ValidationError, match="two Updates/Removes")


def test_proposal_ref_of_an_earlier_epoch() -> None:
    _, (a, b, c), _ = make_group(3)
    u = c.propose_update()
    a.process(u)
    ev = b.process(u)
    assert isinstance(ev, ProposalReceived)
    p = a.commit(include_pending=False)
    a.merge_pending_commit()
    deliver([b, c], p.message)
    assert not b.state.proposals
    assert_rejected(b, forge_commit(a, (ProposalRef(ev.ref),)), MissingProposalError)
    assert_rejected(b, u, WrongEpochError)  # the proposal itself is stale now


@pytest.mark.parametrize(("content", "private"), [
    ("commit", False), ("commit", True), ("proposal", False), ("proposal", True),
    ("application", True)])
def test_member_impersonating_another_member(content: str, private: bool) -> None:
    """bob holds every key of the epoch but alice's signature key: that must be enough."""
    _, (a, b, c), _ = make_group(3)
    as_alice = Sender.member(0)
    if content == "commit":
        msg = forge_commit(b, (Remove(2),), sender_obj=as_alice, private=private)
    elif content == "proposal":
        msg = frame(b, ContentType.PROPOSAL, Remove(2), sender_obj=as_alice, private=private)
    else:
        msg = frame(b, ContentType.APPLICATION, b"I am alice", sender_obj=as_alice,
                    private=True)
    assert_rejected(c, msg, InvalidSignatureError)


def test_commit_from_external_sender_type() -> None:
    _, (a, b), _ = make_group(2)
    msg = forge_commit(a, (), sender_obj=Sender(SenderType.EXTERNAL, 0))
    assert_rejected(b, msg, ValidationError)


def test_external_commit_with_unknown_psk() -> None:
    clients, (a, b), _ = make_group(2)
    dave = Client.generate(b"dave@example.org")
    dave.external_psks[b"dave only"] = b"d" * 32
    psk = PreSharedKeyID.external(b"dave only", nonce(a))
    _, msg = dave.join_external(a.group_info(), psks=(psk,))
    assert_rejected(b, msg, ValidationError, match="PSK")
    clients[1].external_psks[b"dave only"] = b"d" * 32
    b.process(msg)


def test_external_join_refuses_bad_group_info() -> None:
    _, (a, _b), _ = make_group(2)
    dave = Client.generate(b"dave@example.org")
    with pytest.raises(ValidationError, match="external_pub"):
        dave.join_external(a.group_info(with_external_pub=False))
    with pytest.raises(ValidationError, match="tree"):
        dave.join_external(a.group_info(with_tree=False))
    info = MLSMessage.decode(a.group_info()).body
    assert isinstance(info, GroupInfo)
    bad = MLSMessage(replace(info, signature=flip(info.signature))).encode()
    with pytest.raises(InvalidSignatureError):
        dave.join_external(bad)
    with pytest.raises(MLSError):
        dave.join_external(a.encrypt(b"not a GroupInfo"))
    assert not dave.groups


def test_welcome_with_psk_the_joiner_lacks() -> None:
    clients, (a, _b), _ = make_group(2)
    for c in clients:
        c.external_psks[b"k"] = b"s" * 32
    carol = Client.generate(b"carol@example.org")
    psk = PreSharedKey(PreSharedKeyID.external(b"k", nonce(a)))
    p = a.commit(add=[carol.make_key_package()], proposals=[psk])
    a.merge_pending_commit()
    assert p.welcome is not None
    before = _client_snapshot(carol)
    with pytest.raises(ValidationError, match="PSK"):
        carol.join(p.welcome)
    assert _client_snapshot(carol) == before
    carol.external_psks[b"k"] = b"s" * 32
    assert carol.join(p.welcome).epoch_authenticator == a.epoch_authenticator



def test_welcome_reusing_the_group_id_of_a_group_already_held() -> None:
    """§12.4.3.1: the group_id must be unique among the client's groups."""
    clients, (a, b), _ = make_group(2)
    mallory = Client.generate(b"mallory@example.org")
    m = mallory.create_group(group_id=a.group_id)
    p = m.commit(add=[clients[1].make_key_package()])
    assert p.welcome is not None
    before = snapshot(b)
    with pytest.raises(ValidationError, match="group"):
        clients[1].join(p.welcome)
    assert clients[1].groups[a.group_id] is b
    assert snapshot(b) == before
    deliver([b], a.encrypt(b"still here"))


# -- structured fuzzing: well-formed but arbitrary content, validly signed --------------------


def _plausible_proposals(g: Group) -> st.SearchStrategy[Proposal]:
    """Arbitrary proposals mixed with ones close to valid for ``g``'s group."""
    n = g.state.tree.n_leaves
    return st.one_of(
        S.proposals,
        st.builds(Remove, st.integers(0, n + 1)),
        st.builds(lambda nonce, ext: PreSharedKey(PreSharedKeyID.external(ext, nonce)),
                  st.binary(min_size=32, max_size=32), st.binary(max_size=8)),
        st.builds(GroupContextExtensions, S.extension_lists),
        st.just(Add(Client.generate(b"fuzz").make_key_package())),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), private=st.booleans())
def test_arbitrary_signed_commits_are_rejected_cleanly(data: st.DataObject,
                                                        private: bool) -> None:
    _, (a, b, c), _ = make_group(3)
    por = st.one_of(_plausible_proposals(a), S.proposal_refs)
    commit = data.draw(st.builds(Commit, st.lists(por, max_size=4).map(tuple),
                                 st.none() | S.update_paths), label="commit")
    msg = forge_commit(a, commit.proposals, commit.path, private=private)
    assert_rejected(b, msg, MLSError)
    deliver([b, c], a.encrypt(b"still fine"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), private=st.booleans())
def test_arbitrary_signed_proposals_are_accepted_or_rejected_cleanly(
        data: st.DataObject, private: bool) -> None:
    _, (a, b, c), _ = make_group(3)
    proposal = data.draw(_plausible_proposals(a), label="proposal")
    msg = frame(a, ContentType.PROPOSAL, proposal, private=private)
    before = snapshot(b)
    try:
        ev = b.process(msg)
    except MLSError:
        assert snapshot(b) == before
    else:
        assert isinstance(ev, ProposalReceived)
