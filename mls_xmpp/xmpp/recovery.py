"""Knowing one's groups without local state, and rejoining them after state loss.

Every device records the rooms of its groups in a private PEP node of its
account (``urn:mls-xmpp:0:groups``, access model whitelist: only the account
reads it; one item per room, item id = room JID). A device whose store is gone
(a wiped phone, a reinstalled bot) reads that node, finds in each room's
archive the latest GroupInfo members publish after every Commit, and rejoins by
external Commit, removing the leaf it had before (same account, same device
name) -- RFC 9750 §3.1.2, RFC 9420 §12.4.3.2. Only the group whose group_id the
account recorded for the room is rejoined, and only by a device with a device
name (without one, its old leaf cannot be told from its account's other devices).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream import ET

from ..core.errors import LocalUsageError, MLSError, WrongGroupError
from ..core.group.client import leaf_device_id
from ..core.group.join import tree_from_group_info
from ..core.messages.credentials import credential_identity
from ..core.messages.framing import MLSMessage
from ..core.messages.group_info import GroupInfo
from ..core.messages.leaf_node import LeafNode
from .blobs import jid_domain, room_server_domains
from .envelope import Envelope, Kind
from .errors import EnvelopeError, TransportError
from .events import MLSErrorEvent
from .privacy import is_sealed, open_group_info, open_registry_key, seal_registry_key
from .stanza import NS

if TYPE_CHECKING:
    from .plugin import XEP_MLS

log = logging.getLogger(__name__)

GROUPS_NODE = "urn:mls-xmpp:0:groups"
_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
#: ``max_items`` asked for when a server refuses "max" in the node configuration.
_MAX_ITEMS_FALLBACK = "256"
#: publishes of a registry item after the node was configured (item-not-found retried)
_PUBLISH_ATTEMPTS = 3
#: seconds before the second publish (twice that before the third)
_RETRY_DELAY = 0.5


class NoGroupInfo(TransportError):
    """A recorded room holds no GroupInfo to rejoin from."""


class GroupRegistry:
    """The private list of this account's group rooms, on PEP."""

    def __init__(self, xmpp: Any, timeout: float = 10.0,
                 recovery_key: bytes | None = None) -> None:
        self.xmpp = xmpp
        self.timeout = timeout
        #: seals the groups' GroupInfo keys in the items (option ``recovery_key``)
        self.recovery_key = recovery_key

    @property
    def _own(self) -> JID:
        """This account's bare JID (known once the stream is bound)."""
        return JID(self.xmpp.boundjid.bare)

    @property
    def _pubsub(self) -> Any:
        return cast(Any, self.xmpp.plugin)["xep_0060"]

    def _options(self, form_type: str = _PUBLISH_OPTIONS) -> Any:
        form = cast(Any, Form)()
        form["type"] = "submit"
        form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
        form.add_field(var="pubsub#access_model", value="whitelist")
        form.add_field(var="pubsub#max_items", value="max")
        return form

    async def add(self, room: str, group_id: bytes, key: bytes | None = None) -> None:
        """Record a room this account is in, with its group's GroupInfo key (``key``,
        sealed under the recovery key when there is one: :mod:`.privacy`).

        Published with publish-options (whitelist, ``max_items`` max); a server
        that refuses them (ejabberd 23.01 knows no ``pubsub#max_items`` option)
        gets the node created or configured that way first, then the item
        without options.
        """
        el = ET.Element(f"{{{NS}}}group")
        el.set("room", room)
        el.set("group-id", group_id.hex())
        if key is not None:
            el.set("key", seal_registry_key(self.recovery_key, room, key))
        pubsub = self._pubsub
        jid = self._own
        try:
            await pubsub.publish(jid, GROUPS_NODE, id=room, payload=el,
                                 options=self._options(), timeout=self.timeout)
            return
        except IqError as e:
            log.info("publish-options for %s refused (%s); configuring the node",
                     GROUPS_NODE, e.condition)
        except IqTimeout as e:
            raise TransportError(f"recording {room} failed: {e}") from e
        for attempt in range(_PUBLISH_ATTEMPTS):
            await self._configure()
            try:
                await pubsub.publish(jid, GROUPS_NODE, id=room, payload=el,
                                     timeout=self.timeout)
                return
            except IqTimeout as e:
                raise TransportError(f"recording {room} failed: {e}") from e
            except IqError as e:
                # A two-node ejabberd cluster answered item-not-found now and then
                # to the publish right after the node's creation (CI, session 5):
                # configure and publish again after a short wait.
                if e.condition != "item-not-found" or attempt + 1 == _PUBLISH_ATTEMPTS:
                    raise TransportError(f"recording {room} failed: {e}") from e
                log.info("publishing to %s: item-not-found, again in %.1f s",
                         GROUPS_NODE, _RETRY_DELAY * (attempt + 1))
                await asyncio.sleep(_RETRY_DELAY * (attempt + 1))

    async def _configure(self) -> None:
        """Create the node whitelisted with room for every group, or configure it so.

        Best effort: what fails is logged, and the publish that follows decides.
        """
        pubsub = self._pubsub
        for max_items in ("max", _MAX_ITEMS_FALLBACK):
            form = self._options(_NODE_CONFIG)
            form.field["pubsub#max_items"]["value"] = max_items
            try:
                try:
                    await pubsub.create_node(self._own, GROUPS_NODE, config=form,
                                             timeout=self.timeout)
                except IqError as e:
                    if e.condition != "conflict":
                        raise
                    await pubsub.set_node_config(self._own, GROUPS_NODE, form,
                                                 timeout=self.timeout)
                return
            except (IqError, IqTimeout) as e:
                log.info("configuring %s (max_items %s) failed: %s", GROUPS_NODE, max_items, e)

    async def remove(self, room: str) -> None:
        """Forget a room (left or removed)."""
        try:
            await self._pubsub.retract(self._own, GROUPS_NODE,
                                                       room, timeout=self.timeout)
        except (IqError, IqTimeout) as e:
            log.info("retracting %s from %s: %s", room, GROUPS_NODE, e)

    async def rooms(self) -> list[str]:
        """The recorded rooms (none when the node does not exist)."""
        return list(await self.entries())

    async def entries(self) -> dict[str, bytes | None]:
        """The recorded rooms and the group_id recorded with each (``None`` when an
        item does not carry a readable one); empty when the node does not exist."""
        return {room: group_id for room, (group_id, _) in (await self.records()).items()}

    async def records(self) -> dict[str, tuple[bytes | None, bytes | None]]:
        """The recorded rooms, each with its group_id and GroupInfo key (``None`` when
        the item carries no readable one, e.g. sealed under another recovery key)."""
        try:
            iq = await self._pubsub.get_items(
                self._own, GROUPS_NODE, timeout=self.timeout)
        except IqError:
            return {}
        except IqTimeout as e:
            raise TransportError(f"reading {GROUPS_NODE} failed: {e}") from e
        out: dict[str, tuple[bytes | None, bytes | None]] = {}
        for item in iq["pubsub"]["items"]:
            room = item["id"]
            if not room or not JID(room).user:
                continue
            group_id = key = None
            payload = item["payload"]
            if payload is not None and payload.tag == f"{{{NS}}}group":
                try:
                    group_id = bytes.fromhex(payload.get("group-id") or "") or None
                except ValueError:
                    group_id = None
                key = open_registry_key(self.recovery_key, str(JID(room).bare),
                                        payload.get("key") or "")
            out[str(JID(room).bare)] = (group_id, key)
        return out


