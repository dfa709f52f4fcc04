"""Hypothesis strategies for every RFC 9420 wire structure of :mod:`mls_xmpp.core.messages`.

Each strategy builds *wire-valid* instances: values whose encoding decodes back
to an equal value. That means the ``select`` variants only carry the fields of
their own case (a basic Credential has no certificates, a key_package LeafNode
has a lifetime and no parent_hash, a new_member Sender has index 0, ...).
Semantic validity (signatures, matching cipher suites, sender/content-type
rules) is not attempted: the strategies exercise the codec, not the protocol.

Sizes are kept small (opaque fields up to 40 bytes, vectors up to 3 items) so
the property tests stay fast.
"""

from __future__ import annotations

from hypothesis import strategies as st

from mls_xmpp.core.messages.commit import Commit, HPKECiphertext, UpdatePath, UpdatePathNode
from mls_xmpp.core.messages.common import (
    ContentType,
    LeafNodeSource,
    SenderType,
)
from mls_xmpp.core.messages.credentials import Credential
from mls_xmpp.core.messages.extensions import (
    Extension,
    ExternalPub,
    ExternalSender,
    RequiredCapabilities,
)
from mls_xmpp.core.messages.framing import (
    AuthenticatedContent,
    Content,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateContentAAD,
    PrivateMessage,
    PublicMessage,
    Sender,
    SenderData,
    SenderDataAAD,
)
from mls_xmpp.core.messages.group_info import GroupContext, GroupInfo
from mls_xmpp.core.messages.key_package import KeyPackage
from mls_xmpp.core.messages.leaf_node import Capabilities, LeafNode, Lifetime
from mls_xmpp.core.messages.nodes import Node, ParentNode
from mls_xmpp.core.messages.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ProposalOrRef,
    ProposalRef,
    ReInit,
    Remove,
    Update,
)
from mls_xmpp.core.messages.welcome import (
    EncryptedGroupSecrets,
    GroupSecrets,
    PathSecret,
    Welcome,
)
from mls_xmpp.core.schedule.psk import PreSharedKeyID, PSKLabel

MAX_BYTES = 40
MAX_ITEMS = 3

# --------------------------------------------------------------------------- primitives

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
opaque = st.binary(max_size=MAX_BYTES)


def vec(elements: st.SearchStrategy, max_size: int = MAX_ITEMS) -> st.SearchStrategy:
    """A tuple (the decoders' sequence type) of up to ``max_size`` items."""
    return st.lists(elements, max_size=max_size).map(tuple)


def optional(elements: st.SearchStrategy) -> st.SearchStrategy:
    """``None`` or a value of ``elements``."""
    return st.none() | elements


u16_list = vec(u16)

# --------------------------------------------------------------------------- credentials

basic_credentials = st.builds(Credential.basic, opaque)
x509_credentials = st.builds(Credential.x509, vec(opaque))
credentials = basic_credentials | x509_credentials

# --------------------------------------------------------------------------- extensions

extensions = st.builds(Extension, u16, opaque)
#: An extension list as GroupContext, KeyPackage, ... carry it: no repeated types.
extension_lists = st.lists(extensions, max_size=MAX_ITEMS,
                           unique_by=lambda e: e.extension_type).map(tuple)
required_capabilities = st.builds(RequiredCapabilities, u16_list, u16_list, u16_list)
external_pubs = st.builds(ExternalPub, opaque)
external_senders = st.builds(ExternalSender, opaque, credentials)

# --------------------------------------------------------------------------- leaf nodes

capabilities = st.builds(Capabilities, u16_list, u16_list, u16_list, u16_list, u16_list)
lifetimes = st.builds(Lifetime, u64, u64)


def leaf_nodes(source: int | None = None) -> st.SearchStrategy:
    """LeafNodes of ``source`` (any of the three when ``None``).

    ``lifetime`` is set only for key_package leaves, ``parent_hash`` only for
    commit leaves, as the LeafNode ``select`` demands.
    """
    if source is None:
        return st.one_of(*(leaf_nodes(s) for s in LeafNodeSource))
    lifetime = lifetimes if source == LeafNodeSource.KEY_PACKAGE else st.none()
    parent_hash = opaque if source == LeafNodeSource.COMMIT else st.none()
    return st.builds(LeafNode, opaque, opaque, credentials, capabilities, st.just(source),
                     lifetime, parent_hash, extension_lists, opaque)


key_package_leaf_nodes = leaf_nodes(LeafNodeSource.KEY_PACKAGE)
update_leaf_nodes = leaf_nodes(LeafNodeSource.UPDATE)
commit_leaf_nodes = leaf_nodes(LeafNodeSource.COMMIT)
any_leaf_nodes = leaf_nodes()

key_packages = st.builds(KeyPackage, u16, u16, opaque, key_package_leaf_nodes, extension_lists,
                         opaque)

# --------------------------------------------------------------------------- ratchet tree

parent_nodes = st.builds(ParentNode, opaque, opaque, vec(u32))
nodes: st.SearchStrategy[Node] = any_leaf_nodes | parent_nodes
#: The ratchet_tree extension's data: a vector of optional nodes.
ratchet_trees = vec(optional(nodes))

