"""The KeyPackage store: one PEP node per account, one item per KeyPackage.

Every device of an account publishes its KeyPackages (RFC 9420 §10) to the
account's PEP (XEP-0163) node :data:`NODE`; adders fetch them from there. This
is the "key storage and retrieval" part of the MLS Delivery Service (RFC 9750
§5.1). The node is configured with ``pubsub#access_model = open`` (anyone may
fetch) and ``pubsub#max_items`` = :data:`DEFAULT_MAX_ITEMS` (below Prosody's
``pep_max_items`` limit of 256).

Item layout::

    <item id='{KeyPackageRef, lower-case hex}'>
      <key-package xmlns='urn:mls-xmpp:0'>{base64 of KeyPackageItem}</key-package>
    </item>

``KeyPackageItem`` is the protobuf message of ``proto/mls_xmpp/v1/keypackage.proto``
(wrapped and checked by :class:`mls_xmpp.xmpp.envelope.KeyPackageItem`); its
``key_package`` field holds the RFC 9420 MLSMessage (wire format
``mls_key_package``). Its ``device`` field is a label (:func:`device_fingerprint`
of the publisher's signature key) and its ``last_resort`` flag a hint: readers
trust only the signed KeyPackage.

Publishing. Items are published with publish-options (``access_model``,
``max_items``). Servers treat those as preconditions on an existing node
(Prosody 0.12 answers ``conflict`` + ``precondition-not-met`` when the node's
configuration differs) or reject them outright (ejabberd 23.01 refuses
``pubsub#max_items`` with ``resource-constraint``); then the store configures the
node itself (creating it if needed), keeping a larger ``max_items`` it finds,
and publishes again, without options if the server still refuses them.

Fetching. Every item is untrusted: it is decoded, its KeyPackage validated
(RFC 9420 §10.1 with the current time), its item id compared with the
KeyPackageRef, and its credential checked against the node owner (the JID it
names -- a basic credential's identity, or an X.509 certificate's
subjectAltName -- must be the owner's bare JID, UTF-8, in canonical form). An
X.509 credential must also lead to one of this device's trust anchors at the
current time; without anchors, none is used. Items failing any check are
skipped with a log line. One KeyPackage per device (signature key)
is returned, a normal one in preference to the last-resort one.

XMPP failures (error replies, timeouts) raise :class:`TransportError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID
from slixmpp.plugins.xep_0004 import Form

from ..core.crypto import CipherSuite, get_suite
from ..core.errors import LocalUsageError, MLSError, UntrustedCredentialError, ValidationError
from ..core.group.client import Client
from ..core.messages.common import CredentialType, ExtensionType
from ..core.messages.credentials import Credential, credential_identity
from ..core.messages.framing import MLSMessage
from ..core.messages.key_package import KeyPackage
from ..core.messages.validation import (
    CredentialValidator,
    ValidatedKeyPackage,
    accept_any_credential,
    validate_key_package,
)
from ..core.messages.x509 import TrustAnchors
from .envelope import KeyPackageItem
from .errors import EnvelopeError, TransportError

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_POOL_SIZE",
    "ELEMENT",
    "NODE",
    "NS",
    "FetchedKeyPackage",
    "KeyPackageStore",
    "OwnItem",
    "TransportError",  # re-exported from mls_xmpp.xmpp.errors
    "credential_jid",
    "decode_item",
    "device_fingerprint",
    "encode_item",
]

log = logging.getLogger(__name__)

#: The project's namespace.
NS = "urn:mls-xmpp:0"
#: Element name of an item's payload.
ELEMENT = "key-package"
#: The PEP node holding an account's KeyPackages.
NODE = "urn:mls-xmpp:0:key-packages"
#: ``pubsub#max_items`` asked for: room for a few devices' pools, under
#: Prosody's ``pep_max_items`` (256), the largest value it accepts.
DEFAULT_MAX_ITEMS = 100
#: KeyPackages :meth:`KeyPackageStore.publish_pool` makes besides the last-resort one.
DEFAULT_POOL_SIZE = 10
#: :meth:`KeyPackageStore.renew` withdraws a KeyPackage this long before it expires...
RENEW_BEFORE = 7 * 24 * 3600
#: ...and forgets its private keys this long after (a Welcome may still be on its way).
KEEP_AFTER = 7 * 24 * 3600
#: Upper bound for ``max_items``: Prosody's default ``pep_max_items``.
PEP_MAX_ITEMS_LIMIT = 256

_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
_NS_PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
#: Error replies to a publish with options that mean "the options were not
#: accepted" rather than "publishing failed": the store then configures the
#: node itself. ``conflict``/``precondition-not-met``: Prosody, node configured
#: differently; ``bad-request``/``not-acceptable``: servers that reject a field;
#: ``resource-constraint``: ejabberd 23.01, which knows no ``pubsub#max_items``
#: publish-option ("Unknown field"); ``feature-not-implemented``: no
#: publish-options support. Should the plain publish after that fail too, its
#: error is raised.
_OPTIONS_REFUSED = frozenset(
    {"conflict", "bad-request", "not-acceptable", "resource-constraint",
     "feature-not-implemented"}
)
#: Error conditions on reading a node that mean "no KeyPackages there": the
#: node does not exist, or we may not see it (Prosody: ``forbidden`` for a
#: missing node of a non-contact; XEP-0060 §6.5.9: ``not-allowed`` +
#: ``closed-node`` for a whitelist node, as ejabberd answers, ``not-authorized``
#: for presence or roster access).
_NO_NODE = frozenset({"item-not-found", "forbidden", "not-allowed", "not-authorized"})
#: Publishes in flight at once after the first one of a batch.
_CONCURRENCY = 8


# -- item encoding ---------------------------------------------------------------------


def device_fingerprint(signature_key: bytes) -> str:
    """The device label of a signature key: SHA-256 of it, lower-case hex."""
    return hashlib.sha256(signature_key).hexdigest()


def encode_item(key_package: KeyPackage, *, last_resort: bool, device: str) -> ET.Element:
    """The ``<key-package xmlns='urn:mls-xmpp:0'/>`` payload of one PEP item."""
    item = KeyPackageItem(key_package=MLSMessage(key_package).encode(),
                          last_resort=last_resort, device=device)
    element = ET.Element(f"{{{NS}}}{ELEMENT}")
    element.text = item.to_base64()
    return element


def decode_item(element: ET.Element | None) -> tuple[KeyPackage, KeyPackageItem]:
    """Decode an item payload into its KeyPackage (not yet validated) and item.

    :raises EnvelopeError: the payload is missing or not ours, is not a valid
        :class:`KeyPackageItem` (base64, protobuf, mapping version), or its
        MLSMessage carries something other than a KeyPackage.
    :raises mls_xmpp.core.errors.DecodeError: the MLSMessage does not decode.
    """
    if element is None or element.tag != f"{{{NS}}}{ELEMENT}":
        tag = None if element is None else element.tag
        raise EnvelopeError(f"item payload is {tag!r}, not {{{NS}}}{ELEMENT}")
    item = KeyPackageItem.from_base64((element.text or "").strip())
    message = MLSMessage.decode(item.key_package)
    if not isinstance(message.body, KeyPackage):
        raise EnvelopeError(
            f"MLSMessage carries a {type(message.body).__name__}, not a KeyPackage")
    return message.body, item


def credential_jid(credential: Credential) -> str:
    """The bare JID a credential names.

    A basic credential's identity, or an X.509 credential's subjectAltName
    JID (:func:`~mls_xmpp.core.messages.credentials.credential_identity`): a
    bare JID in UTF-8, in canonical form (the form members compare).

    :raises ValidationError: another credential type, an X.509 chain that
        fails the structural checks, or an identity that is not a bare JID in
        canonical form.
    """
    if credential.credential_type not in (CredentialType.BASIC, CredentialType.X509):
        raise ValidationError(
            f"credential type {credential.credential_type} does not name a JID the key store "
            "can check (only basic and x509 credentials)"
        )
    identity = credential_identity(credential)
    try:
        text = identity.decode("utf-8")
        jid = JID(text)
    except (UnicodeDecodeError, InvalidJID) as e:
        raise ValidationError(f"credential identity is not a JID: {e}") from None
    if not jid.user or jid.resource:
        raise ValidationError(f"credential identity {jid.full!r} is not a bare user JID")
    if str(jid.bare) != text:
        raise ValidationError(f"credential identity {text!r} is not in canonical form "
                              f"({str(jid.bare)!r})")
    return str(jid.bare)


def _is_last_resort(key_package: KeyPackage) -> bool:
    """Whether the (signed) KeyPackage carries the last_resort extension."""
    return any(e.extension_type == ExtensionType.LAST_RESORT for e in key_package.extensions)


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchedKeyPackage:
    """A KeyPackage fetched from ``jid``'s node that passed every check.

    ``validated`` is the core's :class:`ValidatedKeyPackage` (RFC 9420 §10.1);
    ``last_resort`` comes from the signed KeyPackage extension, not from the
    item's unauthenticated flag.
    """

    jid: str  #: the node owner, which the credential names
    item_id: str  #: the PEP item id (== ``ref.hex()``)
    validated: ValidatedKeyPackage
    last_resort: bool

    @property
    def key_package(self) -> KeyPackage:
        """The validated KeyPackage."""
        return self.validated.key_package

    @property
    def ref(self) -> bytes:
        """The KeyPackageRef (RFC 9420 §5.2)."""
        return self.validated.ref

    @property
    def signature_key(self) -> bytes:
        """The device's signature key: one device, one signature key."""
        return self.validated.key_package.leaf_node.signature_key

    @property
    def device(self) -> str:
        """The device's fingerprint (:func:`device_fingerprint` of its signature key)."""
        return device_fingerprint(self.signature_key)


