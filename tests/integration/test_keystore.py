"""The PEP KeyPackage store against real servers: Prosody 0.12 and ejabberd 23.01.

Covers: publishing a pool (items, ids, node configuration), fetching and
validating another account's KeyPackages, dropping items whose credential names
another JID (and malformed, mislabelled or expired items), retracting, topping
up, the fallback when publish-options are refused because the node exists with
another configuration, multi-device accounts, and accounts without a node.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar, cast

import pytest
import slixmpp
from slixmpp.plugins.xep_0004 import Form

from mls_xmpp.core.errors import LocalUsageError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.messages.framing import MLSMessage
from mls_xmpp.testing import Account, XmppServer, connect_client, disconnect_client
from mls_xmpp.xmpp.keystore import (
    DEFAULT_MAX_ITEMS,
    ELEMENT,
    NODE,
    NS,
    KeyPackageStore,
    credential_jid,
    decode_item,
    device_fingerprint,
    encode_item,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T = TypeVar("T")
STEP = 10.0  # seconds allowed for any single network step
PLUGINS = ("xep_0030", "xep_0004", "xep_0060")
NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop; fail instead of hanging after ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def pubsub(xmpp: slixmpp.ClientXMPP) -> Any:
    return cast(Any, xmpp.plugin)["xep_0060"]


@asynccontextmanager
async def devices(server: XmppServer,
                  *who: tuple[Account, Client]) -> AsyncIterator[list[KeyPackageStore]]:
    """One connected slixmpp client + KeyPackageStore per (account, MLS client)."""
    async with AsyncExitStack() as stack:
        stores = []
        for account, client in who:
            xmpp = await connect_client(server, *account, plugins=PLUGINS, timeout=STEP)
            stack.push_async_callback(disconnect_client, xmpp)
            stores.append(KeyPackageStore(xmpp, client, timeout=STEP))
        yield stores


def mls_client(account: Account, **config: Any) -> Client:
    """An MLS device whose basic credential names ``account``'s bare JID."""
    return Client.generate(account.jid.encode(), 1, config=GroupConfig(**config))


async def item_ids(store: KeyPackageStore, jid: str) -> list[str]:
    """Ids of the items on ``jid``'s node, read raw through ``store``'s connection."""
    reply = await pubsub(store.xmpp).get_items(jid, NODE, timeout=STEP)
    return [str(item["id"]) for item in reply["pubsub"]["items"]]


async def node_config(store: KeyPackageStore) -> dict[str, Any]:
    """The own node's configuration form values."""
    reply = await pubsub(store.xmpp).get_node_config(store.own_jid, NODE, timeout=STEP)
    return cast(dict[str, Any], reply["pubsub_owner"]["configure"]["form"].get_values())


async def publish_raw(store: KeyPackageStore, item_id: str, payload: ET.Element) -> None:
    """Publish an arbitrary item to the own node, bypassing the store."""
    await pubsub(store.xmpp).publish(store.own_jid, NODE, id=item_id, payload=payload,
                                     timeout=STEP)


def config_form(**fields: str) -> Any:
    form = cast(Any, Form)()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=NODE_CONFIG)
    for var, value in fields.items():
        form.add_field(var=var, value=value)
    return form


# -- publish and fetch --------------------------------------------------------------------


