"""The Delivery Service side of the mapping: MUC rooms, MAM, Welcome, blobs.

Stanzas built here carry exactly one ``<mls xmlns='urn:mls-xmpp:0'/>``
element (base64 protobuf Envelope), a fallback ``<body/>``, the store hint
(``urn:xmpp:hints``, XEP-0334, so body-less payloads are archived too) and an
EME marker (XEP-0380), both through slixmpp's stanza plugins. Nothing sent
exceeds the server's stanza limit: large handshake messages are fragmented; a
large application message, and ratchet trees above a threshold, go out of band
through HTTP File Upload (XEP-0363) with a SHA-256 that receivers check,
fetched only from the hosts :mod:`.blobs` allows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0359 import StanzaID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from ..core.errors import LocalUsageError
from .blobs import Blobs
from .envelope import BlobRef, Envelope, Reassembler, fragment
from .errors import ArchiveBudgetError, EnvelopeError, TooLargeError, TransportError
from .privacy import padded_base64
from .stanza import NS

log = logging.getLogger(__name__)

FALLBACK_BODY = "[This message is encrypted with MLS (urn:mls-xmpp:0).]"
#: Prosody's default c2s stanza limit is 262144 bytes; stay well below it.
DEFAULT_STANZA_BUDGET = 200 * 1024
#: Largest blob downloaded by default (option ``blob_max_size``; a 50,000-member
#: tree is about 13 MiB).
MAX_BLOB = 64 * 1024 * 1024
#: Blobs above this are uploaded in parts (Prosody's default upload limit is 10 MiB).
DEFAULT_PART_SIZE = 8 * 1024 * 1024
#: Pages one archive read may take (option ``archive_max_pages``): 2,000 pages of 100.
ARCHIVE_MAX_PAGES = 2000
#: Seconds one archive read may take, all pages together (option ``archive_timeout``).
ARCHIVE_TIMEOUT = 600.0


class _ReadBudget:
    """The pages and the time one archive read may still take."""

    def __init__(self, where: str, pages: int, seconds: float) -> None:
        self.where = where
        self.pages = pages
        self.seconds = seconds
        self.taken = 0
        self.deadline = asyncio.get_running_loop().time() + seconds

    def left(self) -> float:
        """Seconds left for the next query (a little at least, so it can be sent)."""
        return max(0.1, self.deadline - asyncio.get_running_loop().time())

    def spent(self) -> ArchiveBudgetError:
        """The error of a read that ran out of time."""
        return ArchiveBudgetError(
            f"reading the archive of {self.where} took over {self.seconds:.0f} s "
            "(option archive_timeout): stopped reading it")

    def page(self) -> None:
        """Count one more page; raise when the budget is spent."""
        self.taken += 1
        if self.taken > self.pages:
            raise ArchiveBudgetError(
                f"the archive of {self.where} still had more after {self.pages} pages "
                "(option archive_max_pages): stopped reading it")
        if self.deadline <= asyncio.get_running_loop().time():
            raise self.spent()


class Delivery:
    """Sends and receives envelopes for one slixmpp client.

    The transport floor of the plugin: it knows slixmpp (MUC, MAM, HTTP
    upload) but not MLS groups, and is given only the client and the
    plugin's options (``archive_*`` and ``blob_*`` are read from them).
    """

    def __init__(self, xmpp: Any, config: Mapping[str, Any], *,
                 stanza_budget: int = DEFAULT_STANZA_BUDGET,
                 timeout: float = 30.0, part_size: int = DEFAULT_PART_SIZE) -> None:
        self.config = config
        self.xmpp = xmpp
        self.stanza_budget = stanza_budget
        self.timeout = timeout
        self.part_size = part_size
        self.reassembler = Reassembler()
        #: where blobs may be fetched from, and the fetching (docs/PROTOCOL.md §11.2)
        self.blobs = Blobs(self.xmpp, config, iq_timeout=min(timeout, 10.0))
        #: called with ``(room, nick)`` before this client enters a room: a client UI
        #: whose own MUC code must know the room first (the poezio plugin opens its tab)
        self.before_join: list[Callable[[str, str], None]] = []
        #: per MUC service: whether it applies every item of a ``muc#admin`` set
        #: (learned and checked by :mod:`.affiliations`; absent: not known yet)
        self.batching: dict[str, bool] = {}

    # -- building stanzas ----------------------------------------------------------

    def _message(self, to: str, mtype: Literal["chat", "groupchat"], env: Envelope) -> Any:
        msg = self.xmpp.make_message(mto=to, mtype=mtype, mbody=FALLBACK_BODY)
        # padded to a size bucket unless the option pad_envelopes is off (.privacy)
        msg["mls"]["payload"] = (padded_base64(env) if self.config.get("pad_envelopes", True)
                                 else env.to_base64())
        msg.enable("store")  # XEP-0334 (plugin xep_0334)
        # XEP-0380 (plugin xep_0380; its add_eme() knows only the XSF's mechanisms)
        msg["eme"]["namespace"] = NS
        msg["eme"]["name"] = "MLS"
        return msg

    @property
    def _budget(self) -> int:
        # base64 grows by 4/3; leave room for the rest of the stanza
        return self.stanza_budget - 2048  # base64 characters of the <mls/> text

    def _pieces(self, env: Envelope) -> list[Envelope]:
        try:
            return fragment(env, self._budget)
        except LocalUsageError as e:  # more than 64 fragments (only handshake messages)
            raise TooLargeError(
                f"a {env.kind.name} message of {env.encoded_size()} bytes does not fit the "
                "room even in fragments: add fewer members per Commit (plugin option "
                "max_adds_per_commit)") from e

    def fits_one_stanza(self, env: Envelope) -> bool:
        """Whether ``env`` travels in one stanza, unfragmented."""
        return 4 * -(-env.encoded_size() // 3) <= self._budget  # its base64, not encoded

    async def _by_reference(self, env: Envelope) -> Envelope:
        """``env`` with its MLSMessage uploaded (``mls_message_ref``) if it needs
        more than one stanza.

        If the upload fails (e.g. the server has no upload service), a message
        the receivers' reassembly takes is sent in fragments instead.
        """
        if self.fits_one_stanza(env):
            return env
        try:
            ref = await self.upload(env.mls_message, "mls-message")
        except TransportError as e:
            if len(env.mls_message) <= self.reassembler.max_bytes:
                log.info("sending a message in fragments: upload failed (%s)", e)
                return env
            raise
        return replace(env, mls_message=b"", mls_message_ref=ref)

    async def _with_blobs(self, env: Envelope, ratchet_tree: bytes | None) -> Envelope:
        if ratchet_tree is not None:
            env = replace(env, ratchet_tree=await self.upload(ratchet_tree, "ratchet-tree"))
        return env

    async def send_room(self, room: str, env: Envelope, *, ratchet_tree: bytes | None = None,
                        by_reference: bool = False) -> None:
        """Send an envelope to the group's room (fragmented if needed).

        With ``by_reference``, an MLSMessage larger than one stanza is uploaded
        and sent as ``mls_message_ref`` instead of in fragments.

        :raises TooLargeError: even 64 fragments would not hold it.
        :raises TransportError: an upload failed.
        """
        env = await self.prepare_room(env, ratchet_tree=ratchet_tree, by_reference=by_reference)
        self.send_prepared(room, env)
        await asyncio.sleep(0)  # let the stream write (and read) between sends

    async def prepare_room(self, env: Envelope, *, ratchet_tree: bytes | None = None,
                           by_reference: bool = False) -> Envelope:
        """What :meth:`send_room` sends, with its uploads done (see there).

        :raises TransportError: an upload failed.
        """
        env = await self._with_blobs(env, ratchet_tree)
        if by_reference:
            env = await self._by_reference(env)
        return env

    def send_prepared(self, room: str, env: Envelope) -> None:
        """Hand a prepared envelope to the stream (in fragments if needed), at once.

        :raises TooLargeError: even 64 fragments would not hold it.
        """
        for piece in self._pieces(env):
            self._message(room, "groupchat", piece).send()

    async def send_welcome(self, jid: str, env: Envelope, *,
                           ratchet_tree: bytes | None = None) -> None:
        """Send a Welcome to a new member's bare JID (offline storage keeps it)."""
        env = await self._with_blobs(env, ratchet_tree)
        for piece in self._pieces(env):
            self._message(str(JID(jid).bare), "chat", piece).send()

    async def barrier(self, timeout: float | None = None) -> bool:
        """Whether the server took everything this stream sent before the call: one
        round trip (a disco#info query to the server, answered in the stream's
        order). ``False`` when no answer came within ``timeout`` (default 10 s), or
        at once when the stream went down meanwhile (what was handed to it may be
        lost). A server still working through what was sent answers late, not
        never: a caller that sent much gives a longer ``timeout``."""
        transport = getattr(self.xmpp, "transport", None)
        query = asyncio.ensure_future(self.xmpp.plugin["xep_0030"].get_info(
            jid=JID(self.xmpp.boundjid.domain), cached=False,
            timeout=timeout or min(self.timeout, 10.0)))
        try:
            while True:
                await asyncio.wait({query}, timeout=1.0)
                if query.done():
                    break
                if transport is None or getattr(self.xmpp, "transport", None) is not transport:
                    return False  # the stream that carried them is gone
            query.result()
        except IqError:
            return True  # an answer, even an error, comes after what was sent before
        except Exception:  # noqa: BLE001 - a timeout, or the stream gone
            return False
        finally:
            if not query.done():
                query.cancel()
        return True

    # -- reading stanzas -----------------------------------------------------------

    @staticmethod
    def room_stanza_id(msg: Any, room: str) -> str | None:
        """The stanza-id the room assigned (XEP-0359), or ``None``.

        Every ``<stanza-id/>`` is looked at, each through slixmpp's XEP-0359
        stanza class: ``msg["stanza_id"]`` would show only the first, and a
        message may carry several (one by the room, one by an account's archive).
        """
        for el in msg.xml.findall(f"{{{StanzaID.namespace}}}{StanzaID.name}"):
            sid = StanzaID(xml=el)
            if JID(sid["by"] or "").bare == JID(room).bare:
                return str(sid["id"]) if el.get("id") is not None else None
        return None

    @staticmethod
    def own_stanza_id(msg: Any, account: str) -> str | None:
        """The id the account's own archive gave a message sent to it, or ``None``."""
        return Delivery.room_stanza_id(msg, account)

    def envelope_of(self, msg: Any, sender: str) -> Envelope | None:
        """The envelope of a stanza; ``None`` while a fragmented message is incomplete."""
        el = msg.xml.find(f"{{{NS}}}mls")
        if el is None:
            raise EnvelopeError("no <mls/> payload")
        env = Envelope.from_base64(el.text or "")
        if env.fragment is not None:
            return self.reassembler.add(sender, env)
        return env

    async def resolve_payload(self, env: Envelope, *, domains: Iterable[str] = (),
                              timeout: float | None = None) -> bytes:
        """The MLSMessage bytes, downloading them when sent by reference
        (see :meth:`download` for ``domains`` and ``timeout``)."""
        if env.mls_message_ref is not None:
            return await self.download(env.mls_message_ref, domains=domains, timeout=timeout)
        return env.mls_message

    # -- HTTP File Upload (XEP-0363) ------------------------------------------------

    async def upload(self, data: bytes, name: str, *, split: bool = True) -> BlobRef:
        """Upload a blob; the reference carries its SHA-256 and size.

        A blob larger than :attr:`part_size` (below the server's upload limit:
        Prosody's default is 10 MiB) is uploaded in parts unless ``split`` is
        false; the reference lists them in order.
        """
        import io

        size = self.part_size if split and len(data) > self.part_size else len(data)
        urls = []
        for offset in range(0, len(data), size):
            piece = data[offset:offset + size]
            try:
                url = await self.xmpp.plugin["xep_0363"].upload_file(
                    f"{name}.bin", size=len(piece), content_type="application/octet-stream",
                    input_file=io.BytesIO(piece), timeout=self.timeout)
            except Exception as e:  # noqa: BLE001 - slixmpp raises many kinds here
                raise TransportError(f"upload failed: {e}") from e
            urls.append(str(url))
            self.blobs.learn_own(str(url))
        return BlobRef(url=urls[0], sha256=hashlib.sha256(data).digest(), size=len(data),
                       more_urls=tuple(urls[1:]), part_size=size if len(urls) > 1 else 0)

    async def download(self, ref: BlobRef, *, domains: Iterable[str] = (),
                       timeout: float | None = None) -> bytes:
        """Fetch a blob (every part) and check its size and SHA-256; refuse anything else.

        Only from the hosts :class:`~.blobs.Blobs` allows for ``domains`` (the
        XMPP servers in context: the room's, the sender's; this account's is
        always one), within ``timeout`` (default: option ``blob_timeout``).

        :raises BlobRefusedError: a URL is not one blobs are fetched from.
        :raises EnvelopeError: over ``blob_max_size``, or not the blob described.
        :raises TransportError: the download failed or ran out of time.
        """
        return await self.blobs.fetch(ref, domains, timeout=timeout)

    # -- rooms and archive -----------------------------------------------------------

    async def create_room(self, room: str, nick: str) -> None:
        """Create the group's room: members-only, persistent, archived."""
        await self.join_room(room, nick)
        muc = self.xmpp.plugin["xep_0045"]
        try:
            form = await muc.get_room_config(room, timeout=self.timeout)
            values = {
                "muc#roomconfig_membersonly": True,
                "muc#roomconfig_persistentroom": True,
                "muc#roomconfig_enablearchiving": True,
                "mam": True,  # ejabberd's field for archiving
                # real JIDs to the occupants: members reconcile affiliations, and a
                # room gives its affiliation lists to members that are not owners only
                # when whois is "anyone" (Prosody; docs/PROTOCOL.md, section 14)
                "muc#roomconfig_whois": "anyone",
                "muc#roomconfig_publicroom": False,
            }
            fields = form.get_fields()
            submit: Any = self.xmpp.plugin["xep_0004"].make_form(ftype="submit")
            for var, value in values.items():
                if var in fields:
                    submit.add_field(var=var, value=value)
            submit.add_field(var="FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig",
                             ftype="hidden")
            await muc.set_room_config(room, submit, timeout=self.timeout)
        except (IqError, IqTimeout) as e:
            raise TransportError(f"configuring {room} failed: {e}") from e

    async def join_room(self, room: str, nick: str) -> None:
        """Enter the room (no history: the archive is read separately)."""
        for hook in self.before_join:
            hook(room, nick)
        await join_muc(self.xmpp, room, nick, timeout=self.timeout)

    def leave_room(self, room: str, nick: str) -> None:
        """Leave the room (unavailable presence); nothing happens if not in it."""
        try:
            self.xmpp.plugin["xep_0045"].leave_muc(JID(room), nick)
        except KeyError:  # slixmpp did not have it as joined
            pass

    async def set_affiliation(self, room: str, jid: str,
                              affiliation: Literal["member", "admin", "owner", "none"]
                              ) -> None:
        """Make room affiliations follow MLS membership (see :mod:`.room`).

        :raises TransportError: the room refused (e.g. ``not-allowed``: this
            account's affiliation does not permit the change) or did not answer.
        """
        try:
            await self.xmpp.plugin["xep_0045"].set_affiliation(
                room, affiliation, jid=JID(jid).bare, timeout=self.timeout)
        except (IqError, IqTimeout) as e:
            raise TransportError(f"setting {jid} to {affiliation} in {room} failed: {e}") from e

    async def set_affiliations(self, room: str, changes: list[tuple[str, str]]) -> None:
        """Several affiliation changes in one ``muc#admin`` request (XEP-0045 §9.5, §10.6).

        A result does not prove that every item took effect (Prosody 0.12 applies
        only the first): :mod:`.affiliations` checks that before relying on it.

        :raises TransportError: the room refused the request or did not answer.
        :raises ValueError: an affiliation is not one of XEP-0045's.
        """
        from .room import RANK

        for _, affiliation in changes:
            if affiliation not in RANK:
                raise ValueError(f"{affiliation!r} is not an affiliation")
        try:
            await self.xmpp.plugin["xep_0045"].send_affiliation_list(
                room, [(JID(jid).bare, affiliation) for jid, affiliation in changes],
                timeout=self.timeout)
        except (IqError, IqTimeout) as e:
            raise TransportError(f"setting {len(changes)} affiliations in {room} failed: "
                                 f"{e}") from e

    async def affiliations(self, room: str) -> dict[str, str]:
        """The room's owners, admins and members (bare JID -> affiliation): three
        ``muc#admin`` queries, which a members-only room answers to its members.

        :raises TransportError: the room refused or did not answer.
        """
        from .room import LISTED

        muc = self.xmpp.plugin["xep_0045"]
        out: dict[str, str] = {}
        for affiliation in reversed(LISTED):  # the highest wins should a JID be listed twice
            try:
                jids = await muc.get_affiliation_list(room, affiliation, timeout=self.timeout)
            except (IqError, IqTimeout) as e:
                raise TransportError(f"reading the {affiliation}s of {room} failed: {e}") from e
            for jid in jids:
                out[str(JID(jid).bare)] = affiliation
        return out

    def _read_budget(self, where: str) -> _ReadBudget:
        cfg = self.config
        return _ReadBudget(where, int(cfg["archive_max_pages"]), float(cfg["archive_timeout"]))

    async def archive_pages(self, room: str | None, *, after: str | None = None,
                            start: datetime | None = None, page: int = 100
                            ) -> AsyncIterator[list[tuple[Any, str | None]]]:
        """Messages with an ``<mls/>`` payload from an archive (MAM), a page at a time.

        ``room`` is a room JID, or ``None`` for the account's own archive;
        only messages after the archive id ``after`` and, if given, stamped
        no earlier than ``start``; oldest first. Pages are yielded as they
        arrive, so a long archive is processed in bounded memory; a server
        that pages without moving forward is an error, and so is an archive
        longer than the read's budget (options ``archive_max_pages`` and
        ``archive_timeout``).

        :raises TransportError: the server refused or did not answer.
        :raises ArchiveBudgetError: the budget was spent before the archive's end.
        """
        # Paged by hand, not with slixmpp's xep_0313 iterate()/retrieve(iterator=True):
        # its RSM iterator (xep_0059) ends quietly on an error reply or timeout (a
        # failed read would look like the end of the archive, and the position would
        # move past a gap), ignores <fin complete='true'/>, and follows a server that
        # pages in a circle for ever. Here each page is bounded (``page``), an error
        # raises, a repeated page cursor is an error, and the whole read has a budget
        # of pages and time (against a server answering with a fresh cursor for ever).
        mam = self.xmpp.plugin["xep_0313"]
        cursor = after
        seen: set[str] = set()
        where = room or "the account's archive"
        budget = self._read_budget(where)
        while True:
            budget.page()
            rsm: dict[str, Any] = {"max": page}
            if cursor:
                rsm["after"] = cursor
            try:
                iq = await asyncio.wait_for(mam.retrieve(
                    jid=None if room is None else JID(room), start=start, rsm=rsm,
                    timeout=int(self.timeout)), budget.left())
            except TimeoutError as e:
                raise budget.spent() from e
            except (IqError, IqTimeout) as e:
                raise TransportError(f"archive query on {where} failed: {e}") from e
            results = iq["mam"]["results"]
            out = []
            for result in results:
                fwd = result["mam_result"]["forwarded"]["stanza"]
                if fwd.xml.find(f"{{{NS}}}mls") is not None:
                    out.append((fwd, result["mam_result"]["id"]))
            if out:
                yield out
            fin = iq["mam_fin"]
            last = fin["rsm"]["last"]
            if not results or fin["complete"] in (True, "true") or not last:
                return
            if last in seen:
                raise TransportError(f"the archive of {where} pages in a circle")
            seen.add(last)
            cursor = last

    async def fetch_archive(self, room: str | None, *, after: str | None = None,
                            start: datetime | None = None,
                            page: int = 100) -> list[tuple[Any, str | None]]:
        """All of :meth:`archive_pages` as one list (for short archives)."""
        out: list[tuple[Any, str | None]] = []
        async for batch in self.archive_pages(room, after=after, start=start, page=page):
            out += batch
        return out

    async def archive_pages_backward(self, room: str, *, page: int = 50
                                     ) -> AsyncIterator[list[tuple[Any, str | None]]]:
        """A room archive's ``<mls/>`` messages from the newest page back (each page oldest
        first), for finding the latest of something without reading the whole archive.
        Within the same budget as :meth:`archive_pages`.

        :raises TransportError: the server refused or did not answer.
        :raises ArchiveBudgetError: the budget was spent before the archive's start.
        """
        mam = self.xmpp.plugin["xep_0313"]
        pages: Any = mam.retrieve(jid=JID(room), iterator=True, reverse=True,
                                  rsm={"max": page})
        budget = self._read_budget(room)
        while True:
            budget.page()
            try:
                iq = await asyncio.wait_for(pages.__anext__(), budget.left())
            except StopAsyncIteration:
                return
            except TimeoutError as e:
                raise budget.spent() from e
            except (IqError, IqTimeout) as e:
                raise TransportError(f"archive query on {room} failed: {e}") from e
            out = []
            for result in iq["mam"]["results"]:
                fwd = result["mam_result"]["forwarded"]["stanza"]
                if fwd.xml.find(f"{{{NS}}}mls") is not None:
                    out.append((fwd, result["mam_result"]["id"]))
            yield out