@dataclass(frozen=True)
class OwnItem:
    """An item of the own node that belongs to this device (see :meth:`KeyPackageStore.own_items`).

    ``usable`` is true when this device still holds the KeyPackage's private keys.
    """

    item_id: str
    ref: bytes
    last_resort: bool
    usable: bool


# -- the store -------------------------------------------------------------------------


class KeyPackageStore:
    """Publish, refill, retract and fetch KeyPackages in PEP.

    :param xmpp: a connected slixmpp client with plugins ``xep_0004`` and
        ``xep_0060`` registered (``xep_0163`` for PEP notifications is optional).
    :param client: the MLS device whose KeyPackages are published; its
        credential must name the account's bare JID.
    :param max_items: ``pubsub#max_items`` for the node (1-256; Prosody caps
        PEP nodes at ``pep_max_items``, 256 by default).
    :param timeout: seconds to wait for each XMPP reply.
    :param credential_validator: the Authentication Service hook given to
        :func:`validate_key_package` for fetched KeyPackages (the JID check of
        credentials is always applied).
    :param anchors: this device's X.509 trust anchors; a fetched KeyPackage
        with an X.509 credential is used only if its chain leads to one of them
        (none is used without anchors). Local judgement: it decides what this
        device adds, never what is valid.
    """

    def __init__(
        self,
        xmpp: Any,
        client: Client,
        *,
        max_items: int = DEFAULT_MAX_ITEMS,
        timeout: float = 10.0,
        credential_validator: CredentialValidator = accept_any_credential,
        anchors: TrustAnchors | None = None,
    ) -> None:
        if not 1 <= max_items <= PEP_MAX_ITEMS_LIMIT:
            raise LocalUsageError(f"max_items must be 1..{PEP_MAX_ITEMS_LIMIT}, not {max_items}")
        self.xmpp = xmpp
        self.client = client
        self.max_items = max_items
        self.timeout = timeout
        self.credential_validator = credential_validator
        self.anchors = anchors
        #: ``pubsub#max_items`` sent as publish-option (what the node has, once known).
        self._option_max_items = str(max_items)
        #: False once the server refused publish-options on a node we configured.
        self._options_supported = True
        self._configure_lock = asyncio.Lock()

    # -- properties --------------------------------------------------------------------

    @property
    def own_jid(self) -> str:
        """The bare JID of the connected account: the owner of the node we publish to."""
        return str(self.xmpp.boundjid.bare)

    @property
    def device(self) -> str:
        """This device's fingerprint, written into each published item."""
        return device_fingerprint(self.client.signature_public_key)

    @property
    def _pubsub(self) -> Any:
        return cast(Any, self.xmpp.plugin)["xep_0060"]

    # -- publishing --------------------------------------------------------------------

    async def publish_pool(self, size: int = DEFAULT_POOL_SIZE) -> list[bytes]:
        """Make ``size`` KeyPackages and one last-resort KeyPackage; publish them all.

        The last-resort one is published last, so the server's ``max_items``
        trimming (oldest first) reaches it last.

        :returns: the KeyPackageRefs published, the last-resort one last.
        :raises LocalUsageError: the pool does not fit the node, or the
            client's credential does not name this account.
        :raises TransportError: the server refused or did not answer; the
            private keys of the KeyPackages not published are forgotten.
        """
        if not 0 <= size < self.max_items:
            raise LocalUsageError(
                f"pool size must be 0..{self.max_items - 1} (max_items {self.max_items} "
                "includes the last-resort KeyPackage)"
            )
        return await self._publish_new(size, last_resort=True)

    async def top_up(self, min_size: int = DEFAULT_POOL_SIZE) -> list[bytes]:
        """Refill this device's pool on the server to ``min_size`` KeyPackages.

        Counts this device's items on the server that it still holds keys for
        (:meth:`own_items`); retracts its items whose keys are gone (used or
        lost: useless to adders); publishes new KeyPackages up to ``min_size``
        and a new last-resort one if none of this device's is left.

        :returns: the KeyPackageRefs published (possibly none).
        :raises LocalUsageError: ``min_size`` does not fit the node.
        :raises TransportError: the server refused or did not answer.
        """
        if not 0 <= min_size < self.max_items:
            raise LocalUsageError(f"min_size must be 0..{self.max_items - 1}, not {min_size}")
        items = await self.own_items()
        await self._retract_stale(items)
        usable = [i for i in items if i.usable]
        normal = sum(1 for i in usable if not i.last_resort)
        has_last_resort = any(i.last_resort for i in usable)
        missing = max(0, min_size - normal)
        if missing == 0 and has_last_resort:
            return []
        return await self._publish_new(missing, last_resort=not has_last_resort)

    async def publish(self, key_package: KeyPackage) -> bytes:
        """Publish one KeyPackage of this device's (made with ``client.make_key_package``).

        :returns: its KeyPackageRef.
        :raises LocalUsageError: it is not one of this client's KeyPackages.
        :raises TransportError: the server refused or did not answer.
        """
        self._check_identity()
        ref = key_package.ref(self.client.suite)
        if ref not in self.client.key_packages:
            raise LocalUsageError("not a KeyPackage of this client (no private keys held)")
        await self._publish_item(ref.hex(), self._payload(key_package))
        return ref

    async def retract(self, ref: bytes, *, forget: bool = False) -> bool:
        """Remove the item of KeyPackageRef ``ref`` from the own node.

        Call after a Welcome used the KeyPackage (:meth:`used` does so, and
        keeps last-resort ones). ``forget`` also deletes the private keys, for
        a KeyPackage that is withdrawn unused.

        :returns: True if the item was removed, False if it was not there.
        :raises TransportError: the server refused or did not answer.
        """
        if forget:
            self.client.forget_key_package(ref)
        try:
            await self._pubsub.retract(self.own_jid, NODE, ref.hex(), timeout=self.timeout)
        except IqError as e:
            if _condition(e) == "item-not-found":
                return False
            raise _transport_error("retract", e) from None
        except IqTimeout:
            raise _timeout("retract") from None
        return True

    async def used(self, ref: bytes) -> bool:
        """Note that a Welcome used KeyPackage ``ref``: retract it unless it is last-resort.

        A last-resort KeyPackage stays published (and its keys kept) so the
        device stays reachable when its pool runs dry (RFC 9420 §16.8).

        :returns: True if an item was removed.
        :raises TransportError: the server refused or did not answer.
        """
        if ref in self.client.last_resort:
            return False
        return await self.retract(ref)

    async def retire(self, ref: bytes) -> bool:
        """Withdraw a used last-resort KeyPackage so a fresh one replaces it (RFC 9420 §16.8).

        Its item is retracted and it stops being this device's last resort;
        its private keys stay until a Welcome uses them or :meth:`renew`
        forgets them after the KeyPackage expired. :meth:`top_up` then
        publishes a new last-resort KeyPackage.

        :returns: True if an item was removed.
        :raises TransportError: the server refused or did not answer.
        """
        self.client.last_resort.discard(ref)
        return await self.retract(ref)

    async def renew(self, min_size: int = DEFAULT_POOL_SIZE) -> list[bytes]:
        """Upkeep of this device's KeyPackages; run it at start and now and then.

        * retracts this device's items that expire within :data:`RENEW_BEFORE`
          (adders would soon refuse them) and those whose keys are gone;
        * forgets the private keys of KeyPackages that are not on the node
          and expired more than :data:`KEEP_AFTER` ago;
        * refills the pool and the last resort (:meth:`top_up`).

        :returns: the KeyPackageRefs published.
        :raises TransportError: the server refused or did not answer.
        """
        now = self.client.config.clock()
        items = await self.own_items()
        gone: set[bytes] = set()
        for item in items:
            bundle = self.client.key_packages.get(item.ref)
            lifetime = None if bundle is None else bundle.key_package.leaf_node.lifetime
            if lifetime is not None and lifetime.not_after - now < RENEW_BEFORE:
                log.info("retracting own KeyPackage %s: it expires soon", item.item_id)
                self.client.last_resort.discard(item.ref)
                await self.retract(item.ref)
                gone.add(item.ref)
        on_node = {i.ref for i in items} - gone
        for ref, bundle in list(self.client.key_packages.items()):
            lifetime = bundle.key_package.leaf_node.lifetime
            if (ref not in on_node and lifetime is not None
                    and lifetime.not_after + KEEP_AFTER < now):
                self.client.forget_key_package(ref)
        return await self.top_up(min_size)

    async def sync_used(self) -> int:
        """Retract this device's items whose private keys are gone.

        Those KeyPackages were used by a Welcome (the core deletes the keys of
        a used KeyPackage, except a last-resort one) or lost with local state;
        an adder picking one would send a Welcome nobody can read.

        :returns: how many items were retracted.
        :raises TransportError: the server refused or did not answer.
        """
        return await self._retract_stale(await self.own_items())

    async def _retract_stale(self, items: Iterable[OwnItem]) -> int:
        count = 0
        for item in items:
            if not item.usable:
                log.info("retracting own KeyPackage %s: its private keys are gone", item.item_id)
                if await self.retract(item.ref):
                    count += 1
        return count

    async def own_items(self) -> list[OwnItem]:
        """This device's items on the own node (by signature key), in server order.

        Items of the account's other devices and undecodable items are left out.

        :raises TransportError: the server refused or did not answer.
        """
        me = self.client.signature_public_key
        result = []
        for item_id, payload in await self._get_items(self.own_jid):
            try:
                kp, _ = decode_item(payload)
            except MLSError as e:
                log.debug("own node: skipping item %r: %s", item_id, e)
                continue
            if kp.leaf_node.signature_key != me or kp.cipher_suite != self.client.suite_id:
                continue
            ref = kp.ref(self.client.suite)
            if ref.hex() != item_id:
                log.warning("own node: item %r does not match its KeyPackageRef", item_id)
                continue
            result.append(OwnItem(item_id, ref, _is_last_resort(kp),
                                  ref in self.client.key_packages))
        return result

    # -- fetching ----------------------------------------------------------------------

    async def fetch(self, jid: str, *, suite_id: int | None = None,
                    exclude_own: bool = True) -> list[FetchedKeyPackage]:
        """One valid KeyPackage per device of account ``jid``, for cipher suite ``suite_id``.

        Items are skipped (with a log line) when they do not decode, fail
        RFC 9420 §10.1 validation at the current time, are for another cipher
        suite, have an item id other than their KeyPackageRef, or carry a
        credential that does not name ``jid``'s bare JID. Per device (signature
        key) a random normal KeyPackage is chosen, else a last-resort one.

        :param suite_id: the cipher suite wanted (the client's by default).
        :param exclude_own: leave out this device's own KeyPackages.
        :returns: ``[]`` when the account has no (visible) node.
        :raises LocalUsageError: ``jid`` is not a valid JID.
        :raises TransportError: the server refused or did not answer.
        """
        try:
            owner = str(JID(jid).bare)
        except InvalidJID as e:
            raise LocalUsageError(f"not a JID: {jid!r} ({e})") from None
        suite = get_suite(self.client.suite_id if suite_id is None else suite_id)
        now = self.client.config.clock()
        me = self.client.signature_public_key
        devices: dict[bytes, list[FetchedKeyPackage]] = {}
        for item_id, payload in await self._get_items(owner):
            fetched = self._check_item(owner, item_id, payload, suite, now)
            if fetched is None:
                continue
            if exclude_own and fetched.signature_key == me:
                continue
            devices.setdefault(fetched.signature_key, []).append(fetched)
        chosen = []
        for candidates in devices.values():
            normal = [c for c in candidates if not c.last_resort]
            chosen.append(_choose(normal or candidates))
        return chosen

    def _check_item(self, owner: str, item_id: str, payload: ET.Element | None,
                    suite: CipherSuite, now: int) -> FetchedKeyPackage | None:
        """Decode and check one item of ``owner``'s node; None (logged) if it fails."""
        try:
            kp, _ = decode_item(payload)
            if kp.cipher_suite != suite.id:  # another suite of the device's (not an error)
                log.debug("KeyPackage item %r of %s is for cipher suite %d, not %d", item_id,
                          owner, kp.cipher_suite, suite.id)
                return None
            validated = validate_key_package(suite, kp, now=now,
                                             credential_validator=self.credential_validator)
            if validated.ref.hex() != item_id:
                raise ValidationError(
                    f"item id is not the KeyPackageRef {validated.ref.hex()}")
            credential = kp.leaf_node.credential
            named = credential_jid(credential)
            if named != owner:
                raise ValidationError(f"credential names {named!r}, not the node owner")
            if credential.credential_type == CredentialType.X509:
                if self.anchors is None:
                    raise UntrustedCredentialError("an X.509 credential, and this device has "
                                                   "no trust anchors to judge it by")
                self.anchors.verify(credential.certificates, now)
        except MLSError as e:
            log.warning("KeyPackage item %r of %s skipped: %s", item_id, owner, e)
            return None
        except Exception:  # untrusted input must never break a fetch
            log.exception("KeyPackage item %r of %s skipped: unexpected error", item_id, owner)
            return None
        return FetchedKeyPackage(owner, item_id, validated, _is_last_resort(kp))

    # -- internals ---------------------------------------------------------------------

    def _check_identity(self) -> None:
        """Refuse to publish KeyPackages whose credential does not name this account."""
        try:
            named = credential_jid(self.client.credential)
        except ValidationError as e:
            raise LocalUsageError(f"cannot publish this client's KeyPackages: {e}") from None
        if named != self.own_jid:
            raise LocalUsageError(
                f"the client's credential names {named!r}, but this account is "
                f"{self.own_jid!r}: adders would reject its KeyPackages"
            )

    def _payload(self, key_package: KeyPackage) -> ET.Element:
        ref = key_package.ref(self.client.suite)
        return encode_item(key_package, last_resort=ref in self.client.last_resort,
                           device=self.device)

    async def _publish_new(self, count: int, *, last_resort: bool) -> list[bytes]:
        """Make and publish ``count`` KeyPackages (+ a last-resort one, last)."""
        self._check_identity()
        kps = [self.client.make_key_package() for _ in range(count)]
        if last_resort:
            kps.append(self.client.make_key_package(last_resort=True))
        refs = [kp.ref(self.client.suite) for kp in kps]
        jobs = [(ref, self._payload(kp)) for ref, kp in zip(refs, kps, strict=True)]
        if not jobs:
            return []
        try:
            # the first one alone: it settles the node configuration
            await self._publish_item(jobs[0][0].hex(), jobs[0][1])
            middle, tail = jobs[1:-1], jobs[1:][-1:]
            limit = asyncio.Semaphore(_CONCURRENCY)

            async def one(ref: bytes, payload: ET.Element) -> None:
                async with limit:
                    await self._publish_item(ref.hex(), payload)

            await _gather_all(one(ref, payload) for ref, payload in middle)
            for ref, payload in tail:  # the last-resort one is the newest item
                await self._publish_item(ref.hex(), payload)
        except TransportError:
            published = await self._published_refs(refs)
            for ref in refs:
                if ref not in published:
                    self.client.forget_key_package(ref)
            raise
        return refs

    async def _published_refs(self, refs: Iterable[bytes]) -> set[bytes]:
        """Which of ``refs`` are on the own node (best effort: empty on failure)."""
        try:
            ids = {item_id for item_id, _ in await self._get_items(self.own_jid)}
        except TransportError:
            return set()
        return {ref for ref in refs if ref.hex() in ids}

    async def _publish_item(self, item_id: str, payload: ET.Element) -> None:
        """Publish one item; configure the node when publish-options are refused."""
        if self._options_supported:
            try:
                await self._send_publish(item_id, payload, with_options=True)
                return
            except IqError as e:
                if _condition(e) not in _OPTIONS_REFUSED:
                    raise _transport_error("publish", e) from None
                log.info("publish-options refused (%s: %s); configuring node %s",
                         _condition(e), _error_text(e), NODE)
            except IqTimeout:
                raise _timeout("publish") from None
            await self._configure_node()
            try:
                await self._send_publish(item_id, payload, with_options=True)
                return
            except IqError as e:
                if _condition(e) not in _OPTIONS_REFUSED:
                    raise _transport_error("publish", e) from None
                log.info("publish-options refused on the configured node (%s); "
                         "publishing without them", _condition(e))
                self._options_supported = False
            except IqTimeout:
                raise _timeout("publish") from None
        try:
            await self._send_publish(item_id, payload, with_options=False)
        except IqError as e:
            raise _transport_error("publish", e) from None
        except IqTimeout:
            raise _timeout("publish") from None

    async def _send_publish(self, item_id: str, payload: ET.Element, *,
                            with_options: bool) -> None:
        options = None
        if with_options:
            options = _form(_PUBLISH_OPTIONS, {
                "pubsub#access_model": "open",
                "pubsub#max_items": self._option_max_items,
            })
        await self._pubsub.publish(self.own_jid, NODE, id=item_id, payload=payload,
                                   options=options, timeout=self.timeout)

    async def _configure_node(self) -> None:
        """Create the node, or reconfigure it: ``access_model`` open, ``max_items`` enough.

        A ``max_items`` already larger than ours is kept (other devices or
        clients may rely on it); afterwards publish-options carry the node's value.
        """
        async with self._configure_lock:
            try:
                reply = await self._pubsub.get_node_config(self.own_jid, NODE,
                                                           timeout=self.timeout)
            except IqError as e:
                if _condition(e) != "item-not-found":
                    raise _transport_error("get node configuration", e) from None
                reply = None
            except IqTimeout:
                raise _timeout("get node configuration") from None

            if reply is None:
                config = _form(_NODE_CONFIG, {"pubsub#access_model": "open",
                                              "pubsub#max_items": str(self.max_items)})
                await self._iq("create node", self._pubsub.create_node(
                    self.own_jid, NODE, config=config, timeout=self.timeout))
                self._option_max_items = str(self.max_items)
                log.info("created node %s (open, max_items %d)", NODE, self.max_items)
                return

            current = reply["pubsub_owner"]["configure"]["form"].get_values()
            access, raw_max = current.get("pubsub#access_model"), current.get("pubsub#max_items")
            current_max = _as_int(raw_max)
            if raw_max == "max" or (current_max is not None and current_max >= self.max_items):
                max_items = str(raw_max)  # keep what is there: enough room already
            else:
                max_items = str(self.max_items)
            if access == "open" and max_items == raw_max:
                log.info("node %s is already usable (open, max_items %s)", NODE, raw_max)
            else:
                config = _form(_NODE_CONFIG, {"pubsub#access_model": "open",
                                              "pubsub#max_items": max_items})
                await self._iq("configure node", self._pubsub.set_node_config(
                    self.own_jid, NODE, config, timeout=self.timeout))
                log.info("reconfigured node %s: access_model %s -> open, max_items %s -> %s",
                         NODE, access, raw_max, max_items)
            self._option_max_items = max_items

    async def _get_items(self, jid: str) -> list[tuple[str, ET.Element | None]]:
        """All items of ``jid``'s node as (item id, payload); ``[]`` if there is no node."""
        try:
            reply = await self._pubsub.get_items(jid, NODE, timeout=self.timeout)
        except IqError as e:
            if _condition(e) in _NO_NODE:
                log.debug("no KeyPackage node visible at %s (%s)", jid, _condition(e))
                return []
            raise _transport_error(f"get items of {jid}", e) from None
        except IqTimeout:
            raise _timeout(f"get items of {jid}") from None
        return [(str(item["id"]), item["payload"]) for item in reply["pubsub"]["items"]]

    async def _iq(self, what: str, request: Awaitable[Any]) -> Any:
        try:
            return await request
        except IqError as e:
            raise _transport_error(what, e) from None
        except IqTimeout:
            raise _timeout(what) from None


