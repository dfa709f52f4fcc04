"""Many room affiliation changes in few ``muc#admin`` requests, where the room takes them.

XEP-0045 lets an admin or owner send several ``<item/>`` elements in one
``muc#admin`` set (the "modify the member list" and "modify the admin list"
use cases, §9.5 and §10.6). Servers differ: ejabberd applies every item;
Prosody 0.12 (``handle_admin_query_set_command`` in ``muc.lib.lua``) applies
the first item, ignores the others and still answers with a result. A result
therefore says nothing about the items after the first, and the server is not
trusted to say it: the first batch sent to a MUC service is checked by reading
the room's lists again. If every item of it took effect, later changes on that
service go :data:`BATCH` items per request; if not, the items that did not take
effect and every later change go one per request, as before. What was learned
is kept per MUC service for the life of the plugin (:attr:`Delivery.batching`).

A batch the room refuses (an error) is sent again item by item, so one refused
item (for example an admin granting ``admin``) does not hold back the others,
and its error is reported for that item alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from slixmpp import JID

from .errors import TransportError

if TYPE_CHECKING:
    from .delivery import Delivery

#: Items per ``muc#admin`` request once a service has shown that it applies them all.
BATCH = 250
#: Requests (batches or single items) in flight at once.
PARALLEL = 8

Change = tuple[str, str]


def service_of(room: str) -> str:
    """The MUC service (domain) of a room JID: what batching is learned for."""
    return str(JID(room).domain)


async def apply_affiliations(
    delivery: Delivery, room: str, changes: list[Change], *,
    wanted: Callable[[str, str], bool],
    failed: Callable[[str, Exception], None],
    advanced: Callable[[int], None],
) -> None:
    """Make ``changes`` (bare JID, affiliation) in ``room``, in as few requests as the
    service allows (see the module docstring).

    ``wanted(jid, affiliation)`` is asked just before a change is sent (is the
    account still a member?) and skips it when false; ``failed(jid, error)`` is
    called for each change the room refused or did not answer; ``advanced(k)``
    after ``k`` more changes were dealt with. Never raises for a refused change.
    """
    service = service_of(room)
    gate = asyncio.Semaphore(PARALLEL)

    async def one(jid: str, affiliation: str) -> None:
        async with gate:
            try:
                if wanted(jid, affiliation):
                    await delivery.set_affiliation(room, jid, affiliation)  # type: ignore[arg-type]
            except (TransportError, ValueError) as e:
                failed(jid, e)
        advanced(1)

    async def singly(items: list[Change]) -> None:
        await asyncio.gather(*(one(j, a) for j, a in items))

    async def batch(items: list[Change]) -> bool:
        """One request with ``items``; False if the room refused it (nothing counted)."""
        items = [(j, a) for j, a in items if wanted(j, a)]
        if not items:
            return True
        async with gate:
            try:
                await delivery.set_affiliations(room, items)
            except (TransportError, ValueError):
                return False
        return True

    todo = list(changes)
    if len(todo) > 1 and delivery.batching.get(service) is None:
        probe, todo = todo[:BATCH], todo[BATCH:]
        if not await batch(probe):
            await singly(probe)  # refused: nothing learned about the service
        else:
            try:
                current: dict[str, str] | None = await delivery.affiliations(room)
            except TransportError:
                current = None  # unknown what took effect: again one by one (idempotent)
                await singly(probe)
            if current is not None:
                missing = [(j, a) for j, a in probe
                           if current.get(j, "none") != a and wanted(j, a)]
                delivery.batching[service] = not missing
                advanced(len(probe) - len(missing))
                await singly(missing)
    if len(todo) > 1 and delivery.batching.get(service):
        async def chunk(items: list[Change]) -> None:
            if await batch(items):
                advanced(len(items))
            else:
                await singly(items)

        await asyncio.gather(*(chunk(todo[i:i + BATCH]) for i in range(0, len(todo), BATCH)))
    else:
        await singly(todo)


def counting(advance: Callable[[int, int], None], total: int) -> Callable[[int], None]:
    """An ``advanced`` callback that reports ``(done, total)`` to ``advance``."""
    done = 0

    def advanced(k: int) -> None:
        nonlocal done
        done += k
        advance(done, total)

    return advanced

