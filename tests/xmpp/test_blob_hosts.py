"""The rule for where blobs may be fetched from (mls_xmpp.xmpp.blobs), without a server.

The client here has no upload service and no disco answers: only the rule's
names-and-origins part decides. The integration tests (test_blobs.py) cover
discovery, the own-origin probe and the HTTP side over a real Prosody.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mls_xmpp.errors import BlobRefusedError, EnvelopeError
from mls_xmpp.xmpp.blobs import Blobs, origin_of, room_server_domains
from mls_xmpp.xmpp.envelope import BlobRef


class _Transport:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 5222) if name == "peername" else None


class _Nothing:
    """disco and XEP-0363 that find nothing."""

    upload_service = None

    async def get_items(self, **_: Any) -> Any:
        return {"disco_items": {"items": []}}

    async def find_upload_service(self, **_: Any) -> None:
        return None


class _Client:
    def __init__(self, jid: str, peer: str) -> None:
        from slixmpp import JID

        self.boundjid = JID(jid)
        self.transport = _Transport(peer)
        self.plugin = {"xep_0030": _Nothing(), "xep_0363": _Nothing()}


def _blobs(peer: str = "93.184.216.34", **config: Any) -> Blobs:
    cfg = {"blob_max_size": 1024, "blob_timeout": 5.0, "blob_origins": ()}
    cfg.update(config)
    return Blobs(_Client("bob@example.org/phone", peer), cfg)


def _check(blobs: Blobs, url: str, *domains: str) -> bool:
    return asyncio.run(blobs.check(url, domains))


def test_blob_room_server_domains() -> None:
    assert room_server_domains("r@conference.example.org") == ["conference.example.org",
                                                               "example.org"]
    assert room_server_domains("r@rooms.example") == ["rooms.example"]  # no TLD
    assert room_server_domains("r@conference.localhost") == ["conference.localhost"]
    assert room_server_domains("not a jid@") == []


@pytest.mark.parametrize("url", [
    "https://example.org/x", "https://upload.example.org:5281/file_share/a/b.bin",
    "https://UPLOAD.Example.ORG./x", "https://share.sender.net/x",
    "https://conference.room.net/x", "https://room.net/x",
])
def test_blob_hosts_of_the_servers_in_context_are_allowed(url: str) -> None:
    assert _check(_blobs(), url, "sender.net", "conference.room.net", "room.net") is False


@pytest.mark.parametrize("url", [
    "https://evil.net/x",                 # another server
    "https://evilexample.org/x",          # not below example.org
    "https://example.org.evil.net/x",     # example.org only as a prefix
    "http://example.org/x",               # plain http off loopback
    "https://user:pw@example.org/x",      # credentials
    "ftp://example.org/x", "file:///etc/passwd", "example.org/x",
    "https://93.184.216.35/x",            # an address, not a name of a server
    "https://10.0.0.1/x", "http://127.0.0.2:8080/x",
])
def test_blob_other_urls_are_refused(url: str) -> None:
    with pytest.raises(BlobRefusedError):
        _check(_blobs(), url, "sender.net")


def test_blob_own_and_configured_origins() -> None:
    blobs = _blobs(blob_origins=("https://cdn.example.net", "http://10.1.2.3:8080"))
    assert _check(blobs, "https://cdn.example.net/a") is True
    assert _check(blobs, "http://10.1.2.3:8080/a") is True
    with pytest.raises(BlobRefusedError):
        _check(blobs, "http://10.1.2.3:8081/a")  # another port: another origin
    blobs.learn_own("http://127.0.0.1:5280/upload/slot/x.bin")
    assert _check(blobs, "http://127.0.0.1:5280/other") is True
    with pytest.raises(BlobRefusedError):
        _check(blobs, "http://127.0.0.1:5281/other")
    assert origin_of("https://Host.Example/x") == ("https", "host.example", 443)


def test_blob_non_public_addresses_only_with_a_server_on_one() -> None:
    # a public server: a name is allowed but must resolve to a public address (False)
    assert _check(_blobs(), "https://upload.example.org/x") is False
    # a server on loopback (tests, a LAN): names may resolve to non-public addresses
    assert _check(_blobs(peer="127.0.0.1"), "https://upload.example.org/x") is True
    assert _check(_blobs(peer="127.0.0.1"), "http://localhost:8080/x", "localhost") is True


def test_blob_over_the_size_limit_is_refused_unfetched() -> None:
    ref = BlobRef(url="https://evil.net/x", sha256=bytes(32), size=2048)
    with pytest.raises(EnvelopeError, match="over the limit"):
        asyncio.run(_blobs().fetch(ref, ["example.org"]))


def test_blob_a_name_resolving_to_a_private_address_is_not_connected_to() -> None:
    from mls_xmpp.xmpp.blobs import _GuardedResolver

    async def resolve(allow_private: bool) -> list[Any]:
        resolver = _GuardedResolver(allow_private)
        try:
            return await resolver.resolve("localhost", 80)
        finally:
            await resolver.close()

    with pytest.raises(OSError, match="no public address"):
        asyncio.run(resolve(False))
    assert asyncio.run(resolve(True))


def test_blob_on_a_name_resolving_to_a_private_address_is_refused() -> None:
    # one part fetched as after check() allowed a name while the server is public
    blobs = _blobs()
    with pytest.raises(BlobRefusedError, match="no public address"):
        asyncio.run(blobs._fetch("http://localhost:9/x", 1, allow_private=False))
