"""Randomised group runs against a simulated Delivery Service (RFC 9420 §12, §14).

The Delivery Service is an ordered log: every member processes every handshake
message in the same order. When two Commits race for one epoch, only the first
is delivered; the loser sees the winner's Commit in ``process`` (its pending
Commit is dropped and reported in ``lost``) and the winner merges on its echo.

After every step all members agree on the epoch, the epoch_authenticator, an
exported secret, the tree and the roster; removed members can neither read
later application messages nor process later Commits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mls_xmpp.core.errors import MLSError, WrongEpochError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.group.commit import PendingCommit
from mls_xmpp.core.group.config import GroupConfig
from mls_xmpp.core.group.events import ApplicationMessage, CommitApplied, ProposalReceived
from mls_xmpp.core.group.group import Group
from mls_xmpp.core.messages.commit import Commit
from mls_xmpp.core.messages.framing import MLSMessage, PrivateMessage, PublicMessage
from mls_xmpp.core.messages.group_info import GroupContext
from mls_xmpp.core.messages.proposals import PreSharedKey, Proposal, Remove
from mls_xmpp.core.messages.protection import open_private_message
from mls_xmpp.core.schedule.psk import PreSharedKeyID
from mls_xmpp.core.tree.treekem import TreePrivateKeys

MAX_MEMBERS = 6
PSK_ID = b"shared external psk"
PSK_SECRET = b"\x42" * 32
PAST_EPOCHS = GroupConfig().past_epochs


def external_psk() -> PreSharedKeyID:
    return PreSharedKeyID.external(PSK_ID, os.urandom(32))


@dataclass
class Member:
    """A member as the test knows it: a client and its Group."""

    client: Client
    group: Group

    @property
    def name(self) -> bytes:
        return self.client.credential.identity

    def __repr__(self) -> str:
        return f"Member({self.name!r}@{self.group.own_leaf_index})"


@dataclass
class Delayed:
    """An application message the Delivery Service holds back."""

    sender: Group
    epoch: int
    data: bytes
    plaintext: bytes
    #: ids of the groups that were members (the sender excepted) when it was sent
    recipients: set[int] = field(default_factory=set)


@dataclass
class Plan:
    """A Commit created but not yet delivered, with what it should do."""

    committer: Member
    pending: PendingCommit
    joiners: list[Client] = field(default_factory=list)
    removed: list[bytes] = field(default_factory=list)


class GroupRun(RuleBasedStateMachine):
    """Operations on one group with a simulated Delivery Service."""

    def __init__(self) -> None:
        super().__init__()
        self.members: list[Member] = []
        #: Groups of removed members (and the lost state of resynced ones)
        self.removed: list[Group] = []
        #: clients that left and may come back
        self.former: list[Client] = []
        self.delayed: list[Delayed] = []
        self.count = 0

    # -- the world ---------------------------------------------------------------------

    def new_client(self, data: st.DataObject) -> Client:
        self.count += 1
        private = data.draw(st.booleans(), label="handshake_private")
        c = Client.generate(f"client{self.count}@example.org".encode(),
                            config=GroupConfig(handshake_private=private))
        c.external_psks[PSK_ID] = PSK_SECRET
        return c

    @property
    def epoch(self) -> int:
        return self.members[0].group.epoch

    def names(self) -> list[bytes]:
        return [m.name for m in self.members]

    def pick(self, data: st.DataObject, label: str, exclude: tuple[Member, ...] = ()) -> Member:
        return data.draw(st.sampled_from([m for m in self.members if m not in exclude]),
                         label=label)

    def joining_client(self, data: st.DataObject) -> Client:
        """A fresh client, or one that left earlier (and is not in the group)."""
        names = set(self.names())
        back = [c for c in self.former if c.credential.identity not in names]
        if len(back) > 0 and data.draw(st.booleans(), label="former member comes back"):
            c = data.draw(st.sampled_from(back), label="returning client")
            self.former.remove(c)
            return c
        return self.new_client(data)

    def send_proposal(self, proposer: Member, message: bytes) -> None:
        """Every other member receives and caches the proposal."""
        for m in self.members:
            if m is not proposer:
                ev = m.group.process(message)
                assert isinstance(ev, ProposalReceived)
                assert ev.epoch == self.epoch

    def deliver_commit(self, message: bytes, *, committer: Group | None,
                       added: list[bytes], removed: list[bytes],
                       losers: tuple[Plan, ...] = (), included: tuple[Proposal, ...] = ()
                       ) -> dict[bytes, CommitApplied]:
        """The DS hands ``message`` to every member; check the events, update the roster.

        ``included`` are the proposals of the Commit (for the losers' ``lost``).
        """
        old_epoch = self.epoch
        old_context = self.members[0].group.state.context
        old_keys = {m.name: m.group.state.keys.copy() for m in self.members}
        events: dict[bytes, CommitApplied] = {}
        for m in self.members:
            ev = m.group.process(message)
            assert isinstance(ev, CommitApplied), ev
            assert ev.epoch == old_epoch + 1
            assert ev.own == (m.group is committer)
            assert m.group.pending_commit is None
            events[m.name] = ev
            if ev.self_removed:
                assert m.name in removed
                assert not m.group.active
                assert m.name in [x.credential.identity for x in ev.removed]
                continue
            assert m.group.epoch == old_epoch + 1
            assert sorted(x.credential.identity for x in ev.added) == sorted(added), (
                m, ev.added, added)
            assert sorted(x.credential.identity for x in ev.removed) == sorted(removed)
        # members removed earlier cannot process it
        for g in self.removed:
            with pytest.raises(MLSError):
                g.process(message)
        for plan in losers:
            self.check_lost(plan, events[plan.committer.name], included)
        gone = [m for m in self.members if events[m.name].self_removed]
        updated = {x.credential.identity for ev in events.values() for x in ev.updated}
        self.check_path_secrecy(message, old_context, old_keys, committer,
                                [m.name for m in gone], updated)
        for m in gone:
            self.members.remove(m)
            self.removed.append(m.group)
            self.former.append(m.client)
        assert sorted(m.name for m in gone) == sorted(removed)
        return events

    def check_path_secrecy(self, message: bytes, old_context: GroupContext,
                           old_keys: dict[bytes, TreePrivateKeys], committer: Group | None,
                           gone: list[bytes], updated: set[bytes]) -> None:
        """No key a removed member held opens a path secret of the Commit; every
        other member's old keys open one (a PublicMessage Commit with a path;
        members whose Update it commits use their new leaf key instead)."""
        body = MLSMessage.decode(message).body
        if not isinstance(body, PublicMessage):
            return
        commit = body.content.content
        assert isinstance(commit, Commit)
        if commit.path is None:
            return
        survivors = [m for m in self.members if m.name not in gone]
        if not survivors:
            return
        suite = survivors[0].group.state.suite
        provisional = replace(survivors[0].group.state.context,
                              confirmed_transcript_hash=old_context.confirmed_transcript_hash
                              ).encode()
        cts = [ct for node in commit.path.nodes for ct in node.encrypted_path_secret]

        def opens(keys: TreePrivateKeys) -> int:
            n = 0
            for _, priv in keys.items():
                for ct in cts:
                    try:
                        suite.decrypt_with_label(priv, "UpdatePathNode", provisional,
                                                 ct.kem_output, ct.ciphertext)
                    except MLSError:
                        continue
                    n += 1
            return n

        for name in gone:
            assert opens(old_keys[name]) == 0, f"removed {name!r} can read the UpdatePath"
        for m in survivors:
            if m.group is not committer and m.name not in updated:
                assert opens(old_keys[m.name]) >= 1, f"{m} cannot read the UpdatePath"

    def check_lost(self, plan: Plan, ev: CommitApplied, included: tuple[Proposal, ...]
                   ) -> None:
        """The loser of a race gets back (at least) what the winner did not commit."""
        by_value = plan.pending.by_value
        for p in ev.lost:
            assert p in by_value, f"{p} in lost but not proposed by the loser"
        for p in by_value:
            if p not in included:
                assert p in ev.lost, f"{p} is neither committed nor in lost"
        assert plan.committer.group.pending_commit is None

    def welcome(self, plan: Plan, data: st.DataObject) -> None:
        """The new members of a merged Commit join from its Welcome."""
        p = plan.pending
        for c in plan.joiners:
            if data.draw(st.booleans(), label="one Welcome per joiner"):
                (ref,) = [r for r in p.welcomes if r in c.key_packages]
                w = p.welcomes[ref]
            else:
                assert p.welcome is not None
                w = p.welcome
            g = c.join(w)
            assert g.epoch == self.epoch
            self.members.append(Member(c, g))

    def plan_commit(self, m: Member, data: st.DataObject, *, room: int = 1,
                    keep: tuple[Member, ...] = ()) -> Plan:
        """A random Commit by ``m`` (not delivered yet) that removes nobody in ``keep``."""
        kinds = ["empty", "psk"]
        if len(self.members) + room <= MAX_MEMBERS:
            kinds.append("add")
        if len(self.members) - len(keep) >= 2:
            kinds.append("remove")
        kind = data.draw(st.sampled_from(kinds), label=f"commit by {m}")
        if kind == "empty":
            return Plan(m, m.group.commit())
        if kind == "psk":
            return Plan(m, m.group.commit(proposals=[PreSharedKey(external_psk())],
                                          path=data.draw(st.booleans(), label="path")))
        if kind == "add":
            c = self.new_client(data)
            return Plan(m, m.group.commit(add=[c.make_key_package()]), joiners=[c])
        target = self.pick(data, "removed", exclude=(m, *keep))
        return Plan(m, m.group.commit(remove=[target.group.own_leaf_index]),
                    removed=[target.name])

    def run_plan(self, plan: Plan, data: st.DataObject, losers: tuple[Plan, ...] = ()) -> None:
        self.deliver_commit(plan.pending.message, committer=plan.committer.group,
                            added=[c.credential.identity for c in plan.joiners],
                            removed=plan.removed, losers=losers,
                            included=tuple(p for p, _ in plan.pending.proposals))
        self.welcome(plan, data)

    def reject_stale(self, message: bytes) -> None:
        """A Commit of an earlier epoch (a misbehaving DS) changes nobody."""
        for m in self.members:
            before = (m.group.epoch, m.group.epoch_authenticator)
            with pytest.raises(WrongEpochError):
                m.group.process(message)
            assert (m.group.epoch, m.group.epoch_authenticator) == before

    # -- rules -----------------------------------------------------------------------------

    @initialize(data=st.data())
    def create(self, data: st.DataObject) -> None:
        c = self.new_client(data)
        self.members.append(Member(c, c.create_group()))
        n = data.draw(st.integers(0, 3), label="initial members")
        if n:
            joiners = [self.new_client(data) for _ in range(n)]
            creator = self.members[0]
            pending = creator.group.commit(add=[j.make_key_package() for j in joiners])
            self.run_plan(Plan(creator, pending, joiners=joiners), data)

    @precondition(lambda self: len(self.members) < MAX_MEMBERS)
    @rule(data=st.data())
    def add(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, min(2, MAX_MEMBERS - len(self.members))), label="adds")
        joiners = [self.joining_client(data) for _ in range(n)]
        committer = self.pick(data, "committer")
        kps = [c.make_key_package() for c in joiners]
        if len(self.members) >= 2 and data.draw(st.booleans(), label="by proposal"):
            proposer = self.pick(data, "proposer")
            for kp in kps:
                self.send_proposal(proposer, proposer.group.propose_add(kp))
            pending = committer.group.commit()
        else:
            pending = committer.group.commit(add=kps)
        self.run_plan(Plan(committer, pending, joiners=joiners), data)

    @precondition(lambda self: len(self.members) >= 2)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        target = self.pick(data, "target")
        committer = self.pick(data, "committer", exclude=(target,))
        how = data.draw(st.sampled_from(["by value", "proposal", "leave"]), label="how")
        if how == "by value":
            pending = committer.group.commit(remove=[target.group.own_leaf_index])
        else:
            proposer = target if how == "leave" else self.pick(data, "proposer",
                                                               exclude=(target,))
            msg = (proposer.group.propose_leave() if how == "leave"
                   else proposer.group.propose_remove(target.group.own_leaf_index))
            self.send_proposal(proposer, msg)
            pending = committer.group.commit()
        self.run_plan(Plan(committer, pending, removed=[target.name]), data)

    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        if len(self.members) >= 2 and data.draw(st.booleans(), label="update proposal"):
            updater = self.pick(data, "updater")
            committer = self.pick(data, "committer", exclude=(updater,))
            old_key = updater.group.state.own_leaf_node().encryption_key
            self.send_proposal(updater, updater.group.propose_update())
            pending = committer.group.commit(path=data.draw(st.booleans(), label="path"))
            events = self.deliver_commit(pending.message, committer=committer.group,
                                         added=[], removed=[])
            assert [u.credential.identity for u in events[updater.name].updated] == [
                updater.name]
            assert updater.group.state.own_leaf_node().encryption_key != old_key
        else:
            committer = self.pick(data, "committer")
            old_key = committer.group.state.own_leaf_node().encryption_key
            pending = committer.group.commit()  # empty, with a path
            self.deliver_commit(pending.message, committer=committer.group,
                                added=[], removed=[])
            assert committer.group.state.own_leaf_node().encryption_key != old_key

    def _psk_commit(self, psk: PreSharedKeyID, data: st.DataObject) -> None:
        committer = self.pick(data, "committer")
        path = data.draw(st.booleans(), label="path")
        if data.draw(st.booleans(), label="psk by proposal"):
            proposer = self.pick(data, "proposer")
            self.send_proposal(proposer, proposer.group.propose_psk(psk))
            pending = committer.group.commit(path=path)
        else:
            pending = committer.group.commit(proposals=[PreSharedKey(psk)], path=path)
        events = self.deliver_commit(pending.message, committer=committer.group,
                                     added=[], removed=[])
        assert all(ev.psks == 1 for ev in events.values())

    @rule(data=st.data())
    def external_psk(self, data: st.DataObject) -> None:
        self._psk_commit(external_psk(), data)

    @rule(data=st.data())
    def resumption_psk(self, data: st.DataObject) -> None:
        # an epoch whose resumption_psk every member still holds
        common = set.intersection(*(set(m.group.state.resumption_psks)
                                    for m in self.members))
        assert self.epoch in common
        epoch = data.draw(st.sampled_from(sorted(common)), label="resumption epoch")
        gid = self.members[0].group.group_id
        self._psk_commit(PreSharedKeyID.resumption(1, gid, epoch, os.urandom(32)), data)

    @precondition(lambda self: len(self.members) < MAX_MEMBERS)
    @rule(data=st.data())
    def external_join(self, data: st.DataObject) -> None:
        joiner = self.joining_client(data)
        source = self.pick(data, "GroupInfo from")
        psks = (external_psk(),) if data.draw(st.booleans(), label="with psk") else ()
        g, msg = joiner.join_external(source.group.group_info(), psks=psks)
        assert g.epoch == self.epoch + 1
        self.deliver_commit(msg, committer=None, added=[joiner.credential.identity], removed=[])
        ev = g.process(msg)  # the DS echoes it to the joiner
        assert isinstance(ev, CommitApplied) and ev.own
        self.members.append(Member(joiner, g))

    @rule(data=st.data())
    def resync(self, data: st.DataObject) -> None:
        lost = self.pick(data, "loses its state")
        source = self.pick(data, "GroupInfo from")
        old = lost.client
        fresh = Client(old.credential, old.suite_id, old.signature_private_key, old.config)
        fresh.external_psks[PSK_ID] = PSK_SECRET
        g, msg = fresh.join_external(source.group.group_info(),
                                     resync_leaf=lost.group.own_leaf_index)
        # the old state still exists here: it sees itself removed
        self.deliver_commit(msg, committer=None, added=[lost.name], removed=[lost.name])
        assert lost not in self.members and lost.group in self.removed
        self.former.remove(old)  # its identity is back in the group
        g.process(msg)
        self.members.append(Member(fresh, g))

    @rule(data=st.data())
    def application(self, data: st.DataObject) -> None:
        sender = self.pick(data, "sender")
        plaintext = data.draw(st.binary(max_size=64), label="plaintext")
        ad = data.draw(st.binary(max_size=8), label="authenticated_data")
        msg = sender.group.encrypt(plaintext, authenticated_data=ad)
        if data.draw(st.booleans(), label="delay"):
            self.delayed.append(Delayed(sender.group, self.epoch, msg, plaintext,
                                        {id(m.group) for m in self.members
                                         if m is not sender}))
            return
        for m in self.members:
            if m is sender:
                continue
            ev = m.group.process(msg)
            assert isinstance(ev, ApplicationMessage)
            assert (ev.data, ev.authenticated_data, ev.epoch) == (plaintext, ad, self.epoch)
            assert ev.sender.credential.identity == sender.name
            assert ev.sender.leaf_index == sender.group.own_leaf_index
        body = MLSMessage.decode(msg).body
        assert isinstance(body, PrivateMessage)
        for g in self.removed:
            with pytest.raises(MLSError):
                g.process(msg)
            # not only refused: the keys it kept cannot open it either
            s = g.state
            with pytest.raises(MLSError):
                open_private_message(s.suite, body, s.secret_tree, s.secrets.sender_data_secret)

    @precondition(lambda self: bool(self.delayed))
    @rule(data=st.data())
    def deliver_delayed(self, data: st.DataObject) -> None:
        d = self.delayed.pop(data.draw(st.integers(0, len(self.delayed) - 1), label="which"))
        for m in self.members:
            if m.group is d.sender:
                continue
            if id(m.group) in d.recipients and self.epoch - d.epoch <= PAST_EPOCHS:
                ev = m.group.process(d.data)
                assert isinstance(ev, ApplicationMessage)
                assert (ev.data, ev.epoch) == (d.plaintext, d.epoch)
            else:
                before = (m.group.epoch, m.group.epoch_authenticator)
                with pytest.raises(MLSError):
                    m.group.process(d.data)
                assert (m.group.epoch, m.group.epoch_authenticator) == before
        for g in self.removed:
            if g is not d.sender:
                with pytest.raises(MLSError):
                    g.process(d.data)

    @precondition(lambda self: len(self.members) >= 2)
    @rule(data=st.data())
    def race(self, data: st.DataObject) -> None:
        a = self.pick(data, "winner")
        b = self.pick(data, "loser", exclude=(a,))
        # proposals both Commits include by reference
        before = data.draw(st.sampled_from(["nothing", "psk", "loser updates",
                                            "winner updates"]), label="proposed before")
        proposals = []
        if before == "psk":
            proposer = self.pick(data, "psk proposer")
            proposals.append(proposer.group.propose_psk(external_psk()))
            self.send_proposal(proposer, proposals[-1])
        elif before != "nothing":
            updater = b if before == "loser updates" else a
            proposals.append(updater.group.propose_update())
            self.send_proposal(updater, proposals[-1])
        pa = self.plan_commit(a, data, keep=(b,) if before == "loser updates" else ())
        pb = self.plan_commit(b, data, keep=(a,) if before == "winner updates" else ())
        self.run_plan(pa, data, losers=(pb,))
        for stale in (pb.pending.message, *proposals):
            self.reject_stale(stale)

    @precondition(lambda self: len(self.members) < MAX_MEMBERS)
    @rule(data=st.data())
    def race_with_external_joiner(self, data: st.DataObject) -> None:
        member = self.pick(data, "member committer")
        joiner = self.new_client(data)
        gi = self.pick(data, "GroupInfo from").group.group_info()
        plan = self.plan_commit(member, data, room=2)
        g, msg = joiner.join_external(gi)
        if data.draw(st.booleans(), label="joiner wins"):
            self.deliver_commit(msg, committer=None, added=[joiner.credential.identity],
                                removed=[], losers=(plan,))
            g.process(msg)
            self.members.append(Member(joiner, g))
            self.reject_stale(plan.pending.message)
        else:
            self.run_plan(plan, data)
            self.reject_stale(msg)
            # the joiner drops that group and joins again from a fresh GroupInfo
            if len(self.members) < MAX_MEMBERS:
                source = self.pick(data, "fresh GroupInfo from")
                g, msg = joiner.join_external(source.group.group_info())
                self.deliver_commit(msg, committer=None, added=[joiner.credential.identity],
                                    removed=[])
                self.members.append(Member(joiner, g))

    @rule(data=st.data())
    def commit_then_discard(self, data: st.DataObject) -> None:
        m = self.pick(data, "committer")
        before = (m.group.epoch, m.group.epoch_authenticator, m.group.state.tree.encode())
        plan = self.plan_commit(m, data)
        assert m.group.discard_pending_commit() == plan.pending.by_value
        assert m.group.pending_commit is None
        assert (m.group.epoch, m.group.epoch_authenticator,
                m.group.state.tree.encode()) == before

    @precondition(lambda self: len(self.members) >= 2)
    @rule(data=st.data())
    def many_proposals(self, data: st.DataObject) -> None:
        """Several members propose at once; one Commit covers everything."""
        committer = self.pick(data, "committer")
        others = [m for m in self.members if m is not committer]
        target = None
        if data.draw(st.booleans(), label="with a remove"):
            target = data.draw(st.sampled_from(others), label="removed")
        updaters = [m for m in others if m is not target
                    and data.draw(st.booleans(), label=f"{m} updates")]
        for u in updaters:
            self.send_proposal(u, u.group.propose_update())
        if target is not None:
            proposer = self.pick(data, "remove proposer", exclude=(target,))
            self.send_proposal(proposer,
                               proposer.group.propose_remove(target.group.own_leaf_index))
        joiners = []
        room = MAX_MEMBERS - len(self.members) + (target is not None)
        if room > 0 and data.draw(st.booleans(), label="with an add"):
            joiners = [self.joining_client(data)]
            proposer = self.pick(data, "add proposer")
            self.send_proposal(proposer,
                               proposer.group.propose_add(joiners[0].make_key_package()))
        if data.draw(st.booleans(), label="with a psk"):
            proposer = self.pick(data, "psk proposer")
            self.send_proposal(proposer, proposer.group.propose_psk(external_psk()))
        pending = committer.group.commit()
        events = self.deliver_commit(
            pending.message, committer=committer.group,
            added=[c.credential.identity for c in joiners],
            removed=[] if target is None else [target.name])
        for ev in events.values():
            if not ev.own and not ev.self_removed:
                assert sorted(x.credential.identity for x in ev.updated) == sorted(
                    u.name for u in updaters)
        self.welcome(Plan(committer, pending, joiners=joiners), data)

    # -- what must always hold ------------------------------------------------------------------

    @invariant()
    def members_agree(self) -> None:
        if not self.members:
            return
        first = self.members[0].group
        roster = [(x.leaf_index, x.credential.identity, x.signature_key) for x in first.members]
        assert sorted(n for _, n, _ in roster) == sorted(self.names())
        tree = first.state.tree.encode()
        secret = first.export_secret(b"test", b"ctx", 32)
        for m in self.members:
            g = m.group
            assert g.active and g.pending_commit is None
            assert g.epoch == first.epoch
            assert g.epoch_authenticator == first.epoch_authenticator
            assert g.export_secret(b"test", b"ctx", 32) == secret
            assert g.state.context == first.state.context
            assert g.state.tree.encode() == tree
            assert [(x.leaf_index, x.credential.identity, x.signature_key)
                    for x in g.members] == roster
            assert (g.own_leaf_index, m.name) in [(i, n) for i, n, _ in roster]
        for g in self.removed:
            assert not g.active


GroupRun.TestCase.settings = settings(
    max_examples=30, stateful_step_count=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestGroupRun = GroupRun.TestCase


# -- races, one by one ----------------------------------------------------------------------


def _group(n: int) -> list[Group]:
    clients = [Client.generate(f"m{i}".encode()) for i in range(n)]
    for c in clients:
        c.external_psks[PSK_ID] = PSK_SECRET
    groups = [clients[0].create_group()]
    p = groups[0].commit(add=[c.make_key_package() for c in clients[1:]])
    groups[0].merge_pending_commit()
    assert p.welcome is not None
    return groups + [c.join(p.welcome) for c in clients[1:]]


def test_race_loser_gets_its_proposals_back() -> None:
    a, b, c, d = _group(4)
    kp = Client.generate(b"newcomer").make_key_package()
    pa = a.commit(remove=[3])
    pb = b.commit(add=[kp], proposals=[PreSharedKey(external_psk())])
    evb = b.process(pa.message)
    assert isinstance(evb, CommitApplied) and not evb.own
    assert list(evb.lost) == pb.by_value
    assert b.pending_commit is None
    assert isinstance(c.process(pa.message), CommitApplied)
    assert d.process(pa.message).self_removed  # type: ignore[union-attr]
    assert a.process(pa.message).own  # type: ignore[union-attr]
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator
    # b commits again what it lost
    pb2 = b.commit(proposals=list(evb.lost))
    for g in (a, b, c):
        g.process(pb2.message)
    assert a.epoch_authenticator == b.epoch_authenticator == c.epoch_authenticator


def test_race_lost_excludes_what_the_winner_committed() -> None:
    a, b, c, _d = _group(4)
    pa = a.commit(remove=[3])
    b.commit(remove=[3])
    ev = b.process(pa.message)
    assert isinstance(ev, CommitApplied)
    assert Remove(3) not in ev.lost  # leaf 3 is removed by the winner


def test_race_lost_includes_own_uncommitted_proposals() -> None:
    a, b, c = _group(3)
    r = b.propose_remove(2)
    a.process(r)
    c.process(r)
    joiner = Client.generate(b"joiner")
    _, msg = joiner.join_external(a.group_info())  # an external Commit has no references
    ev = b.process(msg)
    assert isinstance(ev, CommitApplied)
    assert ev.lost == (Remove(2),)
