"""A member cannot take another member's name (RFC 9420 §5.3.1).

A leaf that replaces another -- an Update proposal, the LeafNode of a Commit's
UpdatePath, an external resync -- must carry a credential for the same client.
Each forged case below is refused by the receiver with an :class:`IdentityError`
and leaves its group exactly as it was; the honest case is still accepted.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mls_xmpp.core.errors import IdentityError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.identity import same_identity, same_identity_and_device
from mls_xmpp.core.messages.common import ContentType
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.proposals import Update

from .test_group_rules import PUBLIC, assert_rejected, frame, make_group


def _forged_update(groups, sender: int, credential: Credential) -> bytes:
    """An Update proposal from ``sender`` whose leaf names ``credential``."""
    g = groups[sender]
    s = g.state
    _, pub = s.suite.generate_kem_key_pair(g.config.rng)
    leaf = replace(s.own_leaf_node(), credential=credential, encryption_key=pub,
                   leaf_node_source=2, lifetime=None, parent_hash=None).signed(
        s.suite, s.signature_private_key, s.group_id, s.own_leaf)
    return frame(g, ContentType.PROPOSAL, Update(leaf))


def test_update_proposal_naming_another_member_is_refused() -> None:
    _, groups, _ = make_group(3)
    a, b, c = groups
    forged = _forged_update(groups, 1, a.state.own_leaf_node().credential)
    for receiver in (a, c):
        assert_rejected(receiver, forged, IdentityError, match="§5.3.1")
    # the honest Update of the same member is accepted
    honest = b.propose_update()
    a.process(honest)
    c.process(honest)


def test_update_path_leaf_naming_another_member_is_refused() -> None:
    _, groups, _ = make_group(3)
    a, b, c = groups
    # b's own view of its leaf is changed to alice's credential, so b's Commit
    # carries an UpdatePath leaf that names alice (a member posing as another)
    tree = b.state.tree
    tree.set_leaf_node(1, replace(tree.leaf(1), credential=a.state.own_leaf_node().credential))
    pending = b.commit(path=True)
    for receiver in (a, c):
        assert_rejected(receiver, pending.message, IdentityError, match="§5.3.1")


def test_honest_commit_with_path_is_accepted() -> None:
    _, groups, _ = make_group(3)
    a, b, c = groups
    pending = b.commit(path=True)
    b.merge_pending_commit()
    a.process(pending.message)
    c.process(pending.message)
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator


def test_external_resync_must_keep_the_device() -> None:
    strict = replace(PUBLIC, successor_validator=same_identity_and_device)
    alice = Client.generate(b"alice@example.org", config=strict)
    bob = Client.generate(b"bob@example.org", config=strict)
    bob.device_id = b"phone"
    g = alice.create_group()
    p = g.commit(add=[bob.make_key_package()])
    g.merge_pending_commit()
    assert p.welcome is not None
    bob.join(p.welcome)
    info = g.group_info(with_tree=True)
    # another client of bob's account, naming another device, resyncs bob's leaf
    thief = Client.generate(b"bob@example.org", config=strict)
    thief.device_id = b"laptop"
    _, commit = thief.join_external(info, resync_leaf=1)
    assert_rejected(g, commit, IdentityError, match="device")
    # the same device name is accepted
    again = Client.generate(b"bob@example.org", config=strict)
    again.device_id = b"phone"
    _, commit = again.join_external(info, resync_leaf=1)
    g.process(commit)


@pytest.mark.parametrize("check", [same_identity, same_identity_and_device])
def test_successor_checks(check) -> None:
    a = Client.generate(b"a@x").create_group().state.own_leaf_node()
    assert check(a, a) is None
    with pytest.raises(IdentityError):
        check(a, replace(a, credential=Credential.basic(b"b@x")))


def test_default_config_binds_identity() -> None:
    assert GroupConfig().successor_validator is same_identity
