"""Cipher-suite choice, downgrade rule, stored identities and the ReInit link (no server)."""

from __future__ import annotations

import pytest

from mls_xmpp.core.errors import DecodeError, LocalUsageError, UnsupportedCipherSuiteError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.messages.extensions import Extension
from mls_xmpp.core.messages.key_package import KeyPackage
from mls_xmpp.core.messages.proposals import ReInit
from mls_xmpp.errors import DowngradeError, EnvelopeError, NoCommonSuiteError
from mls_xmpp.xmpp.reinit import LINK_EXTENSION, GroupLink, link_of, reinit_psk
from mls_xmpp.xmpp.suites import (
    IDENTITIES_MAGIC,
    check_move,
    choose_suite,
    decode_identities,
    encode_identities,
    preference,
    suite_feature,
    suite_of_feature,
)


def _kp(jid: str, suite: int, also: tuple[int, ...] = ()) -> KeyPackage:
    client = Client.generate(jid.encode(), suite)
    client.supported_suites = also
    return client.make_key_package()


def test_suite_features_round_trip() -> None:
    assert suite_feature(3) == "urn:mls-xmpp:0:suite:3"
    assert suite_of_feature(suite_feature(3)) == 3
    assert suite_of_feature("urn:mls-xmpp:0") is None
    assert suite_of_feature("urn:mls-xmpp:0:suite:x") is None


def test_preference_checks_the_option() -> None:
    assert preference(None, 1) == (1,)
    assert preference([3, 1, 3], 1) == (3, 1)
    with pytest.raises(LocalUsageError, match="must include"):
        preference((3,), 1)
    with pytest.raises(UnsupportedCipherSuiteError):
        preference((1, 99), 1)


def test_capabilities_list_every_suite_of_the_device() -> None:
    kp = _kp("a@x", 1, (3,))
    assert kp.leaf_node.capabilities.cipher_suites == (1, 3)
    assert _kp("a@x", 3).leaf_node.capabilities.cipher_suites == (3,)


def test_choose_suite_takes_the_best_every_device_supports() -> None:
    both = {3: {"b@x": [_kp("b@x", 3, (1,))]}, 1: {"b@x": [_kp("b@x", 1, (3,))]}}
    assert choose_suite((3, 1), both, ["b@x"]) == 3
    assert choose_suite((1, 3), both, ["b@x"]) == 1
    # dave offers only suite 1 (and says so in his capabilities): suite 1 for all
    both[1]["d@x"] = [_kp("d@x", 1)]
    both[3]["d@x"] = []
    assert choose_suite((3, 1), both, ["b@x", "d@x"]) == 1
    # a device of bob's that lists only suite 3 keeps suite 1 out too
    both[3]["b@x"].append(_kp("b@x", 3))
    with pytest.raises(NoCommonSuiteError) as info:
        choose_suite((3, 1), both, ["b@x", "d@x"])
    assert set(info.value.jids) == {"b@x", "d@x"} and info.value.suites == (3, 1)


def test_a_move_down_the_preference_is_a_downgrade() -> None:
    check_move((3, 1), 1, 3, agreed=False)  # up
    check_move((3, 1), 3, 3, agreed=False)  # same suite (e.g. a new version)
    with pytest.raises(DowngradeError):
        check_move((3, 1), 3, 1, agreed=False)
    with pytest.raises(DowngradeError):
        check_move((3, 1), 1, 2, agreed=False)  # not supported at all ranks lowest
    check_move((3, 1), 3, 1, agreed=True)


def test_stored_identities_round_trip() -> None:
    one = Client.generate(b"a@x", 1)
    one.make_key_package(last_resort=True)
    three = Client.generate(b"a@x", 3)
    three.make_key_package()
    single = encode_identities([one])
    assert not single.startswith(IDENTITIES_MAGIC)  # older versions read it
    (back,) = decode_identities(single, one.config)
    assert back.signature_private_key == one.signature_private_key
    data = encode_identities([one, three])
    a, b = decode_identities(data, one.config)
    assert (a.suite_id, b.suite_id) == (1, 3)
    assert b.signature_private_key == three.signature_private_key
    assert set(b.key_packages) == set(three.key_packages)
    with pytest.raises(DecodeError):
        decode_identities(data + b"\x00", one.config)
    with pytest.raises(DecodeError):
        decode_identities(encode_identities([one, one]), one.config)


def test_group_link_checks() -> None:
    link = GroupLink(predecessor_group_id=b"g", predecessor_room=b"old@muc.x",
                     room=b"new@muc.x")
    assert link_of((Extension(LINK_EXTENSION, link.encode()),)) == link
    assert link_of(()) is None
    for bad in (GroupLink(2, b"g", b"old@muc.x", b"new@muc.x"),
                GroupLink(1, b"g", b"old@muc.x", b"new@muc.x/res"),
                GroupLink(1, b"g", b"\xff", b"new@muc.x")):
        with pytest.raises(EnvelopeError):
            link_of((Extension(LINK_EXTENSION, bad.encode()),))
    with pytest.raises(EnvelopeError):
        link_of((Extension(LINK_EXTENSION, b"\x01"),))


def test_reinit_psk_is_read_from_the_welcome_without_using_the_key_package() -> None:
    alice1, alice3 = Client.generate(b"a@x", 1), Client.generate(b"b@x", 3)
    alice3.groups = alice1.groups
    alice3.resumption_psks = alice1.resumption_psks
    bob1, bob3 = Client.generate(b"b@x", 1), Client.generate(b"b@x", 3)
    old = alice1.create_group()
    pending = old.commit(add=[bob1.make_key_package()])
    old.merge_pending_commit()
    assert pending.welcome is not None
    assert reinit_psk(pending.welcome, bob1) is None  # an ordinary Welcome
    old.commit(proposals=[ReInit(b"new-group", 1, 3, ())], include_pending=False)
    old.merge_pending_commit()
    kp = bob3.make_key_package()
    new, pending = alice3.reinit_group(old, [kp])
    assert pending.welcome is not None
    psk = reinit_psk(pending.welcome, bob3)
    assert psk is not None and (psk.psk_group_id, psk.psk_epoch) == (old.group_id, old.epoch)
    assert kp.ref(bob3.suite) in bob3.key_packages  # nothing used up
    assert reinit_psk(pending.welcome, bob1) is None  # not for that identity's KeyPackages
    assert reinit_psk(b"\x00\x01", bob3) is None
