"""Which refused room messages are dropped quietly (healing.Healer.superseded_handshake)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mls_xmpp.core.errors import MLSError, SecretTreeError, WrongEpochError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.group import Group
from mls_xmpp.xmpp.healing import Healer


def _pair(past_epochs: int = 3) -> tuple[Group, Group]:
    config = GroupConfig(past_epochs=past_epochs)
    a, b = (Client.generate(f"{n}@example.org".encode(), config=config) for n in "ab")
    ga = a.create_group()
    p = ga.commit(add=[b.make_key_package()])
    ga.merge_pending_commit()
    return ga, b.join(p.welcome)  # type: ignore[arg-type]


def _refused(group: Group, data: bytes) -> MLSError:
    with pytest.raises(MLSError) as info:
        group.process(data)
    return info.value


def _healer(group: Group) -> Healer:
    session: Any = SimpleNamespace(group=group)
    session.epoch = group.epoch
    return Healer(session)


def test_a_commit_that_lost_a_race_is_superseded() -> None:
    a, b = _pair()
    losing = b.commit().message  # b's Commit for epoch n ...
    b.discard_pending_commit()
    winning = a.commit()  # ... but the room took a's first
    a.merge_pending_commit()
    b.process(winning.message)
    healer = _healer(b)
    error = _refused(b, losing)
    assert isinstance(error, WrongEpochError)
    assert healer.superseded_handshake(losing, error)
    assert healer.superseded == 1


def test_a_proposal_of_an_ended_epoch_is_superseded() -> None:
    a, b = _pair()
    proposal = b.propose_update()
    p = a.commit(include_pending=False)
    a.merge_pending_commit()
    b.process(p.message)
    healer = _healer(a)
    assert healer.superseded_handshake(proposal, _refused(a, proposal))


def test_unreadable_or_later_messages_are_not_quiet() -> None:
    a, b = _pair(past_epochs=1)
    old = a.encrypt(b"too old")
    for _ in range(2):  # two Commits: epoch n is beyond the one kept
        p = a.commit()
        a.merge_pending_commit()
        b.process(p.message)
    healer = _healer(b)
    error = _refused(b, old)
    assert isinstance(error, WrongEpochError)
    assert not healer.superseded_handshake(old, error)  # an application message: lost
    current = a.commit().message  # a Commit of b's own epoch is not superseded
    assert not healer.superseded_handshake(current, WrongEpochError("made up"))
    reused = a.encrypt(b"once")
    a.discard_pending_commit()
    b.process(reused)
    error = _refused(b, reused)
    assert isinstance(error, SecretTreeError)
    assert not healer.superseded_handshake(reused, error)
    assert not healer.superseded_handshake(b"not an MLSMessage", WrongEpochError("x"))
    assert healer.superseded == 0
