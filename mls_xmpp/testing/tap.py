"""Record the stanzas a slixmpp client sends and receives, as XML text.

Used by the conformance kit (``conformance/record.py``) and by the schema test
(``tests/integration/test_schema_live.py``): a :class:`StanzaTap` on each
client appends ``(client label, direction, XML)`` to one shared list, in the
order the event loop saw them. Only stanzas (``message``, ``iq``,
``presence``) are recorded, not stream features or SASL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slixmpp.xmlstream import ET, tostring

__all__ = ["MLS_NS", "RecordedStanza", "StanzaTap", "mls_elements"]

#: The mapping's namespace.
MLS_NS = "urn:mls-xmpp:0"
_STANZAS = ("message", "iq", "presence")


@dataclass(frozen=True)
class RecordedStanza:
    """One stanza as a client saw it.

    Attributes:
        client: the label of the client that sent or received it.
        direction: ``"sent"`` or ``"received"``.
        xml: the stanza, serialised (``jabber:client`` as default namespace).
    """

    client: str
    direction: str
    xml: str

    def element(self) -> ET.Element:
        """The stanza parsed again."""
        return ET.fromstring(self.xml)


class StanzaTap:
    """Appends every stanza ``client`` sends or receives to ``log``."""

    def __init__(self, client: Any, label: str, log: list[RecordedStanza]) -> None:
        self.label = label
        self.log = log
        client.add_filter("in", self._incoming)
        client.add_filter("out", self._outgoing)

    def _record(self, stanza: Any, direction: str) -> Any:
        xml = getattr(stanza, "xml", None)
        if xml is not None and xml.tag.split("}")[-1] in _STANZAS:
            self.log.append(RecordedStanza(self.label, direction,
                                           tostring(xml, top_level=True)))
        return stanza

    def _incoming(self, stanza: Any) -> Any:
        return self._record(stanza, "received")

    def _outgoing(self, stanza: Any) -> Any:
        return self._record(stanza, "sent")


def mls_elements(stanza: ET.Element) -> list[ET.Element]:
    """Every element of the mapping's namespace inside ``stanza``, at any depth, but
    not those inside another one (a ``<device/>``'s ``<key/>`` children belong to it)."""
    found: list[ET.Element] = []

    def walk(el: ET.Element) -> None:
        for child in el:
            if child.tag.startswith(f"{{{MLS_NS}}}"):
                found.append(child)
            else:
                walk(child)

    if stanza.tag.startswith(f"{{{MLS_NS}}}"):
        return [stanza]
    walk(stanza)
    return found
