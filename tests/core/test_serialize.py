"""Versioned serialisation of the whole group state (mls_xmpp.core.group.serialize).

Groups are built with the real client API; every situation checks that the
encoding is canonical (``encode(decode(x)) == x``), that a restored group keeps
working with the other members, that malformed data raises DecodeError, and
that secrets the state has deleted are absent from the serialisation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from mls_xmpp.core.codec import U16
from mls_xmpp.core.errors import DecodeError, SecretTreeError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.events import ApplicationMessage, CommitApplied
from mls_xmpp.core.group.group import Group
from mls_xmpp.core.group.serialize import (
    BASE_MAGIC,
    FORMAT_VERSION,
    MAGIC,
    RATCHETS_MAGIC,
    _GroupRecord,
    _LeafChange,
    _LeafRatchets,
    _NodeSecret,
    _PastEpochRecord,
    _SkippedKey,
    decode_group,
    decode_group_parts,
    decode_state,
    encode_group,
    encode_group_parts,
    encode_ratchets,
    encode_state,
)
from mls_xmpp.core.messages.proposals import ReInit
from mls_xmpp.core.tree.secret_tree import RatchetType, SecretTree

APP = RatchetType.APPLICATION


# -- helpers -------------------------------------------------------------------------------


def restore(group: Group, client: Client) -> Group:
    """Serialise, decode and check the encoding is reproduced byte for byte."""
    blob = encode_group(group)
    assert blob[:4] == MAGIC and blob[4:6] == FORMAT_VERSION.to_bytes(2, "big")
    restored = decode_group(blob, client.config, client.psk_lookup)
    assert encode_group(restored) == blob
    # the same state in two parts (base and ratchets) decodes to the same group
    base, ratchets = encode_group_parts(group)
    assert base[:4] == BASE_MAGIC and ratchets[:4] == RATCHETS_MAGIC
    assert ratchets == encode_ratchets(group)
    from_parts = decode_group_parts(base, ratchets, client.config, client.psk_lookup)
    assert encode_group(from_parts) == blob
    assert encode_group_parts(from_parts) == (base, ratchets)
    assert encode_state(decode_state(encode_state(group.state))) == encode_state(group.state)
    return restored


def same_epoch(*groups: Group) -> None:
    assert len({g.epoch for g in groups}) == 1
    assert len({g.epoch_authenticator for g in groups}) == 1


def make_group(n: int, suite_id: int = 1, config: GroupConfig | None = None
               ) -> tuple[list[Client], list[Group]]:
    """``n`` members; member 0 created the group and added the others in one Commit."""
    clients = [Client.generate(f"member{i}".encode(), suite_id, config=config)
               for i in range(n)]
    creator = clients[0].create_group()
    groups = [creator]
    if n > 1:
        pending = creator.commit(add=[c.make_key_package() for c in clients[1:]])
        creator.merge_pending_commit()
        assert pending.welcome is not None
        groups += [c.join(pending.welcome) for c in clients[1:]]
    return clients, groups


def deliver(message: bytes, groups: list[Group]) -> None:
    for g in groups:
        g.process(message)


def message_key(sender: Group, receiver: Group) -> tuple[int, bytes, bytes]:
    """The generation, key and nonce of the sender's next application message,
    as the receiver's secret tree will derive them (read without consuming)."""
    leaf = sender.own_leaf_index
    generation = sender.state.secret_tree.next_generation(leaf, APP)
    key, nonce = receiver.state.secret_tree.peek(leaf, APP, generation)
    return generation, key, nonce


def tree_secrets(st: SecretTree) -> list[bytes]:
    """Every secret a secret tree holds (reads its internals, like the serialiser)."""
    out = list(st._tree.values())
    for ratchets in st._ratchets.values():
        for r in ratchets.values():
            out.append(r.secret)
            for key, nonce in r.keys.values():
                out += [key, nonce]
    return out


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite_id", [1, 2, 3])
def test_fresh_group_round_trip(suite_id: int) -> None:
    client = Client.generate(b"alice", suite_id)
    group = client.create_group()
    restored = restore(group, client)
    assert restored.group_id == group.group_id
    assert restored.epoch == 0
    assert restored.state.tree == group.state.tree
    assert restored.state.keys == group.state.keys
    assert restored.state.secrets == group.state.secrets
    assert restored.state.context == group.state.context
    assert restored.state.resumption_psks == group.state.resumption_psks
    assert restored.pending_commit is None and restored.retained_epochs == []
    assert restored.export_secret("x", b"", 16) == group.export_secret("x", b"", 16)