async def latest_group_info(plugin: XEP_MLS, room: str, group_id: bytes | None = None,
                            key: bytes | None = None
                            ) -> tuple[GroupInfo, bytes | None, str | None]:
    """The newest GroupInfo in the room's archive, its tree and its stanza-id.

    With ``group_id`` (the one the account's registry recorded for the room),
    GroupInfos of any other group are passed over and reported: any occupant
    can post to the room, and a recovering device must not be steered into a
    group it was never in. ``key`` opens sealed GroupInfos (:mod:`.privacy`);
    one that does not open is passed over.

    :raises NoGroupInfo: the archive holds no GroupInfo at all.
    :raises WrongGroupError: it holds GroupInfos, but none of ``group_id``.
    :raises LocalUsageError: it holds sealed GroupInfos of the group, and ``key``
        does not open them (missing, or sealed under another ``recovery_key``):
        nothing is decided about the room.
    """
    foreign = 0
    unopened = 0

    def newest(batch: list[tuple[Any, str | None]]
               ) -> tuple[Envelope, GroupInfo, str | None, str] | None:
        nonlocal foreign, unopened
        found = None
        for msg, stanza_id in batch:  # oldest first: keep the last
            try:
                env = plugin.delivery.envelope_of(msg, str(msg["from"]))
                if env is None or env.kind != Kind.GROUP_INFO:
                    continue
                if is_sealed(env.mls_message) and group_id in (None, env.group_id):
                    try:
                        open_group_info(key, env.group_id, env.epoch, env.mls_message)
                    except EnvelopeError:
                        unopened += 1
                        continue
                body = MLSMessage.decode(open_group_info(key, env.group_id, env.epoch,
                                                         env.mls_message)).body
                if not isinstance(body, GroupInfo):
                    raise EnvelopeError("GROUP_INFO envelope without a GroupInfo")
            except MLSError:
                continue
            if group_id is not None and (env.group_id != group_id
                                         or body.group_context.group_id != group_id):
                foreign += 1
                continue
            found = (env, body, stanza_id, _real_jid(msg))
        return found

    found: tuple[Envelope, GroupInfo, str | None, str] | None = None
    # newest page first: a long-lived room's archive is not read in full
    async for batch in plugin.delivery.archive_pages_backward(room):
        found = newest(batch)
        if found is not None:
            break
    if found is None:
        # slixmpp's backward pager ends quietly on an error: read forward, where a
        # failure raises TransportError instead of looking like an empty archive
        foreign = unopened = 0
        found = newest(await plugin.delivery.fetch_archive(room))
    if foreign:
        plugin.error(MLSErrorEvent(
            f"{room}'s archive holds {foreign} GroupInfo(s) of another group than the one "
            "this account recorded for it: ignored", error=WrongGroupError(
                "GroupInfo of another group in the room")))
    if found is None:
        if unopened:
            raise LocalUsageError(
                f"{room} holds {unopened} sealed GroupInfo(s) of the group this device cannot "
                "open: the account's registry has no GroupInfo key for it, or one sealed "
                "under another recovery_key (option)")
        if foreign:
            raise WrongGroupError(f"{room} holds no GroupInfo of the group this account "
                                  "recorded for it, only of others: not rejoining")
        raise NoGroupInfo(f"{room} holds no GroupInfo to rejoin from")
    env, body, stanza_id, poster_jid = found
    tree = None
    if env.ratchet_tree is not None:
        # from the room's server or the poster's (when the room says who posted it),
        # within the option blob_timeout (docs/PROTOCOL.md §11.2)
        domains = room_server_domains(room)
        if (poster := jid_domain(poster_jid)) is not None:
            domains.append(poster)
        tree = await plugin.delivery.download(env.ratchet_tree, domains=domains)
    return body, tree, stanza_id