def test_publish_pool_then_fetch(server: XmppServer,
                                 new_account: Callable[[str], Account]) -> None:
    alice_acct, bob_acct = new_account("alice"), new_account("bob")
    alice_mls, bob_mls = mls_client(alice_acct), mls_client(bob_acct)

    async def scenario() -> None:
        async with devices(server, (alice_acct, alice_mls), (bob_acct, bob_mls)) as (alice, bob):
            refs = await alice.publish_pool(size=3)
            assert len(refs) == 4 and len(set(refs)) == 4
            last_resort = refs[-1]
            assert alice_mls.last_resort == {last_resort}
            assert set(refs) <= set(alice_mls.key_packages)

            # the items are there, one per KeyPackage, id = KeyPackageRef hex;
            # bob (no roster relation) may read them: access model open
            assert sorted(await item_ids(bob, alice.own_jid)) == sorted(r.hex() for r in refs)
            config = await node_config(alice)
            assert config["pubsub#access_model"] == "open"
            assert config["pubsub#max_items"] == str(DEFAULT_MAX_ITEMS)
            own = await alice.own_items()
            assert [i.ref for i in own if i.last_resort] == [last_resort]
            assert all(i.usable for i in own) and len(own) == 4

            # bob gets one valid KeyPackage for alice's one device, not the last-resort one
            found = await bob.fetch(alice.own_jid)
            assert len(found) == 1
            kp = found[0]
            assert kp.jid == alice_acct.jid
            assert kp.ref in refs and kp.ref != last_resort and not kp.last_resort
            assert kp.item_id == kp.ref.hex()
            assert credential_jid(kp.key_package.leaf_node.credential) == alice_acct.jid
            assert kp.signature_key == alice_mls.signature_public_key
            assert kp.device == device_fingerprint(alice_mls.signature_public_key)

            # the item payload decodes to what was published
            reply = await pubsub(bob.xmpp).get_items(alice.own_jid, NODE, timeout=STEP)
            payload = next(iter(reply["pubsub"]["items"]))["payload"]
            assert payload.tag == f"{{{NS}}}{ELEMENT}"
            _, item = decode_item(payload)
            assert item.version == 0 and item.device == alice.device

            # the KeyPackage is good for a real join
            group = bob_mls.create_group()
            pending = group.commit(add=[kp.key_package])
            group.merge_pending_commit()
            assert pending.welcome is not None
            joined = alice_mls.join(pending.welcome)
            assert joined.epoch_authenticator == group.epoch_authenticator
            assert await alice.used(kp.ref) is True
            assert kp.ref.hex() not in await item_ids(bob, alice.own_jid)

    run(scenario())


def test_fetch_prefers_normal_then_falls_back_to_last_resort(
        server: XmppServer, new_account: Callable[[str], Account]) -> None:
    alice_acct, bob_acct = new_account("alice"), new_account("bob")

    async def scenario() -> None:
        async with devices(server, (alice_acct, mls_client(alice_acct)),
                           (bob_acct, mls_client(bob_acct))) as (alice, bob):
            refs = await alice.publish_pool(size=2)
            seen = {(await bob.fetch(alice.own_jid))[0].ref for _ in range(12)}
            assert seen <= set(refs[:2])  # never the last-resort one while others exist
            for ref in refs[:2]:
                assert await alice.retract(ref) is True
            found = await bob.fetch(alice.own_jid)
            assert [f.ref for f in found] == [refs[2]] and found[0].last_resort

    run(scenario())


def test_fetch_without_node_is_empty(server: XmppServer,
                                     new_account: Callable[[str], Account]) -> None:
    alice_acct, carol_acct = new_account("alice"), new_account("carol")

    async def scenario() -> None:
        async with devices(server, (alice_acct, mls_client(alice_acct))) as (alice,):
            # Prosody: forbidden for a non-contact's missing node, item-not-found for our own
            assert await alice.fetch(carol_acct.jid) == []
            assert await alice.fetch(alice.own_jid, exclude_own=False) == []
            assert await alice.own_items() == []
            with pytest.raises(LocalUsageError):
                await alice.fetch("not a jid@@")

    run(scenario())


# -- untrusted items -------------------------------------------------------------------