@pytest.mark.parametrize("suite_id", [1, 2, 3])
def test_round_trip_after_adds(suite_id: int) -> None:
    clients, groups = make_group(4, suite_id)
    restored = [restore(g, c) for g, c in zip(groups, clients, strict=True)]
    same_epoch(*groups, *restored)
    for g, r in zip(groups, restored, strict=True):
        assert r.own_leaf_index == g.own_leaf_index
        assert r.members == g.members
        assert r.state.keys == g.state.keys
        assert r.retained_epochs == g.retained_epochs


def test_round_trip_with_cached_proposals() -> None:
    clients, groups = make_group(3)
    a, b, c = groups
    deliver(c.propose_update(), [a, b])
    deliver(b.propose_add(Client.generate(b"dave").make_key_package()), [a, c])
    for g, cl in zip(groups, clients, strict=True):
        r = restore(g, cl)
        assert list(r.state.proposals) == list(g.state.proposals)
        assert len(r.state.proposals) == 2
        assert [(p.proposal, p.sender) for p in r.state.proposals.values()] == \
            [(p.proposal, p.sender) for p in g.state.proposals.values()]
    # the restored committer commits the cached proposals by reference
    a2 = restore(a, clients[0])
    pending = a2.commit()
    b.process(pending.message)
    c2 = restore(c, clients[2])  # holds the private key of its pending Update
    assert len(c2._pending_updates) == 1
    c2.process(pending.message)
    a2.merge_pending_commit()
    same_epoch(a2, b, c2)
    assert len(a2.members) == 4


def test_round_trip_with_pending_commit() -> None:
    clients, groups = make_group(3)
    a, b, c = groups
    dave = Client.generate(b"dave")
    pending = a.commit(add=[dave.make_key_package()], remove=[2])
    a2 = restore(a, clients[0])
    p2 = a2.pending_commit
    assert p2 is not None
    assert p2.message == pending.message
    assert p2.welcome == pending.welcome
    assert p2.welcomes == pending.welcomes
    assert p2.group_info == pending.group_info
    assert p2.proposals == pending.proposals
    assert p2.by_value == pending.by_value
    assert p2.added == pending.added
    assert p2.removed == pending.removed
    assert encode_state(p2.new_state) == encode_state(pending.new_state)

    # the restored pending commit can be merged and the others follow it
    event = a2.merge_pending_commit()
    assert event.own and len(event.added) == 1 and len(event.removed) == 1
    # restored after the merge, the member still recognises its Commit's echo
    a2 = restore(a2, clients[0])
    assert a2.process(pending.message) == event
    b.process(pending.message)
    assert p2.welcome is not None
    d = dave.join(p2.welcome)
    same_epoch(a2, b, d)
    m = d.encrypt(b"hello from dave")
    for g in (a2, b):
        ev = g.process(m)
        assert isinstance(ev, ApplicationMessage) and ev.data == b"hello from dave"


def test_restored_pending_commit_recognised_when_echoed() -> None:
    clients, groups = make_group(2)
    a, b = groups
    pending = a.commit()
    a2 = restore(a, clients[0])
    event = a2.process(pending.message)  # the DS echoes the sender's own Commit
    assert isinstance(event, CommitApplied) and event.own
    b.process(pending.message)
    same_epoch(a2, b)
    a3 = restore(a2, clients[0])
    assert a3.process(pending.message) == event  # echoed again after a restart
    same_epoch(a3, b)


def test_pending_update_private_key_survives() -> None:
    clients, groups = make_group(3)
    a, b, c = groups
    update = c.propose_update()
    c2 = restore(c, clients[2])
    assert c2._pending_updates.keys() == c._pending_updates.keys()
    deliver(update, [a, b])
    pending = a.commit()
    a.merge_pending_commit()
    b.process(pending.message)
    c2.process(pending.message)
    same_epoch(a, b, c2)
    assert c2._pending_updates == {}