# --------------------------------------------------------------------------- PSKs

external_psk_ids = st.builds(PreSharedKeyID.external, opaque, opaque)
resumption_psk_ids = st.builds(PreSharedKeyID.resumption, u8, opaque, u64, opaque)
psk_ids = external_psk_ids | resumption_psk_ids
psk_labels = st.builds(PSKLabel, psk_ids, u16, u16)

# --------------------------------------------------------------------------- proposals

adds = st.builds(Add, key_packages)
updates = st.builds(Update, update_leaf_nodes)
removes = st.builds(Remove, u32)
pre_shared_keys = st.builds(PreSharedKey, psk_ids)
reinits = st.builds(ReInit, opaque, u16, u16, extension_lists)
external_inits = st.builds(ExternalInit, opaque)
group_context_extensions = st.builds(GroupContextExtensions, extension_lists)

proposals: st.SearchStrategy[Proposal] = st.one_of(
    adds, updates, removes, pre_shared_keys, reinits, external_inits, group_context_extensions)
proposal_refs = st.builds(ProposalRef, opaque)
proposal_or_refs: st.SearchStrategy[ProposalOrRef] = proposals | proposal_refs

# --------------------------------------------------------------------------- commit

hpke_ciphertexts = st.builds(HPKECiphertext, opaque, opaque)
update_path_nodes = st.builds(UpdatePathNode, opaque, vec(hpke_ciphertexts))
update_paths = st.builds(UpdatePath, commit_leaf_nodes, vec(update_path_nodes))
commits = st.builds(Commit, vec(proposal_or_refs), optional(update_paths))

# --------------------------------------------------------------------------- group info, welcome

group_contexts = st.builds(GroupContext, u16, u16, opaque, u64, opaque, opaque, extension_lists)
group_infos = st.builds(GroupInfo, group_contexts, extension_lists, opaque, u32, opaque)

path_secrets = st.builds(PathSecret, opaque)
group_secrets = st.builds(GroupSecrets, opaque, optional(path_secrets), vec(psk_ids))
encrypted_group_secrets = st.builds(EncryptedGroupSecrets, opaque, hpke_ciphertexts)
welcomes = st.builds(Welcome, u16, vec(encrypted_group_secrets), opaque)

# --------------------------------------------------------------------------- framing

#: Senders of the four types; only member and external ones carry an index.
senders = st.one_of(
    st.builds(Sender, st.sampled_from([SenderType.MEMBER, SenderType.EXTERNAL]), u32),
    st.builds(Sender, st.sampled_from([SenderType.NEW_MEMBER_PROPOSAL,
                                       SenderType.NEW_MEMBER_COMMIT])),
)

content_types = st.sampled_from(list(ContentType))


def contents(content_type: int) -> st.SearchStrategy[Content]:
    """The body of a message of ``content_type``: bytes, a Proposal or a Commit."""
    if content_type == ContentType.APPLICATION:
        return opaque
    if content_type == ContentType.PROPOSAL:
        return proposals
    return commits


def framed_contents(content_type: int | None = None) -> st.SearchStrategy[FramedContent]:
    """FramedContent of ``content_type`` (any of the three when ``None``)."""
    if content_type is None:
        return st.one_of(*(framed_contents(t) for t in ContentType))
    return st.builds(FramedContent, opaque, u64, senders, opaque, st.just(content_type),
                     contents(content_type))


def auth_data(content_type: int) -> st.SearchStrategy[FramedContentAuthData]:
    """FramedContentAuthData for ``content_type``: a confirmation tag only for commits."""
    tag = opaque if content_type == ContentType.COMMIT else st.none()
    return st.builds(FramedContentAuthData, opaque, tag)


@st.composite
def content_with_auth(draw: st.DrawFn, content_type: int | None = None
                      ) -> tuple[FramedContent, FramedContentAuthData]:
    """A FramedContent and auth data that fits its content type."""
    content = draw(framed_contents(content_type))
    return content, draw(auth_data(content.content_type))


@st.composite
def authenticated_contents(draw: st.DrawFn) -> AuthenticatedContent:
    """AuthenticatedContent with any wire_format and matching auth data."""
    content, auth = draw(content_with_auth())
    return AuthenticatedContent(draw(u16), content, auth)


@st.composite
def public_messages(draw: st.DrawFn) -> PublicMessage:
    """PublicMessage; a membership_tag is present exactly for member senders."""
    content, auth = draw(content_with_auth())
    tag = draw(opaque) if content.sender.sender_type == SenderType.MEMBER else None
    return PublicMessage(content, auth, tag)


private_messages = st.builds(PrivateMessage, opaque, u64, u8, opaque, opaque, opaque)
sender_datas = st.builds(SenderData, u32, u32, st.binary(min_size=4, max_size=4))
sender_data_aads = st.builds(SenderDataAAD, opaque, u64, u8)
private_content_aads = st.builds(PrivateContentAAD, opaque, u64, u8, opaque)

message_bodies = st.one_of(public_messages(), private_messages, welcomes, group_infos,
                           key_packages)
mls_messages = st.builds(MLSMessage, message_bodies)
