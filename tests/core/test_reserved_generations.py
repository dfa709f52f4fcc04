"""Reserved generations of the own application ratchet (SecretTree.reserve,
Group.reserve_generations): the stored state is ahead of every generation used
for sending within a reservation, so a crash never reuses one, and receivers
accept the gap a crashed sender leaves."""

from __future__ import annotations

import pytest

from mls_xmpp.core.crypto import CipherSuite, get_suite
from mls_xmpp.core.errors import LocalUsageError, SecretTreeError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.events import ApplicationMessage
from mls_xmpp.core.group.group import Group
from mls_xmpp.core.group.serialize import (
    decode_group,
    decode_group_parts,
    encode_group,
    encode_group_parts,
    encode_ratchets,
)
from mls_xmpp.core.tree.secret_tree import RatchetType, SecretTree

APP = RatchetType.APPLICATION


def make_pair() -> tuple[list[Client], Group, Group]:
    alice, bob = Client.generate(b"alice"), Client.generate(b"bob")
    a = alice.create_group()
    pending = a.commit(add=[bob.make_key_package()])
    a.merge_pending_commit()
    assert pending.welcome is not None
    return [alice, bob], a, bob.join(pending.welcome)


def crash(group: Group, client: Client) -> Group:
    """What a restart finds: the group decoded from its stored parts."""
    base, ratchets = encode_group_parts(group)
    return decode_group_parts(base, ratchets, client.config, client.psk_lookup)


def next_gen(group: Group) -> int:
    return group.state.secret_tree.next_generation(group.own_leaf_index, APP)


def generation_of(message: bytes, receiver: Group) -> int:
    """The generation the receiver's ratchet of the sender moved past."""
    ev = receiver.process(message)
    assert isinstance(ev, ApplicationMessage)
    return receiver.state.secret_tree.next_generation(ev.sender.leaf_index, APP) - 1


def test_reservation_is_encoded_and_decoded() -> None:
    clients, a, _b = make_pair()
    assert a.reserve_generations(8) is True
    assert a.reserve_generations(8) is False  # the next generation is inside it
    assert next_gen(a) == 0
    restored = crash(a, clients[0])
    # the stored ratchet stands at the reserved generation, with no skipped keys
    assert next_gen(restored) == 8
    assert restored.state.secret_tree.held_generations(restored.own_leaf_index, APP) == set()
    # the whole-state encoding says the same
    whole = decode_group(encode_group(a), clients[0].config, clients[0].psk_lookup)
    assert next_gen(whole) == 8
    # the encoding of the decoded state is the same bytes (canonical)
    assert encode_ratchets(restored) == encode_ratchets(a)


def test_sending_within_a_reservation_changes_no_stored_byte() -> None:
    _clients, a, b = make_pair()
    assert a.reserve_generations(4)
    stored = encode_ratchets(a)
    for i in range(4):
        b.process(a.encrypt(b"m%d" % i))
        assert encode_ratchets(a) == stored  # nothing new to write for the sender
    # the fifth message would reach the reservation: a new one, to be stored first
    assert a.reserve_generations(4) is True
    assert encode_ratchets(a) != stored
    assert next_gen(crash(a, _clients[0])) == 8


def test_a_crash_never_reuses_a_generation() -> None:
    clients, a, b = make_pair()
    used: list[int] = []
    for _round in range(3):
        for i in range(5):  # 5 messages per life, a reservation of 3: renewed in between
            if a.reserve_generations(3):
                stored = encode_group_parts(a)  # what the store holds from now on
            msg = a.encrypt(b"x%d" % i)
            used.append(generation_of(msg, b))
        # the crash: only what was stored survives (the last write, not the group)
        a = decode_group_parts(*stored, clients[0].config, clients[0].psk_lookup)
    assert len(used) == len(set(used))  # no generation used twice
    assert used == sorted(used)


def test_receivers_accept_the_gap_and_keep_its_keys_within_the_window() -> None:
    clients, a, b = make_pair()
    assert a.reserve_generations(32)
    b.process(a.encrypt(b"one"))  # generation 0
    restarted = crash(a, clients[0])  # crashed after one message: resumes at 32
    assert next_gen(restarted) == 32
    ev = b.process(restarted.encrypt(b"after the crash"))
    assert isinstance(ev, ApplicationMessage) and ev.data == b"after the crash"
    # the forward-secrecy cost: the receiver holds the keys of the unused
    # reserved generations (1..31) until its out-of-order window drops them
    held = b.state.secret_tree.held_generations(a.own_leaf_index, APP)
    assert held == set(range(1, 32))


def test_reservation_bounded_by_the_gap_receivers_accept() -> None:
    st = SecretTree(_suite(), bytes(32), 2, max_generation_gap=10)
    with pytest.raises(LocalUsageError):
        st.reserve(0, 11)
    with pytest.raises(LocalUsageError):
        st.reserve(0, 0)
    assert st.reserve(0, 10)
    # a receiver with the same limit accepts a sender resuming at the reservation
    receiver = SecretTree(_suite(), bytes(32), 2, max_generation_gap=10)
    receiver.peek(0, APP, 10)
    with pytest.raises(SecretTreeError):
        receiver.peek(0, APP, 11)


def test_reserved_secret_is_the_ratchet_secret_there() -> None:
    """The reserved ratchet is the real one advanced: keys derived from the stored
    state match those of the live ratchet at the same generation."""
    sender = SecretTree(_suite(), bytes(range(32)), 4)
    twin = SecretTree(_suite(), bytes(range(32)), 4)
    sender.reserve(1, 5)
    held = sender.reserved_ratchet(1)
    assert held is not None and held[0] == 5
    for _ in range(5):
        twin.next_key(1, APP)
    assert twin._ratchets[APP][1].secret == held[1]
    # used up: no reservation any more once the ratchet reaches it
    for _ in range(5):
        sender.next_key(1, APP)
    assert sender.reserved_ratchet(1) is None


def _suite() -> CipherSuite:
    return get_suite(1)


def test_early_renewal_before_the_reservation_is_used_up() -> None:
    """``early``: a new reservation once ``early`` generations or fewer are left; the
    encoding holds the new end at once (a stored copy of it covers more)."""
    clients, a, b = make_pair()
    assert a.reserve_generations(8, early=4) is True
    assert a.reserved_generations() == 8 and a.sending_generation() == 0
    renewals = []
    for i in range(12):
        if a.reserve_generations(8, early=4):
            renewals.append((i, a.reserved_generations()))
        assert a.sending_generation() == i
        assert generation_of(a.encrypt(b"m"), b) == i
    # renewed when generation 4 (4 left of 0..7) and then 8 (4 left of 4..11) came up
    assert renewals == [(4, 12), (8, 16)]
    assert next_gen(crash(a, clients[0])) == 16
    with pytest.raises(LocalUsageError):
        a.reserve_generations(8, early=8)
    with pytest.raises(LocalUsageError):
        a.reserve_generations(8, early=-1)