def test_round_trip_over_several_epochs_with_past_epochs() -> None:
    clients, groups = make_group(3)
    a, b, c = groups
    late: list[tuple[int, bytes]] = []
    for i in range(4):
        committer = groups[i % 3]
        late.append((committer.epoch, groups[(i + 1) % 3].encrypt(b"late %d" % i)))
        deliver(committer.encrypt(b"now %d" % i), [g for g in groups if g is not committer])
        pending = committer.commit()
        committer.merge_pending_commit()
        deliver(pending.message, [g for g in groups if g is not committer])
    same_epoch(*groups)
    assert b.retained_epochs == [2, 3, 4]
    restored = [restore(g, cl) for g, cl in zip(groups, clients, strict=True)]
    for r, g in zip(restored, groups, strict=True):
        assert r.retained_epochs == g.retained_epochs
    # c restored reads the late messages of the retained epochs it did not send
    c2 = restored[2]
    read = 0
    for i, (epoch, msg) in enumerate(late):
        sender = (i + 1) % 3
        if epoch not in c2.retained_epochs or sender == 2:
            continue
        ev = c2.process(msg)
        assert isinstance(ev, ApplicationMessage) and ev.data == b"late %d" % i
        assert ev.epoch == epoch
        read += 1
    assert read == 2
    restore(c2, clients[2])


def test_round_trip_with_skipped_keys_out_of_order() -> None:
    clients, groups = make_group(2)
    a, b = groups
    expected = [message_key(a, b)]
    msgs = [a.encrypt(b"m0")]
    for i in range(1, 4):
        expected.append(message_key(a, b))
        msgs.append(a.encrypt(b"m%d" % i))
    b.process(msgs[3])  # generations 0..2 are skipped and their keys kept
    assert b.state.secret_tree.held_generations(0, APP) == {0, 1, 2}
    b2 = restore(b, clients[1])
    assert b2.state.secret_tree.held_generations(0, APP) == {0, 1, 2}
    blob = encode_group(b2)
    for _, key, nonce in expected[:3]:
        assert key in blob and nonce in blob
    for i in (1, 0, 2):
        ev = b2.process(msgs[i])
        assert isinstance(ev, ApplicationMessage) and ev.data == b"m%d" % i
        b2 = restore(b2, clients[1])
    with pytest.raises(SecretTreeError):
        b2.process(msgs[3])  # replay: the key was used before the restore
    with pytest.raises(SecretTreeError):
        b2.process(msgs[1])
    blob = encode_group(b2)
    for _, key, nonce in expected:
        assert key not in blob and nonce not in blob


def test_restored_group_keeps_working() -> None:
    clients, groups = make_group(3)
    a, b, c = groups
    b2 = restore(b, clients[1])
    # next application message
    ev = b2.process(a.encrypt(b"hi"))
    assert isinstance(ev, ApplicationMessage) and ev.data == b"hi"
    # next commit from someone else
    pending = c.commit()
    c.merge_pending_commit()
    a.process(pending.message)
    b2.process(pending.message)
    same_epoch(a, b2, c)
    # a commit of the restored member
    b3 = restore(b2, clients[1])
    pending = b3.commit(add=[Client.generate(b"erin").make_key_package()])
    b3.merge_pending_commit()
    deliver(pending.message, [a, c])
    same_epoch(a, b3, c)
    # and it can still talk
    m = b3.encrypt(b"after restore")
    for g in (a, c):
        ev = g.process(m)
        assert isinstance(ev, ApplicationMessage) and ev.data == b"after restore"
    m = a.encrypt(b"to the restored")
    ev = restore(b3, clients[1]).process(m)
    assert isinstance(ev, ApplicationMessage) and ev.data == b"to the restored"


def test_round_trip_of_removed_member() -> None:
    clients, groups = make_group(3)
    a, b, c = groups
    pending = a.commit(remove=[1])
    a.merge_pending_commit()
    c.process(pending.message)
    ev = b.process(pending.message)
    assert isinstance(ev, CommitApplied) and ev.self_removed
    b2 = restore(b, clients[1])
    assert not b2.active and b2.retained_epochs == []