def test_fetch_drops_forged_malformed_and_expired_items(
        server: XmppServer, new_account: Callable[[str], Account],
        caplog: pytest.LogCaptureFixture) -> None:
    alice_acct, bob_acct = new_account("alice"), new_account("bob")
    alice_mls = mls_client(alice_acct)
    mallory = Client.generate(f"mallory@{server.domain}".encode(), 1)
    long_ago = int(time.time()) - 200 * 24 * 3600
    stale_alice = mls_client(alice_acct, clock=lambda: long_ago)  # lifetime long over

    async def scenario() -> None:
        async with devices(server, (alice_acct, alice_mls), (bob_acct, mls_client(bob_acct))
                           ) as (alice, bob):
            good = await alice.publish_pool(size=1)

            # alice publishes a KeyPackage whose credential names mallory
            forged = mallory.make_key_package()
            forged_ref = forged.ref(mallory.suite)
            await publish_raw(alice, forged_ref.hex(),
                              encode_item(forged, last_resort=False, device="mallory"))
            # ... a valid KeyPackage of alice's under another item id
            other = alice_mls.make_key_package()
            await publish_raw(alice, "00" * 32,
                              encode_item(other, last_resort=False, device=alice.device))
            # ... an expired one of hers (another device)
            expired = stale_alice.make_key_package()
            await publish_raw(alice, expired.ref(stale_alice.suite).hex(),
                              encode_item(expired, last_resort=False, device="old"))
            # ... and junk: not base64, a foreign element, a truncated MLSMessage
            junk = ET.Element(f"{{{NS}}}{ELEMENT}")
            junk.text = "%%% not base64 %%%"
            await publish_raw(alice, "junk-1", junk)
            await publish_raw(alice, "junk-2", ET.Element("{urn:example}other"))
            truncated = ET.Element(f"{{{NS}}}{ELEMENT}")
            truncated.text = base64.b64encode(
                b"\x12\x08" + MLSMessage(other).encode()[:8]).decode()
            await publish_raw(alice, "junk-3", truncated)

            assert len(await item_ids(bob, alice.own_jid)) == 2 + 6
            with caplog.at_level(logging.WARNING, logger="mls_xmpp.xmpp.keystore"):
                found = await bob.fetch(alice.own_jid)
            # only alice's genuine device remains, with a genuine KeyPackage
            assert [f.ref for f in found] == [good[0]]
            skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
            assert len(skipped) == 6, skipped
            assert any("mallory" in m and "not the node owner" in m for m in skipped)
            assert any("not the KeyPackageRef" in m for m in skipped)
            assert any("lifetime" in m for m in skipped)

    run(scenario())


def test_publish_refuses_a_credential_for_another_account(
        server: XmppServer, new_account: Callable[[str], Account]) -> None:
    alice_acct, bob_acct = new_account("alice"), new_account("bob")

    async def scenario() -> None:
        async with devices(server, (alice_acct, mls_client(bob_acct))) as (alice,):
            with pytest.raises(LocalUsageError, match="credential names"):
                await alice.publish_pool(size=1)
            assert await alice.own_items() == []

    run(scenario())


# -- upkeep ----------------------------------------------------------------------------


def test_retract_sync_used_and_top_up(server: XmppServer,
                                      new_account: Callable[[str], Account]) -> None:
    alice_acct = new_account("alice")
    alice_mls = mls_client(alice_acct)

    async def scenario() -> None:
        async with devices(server, (alice_acct, alice_mls)) as (alice,):
            refs = await alice.publish_pool(size=3)
            normal, last_resort = refs[:3], refs[3]

            # retract removes exactly that item; a second time finds nothing
            assert await alice.retract(normal[0]) is True
            assert normal[0].hex() not in await item_ids(alice, alice.own_jid)
            assert len(await item_ids(alice, alice.own_jid)) == 3
            assert await alice.retract(normal[0]) is False
            # a last-resort KeyPackage stays after use
            assert await alice.used(last_resort) is False
            assert last_resort.hex() in await item_ids(alice, alice.own_jid)

            # keys gone (as after a join): sync_used retracts the item
            alice_mls.forget_key_package(normal[1])
            assert await alice.sync_used() == 1
            assert normal[1].hex() not in await item_ids(alice, alice.own_jid)

            # top_up counts what is left (1 normal + last resort) and refills to 3
            added = await alice.top_up(3)
            assert len(added) == 2 and last_resort not in added
            own = await alice.own_items()
            assert sum(not i.last_resort for i in own) == 3
            assert [i.ref for i in own if i.last_resort] == [last_resort]
            assert await alice.top_up(3) == []  # nothing to do

            # the last-resort item gone: top_up publishes a new one
            assert await alice.retract(last_resort, forget=True) is True
            added = await alice.top_up(3)
            assert len(added) == 1 and added[0] in alice_mls.last_resort
            assert len(await item_ids(alice, alice.own_jid)) == 4

            with pytest.raises(LocalUsageError):
                await alice.top_up(DEFAULT_MAX_ITEMS)

    run(scenario())


