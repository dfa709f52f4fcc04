"""The ``passive-client-*`` vectors: join by Welcome, then follow every Commit.

Handles any valid vector of the type (welcome, handling-commit, random):
proposals are processed before their epoch's Commit, PSKs come from
``external_psks``, and the tree comes from the Welcome or out of band.
"""

from __future__ import annotations

from ..core.crypto import get_suite
from ..core.group.client import Client
from ..core.group.config import GroupConfig
from ..core.group.events import CommitApplied
from ..core.messages.credentials import Credential
from ..core.messages.framing import MLSMessage
from ..core.messages.key_package import KeyPackage, KeyPackageBundle
from . import Case, VectorMismatch, expect, unhex


def _clock_for(kp: KeyPackage) -> int:
    lifetime = kp.leaf_node.lifetime
    return lifetime.not_before if lifetime is not None else 0


def check(case: Case) -> None:
    """Join, compare the initial epoch_authenticator, then each epoch's."""
    suite = get_suite(int(case["cipher_suite"]))
    kp_msg = MLSMessage.decode(unhex(case["key_package"]))
    kp = kp_msg.body
    if not isinstance(kp, KeyPackage):
        raise VectorMismatch("key_package is not a KeyPackage")
    sig_priv = unhex(case["signature_priv"])
    enc_priv = unhex(case["encryption_priv"])
    init_priv = unhex(case["init_priv"])
    expect("signature key", suite.signature_public_key(sig_priv), kp.leaf_node.signature_key)
    expect("encryption key", suite.hpke.public_key(enc_priv), kp.leaf_node.encryption_key)
    expect("init key", suite.hpke.public_key(init_priv), kp.init_key)

    start = _clock_for(kp)
    config = GroupConfig(clock=lambda: start)
    client = Client(Credential.basic(b""), suite.id, sig_priv, config)
    client.key_packages[kp.ref(suite)] = KeyPackageBundle(kp, init_priv, enc_priv)
    for psk in case.get("external_psks") or []:
        client.external_psks[unhex(psk["psk_id"])] = unhex(psk["psk"])
    tree = case.get("ratchet_tree")
    group = client.join(unhex(case["welcome"]), ratchet_tree=unhex(tree) if tree else None)
    expect("initial epoch_authenticator", group.epoch_authenticator,
           unhex(case["initial_epoch_authenticator"]))
    for n, epoch in enumerate(case["epochs"]):
        for proposal in epoch.get("proposals") or []:
            group.process(unhex(proposal))
        event = group.process(unhex(epoch["commit"]))
        if not isinstance(event, CommitApplied):
            raise VectorMismatch(f"epoch {n}: the commit did not apply as a Commit")
        expect(f"epoch {n} epoch_authenticator", group.epoch_authenticator,
               unhex(epoch["epoch_authenticator"]))
