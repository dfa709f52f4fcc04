"""Which device lists a device follows in a large group (mls_xmpp.xmpp.watching).

The rule it must keep: a device follows the list of every account for which
:func:`~mls_xmpp.xmpp.devices.actor_rank` could make it one of the ``ADDERS``
that add or remove that account's devices, and in a large group, no more than
those few need.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.group import Group
from mls_xmpp.xmpp.devices import ADDERS, actor_rank
from mls_xmpp.xmpp.keystore import device_fingerprint
from mls_xmpp.xmpp.session import member_jid
from mls_xmpp.xmpp.watching import WATCH_ALL_MAX, followed_accounts

MULTI = "multi@x"  # an account with four devices, early in the tree


def _groups(n: int, viewers: list[int]) -> dict[int, Group]:
    """A group of alice (leaf 0), four devices of MULTI (leaves 1-4) and ``n`` accounts
    u0... (leaves 5...), as seen from the leaves ``viewers``."""
    alice = Client.generate(b"alice@x")
    clients = [Client.generate(MULTI.encode()) for _ in range(4)]
    clients += [Client.generate(f"u{i}@x".encode()) for i in range(n)]
    group = alice.create_group()
    pending = group.commit(add=[c.make_key_package() for c in clients])
    group.merge_pending_commit()
    assert pending.welcome is not None
    out = {0: group}
    for leaf in viewers:
        if leaf:
            out[leaf] = clients[leaf - 1].join(pending.welcome,
                                               ratchet_tree=group.ratchet_tree())
            assert out[leaf].own_leaf_index == leaf
    return out


def _check_covers_the_actors(session: Any, followed: set[str]) -> None:
    members = session.group.members
    for jid in {member_jid(m) for m in members}:
        rank = actor_rank(session, jid, add=True)  # a new device of jid
        assert rank is None or rank >= ADDERS or jid in followed, jid
    for m in members[:8] + members[-2:]:  # the removal of a device (it does not count)
        jid = member_jid(m)
        rank = actor_rank(session, jid, add=False, exclude=device_fingerprint(m.signature_key))
        assert rank is None or rank >= ADDERS or jid in followed, jid


def test_a_large_group_follows_only_the_accounts_this_device_may_act_on() -> None:
    n = WATCH_ALL_MAX + 20
    last = n + 4
    groups = _groups(n, [0, 3, 5, 6, last])
    everyone = {"alice@x", MULTI} | {f"u{i}@x" for i in range(n)}
    for leaf, group in groups.items():
        session: Any = SimpleNamespace(group=group)
        own = member_jid(group.members[leaf])
        followed = followed_accounts(session, own)
        _check_covers_the_actors(session, followed)
        assert own in followed
        if leaf <= 3:  # among the lowest leaves: acts for every account
            assert followed == everyone
    # after alice, MULTI's four devices and u0: only MULTI might come next for its own
    # devices; the device at the last leaf follows its own account alone
    assert followed_accounts(SimpleNamespace(group=groups[6]), "u1@x") == {"u1@x", MULTI}
    assert followed_accounts(SimpleNamespace(group=groups[last]), f"u{n - 1}@x") == {
        f"u{n - 1}@x"}


def test_a_small_group_follows_every_account() -> None:
    groups = _groups(10, [14])
    session: Any = SimpleNamespace(group=groups[14])
    assert followed_accounts(session, "u9@x") == {"alice@x", MULTI} | {
        f"u{i}@x" for i in range(10)}
