"""The slixmpp stanza plugin for the ``<mls xmlns='urn:mls-xmpp:0'/>`` element.

The element's text is one base64-encoded protobuf payload of the mapping (an
:class:`~mls_xmpp.xmpp.envelope.Envelope` in messages)::

    >>> from slixmpp import Message
    >>> register_stanzas()
    >>> msg = Message()
    >>> msg["mls"]["payload"] = "CAM="
    >>> str(msg["mls"])
    '<mls xmlns="urn:mls-xmpp:0">CAM=</mls>'
"""

from __future__ import annotations

from typing import ClassVar

from slixmpp.stanza import Message
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

__all__ = ["MLS", "NS", "register_stanzas"]

#: The mapping's namespace (project-owned; not the XSF's ``urn:xmpp:mls:0``).
NS = "urn:mls-xmpp:0"


class MLS(ElementBase):
    """``<mls xmlns='urn:mls-xmpp:0'>BASE64</mls>``; interface ``payload`` is its text."""

    name: ClassVar[str] = "mls"
    namespace = NS
    plugin_attrib: ClassVar[str] = "mls"
    interfaces: ClassVar[set[str]] = {"payload"}

    def get_payload(self) -> str:
        """The element's text (base64), or ``""`` when empty."""
        return self.xml.text or ""

    def set_payload(self, value: str) -> None:
        """Replace the element's text."""
        self.xml.text = value

    def del_payload(self) -> None:
        """Remove the element's text."""
        self.xml.text = None


def register_stanzas() -> None:
    """Register :class:`MLS` as the ``mls`` plugin of :class:`slixmpp.stanza.Message`.

    Idempotent: calling it again changes nothing.
    """
    register_stanza_plugin(Message, MLS)
