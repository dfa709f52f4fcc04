"""GroupInfo publication when the committer did not publish (docs/PROTOCOL.md §9.8).

A committer MUST send the new epoch's GroupInfo to the room after its Commit
was reflected; recovering and new devices join from it (§10.1). A committer
may fail to (its stream went down, or its implementation cannot). So after
every Commit of another member, the first :data:`FALLBACK_PUBLISHERS` members
by leaf index, the committer left out, wait: the one at rank ``r`` (from 0)
waits ``(r + 1) * group_info_grace`` seconds, and publishes the epoch's
GroupInfo itself if none signed for that epoch has reached it from the room by
then and the group is still in that epoch. Every member can sign a GroupInfo
(RFC 9420 §12.4.3), so any of them will do; the rank only keeps them from all
publishing at once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..core.errors import MLSError
from .errors import TransportError
from .events import MLSErrorEvent

if TYPE_CHECKING:
    from .session import GroupSession

__all__ = ["FALLBACK_PUBLISHERS", "watch_publication"]

#: How many members (by leaf index) stand in for a committer that did not publish.
FALLBACK_PUBLISHERS = 2


def rank(session: GroupSession, committer_leaf: int | None) -> int | None:
    """This device's place among the members that stand in for the committer."""
    leaves = sorted(m.leaf_index for m in session.group.members
                    if m.leaf_index != committer_leaf)
    own = session.group.own_leaf_index
    return leaves.index(own) if own in leaves else None


def watch_publication(session: GroupSession, committer_leaf: int | None) -> None:
    """After another member's Commit: publish the epoch's GroupInfo if nobody does."""
    place = rank(session, committer_leaf)
    if place is None or place >= FALLBACK_PUBLISHERS:
        return
    epoch = session.epoch
    delay = (place + 1) * float(session.plugin.config["group_info_grace"])
    asyncio.ensure_future(_stand_in(session, epoch, delay))


async def _stand_in(session: GroupSession, epoch: int, delay: float) -> None:
    await asyncio.sleep(delay)
    if (session.removed or session.suspended is not None or session.epoch != epoch
            or session.group_info_epoch == epoch
            or session.plugin.sessions.get(session.room) is not session
            or not session.plugin.connected):
        return
    try:
        await session.publish_group_info()
    except (MLSError, TransportError) as e:
        session.plugin.error(MLSErrorEvent(f"publishing the GroupInfo for epoch {epoch} "
                                           f"in the committer's place: {e}", session, error=e))
