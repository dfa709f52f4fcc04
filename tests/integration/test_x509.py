"""X.509 credentials over a real Prosody (issue 12, attack 10).

* A device with an X.509 credential (option ``x509_credential``) is added by
  members that have its CA as trust anchor; its messages carry the JID of its
  certificate.
* A certificate copied from another device, put in a KeyPackage with another
  key, is refused by every member alike (RFC 9420 §5.3.2): a validity rule.
* A device whose certificate does not lead to one member's anchors (a
  self-signed one that another member trusts) is reported by that member and
  marked distrusted there -- local trust, never validity: both members
  process the same Commits and keep one epoch_authenticator.
* A device without anchors does not advertise x509; it uses no X.509
  KeyPackage, and no group it is in can take an X.509 leaf (§7.3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mls_xmpp.core.errors import CredentialError, UntrustedCredentialError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.messages.commit import Commit
from mls_xmpp.core.messages.common import ContentType, CredentialType
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.proposals import Add
from mls_xmpp.errors import MLSError, NoKeyPackageError
from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.xmpp.envelope import Envelope, Kind
from mls_xmpp.xmpp.session import GroupSession
from mls_xmpp.xmpp.trust import TrustState, fingerprint

from ..core.test_group_rules import frame
from ..x509_pki import Pki, make_cert, xmpp_addr
from .mls_clients import Recorder, befriend, close, mls_client, synced, until


def _run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 180))


def _errors(r: Recorder) -> list[Any]:
    return list(r.events["mls_error"])


async def _joined(r: Recorder, n: int = 1) -> GroupSession:
    return (await r.wait("mls_joined", n))[n - 1]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki("ed25519")


# -- an X.509 device joins and is named by its certificate ------------------------------------


async def _x509_member(server: ProsodyServer, accounts: list[Account], pki: Pki,
                       tmp: Path) -> None:
    alice_acc, bob_acc, carol_acc = accounts
    bundle = tmp / "anchors.pem"
    bundle.write_bytes(pki.root.pem)
    cert = pki.client(carol_acc.jid)
    (tmp / "carol.pem").write_bytes(cert.pem + pki.intermediate.pem)
    (tmp / "carol.key").write_bytes(cert.key_pem)
    anchors = {"x509_trust_anchors": str(bundle)}
    alice, ra = await mls_client(server, *alice_acc, anchors)
    bob, rb = await mls_client(server, *bob_acc, {"x509_trust_anchors": [pki.root.der]})
    carol_cfg = {**anchors, "store": str(tmp / "carol.db"),
                 "x509_credential": (str(tmp / "carol.pem"), str(tmp / "carol.key"))}
    carol, rc = await mls_client(server, *carol_acc, carol_cfg)
    try:
        await befriend(alice, bob, carol)
        me = carol.plugin["mls"].identity
        assert me.credential.credential_type == CredentialType.X509
        assert CredentialType.X509 in alice.plugin["mls"].identity.capabilities().credentials
        ga = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        gb = await _joined(rb)
        await ga.add(carol_acc.jid)
        gc = await _joined(rc)
        await synced(ga, gb, gc)
        assert ga.jids() == {alice_acc.jid, bob_acc.jid, carol_acc.jid}
        await gc.send("signed by my certificate")
        for r in (ra, rb):
            (msg,) = await r.wait("mls_message")
            assert (msg.sender, msg.body) == (carol_acc.jid, "signed by my certificate")
        fp = fingerprint(me.signature_public_key)
        assert alice.plugin["mls"].trust.state(carol_acc.jid, fp) == TrustState.TRUSTED
        assert not [e for r in (ra, rb, rc) for e in _errors(r)]
        # carol's Update (UpdatePath leaf with her certificate) is accepted by all
        await gc.update()
        await synced(ga, gb, gc)
        # a restart keeps the X.509 identity (stored), and the group goes on
        await close(carol)
        carol, rc = await mls_client(server, *carol_acc, carol_cfg)
        again = carol.plugin["mls"].identity
        assert again.credential == me.credential
        assert again.signature_public_key == me.signature_public_key
        (gc,) = carol.plugin["mls"].sessions.values()
        await synced(ga, gb, gc)
        await gc.send("after a restart")
        for r in (ra, rb):
            msgs = await r.wait("mls_message", 2)
            assert (msgs[-1].sender, msgs[-1].body) == (carol_acc.jid, "after a restart")
    finally:
        await close(alice, bob, carol)


def test_x509_device_joins_and_shows_its_jid(prosody: ProsodyServer,
                                             new_account: Callable[[str], Account],
                                             pki: Pki, tmp_path: Path) -> None:
    _run(_x509_member(prosody, [new_account(n) for n in ("alice", "bob", "carol")], pki,
                      tmp_path))


# -- a copied certificate with another key: refused by every member --------------------------


async def _copied_certificate(server: ProsodyServer, accounts: list[Account], pki: Pki) -> None:
    alice_acc, bob_acc, carol_acc, dave_acc = accounts
    cfg = {"x509_trust_anchors": pki.root.pem}
    clients, recorders = [], []
    for acc in (alice_acc, bob_acc, carol_acc):
        c, r = await mls_client(server, *acc, cfg)
        clients.append(c)
        recorders.append(r)
    ra, rb, rc = recorders
    try:
        await befriend(*clients)
        ga = await clients[0].plugin["mls"].create_group(members=[bob_acc.jid, carol_acc.jid])
        gb, gc = await _joined(rb), await _joined(rc)
        await synced(ga, gb, gc)
        before = ga.group.epoch_authenticator
        # dave's certificate is public; a forger puts it in a KeyPackage with its own key
        dave_cert = pki.client(dave_acc.jid)
        forger = Client.generate(dave_acc.jid.encode())
        forger.credential = Credential.x509(pki.chain(dave_cert))
        kp = forger.make_key_package()
        # signed with bob's real keys: a member (or whoever took bob's device) commits it
        data = frame(gb.group, ContentType.COMMIT, Commit((Add(kp),), None))
        await gb.plugin.delivery.send_room(gb.room, Envelope(
            kind=Kind.COMMIT, group_id=gb.group_id, epoch=gb.epoch, mls_message=data))
        for r in (ra, rc):
            await until(lambda r=r: any(isinstance(e.error, CredentialError)
                                        and "§5.3.2" in e.reason for e in _errors(r)))
        await until(lambda: bool(_errors(rb)))  # bob's own device refuses it too
        assert all(s.group.epoch_authenticator == before for s in (ga, gb, gc))
        assert ga.jids() == {alice_acc.jid, bob_acc.jid, carol_acc.jid}
        await ga.send("still three")
        for r in (rb, rc):
            (msg,) = await r.wait("mls_message")
            assert msg.body == "still three"
    finally:
        await close(*clients)


def test_copied_certificate_is_refused_by_every_member(
        prosody: ProsodyServer, new_account: Callable[[str], Account], pki: Pki) -> None:
    _run(_copied_certificate(
        prosody, [new_account(n) for n in ("alice", "bob", "carol", "dave")], pki))


# -- a certificate one member trusts and another does not: reported, never a fork ---------------


async def _locally_untrusted(server: ProsodyServer, accounts: list[Account], pki: Pki,
                             tmp: Path) -> None:
    alice_acc, bob_acc, mallory_acc = accounts
    # mallory's certificate is self-signed: bob pins it, alice knows only the CA
    forged = make_cert(mallory_acc.jid, issuer=None, san=[xmpp_addr(mallory_acc.jid)])
    alice, ra = await mls_client(server, *alice_acc, {"x509_trust_anchors": pki.root.pem})
    bob, rb = await mls_client(server, *bob_acc,
                               {"x509_trust_anchors": [pki.root.pem, forged.pem]})
    mallory, rm = await mls_client(server, *mallory_acc, {
        "x509_trust_anchors": pki.root.pem, "x509_credential": ((forged.der,), forged.key)})
    try:
        await befriend(alice, bob, mallory)
        ga = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        gb = await _joined(rb)
        await synced(ga, gb)
        # alice will not add mallory: its only KeyPackage does not lead to her anchors
        with pytest.raises(NoKeyPackageError):
            await ga.add(mallory_acc.jid)
        # bob, who trusts the certificate, does: the Commit is valid for everyone
        await gb.add(mallory_acc.jid)
        gm = await _joined(rm)
        await synced(ga, gb, gm)
        fp = fingerprint(mallory.plugin["mls"].identity.signature_public_key)
        await until(lambda: any(isinstance(e.error, UntrustedCredentialError)
                                for e in _errors(ra)))
        assert not any(isinstance(e.error, UntrustedCredentialError) for e in _errors(rb))
        assert alice.plugin["mls"].trust.state(mallory_acc.jid, fp) == TrustState.DISTRUSTED
        assert bob.plugin["mls"].trust.state(mallory_acc.jid, fp) == TrustState.TRUSTED
        assert any(c.jid == mallory_acc.jid and c.state == TrustState.DISTRUSTED
                   for c in ra.events["mls_trust"])
        # the device is in alice's group, shown under its certificate's JID; her
        # distrust acts only through her own choices (refuse_send_to, a removal)
        assert mallory_acc.jid in ga.jids()
        await gm.send("hello from a pinned certificate")
        for r in (ra, rb):
            (msg,) = await r.wait("mls_message")
            assert msg.sender == mallory_acc.jid
        await ga.remove(mallory_acc.jid)
        await synced(ga, gb)
        assert mallory_acc.jid not in gb.jids()
    finally:
        await close(alice, bob, mallory)


def test_locally_untrusted_certificate_is_reported_not_refused(
        prosody: ProsodyServer, new_account: Callable[[str], Account], pki: Pki,
        tmp_path: Path) -> None:
    _run(_locally_untrusted(prosody, [new_account(n) for n in ("alice", "bob", "mallory")],
                            pki, tmp_path))


# -- without anchors, x509 is not advertised ----------------------------------------------------


async def _no_anchors(server: ProsodyServer, accounts: list[Account], pki: Pki) -> None:
    alice_acc, bob_acc, carol_acc = accounts
    cert = pki.client(carol_acc.jid)
    alice, ra = await mls_client(server, *alice_acc, {"x509_trust_anchors": pki.root.pem})
    bob, rb = await mls_client(server, *bob_acc)   # no anchors
    carol, _ = await mls_client(server, *carol_acc, {
        "x509_trust_anchors": pki.root.pem,
        "x509_credential": (pki.chain(cert), cert.key_pem)})
    try:
        await befriend(alice, bob, carol)
        assert bob.plugin["mls"].identity.capabilities().credentials == (CredentialType.BASIC,)
        published = await alice.plugin["mls"].keystore.fetch(bob_acc.jid)
        assert published and all(
            CredentialType.X509 not in f.validated.key_package.leaf_node.capabilities.credentials
            for f in published)
        # bob uses no X.509 KeyPackage
        gb = await bob.plugin["mls"].create_group(members=[alice_acc.jid])
        ga = await _joined(ra)
        await synced(ga, gb)
        with pytest.raises(NoKeyPackageError):
            await gb.add(carol_acc.jid)
        # and alice, who could judge it, cannot put it in a group bob is in (§7.3)
        before = ga.group.epoch_authenticator
        with pytest.raises(MLSError, match="not supported by all members"):
            await ga.add(carol_acc.jid)
        await synced(ga, gb)
        assert ga.group.epoch_authenticator == gb.group.epoch_authenticator == before
        assert ga.jids() == gb.jids() == {alice_acc.jid, bob_acc.jid}
    finally:
        await close(alice, bob, carol)


def test_without_anchors_x509_is_not_advertised(
        prosody: ProsodyServer, new_account: Callable[[str], Account], pki: Pki) -> None:
    _run(_no_anchors(prosody, [new_account(n) for n in ("alice", "bob", "carol")], pki))
