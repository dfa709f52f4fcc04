"""Fetching blobs: from which hosts, within what budget (docs/PROTOCOL.md §11.2).

A blob (a ratchet tree, an MLSMessage sent by reference, an attachment) is
named by a URL that a peer wrote. Fetching any URL would let a stranger make
a device send HTTP requests where the stranger chooses: its IP address leaks,
and requests reach into the device's network. So a URL is fetched only when

* its scheme is ``https`` (plain ``http`` only for a loopback host:
  ``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``), it carries no user
  name or password, and
* its host is one of the XMPP *domains in context* or below one of them
  (``upload.example.org`` for ``example.org``), or below the domain of an
  HTTP File Upload (XEP-0363) service that service discovery found on one
  of them (disco#items, then disco#info for ``urn:xmpp:http:upload:0``;
  cached per domain for an hour), or
* its origin (scheme, host, port) is that of a URL this account's own upload
  service handed out (learned from this device's uploads, or from one slot
  requested for that purpose and never used), or one listed in the plugin
  option ``blob_origins``.

The domains in context are always this account's server; for a room
message, the room's server (the MUC service and its parent domain,
``conference.example.org`` -> ``example.org``) and the servers of the
group's members (the sender is one of them: the MLS message is checked
once fetched); for a Welcome, the sender's server and the room's; for an
attachment, the sender's server and the room's. A host name that resolves
to a non-public address (loopback, private, link-local) is connected to only
when this device's XMPP server is itself at such an address (a test or LAN
deployment), or the origin is the account's own upload service or listed.

Redirects are never followed (a 3xx answer refuses the blob), at most the
blob's declared size (itself at most ``blob_max_size``) plus one byte is
read, and everything -- discovery, connecting, reading -- happens within
one deadline. A refused URL raises :class:`BlobRefusedError` before any
request is made to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from slixmpp import JID
from slixmpp.jid import InvalidJID

from .errors import BlobRefusedError, EnvelopeError, TransportError

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

    from .envelope import BlobRef

log = logging.getLogger(__name__)

__all__ = ["Blobs", "room_server_domains"]

#: The XEP-0363 namespace, announced by upload services in disco#info.
UPLOAD_NS = "urn:xmpp:http:upload:0"
#: Seconds a domain's discovered upload services are remembered.
DISCOVERY_TTL = 3600.0
#: Seconds a failed discovery (or a failed own-origin probe) is remembered.
FAILURE_TTL = 300.0
#: disco#items entries looked at per domain.
MAX_DISCO_ITEMS = 20

Origin = tuple[str, str, int]


def _domain(name: str) -> str:
    return name.strip().rstrip(".").lower()


def room_server_domains(room: str) -> list[str]:
    """The domains of a room's server: the MUC service's and its parent's.

    ``room@conference.example.org`` -> ``conference.example.org``,
    ``example.org``. A two-label service domain has no parent taken (that
    would be a top-level domain).
    """
    try:
        service = _domain(JID(room).domain)
    except InvalidJID:
        return []
    out = [service] if service else []
    labels = service.split(".")
    if len(labels) >= 3:
        out.append(".".join(labels[1:]))
    return out


def jid_domain(jid: str) -> str | None:
    """The domain of a JID, or ``None`` for an invalid one."""
    try:
        return _domain(JID(jid).domain) or None
    except InvalidJID:
        return None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_global and not address.is_multicast


def _loopback_host(host: str) -> bool:
    ip = _ip(host)
    if ip is not None:
        return ip.is_loopback
    return host == "localhost" or host.endswith(".localhost")


def _under(host: str, domain: str) -> bool:
    """``host`` is ``domain`` or a name below it (never for IP addresses)."""
    if host == domain:
        return True
    return _ip(host) is None and _ip(domain) is None and host.endswith("." + domain)


def parse_url(url: str) -> tuple[Any, Origin]:
    """The URL (as aiohttp will use it) and its origin.

    :raises BlobRefusedError: not an absolute http(s) URL without credentials.
    """
    from yarl import URL

    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise BlobRefusedError("blob URL does not parse") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise BlobRefusedError("blob URL must be http(s)")
    host = _domain(parsed.host or "")
    if not host or parsed.user is not None or parsed.password is not None:
        raise BlobRefusedError("blob URL needs a host and no user name or password")
    port = parsed.port or (443 if scheme == "https" else 80)
    return parsed, (scheme, host, port)


def origin_of(url: str) -> Origin:
    """A URL's origin (scheme, lower-case host, port).

    :raises BlobRefusedError: not an absolute http(s) URL without credentials.
    """
    return parse_url(url)[1]


class _NonPublicAddress(OSError):
    """A blob host resolved to non-public addresses only, where they are not allowed."""


class _GuardedResolver(AbstractResolver):
    """Name resolution that drops non-public addresses unless they are allowed."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return found
        kept = [r for r in found if (ip := _ip(r["host"])) is not None and _public(ip)]
        if not kept:
            raise _NonPublicAddress(f"{host} resolves to no public address: not fetched")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class Blobs:
    """Decides which blob URLs may be fetched, and fetches them within a budget.

    :param xmpp: the slixmpp client (for service discovery and upload slots).
    :param config: the plugin's options (``blob_max_size``, ``blob_timeout``,
        ``blob_origins``), read at each fetch.
    :param iq_timeout: seconds for one discovery or slot request.
    """

    def __init__(self, xmpp: Any, config: Mapping[str, Any], *, iq_timeout: float = 10.0
                 ) -> None:
        self.xmpp = xmpp
        self.config = config
        self.iq_timeout = iq_timeout
        #: origins of URLs this account's own upload service handed out
        self.own_origins: set[Origin] = set()
        self._probed_until = 0.0
        self._probe_lock = asyncio.Lock()
        #: domain -> (expiry, upload service domains found there)
        self._discovered: dict[str, tuple[float, frozenset[str]]] = {}

    # -- what is allowed ---------------------------------------------------------------

    def learn_own(self, url: str) -> None:
        """Remember the origin of a URL this account's upload service handed out."""
        try:
            self.own_origins.add(origin_of(url))
        except BlobRefusedError:
            pass

    def _configured(self) -> set[Origin]:
        out = set()
        for entry in self.config.get("blob_origins") or ():
            try:
                out.add(origin_of(str(entry)))
            except BlobRefusedError:
                log.warning("blob_origins: %r is not an http(s) origin; ignored", entry)
        return out

    def own_domain(self) -> str | None:
        """This account's server."""
        return jid_domain(str(self.xmpp.boundjid)) if self.xmpp.boundjid else None

    def server_is_private(self) -> bool:
        """Whether this device's XMPP server is at a non-public address (test or LAN)."""
        transport = getattr(self.xmpp, "transport", None)
        peer = transport.get_extra_info("peername") if transport is not None else None
        if not peer:
            return False
        ip = _ip(str(peer[0]).split("%", 1)[0])
        return ip is not None and not _public(ip)

    async def check(self, url: str, domains: Iterable[str]) -> bool:
        """Refuse ``url`` unless a blob may be fetched from it (see the module's rule).

        :returns: whether the host may resolve to a non-public address.
        :raises BlobRefusedError: it may not; nothing was requested from it.
        """
        _, origin = parse_url(url)
        scheme, host, _ = origin
        if origin in self._configured():
            return True
        if scheme == "http" and not _loopback_host(host):
            raise BlobRefusedError(f"blob URL on {host} is not https")
        if origin in self.own_origins:
            return True
        names = {d for d in (_domain(x) for x in domains) if d}
        own = self.own_domain()
        if own:
            names.add(own)
        if any(_under(host, d) for d in names):
            return self._private_ok(host)
        if any(_under(host, d) for d in await self._upload_domains(names)):
            return self._private_ok(host)
        if await self._probe_own() and origin in self.own_origins:
            return True
        raise BlobRefusedError(
            f"blob URL on {host}, which is not the server of the room, this account or "
            "the sender, nor an upload service of theirs")

    def _private_ok(self, host: str) -> bool:
        ip = _ip(host)
        private = self.server_is_private()
        if ip is not None and not _public(ip) and not private:
            raise BlobRefusedError(f"blob URL on the non-public address {host}")
        return private

    async def _upload_domains(self, domains: Iterable[str]) -> set[str]:
        """The domains of the upload services discovered on ``domains`` (cached)."""
        out: set[str] = set()
        for domain in sorted(domains):
            now = time.monotonic()
            cached = self._discovered.get(domain)
            if cached is None or cached[0] < now:
                found, ok = await self._discover(domain)
                cached = (now + (DISCOVERY_TTL if ok else FAILURE_TTL), found)
                self._discovered[domain] = cached
            out |= cached[1]
        return out

    async def _discover(self, domain: str) -> tuple[frozenset[str], bool]:
        from slixmpp.exceptions import IqError, IqTimeout

        disco = self.xmpp.plugin["xep_0030"]
        try:
            items = await disco.get_items(jid=domain, timeout=self.iq_timeout)
        except (IqError, IqTimeout) as e:
            log.info("upload service discovery on %s failed: %s", domain, e)
            return frozenset(), False
        jids = [str(item[0]) for item in items["disco_items"]["items"]][:MAX_DISCO_ITEMS]

        async def one(jid: str) -> str | None:
            try:
                info = await disco.get_info(jid=jid, timeout=self.iq_timeout, cached=False)
            except (IqError, IqTimeout):
                return None
            if UPLOAD_NS in info["disco_info"]["features"]:
                return jid_domain(jid)
            return None

        found = await asyncio.gather(*(one(j) for j in jids))
        return frozenset(d for d in found if d), True

    async def _probe_own(self) -> bool:
        """Learn the origin of this account's upload service from one slot (not used).

        Done at most once per :data:`FAILURE_TTL` when it found nothing, and
        not again once an origin is known.
        """
        async with self._probe_lock:
            if self.own_origins:
                return True
            if time.monotonic() < self._probed_until:
                return False
            self._probed_until = time.monotonic() + FAILURE_TTL
            upload = self.xmpp.plugin["xep_0363"]
            try:
                service = upload.upload_service
                if service is None:
                    info = await upload.find_upload_service(timeout=self.iq_timeout)
                    if info is None:
                        return False
                    service = info["from"]
                slot = await upload.request_slot(JID(service), "origin-check.bin", 1,
                                                 timeout=self.iq_timeout)
                self.learn_own(str(slot["http_upload_slot"]["get"]["url"]))
            except Exception as e:  # noqa: BLE001 - IqError, IqTimeout, slixmpp's errors
                log.info("no own upload origin learned: %s", e)
                return False
            return bool(self.own_origins)

    # -- fetching ---------------------------------------------------------------------

    async def fetch(self, ref: BlobRef, domains: Iterable[str], *,
                    timeout: float | None = None) -> bytes:
        """Fetch a blob (every part) from allowed hosts; check its size and SHA-256.

        ``timeout`` (default: option ``blob_timeout``) covers everything:
        checking the URLs (discovery included), connecting and reading.

        :raises BlobRefusedError: a URL is not allowed, or the server redirects.
        :raises EnvelopeError: the blob is over ``blob_max_size``, or not the one
            described (size, SHA-256).
        :raises TransportError: the download failed or took longer than ``timeout``.
        """
        limit = int(self.config["blob_max_size"])
        if ref.size > limit:
            raise EnvelopeError(f"blob of {ref.size} bytes is over the limit of {limit}")
        budget = float(self.config["blob_timeout"] if timeout is None else timeout)
        domains = list(domains)

        async def fetch_all() -> bytes:
            allowed = [(url, size, await self.check(url, domains)) for url, size in ref.parts]
            return b"".join([await self._fetch(url, size, private)
                             for url, size, private in allowed])

        try:  # one deadline for the whole blob, however many parts it has
            data = await asyncio.wait_for(fetch_all(), budget)
        except TimeoutError as e:
            raise TransportError(f"blob download took longer than {budget:g} s") from e
        if len(data) != ref.size or hashlib.sha256(data).digest() != ref.sha256:
            raise EnvelopeError("blob does not match its size and hash")
        return data

    async def _fetch(self, url: str, size: int, allow_private: bool) -> bytes:
        """One part: at most ``size`` + 1 bytes are read (a longer answer is refused)."""
        parsed, _ = parse_url(url)
        try:
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(allow_private))
            async with aiohttp.ClientSession(connector=connector) as http, \
                    http.get(parsed, allow_redirects=False) as r:
                if 300 <= r.status < 400:
                    raise BlobRefusedError(f"blob server redirects (HTTP {r.status}): "
                                           "redirects are not followed")
                if r.status != 200:
                    raise TransportError(f"blob download failed with HTTP {r.status}")
                buf = bytearray()
                while len(buf) <= size:  # never more than one byte past the size
                    chunk = await r.content.read(size + 1 - len(buf))
                    if not chunk:
                        break
                    buf += chunk
        except (OSError, aiohttp.ClientError) as e:
            if isinstance(getattr(e, "os_error", e), _NonPublicAddress):
                raise BlobRefusedError(f"blob URL: {getattr(e, 'os_error', e)}") from e
            raise TransportError(f"blob download failed: {e}") from e
        if len(buf) != size:
            raise EnvelopeError("blob part does not have its size")
        return bytes(buf)
