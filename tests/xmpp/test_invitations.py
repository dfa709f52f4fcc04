"""The invitation gate alone: modes, the own account, the hourly limit (fake clock)."""

from __future__ import annotations

import pytest

from mls_xmpp.core.errors import LocalUsageError
from mls_xmpp.xmpp.invitations import WINDOW, InvitationGate, Verdict

OWN = "me@example.org"
CONTACT = "friend@example.org"
STRANGER = "mallory@example.net"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gate(mode: str, limit: int = 2, clock: Clock | None = None) -> InvitationGate:
    return InvitationGate(mode, limit, own_jid=lambda: OWN,
                          is_contact=lambda jid: jid == CONTACT, clock=clock or Clock())


def test_invitation_modes() -> None:
    contacts, any_, ask = _gate("contacts"), _gate("any"), _gate("ask")
    assert contacts.check(CONTACT) is Verdict.JOIN
    assert contacts.check(STRANGER) is Verdict.STRANGER
    assert any_.check(STRANGER) is Verdict.JOIN
    assert ask.check(CONTACT) is Verdict.JOIN
    assert ask.check(STRANGER) is Verdict.ASK


def test_invitation_from_own_account_is_always_joined_and_not_counted() -> None:
    gate = _gate("contacts", limit=0)
    assert all(gate.check(OWN) is Verdict.JOIN for _ in range(5))
    assert gate.check(CONTACT) is Verdict.OVER_LIMIT


def test_invitation_limit_per_inviter_slides_with_the_hour() -> None:
    clock = Clock()
    gate = _gate("ask", limit=2, clock=clock)
    assert [gate.check(CONTACT) for _ in range(3)] == [Verdict.JOIN, Verdict.JOIN,
                                                       Verdict.OVER_LIMIT]
    # another inviter has its own count; asking counts like joining
    assert [gate.check(STRANGER) for _ in range(3)] == [Verdict.ASK, Verdict.ASK,
                                                        Verdict.OVER_LIMIT]
    clock.now += WINDOW - 1
    assert gate.check(CONTACT) is Verdict.OVER_LIMIT
    clock.now += 1  # the first two are an hour old now
    assert gate.check(CONTACT) is Verdict.JOIN
    # a stranger refused in "contacts" mode is not counted (nothing was used)
    strict = _gate("contacts", limit=1)
    assert strict.check(STRANGER) is Verdict.STRANGER
    assert strict.check(CONTACT) is Verdict.JOIN


def test_invitation_options_are_checked() -> None:
    with pytest.raises(LocalUsageError):
        _gate("everyone")
    with pytest.raises(LocalUsageError):
        _gate("any", limit=-1)