def _real_jid(msg: Any) -> str:
    """The poster's real JID a non-anonymous room adds to a message (XEP-0045), or ""."""
    item = msg.xml.find("{http://jabber.org/protocol/muc#user}x/"
                        "{http://jabber.org/protocol/muc#user}item")
    return "" if item is None else str(item.get("jid") or "")


def _names(leaf: LeafNode, jid: str) -> bool:
    """Whether a leaf's credential (basic or X.509) names ``jid``."""
    try:
        return credential_identity(leaf.credential) == jid.encode()
    except MLSError:
        return False


def old_leaf(info: GroupInfo, tree_bytes: bytes | None, jid: str,
             device_id: bytes | None) -> int | None:
    """This device's previous leaf: same account and same device name.

    Without a device name nothing is removed: another device of the same
    account must never be taken for this one (it joins as one more leaf).
    """
    if device_id is None:
        return None
    tree = tree_from_group_info(info, tree_bytes, info.group_context.cipher_suite)
    mine = [i for i, leaf in tree.leaves()
            if _names(leaf, jid) and leaf_device_id(leaf) == device_id]
    return mine[0] if len(mine) == 1 else None


async def retract_stale_device_items(plugin: XEP_MLS, device_id: bytes) -> int:
    """Retract KeyPackages a previous incarnation of this device left on PEP.

    A wiped device cannot retract its old KeyPackages; if an adder used one,
    the group would get a leaf nobody holds. Items naming this device (same
    application_id) but another signature key are that previous incarnation's.
    """
    from .keystore import decode_item

    keystore = plugin.keystore
    client = plugin.identity
    if keystore is None or client is None:
        return 0
    # this device's keys of every suite it supports (mls_xmpp.xmpp.suites) are its own
    own = {c.signature_public_key for c in (client, *plugin.identities.values())}
    retracted = 0
    for item_id, payload in await keystore._get_items(plugin.bare_jid):
        try:
            kp, _ = decode_item(payload)
        except MLSError:
            continue
        leaf = kp.leaf_node
        if (leaf_device_id(leaf) == device_id
                and leaf.signature_key not in own):
            retracted += await keystore.retract(bytes.fromhex(item_id))
    return retracted
