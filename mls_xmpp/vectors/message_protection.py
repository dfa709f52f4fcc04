"""The ``message-protection`` vectors (RFC 9420 §6)."""

from __future__ import annotations

from ..core.crypto import CipherSuite, get_suite
from ..core.errors import LocalUsageError
from ..core.messages.commit import Commit
from ..core.messages.common import ContentType, WireFormat
from ..core.messages.framing import (
    AuthenticatedContent,
    Content,
    FramedContent,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
)
from ..core.messages.group_info import GroupContext
from ..core.messages.proposals import PROPOSAL
from ..core.messages.protection import (
    protect_private,
    protect_public,
    sign_content,
    unprotect_private,
    unprotect_public,
    verify_content,
)
from ..core.tree.secret_tree import SecretTree
from . import Case, VectorMismatch, expect, unhex

SENDER = 1


class _Env:
    def __init__(self, case: Case) -> None:
        self.suite: CipherSuite = get_suite(int(case["cipher_suite"]))
        self.group_id = unhex(case["group_id"])
        self.epoch = int(case["epoch"])
        self.context = GroupContext(1, self.suite.id, self.group_id, self.epoch,
                                    unhex(case["tree_hash"]),
                                    unhex(case["confirmed_transcript_hash"])).encode()
        self.sig_priv = unhex(case["signature_priv"])
        self.sig_pub = unhex(case["signature_pub"])
        self.encryption_secret = unhex(case["encryption_secret"])
        self.sender_data_secret = unhex(case["sender_data_secret"])
        self.membership_key = unhex(case["membership_key"])

    def tree(self) -> SecretTree:
        return SecretTree(self.suite, self.encryption_secret, 2)

    def content(self, content_type: int, body: Content) -> FramedContent:
        return FramedContent(self.group_id, self.epoch, Sender.member(SENDER), b"",
                             content_type, body)


def _body(msg: MLSMessage, cls: type) -> object:
    if not isinstance(msg.body, cls):
        raise VectorMismatch(f"expected a {cls.__name__}, got {type(msg.body).__name__}")
    return msg.body


def _check_public(env: _Env, data: bytes, content_type: int, body: Content) -> None:
    pub = _body(MLSMessage.decode(data), PublicMessage)
    assert isinstance(pub, PublicMessage)
    ac = unprotect_public(env.suite, pub, env.membership_key, env.context)
    verify_content(env.suite, env.sig_pub, ac, env.context)
    expect("public content type", ac.content.content_type, content_type)
    expect("public content", ac.content.content, body)
    # protect it ourselves and check it round-trips
    mine = _protect_public(env, content_type, body)
    back = MLSMessage.decode(mine).body
    assert isinstance(back, PublicMessage)
    verify_content(env.suite, env.sig_pub,
                   unprotect_public(env.suite, back, env.membership_key, env.context),
                   env.context)


def _protect_public(env: _Env, content_type: int, body: Content) -> bytes:
    tag = b"\x00" * env.suite.hash_len if content_type == ContentType.COMMIT else None
    ac = sign_content(env.suite, env.sig_priv, WireFormat.PUBLIC_MESSAGE,
                      env.content(content_type, body), env.context, tag)
    return MLSMessage(protect_public(env.suite, ac, env.membership_key, env.context)).encode()


def _check_private(env: _Env, data: bytes, content_type: int, body: Content) -> None:
    priv = _body(MLSMessage.decode(data), PrivateMessage)
    assert isinstance(priv, PrivateMessage)
    ac = unprotect_private(env.suite, priv, env.tree(), env.sender_data_secret)
    verify_content(env.suite, env.sig_pub, ac, env.context)
    expect("private content", ac.content.content, body)
    expect("private sender", ac.content.sender, Sender.member(SENDER))
    tag = b"\x00" * env.suite.hash_len if content_type == ContentType.COMMIT else None
    mine_ac = sign_content(env.suite, env.sig_priv, WireFormat.PRIVATE_MESSAGE,
                           env.content(content_type, body), env.context, tag)
    mine = protect_private(env.suite, mine_ac, env.tree(), env.sender_data_secret, pad_to=13)
    back = MLSMessage.decode(MLSMessage(mine).encode()).body
    assert isinstance(back, PrivateMessage)
    got: AuthenticatedContent = unprotect_private(env.suite, back, env.tree(),
                                                  env.sender_data_secret)
    verify_content(env.suite, env.sig_pub, got, env.context)
    expect("own private content", got.content.content, body)


def check(case: Case) -> None:
    """Unprotect and re-protect proposal, commit and application in both wire formats."""
    env = _Env(case)
    proposal = PROPOSAL.decode(unhex(case["proposal"]))
    commit = Commit.decode(unhex(case["commit"]))
    application = unhex(case["application"])
    _check_public(env, unhex(case["proposal_pub"]), ContentType.PROPOSAL, proposal)
    _check_public(env, unhex(case["commit_pub"]), ContentType.COMMIT, commit)
    _check_private(env, unhex(case["proposal_priv"]), ContentType.PROPOSAL, proposal)
    _check_private(env, unhex(case["commit_priv"]), ContentType.COMMIT, commit)
    _check_private(env, unhex(case["application_priv"]), ContentType.APPLICATION, application)
    try:
        _protect_public(env, ContentType.APPLICATION, application)
    except LocalUsageError:
        pass
    else:
        raise VectorMismatch("application data was protected as a PublicMessage")
