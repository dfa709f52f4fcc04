"""New and removed devices of member accounts, from their device lists on PEP (RFC 9750 §6.7).

Every device announces itself on its account's device list, the PEP node
:data:`DEVICES_NODE` (access model ``open``; one item per device, item id =
:func:`~mls_xmpp.xmpp.keystore.device_fingerprint` of its signature key, the
payload ``<device xmlns='urn:mls-xmpp:0' name='phone'/>``), after its
KeyPackages are on the KeyPackage node. A device publishes its item only when
it is not there yet, so a device the account took off its list is not put back
by a restart of some other device.

Each device subscribes explicitly (XEP-0060 §6.1, subscriber: its bare JID) to
the device lists of the accounts it shares a group with, its own included (in a
group of more than ``watching.WATCH_ALL_MAX`` accounts only those it may act on,
:mod:`.watching`); an
explicit subscription works for accounts that are not roster contacts, where
presence-based ``+notify`` would need a presence subscription and entity caps.

* An item published on an account's list whose device is not in a shared group
  is a new device: ONE member device of the group adds it -- the first, by
  leaf index, of the devices whose accounts the group's rules allow to add,
  devices of the new device's own account first. The next ones follow, each
  ``device_add_delay`` seconds after the one before, only if the device is still
  missing (at most :data:`ADDERS` try), so no group sees a burst of competing
  Commits and an offline first choice does not stop the addition. A device is
  added only after the local trust checks (:mod:`.trust`): a key the user
  distrusts, or one that would be ``new`` (unverified while another device of
  the account is verified), or one ``refuse_send_to`` refuses, is held and
  reported (``mls_device`` with ``action="held"``) for the user to decide.
* An item retracted from an account's list removes that device from every
  shared group, by the same choice of one remover (rules: ``remove``), after
  reading the list again: a stale or forged retraction of a device still listed
  changes nothing. Every member that sees the device unlisted also marks its key
  ``distrusted`` in its trust store (``mls_trust``), so that the device, should
  it announce itself again (a stolen phone keeps its state), is held, not added.

The server can forge both (it runs PEP): a forged new device still needs a valid
KeyPackage whose credential names the account, and it is shown to users as a
new device (``mls_trust``); a forged retraction removes a device, which the
server could equally keep from its groups by dropping its stanzas. Validity of
the Commits that follow is decided by the group's rules alone, as for any Commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from ..core.errors import MLSError
from .events import MLSErrorEvent
from .keystore import _form, device_fingerprint
from .stanza import NS
from .trust import TrustState, fingerprint

if TYPE_CHECKING:
    from .plugin import XEP_MLS
    from .session import GroupSession

__all__ = ["ADDERS", "DEVICES_NODE", "DeviceEvent", "DeviceWatch", "short_fingerprint"]

log = logging.getLogger(__name__)

#: The PEP node of an account's device list.
DEVICES_NODE = "urn:mls-xmpp:0:devices"
#: How many member devices, one after the other, try to add (or remove) a device.
ADDERS = 3

_EVENT_NS = "http://jabber.org/protocol/pubsub#event"
_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"


@dataclass(frozen=True)
class DeviceEvent:
    """``mls_device``: a member account's device list changed, and what this device did.

    ``action`` is ``"added"`` (this device's Commit added the new device),
    ``"removed"`` (this device's Commit removed a device taken off its account's
    list) or ``"held"`` (a new device was not added: ``reason`` says which trust
    check held it; the user may verify or trust it and add it with
    ``group.add_key_packages``, or wait for it to be added by another member).
    """

    group: GroupSession
    jid: str
    fingerprint: str
    action: str
    reason: str = ""


def short_fingerprint(item_id: str) -> str:
    """The :func:`~mls_xmpp.xmpp.trust.fingerprint` form of a device-list item id
    (the full SHA-256 of the signature key, lower-case hex)."""
    raw = item_id.lower()
    return " ".join(raw[i:i + 8] for i in range(0, 32, 8))


class DeviceWatch:
    """This account's device list and the watch on the lists of its groups' accounts."""

    def __init__(self, plugin: XEP_MLS, timeout: float = 10.0) -> None:
        self.plugin = plugin
        self.timeout = timeout
        #: accounts whose list this stream subscribed to
        self._subscribed: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        #: (group room, fingerprint) handled right now: one task each
        self._busy: set[tuple[str, str]] = set()
        #: (account, item id) -> the device's fingerprints by cipher suite
        self._known: dict[tuple[str, str], dict[int, str]] = {}

    @property
    def _pubsub(self) -> Any:
        return cast(Any, self.plugin.xmpp.plugin)["xep_0060"]

    @property
    def enabled(self) -> bool:
        """Option ``device_list``."""
        return bool(self.plugin.config["device_list"])

    def register(self) -> None:
        """Listen to device-list notifications (called once by the plugin)."""
        self.plugin.xmpp.register_handler(Callback(
            "mls device list", MatchXPath(
                f"{{{self.plugin.xmpp.default_ns}}}message/{{{_EVENT_NS}}}event"),
            self._on_event))

    def unregister(self) -> None:
        """Stop listening and drop pending work."""
        self.plugin.xmpp.remove_handler("mls device list")
        for task in list(self._tasks):
            task.cancel()

    def stream_started(self) -> None:
        """A new stream: subscriptions are confirmed again (they are cheap and idempotent)."""
        self._subscribed.clear()

    def _spawn(self, job: Any) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- this account's list ---------------------------------------------------------

    async def listed(self, jid: str) -> set[str] | None:
        """The device fingerprints (item ids) on ``jid``'s list; ``None`` when the list
        cannot be read (no node, or an error: nothing is decided from it)."""
        items = await self._items(jid)
        return None if items is None else set(items)

    async def _items(self, jid: str) -> dict[str, str] | None:
        """``jid``'s list: fingerprint -> device name (``""`` without one); the keys of
        each device (one per cipher suite) are remembered (:meth:`keys_of`)."""
        try:
            reply = await self._pubsub.get_items(jid, DEVICES_NODE, timeout=self.timeout)
        except (IqError, IqTimeout) as e:
            log.info("reading the device list of %s: %s", jid, e)
            return None
        out = {}
        for item in reply["pubsub"]["items"]:
            item_id = str(item["id"]).lower()
            name, keys = _parse(item["payload"])
            out[item_id] = name
            self._known[(jid, item_id)] = keys
        return out

    def keys_of(self, jid: str, item_id: str) -> dict[int, str]:
        """The device's key fingerprints by cipher suite, as its item last showed them
        (a device has one identity per suite); an item without them: its id, for any."""
        return self._known.get((jid, item_id)) or {}

    def _fingerprint_for(self, jid: str, item_id: str, suite: int) -> str | None:
        """The fingerprint device ``item_id`` has in cipher ``suite``; ``None``: none."""
        keys = self.keys_of(jid, item_id)
        if not keys:
            return item_id  # an item naming no suites: its one key
        return keys.get(suite)

    def _own_fingerprints(self) -> set[str]:
        return {device_fingerprint(c.signature_public_key)
                for c in [*self.plugin.identities.values(), self.plugin.identity] if c}

    async def announce(self) -> None:
        """Put this device on its account's list, unless it is there already."""
        identity = self.plugin.identity
        if identity is None:
            return
        own = self.plugin.bare_jid
        fp = device_fingerprint(identity.signature_public_key)
        name = (identity.device_id or b"").decode("utf-8", "replace")
        listed = await self._items(own) or {}
        if name:  # an earlier incarnation of this device (its state was lost): unlisted,
            # so members remove its leaf where it is still one (as its KeyPackages are
            # retracted, recovery.retract_stale_device_items)
            for old, old_name in sorted(listed.items()):
                if old != fp and old_name == name:
                    await self._retract(old)
        identities = {**self.plugin.identities, identity.suite_id: identity}
        keys = {suite: device_fingerprint(c.signature_public_key)
                for suite, c in sorted(identities.items())}
        if fp in listed and self._known.get((own, fp)) == keys:
            return
        payload = ET.Element(f"{{{NS}}}device")
        if name:
            payload.set("name", name)
        for suite, key in keys.items():  # one identity per cipher suite
            el = ET.SubElement(payload, f"{{{NS}}}key")
            el.set("suite", str(suite))
            el.text = key
        options = _form(_PUBLISH_OPTIONS, {"pubsub#access_model": "open",
                                           "pubsub#max_items": "max"})
        try:
            await self._pubsub.publish(own, DEVICES_NODE, id=fp, payload=payload,
                                       options=options, timeout=self.timeout)
        except IqError:
            try:  # a server that refuses the options: the node's defaults
                await self._pubsub.publish(own, DEVICES_NODE, id=fp, payload=payload,
                                           timeout=self.timeout)
            except (IqError, IqTimeout) as e:
                self.plugin.error(MLSErrorEvent(f"announcing this device failed: {e}"))
        except IqTimeout as e:
            self.plugin.error(MLSErrorEvent(f"announcing this device failed: {e}"))

    async def unlink(self, device: str) -> bool:
        """Take a device of this account off its list (e.g. a lost phone); members then
        remove it from the account's groups. ``device`` is its fingerprint, in either
        form (:func:`~mls_xmpp.xmpp.trust.fingerprint`, or the full SHA-256 hex).

        :returns: whether an item was retracted.
        """
        want = "".join(device.split()).lower()
        listed = await self.listed(self.plugin.bare_jid) or set()
        gone = False
        for item_id in sorted(listed):
            if want and item_id.startswith(want):
                gone = await self._retract(item_id) or gone
        return gone

    async def _retract(self, item_id: str) -> bool:
        try:
            await self._pubsub.retract(self.plugin.bare_jid, DEVICES_NODE, item_id,
                                       notify=True, timeout=self.timeout)
        except (IqError, IqTimeout) as e:
            log.info("retracting device %s: %s", item_id, e)
            return False
        return True

    # -- following the others --------------------------------------------------------

    async def watch(self, jids: Iterable[str]) -> None:
        """Subscribe to the device lists of ``jids`` not yet subscribed in this stream."""
        if not self.enabled or not self.plugin.connected:
            return
        own = self.plugin.bare_jid
        for jid in sorted(set(jids) - self._subscribed):
            self._subscribed.add(jid)
            try:
                await self._pubsub.subscribe(jid, DEVICES_NODE, subscribee=own,
                                             timeout=self.timeout)
                await self._items(jid)  # the devices' keys, for retractions to come
            except (IqError, IqTimeout) as e:
                # no list yet (Prosody answers "forbidden" for a missing node: a client
                # without this feature, or not started yet): tried again at the next
                # membership change, KeyPackage upkeep or stream
                self._subscribed.discard(jid)
                log.info("subscribing to the device list of %s: %s", jid, e)

    def watch_groups(self) -> None:
        """Follow the lists of the accounts in this device's groups (in the background):
        every account's in a small group, in a large one only those this device may act
        on (:func:`~.watching.followed_accounts`)."""
        from .watching import followed_accounts

        jids = {self.plugin.bare_jid}
        for session in self.plugin.sessions.values():
            jids |= followed_accounts(session, self.plugin.bare_jid)
        self._spawn(self.watch(jids))

    def _on_event(self, msg: Any) -> None:
        if not self.enabled:
            return
        try:
            owner = str(JID(str(msg["from"])).bare)
        except InvalidJID:
            return
        event = msg.xml.find(f"{{{_EVENT_NS}}}event")
        items = None if event is None else event.find(f"{{{_EVENT_NS}}}items")
        if items is None or items.get("node") != DEVICES_NODE:
            return
        for item in items.findall(f"{{{_EVENT_NS}}}item"):
            fp = (item.get("id") or "").lower()
            if _is_fingerprint(fp):
                self._known[(owner, fp)] = _parse(item.find(f"{{{NS}}}device"))[1]
                self._spawn(self._listed_device(owner, fp))
        for item in items.findall(f"{{{_EVENT_NS}}}retract"):
            fp = (item.get("id") or "").lower()
            if _is_fingerprint(fp):
                self._spawn(self._unlisted_device(owner, fp))

    # -- acting on one change ------------------------------------------------------------

    def _shared(self, jid: str) -> list[GroupSession]:
        return [s for s in self.plugin.sessions.values()
                if not s.removed and s.suspended is None and jid in s.jids()]

    async def _listed_device(self, jid: str, item_id: str) -> None:
        """``jid`` listed device ``item_id``: add it to the shared groups it is not in
        (with its key of each group's cipher suite; a group of a suite it has no key
        of is left alone)."""
        own = self._own_fingerprints()
        if item_id in own:
            return  # this device
        every = {item_id, *self.keys_of(jid, item_id).values()}
        for session in self._shared(jid):
            fp = self._fingerprint_for(jid, item_id, session.group.state.suite.id)
            if fp is None or fp in own or any(_has(session, f) for f in every):
                continue
            self._spawn(self._one(session, jid, fp, add=True))

    async def _unlisted_device(self, jid: str, item_id: str) -> None:
        """``jid`` took device ``item_id`` off its list: remove it (each of its keys), once
        the list confirms it."""
        every = {item_id, *self.keys_of(jid, item_id).values()}
        if every & self._own_fingerprints():
            return  # this device: the others remove it
        if not any(_has(s, f) for s in self._shared(jid) for f in every):
            return
        listed = await self.listed(jid)
        if listed is None or item_id in listed:
            return  # unreadable, or listed again: nothing is decided
        for fp in sorted(every):
            self._distrust(jid, fp)
        for session in self._shared(jid):
            for fp in sorted(every):
                if _has(session, fp) is not None:
                    self._spawn(self._one(session, jid, fp, add=False))

    def _distrust(self, jid: str, fp: str) -> None:
        """The account took the device off its list: its key is distrusted here, so that
        it is not added again if it announces itself anew (a stolen phone keeps its
        state; only the members' memory keeps it out). Local data, as any trust decision."""
        trust = self.plugin.trust
        short = short_fingerprint(fp)
        record = trust.record(jid, short)
        if record is None or record.state == TrustState.DISTRUSTED:
            return
        try:
            change = trust.distrust(jid, short)
        except (KeyError, MLSError) as e:
            log.info("distrusting unlisted device %s of %s: %s", short, jid, e)
            return
        self.plugin.xmpp.event("mls_trust", change)

    def _held(self, jid: str, fp: str) -> str | None:
        """Why the local trust checks hold a new device back, or ``None``."""
        trust = self.plugin.trust
        short = short_fingerprint(fp)
        record = trust.record(jid, short)
        if record is not None:
            state = record.state
        elif trust.blind_trust and not any(
                r.state == TrustState.VERIFIED for r in trust.devices(jid)):
            state = TrustState.TRUSTED
        else:
            state = TrustState.NEW
        refuse = self.plugin.config["refuse_send_to"]
        if state == TrustState.DISTRUSTED:
            return "the user distrusts this key"
        if state == TrustState.NEW:
            return "an unverified key while another device of the account is verified"
        if refuse == "unverified" and state != TrustState.VERIFIED:
            return "refuse_send_to='unverified' and the key is not verified"
        return None

    async def _one(self, session: GroupSession, jid: str, fp: str, *, add: bool) -> None:
        key = (session.room, fp)
        if key in self._busy:
            return
        self._busy.add(key)
        try:
            await self._act(session, jid, fp, add=add)
        except MLSError as e:
            what = "adding" if add else "removing"
            self.plugin.error(MLSErrorEvent(
                f"{what} device {short_fingerprint(fp)} of {jid}: {e}", session, error=e))
        finally:
            self._busy.discard(key)

    async def _act(self, session: GroupSession, jid: str, fp: str, *, add: bool) -> None:
        if add and (reason := self._held(jid, fp)) is not None:
            self.plugin.xmpp.event("mls_device", DeviceEvent(
                session, jid, short_fingerprint(fp), "held", reason))
            return
        if not add and _has(session, fp) == _own_key(session):
            return  # this device was unlisted: another member removes it
        rank = actor_rank(session, jid, add=add, exclude=fp)
        if rank is None or rank >= ADDERS:
            return
        delay = float(self.plugin.config["device_add_delay"])
        await asyncio.sleep(delay * rank)
        if session.removed or self.plugin.sessions.get(session.room) is not session:
            return
        present = _has(session, fp)
        if add:
            if present is not None or jid not in session.jids():
                return  # another member was quicker, or the account left
            suite = session.group.state.suite.id
            keystore = self.plugin.keystores.get(suite) or self.plugin.keystore
            if keystore is None:
                return
            found = [f for f in await keystore.fetch(jid, suite_id=suite) if f.device == fp]
            if not found:
                self.plugin.error(MLSErrorEvent(
                    f"new device {short_fingerprint(fp)} of {jid} has no usable KeyPackage: "
                    "not added", session))
                return
            await session.add_key_packages([found[0].key_package])
            if _has(session, fp) is not None:
                self.plugin.xmpp.event("mls_device", DeviceEvent(
                    session, jid, short_fingerprint(fp), "added"))
        else:
            if present is None:
                return
            await session.remove_device(fingerprint(present))
            self.plugin.xmpp.event("mls_device", DeviceEvent(
                session, jid, short_fingerprint(fp), "removed"))


def actor_rank(session: GroupSession, jid: str, *, add: bool, exclude: str = "") -> int | None:
    """This device's place among the members that may add (``add``) or remove a device
    of account ``jid``: devices whose accounts the group's rules allow it, those of
    ``jid`` itself first, then by leaf index; never the device ``exclude`` (full
    fingerprint: the one being removed). ``None``: this device may not.

    Computed from the group state alone, so every member comes to the same order.
    """
    from .rules import DEFAULT_RULES, Who, rules_of
    from .session import member_jid

    try:
        rules = rules_of(session.group.state.context.extensions)
    except MLSError:
        rules = DEFAULT_RULES
    who = rules.add if add else rules.remove

    def allowed(account: str) -> bool:
        return who == Who.MEMBERS or (who == Who.ADMINS and account.encode() in rules.admins)

    order = sorted((member_jid(m) != jid, m.leaf_index) for m in session.group.members
                   if allowed(member_jid(m))
                   and device_fingerprint(m.signature_key) != exclude)
    own = session.group.own_leaf_index
    leaves = [leaf for _, leaf in order]
    return leaves.index(own) if own in leaves else None


def _has(session: GroupSession, fp: str) -> bytes | None:
    """The signature key of the member device with fingerprint ``fp`` (full hex), or None."""
    for m in session.group.members:
        if device_fingerprint(m.signature_key) == fp:
            return m.signature_key
    return None


def _is_fingerprint(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _own_key(session: GroupSession) -> bytes | None:
    identity = session.plugin.identity
    return None if identity is None else identity.signature_public_key


def _parse(payload: Any) -> tuple[str, dict[int, str]]:
    """A ``<device/>`` payload: its name and its keys by cipher suite (malformed parts
    left out)."""
    if payload is None or payload.tag != f"{{{NS}}}device":
        return "", {}
    keys = {}
    for el in payload.findall(f"{{{NS}}}key"):
        suite, fp = el.get("suite") or "", (el.text or "").strip().lower()
        if suite.isdigit() and _is_fingerprint(fp):
            keys[int(suite)] = fp
    return str(payload.get("name") or ""), keys
