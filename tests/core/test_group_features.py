"""Group operations end to end in memory: external senders, ReInit, external joins,
the pending-commit lifecycle, late messages, policy."""

from __future__ import annotations

import pytest

from mls_xmpp.core.errors import (
    GroupStateError,
    MLSError,
    PolicyError,
    SecretTreeError,
    WrongEpochError,
)
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.config import GroupConfig, Policy
from mls_xmpp.core.group.events import ApplicationMessage, CommitApplied, ProposalReceived
from mls_xmpp.core.group.external import external_proposal
from mls_xmpp.core.group.group import Group
from mls_xmpp.core.messages.extensions import ExternalSender, external_senders_extension
from mls_xmpp.core.messages.proposals import Add, PreSharedKey, Proposal, Remove
from mls_xmpp.core.schedule.psk import PreSharedKeyID


def _group(n: int, config: GroupConfig | None = None, **kw: object
           ) -> tuple[list[Client], list[Group]]:
    clients = [Client.generate(f"m{i}@example.org".encode(), config=config) for i in range(n)]
    first = clients[0].create_group(**kw)  # type: ignore[arg-type]
    groups = [first]
    if n > 1:
        p = first.commit(add=[c.make_key_package() for c in clients[1:]])
        first.merge_pending_commit()
        groups += [c.join(p.welcome) for c in clients[1:]]  # type: ignore[arg-type]
    return clients, groups


def _deliver(msg: bytes, groups: list[Group]) -> list[object]:
    return [g.process(msg) for g in groups]


def _agree(groups: list[Group]) -> None:
    assert len({g.epoch for g in groups}) == 1
    assert len({g.epoch_authenticator for g in groups}) == 1
    assert len({g.export_secret(b"x", b"", 16) for g in groups}) == 1


def test_external_sender_proposes_add_and_remove() -> None:
    service = Client.generate(b"service@example.org")
    ext = external_senders_extension((ExternalSender(service.signature_public_key,
                                                     service.credential),))
    clients, groups = _group(2, extensions=(ext,))
    a, b = groups
    newcomer = Client.generate(b"new@example.org")
    msg = external_proposal(Add(newcomer.make_key_package()), group_id=a.group_id,
                            epoch=a.epoch, suite_id=1,
                            signature_private_key=service.signature_private_key,
                            sender_index=0)
    events = _deliver(msg, groups)
    assert all(isinstance(e, ProposalReceived) for e in events)
    p = a.commit()
    a.merge_pending_commit()
    b.process(p.message)
    joined = newcomer.join(p.welcome)  # type: ignore[arg-type]
    _agree([a, b, joined])
    # the external sender removes bob
    msg = external_proposal(Remove(b.own_leaf_index), group_id=a.group_id, epoch=a.epoch,
                            suite_id=1, signature_private_key=service.signature_private_key,
                            sender_index=0)
    _deliver(msg, [a, b, joined])
    p = a.commit()
    a.merge_pending_commit()
    assert isinstance(b.process(p.message), CommitApplied) and not b.active
    joined.process(p.message)
    _agree([a, joined])


def test_unknown_external_sender_and_forbidden_types_refused() -> None:
    service = Client.generate(b"service@example.org")
    clients, (a, b) = _group(2)  # no external_senders extension
    msg = external_proposal(Remove(1), group_id=a.group_id, epoch=a.epoch, suite_id=1,
                            signature_private_key=service.signature_private_key,
                            sender_index=0)
    with pytest.raises(MLSError):
        a.process(msg)
    assert not a.state.proposals


def test_new_member_proposal_adds_itself() -> None:
    clients, (a, b) = _group(2)
    newcomer = Client.generate(b"new@example.org")
    msg = external_proposal(Add(newcomer.make_key_package()), group_id=a.group_id,
                            epoch=a.epoch, suite_id=1,
                            signature_private_key=newcomer.signature_private_key,
                            sender_index=None)
    _deliver(msg, [a, b])
    p = b.commit()
    b.merge_pending_commit()
    a.process(p.message)
    _agree([a, b, newcomer.join(p.welcome)])  # type: ignore[arg-type]


def test_reinit_carries_members_to_a_new_group() -> None:
    clients, (a, b) = _group(2)
    _deliver(b.propose_reinit(), [a])
    p = a.commit()
    a.merge_pending_commit()
    b.process(p.message)
    assert not a.active and not b.active
    with pytest.raises(GroupStateError):
        a.encrypt(b"closed")
    new_a, pending = clients[0].reinit_group(a, [clients[1].make_key_package()])
    new_a.merge_pending_commit()
    new_b = clients[1].join(pending.welcome)  # type: ignore[arg-type]
    assert new_a.group_id == a.state.reinit.group_id  # type: ignore[union-attr]
    assert new_a.epoch == new_b.epoch == 1
    _agree([new_a, new_b])


