"""The turns of the updates after joining (mls_xmpp.xmpp.freshness), on real core groups:
what each device counts from the tree, and when its update goes."""

from __future__ import annotations

from typing import Any

from mls_xmpp.core.group.client import Client
from mls_xmpp.xmpp.freshness import TURN_MIN, Freshness

from .test_retention import _Plugin, _Session


def _made_in_one_go(n: int) -> list[Any]:
    """A creator and ``n`` devices added by one Commit, each holding the group."""
    clients = [Client.generate(f"m{i}@x".encode()) for i in range(n + 1)]
    a = clients[0].create_group(b"T" * 16)
    p = a.commit(add=[c.make_key_package() for c in clients[1:]])
    a.merge_pending_commit()
    assert p.welcome is not None
    return [a] + [c.join(p.welcome) for c in clients[1:]]


def test_each_new_member_counts_the_updates_ahead_of_it_alike() -> None:
    groups = _made_in_one_go(5)
    sessions = [_Session(g) for g in groups]
    fresh = Freshness(_Plugin([0.0]))  # type: ignore[arg-type]
    # the creator's leaf came with its Commit; the five new ones hold KeyPackage keys
    assert [fresh.waiting_ahead(s) for s in sessions] == [0, 0, 1, 2, 3, 4]  # type: ignore[arg-type]
    # the first in line updates: every member's count moves on, alike
    p = groups[1].commit()
    groups[1].merge_pending_commit()
    for g in groups[:1] + groups[2:]:
        g.process(p.message)
    assert [fresh.waiting_ahead(s) for s in sessions] == [0, 0, 0, 1, 2, 3]  # type: ignore[arg-type]


def test_the_delay_is_a_turn_per_update_ahead_within_the_window() -> None:
    sessions = [_Session(g) for g in _made_in_one_go(5)]
    # a small group: the window is update_join_delay (30 s), a turn 30 / 6 = 5 s
    small = Freshness(_Plugin([0.0], update_join_delay=30.0))  # type: ignore[arg-type]
    for ahead, s in zip([0, 1, 2, 3, 4], sessions[1:], strict=True):
        d = small.join_update_delay(s)  # type: ignore[arg-type]
        assert ahead * 5.0 <= d <= ahead * 5.0 + 1.0
        assert d <= 30.0
    # a larger window by the spread (6 x 10 s): a turn of 10 s
    wide = Freshness(_Plugin([0.0], update_join_delay=0.0, update_join_spread=10.0))  # type: ignore[arg-type]
    d = wide.join_update_delay(sessions[3])  # type: ignore[arg-type]
    assert 20.0 <= d <= 21.0
    # short turns last TURN_MIN at least, and nobody waits past the window (6 x 1 s)
    short = Freshness(_Plugin([0.0], update_join_delay=0.0, update_join_spread=1.0))  # type: ignore[arg-type]
    assert 0.0 <= short.join_update_delay(sessions[1]) <= 1.0  # type: ignore[arg-type]
    assert short.join_update_delay(sessions[2]) >= TURN_MIN  # type: ignore[arg-type]
    assert short.join_update_delay(sessions[5]) == 6.0  # type: ignore[arg-type]
    # after a last-resort join: update_join_delay at most, whatever the group's size
    urgent = Freshness(_Plugin([0.0], update_join_delay=2.0, update_join_spread=10.0))  # type: ignore[arg-type]
    urgent._last_resort.add(sessions[5].group_id)
    assert urgent.join_update_delay(sessions[5]) == 2.0  # type: ignore[arg-type]
