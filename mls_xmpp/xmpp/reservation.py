"""What the state store holds of this device's reservation of sending generations.

A group's own application ratchet is stored ahead of the generations it uses
(``Group.reserve_generations``, :data:`.session.RESERVED_GENERATIONS`), so that no
write is needed before most messages. A reservation is renewed *early*, when half
of it is used: its write goes off the event loop (the store writer, in the order of
every other write) while the stanzas go on under the reservation already stored.
Only a generation that no *committed* write covers -- the first message of an
epoch, after a restart, or when a renewal has not committed by the time the old
reservation is used up -- waits for a write before its stanza leaves. So after a
crash the device resumes at a stored generation it never used.

:class:`Reservation` tracks what committed: the end ``M`` of the last reservation
written (generations below it are covered) and the renewal on its way.
"""

from __future__ import annotations

import asyncio

from ..storage import StorageError

__all__ = ["Reservation"]


class Reservation:
    """One group session's stored reservation (see the module docstring)."""

    def __init__(self) -> None:
        self._epoch = -1
        self._upto = 0
        #: the renewal on its way: its write, and the reservation it holds
        self._renewal: tuple[asyncio.Future[None], int, int] | None = None

    def covered(self, epoch: int, generation: int) -> bool:
        """Whether a committed write holds the ratchet of ``epoch`` past ``generation``."""
        return epoch == self._epoch and generation < self._upto

    def stored(self, epoch: int, upto: int) -> None:
        """A write holding the reservation ``upto`` of ``epoch`` committed."""
        if epoch > self._epoch or (epoch == self._epoch and upto > self._upto):
            self._epoch, self._upto = epoch, upto

    def renewing(self, epoch: int, upto: int, write: asyncio.Future[None]) -> None:
        """The write of a renewed reservation was submitted (not waited for)."""
        self._renewal = (write, epoch, upto)
        write.add_done_callback(lambda _: self._settled())

    def _settled(self) -> None:
        if self._renewal is None:
            return
        write, epoch, upto = self._renewal
        if write.done():
            self._renewal = None
            if not write.cancelled() and write.exception() is None:
                self.stored(epoch, upto)

    async def wait_renewal(self) -> None:
        """Wait for the renewal on its way, if any (its failure is the write's to
        report: the generation is then written before it is used)."""
        if self._renewal is None:
            return
        write = self._renewal[0]
        try:
            await asyncio.shield(write)
        except StorageError:
            pass
        self._settled()
