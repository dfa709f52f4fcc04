"""Room affiliations that follow MLS membership, with the least rights the mapping needs.

The room is transport: MLS membership decides who is in the group, and the
room's affiliations (XEP-0045 §5.2) are made to follow it. What each member
account needs from the room:

* to enter it and read its archive (a members-only room): ``member``;
* to let the accounts it adds in, and to take out the accounts it removes,
  when the group's rules allow it to add or remove (:mod:`.rules`): ``admin``.
  An admin may grant and revoke ``member`` (and ``outcast``) but cannot touch
  admins or owners (XEP-0045 §9, §10.6; Prosody's ``set_affiliation``);
* to configure the room: ``owner``, held only by the account that created it.
  Only an owner can make an account an admin.

So the creator is the owner, an account the rules allow to add or remove is an
admin, any other account a member. An admin committer can grant only
``member``; an owner, reconciling, raises such accounts to ``admin``. No
member but the owner can take another admin's affiliation away.

When affiliations drift from membership (the owner or the server dropped a
member's affiliation), members put them back: each committer after its Commit,
and the first few members able to, when the room announces that a member lost
its affiliation (:func:`plan_affiliations`). Only grants are made from drift: an
account is taken out of the room only by the Commit that removes it, because a
member reconciling cannot know whether it has seen every Commit the room has.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

#: Affiliations ordered by rank (XEP-0045 §5.2).
RANK = {"outcast": -1, "none": 0, "member": 1, "admin": 2, "owner": 3}
#: Affiliations a room lists to its members (``muc#admin`` queries).
LISTED: tuple[Literal["owner", "admin", "member"], ...] = ("owner", "admin", "member")
#: How many members repair an affiliation lost in the room (each after the one before).
REPAIRERS = 3
#: MUC status codes of an occupant who lost its place in the room (XEP-0045 §15.6):
#: banned, kicked, affiliation change (members-only), system shutdown.
LOST_CODES = frozenset({301, 307, 321, 332})
#: The codes that mean an affiliation was taken (not just a kick, which keeps it).
AFFILIATION_CODES = frozenset({301, 321})


def wanted_affiliation(jid: str, may_change: Collection[str]) -> str:
    """The least affiliation a member account needs: ``admin`` if the group's rules let
    it add or remove (``may_change``), else ``member``."""
    return "admin" if jid in may_change else "member"


def plan_affiliations(current: dict[str, str], members: Iterable[str], me: str,
                      may_change: Collection[str], *,
                      revoke: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The affiliation changes this account (``me``) can and should make.

    ``current`` maps bare JIDs to their room affiliation (absent: ``none``),
    ``members`` are the group's member accounts, ``may_change`` those the
    group's rules let add or remove, ``revoke`` accounts a Commit of this
    device just removed. Only what ``me``'s own affiliation allows is planned:
    an owner sets every member to what it needs (never touching other owners);
    an admin only lets members back in (``member``); a member does nothing.
    """
    mine = current.get(me, "none")
    if mine not in ("owner", "admin"):
        return []
    in_group = set(members)
    out: list[tuple[str, str]] = []
    for jid in sorted(in_group - {me}):
        have = current.get(jid, "none")
        want = wanted_affiliation(jid, may_change)
        if have == "owner":
            continue  # the creator keeps the room; no member but an owner could change it
        if mine == "owner":
            if have != want:
                out.append((jid, want))
        elif RANK[have] < RANK["member"]:
            out.append((jid, "member"))  # all an admin can grant
    for jid in sorted(set(revoke) - in_group - {me}):
        have = current.get(jid, "none")
        if RANK[have] <= RANK["none"]:
            continue
        if mine == "owner" or have == "member":
            out.append((jid, "none"))
    return out
