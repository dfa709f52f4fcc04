"""Untrusted until validated: LeafNode (RFC 9420 §7.3) and KeyPackage (§10.1) checks.

Decoding gives data; only these functions give the trusted objects the group
layer works with (:class:`ValidatedKeyPackage`). Each check names its section.
Time is injected (``now``, seconds since the Unix epoch) and the application's
Authentication Service is a callback (:data:`CredentialValidator`).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..crypto.batch import BatchCrypto
from ..errors import MLSError, ValidationError
from .common import CredentialType, LeafNodeSource, ProtocolVersion
from .credentials import Credential
from .extensions import RequiredCapabilities, check_unique
from .key_package import KeyPackage
from .leaf_node import LeafNode
from .x509 import check_x509_credential

if TYPE_CHECKING:
    from ..crypto import CipherSuite

#: The Authentication Service: raise an MLSError when ``credential`` may not
#: use ``signature_key`` (RFC 9420 §5.3.1). The default accepts every credential.
CredentialValidator = Callable[[Credential, bytes], None]

#: Extension and proposal types defined by RFC 9420 are "default" and need not
#: be listed in capabilities (§7.2).
_DEFAULT_EXTENSIONS = frozenset({1, 2, 3, 4, 5})
_DEFAULT_PROPOSALS = frozenset({1, 2, 3, 4, 5, 6, 7})


def accept_any_credential(credential: Credential, signature_key: bytes) -> None:
    """A :data:`CredentialValidator` that accepts everything (tests, demos)."""


def check_credential(credential: Credential, signature_key: bytes) -> None:
    """The credential checks every member applies alike, before the application's.

    An x509 credential must pass :func:`~.x509.check_x509_credential`
    (§5.3.2: a well-formed chain whose end-entity key is ``signature_key``,
    naming one JID). Trust in the chain's issuer is not judged here: that is
    local (:class:`~.x509.TrustAnchors`).

    :raises CredentialError: it does not.
    """
    if credential.credential_type == CredentialType.X509:
        check_x509_credential(credential.certificates, signature_key)


@dataclass(frozen=True)
class LeafContext:
    """What a LeafNode is checked against: the group's parameters and members.

    ``member_credential_types`` are the credential types of current members;
    ``member_supported_credentials`` the intersection of what every member
    supports (``None`` when the group is empty, e.g. a KeyPackage fetched
    before the group exists). ``signature_keys`` / ``encryption_keys`` are
    those already in the tree, minus the leaf being replaced.
    """

    cipher_suite: int
    required_capabilities: RequiredCapabilities | None = None
    member_credential_types: frozenset[int] = frozenset()
    member_supported_credentials: frozenset[int] | None = None
    signature_keys: Container[bytes] = field(default_factory=frozenset)
    encryption_keys: Container[bytes] = field(default_factory=frozenset)


def validate_leaf_node(suite: CipherSuite, leaf: LeafNode, *, source: int, ctx: LeafContext,
                       now: int | None, group_id: bytes | None = None,
                       leaf_index: int | None = None,
                       credential_validator: CredentialValidator = accept_any_credential,
                       replaced: LeafNode | None = None,
                       signature_verified: bool = False) -> None:
    """Apply every LeafNode check of RFC 9420 §7.3; raise on the first failure.

    ``source`` is the LeafNodeSource the context demands; ``now`` enables the
    lifetime check (pass ``None`` only where §7.3 makes it optional);
    ``replaced`` is the leaf an Update replaces. ``signature_verified`` skips
    the signature check, for a caller that has verified it already.
    """
    # §7.3: the credential is valid (§5.3.2 for x509; the Authentication Service, §5.3.1)
    check_credential(leaf.credential, leaf.signature_key)
    credential_validator(leaf.credential, leaf.signature_key)
    # §7.3: the signature is valid
    if not signature_verified:
        leaf.verify_signature(suite, group_id, leaf_index)
    caps = leaf.capabilities
    # Not checked: that capabilities list the group's version and cipher suite.
    # §7.3 does not ask for it, and some implementations omit them (MLSpp's
    # suite-7 leaves); a KeyPackage's own version and suite are checked (§10.1).
    # §7.3: required_capabilities of the group are supported
    rc = ctx.required_capabilities
    if rc is not None:
        for ext in rc.extension_types:
            if ext not in caps.extensions and ext not in _DEFAULT_EXTENSIONS:
                raise ValidationError(f"leaf lacks required extension {ext:#06x} (§7.3)")
        for prop in rc.proposal_types:
            if prop not in caps.proposals and prop not in _DEFAULT_PROPOSALS:
                raise ValidationError(f"leaf lacks required proposal type {prop:#06x} (§7.3)")
        for cred in rc.credential_types:
            if cred not in caps.credentials:
                raise ValidationError(f"leaf lacks required credential type {cred} (§7.3)")
    # §7.3: the credential type is supported by every member, and the leaf
    # supports every credential type in use
    ctype = leaf.credential.credential_type
    if ctype not in caps.credentials:
        raise ValidationError(f"leaf does not list its own credential type {ctype} (§7.2)")
    if (ctx.member_supported_credentials is not None
            and ctype not in ctx.member_supported_credentials):
        raise ValidationError(f"credential type {ctype} is not supported by all members (§7.3)")
    missing = ctx.member_credential_types - set(caps.credentials)
    if missing:
        raise ValidationError(f"leaf does not support credential types in use {sorted(missing)}"
                              " (§7.3)")
    # §7.3: lifetime
    if source == LeafNodeSource.KEY_PACKAGE:
        if leaf.lifetime is None:
            raise ValidationError("key_package leaf has no lifetime (§7.2)")
        if now is not None and not leaf.lifetime.contains(now):
            raise ValidationError("leaf lifetime does not contain the current time (§7.3)")
    # §7.3: extensions are listed in capabilities (default ones need not be)
    check_unique(leaf.extensions, "LeafNode")
    for e in leaf.extensions:
        if e.extension_type not in caps.extensions and e.extension_type not in _DEFAULT_EXTENSIONS:
            raise ValidationError(
                f"leaf extension {e.extension_type:#06x} not listed in capabilities (§7.3)")
    # §7.3: leaf_node_source matches where the leaf appears
    if leaf.leaf_node_source != source:
        raise ValidationError(
            f"leaf_node_source is {leaf.leaf_node_source}, expected {source} (§7.3)")
    if source == LeafNodeSource.UPDATE and replaced is not None:
        if leaf.encryption_key == replaced.encryption_key:
            raise ValidationError("Update keeps the replaced leaf's encryption_key (§7.3)")
    # §7.3: signature_key and encryption_key are unique among members
    if leaf.signature_key in ctx.signature_keys:
        raise ValidationError("signature_key already used by another member (§7.3)")
    if leaf.encryption_key in ctx.encryption_keys:
        raise ValidationError("encryption_key already used by another member (§7.3)")


@dataclass(frozen=True)
class ValidatedKeyPackage:
    """A KeyPackage that passed §10.1, with its KeyPackageRef."""

    key_package: KeyPackage
    ref: bytes


def validate_key_package(suite: CipherSuite, kp: KeyPackage, *, now: int,
                         ctx: LeafContext | None = None,
                         credential_validator: CredentialValidator = accept_any_credential,
                         signatures_verified: bool = False) -> ValidatedKeyPackage:
    """Apply the KeyPackage checks of RFC 9420 §10.1 (and §7.3 on its leaf).

    ``signatures_verified`` skips both signature checks (leaf and KeyPackage),
    for a caller that has verified them already
    (:func:`verify_key_package_signatures`).
    """
    ctx = ctx or LeafContext(suite.id)
    # §10.1: cipher suite and version match the group
    if kp.cipher_suite != ctx.cipher_suite or kp.cipher_suite != suite.id:
        raise ValidationError(f"KeyPackage is for cipher suite {kp.cipher_suite}, "
                              f"the group uses {ctx.cipher_suite} (§10.1)")
    if kp.version != ProtocolVersion.MLS10:
        raise ValidationError(f"KeyPackage protocol version {kp.version} (§10.1)")
    # §10.1: the leaf node is valid for a KeyPackage (§7.3)
    validate_leaf_node(suite, kp.leaf_node, source=LeafNodeSource.KEY_PACKAGE, ctx=ctx, now=now,
                       credential_validator=credential_validator,
                       signature_verified=signatures_verified)
    # §10.1: the KeyPackage signature is valid
    if not signatures_verified:
        kp.verify_signature(suite)
    # §10.1: init_key differs from the leaf's encryption_key
    if kp.init_key == kp.leaf_node.encryption_key:
        raise ValidationError("KeyPackage init_key equals its leaf encryption_key (§10.1)")
    check_unique(kp.extensions, "KeyPackage")
    return ValidatedKeyPackage(kp, kp.ref(suite))


def verify_key_package_signatures(suite: CipherSuite, kps: Sequence[KeyPackage],
                                  crypto: BatchCrypto | None = None) -> list[bool]:
    """Both signatures of each KeyPackage (leaf, §7.3; KeyPackage, §10.1) as one batch.

    ``True`` where both verify, to pass as ``signatures_verified`` to
    :func:`validate_key_package`. The batch is computed by ``crypto``
    (:mod:`~mls_xmpp.core.crypto.batch`; serially by default). Where it is
    ``False`` -- a signature that does not verify, or a KeyPackage whose
    signed content cannot even be built -- :func:`validate_key_package`
    checks serially, raising its usual errors in its usual order.
    """
    out = [False] * len(kps)
    index: list[int] = []
    items: list[tuple[bytes, str | bytes, bytes, bytes]] = []
    for k, kp in enumerate(kps):
        try:
            pair = (kp.leaf_node.signature_item(), kp.signature_item())
        except MLSError:
            continue
        index.append(k)
        items += pair
    ok = suite.verify_with_label_many(items, crypto)
    for j, k in enumerate(index):
        out[k] = ok[2 * j] and ok[2 * j + 1]
    return out
