"""Which member accounts' device lists a device follows in a large group (:mod:`.devices`).

Each device subscribes to the device list (PEP) of the accounts it shares a group
with, and reads it once: two requests per account. In a group of N accounts that
is O(N) requests per device and O(N^2) on the server for the whole group: at
50,000 members each of 50 joining devices sent 100,000 requests, and Prosody
answered nothing else for minutes (docs/PERFORMANCE.md, "50,000 members on a
real server").

A new or removed device of an account is acted on by the first :data:`~.devices.ADDERS`
member devices in :func:`~.devices.actor_rank` order (the account's own devices,
then by leaf index), all others stay put. So in a group of more than
:data:`WATCH_ALL_MAX` accounts a device follows only the lists of accounts for
which it could be among those: its own account, and the accounts whose devices
sit among the few lowest leaves before it (all of them for the devices with the
lowest leaves). Membership changes recompute the set (``mls_membership``). What
the others give up is local: they do not mark an unlisted device's key
``distrusted`` themselves (the devices that act on it do).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ..core.errors import MLSError

if TYPE_CHECKING:
    from .session import GroupSession

#: Up to this many member accounts, every device follows every member account's list.
WATCH_ALL_MAX = 256


def followed_accounts(session: GroupSession, own: str) -> set[str]:
    """The accounts of ``session``'s group whose device lists this device follows
    (``own``: this device's account, always followed)."""
    from .devices import ADDERS
    from .rules import DEFAULT_RULES, Who, rules_of
    from .session import member_jid

    members = session.group.members
    jids = {member_jid(m) for m in members}
    if len(jids) <= WATCH_ALL_MAX:
        return jids | {own}
    try:
        rules = rules_of(session.group.state.context.extensions)
    except MLSError:
        rules = DEFAULT_RULES
    me = session.group.own_leaf_index
    out = {own}
    for who in {rules.add, rules.remove}:
        # the devices allowed to act that come before this one, by account
        before: Counter[str] = Counter()
        for m in members:
            if m.leaf_index >= me:
                continue
            jid = member_jid(m)
            if who == Who.MEMBERS or (who == Who.ADMINS and jid.encode() in rules.admins):
                before[jid] += 1
        ahead = sum(before.values())
        # ranked after the account's own devices and the others before it; one more
        # place kept for the device being removed, which does not count
        if ahead - 1 < ADDERS:
            return jids | {own}
        out |= {jid for jid, n in before.items() if ahead - n - 1 < ADDERS}
    return out
