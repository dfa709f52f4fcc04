"""Group rules: who may change a group, carried in the group itself.

Whether a Commit is valid must follow from the group state and the message
alone, identically on every member; otherwise members that disagree fork the
group. So the rules live in the GroupContext, as an application-defined
extension (RFC 9420 §13), and every member -- committer and receivers alike --
enforces them through the core's policy hook (:class:`RulesPolicy`, RFC 9420
§12.2). Local data (trust decisions, the roster, room affiliations) never
enters here.

The vocabulary follows the MIMI room-policy work (roles and join rules) in a
small subset: two roles (member, and admins listed by bare JID), who may add,
remove, re-initialise and change the rules, whether outsiders may join by
external Commit, and whether outsiders may send proposals.

Wire format (TLS presentation language, RFC 9420 §2.1), extension type
:data:`RULES_EXTENSION` (private use, RFC 9420 §17.3)::

    enum { nobody(0), admins(1), members(2) } Who;
    enum { none(0), member_accounts(1), open(2) } ExternalJoin;

    struct {
        uint8 version;                 /* 1 */
        opaque admins<V><V>;           /* bare JIDs, UTF-8 */
        Who add;                       /* default members */
        Who remove;                    /* default members */
        ExternalJoin external_join;    /* default member_accounts */
        uint8 external_proposals;      /* 0 (default) or 1 */
        Who reinit;                    /* default nobody */
        Who change_rules;              /* default admins */
    } GroupRules;

A group whose GroupContext has no such extension (groups created before the
rules existed) follows :data:`DEFAULT_RULES` with no admins.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Annotated

from ..core.codec import U8, Opaque, Struct, Vec
from ..core.errors import DecodeError, MLSError, PolicyError
from ..core.group.config import GroupConfig, Policy
from ..core.group.identity import same_identity, same_identity_and_device
from ..core.group.state import EpochState
from ..core.messages.common import SenderType
from ..core.messages.credentials import credential_identity
from ..core.messages.extensions import Extension, Extensions, find_extension
from ..core.messages.framing import Sender
from ..core.messages.leaf_node import LeafNode
from ..core.messages.proposals import (
    Add,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ReInit,
    Remove,
    Update,
)
from .params import pad_to_of

__all__ = ["DEFAULT_RULES", "RULES_EXTENSION", "ExternalJoin", "GroupRules", "RulesPolicy",
           "Who", "rules_extension", "rules_of"]

#: The extension type of :class:`GroupRules` in the GroupContext (private use range).
RULES_EXTENSION = 0xF0E1
#: The version of the rules' wire format this implementation reads and writes.
RULES_VERSION = 1


class Who(IntEnum):
    """Who may do something."""

    NOBODY = 0
    ADMINS = 1
    MEMBERS = 2


class ExternalJoin(IntEnum):
    """Who may join by external Commit (RFC 9420 §12.4.3.2)."""

    #: nobody: joins only by Welcome
    NONE = 0
    #: only accounts already in the group: a device that lost its state (resyncing,
    #: i.e. replacing its own leaf) or another device of a member's account
    MEMBER_ACCOUNTS = 1
    #: anyone holding a GroupInfo
    OPEN = 2




@dataclass(frozen=True)
class GroupRules(Struct):
    """The rules every member enforces (see the module documentation for the wire format)."""

    version: Annotated[int, U8] = RULES_VERSION
    admins: Annotated[tuple[bytes, ...], Vec(Opaque)] = ()
    add: Annotated[int, U8] = Who.MEMBERS
    remove: Annotated[int, U8] = Who.MEMBERS
    external_join: Annotated[int, U8] = ExternalJoin.MEMBER_ACCOUNTS
    external_proposals: Annotated[int, U8] = 0
    reinit: Annotated[int, U8] = Who.NOBODY
    change_rules: Annotated[int, U8] = Who.ADMINS

    def check(self) -> None:
        """Refuse values this version does not define (a typed error, never a guess)."""
        if self.version != RULES_VERSION:
            raise PolicyError(f"group rules version {self.version} is not supported")
        for name in ("add", "remove", "reinit", "change_rules"):
            if getattr(self, name) not in tuple(Who):
                raise PolicyError(f"group rules: {name}={getattr(self, name)} is undefined")
        if self.external_join not in tuple(ExternalJoin):
            raise PolicyError(f"group rules: external_join={self.external_join} is undefined")
        if self.external_proposals not in (0, 1):
            raise PolicyError("group rules: external_proposals must be 0 or 1")
        if len(set(self.admins)) != len(self.admins):
            raise PolicyError("group rules: an admin is listed twice")

    def with_admins(self, *jids: str) -> GroupRules:
        """These rules with ``jids`` as the admins."""
        return replace(self, admins=tuple(j.encode() for j in jids))

    @property
    def admin_jids(self) -> tuple[str, ...]:
        """The admins' bare JIDs (undecodable ones shown with replacement characters)."""
        return tuple(a.decode("utf-8", "replace") for a in self.admins)


#: The rules of a group created by this plugin (the creator is added as admin).
DEFAULT_RULES = GroupRules()


def rules_extension(rules: GroupRules) -> Extension:
    """``rules`` as a GroupContext extension."""
    rules.check()
    return Extension(RULES_EXTENSION, rules.encode())