def test_round_trip_after_reinit() -> None:
    clients, groups = make_group(2)
    a, b = groups
    pending = a.commit(proposals=[ReInit(b"new group", 1, 1)])
    a.merge_pending_commit()
    b.process(pending.message)
    for g, cl in zip(groups, clients, strict=True):
        r = restore(g, cl)
        assert r.state.reinit == ReInit(b"new group", 1, 1)
        assert not r.active


def test_decode_state_alone() -> None:
    clients, groups = make_group(3)
    state = groups[1].state
    data = encode_state(state)
    back = decode_state(data)
    assert back.tree == state.tree and back.keys == state.keys
    assert back.secrets == state.secrets and back.context == state.context
    with pytest.raises(DecodeError):
        decode_state(data[:-1])
    with pytest.raises(DecodeError):
        decode_state(data + b"\x00")


# -- malformed data ------------------------------------------------------------------------


def _blob() -> tuple[bytes, Client]:
    """A member with a past epoch, a merged own Commit, cached proposals, a pending
    Update and a pending Commit."""
    clients, groups = make_group(2)
    a, b = groups
    pending = b.commit()
    b.merge_pending_commit()
    a.process(pending.message)
    b.process(a.propose_update())
    b.process(a.encrypt(b"x"))
    b.propose_update()
    b.commit()
    assert b.retained_epochs and b._pending_updates and b.pending_commit is not None
    assert b._last_own_commit is not None
    return encode_group(b), clients[1]


def test_bad_magic_and_version() -> None:
    blob, client = _blob()
    for bad in (b"", b"MLS", b"XXXX" + blob[4:], b"mlsx" + blob[4:],
                blob[:4] + U16.encode(FORMAT_VERSION + 1) + blob[6:],
                blob[:4] + U16.encode(0) + blob[6:], blob[:4], blob[:5]):
        with pytest.raises(DecodeError):
            decode_group(bad, client.config, client.psk_lookup)


