"""Group rules (mls_xmpp.xmpp.rules): enforced identically by committer and receivers.

Each refused case is refused by every member alike, with a PolicyError, and
leaves every group exactly as it was; the allowed case next to it goes through.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mls_xmpp.core.errors import PolicyError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.external import external_proposal
from mls_xmpp.core.group.group import Group
from mls_xmpp.core.messages.extensions import Extension
from mls_xmpp.core.messages.proposals import Add, GroupContextExtensions
from mls_xmpp.xmpp.rules import (
    DEFAULT_RULES,
    RULES_EXTENSION,
    ExternalJoin,
    GroupRules,
    RulesPolicy,
    Who,
    rules_extension,
    rules_of,
)

from ..core.test_group_rules import assert_rejected

CONFIG = GroupConfig(handshake_private=False, policy=RulesPolicy())
NAMES = ["alice@example.org", "bob@example.org", "carol@example.org"]


def _client(jid: str) -> Client:
    c = Client.generate(jid.encode(), config=CONFIG)
    c.supported_extensions = (RULES_EXTENSION,)
    return c


def _group(rules: GroupRules, n: int = 3) -> tuple[list[Client], list[Group]]:
    clients = [_client(j) for j in NAMES[:n]]
    g = clients[0].create_group(extensions=(rules_extension(rules),))
    p = g.commit(add=[c.make_key_package() for c in clients[1:]])
    g.merge_pending_commit()
    assert p.welcome is not None
    return clients, [g] + [c.join(p.welcome) for c in clients[1:]]


def _same(groups: list[Group]) -> None:
    assert len({g.epoch_authenticator for g in groups}) == 1


def test_rules_round_trip_and_defaults() -> None:
    r = DEFAULT_RULES.with_admins("alice@example.org")
    assert GroupRules.decode(r.encode()) == r
    assert rules_of((rules_extension(r),)) == r
    assert rules_of(()) == DEFAULT_RULES
    assert DEFAULT_RULES.external_join == ExternalJoin.MEMBER_ACCOUNTS
    assert DEFAULT_RULES.reinit == Who.NOBODY and not DEFAULT_RULES.external_proposals
    with pytest.raises(PolicyError):
        rules_of((Extension(RULES_EXTENSION, b"\x07"),))
    with pytest.raises(PolicyError):
        rules_of((Extension(RULES_EXTENSION, replace(r, version=2).encode()),))


def test_only_admins_add_when_the_rules_say_so() -> None:
    rules = replace(DEFAULT_RULES.with_admins(NAMES[0]), add=Who.ADMINS)
    _, (a, b, c) = _group(rules)
    dave = _client("dave@example.org")
    # bob (not an admin) cannot even propose the Add ...
    with pytest.raises(PolicyError):
        b.propose_add(dave.make_key_package())
    with pytest.raises(PolicyError):
        b.commit(add=[dave.make_key_package()])
    # ... and a forged one is refused by everyone alike
    from ..core.test_group_rules import forge_commit
    forged = forge_commit(b, (Add(dave.make_key_package()),))
    for g in (a, c):
        assert_rejected(g, forged, PolicyError)
    # alice, the admin, adds
    p = a.commit(add=[dave.make_key_package()])
    a.merge_pending_commit()
    b.process(p.message)
    c.process(p.message)
    _same([a, b, c])


def test_leaving_is_always_allowed_removing_others_only_by_rule() -> None:
    rules = replace(DEFAULT_RULES.with_admins(NAMES[0]), remove=Who.ADMINS)
    _, (a, b, c) = _group(rules)
    with pytest.raises(PolicyError):
        b.propose_remove(2)
    leave = b.propose_leave()
    a.process(leave)
    c.process(leave)
    p = a.commit()
    a.merge_pending_commit()
    c.process(p.message)
    _same([a, c])


def test_reinit_is_off_by_default() -> None:
    _, (a, b, _) = _group(DEFAULT_RULES.with_admins(NAMES[0]))
    with pytest.raises(PolicyError):
        a.propose_reinit()
    with pytest.raises(PolicyError):
        b.propose_reinit()


def test_new_member_proposal_refused_by_default() -> None:
    _, (a, b, _) = _group(DEFAULT_RULES.with_admins(NAMES[0]))
    eve = _client("eve@example.org")
    s = a.state
    msg = external_proposal(Add(eve.make_key_package()), group_id=s.group_id, epoch=s.epoch,
                            suite_id=s.suite.id, signature_private_key=eve.signature_private_key,
                            sender_index=None)
    for g in (a, b):
        assert_rejected(g, msg, PolicyError)


def test_new_member_proposal_allowed_when_the_rules_open_it() -> None:
    _, (a, _, _) = _group(replace(DEFAULT_RULES, external_proposals=1))
    eve = _client("eve@example.org")
    s = a.state
    a.process(external_proposal(Add(eve.make_key_package()), group_id=s.group_id,
                                epoch=s.epoch, suite_id=s.suite.id,
                                signature_private_key=eve.signature_private_key,
                                sender_index=None))


def _attacker(jid: str) -> Client:
    """A client that follows no rules of its own (the rules bind the receivers)."""
    return Client.generate(jid.encode(), config=GroupConfig(handshake_private=False))


@pytest.mark.parametrize("mode", list(ExternalJoin))
@pytest.mark.parametrize("who", ["stranger", "resync", "new_device"])
def test_external_joins_follow_the_rules(mode: ExternalJoin, who: str) -> None:
    _, (a, b, c) = _group(replace(DEFAULT_RULES, external_join=mode))
    info = a.group_info(with_tree=True)
    if who == "stranger":
        joined, data = _attacker("mallory@example.org").join_external(info)
        ok = mode == ExternalJoin.OPEN
    elif who == "resync":  # bob's account rejoins in place of its own leaf
        joined, data = _attacker(NAMES[1]).join_external(info, resync_leaf=1)
        ok = mode != ExternalJoin.NONE
    else:  # another device of bob's account joins beside it
        joined, data = _attacker(NAMES[1]).join_external(info)
        ok = mode != ExternalJoin.NONE
    if not ok:
        for g in (a, b, c):
            assert_rejected(g, data, PolicyError)
        return
    a.process(data)
    c.process(data)
    if who == "new_device":
        b.process(data)
    _same([a, c, joined])


def test_only_admins_change_the_rules() -> None:
    rules = DEFAULT_RULES.with_admins(NAMES[0])
    _, (a, b, c) = _group(rules)
    opened = rules_extension(replace(rules, external_join=ExternalJoin.OPEN))
    with pytest.raises(PolicyError):
        b.commit(proposals=[GroupContextExtensions((opened,))])
    from ..core.test_group_rules import forge_commit
    forged = forge_commit(b, (GroupContextExtensions((opened,)),))
    for g in (a, c):
        assert_rejected(g, forged, PolicyError)
    p = a.commit(proposals=[GroupContextExtensions((opened,))])
    a.merge_pending_commit()
    b.process(p.message)
    c.process(p.message)
    _same([a, b, c])
    assert rules_of(b.state.context.extensions).external_join == ExternalJoin.OPEN
    # malformed new rules are refused even from an admin
    with pytest.raises(PolicyError):
        a.commit(proposals=[GroupContextExtensions((Extension(RULES_EXTENSION, b"\x01"),))])


def test_leaves_list_the_rules_extension() -> None:
    assert RULES_EXTENSION in _client("x@example.org").capabilities().extensions


@pytest.mark.parametrize("mode", [ExternalJoin.MEMBER_ACCOUNTS, ExternalJoin.OPEN])
def test_a_resync_cannot_take_over_another_accounts_leaf(mode: ExternalJoin) -> None:
    from mls_xmpp.core.errors import IdentityError

    _, (a, b, c) = _group(replace(DEFAULT_RULES, external_join=mode))
    _, data = _attacker("mallory@example.org").join_external(a.group_info(), resync_leaf=1)
    for g in (a, b, c):
        assert_rejected(g, data, IdentityError)
