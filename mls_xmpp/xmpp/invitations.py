"""Who may put this device into a group: the gate in front of every Welcome.

KeyPackages are public, so anyone can make a group, add this device and send
it a Welcome. Joining costs a KeyPackage (its private keys are deleted) and
shows the stranger's messages to the user. :class:`InvitationGate` decides,
before anything in a Welcome is decrypted or downloaded, whether its sender
(the *inviter*) may do that:

* ``"contacts"`` (the default): roster contacts with a mutual subscription
  ("both") are joined; anyone else's Welcome is dropped and reported;
* ``"any"``: everyone is joined;
* ``"ask"``: contacts are joined; for anyone else the application decides
  (the ``mls_invitation`` event, :class:`~mls_xmpp.xmpp.events.InvitationEvent`).

Welcomes from this account's own bare JID (its other devices adding this one)
are always joined and never counted. Everyone else is held to an hourly limit:
at most ``limit`` Welcomes per inviter in any hour are joined or put to the
application; the rest are dropped and reported. The gate holds no I/O: the
roster lookup and the clock are given to it.

The sender is the stanza's ``from``, which the inviter's server (or this
account's own) could forge: the gate keeps strangers out, not the server
(docs/PROTOCOL.md section 9.3).
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable

from ..core.errors import LocalUsageError

#: The values of the plugin option ``invitations``.
MODES = ("contacts", "any", "ask")
#: The window of the per-inviter limit, in seconds.
WINDOW = 3600.0
#: At most this many invitations wait for the application's decision at once.
MAX_PENDING = 100


class Verdict(enum.Enum):
    """What to do with a Welcome for this device."""

    JOIN = "join"
    ASK = "ask"
    STRANGER = "stranger"    # refused: not someone the account allows
    OVER_LIMIT = "over limit"  # refused: this inviter's hourly limit is used up


class InvitationGate:
    """Decides per inviter: join, ask the application, or refuse (see the module).

    :param mode: one of :data:`MODES`.
    :param limit: Welcomes per inviter per hour (own account excepted).
    :param own_jid: this account's bare JID (a callable: known only once bound).
    :param is_contact: whether a bare JID is a contact with a mutual subscription.
    :param clock: seconds, monotonic (injected for tests).
    :raises LocalUsageError: an unknown mode or a negative limit.
    """

    def __init__(self, mode: str, limit: int, own_jid: Callable[[], str],
                 is_contact: Callable[[str], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise LocalUsageError(f"option 'invitations' must be one of {', '.join(MODES)}, "
                                  f"not {mode!r}")
        if limit < 0:
            raise LocalUsageError("option 'invitation_limit' must not be negative")
        self.mode = mode
        self.limit = limit
        self._own_jid = own_jid
        self._is_contact = is_contact
        self._clock = clock
        #: inviter -> when each of its counted Welcomes came (oldest first)
        self._seen: dict[str, deque[float]] = {}

    def check(self, inviter: str) -> Verdict:
        """The verdict for a Welcome from the bare JID ``inviter``; a JOIN or ASK is counted."""
        if inviter == self._own_jid():
            return Verdict.JOIN
        allowed = self.mode == "any" or self._is_contact(inviter)
        if not allowed and self.mode != "ask":
            return Verdict.STRANGER
        now = self._clock()
        seen = self._seen.setdefault(inviter, deque())
        while seen and now - seen[0] >= WINDOW:
            seen.popleft()
        if len(seen) >= self.limit:
            return Verdict.OVER_LIMIT
        seen.append(now)
        self._forget_idle(now)
        return Verdict.JOIN if allowed else Verdict.ASK

    def _forget_idle(self, now: float) -> None:
        """Drop inviters with nothing in the window (the map stays small)."""
        idle = [j for j, s in self._seen.items() if not s or now - s[-1] >= WINDOW]
        for j in idle:
            del self._seen[j]