def test_truncated_and_extended_data() -> None:
    client = Client.generate(b"alice")
    small = encode_group(client.create_group())
    for n in range(len(small)):
        with pytest.raises(DecodeError):
            decode_group(small[:n], client.config, client.psk_lookup)
    blob, client = _blob()
    for n in range(0, len(blob), max(1, len(blob) // 300)):
        with pytest.raises(DecodeError):
            decode_group(blob[:n], client.config, client.psk_lookup)
    with pytest.raises(DecodeError):
        decode_group(blob + b"\x00", client.config, client.psk_lookup)


def test_garbled_data_raises_only_decode_error() -> None:
    blob, client = _blob()
    rng = random.Random(9420)
    failures = 0
    for _ in range(400):
        data = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            g = decode_group(bytes(data), client.config, client.psk_lookup)
        except DecodeError:
            failures += 1
            continue
        # what decodes re-encodes to the very same bytes (the format is canonical)
        assert encode_group(g) == bytes(data)
    assert failures > 0


def _state_change(**fields: object) -> Callable[[_GroupRecord], _GroupRecord]:
    return lambda r: replace(r, state=replace(r.state, **fields))  # type: ignore[arg-type]


def _secret_tree_change(**fields: object) -> Callable[[_GroupRecord], _GroupRecord]:
    return lambda r: replace(r, state=replace(
        r.state, secret_tree=replace(r.state.secret_tree, **fields)))  # type: ignore[arg-type]


def _bad_skipped_key(r: _GroupRecord, *, too_new: bool) -> _GroupRecord:
    st = r.state.secret_tree
    leaves = []
    for lr in st.leaves:
        app = lr.application
        assert app is not None
        key = _SkippedKey(app.generation if too_new else 0, b"k" * (16 if too_new else 3),
                          b"n" * 12)
        leaves.append(replace(lr, application=replace(app, generation=max(app.generation, 1),
                                                      skipped=(key,))))
    return replace(r, state=replace(r.state, secret_tree=replace(st, leaves=tuple(leaves))))


def _pending_of_unknown_suite(r: _GroupRecord) -> _GroupRecord:
    assert r.pending is not None
    return replace(r, pending=replace(r.pending, new_state=replace(r.pending.new_state,
                                                                   cipher_suite=0)))


def test_inconsistent_records_raise_decode_error() -> None:
    blob, client = _blob()
    rec = _GroupRecord.decode(blob[6:])
    st = rec.state
    assert st.secret_tree.leaves and rec.pending is not None and st.proposals
    cases: list[tuple[Callable[[_GroupRecord], _GroupRecord], str]] = [
        (_state_change(cipher_suite=0x7777), "cipher suite 30583 is not supported"),
        (_state_change(cipher_suite=2), "with a GroupContext of suite 1"),
        (_state_change(secrets=replace(st.secrets, init_secret=b"short")), "init_secret"),
        (_state_change(secrets=replace(st.secrets, joiner_secret=b"short")), "joiner_secret"),
        (_state_change(own_leaf=1000), "own leaf 1000 is outside"),
        (_state_change(tree=replace(st.tree, n_leaves=3)), "cannot have 3 leaves"),
        (_state_change(tree=replace(st.tree, n_leaves=1)), "cannot have 1 leaves"),
        (_state_change(proposals=st.proposals * 2), "duplicate proposal refs"),
        (_state_change(resumption_psks=st.resumption_psks * 2), "resumption PSK epochs"),
        (_state_change(keys=replace(st.keys, keys=st.keys.keys * 2)), "private key nodes"),
        (_secret_tree_change(nodes=(_NodeSecret(2, bytes(32)), _NodeSecret(0, bytes(32)))),
         "secret tree nodes must be strictly ascending"),
        (_secret_tree_change(nodes=(_NodeSecret(99, bytes(32)),)), "node 99 is outside"),
        (_secret_tree_change(nodes=(_NodeSecret(0, bytes(5)),)), "node secret must be 32"),
        (_secret_tree_change(n_leaves=8), "differ in size"),
        (_secret_tree_change(n_leaves=0), "power-of-two"),
        (_secret_tree_change(leaves=st.secret_tree.leaves * 2), "secret tree leaves"),
        (_secret_tree_change(leaves=(_LeafRatchets(0, None, None),)), "has no ratchet"),
        (lambda r: _bad_skipped_key(r, too_new=True), "not older than the ratchet"),
        (lambda r: _bad_skipped_key(r, too_new=False), "message key must be 16 bytes"),
        (lambda r: replace(r, past=(_PastEpochRecord(st.context.epoch, st.secret_tree,
                                                     st.secrets.sender_data_secret,
                                                     st.tree.n_leaves, (),
                                                     st.context.encode()),)),
         "past epoch is not older"),
        (lambda r: replace(r, past=(_PastEpochRecord(st.context.epoch - 1, st.secret_tree,
                                                     st.secrets.sender_data_secret,
                                                     st.tree.n_leaves,
                                                     (_LeafChange(1, None),) * 2,
                                                     st.context.encode()),)),
         "changed leaves of a retained tree must be strictly ascending"),
        (lambda r: replace(r, past=(_PastEpochRecord(st.context.epoch - 1, st.secret_tree,
                                                     st.secrets.sender_data_secret,
                                                     st.tree.n_leaves,
                                                     (_LeafChange(st.tree.n_leaves, None),),
                                                     st.context.encode()),)),
         "outside a tree"),
        (lambda r: replace(r, pending_updates=r.pending_updates * 2), "pending update keys"),
        (_pending_of_unknown_suite, "cipher suite 0 is not supported"),
    ]
    for change, message in cases:
        bad = blob[:6] + change(rec).encode()
        assert bad != blob
        with pytest.raises(DecodeError, match=message):
            decode_group(bad, client.config, client.psk_lookup)


# -- forward secrecy -------------------------------------------------------------------------


def test_used_message_keys_are_not_serialised() -> None:
    clients, groups = make_group(3)
    a, b, c = groups
    keys = []
    for i in range(3):
        keys.append(message_key(a, b))
        assert message_key(a, c)[1:] == keys[-1][1:]
        m = a.encrypt(b"secret %d" % i)
        for g in (b, c):
            ev = g.process(m)
            assert isinstance(ev, ApplicationMessage)
    for g in groups:
        blob = encode_group(g)
        for _, key, nonce in keys:
            assert key not in blob
            assert nonce not in blob
    # a key still unused is there (positive control): b's next key from a is
    # derived from the ratchet secret, which is serialised
    generation = a.state.secret_tree.next_generation(a.own_leaf_index, APP)
    assert generation == 3
    ratchet_secret = b.state.secret_tree._ratchets[APP][0].secret
    assert ratchet_secret in encode_group(b)
    # handshake keys too: a proposal and the Commit (whose epoch stays retained)
    hs = RatchetType.HANDSHAKE
    senders: list[Callable[[], bytes]] = [c.propose_update, lambda: c.commit().message]
    for send in senders:
        gen = c.state.secret_tree.next_generation(c.own_leaf_index, hs)
        used = a.state.secret_tree.peek(c.own_leaf_index, hs, gen)
        assert b.state.secret_tree.peek(c.own_leaf_index, hs, gen) == used
        deliver(send(), [a, b])
        for g in (a, b, c):
            blob = encode_group(g)
            assert used[0] not in blob and used[1] not in blob
    c.merge_pending_commit()
    same_epoch(a, b, c)
    assert 1 in b.retained_epochs


def test_old_epoch_secrets_gone_after_retention_window() -> None:
    config = GroupConfig(past_epochs=2)
    clients, groups = make_group(3, config=config)
    a, b, c = groups
    deliver(a.encrypt(b"in epoch 1"), [b, c])
    old_epoch = b.epoch
    # the state no longer keeps encryption_secret: the secret tree holds its root
    assert b.state.secrets.encryption_secret == b""
    old = [b.state.secrets.sender_data_secret, *tree_secrets(b.state.secret_tree)]
    assert all(old)

    def advance() -> None:
        pending = a.commit()
        a.merge_pending_commit()
        deliver(pending.message, [b, c])

    advance()
    assert old_epoch in b.retained_epochs
    blob = encode_group(b)
    assert b.state.secrets.sender_data_secret != old[0]
    assert old[0] in blob  # kept while the epoch is retained (positive control)
    advance()
    assert old_epoch in b.retained_epochs
    advance()
    assert old_epoch not in b.retained_epochs
    for g in groups:
        blob = encode_group(g)
        for secret in old:
            assert secret not in blob
    same_epoch(a, restore(b, clients[1]), c)


# -- the state in two parts ------------------------------------------------------------------


def test_application_messages_change_only_the_ratchets() -> None:
    clients, groups = make_group(3)
    a, b, c = groups
    late = b.encrypt(b"sent in epoch 1, read in epoch 2")
    pending = a.commit()
    a.merge_pending_commit()
    deliver(pending.message, [b, c])
    before = {id(g): encode_group_parts(g) for g in groups}
    # sending, reading in the current epoch and reading late from a retained epoch
    for g in (b, c):
        ev = g.process(a.encrypt(b"now"))
        assert isinstance(ev, ApplicationMessage)
    ev = a.process(late)
    assert isinstance(ev, ApplicationMessage) and ev.epoch == 1
    for g in groups:
        base, ratchets = encode_group_parts(g)
        assert base == before[id(g)][0]  # what a store need not write again
        assert ratchets != before[id(g)][1]
        # the base holds no secret of any secret tree
        for st in [g.state.secret_tree] + [g._past[e].secret_tree for e in g._past]:
            for secret in tree_secrets(st):
                assert secret not in base
    # an old base with the new ratchets is the new state
    for g, cl in zip(groups, clients, strict=True):
        old_base = before[id(g)][0]
        again = decode_group_parts(old_base, encode_ratchets(g), cl.config, cl.psk_lookup)
        assert encode_group(again) == encode_group(g)


def test_mismatched_parts_are_refused() -> None:
    clients, groups = make_group(2)
    a, b = groups
    cl = clients[0]
    base1, ratchets1 = encode_group_parts(a)
    pending = a.commit()
    a.merge_pending_commit()
    b.process(pending.message)
    base2, ratchets2 = encode_group_parts(a)
    whole = encode_group(a)

    def refused(base: bytes, ratchets: bytes, reason: str) -> None:
        with pytest.raises(DecodeError, match=reason or None):
            decode_group_parts(base, ratchets, cl.config, cl.psk_lookup)

    refused(base2, ratchets1, "other epochs")        # epoch 2 state, epoch 1 ratchets
    refused(base1, ratchets2, "other epochs")
    refused(whole, ratchets2, "bad magic")           # a whole state is not a base
    refused(base2, whole, "bad magic")
    refused(base2, base2, "bad magic")
    refused(base2, ratchets2 + b"\0", "trailing|remain")
    refused(base2[:-1], ratchets2, "")  # truncated
    # ratchets of a group of another size, same epochs
    _, other = make_group(3)
    other_a = other[0]
    other_a.commit()
    other_a.merge_pending_commit()
    assert other_a.epoch == a.epoch
    refused(base2, encode_ratchets(other_a), "another tree")
    # a base that carries secrets: the whole blob's record under the base magic
    sneaky = BASE_MAGIC + whole[4:]
    refused(sneaky, ratchets2, "holds secret tree secrets")


# -- retained epochs: leaves only, as changes; format version 1 still read -----------------


def test_retained_trees_are_stored_as_leaf_changes() -> None:
    clients, groups = make_group(20)
    for i in range(3):  # three updates: each changes the committer's leaf only
        committer = groups[i]
        pending = committer.commit()
        committer.merge_pending_commit()
        deliver(pending.message, [g for g in groups if g is not committer])
    g = groups[5]
    assert g.retained_epochs == [1, 2, 3]
    from mls_xmpp.core.codec import Reader

    blob = encode_group(g)
    r = Reader(blob[6:])
    rec = _GroupRecord.read(r)
    assert [len(p.changed) for p in rec.past] == [1, 1, 1]
    assert [c.leaf for p in rec.past for c in p.changed] == [0, 1, 2]
    # decoded retained trees share the current tree's leaves; parents are blank
    restored = restore(g, clients[5])
    newest = restored._past[3].tree
    current = restored.state.tree
    assert newest.leaf(7) is current.leaf(7) and newest.leaf(2) is not current.leaf(2)
    assert newest.leaf(2) == g._past[3].tree.leaf(2)
    assert all(newest.node(x) is None for x in range(1, 2 * newest.n_leaves - 1, 2))


def test_format_version_1_is_still_read() -> None:
    import json
    from pathlib import Path

    fixture = json.loads((Path(__file__).parent / "data" / "group-state-v1.json").read_text())
    blob = bytes.fromhex(fixture["state_v1"])
    assert blob[4:6] == (1).to_bytes(2, "big")  # written by the version-1 code
    config = GroupConfig()
    group = decode_group(blob, config, lambda _: None)
    assert group.epoch == fixture["epoch"]
    assert group.retained_epochs == fixture["retained"]
    assert group.epoch_authenticator.hex() == fixture["epoch_authenticator"]
    # late messages of the retained epochs are still read after the upgrade
    read = 0
    for late in fixture["late"]:
        if late["epoch"] not in group.retained_epochs:
            continue
        event = group.process(bytes.fromhex(late["message"]))
        assert isinstance(event, ApplicationMessage)
        assert event.data == late["plaintext"].encode()
        read += 1
    assert read == 3
    # written again, it is version 2, and decodes to the same state
    again = encode_group(group)
    assert again[4:6] == FORMAT_VERSION.to_bytes(2, "big") == (2).to_bytes(2, "big")
    assert encode_group(decode_group(again, config, lambda _: None)) == again


def test_huge_stored_trees_are_refused_before_allocating() -> None:
    from mls_xmpp.core.codec import Reader
    from mls_xmpp.core.group.serialize import MAX_STORED_LEAVES

    clients, groups = make_group(3)
    a = groups[0]
    pending = a.commit()
    a.merge_pending_commit()
    blob = encode_group(a)
    rec = _GroupRecord.read(Reader(blob[6:]))
    for n in (MAX_STORED_LEAVES * 2, 3, 0):
        bad = replace(rec, past=(replace(rec.past[0], n_leaves=n),))
        with pytest.raises(DecodeError, match="retained tree cannot have"):
            decode_group(blob[:6] + bad.encode(), clients[0].config, clients[0].psk_lookup)
    bad_tree = replace(rec, state=replace(rec.state, tree=replace(
        rec.state.tree, n_leaves=MAX_STORED_LEAVES * 2)))
    with pytest.raises(DecodeError, match="cannot have"):
        decode_group(blob[:6] + bad_tree.encode(), clients[0].config, clients[0].psk_lookup)
    del pending
