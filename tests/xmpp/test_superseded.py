"""Which refused room messages are dropped without a report (Healer.superseded), and
the copies of late messages (late.LateCopies)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mls_xmpp.core.errors import MLSError, SecretTreeError, WrongEpochError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.group import Group
from mls_xmpp.xmpp.healing import Healer
from mls_xmpp.xmpp.late import RESEND_AFTER, LateCopies, sent_too_late


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
    assert healer.superseded(losing, error)
    assert healer.superseded_count == 1


def test_a_proposal_of_an_ended_epoch_is_superseded() -> None:
    a, b = _pair()
    proposal = b.propose_update()
    p = a.commit(include_pending=False)
    a.merge_pending_commit()
    b.process(p.message)
    healer = _healer(a)
    assert healer.superseded(proposal, _refused(a, proposal))


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
    # an application message its sender does not send again (read by members that
    # keep the default three past epochs): lost here, reported
    assert not healer.superseded(old, error)
    current = a.commit().message  # a Commit of b's own epoch is not superseded
    assert not healer.superseded(current, WrongEpochError("made up"))
    reused = a.encrypt(b"once")
    a.discard_pending_commit()
    b.process(reused)
    error = _refused(b, reused)
    assert isinstance(error, SecretTreeError)
    assert not healer.superseded(reused, error)
    assert not healer.superseded(b"not an MLSMessage", WrongEpochError("x"))
    assert healer.superseded_count == 0


def test_an_application_message_too_late_for_anyone_is_superseded() -> None:
    a, b = _pair(past_epochs=RESEND_AFTER)
    late = a.encrypt(b"late")
    for _ in range(RESEND_AFTER + 1):
        p = a.commit()
        a.merge_pending_commit()
        b.process(p.message)
    healer = _healer(b)
    assert healer.superseded(late, _refused(b, late))  # its sender sends it again
    assert healer.superseded_count == 1


def test_the_copy_of_a_late_message_read_is_dropped_once() -> None:
    assert not sent_too_late(4, 4 + RESEND_AFTER)
    assert sent_too_late(4, 5 + RESEND_AFTER)
    copies = LateCopies()
    key = b"k" * 32
    assert not copies.repeated(key, "m1", 1, 2)  # in time: no copy follows
    assert not copies.repeated(key, "m1", 2, 2)
    assert not copies.repeated(key, "m2", 1, 1 + RESEND_AFTER + 1)  # late, read here
    assert not copies.repeated(b"x" * 32, "m2", 5, 5)  # another sender's m2
    assert copies.repeated(key, "m2", 5, 5)  # the copy
    assert not copies.repeated(key, "m2", 5, 5)  # only one copy is dropped
    assert not copies.repeated(key, "", 1, 9)
    assert copies.dropped == 1


def test_wire_header_reads_private_and_public_headers() -> None:
    from mls_xmpp.xmpp.late import wire_header

    a, b = _pair()
    assert wire_header(a.encrypt(b"x")) == (a.epoch, 1)  # application
    private = b.propose_update()
    assert wire_header(private) == (b.epoch, 2)  # proposal
    assert wire_header(a.commit().message) == (a.epoch, 3)  # commit
    assert wire_header(private[:20]) is None  # cut in the header
    assert wire_header(b"\x00\x02" + private[2:]) is None  # another version
    public = Client.generate(b"c@example.org", config=GroupConfig(handshake_private=False))
    group = public.create_group()
    assert wire_header(group.commit().message) == (0, 3)  # a PublicMessage