def rules_of(extensions: Extensions) -> GroupRules:
    """The rules in a GroupContext's extensions; :data:`DEFAULT_RULES` when absent.

    :raises PolicyError: the extension is present but malformed or of an
        unknown version.
    """
    data = find_extension(extensions, RULES_EXTENSION)
    if data is None:
        return DEFAULT_RULES
    try:
        rules = GroupRules.decode(data)
    except DecodeError as e:
        raise PolicyError(f"the group rules do not decode: {e}") from e
    rules.check()
    return rules


def _identity(state: EpochState, sender: Sender) -> bytes | None:
    if sender.sender_type != SenderType.MEMBER:
        return None
    leaf = state.tree.leaf(sender.index) if sender.index < state.tree.n_leaves else None
    return None if leaf is None else _jid(leaf)


def _jid(leaf: LeafNode) -> bytes | None:
    """The JID a leaf's credential names (basic or X.509), ``None`` if it names none."""
    try:
        return credential_identity(leaf.credential)
    except MLSError:
        return None


def _allowed(who: int, rules: GroupRules, identity: bytes | None) -> bool:
    if identity is None or who == Who.NOBODY:
        return False
    return who == Who.MEMBERS or identity in rules.admins


@dataclass
class RulesPolicy(Policy):
    """The core policy hook (RFC 9420 §12.2) enforcing the group's :class:`GroupRules`.

    Reads only the group state and the message, so every member decides the
    same. ``inner`` is the application's own policy, consulted afterwards.
    """

    inner: Policy = field(default_factory=Policy)

    def check_proposal(self, state: EpochState, proposal: Proposal, sender: Sender) -> None:
        """Refuse a proposal the rules do not allow this sender."""
        rules = rules_of(state.context.extensions)
        st = sender.sender_type
        if st in (SenderType.EXTERNAL, SenderType.NEW_MEMBER_PROPOSAL):
            if not rules.external_proposals:
                raise PolicyError("the group rules allow no proposals from outside the group")
        elif st == SenderType.NEW_MEMBER_COMMIT:
            pass  # the parts of an external Commit: judged in check_commit
        else:
            self._check_member_proposal(state, rules, proposal, sender)
        self.inner.check_proposal(state, proposal, sender)

    def _check_member_proposal(self, state: EpochState, rules: GroupRules,
                               proposal: Proposal, sender: Sender) -> None:
        who = _identity(state, sender)
        if isinstance(proposal, Add):
            if not _allowed(rules.add, rules, who):
                raise PolicyError("the group rules do not allow this member to add")
        elif isinstance(proposal, Remove):
            target = (state.tree.leaf(proposal.removed)
                      if proposal.removed < state.tree.n_leaves else None)
            own = proposal.removed == sender.index or (
                target is not None and who is not None and _jid(target) == who)
            # leaving, or removing one of one's own devices, is always allowed
            if not own and not _allowed(rules.remove, rules, who):
                raise PolicyError("the group rules do not allow this member to remove others")
        elif isinstance(proposal, ReInit):
            if not _allowed(rules.reinit, rules, who):
                raise PolicyError("the group rules do not allow this member to reinitialise")
        elif isinstance(proposal, GroupContextExtensions):
            if not _allowed(rules.change_rules, rules, who):
                raise PolicyError("the group rules do not allow this member to change the "
                                  "group's extensions")
            rules_of(proposal.extensions)  # new rules must be well-formed
            pad_to_of(proposal.extensions)  # and new parameters (mls_xmpp.xmpp.params)
        elif not isinstance(proposal, (Update, PreSharedKey)):
            raise PolicyError(f"the group rules do not allow {type(proposal).__name__}")

    def check_commit(self, state: EpochState, committer: Sender,
                     proposals: list[tuple[Proposal, Sender]]) -> None:
        """Refuse an external Commit when the rules allow none (RFC 9420 §12.4.3.2)."""
        if committer.sender_type == SenderType.NEW_MEMBER_COMMIT:
            if rules_of(state.context.extensions).external_join == ExternalJoin.NONE:
                raise PolicyError("the group rules allow no external joins")
        self.inner.check_commit(state, committer, proposals)

    def check_external_join(self, state: EpochState, leaf_node: LeafNode) -> None:
        """Refuse a joiner from outside the members' accounts unless the rules are open."""
        rules = rules_of(state.context.extensions)
        if rules.external_join == ExternalJoin.NONE:
            raise PolicyError("the group rules allow no external joins")
        if rules.external_join == ExternalJoin.MEMBER_ACCOUNTS:
            identity = _jid(leaf_node)
            if identity is None or not any(_jid(leaf) == identity
                                           for _, leaf in state.tree.leaves()):
                raise PolicyError("the group rules allow external joins only by accounts "
                                  "already in the group")
        self.inner.check_external_join(state, leaf_node)


def mapping_config(config: GroupConfig) -> GroupConfig:
    """``config`` bound by the mapping: the group's rules and same-device successors.

    The application's own policy stays, consulted after the rules; a
    successor check other than the core's default is kept. Idempotent.
    """
    policy = (config.policy if isinstance(config.policy, RulesPolicy)
              else RulesPolicy(config.policy))
    successor = (same_identity_and_device if config.successor_validator is same_identity
                 else config.successor_validator)
    return replace(config, policy=policy, successor_validator=successor)
