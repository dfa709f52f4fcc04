"""The group's ``pad_to`` is carried in its GroupContext (mls_xmpp.xmpp.params)."""

from __future__ import annotations

import pytest

from mls_xmpp.core.errors import PolicyError
from mls_xmpp.core.messages.extensions import Extension
from mls_xmpp.core.messages.framing import MLSMessage, PrivateMessage
from mls_xmpp.core.messages.proposals import GroupContextExtensions
from mls_xmpp.xmpp.params import (
    DEFAULT_PAD_TO,
    PARAMS_EXTENSION,
    GroupParameters,
    follow_parameters,
    pad_to_of,
    params_extension,
)
from mls_xmpp.xmpp.rules import DEFAULT_RULES, rules_extension

from ..core.test_group_rules import assert_rejected, forge_commit
from .test_rules import NAMES, _client, _same


def test_parameters_round_trip_and_default() -> None:
    assert pad_to_of(()) == DEFAULT_PAD_TO == 32
    ext = params_extension(256)
    assert ext.extension_type == PARAMS_EXTENSION == 0xF0E2
    assert ext.extension_data == b"\x01\x00\x00\x01\x00"  # version 1, uint32 256
    assert pad_to_of((ext,)) == 256
    assert GroupParameters.decode(ext.extension_data) == GroupParameters(pad_to=256)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x02\x00\x00\x01\x00",
                                  b"\x01\x00\x00\x00\x00", b"\x01\x00\x01\x00\x01",
                                  b"\x01\x00\x00\x01\x00\x00"])
def test_malformed_parameters_are_refused(data: bytes) -> None:
    with pytest.raises(PolicyError):
        pad_to_of((Extension(PARAMS_EXTENSION, data),))


def test_out_of_range_pad_to_cannot_be_set() -> None:
    for bad in (0, 65537):
        with pytest.raises(PolicyError):
            params_extension(bad)


def _group(pad_to: int) -> list:  # type: ignore[type-arg]
    clients = [_client(j) for j in NAMES]
    for c in clients:
        c.supported_extensions = (*c.supported_extensions, PARAMS_EXTENSION)
    rules = DEFAULT_RULES.with_admins(NAMES[0])
    g = clients[0].create_group(extensions=(rules_extension(rules), params_extension(pad_to)))
    p = g.commit(add=[c.make_key_package() for c in clients[1:]])
    g.merge_pending_commit()
    assert p.welcome is not None
    return [g] + [c.join(p.welcome) for c in clients[1:]]


def test_a_joiner_pads_as_the_group_says() -> None:
    a, b, _ = _group(128)
    assert pad_to_of(b.state.context.extensions) == 128  # from the Welcome's GroupInfo
    assert follow_parameters(b) == 128 and b.config.pad_to == 128
    body = MLSMessage.decode(b.encrypt(b"x")).body
    assert isinstance(body, PrivateMessage) and (len(body.ciphertext) - 16) % 128 == 0
    assert a.process(MLSMessage(body).encode()) is not None


def test_malformed_parameters_in_a_commit_are_refused_by_every_member() -> None:
    a, b, c = _group(64)
    bad = GroupContextExtensions((rules_extension(DEFAULT_RULES.with_admins(NAMES[0])),
                                  Extension(PARAMS_EXTENSION, b"\x01\x00\x00\x00\x00")))
    with pytest.raises(PolicyError):
        a.commit(proposals=[bad])  # the admin's own implementation refuses to send it
    forged = forge_commit(a, (bad,))
    for g in (b, c):
        assert_rejected(g, forged, PolicyError)
    good = GroupContextExtensions((rules_extension(DEFAULT_RULES.with_admins(NAMES[0])),
                                   params_extension(512)))
    p = a.commit(proposals=[good])
    a.merge_pending_commit()
    b.process(p.message)
    c.process(p.message)
    _same([a, b, c])
    assert follow_parameters(c) == 512
