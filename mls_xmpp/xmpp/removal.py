"""Removal notices: a device whose account was removed while it was away learns it.

The room is not the group: a removed account loses its room affiliation
(docs/PROTOCOL.md §9.5), so a device of it that was offline when the Commit
came can no longer read that Commit from the room's archive. The committer
therefore also sends the Commit (the same MLSMessage, kind COMMIT) directly to
the bare JID of every account it removed entirely, as it sends Welcomes
(offline storage and the account's archive keep it).

A device that receives such a *removal notice* for a group it holds keeps it
(after cheap checks: a member account sent it, for the device's epoch). When
the room refuses the device again afterwards -- so that it cannot read the
Commit there -- and no Welcome back into the group waits (an account added
again is let in again, and reads its removal in room order, with what came
before it), the device processes the Commit on a copy of the group as last
stored. Only if MLS accepts the Commit (a valid Commit of that epoch,
protected with that epoch's keys by a member) *and* it removes this device
does the device leave the group, as if it had read the Commit in the room.
Anything else is reported and changes nothing: the copy is thrown away, so a
notice can never move the group to another epoch than the room's order does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..core.errors import MLSError
from ..core.group.events import CommitApplied
from .envelope import Envelope, Kind
from .errors import EnvelopeError, TransportError
from .events import MLSErrorEvent

if TYPE_CHECKING:
    from ..core.group.commit import PendingCommit
    from .plugin import XEP_MLS
    from .session import GroupSession

__all__ = ["apply_removal_notice", "on_removal_notice", "send_removal_notices"]

log = logging.getLogger(__name__)


async def send_removal_notices(session: GroupSession, pending: PendingCommit,
                               stanza_id: str | None, accounts: set[str]) -> None:
    """Send this device's reflected Commit ``pending`` to each of ``accounts``
    (bare JIDs it removed entirely). Failures are reported; the Commit stands."""
    if not accounts:
        return
    env = Envelope(kind=Kind.COMMIT, group_id=session.group_id,
                   epoch=int(pending.new_state.epoch) - 1, mls_message=pending.message,
                   room=session.room, after_stanza_id=stanza_id or "")
    for jid in sorted(accounts):
        try:
            await session.plugin.delivery.send_welcome(jid, env)
        except (TransportError, ValueError) as e:
            session.plugin.error(MLSErrorEvent(f"removal notice to {jid}: {e}", session,
                                               error=e))


async def on_removal_notice(plugin: XEP_MLS, env: Envelope, sender: str) -> None:
    """Keep a COMMIT envelope sent to this account directly, for :func:`apply_removal_notice`.

    Only cheap checks are made now (anyone can send one): the room, the sender
    (a member account), the epoch in the envelope and the MLS header.

    :raises EnvelopeError: the notice cannot be for this device's group as it is.
    """
    session = next((s for s in plugin.sessions.values() if s.group_id == env.group_id), None)
    if session is None or session.removed:
        return  # not (or no longer) in that group: nothing to learn
    if env.room and env.room != session.room:
        raise EnvelopeError("removal notice names another room than the group's")
    if _bare(sender) not in session.jids():
        raise EnvelopeError("removal notice from an account that is not in the group")
    if env.epoch != session.epoch or _header(env.mls_message) != (session.group_id,
                                                                   session.epoch):
        raise EnvelopeError(f"removal notice for another epoch than this device's "
                            f"({session.epoch}): it cannot be checked")
    session.removal_notice = env
    log.info("a removal notice for %s (epoch %d) waits until the room refuses this device "
             "again", session.room, env.epoch)


async def apply_removal_notice(plugin: XEP_MLS, session: GroupSession) -> bool:
    """The room refused this device again: act on its kept removal notice, if any.

    Not while a Welcome back into the group waits (the account was added again:
    the room will take the device, which then reads its removal and what came
    before it in room order). ``True`` when the notice ended the group; a
    notice that does not is reported and dropped.
    """
    env = session.removal_notice
    if env is None or session.removed or plugin.inbox.waiting(session.group_id):
        return False
    session.removal_notice = None
    try:
        return await _apply(plugin, session, env)
    except MLSError as e:
        plugin.error(MLSErrorEvent(f"removal notice refused: {e}", session, error=e))
        return False


async def _apply(plugin: XEP_MLS, session: GroupSession, env: Envelope) -> bool:
    from .session import member_jid

    async with session.group_lock:
        if session.removed:
            return False  # the room's copy of the Commit came first
        stored = plugin._stored(session.group_id)
        if stored is None:
            raise EnvelopeError("removal notice for a group that is not stored")
        copy, _ = stored
        me = plugin.bare_jid
        before = {m.leaf_index: m for m in copy.members}
        try:
            event = copy.process(env.mls_message)
        except MLSError as e:
            raise type(e)(f"removal notice: {e}") from e
        if not isinstance(event, CommitApplied) or not event.self_removed:
            raise EnvelopeError("removal notice whose Commit does not remove this device")
        gone = {m.leaf_index for m in event.removed}
        others = any(member_jid(m) == me for i, m in before.items() if i not in gone)
        # the copy, now inactive, is the group: as if the room's copy had been read
        assert plugin.identity is not None
        plugin.identity.groups[copy.group_id] = copy
        session.group = copy
    plugin.group_removed(session, account_still_in=others)
    return True


def _bare(jid: str) -> str:
    return jid.split("/", 1)[0]


def _header(data: bytes) -> tuple[bytes, int] | None:
    """The (group_id, epoch) in a PublicMessage's or PrivateMessage's header."""
    from ..core.messages.framing import MLSMessage, PrivateMessage, PublicMessage

    try:
        body = MLSMessage.decode(data).body
    except MLSError:
        return None
    if isinstance(body, PrivateMessage):
        return body.group_id, body.epoch
    if isinstance(body, PublicMessage):
        return body.content.group_id, body.content.epoch
    return None