class RoomRefused(TransportError):
    """The room refused to let this account in (``condition``: the XMPP error)."""

    def __init__(self, condition: str, message: str) -> None:
        super().__init__(message)
        self.condition = condition


async def join_muc(client: Any, room: str, nick: str, *, timeout: float = 30.0) -> None:
    """Join ``room`` as ``nick`` without history; fail fast when the room refuses.

    slixmpp only recognises error presences that echo the MUC ``<x/>``
    element; Prosody's refusals (members-only, locked room) do not, so this
    also watches every error presence from the room instead of waiting for the
    timeout. (Not the ``presence_error`` event: once a room was joined, slixmpp
    stops raising presence events for its JID, so a refusal on re-entry, e.g.
    after a kick, would go unseen.)

    :raises TransportError: refused, or no answer within ``timeout``.
    """
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[tuple[str, str]] = loop.create_future()
    bare = JID(room).bare

    def on_error(presence: Any) -> None:
        if presence["from"].bare == bare and not refused.done():
            error = presence["error"]
            refused.set_result((str(error["condition"]), str(error["text"])))

    join = asyncio.ensure_future(client.plugin["xep_0045"].join_muc_wait(
        JID(room), nick, maxstanzas=0, timeout=timeout))
    handler = f"mls room refusal {bare} {id(refused)}"
    client.register_handler(Callback(handler, StanzaPath("presence@type=error"), on_error))
    try:
        done, _ = await asyncio.wait([join, refused], timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if refused in done:
            condition, text = refused.result()
            raise RoomRefused(condition, f"{room} refused the join: {condition} {text}".strip())
        if join not in done:
            raise TransportError(f"joining {room} timed out")
        try:
            join.result()
        except Exception as e:  # noqa: BLE001 - presence errors and timeouts
            raise TransportError(f"joining {room} failed: {e!r}") from e
    finally:
        client.remove_handler(handler)
        if not join.done():
            join.cancel()
        refused.cancel()