def test_external_join_and_resync() -> None:
    clients, (a, b) = _group(2)
    carol = Client.generate(b"carol@example.org")
    gc, msg = carol.join_external(a.group_info())
    _deliver(msg, [a, b])
    _agree([a, b, gc])
    assert isinstance(gc.process(msg), CommitApplied)  # the echo of its own commit
    # bob loses his state and comes back as himself
    fresh = Client(clients[1].credential, 1, clients[1].signature_private_key)
    gb2, msg = fresh.join_external(a.group_info(), resync_leaf=b.own_leaf_index)
    _deliver(msg, [a, gc])
    _agree([a, gb2, gc])
    assert len(a.members) == 3
    assert isinstance(a.process(gb2.encrypt(b"back")), ApplicationMessage)


def test_resync_with_another_identity_refused() -> None:
    clients, (a, b) = _group(2)
    mallory = Client.generate(b"mallory@example.org")
    _, msg = mallory.join_external(a.group_info(), resync_leaf=b.own_leaf_index)
    before = a.epoch_authenticator
    with pytest.raises(MLSError):
        a.process(msg)
    assert a.epoch_authenticator == before


def test_pending_commit_lifecycle() -> None:
    clients, groups = _group(3)
    a, b, c = groups
    extra = Client.generate(b"x@example.org").make_key_package()
    mine = a.commit(add=[extra])
    with pytest.raises(GroupStateError):
        a.commit()  # one pending at a time
    theirs = b.commit()
    b.merge_pending_commit()
    event = a.process(theirs.message)  # b's commit won: a's is dropped
    assert isinstance(event, CommitApplied)
    assert event.lost == (Add(extra),)
    assert a.pending_commit is None
    c.process(theirs.message)
    _agree(groups)
    with pytest.raises(WrongEpochError):
        c.process(mine.message)  # the losing commit is stale for everyone
    again = a.commit(add=[extra])
    assert a.discard_pending_commit() == [Add(extra)]
    assert a.pending_commit is None
    del again


def test_late_messages_within_retention_then_keys_deleted() -> None:
    clients, groups = _group(2, GroupConfig(past_epochs=2))
    a, b = groups
    late = [a.encrypt(b"late %d" % i) for i in range(3)]
    for _ in range(2):
        p = a.commit()
        a.merge_pending_commit()
        b.process(p.message)
    ev = b.process(late[0])
    assert isinstance(ev, ApplicationMessage) and ev.data == b"late 0"
    with pytest.raises(SecretTreeError):
        b.process(late[0])  # used keys are gone
    p = a.commit()
    a.merge_pending_commit()
    b.process(p.message)
    with pytest.raises(WrongEpochError):
        b.process(late[1])  # beyond the retention window: deleted
    assert len(b.retained_epochs) == 2


class NoAdds(Policy):
    def check_proposal(self, state: object, proposal: Proposal, sender: object) -> None:
        if isinstance(proposal, Add):
            raise PolicyError("no new members here")


def test_policy_applies_to_committer_and_receivers() -> None:
    clients, (a, b) = _group(2)
    strict = GroupConfig(policy=NoAdds())
    b.config = strict
    a2 = Client.generate(b"new@example.org").make_key_package()
    before = b.epoch_authenticator
    p = a.commit(add=[a2])  # a's own policy allows it
    with pytest.raises(PolicyError):
        b.process(p.message)
    assert b.epoch_authenticator == before
    a.discard_pending_commit()
    a.config = strict
    with pytest.raises(PolicyError):
        a.commit(add=[a2])


def test_psks_external_and_resumption() -> None:
    cfg = GroupConfig()
    clients, groups = _group(2, cfg)
    for c in clients:
        c.external_psks[b"shared"] = b"k" * 32
    a, b = groups
    nonce = b"n" * 32
    p = a.commit(proposals=[PreSharedKey(PreSharedKeyID.external(b"shared", nonce))])
    a.merge_pending_commit()
    b.process(p.message)
    _agree(groups)
    _deliver(a.propose_psk(PreSharedKeyID.resumption(1, a.group_id, a.epoch - 1, nonce)), [b])
    p = b.commit()
    b.merge_pending_commit()
    a.process(p.message)
    _agree(groups)