def test_renew_replaces_expiring_key_packages_and_retires_last_resort(
        server: XmppServer, new_account: Callable[[str], Account]) -> None:
    alice_acct = new_account("alice")
    clock = [int(time.time())]
    alice_mls = mls_client(alice_acct, clock=lambda: clock[0])
    day = 24 * 3600

    async def scenario() -> None:
        async with devices(server, (alice_acct, alice_mls)) as (alice,):
            first = await alice.publish_pool(size=2)
            assert await alice.renew(2) == []  # fresh: nothing to do
            assert set(await item_ids(alice, alice.own_jid)) == {r.hex() for r in first}

            # 84 days on: everything expires within a week; all replaced, keys kept
            clock[0] += 84 * day
            second = await alice.renew(2)
            assert len(second) == 3 and not set(second) & set(first)
            assert set(await item_ids(alice, alice.own_jid)) == {r.hex() for r in second}
            assert all(r in alice_mls.key_packages for r in first)  # Welcomes in flight
            assert alice_mls.last_resort == {second[-1]}

            # past expiry + a week: the old keys are forgotten, the new pool stays
            clock[0] += 14 * day
            assert await alice.renew(2) == []
            assert not any(r in alice_mls.key_packages for r in first)
            assert all(r in alice_mls.key_packages for r in second)

            # a used last-resort KeyPackage is retired: withdrawn, and replaced
            assert await alice.retire(second[-1]) is True
            assert second[-1] in alice_mls.key_packages and not alice_mls.last_resort
            third = await alice.top_up(2)
            assert len(third) == 1 and alice_mls.last_resort == {third[0]}
            ids = await item_ids(alice, alice.own_jid)
            assert second[-1].hex() not in ids and third[0].hex() in ids

    run(scenario())


# -- node configuration fallback --------------------------------------------------------


def test_publish_falls_back_when_node_exists_with_other_config(
        server: XmppServer, new_account: Callable[[str], Account]) -> None:
    alice_acct, bob_acct = new_account("alice"), new_account("bob")

    async def scenario() -> None:
        async with devices(server, (alice_acct, mls_client(alice_acct)),
                           (bob_acct, mls_client(bob_acct))) as (alice, bob):
            # created with the server defaults: access_model presence, max_items 1
            await pubsub(alice.xmpp).create_node(alice.own_jid, NODE, timeout=STEP)
            before = await node_config(alice)
            assert before["pubsub#access_model"] == "presence"
            assert before["pubsub#max_items"] == "1"

            refs = await alice.publish_pool(size=4)
            config = await node_config(alice)
            assert config["pubsub#access_model"] == "open"
            assert config["pubsub#max_items"] == str(DEFAULT_MAX_ITEMS)
            assert sorted(await item_ids(bob, alice.own_jid)) == sorted(r.hex() for r in refs)
            assert len(await bob.fetch(alice.own_jid)) == 1

    run(scenario())


def test_fallback_keeps_a_larger_max_items(server: XmppServer,
                                           new_account: Callable[[str], Account]) -> None:
    alice_acct, bob_acct = new_account("alice"), new_account("bob")
    alice_mls = mls_client(alice_acct)

    async def scenario() -> None:
        async with devices(server, (alice_acct, alice_mls), (bob_acct, mls_client(bob_acct))
                           ) as (alice, bob):
            # another client set a whitelist node with room for 200 items
            await pubsub(alice.xmpp).create_node(
                alice.own_jid, NODE, timeout=STEP,
                config=config_form(**{"pubsub#access_model": "whitelist",
                                      "pubsub#max_items": "200"}))
            assert await bob.fetch(alice.own_jid) == []  # not visible to bob yet
            first = await alice.publish_pool(size=2)
            config = await node_config(alice)
            assert config["pubsub#access_model"] == "open"
            assert config["pubsub#max_items"] == "200"
            # a new store (fresh start) meets the same mismatch and copes again
            again = KeyPackageStore(alice.xmpp, alice_mls, timeout=STEP)
            second = await again.publish_pool(size=2)
            ids = await item_ids(bob, alice.own_jid)
            assert sorted(ids) == sorted(r.hex() for r in first + second)
            assert len(await bob.fetch(alice.own_jid)) == 1

    run(scenario())


