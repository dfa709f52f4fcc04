"""The KeyPackages of a Commit's Adds checked and added (RFC 9420 §12.1.1, §10.1, §12.2).

Each Add's KeyPackage carries two signatures (its leaf's, §7.3, and its own,
§10.1): for a bulk add they are most of the work. They are handed to the
group's batch crypto first (:func:`~mls_xmpp.core.crypto.ahead.start_verify`),
and while a batch crypto with other cores verifies them this thread runs
every other check of every Add, in order, and adds the leaves to the tree
copy. Only then are the signatures' answers looked at, so the outcome is
that of the serial order -- Add by Add, each one's checks in the order of
:func:`~mls_xmpp.core.messages.validation.validate_key_package` (the
signatures after the credential): the first Add that fails raises, with the
error the serial code raises for it.

The one difference: an application's ``credential_validator`` may be called
for the Adds after one whose signature turns out not to verify (before, it
was not reached); the Commit is refused all the same.
"""

from __future__ import annotations

from ..codec import encode_opaque
from ..crypto.ahead import start_verify
from ..errors import InvalidSignatureError, MLSError, ValidationError
from ..messages.key_package import KeyPackage
from ..messages.validation import LeafContext, validate_key_package
from ..tree.ratchet_tree import RatchetTree
from .config import GroupConfig

__all__ = ["add_key_packages"]


def _validate(k: int, kp: KeyPackage, tree: RatchetTree, ctx: LeafContext, now: int,
              config: GroupConfig, signatures_verified: bool) -> None:
    """The checks of Add ``k``'s KeyPackage (§10.1), its signatures unless verified."""
    try:
        validate_key_package(tree.suite, kp, now=now, ctx=ctx,
                             credential_validator=config.credential_validator,
                             signatures_verified=signatures_verified)
    except InvalidSignatureError as err:
        raise InvalidSignatureError(f"§10.1: a signature of the KeyPackage of Add {k} "
                                    f"does not verify ({err})") from err


def add_key_packages(tree: RatchetTree, kps: list[KeyPackage], ctx: LeafContext, now: int,
                     config: GroupConfig) -> list[tuple[int, KeyPackage]]:
    """Check each KeyPackage (§10.1, §12.2) and add its leaf to ``tree``, in order.

    Returns ``(leaf index, KeyPackage)`` per Add. Raises the error of the
    first Add that fails (``tree`` is then half changed: the caller's copy,
    to throw away).
    """
    suite = tree.suite
    index: list[int] = []  # the Adds whose two signature items were handed over
    added: list[tuple[int, KeyPackage]] = []
    failed_at, error = len(kps), None
    with start_verify(config.batch_crypto, suite.id) as pending:
        for k, kp in enumerate(kps):
            try:
                pair = (kp.leaf_node.signature_item(), kp.signature_item())
            except MLSError:
                continue  # left to the serial checks below
            index.append(k)
            for pk, label, content, sig in pair:
                pending.add((pk, suite.labelled(label) + encode_opaque(content), sig))
        # every check but the signatures, while they are being verified
        seen_keys: set[bytes] = set()
        for k, kp in enumerate(kps):
            try:
                _validate(k, kp, tree, ctx, now, config, signatures_verified=True)
                if kp.leaf_node.signature_key in seen_keys:
                    raise ValidationError("two Adds for the same client (§12.2)")
            except Exception as e:  # noqa: BLE001 -- raised below, in the serial order
                failed_at, error = k, e
                break
            seen_keys.add(kp.leaf_node.signature_key)
            added.append((tree.add_leaf(kp.leaf_node), kp))
        ok = pending.result()
    verified = [False] * len(kps)
    for j, k in enumerate(index):
        verified[k] = ok[2 * j] and ok[2 * j + 1]
    # the serial order, Add by Add: before the first Add that failed above, each
    # one passed every other check, so a signature that does not verify is its error
    for k in range(min(failed_at, len(kps))):
        if not verified[k]:
            try:
                kps[k].leaf_node.verify_signature(suite)  # §7.3, after the credential
                kps[k].verify_signature(suite)  # §10.1
            except InvalidSignatureError as err:
                raise InvalidSignatureError(f"§10.1: a signature of the KeyPackage of Add {k} "
                                            f"does not verify ({err})") from err
    if error is not None:
        if not verified[failed_at]:  # the tree is as it was for this Add: all its checks
            _validate(failed_at, kps[failed_at], tree, ctx, now, config,
                      signatures_verified=False)
        raise error
    return added
