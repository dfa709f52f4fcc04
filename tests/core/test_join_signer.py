"""The application's look at who signed a Welcome's GroupInfo (``Client.join(signer_check=)``)."""

from __future__ import annotations

import pytest

from mls_xmpp.core.errors import PolicyError
from mls_xmpp.core.group.client import Client
from mls_xmpp.core.messages.leaf_node import LeafNode


def test_signer_check_sees_the_adder_and_a_refusal_keeps_the_key_package() -> None:
    adder = Client.generate(b"bob@example.org")
    joiner = Client.generate(b"alice@example.org")
    kp = joiner.make_key_package()
    group = adder.create_group()
    pending = group.commit(add=[kp])
    group.merge_pending_commit()
    assert pending.welcome is not None
    before = dict(joiner.key_packages)
    seen: list[bytes] = []

    def refuse(leaf: LeafNode) -> None:
        seen.append(bytes(leaf.credential.identity))
        raise PolicyError("not the sender")

    with pytest.raises(PolicyError):
        joiner.join(pending.welcome, signer_check=refuse)
    assert seen == [b"bob@example.org"]
    assert joiner.key_packages == before and joiner.groups == {}

    joined = joiner.join(pending.welcome, signer_check=lambda leaf: seen.append(b"ok"))
    assert seen[-1] == b"ok" and joined.epoch_authenticator == group.epoch_authenticator
    assert joiner.key_packages.keys() < before.keys()  # used now
