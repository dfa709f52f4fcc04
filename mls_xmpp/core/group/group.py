"""The MLS group a member holds: the API the XMPP plugin and applications use.

::

    group = alice.create_group()
    pending = group.commit(add=[bob_key_package])
    ...  # hand pending.message to the Delivery Service, pending.welcome to bob
    group.merge_pending_commit()          # once the DS accepted it
    ciphertext = group.encrypt(b"hi")
    event = bob_group.process(ciphertext)  # ApplicationMessage

Every ``process`` either succeeds and returns an event, or raises an
:class:`~mls_xmpp.core.errors.MLSError` and leaves the group exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ..errors import GroupStateError, ValidationError
from ..messages.common import ContentType, SenderType, WireFormat
from ..messages.extensions import Extension
from ..messages.framing import FramedContent, MLSMessage, PrivateMessage, PublicMessage, Sender
from ..messages.key_package import KeyPackage
from ..messages.leaf_node import LeafNode
from ..messages.proposals import (
    Add,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ReInit,
    Remove,
    Update,
)
from ..messages.protection import protect_private, protect_public, sign_content
from ..schedule.key_schedule import mls_exporter
from ..schedule.psk import PreSharedKeyID
from ..tree.secret_tree import RatchetType
from .commit import PendingCommit, create_commit, make_group_info
from .config import GroupConfig
from .epoch import PskLookup
from .events import CommitApplied, Event, Member
from .process import (
    check_single_proposal,
    decode_message,
    handle_application,
    handle_proposal,
    process_commit,
    unprotect,
)
from .state import CachedProposal, EpochState, PastEpoch


class Group:
    """One member's view of one MLS group (RFC 9420 §8-§12)."""

    def __init__(self, state: EpochState, config: GroupConfig, psk_lookup: PskLookup) -> None:
        self._state = state
        self.config = config
        self._psk_lookup = psk_lookup
        self._past: dict[int, PastEpoch] = {}
        self._pending: PendingCommit | None = None
        #: this member's last merged Commit and its event, to recognise the echo
        self._last_own_commit: tuple[bytes, CommitApplied] | None = None
        #: the leaf node this member proposed in an Update, with its private key
        self._pending_updates: dict[bytes, tuple[LeafNode, bytes]] = {}

    # -- what the group is -----------------------------------------------------

    @property
    def state(self) -> EpochState:
        """The current epoch's state (read it, do not change it)."""
        return self._state

    @property
    def group_id(self) -> bytes:
        """The group ID."""
        return self._state.group_id

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return self._state.epoch

    @property
    def own_leaf_index(self) -> int:
        """This member's leaf index."""
        return self._state.own_leaf

    @property
    def epoch_authenticator(self) -> bytes:
        """The epoch_authenticator members compare out of band (§8.7)."""
        return self._state.secrets.epoch_authenticator

    @property
    def active(self) -> bool:
        """False once this member was removed or the group was reinitialised."""
        return self._state.active and self._state.reinit is None

    @property
    def members(self) -> list[Member]:
        """The roster, by leaf index."""
        return [Member(i, leaf.credential, leaf.signature_key)
                for i, leaf in self._state.tree.leaves()]

    @property
    def pending_commit(self) -> PendingCommit | None:
        """This member's Commit waiting for the Delivery Service, if any."""
        return self._pending

    def export_secret(self, label: str | bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter(label, context, length) of the current epoch (§8.5)."""
        s = self._state
        return mls_exporter(s.suite, s.secrets.exporter_secret, label, context, length)

    def group_info(self, *, with_tree: bool = True, with_external_pub: bool = True) -> bytes:
        """A signed GroupInfo (MLSMessage) of the current epoch, e.g. for external joins."""
        return MLSMessage(make_group_info(self._state, with_tree=with_tree,
                                          with_external_pub=with_external_pub)).encode()

    def ratchet_tree(self) -> bytes:
        """The ratchet tree in its wire form, for joiners that get it out of band."""
        return self._state.tree.encode()

    # -- sending -----------------------------------------------------------------

    def _require_active(self) -> None:
        if not self.active:
            raise GroupStateError("this member is no longer in the group")

    def _frame(self, content_type: int, body: object, authenticated_data: bytes,
               private: bool) -> bytes:
        s = self._state
        content = FramedContent(s.group_id, s.epoch, Sender.member(s.own_leaf),
                                authenticated_data, content_type, body)  # type: ignore[arg-type]
        wf = WireFormat.PRIVATE_MESSAGE if private else WireFormat.PUBLIC_MESSAGE
        ctx = s.context_bytes()
        ac = sign_content(s.suite, s.signature_private_key, wf, content, ctx)
        if private:
            body_msg: PrivateMessage | PublicMessage = protect_private(
                s.suite, ac, s.secret_tree, s.secrets.sender_data_secret,
                pad_to=self.config.pad_to, rng=self.config.rng)
        else:
            body_msg = protect_public(s.suite, ac, s.secrets.membership_key, ctx)
        if content_type == ContentType.PROPOSAL:
            ref = ac.proposal_ref(s.suite)
            proposal = body
            assert isinstance(proposal, (Add, Update, Remove, PreSharedKey, ReInit,
                                         GroupContextExtensions))
            s.proposals[ref] = CachedProposal(ref, proposal, Sender.member(s.own_leaf))
        return MLSMessage(body_msg).encode()

    def encrypt(self, data: bytes, *, authenticated_data: bytes = b"") -> bytes:
        """Application data as a PrivateMessage (§6.3, §15)."""
        self._require_active()
        return self._frame(ContentType.APPLICATION, data, authenticated_data, True)

    def reserve_generations(self, ahead: int, *, early: int = 0) -> bool:
        """Reserve the next ``ahead`` generations of this member's application ratchet
        in the current epoch (:meth:`SecretTree.reserve
        <mls_xmpp.core.tree.secret_tree.SecretTree.reserve>`): until they are used up,
        the serialised state is ahead of every generation :meth:`encrypt` uses, so
        a stored copy need not be written before each message.

        Returns ``True`` when a new reservation was made (the first one of the
        epoch, or the previous one is used up, or has ``early`` generations or
        fewer left): the caller must store the state (at least the ratchets)
        before :meth:`encrypt` uses a generation no stored copy is ahead of --
        with ``early``, the previous reservation, if stored, still covers the
        next ``early`` messages or fewer while the new one is written.
        """
        self._require_active()
        s = self._state
        return s.secret_tree.reserve(s.own_leaf, ahead, early=early)

    def sending_generation(self) -> int:
        """The generation of this member's application ratchet that the next
        :meth:`encrypt` of an application message uses (in the current epoch)."""
        self._require_active()
        s = self._state
        return s.secret_tree.next_generation(s.own_leaf, RatchetType.APPLICATION)

    def reserved_generations(self) -> int | None:
        """The end ``M`` of this member's reservation in the current epoch (a stored
        copy of the state now holds the ratchet at ``M``), or ``None``."""
        self._require_active()
        s = self._state
        held = s.secret_tree.reserved_ratchet(s.own_leaf)
        return None if held is None else held[0]

    def propose(self, proposal: Proposal, *, authenticated_data: bytes = b"") -> bytes:
        """Send a proposal (by reference in a later Commit); returns the MLSMessage."""
        self._require_active()
        check_single_proposal(self._state, self.config, proposal,
                              Sender.member(self._state.own_leaf))
        return self._frame(ContentType.PROPOSAL, proposal, authenticated_data,
                           self.config.handshake_private)

    def propose_add(self, key_package: KeyPackage) -> bytes:
        """Propose adding the holder of ``key_package`` (§12.1.1)."""
        return self.propose(Add(key_package))

    def propose_remove(self, leaf_index: int) -> bytes:
        """Propose removing the member at ``leaf_index`` (§12.1.3)."""
        return self.propose(Remove(leaf_index))

    def propose_leave(self) -> bytes:
        """Ask to leave: propose this member's own removal; another member commits it."""
        return self.propose(Remove(self._state.own_leaf))

    def propose_update(self) -> bytes:
        """Propose fresh keys for this member's leaf (§12.1.2)."""
        s = self._state
        priv, pub = s.suite.generate_kem_key_pair(self.config.rng)
        leaf = replace(s.own_leaf_node(), encryption_key=pub, leaf_node_source=2,
                       lifetime=None, parent_hash=None).signed(
            s.suite, s.signature_private_key, s.group_id, s.own_leaf)
        self._pending_updates[pub] = (leaf, priv)
        return self.propose(Update(leaf))

    def propose_reinit(self, *, group_id: bytes | None = None, cipher_suite: int | None = None,
                       extensions: tuple[Extension, ...] | None = None) -> bytes:
        """Propose moving the group to new parameters (§12.1.5); defaults keep the current."""
        s = self._state
        return self.propose(ReInit(group_id if group_id is not None else self.config.rng(16),
                                   1, cipher_suite or s.suite.id,
                                   s.context.extensions if extensions is None else extensions))

    def propose_psk(self, psk_id: PreSharedKeyID) -> bytes:
        """Propose injecting a PSK (§12.1.4)."""
        return self.propose(PreSharedKey(psk_id))

    def commit(self, *, add: list[KeyPackage] | None = None, remove: list[int] | None = None,
               proposals: list[Proposal] | None = None, include_pending: bool = True,
               path: bool = True, authenticated_data: bytes = b"",
               reinitialising: bool = False) -> PendingCommit:
        """Create a Commit; it becomes current only with :meth:`merge_pending_commit`.

        ``add``/``remove``/``proposals`` go in by value; proposals received in
        this epoch go in by reference (``include_pending``). ``path`` asks for
        an UpdatePath even where none is required (fresh keys for this member).
        """
        self._require_active()
        if self._pending is not None:
            raise GroupStateError("a Commit is already pending; merge or discard it first")
        values: list[Proposal] = [Add(kp) for kp in add or []]
        values += [Remove(i) for i in remove or []]
        values += list(proposals or [])
        refs = list(self._state.proposals.values()) if include_pending else []
        refs = [c for c in refs if not (c.sender.sender_type == SenderType.MEMBER
                                        and c.sender.index == self._state.own_leaf
                                        and isinstance(c.proposal, Update))]
        pending = create_commit(self._state, self.config, self._psk_lookup, by_value=values,
                                by_reference=refs, force_path=path,
                                authenticated_data=authenticated_data,
                                reinitialising=reinitialising)
        self._pending = pending
        return pending

    def merge_pending_commit(self) -> CommitApplied:
        """Switch to the epoch of this member's Commit (the DS accepted it)."""
        p = self._pending
        if p is None:
            raise GroupStateError("no pending Commit")
        self._advance(p.new_state)
        self._pending = None
        event = CommitApplied(
            p.new_state.epoch, Sender.member(p.new_state.own_leaf),
            added=tuple(Member(i, kp.leaf_node.credential, kp.leaf_node.signature_key)
                        for i, kp in p.added),
            removed=tuple(Member(i, leaf.credential, leaf.signature_key)
                          for i, leaf in p.removed),
            updated=(), psks=sum(isinstance(x, PreSharedKey) for x, _ in p.proposals),
            reinit=p.new_state.reinit if isinstance(p.new_state.reinit, ReInit) else None,
            own=True, path=p.has_path, authenticated_data=p.authenticated_data)
        self._last_own_commit = (p.message, event)
        return event

    def discard_pending_commit(self) -> list[Proposal]:
        """Drop the pending Commit; returns the proposals it carried by value."""
        p = self._pending
        self._pending = None
        return [] if p is None else list(p.by_value)

    # -- receiving -----------------------------------------------------------------

    def process(self, data: bytes) -> Event:
        """Process one MLSMessage from the Delivery Service (§6, §12.4.2).

        Returns :class:`ApplicationMessage`, :class:`ProposalReceived` or
        :class:`CommitApplied`; raises an MLSError and changes nothing when the
        message is invalid.
        """
        if self._pending is not None and data == self._pending.message:
            return self.merge_pending_commit()
        if self._last_own_commit is not None and data == self._last_own_commit[0]:
            return self._last_own_commit[1]  # the DS echoing a Commit already merged
        if not self._state.active:
            raise GroupStateError("this member was removed from the group")
        msg = decode_message(data)
        unprotected = unprotect(self._state, self._past, msg)
        ac = unprotected.ac
        ctype = ac.content.content_type
        if ctype == ContentType.APPLICATION:
            if ac.content.sender.sender_type != SenderType.MEMBER:
                raise ValidationError("application data from a non-member (§6)")
            app = handle_application(unprotected, self._state)
            unprotected.consume()
            return app
        if ctype == ContentType.PROPOSAL:
            received = handle_proposal(self._state, self.config, ac)
            unprotected.consume()
            return received
        old = self._state
        new_state, event = process_commit(
            old, self.config, self._psk_lookup, ac,
            own_update_keys={k: v[1] for k, v in self._pending_updates.items()})
        unprotected.consume()
        me = Sender.member(old.own_leaf)
        wanted = list(self._pending.by_value) if self._pending is not None else []
        wanted += [c.proposal for c in old.proposals.values() if c.sender == me]
        lost = [p for p in wanted if p not in event.proposals]
        self._pending = None
        self._last_own_commit = None
        event = replace(event, lost=tuple(dict.fromkeys(lost)))
        if event.self_removed:
            self._state = new_state
            self._past.clear()
        else:
            self._advance(new_state)
        return event

    def remember_own_commit(self, message: bytes, event: CommitApplied) -> None:
        """Recognise ``message`` (already applied, e.g. an external join) when echoed."""
        self._last_own_commit = (message, event)

    def _advance(self, new_state: EpochState) -> None:
        old = self._state
        keep = self.config.past_epochs
        if keep > 0:
            self._past[old.epoch] = PastEpoch(old.epoch, old.secret_tree,
                                              old.secrets.sender_data_secret, old.tree,
                                              old.context_bytes())
        for e in sorted(self._past):
            if e <= new_state.epoch - 1 - keep:
                del self._past[e]  # forward secrecy: old epochs' keys go
        self._pending_updates.clear()
        self._state = new_state

    @property
    def retained_epochs(self) -> list[int]:
        """Earlier epochs whose application keys are still kept."""
        return sorted(self._past)

    def forget_past_epochs(self, epochs: Iterable[int]) -> list[int]:
        """Delete what is kept of these earlier epochs now (a time bound on late
        messages, §14: the application decides when); returns the epochs deleted."""
        gone = sorted(e for e in set(epochs) if e in self._past)
        for e in gone:
            del self._past[e]
        return gone

