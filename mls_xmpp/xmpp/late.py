"""Application messages the room took too late to be read, sent again (docs/PROTOCOL.md 9.7).

A message is encrypted in the epoch of its ``send()``; the room may take it
only after Commits of other members (its stanza waited in a stalled
connection, or in a stream resumed by XEP-0198 much later). Members read it
with the keys they keep of past epochs, but only :data:`RESEND_AFTER`
epochs back (the default ``past_epochs``). The room's order tells the sender
how late it came: its reflection is processed in the epoch every member is in
at that point. So:

* **the sender**, when its message comes back more than :data:`RESEND_AFTER`
  epochs after the one it was encrypted in, puts it back in its outbox
  (``queued``, then ``sent`` again: a new encryption, in the current epoch,
  with the same ``Content`` and ``message_id``) instead of ending it
  ``reflected``;
* **a member** that cannot read such a message for its epoch drops it without
  reporting it (the copy follows), and one that could read it (it keeps more
  past epochs) drops the copy that follows (same sender, same ``message_id``).

The epoch a message was encrypted in is stored with its outbox entry
(``OutboxRecord.sent_epoch``), so a reflection read after a restart of the
sender (from the room archive) is judged the same way.
"""

from __future__ import annotations

from collections import OrderedDict

from ..core.codec import Reader
from ..core.errors import MLSError
from ..core.messages.common import ContentType, WireFormat
from ..core.messages.framing import MLSMessage, PrivateMessage, PublicMessage

__all__ = ["RESEND_AFTER", "LateCopies", "resent_application", "sent_too_late", "wire_header"]

#: A message the room takes more than this many epochs after the one it was encrypted
#: in is sent again by its sender (a protocol constant: every member's default
#: ``past_epochs``).
RESEND_AFTER = 3
#: Late messages read whose copy is still expected, per group at most.
MAX_EXPECTED = 1024


def wire_header(data: bytes) -> tuple[int, int] | None:
    """The epoch and content type an MLSMessage's header names (not authenticated);
    ``None`` when it is not a PublicMessage or PrivateMessage. A PrivateMessage's
    header is read without decoding the rest (the sender reads it for every message)."""
    try:
        r = Reader(data)
        if r.uint(2) == 1 and r.uint(2) == WireFormat.PRIVATE_MESSAGE:
            r.read(r.varint())  # group_id
            return r.uint(8), r.uint(1)  # epoch, content_type (RFC 9420 §6.3)
        body = MLSMessage.decode(data).body
    except MLSError:
        return None
    if isinstance(body, PublicMessage):
        return int(body.content.epoch), int(body.content.content_type)
    if isinstance(body, PrivateMessage):
        return int(body.epoch), int(body.content_type)
    return None


def sent_too_late(sent_epoch: int, room_epoch: int) -> bool:
    """Whether a message encrypted in ``sent_epoch`` and taken by the room while the
    group was in ``room_epoch`` is sent again by its sender."""
    return room_epoch - sent_epoch > RESEND_AFTER


def resent_application(data: bytes, epoch: int) -> bool:
    """Whether ``data``, refused for its epoch by a member in ``epoch``, is an
    application message its sender sends again (so it is not reported)."""
    header = wire_header(data)
    return (header is not None and header[1] == ContentType.APPLICATION
            and sent_too_late(header[0], epoch))


class LateCopies:
    """A member's side: late messages it could read, whose copy it drops."""

    def __init__(self) -> None:
        self._expected: OrderedDict[tuple[bytes, str], None] = OrderedDict()
        #: copies dropped (for tests and benchmarks)
        self.dropped = 0

    def repeated(self, signature_key: bytes, message_id: str, message_epoch: int,
                 epoch: int) -> bool:
        """Whether an application message read now (of ``message_epoch``, the group in
        ``epoch``) is the copy of a late one already read; a late one is noted."""
        key = (signature_key, message_id)
        if not message_id:
            return False
        if key in self._expected:
            del self._expected[key]
            self.dropped += 1
            return True
        if sent_too_late(message_epoch, epoch):
            self._expected[key] = None
            while len(self._expected) > MAX_EXPECTED:
                self._expected.popitem(last=False)
        return False
