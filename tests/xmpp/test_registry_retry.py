"""The group registry's publish on a server that answers item-not-found at first.

A two-node ejabberd cluster answered ``item-not-found`` now and then to the
publish that follows the node's creation; the registry configures and
publishes again instead of reporting the group unrecorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from slixmpp import JID, Iq
from slixmpp.exceptions import IqError

from mls_xmpp.xmpp import recovery
from mls_xmpp.xmpp.errors import TransportError
from mls_xmpp.xmpp.recovery import GROUPS_NODE, GroupRegistry


def _iq_error(condition: str) -> IqError:
    iq = Iq(stype="error")
    iq["error"]["type"] = "cancel"
    iq["error"]["condition"] = condition
    return IqError(iq)


class _PubSub:
    """A PEP service refusing publish-options, then answering ``answers`` in turn."""

    def __init__(self, answers: list[str | None]) -> None:
        self.answers = answers
        self.published: list[str] = []
        self.creates = 0

    async def publish(self, jid: JID, node: str, *, id: str, payload: Any,
                      options: Any = None, timeout: float = 0) -> None:
        if options is not None:
            raise _iq_error("resource-constraint")  # ejabberd 23.01: no max_items option
        answer = self.answers.pop(0)
        if answer is not None:
            raise _iq_error(answer)
        self.published.append(id)

    async def create_node(self, jid: JID, node: str, *, config: Any,
                          timeout: float = 0) -> None:
        assert node == GROUPS_NODE
        self.creates += 1

    async def set_node_config(self, *a: Any, **kw: Any) -> None:
        raise AssertionError("the node is created, not reconfigured")


class _Xmpp:
    def __init__(self, pubsub: _PubSub) -> None:
        self.boundjid = JID("dave@localhost/phone")
        self.plugin = {"xep_0060": pubsub}


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "_RETRY_DELAY", 0.0)


def test_item_not_found_after_creation_is_published_again() -> None:
    pubsub = _PubSub(["item-not-found", "item-not-found", None])
    asyncio.run(GroupRegistry(_Xmpp(pubsub)).add("r@conference.localhost", b"\x01"))
    assert pubsub.published == ["r@conference.localhost"]
    assert pubsub.creates == 3  # configured before every attempt


def test_item_not_found_every_time_is_a_transport_error() -> None:
    pubsub = _PubSub(["item-not-found"] * 3)
    with pytest.raises(TransportError, match="item-not-found"):
        asyncio.run(GroupRegistry(_Xmpp(pubsub)).add("r@conference.localhost", b"\x01"))
    assert pubsub.published == []


def test_other_errors_are_not_retried() -> None:
    pubsub = _PubSub(["forbidden", None])
    with pytest.raises(TransportError, match="forbidden"):
        asyncio.run(GroupRegistry(_Xmpp(pubsub)).add("r@conference.localhost", b"\x01"))
    assert pubsub.answers == [None]  # one publish without options, not two