def test_publish_without_options_when_the_server_refuses_them(
        server: XmppServer, new_account: Callable[[str], Account]) -> None:
    """A server that rejects publish-options outright (as ejabberd rejects
    ``pubsub#max_items``): simulated by corrupting the options so Prosody itself
    answers ``bad-request``."""
    alice_acct, bob_acct = new_account("alice"), new_account("bob")

    async def scenario() -> None:
        async with devices(server, (alice_acct, mls_client(alice_acct)),
                           (bob_acct, mls_client(bob_acct))) as (alice, bob):
            plugin = pubsub(alice.xmpp)
            real_publish = plugin.publish
            sent_options: list[bool] = []

            def publish(*args: Any, options: Any = None, **kwargs: Any) -> Any:
                sent_options.append(options is not None)
                if options is not None:
                    options = config_form(**{"pubsub#max_items": "not-a-number"})
                return real_publish(*args, options=options, **kwargs)

            plugin.publish = publish
            try:
                refs = await alice.publish_pool(size=20)
                more = await alice.top_up(25)
            finally:
                del plugin.publish
            # tried with options, configured the node, tried again, then gave up on them
            assert sent_options[:3] == [True, True, False]
            assert not any(sent_options[3:])
            assert len(sent_options) == len(refs) + len(more) + 2  # 3 tries for the first
            config = await node_config(alice)
            assert config["pubsub#access_model"] == "open"
            assert config["pubsub#max_items"] == str(DEFAULT_MAX_ITEMS)
            ids = await item_ids(bob, alice.own_jid)
            assert sorted(ids) == sorted(r.hex() for r in refs + more) and len(ids) == 26
            assert len(await bob.fetch(alice.own_jid)) == 1

    run(scenario())


# -- multi-device ----------------------------------------------------------------------


def test_two_devices_of_one_account(server: XmppServer,
                                    new_account: Callable[[str], Account]) -> None:
    alice_acct, bob_acct = new_account("alice"), new_account("bob")
    phone, laptop = mls_client(alice_acct), mls_client(alice_acct)

    async def scenario() -> None:
        async with devices(server, (alice_acct, phone), (alice_acct, laptop),
                           (bob_acct, mls_client(bob_acct))) as (alice1, alice2, bob):
            assert alice1.xmpp.boundjid.full != alice2.xmpp.boundjid.full
            phone_refs = await alice1.publish_pool(size=2)
            laptop_refs = await alice2.publish_pool(size=2)
            assert len(await item_ids(bob, alice_acct.jid)) == 6

            found = await bob.fetch(alice_acct.jid)
            assert len(found) == 2
            assert {f.signature_key for f in found} == {phone.signature_public_key,
                                                        laptop.signature_public_key}
            assert all(f.jid == alice_acct.jid and not f.last_resort for f in found)
            by_key = {f.signature_key: f.ref for f in found}
            assert by_key[phone.signature_public_key] in phone_refs
            assert by_key[laptop.signature_public_key] in laptop_refs

            # a device sees only its own items as its own, and fetches its sibling
            assert {i.ref for i in await alice1.own_items()} == set(phone_refs)
            siblings = await alice1.fetch(alice_acct.jid)
            assert [f.signature_key for f in siblings] == [laptop.signature_public_key]
            # one device's upkeep leaves the other's items alone
            assert await alice1.top_up(2) == []
            assert len(await alice2.own_items()) == 3

    run(scenario())
