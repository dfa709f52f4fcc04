"""The conformance kit: the committed exchanges (conformance/exchanges, recorded from a
real Prosody by conformance/record.py) parse with the plugin's own parsers to exactly
what their annotations say, and every element of the mapping in them is valid under the
XML schema docs/schema/mls-xmpp-0.xsd."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import xmlschema

from mls_xmpp.testing.conformance import CONFORMANCE_NS, annotate, payload_bytes
from mls_xmpp.testing.tap import mls_elements

ROOT = Path(__file__).resolve().parents[2]
EXCHANGES = sorted((ROOT / "conformance" / "exchanges").glob("*.xml"))
SCHEMA = ROOT / "docs" / "schema" / "mls-xmpp-0.xsd"
C = f"{{{CONFORMANCE_NS}}}"


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA))


def _stanzas(path: Path) -> list[tuple[list[dict[str, str]], ET.Element]]:
    out = []
    for wrapper in ET.parse(path).getroot().iter(f"{C}stanza"):
        expects = [dict(e.attrib) for e in wrapper.findall(f"{C}expect")]
        (stanza,) = [el for el in wrapper if not el.tag.startswith(C)]
        out.append((expects, stanza))
    return out


def test_the_kit_has_every_exchange() -> None:
    names = [p.stem.split("-", 1)[1] for p in EXCHANGES]
    assert names == ["publish-key-packages", "create-group", "application-messages", "update",
                     "add-member", "leave", "archive-read", "remove-member"]
    seen = {(e["element"], e.get("kind")) for p in EXCHANGES for es, _ in _stanzas(p)
            for e in es}
    assert seen >= {("mls", k) for k in ("APPLICATION", "PROPOSAL", "COMMIT", "WELCOME",
                                         "GROUP_INFO")}
    assert ("key-package", None) in seen and ("group", None) in seen


@pytest.mark.parametrize("path", EXCHANGES, ids=[p.stem for p in EXCHANGES])
def test_recorded_stanzas_parse_as_annotated(path: Path, schema: xmlschema.XMLSchema) -> None:
    stanzas = _stanzas(path)
    assert stanzas
    for expects, stanza in stanzas:
        elements = mls_elements(stanza)
        assert [annotate(el) for el in elements] == expects
        for el in elements:
            schema.validate(ET.tostring(el, encoding="unicode"))
            if el.text:
                payload_bytes(el)  # canonical base64


def test_a_changed_payload_no_longer_matches_its_annotation() -> None:
    path = next(p for p in EXCHANGES if "application" in p.name)
    expects, stanza = _stanzas(path)[0]
    (el,) = mls_elements(stanza)
    from mls_xmpp.xmpp.envelope import Envelope, Kind

    env = Envelope.from_base64(el.text or "")
    el.text = Envelope(kind=Kind.PROPOSAL, group_id=env.group_id, epoch=env.epoch,
                       mls_message=env.mls_message).to_base64()
    assert [annotate(el)] != expects


@pytest.mark.parametrize("xml", [
    "<mls xmlns='urn:mls-xmpp:0'/>",                                  # empty
    "<mls xmlns='urn:mls-xmpp:0'>CAM= </mls>",                        # whitespace
    "<mls xmlns='urn:mls-xmpp:0'>CAM</mls>",                          # padding missing
    "<mls xmlns='urn:mls-xmpp:0'>CA-_</mls>",                         # base64url alphabet
    "<mls xmlns='urn:mls-xmpp:0' v='1'>CAM=</mls>",                   # an attribute
    "<mls xmlns='urn:mls-xmpp:0'><x/>CAM=</mls>",                     # a child
    "<key-package xmlns='urn:mls-xmpp:0'>CAM=\nCAM=</key-package>",   # a line break
    "<group xmlns='urn:mls-xmpp:0' room='r@muc.example' group-id='0A'/>",  # upper-case hex
    "<group xmlns='urn:mls-xmpp:0' group-id='0a'/>",                  # no room
])
def test_the_schema_refuses_what_the_text_forbids(xml: str, schema: xmlschema.XMLSchema) -> None:
    assert not schema.is_valid(xml)
