"""A client identity: credential, signature key, KeyPackages, groups (RFC 9420 §10, §11).

::

    alice = Client.generate(b"alice@example.org", suite_id=1)
    kp = alice.make_key_package()                  # publish this
    group = alice.create_group()
    bob_group = bob.join(welcome_bytes)            # uses and deletes bob's KeyPackage keys
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..codec import encode_opaque
from ..crypto import CipherSuite, get_suite
from ..errors import GroupStateError, LocalUsageError, ValidationError
from ..messages.common import CredentialType, ExtensionType, LeafNodeSource
from ..messages.credentials import Credential
from ..messages.extensions import Extension, Extensions
from ..messages.framing import MLSMessage
from ..messages.group_info import GroupContext
from ..messages.key_package import KeyPackage, KeyPackageBundle, build_key_package
from ..messages.leaf_node import Capabilities, LeafNode, Lifetime
from ..messages.proposals import PreSharedKey, ReInit
from ..messages.welcome import Welcome
from ..schedule.key_schedule import epoch_secrets_from_epoch_secret
from ..schedule.psk import PreSharedKeyID, PSKType, ResumptionPSKUsage
from ..schedule.transcript import interim_transcript_hash
from ..tree.ratchet_tree import RatchetTree
from ..tree.secret_tree import SecretTree
from ..tree.treekem import TreePrivateKeys
from .commit import PendingCommit
from .config import GroupConfig
from .group import Group
from .join import OpenedWelcome, join_from_welcome, open_welcome
from .state import EpochState

DEFAULT_LIFETIME = 90 * 24 * 3600
LAST_RESORT = 0x000A


@dataclass
class Client:
    """One device: a credential bound to a signature key, and its KeyPackage store."""

    credential: Credential
    suite_id: int
    signature_private_key: bytes
    config: GroupConfig = field(default_factory=GroupConfig)
    #: KeyPackageRef -> bundle, private keys kept until the KeyPackage is used
    key_packages: dict[bytes, KeyPackageBundle] = field(default_factory=dict)
    #: KeyPackageRefs that stay after use (last resort, §16.8)
    last_resort: set[bytes] = field(default_factory=set)
    #: external PSKs by psk_id
    external_psks: dict[bytes, bytes] = field(default_factory=dict)
    #: resumption PSKs of groups no longer held: (group_id, epoch) -> secret
    resumption_psks: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    #: the groups this client is in, by group ID
    groups: dict[bytes, Group] = field(default_factory=dict)
    #: a stable name of this device, carried in every leaf as application_id
    #: (RFC 9420 §5.3.3), so a device that lost its state can find its old leaf
    device_id: bytes | None = None
    #: non-default extension types this device's application supports (listed
    #: in its leaves' capabilities, RFC 9420 §7.2, e.g. GroupContext extensions)
    supported_extensions: tuple[int, ...] = ()
    #: credential types this device accepts from others besides ``basic`` and its
    #: own, listed in its leaves' capabilities (RFC 9420 §7.2). Advertise
    #: ``x509`` only with trust anchors to judge certificates by: §7.3 then keeps
    #: x509 leaves out of every group this device's leaf is in.
    supported_credentials: tuple[int, ...] = ()
    #: other cipher suites this device supports (with another Client each, RFC 9420
    #: §5.1: one signature key per suite), listed in its leaves' capabilities
    #: after its own (§7.2), so that adders and committers can tell which
    #: suites a group of its may move to (§11.2, §12.1.5)
    supported_suites: tuple[int, ...] = ()

    @classmethod
    def generate(cls, identity: bytes, suite_id: int = 1, *,
                 config: GroupConfig | None = None) -> Client:
        """A new client with a basic credential for ``identity`` and a fresh key."""
        config = config or GroupConfig()
        priv, _ = get_suite(suite_id).generate_signature_key_pair(config.rng)
        return cls(Credential.basic(identity), suite_id, priv, config)

    @property
    def suite(self) -> CipherSuite:
        """The client's CipherSuite."""
        return get_suite(self.suite_id)

    @property
    def signature_public_key(self) -> bytes:
        """The public half of the signature key."""
        return self.suite.signature_public_key(self.signature_private_key)

    def leaf_extensions(self) -> Extensions:
        """Extensions of this device's leaves: its application_id, if it has one."""
        if self.device_id is None:
            return ()
        return (Extension(ExtensionType.APPLICATION_ID, encode_opaque(self.device_id)),)

    def capabilities(self) -> Capabilities:
        """What this implementation supports, advertised in every leaf."""
        credentials = tuple(dict.fromkeys((CredentialType.BASIC, self.credential.credential_type,
                                           *self.supported_credentials)))
        suites = tuple(dict.fromkeys((self.suite_id, *self.supported_suites)))
        return Capabilities(versions=(1,), cipher_suites=suites,
                            extensions=(LAST_RESORT, *self.supported_extensions),
                            proposals=(), credentials=tuple(int(c) for c in credentials))

    # -- KeyPackages (§10) ---------------------------------------------------------

    def make_key_package(self, *, lifetime: int = DEFAULT_LIFETIME,
                         last_resort: bool = False) -> KeyPackage:
        """A fresh KeyPackage; its private keys are kept until a Welcome uses it."""
        now = self.config.clock()
        exts: Extensions = (Extension(LAST_RESORT, b""),) if last_resort else ()
        bundle = build_key_package(self.suite, self.signature_private_key, self.credential,
                                   not_before=now - 3600, not_after=now + lifetime,
                                   capabilities=self.capabilities(), extensions=exts,
                                   leaf_extensions=self.leaf_extensions(),
                                   rng=self.config.rng)
        ref = bundle.key_package.ref(self.suite)
        self.key_packages[ref] = bundle
        if last_resort:
            self.last_resort.add(ref)
        return bundle.key_package

    def forget_key_package(self, ref: bytes) -> None:
        """Delete a KeyPackage's private keys (used, expired or retracted)."""
        self.key_packages.pop(ref, None)
        self.last_resort.discard(ref)

    # -- PSKs ------------------------------------------------------------------------

    def psk_lookup(self, psk_id: PreSharedKeyID) -> bytes | None:
        """Find a PSK this client holds (external, or resumption of another group)."""
        if psk_id.psktype == PSKType.EXTERNAL and psk_id.psk_id is not None:
            return self.external_psks.get(psk_id.psk_id)
        if psk_id.psk_group_id is not None and psk_id.psk_epoch is not None:
            group = self.groups.get(psk_id.psk_group_id)
            if group is not None:
                found = group.state.resumption_psks.get(psk_id.psk_epoch)
                if found is not None:
                    return found
            return self.resumption_psks.get((psk_id.psk_group_id, psk_id.psk_epoch))
        return None

    def _check_reinit(self, psk: PreSharedKeyID, ctx: GroupContext) -> None:
        """The new group matches the ReInit the old group committed (§12.4.3.1)."""
        if psk.usage != ResumptionPSKUsage.REINIT or psk.psk_group_id is None:
            return
        old = self.groups.get(psk.psk_group_id)
        if old is None:
            return  # the PSK itself proved the link; the old group is not held here
        reinit = old.state.reinit
        if not isinstance(reinit, ReInit) or old.epoch != psk.psk_epoch:
            raise ValidationError("the reinit PSK does not name a reinitialised epoch "
                                  "(§12.4.3.1)")
        if (reinit.group_id, reinit.version, reinit.cipher_suite, reinit.extensions) != (
                ctx.group_id, ctx.version, ctx.cipher_suite, ctx.extensions):
            raise ValidationError("the new group does not match the ReInit (§12.4.3.1)")

    def _register(self, group: Group) -> Group:
        if group.group_id in self.groups and self.groups[group.group_id].active:
            raise ValidationError("this client is already in a group with that ID (§12.4.3.1)")
        self.groups[group.group_id] = group
        return group

    # -- groups ------------------------------------------------------------------------

    def create_group(self, group_id: bytes | None = None, *,
                     extensions: Extensions = ()) -> Group:
        """A new group with this client as its only member, in epoch 0 (§11)."""
        suite = self.suite
        rng = self.config.rng
        gid = group_id if group_id is not None else rng(16)
        enc_priv, enc_pub = suite.generate_kem_key_pair(rng)
        leaf = LeafNode(enc_pub, self.signature_public_key, self.credential,
                        self.capabilities(), LeafNodeSource.KEY_PACKAGE,
                        lifetime=_lifetime(self.config.clock()),
                        extensions=self.leaf_extensions())
        leaf = leaf.signed(suite, self.signature_private_key)
        tree = RatchetTree.create(suite, leaf)
        ctx = GroupContext(1, suite.id, gid, 0, tree.tree_hash(), b"", extensions)
        secrets = epoch_secrets_from_epoch_secret(suite, rng(suite.hash_len))
        tag = suite.mac(secrets.confirmation_key, b"")

        state = EpochState(
            suite=suite, context=ctx, tree=tree, keys=TreePrivateKeys.for_leaf(0, enc_priv),
            own_leaf=0, signature_private_key=self.signature_private_key,
            secrets=replace(secrets, encryption_secret=b""),  # the secret tree holds it (§9)
            secret_tree=SecretTree(suite, secrets.encryption_secret, 1,
                                   max_generation_gap=self.config.max_generation_gap,
                                   out_of_order_window=self.config.out_of_order_window),
            interim_transcript_hash=interim_transcript_hash(suite, b"", tag),
            confirmation_tag=tag, resumption_psks={0: secrets.resumption_psk})
        return self._register(Group(state, self.config, self.psk_lookup))

    def reinit_group(self, old: Group, key_packages: list[KeyPackage]
                     ) -> tuple[Group, PendingCommit]:
        """Re-create a reinitialised group with its new parameters (§11.2).

        ``old`` must have applied a Commit with a ReInit whose cipher suite is
        this client's. The new group adds the other members from
        ``key_packages`` and binds itself to the old one with a resumption PSK
        (usage reinit). Send the returned Commit, then each Welcome.
        """
        reinit = old.state.reinit
        if not isinstance(reinit, ReInit):
            raise GroupStateError("the group has not been reinitialised")
        if reinit.cipher_suite != self.suite_id:
            raise LocalUsageError("use a client of the ReInit's cipher suite")
        old_epoch = old.epoch
        self.resumption_psks[(old.group_id, old_epoch)] = old.state.resumption_psks[old_epoch]
        group = self.create_group(reinit.group_id, extensions=reinit.extensions)
        psk = PreSharedKeyID.resumption(ResumptionPSKUsage.REINIT, old.group_id, old_epoch,
                                        self.config.rng(self.suite.hash_len))
        pending = group.commit(add=key_packages, proposals=[PreSharedKey(psk)],
                               reinitialising=True)
        return group, pending

    def _welcome_key_package(self, welcome: Welcome) -> bytes:
        refs = {e.new_member for e in welcome.secrets}
        mine = [r for r in self.key_packages if r in refs]
        if not mine:
            raise ValidationError("the Welcome is for none of this client's KeyPackages")
        return mine[0]

    def open_welcome(self, welcome: bytes | Welcome) -> OpenedWelcome:
        """Decrypt a Welcome for one of this client's KeyPackages without joining
        (§12.4.3.1): what can be checked without the ratchet tree is checked.

        The KeyPackage is kept; pass the result to :meth:`join` (with the tree,
        when it comes out of band) to join.
        """
        w = welcome
        if isinstance(w, bytes):
            msg = MLSMessage.decode(w)
            if not isinstance(msg.body, Welcome):
                raise ValidationError("not a Welcome message")
            w = msg.body
        bundle = self.key_packages[self._welcome_key_package(w)]
        return open_welcome(w, bundle, self.psk_lookup, self._check_reinit)

    def join(self, welcome: bytes | Welcome | OpenedWelcome, *,
             ratchet_tree: bytes | None = None,
             signer_check: Callable[[LeafNode], None] | None = None) -> Group:
        """Join from a Welcome for one of this client's KeyPackages (§12.4.3.1).

        The KeyPackage's private keys are deleted afterwards (unless it is the
        last-resort one). ``ratchet_tree`` supplies the tree out of band.
        ``welcome`` may be what :meth:`open_welcome` returned. ``signer_check``
        is called with the leaf of the member who signed the GroupInfo (the
        adder) after its signature verified; when it raises, the Welcome is
        refused and the KeyPackage is kept.
        """
        opened = welcome if isinstance(welcome, OpenedWelcome) else self.open_welcome(welcome)
        mine = self._welcome_key_package(opened.welcome)
        bundle = self.key_packages[mine]
        state = join_from_welcome(opened, bundle, self.signature_private_key, self.config,
                                  self.psk_lookup, ratchet_tree, self._check_reinit,
                                  signer_check)
        if mine not in self.last_resort:
            self.forget_key_package(mine)
        return self._register(Group(state, self.config, self.psk_lookup))

    def join_external(self, group_info: bytes, *, ratchet_tree: bytes | None = None,
                      resync_leaf: int | None = None,
                      psks: tuple[PreSharedKeyID, ...] = ()) -> tuple[Group, bytes]:
        """Join by external Commit from a GroupInfo with external_pub (§12.4.3.2).

        Returns the group (already in the new epoch) and the Commit to send.
        ``resync_leaf`` removes this client's old leaf in the same Commit (state
        loss recovery). If the Delivery Service orders another Commit first,
        discard the group and join again from the newer GroupInfo.
        """
        from ..messages.common import SenderType
        from ..messages.framing import Sender
        from .events import CommitApplied
        from .external import external_join

        joined = external_join(group_info, self.credential, self.suite_id,
                               self.signature_private_key, self.capabilities(), self.config,
                               self.psk_lookup, ratchet_tree=ratchet_tree,
                               resync_leaf=resync_leaf, psks=psks,
                               leaf_extensions=self.leaf_extensions())
        old = self.groups.get(joined.state.group_id)
        if old is not None:
            del self.groups[joined.state.group_id]  # the lost state is replaced
        group = self._register(Group(joined.state, self.config, self.psk_lookup))
        group.remember_own_commit(joined.message, CommitApplied(
            joined.state.epoch, Sender(SenderType.NEW_MEMBER_COMMIT), own=True))
        return group, joined.message


def _lifetime(now: int) -> Lifetime:
    return Lifetime(now - 3600, now + DEFAULT_LIFETIME)



def leaf_device_id(leaf: LeafNode) -> bytes | None:
    """The device name a leaf carries in its application_id extension, if any."""
    from ..codec import Opaque
    from ..errors import DecodeError

    for e in leaf.extensions:
        if e.extension_type == ExtensionType.APPLICATION_ID:
            try:
                return Opaque.decode(e.extension_data)
            except DecodeError:
                return None
    return None
