"""The plugin's live traffic over a real Prosody is valid under docs/schema/mls-xmpp-0.xsd.

Plays the conformance kit's scenario (every exchange of docs/PROTOCOL.md) and checks
every element of the mapping's namespace in every stanza any of the three clients
sent or received, and that the plugin's own parsers read each of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import xmlschema

from mls_xmpp.testing import Account, ProsodyServer
from mls_xmpp.testing.conformance import annotate, payload_bytes, play
from mls_xmpp.testing.tap import mls_elements

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schema" / "mls-xmpp-0.xsd"


def test_live_traffic_is_valid_under_the_schema(
        prosody: ProsodyServer, new_account: Callable[[str], Account]) -> None:
    from xml.etree import ElementTree as ET

    schema = xmlschema.XMLSchema(str(SCHEMA))
    accounts = [new_account(n) for n in ("alice", "bob", "carol")]
    steps = asyncio.run(asyncio.wait_for(play(prosody, accounts), 240))
    kinds: set[str] = set()
    checked = 0
    for step in steps:
        for rec in step.stanzas:
            for el in mls_elements(rec.element()):
                errors = list(schema.iter_errors(ET.tostring(el, encoding="unicode")))
                assert not errors, (step.name, rec.client, rec.direction, errors[0])
                seen = annotate(el)  # the plugin's parsers read it
                kinds.add(seen.get("kind", seen["element"]))
                if el.text:
                    payload_bytes(el)
                checked += 1
    assert kinds >= {"APPLICATION", "PROPOSAL", "COMMIT", "WELCOME", "GROUP_INFO",
                     "key-package", "group"}
    assert checked > 50