# -- helpers ---------------------------------------------------------------------------


def _choose(candidates: list[FetchedKeyPackage]) -> FetchedKeyPackage:
    """A random candidate: concurrent adders rarely pick the same KeyPackage."""
    return random.SystemRandom().choice(candidates)


async def _gather_all(jobs: Iterable[Awaitable[None]]) -> None:
    """Await every job; then raise the first failure, if any."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def _form(form_type: str, fields: dict[str, str]) -> Any:
    """A submitted XEP-0004 form (slixmpp's ``Form``, untyped) with these fields."""
    form = cast(Any, Form)()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in fields.items():
        form.add_field(var=var, value=value)
    return form


def _as_int(value: object) -> int | None:
    """A form value as a non-negative int, else None."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _condition(e: IqError) -> str:
    """The error condition of an error reply; ``precondition-not-met`` style
    application conditions are reported through their defined condition."""
    return str(e.iq["error"]["condition"])


def _error_text(e: IqError) -> str:
    error = e.iq["error"]
    app = [child.tag.split("}")[-1] for child in error.xml
           if child.tag.startswith(f"{{{_NS_PUBSUB_ERRORS}}}")]
    text = str(error["text"])
    return ", ".join(app + ([text] if text else [])) or "no detail"


def _transport_error(what: str, e: IqError) -> TransportError:
    return TransportError(f"{what}: {_condition(e)} ({_error_text(e)})")


def _timeout(what: str) -> TransportError:
    return TransportError(f"{what}: no reply within the timeout")

